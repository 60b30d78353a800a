"""Vehicle-meter links: the reads (the writes are ``collector.links``, shared with the OCPP
sessions)."""

from __future__ import annotations

import asyncpg

from collector.db.connection import Connection
from collector.links import LINK_COLUMNS, LinkConflict, end_link, put_link

__all__ = ["LinkConflict", "end_link", "link_history", "meter_link_history", "put_link"]


async def link_history(conn: Connection, vehicle_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {LINK_COLUMNS} FROM vehicle_meter_links WHERE vehicle_id = $1 "
        "ORDER BY started_at DESC, id DESC",
        vehicle_id,
    )


async def meter_link_history(conn: Connection, meter_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {LINK_COLUMNS} FROM vehicle_meter_links WHERE meter_id = $1 "
        "ORDER BY started_at DESC, id DESC",
        meter_id,
    )
