"""Exports: device-days, sessions and site balances as CSV, streamed, each with a manifest.

What leaves the system to be billed must be checkable: every export comes with a manifest
(what it is, the window and zone, how many rows, the SHA-256 of exactly the bytes written,
when and by which version it was made). Rows are produced a day at a time and written as
they come, so a year of a large fleet takes the memory of one day.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import io
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from collector.db.connection import Connection
from collector.readmodel.sessions import SESSION_SELECT, SESSION_SIGNED
from collector.settlement.balance import BalanceRow, site_balance
from collector.settlement.days import DeviceDay, device_days, site_devices
from collector.settlement.sites import Site, Sites


def version() -> str:
    try:
        return importlib.metadata.version("energy-collector")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cell(value: Any) -> str:
    """A CSV cell: times in ISO 8601 UTC, floats exact (the shortest text that reads back as
    the same number), booleans as true/false, nothing as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(slots=True)
class Manifest:
    export: str
    columns: tuple[str, ...]
    start: str
    end: str
    zone: str | None
    site: str | None
    rows: int = 0
    sha256: str = ""
    bytes: int = 0
    generated_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z")
    )
    version: str = field(default_factory=version)
    format: str = "csv"

    def as_dict(self) -> dict[str, Any]:
        return {
            "export": self.export,
            "format": self.format,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "from": self.start,
            "to": self.end,
            "zone": self.zone,
            "site": self.site,
            "columns": list(self.columns),
            "generatedAt": self.generated_at,
            "version": self.version,
        }


async def csv_chunks(
    manifest: Manifest, rows: AsyncIterator[Iterable[Any]], rows_per_chunk: int = 2000
) -> AsyncIterator[bytes]:
    """The CSV bytes of ``rows`` (after a header of the manifest's columns), a chunk at a
    time; the manifest's rows, bytes and SHA-256 are complete once the last chunk is out."""
    digest = hashlib.sha256()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(manifest.columns)
    pending = 0

    def flush() -> bytes:
        data = buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        digest.update(data)
        manifest.bytes += len(data)
        return data

    async for row in rows:
        writer.writerow([cell(v) for v in row])
        manifest.rows += 1
        pending += 1
        if pending >= rows_per_chunk:
            pending = 0
            yield flush()
    yield flush()
    manifest.sha256 = digest.hexdigest()


# --- the three exports --------------------------------------------------------------------

EXPORTS = ("device-days", "sessions", "site-balance")
SESSION_COLUMNS = (
    "session_id", "charger_id", "connector_id", "meter_id", "site_id", "transaction_id",
    "protocol", "id_tag", "vehicle_id", "started_at", "stopped_at", "kwh", "kwh_charger",
    "kwh_difference", "state", "stop_reason", "quality", "provisional", "meter_start_wh",
    "meter_stop_wh", "signed_data",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What to export: local days ``first``..``last`` (inclusive) of ``zone`` (a site's
    zone, or UTC), optionally one site."""

    export: str
    first: date
    last: date
    site: Site | None
    tz: str | None
    bucket: str = "hour"

    @property
    def zone(self) -> str | None:
        if self.tz:
            return self.tz
        return self.site.tz if self.site else None


def manifest_for(request: ExportRequest) -> Manifest:
    columns = {
        "device-days": DeviceDay.FIELDS,
        "sessions": SESSION_COLUMNS,
        "site-balance": BalanceRow.FIELDS,
    }[request.export]
    return Manifest(
        export=request.export,
        columns=columns,
        start=request.first.isoformat(),
        end=(request.last + timedelta(days=1)).isoformat(),
        zone=request.zone or "per site (UTC without one)",
        site=request.site.id if request.site else None,
    )


async def export_rows(
    conn: Connection, sites: Sites, request: ExportRequest
) -> AsyncIterator[Iterable[Any]]:
    """The rows of an export, in order, produced as they are written."""
    if request.export == "device-days":
        async for day in device_days(
            conn, sites, request.first, request.last, site=request.site, tz=request.tz
        ):
            yield [getattr(day, f) for f in DeviceDay.FIELDS]
    elif request.export == "sessions":
        async for row in _sessions(conn, sites, request):
            yield row
    else:
        chosen = [request.site] if request.site else [s for s in sites.sites if s.main_meter]
        for site in chosen:
            zone = ZoneInfo(request.tz or site.tz)
            start = datetime.combine(request.first, time(), zone)
            end = datetime.combine(request.last + timedelta(days=1), time(), zone)
            members = [d for kind, d in await site_devices(conn, site) if kind == "meter"]
            members = [d for d in members if d != site.main_meter]
            cursor = start
            while cursor < end:  # a day at a time: bounded memory
                upto = min(end, datetime.combine(cursor.date() + timedelta(days=1), time(), zone))
                balances = await site_balance(
                    conn, site, members, start=cursor, end=upto,
                    bucket="day" if request.bucket == "day" else "hour",
                )  # fmt: skip
                for balance in balances:
                    yield [getattr(balance, f) for f in BalanceRow.FIELDS]
                cursor = upto


async def _sessions(
    conn: Connection, sites: Sites, request: ExportRequest
) -> AsyncIterator[list[Any]]:
    zone = ZoneInfo(request.zone or "UTC")
    start = datetime.combine(request.first, time(), zone)
    end = datetime.combine(request.last + timedelta(days=1), time(), zone)
    async with conn.transaction():  # a cursor streams the rows
        query = (
            f"SELECT q.*, ({SESSION_SIGNED.replace('s.', 'q.')}) AS signed "
            f"FROM ({SESSION_SELECT} WHERE s.started_at >= $1 AND s.started_at < $2) q "
            "ORDER BY q.started_at, q.id"
        )
        async for r in conn.cursor(query, start, end, prefetch=500):
            site = sites.of(r["meter_id"])
            if request.site is not None and (site is None or site.id != request.site.id):
                continue
            kwh = float(r["kwh"] or 0.0)
            a, b = r["meter_start_wh"], r["meter_stop_wh"]
            charger = (b - a) / 1000 if a is not None and b is not None else None
            yield [
                r["id"], r["charger_id"], r["connector_id"], r["meter_id"],
                site.id if site else None, r["transaction_id"], r["protocol"], r["id_tag"],
                r["vehicle_id"], r["started_at"], r["stopped_at"], kwh, charger,
                None if charger is None else kwh - charger, r["state"], r["stop_reason"],
                ";".join(r["quality"]), r["state"] == "active" or r["pending"] > 0,
                a, b, r["signed"] if r["signed"] != "[]" else None,
            ]  # fmt: skip
