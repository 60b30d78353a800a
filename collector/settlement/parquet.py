"""Exports as Parquet (the optional ``parquet`` extra: pyarrow), streamed like the CSV.

One row group per 50,000 rows, written through a sink that hands the bytes on as they are
made (the file's footer comes last), so memory stays bounded as for CSV; the manifest's
SHA-256 is of exactly these bytes. Columns are typed: times as UTC timestamps
(microseconds), the day as a date, counts as integers, energy as doubles.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from collector.errors import UsageError
from collector.settlement.export import Manifest

ROWS_PER_GROUP = 50_000
_INT = {"readings", "gap_minutes", "resets", "quarantined", "replaced", "session_id",
        "connector_id", "members"}  # fmt: skip
_FLOAT = {"kwh", "coverage", "cost", "kwh_charger", "kwh_difference", "meter_start_wh",
          "meter_stop_wh", "main_kwh", "members_kwh", "untracked_kwh", "untracked_ratio",
          "main_coverage", "members_coverage"}  # fmt: skip
_TIME = {"start", "end", "started_at", "stopped_at"}
_BOOL = {"provisional", "complete"}


def available() -> bool:
    try:
        import pyarrow  # noqa: F401, PLC0415 - optional
    except ImportError:
        return False
    return True


def require() -> None:
    if not available():
        raise UsageError(
            "Parquet exports need the optional extra: pip install 'energy-collector[parquet]'"
        )


class _Sink:
    """Where pyarrow writes: collects the bytes until they are handed on."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def _schema(columns: Iterable[str]) -> Any:
    import pyarrow as pa  # noqa: PLC0415 - optional

    def kind(name: str) -> Any:
        if name in _INT:
            return pa.int64()
        if name in _FLOAT:
            return pa.float64()
        if name in _TIME:
            return pa.timestamp("us", tz="UTC")
        if name in _BOOL:
            return pa.bool_()
        if name == "day":
            return pa.date32()
        return pa.string()

    return pa.schema([(c, kind(c)) for c in columns])


async def parquet_chunks(
    manifest: Manifest, rows: AsyncIterator[Iterable[Any]]
) -> AsyncIterator[bytes]:
    """The Parquet bytes of ``rows``, a row group at a time; the manifest is complete once
    the last chunk is out."""
    import pyarrow as pa  # noqa: PLC0415 - optional
    import pyarrow.parquet as pq  # noqa: PLC0415 - optional

    manifest.format = "parquet"
    schema = _schema(manifest.columns)
    sink = _Sink()
    writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema)
    digest = hashlib.sha256()
    group: list[list[Any]] = []

    def flush() -> bytes:
        if group:
            columns = list(zip(*group, strict=True))
            arrays = [pa.array(list(c), type=f.type) for c, f in zip(columns, schema, strict=True)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            group.clear()
        data = sink.take()
        digest.update(data)
        manifest.bytes += len(data)
        return data

    async for row in rows:
        group.append([str(v) if isinstance(v, str) else v for v in row])
        manifest.rows += 1
        if len(group) >= ROWS_PER_GROUP:
            yield flush()
    yield flush()
    writer.close()
    data = sink.take()
    digest.update(data)
    manifest.bytes += len(data)
    yield data
    manifest.sha256 = digest.hexdigest()
