"""Register replacements: the one register write the API makes (configuration, as links
are). Recording one marks the device so the collector's writer books its readings again."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from collector.db.connection import Connection

COLUMNS = "id, kind, device_id, at, final_kwh, start_kwh, created_at"


async def replacements(conn: Connection, kind: str, device_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {COLUMNS} FROM register_replacements WHERE kind = $1 AND device_id = $2 "
        "ORDER BY at DESC",
        kind,
        device_id,
    )


async def add_replacement(
    conn: Connection,
    kind: str,
    device_id: str,
    *,
    at: datetime,
    final_kwh: float | None,
    start_kwh: float | None,
) -> tuple[asyncpg.Record, bool]:
    """Record a replacement; (the row, whether it is new). One at the same time with other
    values is refused (``ReplacementConflict``)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO register_replacements (kind, device_id, at, final_kwh, start_kwh) "
            f"VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, device_id, at) DO NOTHING "
            f"RETURNING {COLUMNS}",
            kind,
            device_id,
            at,
            final_kwh,
            start_kwh,
        )
        if row is None:
            existing = await conn.fetchrow(
                f"SELECT {COLUMNS} FROM register_replacements "
                "WHERE kind = $1 AND device_id = $2 AND at = $3",
                kind,
                device_id,
                at,
            )
            assert existing is not None
            if (existing["final_kwh"], existing["start_kwh"]) != (final_kwh, start_kwh):
                raise ReplacementConflict(
                    f"a replacement at {at.isoformat()} is recorded already, with other values"
                )
            return existing, False
        # The readings after it are booked again by the collector (register_devices.
        # dirty_from); its compare-and-set tells other collectors their states moved.
        await conn.execute(
            "INSERT INTO register_devices AS s (kind, device_id, dirty_from, replacement_at) "
            "VALUES ($1, $2, $3, $3) ON CONFLICT (kind, device_id) DO UPDATE "
            "SET dirty_from = least(coalesce(s.dirty_from, excluded.dirty_from), "
            "excluded.dirty_from), replacement_at = greatest(s.replacement_at, "
            "excluded.replacement_at)",
            kind,
            device_id,
            at,
        )
        return row, True


class ReplacementConflict(Exception):
    """Another replacement is recorded at the same time."""
