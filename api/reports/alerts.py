"""Alerts: the open ones, a device's history, acknowledgements and silences."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from api.models import Alert, AlertHistory, AlertList, RuleCount, Silence, Silences
from api.problems import ProblemError
from api.queries import alerts as qal
from collector.db.connection import Connection


def alert_out(row: asyncpg.Record) -> Alert:
    return Alert(
        id=row["id"],
        rule=row["rule"],
        kind=row["kind"],
        deviceId=row["device_id"],
        state=row["state"],
        severity=row["severity"],
        value=row["value"],
        since=row["since"],
        firedAt=row["fired_at"],
        resolvedAt=row["resolved_at"],
        acknowledgedAt=row["acknowledged_at"],
        acknowledgedBy=row["acknowledged_by"],
        silenced=row["silenced"],
    )


def silence_out(row: asyncpg.Record) -> Silence:
    return Silence(
        id=row["id"],
        rule=row["rule"],
        kind=row["kind"],
        deviceId=row["device_id"],
        until=row["until"],
        comment=row["comment"],
        createdBy=row["created_by"],
        createdAt=row["created_at"],
        active=row["active"],
    )


async def open_alerts(
    conn: Connection,
    *,
    state: str = "open",
    rule: str | None = None,
    severity: str | None = None,
    kind: str | None = None,
    device_id: str | None = None,
    limit: int = 500,
) -> AlertList:
    states = ["firing", "pending"] if state == "open" else [state]
    total, rows = await qal.open_alerts(
        conn,
        states=states,
        rule=rule,
        severity=severity,
        kind=kind,
        device_id=device_id,
        limit=limit,
    )
    return AlertList(count=total, alerts=[alert_out(r) for r in rows])


async def rule_counts(conn: Connection, state: str = "open") -> list[RuleCount]:
    states = ["firing", "pending"] if state == "open" else [state]
    rows = await qal.rule_counts(conn, states)
    return [RuleCount(rule=r["rule"], count=r["n"], needsAction=r["open"]) for r in rows]


async def device_alerts(conn: Connection, kind: str, device: str, limit: int = 100) -> AlertHistory:
    rows = await qal.device_alerts(conn, kind, device, limit)
    return AlertHistory(kind=kind, deviceId=device, alerts=[alert_out(r) for r in rows])


async def alert(conn: Connection, alert_id: int) -> Alert:
    row = await qal.alert(conn, alert_id)
    if row is None:
        raise ProblemError(404, f"no alert {alert_id}")
    return alert_out(row)


async def acknowledge(conn: Connection, alert_id: int, by: str) -> Alert:
    row = await qal.acknowledge(conn, alert_id, by)
    if row is None:
        raise ProblemError(404, f"no alert {alert_id}")
    return alert_out(row)


async def add_silence(
    conn: Connection,
    *,
    rule: str | None,
    kind: str | None,
    device_id: str | None,
    until: datetime,
    comment: str,
    by: str,
) -> Silence:
    row = await qal.add_silence(
        conn, rule=rule, kind=kind, device_id=device_id, until=until, comment=comment, by=by
    )
    return silence_out(row)


async def silences(conn: Connection) -> Silences:
    return Silences(silences=[silence_out(r) for r in await qal.active_silences(conn)])


async def end_silence(conn: Connection, silence_id: int) -> Silence:
    row = await qal.end_silence(conn, silence_id)
    if row is None:
        raise ProblemError(404, f"no silence {silence_id}")
    return silence_out(row)
