"""What a charger's messages mean to the collector, the same in csms and relay mode.

Each method takes one message's payload as it came over the wire (camelCase JSON) and does
what it means: the charger's state (boot, heartbeat, connector status), its sessions
(``sessions``), and its energy, which goes through the sink as meter register readings (one
meter per connector, ``{chargerId}-{connectorId}``) so resets, glitches and replays book
exactly. In csms mode a method returns only once its readings are committed, so the reply
the charger waits for is the acknowledgement (the charger keeps and resends what was not
answered); in relay mode it returns once they are in the buffer (the operator's CSMS
answers the charger; the writer stores them when the database is there).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from collector.ingest.readings import Reason
from collector.ingest.sink import Item, Sink
from collector.ingest.streams import METER
from collector.metrics import Metrics
from collector.sources.ocpp.chargers import ChargerBook
from collector.sources.ocpp.naming import meter_of
from collector.sources.ocpp.samples import Problem, Sample, as_list, read_meter_values
from collector.sources.ocpp.sessions import SessionRef, SessionStore

log = structlog.get_logger("collector.ocpp")
#: ``last_seen_at`` is written at most this often per charger (a heartbeat always writes).
_SEEN_EVERY_S = 60.0


class NotStored(Exception):
    """The message's readings were not committed in time; the charger should resend it
    (it will be absorbed if they are stored meanwhile)."""


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    #: csms: wait for the commit before answering; relay: the buffer is enough.
    wait_for_commit: bool
    commit_timeout_s: float
    #: A stop arriving this long after its time was replayed from the charger's offline
    #: queue: the session ends ``ended-offline``.
    offline_after_s: float
    #: OCPP_AUTHORIZE=listed: only registered id tags are accepted.
    listed_tags_only: bool = False


class Recorder:
    """Turns chargers' messages into readings, sessions and charger state."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        sink: Sink,
        metrics: Metrics,
        settings: RecorderSettings,
    ) -> None:
        self._pool = pool
        self._sink = sink
        self._metrics = metrics
        self._settings = settings
        self.book = ChargerBook(pool, listed_only=settings.listed_tags_only)
        self.sessions = SessionStore(pool)
        self._seen: dict[str, float] = {}

    # --- the charger ------------------------------------------------------------------

    async def connected(self, charger_id: str, protocol: str) -> None:
        self._seen[charger_id] = time.monotonic()
        await self._pool.execute(
            """INSERT INTO chargers (id, protocol, connected, connected_at, last_seen_at)
               VALUES ($1, $2, true, now(), now())
               ON CONFLICT (id) DO UPDATE SET protocol = $2, connected = true,
                   connected_at = now(), last_seen_at = now()""",
            charger_id,
            protocol,
        )

    async def disconnected(self, charger_id: str) -> None:
        self._seen.pop(charger_id, None)
        await self._pool.execute(
            "UPDATE chargers SET connected = false, disconnected_at = now(), "
            "last_seen_at = now() WHERE id = $1",
            charger_id,
        )

    async def seen(self, charger_id: str) -> None:
        """A frame came from the charger: note it (at most once a minute)."""
        now = time.monotonic()
        if now - self._seen.get(charger_id, 0.0) >= _SEEN_EVERY_S:
            self._seen[charger_id] = now
            await self._pool.execute(
                "UPDATE chargers SET last_seen_at = now() WHERE id = $1", charger_id
            )

    async def boot(self, charger_id: str, payload: dict[str, Any]) -> None:
        station = payload.get("chargingStation")
        if isinstance(station, dict):  # 2.0.1
            vendor, model = station.get("vendorName"), station.get("model")
            serial, firmware = station.get("serialNumber"), station.get("firmwareVersion")
        else:
            vendor, model = payload.get("chargePointVendor"), payload.get("chargePointModel")
            serial = payload.get("chargePointSerialNumber") or payload.get("chargeBoxSerialNumber")
            firmware = payload.get("firmwareVersion")
        await self._pool.execute(
            """UPDATE chargers SET vendor = $2, model = $3, serial_number = $4, firmware = $5,
                      last_boot_at = now(), last_seen_at = now() WHERE id = $1""",
            charger_id,
            _text(vendor),
            _text(model),
            _text(serial),
            _text(firmware),
        )

    async def boot_answered(self, charger_id: str, status: str | None) -> None:
        """Relay mode: what the operator's CSMS answered the BootNotification."""
        await self._pool.execute(
            "UPDATE chargers SET boot_status = $2 WHERE id = $1", charger_id, _text(status)
        )

    async def heartbeat(self, charger_id: str) -> None:
        self._seen[charger_id] = time.monotonic()
        await self._pool.execute(
            "UPDATE chargers SET last_heartbeat_at = now(), last_seen_at = now() WHERE id = $1",
            charger_id,
        )

    async def status(self, charger_id: str, payload: dict[str, Any]) -> None:
        """A connector's (2.0.1: an EVSE's) status; an older one never replaces a newer."""
        if "connectorStatus" in payload:  # 2.0.1
            connector, status = payload.get("evseId"), payload.get("connectorStatus")
            error_code, info = None, None
        else:
            connector, status = payload.get("connectorId"), payload.get("status")
            error_code, info = payload.get("errorCode"), payload.get("info")
        if not isinstance(connector, int) or not isinstance(status, str):
            return
        ts = _when(payload.get("timestamp")) or datetime.now(UTC)
        await self._pool.execute(
            """INSERT INTO charger_connectors
                   (charger_id, connector_id, status, error_code, info, status_at)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (charger_id, connector_id) DO UPDATE
                  SET status = EXCLUDED.status, error_code = EXCLUDED.error_code,
                      info = EXCLUDED.info, status_at = EXCLUDED.status_at, received_at = now()
                WHERE charger_connectors.status_at <= EXCLUDED.status_at""",
            charger_id,
            connector,
            status,
            _text(error_code),
            _text(info),
            ts,
        )

    async def authorize(self, id_tag: str | None) -> bool:
        allowed, _ = await self.book.vehicle_of(id_tag)
        return allowed

    async def data_transfer(self, charger_id: str, payload: dict[str, Any]) -> None:
        data = payload.get("data")
        await self._pool.execute(
            """INSERT INTO charger_data_transfers (charger_id, vendor_id, message_id, data)
               VALUES ($1, $2, $3, $4)""",
            charger_id,
            _text(payload.get("vendorId")),
            _text(payload.get("messageId")),
            data if isinstance(data, str) or data is None else json.dumps(data),
        )

    # --- sessions and energy ------------------------------------------------------------

    async def start_transaction(
        self, charger_id: str, payload: dict[str, Any], transaction_id: str | None = None
    ) -> tuple[SessionRef, bool]:
        """1.6 StartTransaction: the session (issued here in csms mode, else the CSMS's
        ``transaction_id``), whether its id tag is allowed, and ``meterStart`` booked as
        the connector's register reading."""
        connector = _int(payload.get("connectorId"), 0)
        id_tag = _text(payload.get("idTag"))
        allowed, vehicle = await self.book.vehicle_of(id_tag)
        quality: list[str] = []
        started_at = _when(payload.get("timestamp"))
        if started_at is None:
            started_at, quality = datetime.now(UTC), ["start-time-invalid"]
        meter_start = _float(payload.get("meterStart"))
        ref, _ = await self.sessions.start(
            charger_id=charger_id,
            connector_id=connector,
            protocol="ocpp1.6",
            transaction_id=transaction_id,
            id_tag=id_tag,
            vehicle_id=vehicle,
            started_at=started_at,
            meter_start_wh=meter_start,
            quality=quality + ([] if allowed else ["id-tag-refused"]),
        )
        if meter_start is not None:
            await self._store(
                charger_id, [Sample(started_at, meter_start / 1000, raw=payload)], [], ref.meter_id
            )
        return ref, allowed

    async def meter_values(
        self, charger_id: str, payload: dict[str, Any], frame: bytes | None = None
    ) -> None:
        """1.6 / 2.0.1 MeterValues: every energy register sample is a reading. ``frame``:
        the message as it arrived, what a refused reading's dead letter keeps."""
        key = "evseId" if "evseId" in payload else "connectorId"
        connector = _int(payload.get(key), 0)
        samples, problems = read_meter_values(payload.get("meterValue"))
        meter_id = meter_of(charger_id, connector)
        await self._store(charger_id, samples, problems, meter_id, frame)
        soc = _last_soc(samples)
        if soc is not None:
            tx = payload.get("transactionId")
            ref = await (
                self.sessions.find(charger_id, str(tx))
                if tx is not None
                else self.sessions.active_on(charger_id, connector)
            )
            if ref is not None:
                await self.sessions.update(ref, soc=soc)

    async def stop_transaction(self, charger_id: str, payload: dict[str, Any]) -> bool:
        """1.6 StopTransaction: the session's last readings (``transactionData``,
        ``meterStop``), then its end. False when the transaction is unknown (its readings
        are dead-lettered: without the session, their connector is unknown)."""
        received = datetime.now(UTC)
        tx = payload.get("transactionId")
        ref = await self.sessions.find(charger_id, str(tx)) if tx is not None else None
        samples, problems = read_meter_values(payload.get("transactionData"))
        stopped_at = _when(payload.get("timestamp")) or received
        meter_stop = _float(payload.get("meterStop"))
        if ref is None:
            detail = f"StopTransaction for unknown transaction {tx!r}: its connector is unknown"
            await self.dead_letter(charger_id, json.dumps(payload), Reason.UNKNOWN_KIND, detail)
            return False
        if meter_stop is not None:
            samples.append(Sample(stopped_at, meter_stop / 1000, raw=payload))
        await self._store(charger_id, samples, problems, ref.meter_id)
        await self.sessions.update(ref, soc=_last_soc(samples))
        await self.sessions.stop(
            ref,
            stopped_at=stopped_at,
            meter_stop_wh=meter_stop,
            reason=_text(payload.get("reason")),
            offline=self._offline(stopped_at, received),
        )
        return True

    async def transaction_event(
        self, charger_id: str, payload: dict[str, Any], frame: bytes | None = None
    ) -> str | None:
        """2.0.1 TransactionEvent: the session by the charger's transaction id, guarded by
        ``seqNo``; its meter values are readings. Returns the id tag (for idTokenInfo)."""
        received = datetime.now(UTC)
        info = payload.get("transactionInfo") or {}
        tx = _text(info.get("transactionId")) if isinstance(info, dict) else None
        event, seq_no = payload.get("eventType"), _int(payload.get("seqNo"), None)
        ts = _when(payload.get("timestamp")) or received
        token = payload.get("idToken")
        id_tag = _text(token.get("idToken")) if isinstance(token, dict) else None
        samples, problems = read_meter_values(payload.get("meterValue"))
        if tx is None:
            await self.dead_letter(
                charger_id, json.dumps(payload), Reason.MISSING_FIELD,
                "TransactionEvent without transactionInfo.transactionId",
            )  # fmt: skip
            return id_tag
        ref = await self.sessions.find(charger_id, tx)
        if ref is None:
            evse = payload.get("evse")
            connector = _int(evse.get("id"), 0) if isinstance(evse, dict) else 0
            allowed, vehicle = await self.book.vehicle_of(id_tag)
            quality = [] if event == "Started" else ["start-missing"]
            if not allowed:
                quality.append("id-tag-refused")
            registers = [s for s in samples if s.register_kwh is not None]
            ref, _ = await self.sessions.start(
                charger_id=charger_id,
                connector_id=connector,
                protocol="ocpp2.0.1",
                transaction_id=tx,
                id_tag=id_tag,
                vehicle_id=vehicle,
                started_at=ts,
                meter_start_wh=_wh(registers[0].register_kwh) if registers else None,
                quality=quality,
            )
        await self._store(charger_id, samples, problems, ref.meter_id, frame)
        newest = ref.last_seq_no is None or seq_no is None or seq_no > ref.last_seq_no
        if not newest:
            return id_tag  # an event seen already, or older than one seen: no state change
        registers = sorted((s for s in samples if s.register_kwh is not None), key=_ts)
        quality = []
        if seq_no is not None and ref.last_seq_no is not None and seq_no > ref.last_seq_no + 1:
            quality.append("seq-gap")
        await self.sessions.update(
            ref,
            seq_no=seq_no,
            meter_start_wh=_wh(registers[0].register_kwh) if registers else None,
            meter_stop_wh=_wh(registers[-1].register_kwh) if registers else None,
            soc=_last_soc(samples),
            id_tag=id_tag,
            quality=quality,
        )
        if event == "Ended":
            reason = info.get("stoppedReason") if isinstance(info, dict) else None
            offline = payload.get("offline") is True or self._offline(ts, received)
            await self.sessions.stop(
                ref,
                stopped_at=ts,
                meter_stop_wh=None,
                reason=_text(reason),
                offline=offline,
            )
        return id_tag

    async def dead_letter(self, charger_id: str, raw: str, reason: Reason, detail: str) -> None:
        """A frame (or a part of one) that is no reading, kept with its raw text."""
        item = Item(None, raw.encode(), f"ocpp:{charger_id}", problem=(reason, detail))
        await self._sink.submit([item])

    # --- helpers --------------------------------------------------------------------------

    async def _store(
        self,
        charger_id: str,
        samples: Sequence[Sample],
        problems: Sequence[Problem],
        meter_id: str,
        frame: bytes | None = None,
    ) -> None:
        """The readings of ``samples`` (those with an energy register) and the dead letters
        of ``problems``; in csms mode, returns once they are committed."""
        source = f"ocpp:{charger_id}"
        items: list[Item] = []
        signed: list[tuple[Any, ...]] = []
        for sample in samples:
            if sample.register_kwh is None:
                continue  # voltage or SoC alone: no reading (and never a zero)
            values: dict[str, object] = {
                METER.id_field: meter_id,
                METER.register_field: sample.register_kwh,
                "timestamp": sample.ts,
            }
            if sample.voltage is not None:
                values["voltage"] = sample.voltage
            raw = frame if frame is not None else json.dumps(sample.raw).encode()
            items.append(Item(METER, raw, source, values=values, origin="ocpp"))
            signed.extend(
                (meter_id, sample.ts, s.measurand, s.data, s.signing_method, s.encoding,
                 s.public_key)
                for s in sample.signed
            )  # fmt: skip
        for problem in problems:
            raw = json.dumps(problem.raw).encode()
            items.append(Item(None, raw, source, problem=(problem.reason, problem.detail)))
        if signed:
            await self._pool.executemany(
                """INSERT INTO charger_signed_values
                       (meter_id, ts, measurand, signed_data, signing_method, encoding, public_key)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
                signed,
            )
        if not items:
            return
        self._metrics.received.labels("ocpp").inc(len(items))
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not committed.done():
                committed.set_result(None)

        def abandoned() -> None:
            if not committed.done():
                committed.set_exception(NotStored("the collector stopped before storing them"))

        await self._sink.submit(items, on_commit=done, on_abandon=abandoned)
        if not self._settings.wait_for_commit:
            committed.add_done_callback(_quiet)
            return
        try:
            async with asyncio.timeout(self._settings.commit_timeout_s):
                await asyncio.shield(committed)
        except TimeoutError:
            committed.add_done_callback(_quiet)
            raise NotStored(
                f"not stored within {self._settings.commit_timeout_s:g} s (the database is "
                "unavailable or slow); send it again"
            ) from None

    def _offline(self, at: datetime, received: datetime) -> bool:
        return (received - at).total_seconds() > self._settings.offline_after_s


def _quiet(future: asyncio.Future[None]) -> None:
    """Nobody waits for this commit any more: fetch its outcome so asyncio does not warn."""
    if not future.cancelled():
        future.exception()


def _ts(sample: Sample) -> datetime:
    return sample.ts


def _last_soc(samples: Sequence[Sample]) -> float | None:
    socs = [s for s in samples if s.soc is not None]
    return max(socs, key=_ts).soc if socs else None


def _when(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None and parsed.year >= 2000 else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:500]


def _int(value: Any, default: int | None) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _wh(kwh: float | None) -> float | None:
    return None if kwh is None else kwh * 1000


__all__ = ["NotStored", "Recorder", "RecorderSettings", "as_list"]
