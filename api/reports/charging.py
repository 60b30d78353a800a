"""Chargers and charging sessions, as the API shows them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg

from api.models_charging import (
    Charger,
    Chargers,
    Connector,
    Session,
    SessionDetail,
    SessionMeterValue,
    Sessions,
    SignedValue,
)
from api.problems import ProblemError
from api.queries import charging as q
from collector.db.connection import Connection
from collector.sources.ocpp.naming import meter_of

#: kwh and kwhCharger "differ" past both of these.
DIFFER_KWH, DIFFER_SHARE = 0.01, 0.01


def session_out(row: asyncpg.Record) -> Session:
    return Session(**_session_fields(row))


def _session_fields(row: asyncpg.Record) -> dict[str, object]:
    kwh = float(row["kwh"] or 0.0)
    start, stop = row["meter_start_wh"], row["meter_stop_wh"]
    charger = (stop - start) / 1000 if start is not None and stop is not None else None
    difference = None if charger is None else kwh - charger
    quality = list(row["quality"])
    if not row["readings"]:
        quality.append("no-meter-values")
    if difference is not None and abs(difference) > max(
        DIFFER_KWH, DIFFER_SHARE * abs(charger or 0)
    ):
        quality.append("differs")
    return {
        "id": row["id"],
        "chargerId": row["charger_id"],
        "connectorId": row["connector_id"],
        "meterId": row["meter_id"],
        "transactionId": row["transaction_id"],
        "protocol": row["protocol"],
        "idTag": row["id_tag"],
        "vehicleId": row["vehicle_id"],
        "startedAt": row["started_at"],
        "stoppedAt": row["stopped_at"],
        "kwh": kwh,
        "kwhCharger": charger,
        "kwhDifference": difference,
        "readings": row["readings"],
        "stopReason": row["stop_reason"],
        "state": row["state"],
        "provisional": row["state"] == "active" or row["pending"] > 0,
        "socStart": row["soc_start"],
        "socEnd": row["soc_end"],
        "quality": sorted(set(quality)),
    }


async def sessions(
    conn: Connection,
    *,
    start: datetime | None,
    end: datetime | None,
    charger: str | None,
    id_tag: str | None,
    vehicle: str | None,
    state: str | None,
    limit: int,
    meter: str | None = None,
    meters: list[str] | None = None,
) -> Sessions:
    if start is not None and end is not None and end <= start:
        raise ProblemError(422, "to must be after from")
    rows = await q.sessions(
        conn, start=start, end=end, charger=charger, id_tag=id_tag, vehicle=vehicle,
        state=state, limit=limit, meter=meter, meters=meters,
    )  # fmt: skip
    return Sessions(sessions=[session_out(r) for r in rows])


async def session(conn: Connection, session_id: int) -> SessionDetail:
    row = await q.session(conn, session_id)
    if row is None:
        raise ProblemError(404, f"no charging session {session_id}")
    values = await q.session_meter_values(
        conn, row["meter_id"], row["started_at"], row["stopped_at"]
    )
    return SessionDetail(
        **_session_fields(row),
        meterValues=[
            SessionMeterValue(
                timestamp=v["ts"],
                kwhRegister=v["kwh_register_ac"],
                kwh=v["kwh_consumed_ac"],
                quality=v["register_quality"],
                voltage=v["voltage"],
                signed=[SignedValue(**s) for s in json.loads(v["signed"])],
            )
            for v in values
        ],
    )


def charger_out(row: asyncpg.Record, heartbeat_s: int, now: datetime) -> Charger:
    seen = row["last_seen_at"]
    fresh = seen is not None and now - seen <= timedelta(seconds=2 * heartbeat_s + 60)
    return Charger(
        id=row["id"],
        connected=bool(row["connected"]) and fresh,
        protocol=row["protocol"],
        vendor=row["vendor"],
        model=row["model"],
        serialNumber=row["serial_number"],
        firmware=row["firmware"],
        hasPassword=row["password_hash"] is not None,
        registeredAt=row["created_at"],
        connectedAt=row["connected_at"],
        disconnectedAt=row["disconnected_at"],
        lastBootAt=row["last_boot_at"],
        lastHeartbeatAt=row["last_heartbeat_at"],
        lastSeenAt=seen,
        bootStatus=row["boot_status"],
        activeSessions=row["active_sessions"],
        connectors=[
            Connector(meterId=meter_of(row["id"], c["connectorId"]), **c)
            for c in json.loads(row["connectors"])
        ],
    )


async def chargers(conn: Connection, heartbeat_s: int) -> Chargers:
    now = datetime.now(UTC)
    return Chargers(chargers=[charger_out(r, heartbeat_s, now) for r in await q.chargers(conn)])


async def charger(conn: Connection, charger_id: str, heartbeat_s: int) -> Charger:
    rows = await q.chargers(conn, charger_id)
    if not rows:
        raise ProblemError(404, f"no charger {charger_id!r}")
    return charger_out(rows[0], heartbeat_s, datetime.now(UTC))
