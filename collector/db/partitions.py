"""Daily history partitions: created ahead of time, filled from the default, dropped by age.

The history tables are partitioned by UTC day with a DEFAULT partition, so a reading whose
day has no partition yet (a device with a wrong clock, an import of old history) is still
stored. Maintenance, run by the daemon at start and then every hour:

* creates the partitions of the next ``ahead_days`` days (and today's, yesterday's);
* moves rows found in the default partition into their own day's partition (created then);
* drops day partitions entirely older than ``retention_days`` (0 keeps everything), deletes
  such rows from the default partition, and deletes rollups older than
  ``rollup_retention_days``.

Several collectors may share a database: one maintains at a time (an advisory lock).
Partition DDL waits at most a few seconds for its locks, so it never leaves the writer
queued behind a long analytics query; what could not be done is retried next hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg
import structlog

from collector.db.connection import Connection
from collector.settings import Settings

HISTORY_TABLES = ("meter_readings", "vehicle_readings")
ROLLUP_TABLES = ("meter_hourly", "vehicle_hourly")
_LOCK_KEY = 0x656E6572_7061  # "enerpa": one maintainer at a time
_DAY_SUFFIX = re.compile(r"_p(\d{8})$")


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    moved_rows: int = 0
    dropped: list[str] = field(default_factory=list)
    deleted_rows: int = 0
    skipped: bool = False  # another collector holds the maintenance lock


class PartitionManager:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ahead_days: int,
        retention_days: int,
        rollup_retention_days: int,
        interval_s: float = 3600.0,
        lock_timeout_ms: int = 5000,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self._pool = pool
        self.ahead_days = ahead_days
        self.retention_days = retention_days
        self.rollup_retention_days = rollup_retention_days
        self._interval_s = interval_s
        self._lock_timeout_ms = lock_timeout_ms
        self._log = log or structlog.get_logger("collector.partitions")
        self._wake = asyncio.Event()

    @classmethod
    def from_settings(cls, pool: asyncpg.Pool, settings: Settings) -> PartitionManager:
        """The manager as the daemon and the import run it."""
        return cls(
            pool,
            ahead_days=settings.partition_ahead_days,
            retention_days=settings.retention_days,
            rollup_retention_days=settings.rollup_retention_days,
            interval_s=settings.maintenance_interval_s,
        )

    async def run(self) -> None:
        """Maintain now and then every interval, forever (cancel to stop)."""
        while True:
            try:
                await self.maintain()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The database may be away; the writer reports that. Try again later.
                self._log.warning("partitions.maintenance_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()

    async def maintain(self, today: date | None = None) -> MaintenanceReport:
        today = today or datetime.now(UTC).date()
        report = MaintenanceReport()
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
                report.skipped = True
                return report
            try:
                await conn.execute(f"SET lock_timeout = {int(self._lock_timeout_ms)}")
                for table in HISTORY_TABLES:
                    await self._maintain_table(conn, table, today, report)
                if self.rollup_retention_days > 0:
                    cutoff = day_start(today - timedelta(days=self.rollup_retention_days))
                    for table in ROLLUP_TABLES:
                        status = await conn.execute(f"DELETE FROM {table} WHERE hour < $1", cutoff)
                        report.deleted_rows += int(status.split()[-1])
            finally:
                await conn.execute("RESET lock_timeout")
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        if report.created or report.dropped or report.moved_rows or report.deleted_rows:
            self._log.info(
                "partitions.maintained",
                created=report.created,
                moved_rows=report.moved_rows,
                dropped=report.dropped,
                deleted_rows=report.deleted_rows,
            )
        return report

    async def ensure_days(self, days: set[date], today: date | None = None) -> list[str]:
        """Create the partitions of ``days`` that are missing (for an import of history),
        except days past the retention, which maintenance would drop anyway."""
        today = today or datetime.now(UTC).date()
        if self.retention_days:
            cutoff = today - timedelta(days=self.retention_days)
            days = {d for d in days if d >= cutoff}
        created: list[str] = []
        if not days:
            return created
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
            try:
                for table in HISTORY_TABLES:
                    for day in sorted(days - await partition_days(conn, table)):
                        await self._create(conn, table, day)
                        created.append(partition_name(table, day))
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        if created:
            self._log.info("partitions.created_for_import", created=created)
        return created

    async def _maintain_table(
        self, conn: Connection, table: str, today: date, report: MaintenanceReport
    ) -> None:
        existing = await partition_days(conn, table)
        wanted = {today + timedelta(days=d) for d in range(-1, self.ahead_days + 1)}
        stray = await conn.fetch(
            f"SELECT DISTINCT date_trunc('day', ts, 'UTC') AS day FROM {table}_default"
        )
        cutoff = (today - timedelta(days=self.retention_days)) if self.retention_days else None
        for row in stray:
            day = row["day"].astimezone(UTC).date()
            if cutoff is None or day >= cutoff:
                wanted.add(day)
        for day in sorted(wanted - existing):
            try:
                moved = await self._create(conn, table, day)
            except asyncpg.LockNotAvailableError:
                self._log.warning(
                    "partitions.lock_timeout",
                    table=table,
                    day=str(day),
                    hint="busy; retried at the next maintenance",
                )
                continue
            report.created.append(partition_name(table, day))
            report.moved_rows += moved
        if cutoff is not None:
            for day in sorted(d for d in existing if d < cutoff):
                try:
                    async with conn.transaction():
                        name = partition_name(table, day)
                        await conn.execute(f"ALTER TABLE {table} DETACH PARTITION {name}")
                        await conn.execute(f"DROP TABLE {name}")
                except asyncpg.LockNotAvailableError:
                    self._log.warning("partitions.lock_timeout", table=table, day=str(day))
                    continue
                report.dropped.append(name)
            status = await conn.execute(
                f"DELETE FROM {table}_default WHERE ts < $1", day_start(cutoff)
            )
            report.deleted_rows += int(status.split()[-1])

    async def _create(self, conn: Connection, table: str, day: date) -> int:
        """Create the day's partition, moving its rows out of the default partition."""
        name = partition_name(table, day)
        lo, hi = day_start(day), day_start(day + timedelta(days=1))
        bounds = f"'{lo.isoformat()}'::timestamptz AND ts < '{hi.isoformat()}'::timestamptz"
        async with conn.transaction():
            # Built apart and attached, which takes a lock on the parent that does not block
            # the writer's inserts; the CHECK lets ATTACH skip scanning the new table.
            await conn.execute(
                f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
            await conn.execute(
                f"ALTER TABLE {name} ADD CONSTRAINT {name}_bounds CHECK (ts >= {bounds})"
            )
            status = await conn.execute(
                f"WITH moved AS (DELETE FROM {table}_default WHERE ts >= {bounds} RETURNING *) "
                f"INSERT INTO {name} SELECT * FROM moved"
            )
            await conn.execute(
                f"ALTER TABLE {table} ATTACH PARTITION {name} "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
            await conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bounds")
        return int(status.split()[-1])


async def partition_days(conn: Connection, table: str) -> set[date]:
    """The days that have their own partition of ``table``."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        table,
    )
    days = set()
    for row in rows:
        match = _DAY_SUFFIX.search(row["relname"])
        if match:
            days.add(datetime.strptime(match[1], "%Y%m%d").replace(tzinfo=UTC).date())
    return days
