"""csms mode: the collector is the chargers' back end, one ``ocpp`` ChargePoint per connection.

The library routes each CALL to a handler and sends its reply when the handler returns, one
CALL at a time per connection, as OCPP expects; a handler that raises is answered with a
CALLERROR (``InternalError``), which a charger treats as "not delivered" and retries. The
handlers that carry energy return only after the recorder's commit (ack after commit).

Schema validation is off for every handler: real chargers send numbers for strings,
objects for arrays and empty lists (docs/ocpp.md), and refusing such a frame would lose its
energy; the recorder reads them leniently instead. Frames are read here first
(:meth:`_Csms.route_message`), so one that is not JSON or not OCPP is dead-lettered with
its raw text (the library would only log it) and answered with a CALLERROR where its id can
be read.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import structlog
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallError, CallResult
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from collector.ingest.readings import Reason
from collector.sources.ocpp import frames
from collector.sources.ocpp.recorder import Recorder

log = structlog.get_logger("collector.ocpp")
#: Answered on the fast path (:meth:`_Csms._answer_hot`).
_HOT = frozenset({"MeterValues", "TransactionEvent"})
#: What a charger is asked to sample on boot (aligned and periodic meter values).
METERING_MEASURANDS = "Energy.Active.Import.Register"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _Csms:
    """What both protocol versions share: the frame hook, the recorder, the boot setup."""

    id: str
    _recorder: Recorder
    _heartbeat_s: int
    _meter_interval_s: int
    _wire: dict[str, dict[str, Any]]
    _tasks: set[asyncio.Task[Any]]

    def _setup(self, recorder: Recorder, heartbeat_s: int, meter_interval_s: int) -> None:
        self._recorder = recorder
        self._heartbeat_s = heartbeat_s
        self._meter_interval_s = meter_interval_s
        #: Each CALL's payload as it came over the wire (camelCase), by message id: the
        #: recorder reads that, not the library's snake_cased copy.
        self._wire = {}
        self._tasks = set()

    def payload(self, unique_id: str) -> dict[str, Any]:
        return self._wire.pop(unique_id, {})

    async def route_message(self, raw_msg: str | bytes) -> None:
        """Parse the frame once, dead-letter what is not OCPP, route the rest."""
        await self._recorder.seen(self.id)
        try:
            frame = frames.parse(raw_msg)
        except frames.FrameError as exc:
            text = raw_msg if isinstance(raw_msg, str) else raw_msg.decode("utf-8", "replace")
            await self._recorder.dead_letter(self.id, text, Reason.INVALID_JSON, str(exc))
            if exc.unique_id is not None:
                await self._send(frames.call_error(exc.unique_id, exc.code, str(exc)))
            return
        if frame.kind == frames.CALL and frame.action in _HOT:
            raw = raw_msg if isinstance(raw_msg, bytes) else raw_msg.encode()
            await self._answer_hot(frame, raw)
        elif frame.kind == frames.CALL:
            assert frame.action is not None
            self._wire[frame.unique_id] = frame.payload
            msg = Call(frame.unique_id, frame.action, frame.payload)
            try:
                await self._handle_call(msg)  # type: ignore[attr-defined]
            except OCPPError as error:
                await self._send(msg.create_call_error(error).to_json())
            finally:
                self._wire.pop(frame.unique_id, None)
        elif frame.kind == frames.CALLRESULT:
            self._response_queue.put_nowait(CallResult(frame.unique_id, frame.payload))  # type: ignore[attr-defined]
        else:
            code, description, details = [*frame.payload, "", "", {}][:3]
            self._response_queue.put_nowait(  # type: ignore[attr-defined]
                CallError(frame.unique_id, code, description, details)
            )

    async def _answer_hot(self, frame: frames.Frame, raw: bytes) -> None:
        """The messages every charger sends all the time (meter values; 2.0.1's periodic
        TransactionEvents), answered without the library's per-call machinery (its
        snake_casing, signature inspection and serialisation were 40 % of the CPU of a
        meter value: bench/ocpp.py --profile). The same answers and CALLERRORs."""
        try:
            if frame.action == "TransactionEvent":
                id_tag = await self._recorder.transaction_event(self.id, frame.payload, raw)
                reply: dict[str, Any] = {}
                if id_tag is not None:
                    allowed = await self._recorder.authorize(id_tag)
                    reply = {"idTokenInfo": {"status": "Accepted" if allowed else "Invalid"}}
            else:
                await self._recorder.meter_values(self.id, frame.payload, raw)
                reply = {}
        except Exception as exc:
            log.warning(
                "ocpp.call_failed", charger=self.id, action=frame.action, error=str(exc)[:300]
            )
            await self._send(frames.call_error(frame.unique_id, "InternalError", str(exc)))
            return
        await self._send(f"[3,{json.dumps(frame.unique_id)},{json.dumps(reply)}]")

    async def _send(self, message: str) -> None:
        await self._connection.send(message)  # type: ignore[attr-defined]

    def _later(self, coro: Any) -> None:
        """Run a CSMS-initiated call after the current reply (kept referenced)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _configure(self, calls: list[Any]) -> None:
        for request in calls:
            try:
                answer = await self.call(request, skip_schema_validation=True)  # type: ignore[attr-defined]
            except Exception as exc:
                log.info("ocpp.configure_failed", charger=self.id, error=repr(exc))
                return
            log.info(
                "ocpp.configured",
                charger=self.id,
                request=type(request).__name__,
                answer=str(answer)[:200],
            )


class Csms16(_Csms, ChargePoint16):
    """An OCPP 1.6J charger's back end."""

    def __init__(
        self, charger_id: str, connection: Any, recorder: Recorder, *, heartbeat_s: int,
        meter_interval_s: int,
    ) -> None:  # fmt: skip
        ChargePoint16.__init__(self, charger_id, connection)
        self._setup(recorder, heartbeat_s, meter_interval_s)

    @on("BootNotification", skip_schema_validation=True)
    async def on_boot(self, call_unique_id: str, **_: Any) -> result16.BootNotification:
        await self._recorder.boot(self.id, self.payload(call_unique_id))
        return result16.BootNotification(
            current_time=_now(), interval=self._heartbeat_s, status="Accepted"
        )

    @after("BootNotification")
    def after_boot(self, **_: Any) -> None:
        interval = self._meter_interval_s
        if interval:
            self._later(
                self._configure(
                    [
                        call16.ChangeConfiguration("MeterValueSampleInterval", str(interval)),
                        call16.ChangeConfiguration("MeterValuesSampledData", METERING_MEASURANDS),
                        call16.ChangeConfiguration("ClockAlignedDataInterval", str(interval)),
                        call16.ChangeConfiguration("MeterValuesAlignedData", METERING_MEASURANDS),
                    ]
                )
            )

    @on("Heartbeat", skip_schema_validation=True)
    async def on_heartbeat(self, **_: Any) -> result16.Heartbeat:
        await self._recorder.heartbeat(self.id)
        return result16.Heartbeat(current_time=_now())

    @on("StatusNotification", skip_schema_validation=True)
    async def on_status(self, call_unique_id: str, **_: Any) -> result16.StatusNotification:
        await self._recorder.status(self.id, self.payload(call_unique_id))
        return result16.StatusNotification()

    @on("Authorize", skip_schema_validation=True)
    async def on_authorize(self, call_unique_id: str, **_: Any) -> result16.Authorize:
        allowed = await self._recorder.authorize(self.payload(call_unique_id).get("idTag"))
        return result16.Authorize(id_tag_info={"status": "Accepted" if allowed else "Invalid"})

    @on("StartTransaction", skip_schema_validation=True)
    async def on_start(self, call_unique_id: str, **_: Any) -> result16.StartTransaction:
        ref, allowed = await self._recorder.start_transaction(self.id, self.payload(call_unique_id))
        return result16.StartTransaction(
            transaction_id=int(ref.transaction_id),
            id_tag_info={"status": "Accepted" if allowed else "Invalid"},
        )

    @on("MeterValues", skip_schema_validation=True)
    async def on_meter_values(self, call_unique_id: str, **_: Any) -> result16.MeterValues:
        await self._recorder.meter_values(self.id, self.payload(call_unique_id))
        return result16.MeterValues()

    @on("StopTransaction", skip_schema_validation=True)
    async def on_stop(self, call_unique_id: str, **_: Any) -> result16.StopTransaction:
        await self._recorder.stop_transaction(self.id, self.payload(call_unique_id))
        return result16.StopTransaction()

    @on("DataTransfer", skip_schema_validation=True)
    async def on_data_transfer(self, call_unique_id: str, **_: Any) -> result16.DataTransfer:
        await self._recorder.data_transfer(self.id, self.payload(call_unique_id))
        return result16.DataTransfer(status="Accepted")

    @on("FirmwareStatusNotification", skip_schema_validation=True)
    async def on_firmware(self, **_: Any) -> result16.FirmwareStatusNotification:
        return result16.FirmwareStatusNotification()

    @on("DiagnosticsStatusNotification", skip_schema_validation=True)
    async def on_diagnostics(self, **_: Any) -> result16.DiagnosticsStatusNotification:
        return result16.DiagnosticsStatusNotification()


class Csms201(_Csms, ChargePoint201):
    """An OCPP 2.0.1 charging station's back end."""

    def __init__(
        self, charger_id: str, connection: Any, recorder: Recorder, *, heartbeat_s: int,
        meter_interval_s: int,
    ) -> None:  # fmt: skip
        ChargePoint201.__init__(self, charger_id, connection)
        self._setup(recorder, heartbeat_s, meter_interval_s)

    @on("BootNotification", skip_schema_validation=True)
    async def on_boot(self, call_unique_id: str, **_: Any) -> result201.BootNotification:
        await self._recorder.boot(self.id, self.payload(call_unique_id))
        return result201.BootNotification(
            current_time=_now(), interval=self._heartbeat_s, status="Accepted"
        )

    @after("BootNotification")
    def after_boot(self, **_: Any) -> None:
        interval = str(self._meter_interval_s)
        if self._meter_interval_s:
            variables = [
                ("SampledDataCtrlr", "TxUpdatedInterval", interval),
                ("SampledDataCtrlr", "TxUpdatedMeasurands", METERING_MEASURANDS),
                ("AlignedDataCtrlr", "Interval", interval),
                ("AlignedDataCtrlr", "Measurands", METERING_MEASURANDS),
            ]
            data = [
                {"attribute_value": value, "component": {"name": c}, "variable": {"name": v}}
                for c, v, value in variables
            ]
            self._later(self._configure([call201.SetVariables(set_variable_data=data)]))

    @on("Heartbeat", skip_schema_validation=True)
    async def on_heartbeat(self, **_: Any) -> result201.Heartbeat:
        await self._recorder.heartbeat(self.id)
        return result201.Heartbeat(current_time=_now())

    @on("StatusNotification", skip_schema_validation=True)
    async def on_status(self, call_unique_id: str, **_: Any) -> result201.StatusNotification:
        await self._recorder.status(self.id, self.payload(call_unique_id))
        return result201.StatusNotification()

    @on("Authorize", skip_schema_validation=True)
    async def on_authorize(self, call_unique_id: str, **_: Any) -> result201.Authorize:
        token = self.payload(call_unique_id).get("idToken")
        id_tag = token.get("idToken") if isinstance(token, dict) else None
        allowed = await self._recorder.authorize(id_tag)
        return result201.Authorize(id_token_info={"status": "Accepted" if allowed else "Invalid"})

    @on("MeterValues", skip_schema_validation=True)
    async def on_meter_values(self, call_unique_id: str, **_: Any) -> result201.MeterValues:
        await self._recorder.meter_values(self.id, self.payload(call_unique_id))
        return result201.MeterValues()

    @on("TransactionEvent", skip_schema_validation=True)
    async def on_transaction(self, call_unique_id: str, **_: Any) -> result201.TransactionEvent:
        id_tag = await self._recorder.transaction_event(self.id, self.payload(call_unique_id))
        if id_tag is None:
            return result201.TransactionEvent()
        allowed = await self._recorder.authorize(id_tag)
        return result201.TransactionEvent(
            id_token_info={"status": "Accepted" if allowed else "Invalid"}
        )

    @on("DataTransfer", skip_schema_validation=True)
    async def on_data_transfer(self, call_unique_id: str, **_: Any) -> result201.DataTransfer:
        await self._recorder.data_transfer(self.id, self.payload(call_unique_id))
        return result201.DataTransfer(status="Accepted")

    @on("NotifyEvent", skip_schema_validation=True)
    async def on_notify_event(self, **_: Any) -> result201.NotifyEvent:
        return result201.NotifyEvent()

    @on("SecurityEventNotification", skip_schema_validation=True)
    async def on_security_event(self, **_: Any) -> result201.SecurityEventNotification:
        return result201.SecurityEventNotification()

    @on("NotifyReport", skip_schema_validation=True)
    async def on_notify_report(self, **_: Any) -> result201.NotifyReport:
        return result201.NotifyReport()

    @on("FirmwareStatusNotification", skip_schema_validation=True)
    async def on_firmware(self, **_: Any) -> result201.FirmwareStatusNotification:
        return result201.FirmwareStatusNotification()


#: The back end for each subprotocol.
CSMS = {"ocpp1.6": Csms16, "ocpp2.0.1": Csms201}
