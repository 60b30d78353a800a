"""Registers: recorded meter replacements, and a window's register figures."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

from api.models import RegisterStats, RegisterValue, Replacement, Replacements
from api.problems import ProblemError
from api.queries import registers as qr
from collector.db.connection import Connection


def replacement_out(row: asyncpg.Record) -> Replacement:
    return Replacement(
        kind=row["kind"],
        deviceId=row["device_id"],
        at=row["at"],
        finalKwh=row["final_kwh"],
        startKwh=row["start_kwh"],
        recordedAt=row["created_at"],
    )


async def replacements(conn: Connection, kind: str, device: str) -> Replacements:
    rows = await qr.replacements(conn, kind, device)
    return Replacements(
        kind=kind,
        deviceId=device,
        replacements=[replacement_out(r) for r in rows],
    )


async def add_replacement(
    conn: Connection,
    kind: str,
    device: str,
    *,
    at: datetime,
    final_kwh: float | None,
    start_kwh: float | None,
) -> tuple[Replacement, bool]:
    """Record a replacement (409 when one at that time has other values)."""
    try:
        row, created = await qr.add_replacement(
            conn, kind, device, at=at, final_kwh=final_kwh, start_kwh=start_kwh
        )
    except qr.ReplacementConflict as exc:
        raise ProblemError(409, str(exc)) from None
    return replacement_out(row), created


def register_stats(row: Mapping[str, Any]) -> RegisterStats | None:
    """The window's register readings (None when the device reported none in it)."""
    if not row["register_readings"]:
        return None

    def value(rec: Any) -> RegisterValue | None:
        return None if rec is None else RegisterValue(timestamp=rec[0], kwh=rec[1])

    return RegisterStats(
        readings=row["register_readings"],
        first=value(row["first_register"]),
        last=value(row["last_register"]),
        resets=row["register_resets"],
        glitches=row["register_glitches"],
        quarantined=row["register_quarantined"],
        dips=row["register_dips"],
        rollovers=row["register_rollovers"],
        shifts=row["register_shifts"],
        pending=row["register_pending"],
        provisional=row["register_pending"] > 0,
    )
