"""Alerts as the collector's evaluator keeps them (collector/alerts); the API reads them,
acknowledges them and writes silences, never a state transition."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from collector.db.connection import Connection

SILENCED = """EXISTS (SELECT 1 FROM alert_silences s
            WHERE s.until > now() AND (s.rule IS NULL OR s.rule = a.rule)
              AND (s.device_id IS NULL OR (s.kind = a.kind AND s.device_id = a.device_id)))"""
COLUMNS = f"""a.id, a.rule, a.kind, a.device_id, a.state, a.severity, a.value, a.since,
    a.fired_at, a.resolved_at, a.acknowledged_at, a.acknowledged_by, {SILENCED} AS silenced"""
SILENCE_COLUMNS = "id, rule, kind, device_id, until, comment, created_by, created_at, " \
    "until > now() AS active"  # fmt: skip
#: What needs action first: neither acknowledged nor silenced; then worst first (critical,
#: warning, info); firing before pending; oldest first.
ORDER = f"""(a.acknowledged_at IS NOT NULL OR {SILENCED}),
    CASE a.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
    CASE a.state WHEN 'firing' THEN 0 ELSE 1 END, a.since, a.id"""


async def open_alerts(
    conn: Connection,
    *,
    states: list[str],
    rule: str | None,
    severity: str | None,
    kind: str | None,
    device_id: str | None,
    limit: int,
) -> tuple[int, list[asyncpg.Record]]:
    """Open alerts matching the filters (worst first), and how many match in all."""
    where = """a.state = ANY($1::text[]) AND ($2::text IS NULL OR a.rule = $2)
        AND ($3::text IS NULL OR a.severity = $3) AND ($4::text IS NULL OR a.kind = $4)
        AND ($5::text IS NULL OR a.device_id = $5)"""
    args = (states, rule, severity, kind, device_id)
    total = await conn.fetchval(f"SELECT count(*) FROM alerts a WHERE {where}", *args)
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM alerts a WHERE {where} ORDER BY {ORDER} LIMIT $6", *args, limit
    )
    return total, rows


async def rule_counts(conn: Connection, states: list[str]) -> list[asyncpg.Record]:
    """Per rule: how many alerts are in ``states``, and how many of them need action
    (neither acknowledged nor silenced); the rules with the most needing action first."""
    return await conn.fetch(
        f"""
        SELECT a.rule, count(*) AS n,
               count(*) FILTER (WHERE a.acknowledged_at IS NULL AND NOT {SILENCED}) AS open
        FROM alerts a WHERE a.state = ANY($1::text[])
        GROUP BY a.rule ORDER BY open DESC, n DESC, a.rule
        """,
        states,
    )


async def device_alerts(
    conn: Connection, kind: str, device_id: str, limit: int
) -> list[asyncpg.Record]:
    """A device's alerts, open and resolved, newest first."""
    return await conn.fetch(
        f"SELECT {COLUMNS} FROM alerts a WHERE a.kind = $1 AND a.device_id = $2 "
        "ORDER BY a.since DESC, a.id DESC LIMIT $3",
        kind,
        device_id,
        limit,
    )


async def alert(conn: Connection, alert_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {COLUMNS} FROM alerts a WHERE a.id = $1", alert_id)


async def acknowledge(conn: Connection, alert_id: int, by: str) -> asyncpg.Record | None:
    """Acknowledge an alert (the first acknowledgement stands); None if there is none."""
    await conn.execute(
        "UPDATE alerts SET acknowledged_at = now(), acknowledged_by = $2 "
        "WHERE id = $1 AND acknowledged_at IS NULL",
        alert_id,
        by,
    )
    return await alert(conn, alert_id)


async def add_silence(
    conn: Connection,
    *,
    rule: str | None,
    kind: str | None,
    device_id: str | None,
    until: datetime,
    comment: str,
    by: str,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"INSERT INTO alert_silences (rule, kind, device_id, until, comment, created_by) "
        f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {SILENCE_COLUMNS}",
        rule,
        kind,
        device_id,
        until,
        comment,
        by,
    )
    assert row is not None
    return row


async def active_silences(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {SILENCE_COLUMNS} FROM alert_silences WHERE until > now() ORDER BY until, id"
    )


async def end_silence(conn: Connection, silence_id: int) -> asyncpg.Record | None:
    """End a silence now (its row stays, as a record); None if there is none."""
    return await conn.fetchrow(
        f"UPDATE alert_silences SET until = least(until, now()) WHERE id = $1 "
        f"RETURNING {SILENCE_COLUMNS}",
        silence_id,
    )


async def firing_summary(conn: Connection, limit: int) -> tuple[int, list[asyncpg.Record]]:
    """What fires now, worst first (the fleet page's panel)."""
    return await open_alerts(
        conn, states=["firing"], rule=None, severity=None, kind=None, device_id=None, limit=limit
    )
