"""`energy-collector import FILE`: history from a CSV or NDJSON file, at COPY speed.

Each row is classified exactly as an MQTT payload is (``collector.ingest.sink.classify``),
in chunks: the valid rows of a chunk go by COPY into a temporary table per stream, and one
statement per stream moves them into history (``ON CONFLICT DO NOTHING``), the current state
(guarded upsert) and the hourly rollups (only the rows really added), the same SQL the
writer runs (``collector.ingest.store``); register readings are booked as the writer books
them (``collector.ingest.booking``). Importing a file twice adds nothing the second time.

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
from collector.ingest.batch import Batch
from collector.ingest.booking.booker import RegisterBooker
from collector.ingest.booking.registers import DEFAULT_LIMITS, RegisterLimits
from collector.ingest.readings import Reading, Reason
from collector.ingest.sink import Item, classify
from collector.ingest.store import NO_REGISTER, history_sql
from collector.ingest.streams import STREAMS, Stream, of_object
from collector.ingest.validation import ReadingValidator
from collector.runtime import run_async
from collector.settings import Settings

CHUNK_ROWS = 20_000
#: The payload fields given as numbers (a CSV cell is text until told).
NUMERIC_FIELDS = frozenset(f for t in STREAMS.values() for f in (*t.fields, t.register_field))
NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".json")


def _staging_sql(t: Stream) -> str:
    columns = ", ".join(f"{c} float8" for c in t.values)
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS import_{t.name} ({t.device} text, ts timestamptz, "
        f"{columns}, received_at timestamptz) ON COMMIT DELETE ROWS;"
    )


#: A temporary table per stream for the COPY of a chunk's interval readings.
STAGING_SQL = "\n".join(_staging_sql(t) for t in STREAMS.values())


def _import_sql(t: Stream) -> str:
    # Interval readings only (register readings are booked, as the writer books them).
    # Key order, as the writer: concurrent writers take row locks in the same order.
    rows = (
        f"SELECT {t.device}, ts, {', '.join(t.values)}, received_at, {NO_REGISTER} "
        f"FROM import_{t.name} ORDER BY {t.device}, ts"
    )
    return f"WITH {history_sql(t, rows, mark_dirty=True)} SELECT count(*) FROM {t.name}_new"


#: Per stream: the staged rows into history, current state and rollups; how many were new.
IMPORT_SQL = {name: _import_sql(t) for name, t in STREAMS.items()}


class ImportFailed(CollectorError):
    """The file cannot be imported (unreadable, unknown format); the message says why."""


def _zeros() -> dict[str, int]:
    return dict.fromkeys(STREAMS, 0)


@dataclass
class ImportReport:
    path: str
    rows: int = 0
    #: Readings new in the history, per stream.
    new: dict[str, int] = field(default_factory=_zeros)
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejects_path: Path | None = None
    partitions_created: int = 0
    elapsed_s: float = 0.0

    @property
    def already_stored(self) -> int:
        """Valid rows that were in the history already (a re-import, duplicates)."""
        return self.accepted - sum(self.new.values())

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s else 0.0


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    raw: bytes  # the row as JSON, what the validator reads
    stream: Stream | None
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


_ID_FIELDS = " or ".join(t.id_field for t in STREAMS.values())


def _row(number: int, raw: bytes, obj: object) -> Row:
    if not isinstance(obj, dict):
        return Row(number, raw, None, (Reason.INVALID_SHAPE, "a reading must be an object"))
    stream = of_object(obj)
    if stream is None:
        return Row(number, raw, None, (Reason.UNKNOWN_KIND, f"a reading has either {_ID_FIELDS}"))
    return Row(number, raw, stream)


def _copies() -> dict[str, list[tuple[object, ...]]]:
    return {name: [] for name in STREAMS}


@dataclass
class Prepared:
    """A chunk's valid rows, ready for COPY."""

    #: interval readings per stream, as rows of its staging table
    copies: dict[str, list[tuple[object, ...]]] = field(default_factory=_copies)
    #: readings that carry a register: booked, not copied
    registers: list[Reading] = field(default_factory=list)
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
        self._booker = booker or RegisterBooker(DEFAULT_LIMITS)
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
            new=report.new,
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
        oldest = now - timedelta(days=self._retention_days) if self._retention_days else None
        items = [
            Item(row.stream, row.raw, f"import:{path.name}:{row.line}", problem=row.problem)
            for row in chunk
        ]
        submission = classify(self._validator, items, now)
        refused = dict(submission.refused)
        # Each stream's readings are in item order: walk the rows and take them in turn.
        accepted = {name: iter(readings) for name, readings in submission.readings.items()}
        out = Prepared(received_at=now)
        for index, row in enumerate(chunk):
            report.rows += 1
            rejection = refused.get(index)
            if rejection is not None:
                rejects.add(row, rejection.reason, rejection.detail)
                report.rejected[rejection.reason.value] += 1
                continue
            assert row.stream is not None
            reading = next(accepted[row.stream.name])
            if oldest is not None and reading.timestamp < oldest:
                detail = (
                    f"timestamp {reading.timestamp.isoformat()} is older than RETENTION_DAYS="
                    f"{self._retention_days}: maintenance would delete it"
                )
                rejects.add(row, Reason.OUT_OF_RANGE, detail)
                report.rejected[Reason.OUT_OF_RANGE.value] += 1
                continue
            report.accepted += 1
            out.days.add(reading.timestamp.astimezone(UTC).date())
            if reading.register is not None:
                out.registers.append(reading)
            else:
                values = [getattr(reading, f) for f in row.stream.fields]
                out.copies[row.stream.name].append(
                    (reading.device_id, reading.timestamp, *values, now)
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
            for name, records in prepared.copies.items():
                if records:
                    await conn.copy_records_to_table(f"import_{name}", records=records)
                    report.new[name] += await conn.fetchval(IMPORT_SQL[name])
            if prepared.registers:
                batch = Batch.of(prepared.registers, prepared.received_at)
                result = await self._booker.write(conn, batch, 600)
                for name, n in result.new.items():
                    report.new[name] += n


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
                booker=RegisterBooker(RegisterLimits.from_settings(settings)),
            )
            return await importer.run(path, fmt=fmt, rejects_path=rejects, progress=progress)
        finally:
            await pool.close()

    report = run_async(main())
    rejected = sum(report.rejected.values())
    print(
        f"{path}: {report.rows} rows in {report.elapsed_s:.1f} s ({report.rate:,.0f}/s): "
        f"{' and '.join(f'{n} {name}' for name, n in report.new.items())} readings stored, "
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
