"""Chargers and charging sessions: the reads (the OCPP source writes them)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from collector.db.connection import Connection
from collector.readmodel.sessions import SESSION_SELECT


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
) -> list[asyncpg.Record]:
    return await conn.fetch(
        SESSION_SELECT
        + """ WHERE ($1::timestamptz IS NULL OR s.started_at >= $1)
                AND ($2::timestamptz IS NULL OR s.started_at < $2)
                AND ($3::text IS NULL OR s.charger_id = $3)
                AND ($4::text IS NULL OR s.id_tag = $4)
                AND ($5::text IS NULL OR s.vehicle_id = $5)
                AND ($6::text IS NULL OR s.state = $6)
                AND ($8::text IS NULL OR s.meter_id = $8)
                AND ($9::text[] IS NULL OR s.meter_id = ANY($9))
              ORDER BY s.started_at DESC, s.id DESC LIMIT $7""",
        start,
        end,
        charger,
        id_tag,
        vehicle,
        state,
        limit,
        meter,
        meters,
    )


async def session(conn: Connection, session_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(SESSION_SELECT + " WHERE s.id = $1", session_id)


async def session_meter_values(
    conn: Connection, meter_id: str, start: datetime, stop: datetime | None
) -> list[asyncpg.Record]:
    """The connector's readings from the session's start to its stop, inclusive, with the
    signed data stored beside each."""
    return await conn.fetch(
        """SELECT r.ts, r.kwh_register_ac, r.kwh_consumed_ac, r.register_quality, r.voltage,
                  coalesce(jsonb_agg(jsonb_build_object(
                      'measurand', v.measurand, 'signedData', v.signed_data,
                      'signingMethod', v.signing_method, 'encoding', v.encoding,
                      'publicKey', v.public_key) ORDER BY v.measurand)
                      FILTER (WHERE v.meter_id IS NOT NULL), '[]') AS signed
             FROM meter_readings r
             LEFT JOIN charger_signed_values v ON v.meter_id = r.meter_id AND v.ts = r.ts
            WHERE r.meter_id = $1 AND r.ts >= $2 AND r.ts <= coalesce($3, now())
            GROUP BY r.ts, r.kwh_register_ac, r.kwh_consumed_ac, r.register_quality, r.voltage
            ORDER BY r.ts
            LIMIT 20000""",
        meter_id,
        start,
        stop,
    )


async def chargers(conn: Connection, charger: str | None = None) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT c.*,
                  (SELECT count(*) FROM charging_sessions s
                    WHERE s.charger_id = c.id AND s.state = 'active') AS active_sessions,
                  coalesce((SELECT jsonb_agg(jsonb_build_object(
                      'connectorId', k.connector_id, 'status', k.status,
                      'errorCode', k.error_code, 'info', k.info, 'since', k.status_at,
                      'receivedAt', k.received_at) ORDER BY k.connector_id)
                     FROM charger_connectors k WHERE k.charger_id = c.id), '[]') AS connectors
             FROM chargers c
            WHERE $1::text IS NULL OR c.id = $1
            ORDER BY c.id""",
        charger,
    )
