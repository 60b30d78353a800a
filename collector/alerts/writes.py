"""The alerts' state in the database: a pass's transitions and their notifications, written
in one transaction.

Every write is guarded by the state it expects (``ON CONFLICT ... DO NOTHING`` against the
one-open-alert index, ``WHERE state = 'pending'``, ``WHERE NOT notified``), so two
evaluators (a lost leadership, a second collector) can never raise an alert twice or tell
a transition twice: the second write finds nothing to do.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from collector.alerts.rules import AlertRule
from collector.alerts.transitions import OpenAlert, Transitions
from collector.db.connection import Connection

#: A silence that covers alert ``a``.
SILENCED = """EXISTS (
    SELECT 1 FROM alert_silences s
    WHERE s.until > $1 AND (s.rule IS NULL OR s.rule = a.rule)
      AND (s.device_id IS NULL OR (s.kind = a.kind AND s.device_id = a.device_id)))"""


async def open_alerts(conn: Connection) -> dict[str, list[OpenAlert]]:
    """Every pending or firing alert, by rule."""
    rows = await conn.fetch(
        "SELECT id, rule, kind, device_id, state, since FROM alerts WHERE state <> 'resolved'"
    )
    out: dict[str, list[OpenAlert]] = defaultdict(list)
    for r in rows:
        out[r["rule"]].append(OpenAlert(r["id"], r["kind"], r["device_id"], r["state"], r["since"]))
    return out


async def apply(
    conn: Connection,
    rule: AlertRule,
    changes: Transitions,
    now: datetime,
    targets: list[str],
) -> None:
    """Write one rule's transitions; a resolution whose firing was told is queued for
    every target. (Firings are queued by :func:`tell_firing`, which knows the silences.)"""
    if changes.new:
        await conn.execute(
            """
            INSERT INTO alerts (rule, kind, device_id, state, severity, value, since, fired_at,
                                updated_at)
            SELECT $1, n.kind, n.device_id, n.state, $2, n.value, n.since,
                   CASE WHEN n.state = 'firing' THEN $3::timestamptz END, $3
            FROM unnest($4::text[], $5::text[], $6::text[], $7::float8[], $8::timestamptz[])
                 AS n(kind, device_id, state, value, since)
            ON CONFLICT (rule, kind, device_id) WHERE state <> 'resolved' DO NOTHING
            """,
            rule.name,
            rule.severity,
            now,
            [n.kind for n in changes.new],
            [n.device_id for n in changes.new],
            [n.state for n in changes.new],
            [n.value for n in changes.new],
            [n.since for n in changes.new],
        )
    if changes.fire:
        await conn.execute(
            """
            UPDATE alerts a SET state = 'firing', fired_at = $1, value = f.value, updated_at = $1
            FROM unnest($2::bigint[], $3::float8[]) AS f(id, value)
            WHERE a.id = f.id AND a.state = 'pending'
            """,
            now,
            [i for i, _ in changes.fire],
            [v for _, v in changes.fire],
        )
    if changes.drop:
        await conn.execute(
            "DELETE FROM alerts WHERE id = ANY($1::bigint[]) AND state = 'pending'", changes.drop
        )
    if changes.resolve:
        await resolve(conn, changes.resolve, now, targets)


async def resolve(
    conn: Connection, alerts: list[tuple[int, float | None]], now: datetime, targets: list[str]
) -> None:
    """Resolve firing alerts; queue a resolution for each target where the firing was told."""
    await conn.execute(
        """
        WITH r AS (
            UPDATE alerts a SET state = 'resolved', resolved_at = $1, value = f.value,
                   updated_at = $1
            FROM unnest($2::bigint[], $3::float8[]) AS f(id, value)
            WHERE a.id = f.id AND a.state = 'firing'
            RETURNING a.id, a.notified, a.value
        )
        INSERT INTO alert_notifications (alert_id, target, transition, value, at)
        SELECT r.id, t.target, 'resolved', r.value, $1
        FROM r CROSS JOIN unnest($4::text[]) AS t(target) WHERE r.notified
        """,
        now,
        [i for i, _ in alerts],
        [v for _, v in alerts],
        targets,
    )


async def resolve_orphans(
    conn: Connection, rules: list[str], now: datetime, targets: list[str]
) -> int:
    """Close the open alerts of rules that are no longer configured: pending ones are
    dropped, firing ones resolve (and say so), so no retained alert outlives its rule."""
    await conn.execute(
        "DELETE FROM alerts WHERE state = 'pending' AND NOT (rule = ANY($1::text[]))", rules
    )
    ids = await conn.fetch(
        "SELECT id FROM alerts WHERE state = 'firing' AND NOT (rule = ANY($1::text[]))", rules
    )
    if ids:
        await resolve(conn, [(r["id"], None) for r in ids], now, targets)
    return len(ids)


async def tell_firing(conn: Connection, now: datetime, targets: list[str]) -> int:
    """Queue a firing notification for every firing alert not told yet and not silenced
    (a new one, or one whose silence has ended). Returns how many alerts were told."""
    told = await conn.fetchval(
        f"""
        WITH told AS (
            UPDATE alerts a SET notified = true
            WHERE a.state = 'firing' AND NOT a.notified AND NOT {SILENCED}
            RETURNING a.id, a.value, a.fired_at
        ), queued AS (
            INSERT INTO alert_notifications (alert_id, target, transition, value, at)
            SELECT told.id, t.target, 'firing', told.value, told.fired_at
            FROM told CROSS JOIN unnest($2::text[]) AS t(target)
        )
        SELECT count(*) FROM told
        """,
        now,
        targets,
    )
    return int(told)


async def firing_counts(conn: Connection) -> dict[tuple[str, str], int]:
    """Firing alerts per (rule, severity): the metrics' gauge."""
    rows = await conn.fetch(
        "SELECT rule, severity, count(*) AS n FROM alerts WHERE state = 'firing' GROUP BY 1, 2"
    )
    return {(r["rule"], r["severity"]): r["n"] for r in rows}
