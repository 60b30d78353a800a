"""History partitions: days ahead of time, coarser ones for old rows, dropped by age.

The history tables are partitioned by time with a DEFAULT partition, so a reading whose
time has no partition yet (a device with a wrong clock, an import of old history) is still
stored. Maintenance, run by the daemon at start and then every ``MAINTENANCE_INTERVAL_S``:

* creates the day partitions of yesterday, today and the next ``ahead_days`` days;
* gives rows found in the default partition a partition of their own and moves them there:
  their day's, when the day is at most ``daily_days`` old (or its month is already cut into
  days), else their month's. A partition is only worth it where it saves scanning: one per
  day for the recent past that analytics read, one per month for stray old history. So a
  batch spread over 27 years makes at most ~330 month partitions, never one per day;
* creates partitions for stray rows only while a table has fewer than ``max_partitions``;
  beyond that the rows stay in the default partition (logged), still stored and queried;
* drops partitions entirely older than ``retention_days`` (0 keeps everything), deletes
  such rows from the default partition, and deletes rollups older than
  ``rollup_retention_days``.

Several collectors may share a database: one maintains at a time (an advisory lock).
Partition DDL waits at most a few seconds for its locks, so it never leaves the writer
queued behind a long analytics query; what could not be done is retried next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg
import structlog

from collector.backoff import Backoff
from collector.db.connection import Connection
from collector.ingest.streams import STREAMS
from collector.settings import Settings

#: The partitioned history tables, and the rollups kept as long as ROLLUP_RETENTION_DAYS.
HISTORY_TABLES = tuple(s.readings for s in STREAMS.values())
ROLLUP_TABLES = tuple(s.hourly for s in STREAMS.values())
_LOCK_KEY = 0x656E6572_7061  # "enerpa": one maintainer at a time
_DAY_SUFFIX = re.compile(r"_p(\d{8})$")
_MONTH_SUFFIX = re.compile(r"_m(\d{6})$")


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


@dataclass(frozen=True, order=True, slots=True)
class Span:
    """The time range ``[lo, hi)`` of one partition: a UTC day or a UTC month."""

    lo: date
    hi: date

    @classmethod
    def day(cls, day: date) -> Span:
        return cls(day, day + timedelta(days=1))

    @classmethod
    def month(cls, day: date) -> Span:
        first = day.replace(day=1)
        return cls(first, _next_month(first))

    @property
    def is_day(self) -> bool:
        return self.hi - self.lo == timedelta(days=1)

    def name(self, table: str) -> str:
        return partition_name(table, self.lo) if self.is_day else f"{table}_m{self.lo:%Y%m}"

    def overlaps(self, other: Span) -> bool:
        return self.lo < other.hi and other.lo < self.hi

    def covers(self, day: date) -> bool:
        return self.lo <= day < self.hi


@dataclass(frozen=True, slots=True)
class Plan:
    """What maintenance creates for one table, and what the cap leaves in the default."""

    create: list[Span]
    #: Distinct days of stray rows left in the default partition by ``max_partitions``.
    left_in_default: int = 0


def plan_partitions(
    existing: Iterable[Span],
    *,
    regular: Iterable[date] = (),
    stray: Iterable[date] = (),
    today: date,
    daily_days: int,
    max_partitions: int,
) -> Plan:
    """The partitions to create (pure; see the module's docstring for the rules).

    ``regular``: days that always get their own partition (yesterday to ``ahead_days``);
    ``stray``: days of rows waiting in the default partition (or about to be imported).
    """
    spans = set(existing)
    create: list[Span] = []

    def free(span: Span) -> bool:
        return not any(span.overlaps(s) for s in spans)

    for day in sorted(set(regular)):
        span = Span.day(day)
        if free(span):
            spans.add(span)
            create.append(span)
    left = 0
    recent = today - timedelta(days=daily_days)
    for day in sorted(set(stray), reverse=True):  # the newest first: they matter most
        if any(s.covers(day) for s in spans):
            continue
        month = Span.month(day)
        span = Span.day(day) if day >= recent or not free(month) else month
        if len(spans) >= max_partitions:
            left += 1
            continue
        spans.add(span)
        create.append(span)
    return Plan(create=create, left_in_default=left)


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    moved_rows: int = 0
    dropped: list[str] = field(default_factory=list)
    deleted_rows: int = 0
    skipped: bool = False  # another collector holds the maintenance lock
    #: Distinct days whose rows stay in a default partition because of ``max_partitions``.
    left_in_default: int = 0


class PartitionManager:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ahead_days: int,
        retention_days: int,
        rollup_retention_days: int,
        daily_days: int = 31,
        max_partitions: int = 2000,
        interval_s: float = 3600.0,
        lock_timeout_ms: int = 5000,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self._pool = pool
        self.ahead_days = ahead_days
        self.retention_days = retention_days
        self.rollup_retention_days = rollup_retention_days
        self.daily_days = daily_days
        self.max_partitions = max_partitions
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
            daily_days=settings.partition_daily_days,
            max_partitions=settings.partition_max,
            interval_s=settings.maintenance_interval_s,
        )

    async def run(self) -> None:
        """Maintain now and then every interval, forever (cancel to stop). A failed pass is
        tried again soon (backoff up to a minute), not an interval later: on a Citus cluster
        attaching a partition while batches write can be chosen as a distributed deadlock's
        victim, and a day must not go without its partition."""
        retry = Backoff(1.0, 60.0)
        while True:
            wait = self._interval_s
            try:
                await self.maintain()
                retry.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database may be away (asyncpg then raises OSError, PostgresError,
                # InterfaceError or InternalClientError); the writer reports that. Whatever
                # it is, maintenance must not take the daemon down: try again soon.
                wait = min(self._interval_s, retry.next())
                self._log.warning(
                    "partitions.maintenance_failed", error=repr(exc), retry_in_s=round(wait, 1)
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    def _cutoff(self, today: date) -> date | None:
        return today - timedelta(days=self.retention_days) if self.retention_days else None

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
                created=len(report.created),
                first_created=report.created[:10],
                moved_rows=report.moved_rows,
                dropped=report.dropped,
                deleted_rows=report.deleted_rows,
            )
        if report.left_in_default:
            self._log.warning(
                "partitions.limit_reached",
                max_partitions=self.max_partitions,
                days_in_default=report.left_in_default,
                hint="old or far-off rows stay in the default partition (stored and queried); "
                "raise PARTITION_MAX or set RETENTION_DAYS",
            )
        return report

    async def ensure_days(self, days: set[date], today: date | None = None) -> list[str]:
        """Create the partitions that rows of ``days`` need (for an import of history), by
        the same rules as maintenance, except days past the retention, which maintenance
        would drop anyway."""
        today = today or datetime.now(UTC).date()
        cutoff = self._cutoff(today)
        if cutoff is not None:
            days = {d for d in days if d >= cutoff}
        created: list[str] = []
        if not days:
            return created
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
            try:
                for table in HISTORY_TABLES:
                    plan = plan_partitions(
                        await partition_spans(conn, table),
                        stray=days,
                        today=today,
                        daily_days=self.daily_days,
                        max_partitions=self.max_partitions,
                    )
                    for span in plan.create:
                        await self._create(conn, table, span)
                        created.append(span.name(table))
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        if created:
            self._log.info("partitions.created_for_import", created=created)
        return created

    async def _maintain_table(
        self, conn: Connection, table: str, today: date, report: MaintenanceReport
    ) -> None:
        existing = await partition_spans(conn, table)
        stray_rows = await conn.fetch(
            f"SELECT DISTINCT date_trunc('day', ts, 'UTC') AS day FROM {table}_default"
        )
        cutoff = self._cutoff(today)
        stray = {r["day"].astimezone(UTC).date() for r in stray_rows}
        if cutoff is not None:
            stray = {d for d in stray if d >= cutoff}
        plan = plan_partitions(
            existing,
            regular=[today + timedelta(days=d) for d in range(-1, self.ahead_days + 1)],
            stray=stray,
            today=today,
            daily_days=self.daily_days,
            max_partitions=self.max_partitions,
        )
        report.left_in_default += plan.left_in_default
        for span in plan.create:
            try:
                moved = await self._create(conn, table, span)
            except asyncpg.LockNotAvailableError:
                self._log.warning(
                    "partitions.lock_timeout",
                    table=table,
                    partition=span.name(table),
                    hint="busy; retried at the next maintenance",
                )
                continue
            report.created.append(span.name(table))
            report.moved_rows += moved
        if cutoff is not None:
            for span in sorted(s for s in existing if s.hi <= cutoff):
                name = span.name(table)
                try:
                    async with conn.transaction():
                        await conn.execute(f"ALTER TABLE {table} DETACH PARTITION {name}")
                        await conn.execute(f"DROP TABLE {name}")
                except asyncpg.LockNotAvailableError:
                    self._log.warning("partitions.lock_timeout", table=table, partition=name)
                    continue
                report.dropped.append(name)
            status = await conn.execute(
                f"DELETE FROM {table}_default WHERE ts < $1", day_start(cutoff)
            )
            report.deleted_rows += int(status.split()[-1])

    async def _create(self, conn: Connection, table: str, span: Span) -> int:
        """Create the span's partition, moving its rows out of the default partition."""
        name = span.name(table)
        lo, hi = day_start(span.lo), day_start(span.hi)
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


async def partition_spans(conn: Connection, table: str) -> set[Span]:
    """The day and month partitions of ``table``."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        table,
    )
    spans = set()
    for row in rows:
        if match := _DAY_SUFFIX.search(row["relname"]):
            spans.add(Span.day(datetime.strptime(match[1], "%Y%m%d").date()))
        elif match := _MONTH_SUFFIX.search(row["relname"]):
            spans.add(Span.month(datetime.strptime(match[1], "%Y%m").date()))
    return spans


async def partition_days(conn: Connection, table: str) -> set[date]:
    """The days that have a day partition of their own in ``table``."""
    return {s.lo for s in await partition_spans(conn, table) if s.is_day}
