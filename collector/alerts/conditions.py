"""What each rule kind sees of the fleet: one set-based query per rule and pass.

Each query returns the devices whose condition holds now, and the devices that have an
open alert of the rule (to tell whether it has cleared), never the whole history: the
latest state tables, the hourly rollups, and for a threshold's duration only the recent
readings of the devices above it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from collector.alerts.rules import FIELDS, AlertRule
from collector.db.connection import Connection
from collector.ingest.streams import STREAMS, StreamName
from collector.readmodel.fleet import VehicleEnergy
from collector.settlement.balance import site_balance
from collector.settlement.days import site_devices
from collector.settlement.sites import Sites


@dataclass(frozen=True, slots=True)
class Observation:
    """A device as a rule sees it in one pass."""

    kind: StreamName
    device_id: str
    #: The condition holds now.
    holds: bool
    #: Past the clear threshold: a firing alert resolves.
    cleared: bool
    value: float | None
    #: Since when it holds (None: from the alert's own pending time, against the clock).
    since: datetime | None
    #: How long it has held; None: measure from the pending alert's ``since`` to now.
    held_s: float | None


async def threshold(
    conn: Connection, rule: AlertRule, open_ids: list[str], now: datetime
) -> list[Observation]:
    """The latest reading's field past the threshold, held for ``for_s`` of readings."""
    assert rule.field is not None
    watched = FIELDS[rule.field]
    column, stream = watched.column, watched.stream.name
    current, readings, device = (
        watched.stream.current,
        watched.stream.readings,
        watched.stream.device,
    )
    above = rule.above is not None
    limit = rule.above if above else rule.below
    clear = rule.clear_at
    assert limit is not None
    assert clear is not None
    op = ">" if above else "<"
    params: list[object] = [limit, open_ids]
    since = "NULL::timestamptz"
    if rule.for_s > 0:
        # The run of readings past the threshold up to the latest one: those after the
        # last reading in the lookback that was not past it.
        params.append(timedelta(seconds=rule.for_s + 3600))
        since = f"""(
            SELECT min(r.ts) FROM {readings} r
            WHERE r.{device} = d.device_id AND r.ts <= d.ts AND r.ts >= d.ts - $3::interval
              AND r.ts > coalesce((
                  SELECT max(b.ts) FROM {readings} b
                  WHERE b.{device} = d.device_id AND b.ts <= d.ts
                    AND b.ts >= d.ts - $3::interval AND NOT (b.{column} {op} $1)),
                  '-infinity'))"""
    rows = await conn.fetch(
        f"""
        WITH d AS (
            SELECT {device} AS device_id, ts, {column} AS value FROM {current}
            WHERE {column} {op} $1::float8 OR {device} = ANY($2::text[])
        )
        SELECT d.device_id, d.ts, d.value,
               CASE WHEN d.value {op} $1 THEN {since} END AS since
        FROM d""",
        *params,
    )
    hysteresis = rule.clear_below is not None or rule.clear_above is not None
    out = []
    for r in rows:
        value = r["value"]
        if value is None:
            # an open alert's device sent its latest reading without this field (it is
            # optional): nothing is known of it, so nothing changes
            out.append(
                Observation(
                    kind=stream,
                    device_id=r["device_id"],
                    holds=False,
                    cleared=False,
                    value=None,
                    since=None,
                    held_s=None,
                )
            )
            continue
        holds = value > limit if above else value < limit
        past_clear = value < clear if above else value > clear
        since_ts = (r["since"] or r["ts"]) if holds else None
        out.append(
            Observation(
                kind=stream,
                device_id=r["device_id"],
                holds=holds,
                cleared=past_clear if hysteresis else not holds,
                value=value,
                since=since_ts,
                held_s=(r["ts"] - since_ts).total_seconds() if since_ts else None,
            )
        )
    return out


async def silent(
    conn: Connection, rule: AlertRule, stream: StreamName, open_ids: list[str], now: datetime
) -> list[Observation]:
    """Devices active within ``active_within_s`` whose latest reading is ``for_s`` old and
    arrived live: within ``for_s`` of its timestamp. A device whose latest reading came late
    (a replay, a backlog after an outage, an import of history) is talking, or has never
    been live here: it is not silent, and an open alert of it clears."""
    current, device = STREAMS[stream].current, STREAMS[stream].device
    rows = await conn.fetch(
        f"""
        SELECT {device} AS device_id, ts, extract(epoch FROM $1 - ts)::float8 AS silent_s,
               received_at - ts < $2::interval AS live
        FROM {current}
        WHERE (ts < $1 - $2::interval AND ts >= $1 - $3::interval
               AND received_at - ts < $2::interval)
           OR {device} = ANY($4::text[])
        """,
        now,
        timedelta(seconds=rule.for_s),
        timedelta(seconds=rule.active_within_s),
        open_ids,
    )
    out = []
    for r in rows:
        holds = r["live"] and r["silent_s"] >= rule.for_s
        out.append(
            Observation(
                kind=stream,
                device_id=r["device_id"],
                holds=holds,
                cleared=not holds,
                value=round(r["silent_s"], 1),
                since=r["ts"],
                # The silence is the duration: it fires as soon as it holds.
                held_s=math.inf,
            )
        )
    return out


async def register(
    conn: Connection, rule: AlertRule, stream: StreamName, open_ids: list[str], now: datetime
) -> list[Observation]:
    """Register resets and quarantined readings in the last ``window_s`` (hourly rollups)."""
    hourly, device = STREAMS[stream].hourly, STREAMS[stream].device
    start = now - timedelta(seconds=rule.window_s)
    rows = await conn.fetch(
        f"""
        WITH w AS (
            SELECT {device} AS device_id, sum(register_resets + register_quarantined) AS n,
                   min(hour) FILTER (WHERE register_resets + register_quarantined > 0) AS since
            FROM {hourly}
            WHERE hour >= date_trunc('hour', $1::timestamptz, 'UTC')
              AND (register_resets > 0 OR register_quarantined > 0)
            GROUP BY 1
        )
        SELECT o.device_id, coalesce(w.n, 0) AS n, w.since
        FROM (SELECT device_id FROM w UNION SELECT unnest($2::text[])) o
        LEFT JOIN w USING (device_id)
        """,
        start,
        open_ids,
    )
    return [
        Observation(
            kind=stream,
            device_id=r["device_id"],
            holds=r["n"] >= rule.min_count,
            cleared=r["n"] == 0,
            value=float(r["n"]),
            since=r["since"],
            held_s=None,
        )
        for r in rows
    ]


async def charger_offline(
    conn: Connection, rule: AlertRule, open_ids: list[str], now: datetime
) -> list[Observation]:
    """OCPP chargers heard from within ``active_within_s`` and not for ``for_s`` (a
    connected charger heartbeats; ``last_seen_at`` is any frame, written at most once a
    minute). The alert is on ``{chargerId}-0``: OCPP's connector 0, the whole charger."""
    rows = await conn.fetch(
        """
        SELECT id || '-0' AS device_id, last_seen_at,
               extract(epoch FROM $1 - last_seen_at)::float8 AS silent_s
        FROM chargers
        WHERE (last_seen_at < $1 - $2::interval AND last_seen_at >= $1 - $3::interval)
           OR id || '-0' = ANY($4::text[])
        """,
        now,
        timedelta(seconds=rule.for_s),
        timedelta(seconds=rule.active_within_s),
        open_ids,
    )
    return [
        Observation(
            kind="meter",
            device_id=r["device_id"],
            holds=r["silent_s"] is not None and r["silent_s"] >= rule.for_s,
            cleared=r["silent_s"] is None or r["silent_s"] < rule.for_s,
            value=None if r["silent_s"] is None else round(r["silent_s"], 1),
            since=r["last_seen_at"],
            held_s=math.inf,  # the silence is the duration
        )
        for r in rows
    ]


async def connector_faulted(
    conn: Connection, rule: AlertRule, open_ids: list[str], now: datetime
) -> list[Observation]:
    """Connectors whose last status is ``Faulted``, since the charger's time of it."""
    rows = await conn.fetch(
        """
        SELECT charger_id || '-' || connector_id AS device_id, status, status_at
        FROM charger_connectors
        WHERE status = 'Faulted' OR charger_id || '-' || connector_id = ANY($1::text[])
        """,
        open_ids,
    )
    out = []
    for r in rows:
        faulted = r["status"] == "Faulted"
        out.append(
            Observation(
                kind="meter",
                device_id=r["device_id"],
                holds=faulted,
                cleared=not faulted,
                value=None,
                since=r["status_at"] if faulted else None,
                held_s=max(0.0, (now - r["status_at"]).total_seconds()) if faulted else None,
            )
        )
    return out


async def site_imbalance(
    conn: Connection, rule: AlertRule, sites: Sites, open_ids: list[str], now: datetime
) -> list[Observation]:
    """Sites whose untracked share is above their tolerance in every complete hour of the
    last ``for_s`` (whole hours before the current one); the alert is on the main meter."""
    end = now.replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(seconds=rule.for_s)
    out = []
    for site in sites.sites:
        if site.main_meter is None:
            continue
        members = [d for kind, d in await site_devices(conn, site) if kind == "meter"]
        members = [d for d in members if d != site.main_meter]
        rows = await site_balance(conn, site, members, start=start, end=end, bucket="hour")
        complete = [r for r in rows if r.complete and r.untracked_ratio is not None]
        tolerance = site.loss_tolerance_pct / 100
        over = [r for r in complete if (r.untracked_ratio or 0.0) > tolerance]
        holds = bool(complete) and len(over) == len(complete)
        if not holds and site.main_meter not in open_ids:
            continue
        worst = max((r.untracked_ratio or 0.0 for r in complete), default=None)
        out.append(
            Observation(
                kind="meter",
                device_id=site.main_meter,
                holds=holds,
                cleared=len(over) < len(complete),
                value=None if worst is None else round(worst, 4),
                since=min((r.start for r in over), default=None),
                held_s=math.inf,  # the window is the duration
            )
        )
    return out


def efficiency(rule: AlertRule, energy: Sequence[VehicleEnergy]) -> list[Observation]:
    """A vehicle's DC/AC over the window past the threshold, with enough AC to judge.

    A vehicle that moved too little energy (or has no readings of one stream) is neither
    flagged nor cleared: an idle or unlinked vehicle keeps what it had.
    """
    above = rule.above is not None
    limit = rule.above if above else rule.below
    clear = rule.clear_at
    assert limit is not None
    assert clear is not None
    hysteresis = rule.clear_below is not None or rule.clear_above is not None
    out = []
    for v in energy:
        if not (v.ac_n and v.dc_n) or v.ac_kwh < rule.min_ac_kwh or v.ac_kwh <= 0:
            continue
        ratio = v.dc_kwh / v.ac_kwh
        holds = ratio > limit if above else ratio < limit
        past_clear = ratio < clear if above else ratio > clear
        out.append(
            Observation(
                kind="vehicle",
                device_id=v.vehicle_id,
                holds=holds,
                cleared=past_clear if hysteresis else not holds,
                value=round(ratio, 4),
                since=None,
                held_s=None,
            )
        )
    return out
