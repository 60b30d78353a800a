"""Charging sessions in the database: started, updated and ended from what chargers say.

Every write is idempotent, because chargers resend what was not answered and replay their
offline queues: a StartTransaction sent again finds the session it made (same charger,
connector and start), a StopTransaction or a 2.0.1 ``Ended`` for a session that already
ended changes nothing, and a 2.0.1 event whose ``seqNo`` is not newer than the last one
seen changes no state (its meter values are still stored: readings are idempotent anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from collector.links import LinkConflict, end_link_at, put_link
from collector.sources.ocpp.naming import meter_of


@dataclass(frozen=True, slots=True)
class SessionRef:
    """The session a message is about: its id and its connector's meter."""

    id: int
    transaction_id: str
    meter_id: str
    vehicle_id: str | None
    state: str
    last_seq_no: int | None


_REF = "id, transaction_id, meter_id, vehicle_id, state, last_seq_no"


def _ref(row: asyncpg.Record) -> SessionRef:
    return SessionRef(
        row["id"],
        row["transaction_id"],
        row["meter_id"],
        row["vehicle_id"],
        row["state"],
        row["last_seq_no"],
    )


class SessionStore:
    """Sessions and the vehicle links they make."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def start(
        self,
        *,
        charger_id: str,
        connector_id: int,
        protocol: str,
        transaction_id: str | None,
        id_tag: str | None,
        vehicle_id: str | None,
        started_at: datetime,
        meter_start_wh: float | None,
        quality: list[str],
    ) -> tuple[SessionRef, bool]:
        """The session that starts (or the one this start already made); returns it and
        whether it is new. ``transaction_id`` None: we issue it (csms mode, 1.6), the
        session's own id."""
        meter_id = meter_of(charger_id, connector_id)
        async with self._pool.acquire() as conn, conn.transaction():
            new_id = await conn.fetchval("SELECT nextval('charging_sessions_id_seq')")
            row = await conn.fetchrow(
                f"""INSERT INTO charging_sessions
                        (id, charger_id, connector_id, meter_id, transaction_id, protocol,
                         id_tag, vehicle_id, started_at, meter_start_wh, quality)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                    ON CONFLICT (charger_id, connector_id, started_at) DO UPDATE
                       SET updated_at = charging_sessions.updated_at
                    RETURNING {_REF}, id = $1 AS created""",
                new_id,
                charger_id,
                connector_id,
                meter_id,
                transaction_id if transaction_id is not None else str(new_id),
                protocol,
                id_tag,
                vehicle_id,
                started_at,
                meter_start_wh,
                quality,
            )
            assert row is not None
            created: bool = row["created"]
            if created:
                # A session still open on this connector never heard its stop.
                await conn.execute(
                    """UPDATE charging_sessions
                          SET state = 'ended', stopped_at = $4, updated_at = now(),
                              quality = array_append(quality, 'stop-missing')
                        WHERE charger_id = $1 AND connector_id = $2 AND state = 'active'
                          AND id <> $3 AND started_at < $4""",
                    charger_id,
                    connector_id,
                    row["id"],
                    started_at,
                )
        ref = _ref(row)
        if created and vehicle_id is not None:
            await self._link(ref, vehicle_id, started_at)
        return ref, created

    async def find(self, charger_id: str, transaction_id: str) -> SessionRef | None:
        row = await self._pool.fetchrow(
            f"SELECT {_REF} FROM charging_sessions WHERE charger_id = $1 AND transaction_id = $2",
            charger_id,
            transaction_id,
        )
        return None if row is None else _ref(row)

    async def active_on(self, charger_id: str, connector_id: int) -> SessionRef | None:
        row = await self._pool.fetchrow(
            f"""SELECT {_REF} FROM charging_sessions
                 WHERE charger_id = $1 AND connector_id = $2 AND state = 'active'
                 ORDER BY started_at DESC LIMIT 1""",
            charger_id,
            connector_id,
        )
        return None if row is None else _ref(row)

    async def update(
        self,
        ref: SessionRef,
        *,
        seq_no: int | None = None,
        meter_start_wh: float | None = None,
        meter_stop_wh: float | None = None,
        soc: float | None = None,
        id_tag: str | None = None,
        quality: list[str] | None = None,
    ) -> None:
        """What a message on an open (or ended) session adds: never moves state."""
        await self._pool.execute(
            """UPDATE charging_sessions SET
                   last_seq_no = greatest(last_seq_no, $2),
                   meter_start_wh = coalesce(meter_start_wh, $3),
                   meter_stop_wh = coalesce($4, meter_stop_wh),
                   soc_start = coalesce(soc_start, $5),
                   soc_end = coalesce($5, soc_end),
                   id_tag = coalesce(id_tag, $6),
                   quality = ARRAY(SELECT DISTINCT unnest(quality || $7::text[]) ORDER BY 1),
                   updated_at = now()
                WHERE id = $1""",
            ref.id,
            seq_no,
            meter_start_wh,
            meter_stop_wh,
            soc,
            id_tag,
            quality or [],
        )

    async def stop(
        self,
        ref: SessionRef,
        *,
        stopped_at: datetime,
        meter_stop_wh: float | None,
        reason: str | None,
        offline: bool,
    ) -> bool:
        """End the session (once: a replayed stop changes nothing, but the charger's own
        stop replaces one we inferred, ``stop-missing``). Returns whether it ended now."""
        row = await self._pool.fetchrow(
            """UPDATE charging_sessions SET
                   stopped_at = greatest($2, started_at),
                   meter_stop_wh = coalesce($3, meter_stop_wh),
                   stop_reason = coalesce($4, 'Local'),
                   state = CASE WHEN $5 THEN 'ended-offline' ELSE 'ended' END,
                   quality = array_remove(quality, 'stop-missing'),
                   updated_at = now()
                WHERE id = $1 AND (state = 'active' OR 'stop-missing' = ANY(quality))
                RETURNING stopped_at""",
            ref.id,
            stopped_at,
            meter_stop_wh,
            reason,
            offline,
        )
        if row is None:
            return False
        if ref.vehicle_id is not None:
            async with self._pool.acquire() as conn:
                await end_link_at(conn, ref.vehicle_id, ref.meter_id, row["stopped_at"])
        return True

    async def _link(self, ref: SessionRef, vehicle_id: str, started_at: datetime) -> None:
        """Link the session's vehicle to its meter from its start; a start that is not
        after the link history's latest change (an old session replayed) is flagged."""
        try:
            async with self._pool.acquire() as conn:
                await put_link(conn, vehicle_id, ref.meter_id, started_at)
        except LinkConflict:
            await self.update(ref, quality=["link-refused"])
