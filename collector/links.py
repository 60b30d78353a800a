"""Vehicle-meter links: the writes (configuration, not readings). The API's link endpoints
and the OCPP sessions (an id tag standing for a vehicle links it to the connector's meter for
the session's span) make them the same way."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from collector.db.connection import Connection

LINK_COLUMNS = "vehicle_id, meter_id, started_at, ended_at"


class LinkConflict(Exception):
    """The link cannot start then (it would overlap the history); the message says why."""


async def put_link(
    conn: Connection, vehicle_id: str, meter_id: str, started_at: datetime
) -> tuple[asyncpg.Record, bool]:
    """Link the vehicle to the meter from ``started_at``; returns (link, created).

    Ends the vehicle's open link (it moved) and the meter's open link to another vehicle
    (that one left the charger). Linking to the meter it is already on changes nothing.
    """
    async with conn.transaction():
        # Serialise link changes: two concurrent PUTs must not both see "no open link".
        await conn.execute("LOCK TABLE vehicle_meter_links IN SHARE ROW EXCLUSIVE MODE")
        current = await conn.fetchrow(
            f"SELECT id, {LINK_COLUMNS} FROM vehicle_meter_links "
            "WHERE vehicle_id = $1 AND ended_at IS NULL",
            vehicle_id,
        )
        if current is not None and current["meter_id"] == meter_id:
            return current, False
        latest = await conn.fetchval(
            """SELECT max(greatest(started_at, coalesce(ended_at, started_at)))
               FROM vehicle_meter_links WHERE vehicle_id = $1 OR meter_id = $2""",
            vehicle_id,
            meter_id,
        )
        if latest is not None and started_at <= latest:
            raise LinkConflict(
                f"startedAt {started_at.isoformat()} is not after the latest link change of "
                f"this vehicle or meter ({latest.isoformat()}); link history only moves forward"
            )
        await conn.execute(
            "UPDATE vehicle_meter_links SET ended_at = $3 "
            "WHERE ended_at IS NULL AND (vehicle_id = $1 OR meter_id = $2)",
            vehicle_id,
            meter_id,
            started_at,
        )
        row = await conn.fetchrow(
            f"INSERT INTO vehicle_meter_links (vehicle_id, meter_id, started_at) "
            f"VALUES ($1, $2, $3) RETURNING {LINK_COLUMNS}",
            vehicle_id,
            meter_id,
            started_at,
        )
        assert row is not None
        return row, True


async def end_link(conn: Connection, vehicle_id: str) -> asyncpg.Record | None:
    """End the vehicle's open link now; None if it has none."""
    return await conn.fetchrow(
        f"UPDATE vehicle_meter_links SET ended_at = greatest(now(), started_at + "
        f"interval '1 microsecond') WHERE vehicle_id = $1 AND ended_at IS NULL "
        f"RETURNING {LINK_COLUMNS}",
        vehicle_id,
    )


async def end_link_at(conn: Connection, vehicle_id: str, meter_id: str, ended_at: datetime) -> None:
    """End the vehicle's open link to this meter at ``ended_at`` (a session's end), if it
    is still open and began before it."""
    await conn.execute(
        "UPDATE vehicle_meter_links SET ended_at = $3 WHERE vehicle_id = $1 AND meter_id = $2 "
        "AND ended_at IS NULL AND started_at < $3",
        vehicle_id,
        meter_id,
        ended_at,
    )
