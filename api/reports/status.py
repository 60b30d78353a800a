"""Devices' latest state: one device, a page of them, the silent ones."""

from __future__ import annotations

import asyncpg

from api.models import MeterStatus, MeterStatusPage, VehicleStatus, VehicleStatusPage
from api.problems import ProblemError
from api.queries import status as qs
from api.reports.common import ALL
from collector.db.connection import Connection
from collector.ingest.streams import METER, VEHICLE, Stream


def _status(stream: Stream, row: asyncpg.Record, linked: str) -> dict[str, object]:
    """A current row as a status model's fields (camelCase: the payload's names)."""
    return {
        stream.id_field: row[stream.device],
        "timestamp": row["ts"],
        **{m.field: row[m.column] for m in stream.measures},
        stream.register_field: row[stream.register],
        "registerQuality": row["register_quality"],
        "receivedAt": row["received_at"],
        "ageSeconds": row["age_s"],
        linked: row["linked"],
    }


def meter_status_out(row: asyncpg.Record) -> MeterStatus:
    return MeterStatus.model_validate(_status(METER, row, "linkedVehicleId"))


def vehicle_status_out(row: asyncpg.Record) -> VehicleStatus:
    return VehicleStatus.model_validate(_status(VEHICLE, row, "linkedMeterId"))


async def meter_status(conn: Connection, meter: str) -> MeterStatus:
    row = await qs.meter_status(conn, meter)
    if row is None:
        raise ProblemError(404, f"meter {meter!r} has never reported")
    return meter_status_out(row)


async def vehicle_status(conn: Connection, vehicle: str) -> VehicleStatus:
    row = await qs.vehicle_status(conn, vehicle)
    if row is None:
        raise ProblemError(404, f"vehicle {vehicle!r} has never reported")
    return vehicle_status_out(row)


async def vehicle_status_if_any(conn: Connection, vehicle: str) -> VehicleStatus | None:
    """The vehicle's state, or None for one known only from its links."""
    row = await qs.vehicle_status(conn, vehicle)
    return None if row is None else vehicle_status_out(row)


async def meter_has_reported(conn: Connection, meter: str) -> bool:
    return await qs.meter_status(conn, meter) is not None


async def meter_page(
    conn: Connection, *, after: str | None, limit: int, silent_minutes: int | None
) -> MeterStatusPage:
    rows = await qs.meter_status_page(conn, after=after, limit=limit, silent_minutes=silent_minutes)
    items = [meter_status_out(r) for r in rows]
    next_cursor = items[-1].meterId if len(items) == limit else None
    return MeterStatusPage(items=items, limit=limit, nextCursor=next_cursor)


async def vehicle_page(
    conn: Connection,
    *,
    after: str | None,
    limit: int,
    silent_minutes: int | None,
    soc_below: float | None,
) -> VehicleStatusPage:
    rows = await qs.vehicle_status_page(
        conn, after=after, limit=limit, silent_minutes=silent_minutes, soc_below=soc_below
    )
    items = [vehicle_status_out(r) for r in rows]
    next_cursor = items[-1].vehicleId if len(items) == limit else None
    return VehicleStatusPage(items=items, limit=limit, nextCursor=next_cursor)


async def all_vehicle_statuses(conn: Connection) -> list[VehicleStatus]:
    """Every vehicle's state (the dashboard's fleet table)."""
    rows = await qs.vehicle_status_page(
        conn, after=None, limit=ALL, silent_minutes=None, soc_below=None
    )
    return [vehicle_status_out(r) for r in rows]


async def silent_meter_count(conn: Connection, silent_minutes: int) -> int:
    """Meters whose latest reading is older than ``silent_minutes``."""
    return await qs.count_silent_meters(conn, silent_minutes)
