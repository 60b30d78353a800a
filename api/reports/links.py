"""Which vehicle was on which meter's charger: a vehicle's links, a meter's, changes."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from api.models import Link, LinkHistory, MeterLinks
from api.problems import ProblemError
from api.queries import links as ql
from api.queries import status as qs
from collector.db.connection import Connection


def link_out(row: asyncpg.Record) -> Link:
    return Link(
        vehicleId=row["vehicle_id"],
        meterId=row["meter_id"],
        startedAt=row["started_at"],
        endedAt=row["ended_at"],
    )


async def require_vehicle(conn: Connection, vehicle: str) -> None:
    if await qs.vehicle_status(conn, vehicle) is None and not await ql.link_history(conn, vehicle):
        raise ProblemError(404, f"vehicle {vehicle!r} has never reported nor been linked")


def _history(rows: list[asyncpg.Record]) -> tuple[list[Link], Link | None]:
    """Links newest first, and the open one (if any)."""
    history = [link_out(r) for r in rows]
    return history, next((link for link in history if link.endedAt is None), None)


async def links(conn: Connection, vehicle: str) -> LinkHistory:
    rows = await ql.link_history(conn, vehicle)
    if not rows and await qs.vehicle_status(conn, vehicle) is None:
        raise ProblemError(404, f"vehicle {vehicle!r} has never reported nor been linked")
    history, current = _history(rows)
    return LinkHistory(vehicleId=vehicle, current=current, history=history)


async def meter_links(conn: Connection, meter: str) -> MeterLinks:
    rows = await ql.meter_link_history(conn, meter)
    if not rows and await qs.meter_status(conn, meter) is None:
        raise ProblemError(404, f"meter {meter!r} has never reported nor been linked")
    history, current = _history(rows)
    return MeterLinks(meterId=meter, current=current, history=history)


async def put_link(
    conn: Connection, vehicle: str, meter: str, started_at: datetime
) -> tuple[Link, bool]:
    """Link ``vehicle`` to ``meter`` from ``started_at``: (the link, whether it is new);
    409 when that would rewrite the link history."""
    try:
        row, created = await ql.put_link(conn, vehicle, meter, started_at)
    except ql.LinkConflict as exc:
        raise ProblemError(409, str(exc)) from None
    return link_out(row), created


async def end_link(conn: Connection, vehicle: str) -> Link:
    """End the vehicle's open link now; 404 when it has none."""
    row = await ql.end_link(conn, vehicle)
    if row is None:
        raise ProblemError(404, f"vehicle {vehicle!r} is not linked to a meter")
    return link_out(row)
