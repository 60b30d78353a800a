"""Current state of devices: one row per device from ``*_current``, with its open link."""

from __future__ import annotations

import asyncpg

from collector.db.connection import Connection

METER_STATUS = """
SELECT c.meter_id, c.ts, c.kwh_consumed_ac, c.kwh_register_ac, c.register_quality, c.voltage,
       c.received_at,
       extract(epoch FROM now() - c.ts)::float8 AS age_s, l.vehicle_id AS linked
FROM meter_current c
LEFT JOIN vehicle_meter_links l ON l.meter_id = c.meter_id AND l.ended_at IS NULL
"""
VEHICLE_STATUS = """
SELECT c.vehicle_id, c.ts, c.soc, c.kwh_delivered_dc, c.kwh_register_dc, c.register_quality,
       c.battery_temp, c.received_at,
       extract(epoch FROM now() - c.ts)::float8 AS age_s, l.meter_id AS linked
FROM vehicle_current c
LEFT JOIN vehicle_meter_links l ON l.vehicle_id = c.vehicle_id AND l.ended_at IS NULL
"""


async def meter_status(conn: Connection, meter_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(METER_STATUS + "WHERE c.meter_id = $1", meter_id)


async def vehicle_status(conn: Connection, vehicle_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(VEHICLE_STATUS + "WHERE c.vehicle_id = $1", vehicle_id)


async def meter_status_page(
    conn: Connection, *, after: str | None, limit: int, silent_minutes: int | None
) -> list[asyncpg.Record]:
    """Meters in id order after ``after`` (keyset pagination), optionally only silent ones.

    ``> coalesce($1, '')`` rather than ``$1 IS NULL OR ... > $1``: the generic plan the
    statement gets after five executions can then still walk the key's index from the
    cursor (an id is never empty)."""
    return await conn.fetch(
        METER_STATUS
        + """WHERE c.meter_id > coalesce($1::text, '')
               AND ($2::int IS NULL OR c.ts < now() - make_interval(mins => $2))
             ORDER BY c.meter_id LIMIT $3""",
        after,
        silent_minutes,
        limit,
    )


async def vehicle_status_page(
    conn: Connection,
    *,
    after: str | None,
    limit: int,
    silent_minutes: int | None,
    soc_below: float | None,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        VEHICLE_STATUS
        + """WHERE c.vehicle_id > coalesce($1::text, '')
               AND ($2::int IS NULL OR c.ts < now() - make_interval(mins => $2))
               AND ($3::float8 IS NULL OR c.soc < $3)
             ORDER BY c.vehicle_id LIMIT $4""",
        after,
        silent_minutes,
        soc_below,
        limit,
    )


async def count_silent_meters(conn: Connection, silent_minutes: int) -> int:
    """Meters whose latest reading is older than ``silent_minutes``."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM meter_current WHERE ts < now() - make_interval(mins => $1)",
        silent_minutes,
    )
    return count
