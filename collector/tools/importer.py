"""`energy-collector import FILE`: history from a CSV or NDJSON file, at COPY speed.

Each row is validated exactly as an MQTT payload is (collector/readings.py), in chunks:
the valid rows of a chunk go by COPY into a temporary table, and one statement per kind
moves them into history (``ON CONFLICT DO NOTHING``), the current state (guarded upsert)
and the hourly rollups (only the rows really added), the same SQL the writer runs
(collector/store.py). Importing a file twice adds nothing the second time.

The day partitions a chunk needs are created first, so old history lands in its own
partitions, not the default one. Rejected rows are written to a report (CSV: line, reason,
detail, raw row) and counted by reason; nothing is written to ``rejected_messages``, which is
for live traffic.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg
import structlog
from tqdm import tqdm

from collector.db.connection import Connection
from collector.db.partitions import PartitionManager
from collector.db.prepare import create_pool, prepare_database
from collector.errors import CollectorError
from collector.ingest.readings import (
    Kind,
    MeterReading,
    ReadingValidator,
    Reason,
    Rejection,
    VehicleReading,
    kind_of,
)
from collector.ingest.register_store import RegisterBooker
from collector.ingest.registers import DEFAULT_RULES, Rules
from collector.ingest.store import METER, NO_REGISTER, VEHICLE, Batch, history_sql
from collector.runtime import run_async
from collector.settings import Settings

CHUNK_ROWS = 20_000
NUMERIC_FIELDS = frozenset(
    {"kwhConsumedAc", "kwhRegisterAc", "voltage", "soc", "kwhDeliveredDc", "kwhRegisterDc",
     "batteryTemp"}
)  # fmt: skip
NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".json")

STAGING_SQL = """
CREATE TEMP TABLE IF NOT EXISTS import_meters (
    meter_id text, ts timestamptz, kwh_consumed_ac float8, voltage float8,
    received_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS import_vehicles (
    vehicle_id text, ts timestamptz, soc float8, kwh_delivered_dc float8, battery_temp float8,
    received_at timestamptz
) ON COMMIT DELETE ROWS;
"""
# Interval readings only (register readings are booked, as the writer books them).
# Key order, as the writer: concurrent writers take row locks in the same order.
IMPORT_METERS_SQL = (
    "WITH "
    + history_sql(
        METER,
        f"SELECT meter_id, ts, kwh_consumed_ac, voltage, received_at, {NO_REGISTER} "
        "FROM import_meters ORDER BY meter_id, ts",
        mark_dirty=True,
    )
    + " SELECT count(*) FROM meter_new"
)
IMPORT_VEHICLES_SQL = (
    "WITH "
    + history_sql(
        VEHICLE,
        f"SELECT vehicle_id, ts, soc, kwh_delivered_dc, battery_temp, received_at, {NO_REGISTER}"
        " FROM import_vehicles ORDER BY vehicle_id, ts",
        mark_dirty=True,
    )
    + " SELECT count(*) FROM vehicle_new"
)


class ImportFailed(CollectorError):
    """The file cannot be imported (unreadable, unknown format); the message says why."""


@dataclass
class ImportReport:
    path: str
    rows: int = 0
    meters_new: int = 0
    vehicles_new: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejects_path: Path | None = None
    partitions_created: int = 0
    elapsed_s: float = 0.0

    @property
    def already_stored(self) -> int:
        """Valid rows that were in the history already (a re-import, duplicates)."""
        return self.accepted - self.meters_new - self.vehicles_new

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s else 0.0


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    raw: bytes  # the row as JSON, what the validator reads
    kind: Kind | None
    problem: tuple[Reason, str] | None = None


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.suffix.lower() in NDJSON_SUFFIXES:
        return "ndjson"
    if path.suffix.lower() == ".csv":
        return "csv"
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return "ndjson" if head.startswith(b"{") else "csv"


class Counted:
    """A binary file's lines, counting the bytes read (for the progress bar)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.bytes_read = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self._f:
            self.bytes_read += len(line)
            yield line


def ndjson_rows(lines: Counted) -> Iterator[Row]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        line = line.rstrip(b"\r\n")  # noqa: PLW2901
        try:
            obj = json.loads(line)
        except ValueError as exc:
            yield Row(number, line, None, (Reason.INVALID_JSON, f"invalid JSON: {exc}"))
            continue
        yield _row(number, line, obj)


def csv_rows(lines: Counted) -> Iterator[Row]:
    """CSV with a header of the payload's field names; numbers as numbers, empty = absent."""
    reader = csv.DictReader(line.decode("utf-8", errors="replace") for line in lines)
    if reader.fieldnames is None:
        return
    twice = sorted({f for f in reader.fieldnames if reader.fieldnames.count(f) > 1})
    if twice:  # every row would be ambiguous, as a JSON object with a key given twice
        raise ImportFailed(f"the CSV header names {', '.join(map(repr, twice))} more than once")
    for record in reader:
        if None in record:  # DictReader's key for cells beyond the header
            cells = [*(v for k, v in record.items() if k is not None), *record[None]]
            yield Row(
                reader.line_num,
                ",".join(cells).encode(),
                None,
                (Reason.INVALID_SHAPE, "more cells than the header has fields"),
            )
            continue
        obj: dict[str, object] = {}
        for name, value in record.items():
            if value is None or value == "":
                continue
            if name in NUMERIC_FIELDS:
                try:
                    obj[name] = float(value)
                    continue
                except ValueError:
                    pass  # kept as text: the validator says it is not a number
            obj[name] = value
        yield _row(reader.line_num, json.dumps(obj).encode(), obj)


def _row(number: int, raw: bytes, obj: object) -> Row:
    if not isinstance(obj, dict):
        return Row(number, raw, None, (Reason.INVALID_SHAPE, "a reading must be an object"))
    kind = kind_of(obj)
    if kind is None:
        return Row(
            number,
            raw,
            None,
            (Reason.UNKNOWN_KIND, "a reading has either meterId or vehicleId"),
        )
    return Row(number, raw, kind)


@dataclass
class Prepared:
    """A chunk's valid rows, ready for COPY."""

    meters: list[tuple] = field(default_factory=list)
    vehicles: list[tuple] = field(default_factory=list)
    #: readings that carry a register: booked, not copied
    registers: list[MeterReading | VehicleReading] = field(default_factory=list)
    days: set[date] = field(default_factory=set)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Importer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        validator: ReadingValidator,
        partitions: PartitionManager,
        retention_days: int = 0,
        booker: RegisterBooker | None = None,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self._pool = pool
        self._booker = booker or RegisterBooker(DEFAULT_RULES)
        self._validator = validator
        self._partitions = partitions
        self._retention_days = retention_days
        self._log = log or structlog.get_logger("collector.importer")
        self._days_ready: set[date] = set()

    async def run(
        self,
        path: Path,
        *,
        fmt: str = "auto",
        rejects_path: Path,
        progress: bool = True,
    ) -> ImportReport:
        """Import ``path``. Reading and validating a chunk (in a thread) overlaps with the
        database writing the previous one (bench/import_speed.py: 79,000 rows/s, from 55,000
        doing one after the other)."""
        try:
            f = path.open("rb")
        except OSError as exc:
            raise ImportFailed(f"cannot read {path}: {exc.strerror}") from None
        fmt = detect_format(path, fmt)
        report = ImportReport(str(path))
        began = time.monotonic()
        with f, Rejects(rejects_path) as rejects:
            lines = Counted(f)
            rows = ndjson_rows(lines) if fmt == "ndjson" else csv_rows(lines)
            bar = _progress_bar(path, progress)
            last_log = began
            async with self._pool.acquire() as conn:
                await conn.execute(STAGING_SQL)
                writing: asyncio.Task[None] | None = None
                try:
                    while True:
                        prepared = await asyncio.to_thread(
                            self._prepare_next, rows, path, report, rejects
                        )
                        if writing is not None:
                            await writing
                            writing = None
                        if prepared is None:
                            # Interval rows among register devices' readings change their
                            # bookings: book those again before the import ends.
                            while await self._booker.rebook_dirty(conn):
                                pass
                            break
                        writing = asyncio.create_task(self._write(conn, prepared, report))
                        now = time.monotonic()
                        if bar is not None:
                            bar.update(lines.bytes_read - bar.n)
                            bar.set_postfix(
                                rows=report.rows, rejected=report.rows - report.accepted
                            )
                        elif now - last_log >= 10:
                            last_log = now
                            self._log.info(
                                "import.progress",
                                rows=report.rows,
                                accepted=report.accepted,
                                rows_per_s=round(report.rows / (now - began)),
                            )
                finally:
                    if writing is not None:
                        writing.cancel()
            if bar is not None:
                bar.close()
        report.elapsed_s = time.monotonic() - began
        report.rejects_path = rejects.path if rejects.count else None
        self._log.info(
            "import.finished",
            file=str(path),
            rows=report.rows,
            meters_new=report.meters_new,
            vehicles_new=report.vehicles_new,
            already_stored=report.already_stored,
            rejected=dict(report.rejected),
            rows_per_s=round(report.rate),
        )
        return report

    def _prepare_next(
        self, rows: Iterator[Row], path: Path, report: ImportReport, rejects: Rejects
    ) -> Prepared | None:
        """Read and validate the next chunk; None at the end of the file."""
        chunk = list(itertools.islice(rows, CHUNK_ROWS))
        if not chunk:
            return None
        now = datetime.now(UTC)
        horizon = self._validator.horizon(now)
        oldest = now - timedelta(days=self._retention_days) if self._retention_days else None
        out = Prepared(received_at=now)
        for row in chunk:
            report.rows += 1
            if row.problem is not None:
                rejects.add(row, *row.problem)
                report.rejected[row.problem[0].value] += 1
                continue
            assert row.kind is not None
            result = self._validator.validate(
                row.kind,
                row.raw,
                source=f"import:{path.name}:{row.line}",
                expected_id=None,
                horizon=horizon,
            )
            if isinstance(result, Rejection):
                rejects.add(row, result.reason, result.detail)
                report.rejected[result.reason.value] += 1
                continue
            if oldest is not None and result.timestamp < oldest:
                detail = (
                    f"timestamp {result.timestamp.isoformat()} is older than RETENTION_DAYS="
                    f"{self._retention_days}: maintenance would delete it"
                )
                rejects.add(row, Reason.OUT_OF_RANGE, detail)
                report.rejected[Reason.OUT_OF_RANGE.value] += 1
                continue
            report.accepted += 1
            out.days.add(result.timestamp.astimezone(UTC).date())
            if result.register is not None:
                out.registers.append(result)
            elif isinstance(result, MeterReading):
                out.meters.append(
                    (result.meterId, result.timestamp, result.kwhConsumedAc, result.voltage, now)
                )
            else:
                out.vehicles.append(
                    (
                        result.vehicleId,
                        result.timestamp,
                        result.soc,
                        result.kwhDeliveredDc,
                        result.batteryTemp,
                        now,
                    )
                )
        return out

    async def _write(self, conn: Connection, prepared: Prepared, report: ImportReport) -> None:
        """One transaction per chunk: COPY into the staging tables, then the writer's SQL;
        register readings are booked as the writer books them."""
        missing = prepared.days - self._days_ready
        if missing:
            created = await self._partitions.ensure_days(missing)
            report.partitions_created += len(created)
            self._days_ready |= missing
        async with conn.transaction():
            if prepared.meters:
                await conn.copy_records_to_table("import_meters", records=prepared.meters)
                report.meters_new += await conn.fetchval(IMPORT_METERS_SQL)
            if prepared.vehicles:
                await conn.copy_records_to_table("import_vehicles", records=prepared.vehicles)
                report.vehicles_new += await conn.fetchval(IMPORT_VEHICLES_SQL)
            if prepared.registers:
                batch = Batch()
                for reading in prepared.registers:
                    if isinstance(reading, MeterReading):
                        batch.meters.append(reading)
                        batch.meters_received.append(prepared.received_at)
                    else:
                        batch.vehicles.append(reading)
                        batch.vehicles_received.append(prepared.received_at)
                result = await self._booker.write(conn, batch, 600)
                report.meters_new += result.meters_new
                report.vehicles_new += result.vehicles_new


def default_rejects_path(path: Path) -> Path:
    """Where the rejected rows go unless told: beside the input file, never the working
    directory (which may be a checkout of the repository)."""
    return path.with_name(f"{path.name}.rejected.csv")


def run(
    settings: Settings, path: Path, *, fmt: str, rejects_path: Path | None, progress: bool
) -> int:
    """``energy-collector import FILE``: 0 when every row is stored (or was already), 3 when
    some rows were rejected (see the report); raises ``CollectorError`` when it cannot run."""
    if not path.is_file():
        raise ImportFailed(f"{path} is not a readable file")
    rejects = rejects_path or default_rejects_path(path)

    async def main() -> ImportReport:
        await prepare_database(settings)
        pool = await create_pool(settings, min_size=1, max_size=2)
        try:
            importer = Importer(
                pool,
                validator=ReadingValidator.from_settings(settings),
                partitions=PartitionManager.from_settings(pool, settings),
                retention_days=settings.retention_days,
                booker=RegisterBooker(Rules.from_settings(settings)),
            )
            return await importer.run(path, fmt=fmt, rejects_path=rejects, progress=progress)
        finally:
            await pool.close()

    report = run_async(main())
    rejected = sum(report.rejected.values())
    print(
        f"{path}: {report.rows} rows in {report.elapsed_s:.1f} s ({report.rate:,.0f}/s): "
        f"{report.meters_new} meter and {report.vehicles_new} vehicle readings stored, "
        f"{report.already_stored} already stored, {rejected} rejected"
    )
    if rejected:
        reasons = ", ".join(f"{n} {r}" for r, n in report.rejected.most_common())
        print(f"rejected: {reasons}; rows in {report.rejects_path}")
        return 3
    return 0


class Rejects:
    """The rejected-rows report: a CSV of line, reason, detail and the row; written only
    when something is rejected."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: IO[str] | None = None
        self._writer: Any = None  # a csv writer, made at the first rejected row

    def __enter__(self) -> Rejects:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def add(self, row: Row, reason: Reason, detail: str) -> None:
        if self._writer is None:
            self._file = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(["line", "reason", "detail", "row"])
        self.count += 1
        self._writer.writerow(
            [row.line, reason.value, detail, row.raw.decode("utf-8", errors="replace")]
        )


def _progress_bar(path: Path, enabled: bool):
    if not (enabled and sys.stderr.isatty()):
        return None

    return tqdm(
        total=path.stat().st_size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=path.name,
        dynamic_ncols=True,
    )
