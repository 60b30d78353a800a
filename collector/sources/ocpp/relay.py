"""relay mode: in front of the operator's CSMS, every frame forwarded unchanged both ways.

The operator's CSMS stays the system of record: it answers the charger, and nothing here
waits for our database. Each frame is forwarded first; a copy of what carries metering is
then queued for the recorder (raw text, parsed later), which works through it in order per
charger and retries while the database is away. The queues of all chargers together hold at
most ``OCPP_RELAY_BACKLOG`` frames (:class:`Backlog`); past that a frame is not copied (it
still reaches the CSMS) and is counted in ``collector_ocpp_relay_dropped_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from collector.backoff import Backoff
from collector.ingest.readings import Reason
from collector.metrics import Metrics
from collector.sources.ocpp import frames
from collector.sources.ocpp.recorder import Recorder

log = structlog.get_logger("collector.ocpp")

#: The charger's CALLs whose copies the recorder reads (StartTransaction once the CSMS
#: has answered it: the answer holds the transaction id).
RECORDED = {
    "BootNotification",
    "Heartbeat",
    "StatusNotification",
    "MeterValues",
    "StopTransaction",
    "TransactionEvent",
    "DataTransfer",
}


@dataclass(slots=True)
class Backlog:
    """Frames copied for the recorder and not recorded yet, across all chargers."""

    limit: int
    metrics: Metrics
    held: int = 0
    dropped: int = 0

    def take(self) -> bool:
        if self.held >= self.limit:
            self.dropped += 1
            self.metrics.ocpp_relay_dropped.inc()
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning(
                    "ocpp.relay_backlog_full",
                    held=self.held,
                    dropped=self.dropped,
                    hint="the database has been away long; these frames reached the CSMS "
                    "but their metering is not stored here",
                )
            return False
        self.held += 1
        self.metrics.ocpp_relay_backlog.set(self.held)
        return True

    def done(self) -> None:
        self.held -= 1
        self.metrics.ocpp_relay_backlog.set(self.held)


@dataclass(slots=True)
class _Copy:
    """A frame to record: its action, raw text, and what the CSMS answered (if needed)."""

    action: str
    text: str
    answer: Any = None


@dataclass(slots=True)
class Relay:
    """One charger's connection relayed to the CSMS, and its recorder queue."""

    charger_id: str
    charger: ServerConnection
    upstream: ClientConnection
    recorder: Recorder
    backlog: Backlog
    _queue: deque[_Copy] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: The charger's CALLs waiting for the CSMS's answer, by message id.
    _asked: dict[str, _Copy] = field(default_factory=dict)
    _closed: bool = False

    async def run(self) -> None:
        """Forward both ways until either side closes; then close the other."""
        down = asyncio.create_task(self._pump(self.charger, self.upstream, self._from_charger))
        up = asyncio.create_task(self._pump(self.upstream, self.charger, self._from_csms))
        try:
            await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (down, up):
                task.cancel()
            await self.upstream.close()
            await self.charger.close()
            self._closed = True
            self._wake.set()

    async def _pump(self, source: Any, target: Any, observe: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in source:
                await target.send(message)  # first: the traffic never waits for us
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                observe(text)

    def _from_charger(self, text: str) -> None:
        try:
            frame = frames.parse(text)
        except frames.FrameError as exc:
            self._queue_copy(_Copy("", text, str(exc)))
            return
        if frame.kind != frames.CALL:
            return
        if frame.action in ("StartTransaction", "BootNotification"):
            self._asked[frame.unique_id] = _Copy(frame.action, text)
        if frame.action in RECORDED:
            self._queue_copy(_Copy(frame.action or "", text))

    def _from_csms(self, text: str) -> None:
        try:
            frame = frames.parse(text)
        except frames.FrameError:
            return
        asked = self._asked.pop(frame.unique_id, None)
        if asked is None or frame.kind != frames.CALLRESULT or not isinstance(frame.payload, dict):
            return
        if asked.action == "StartTransaction":
            asked.answer = frame.payload.get("transactionId")
            self._queue_copy(asked)
        else:
            self._queue_copy(_Copy("BootAnswer", text, frame.payload.get("status")))

    def _queue_copy(self, copy: _Copy) -> None:
        if self.backlog.take():
            self._queue.append(copy)
            self._wake.set()

    async def record(self) -> None:
        """Work through the copies in order; retry one while the database is away. Runs
        past the connection's end until its queue is empty."""
        backoff = Backoff(0.5, 10)
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            copy = self._queue[0]
            try:
                await self._record(copy)
            except Exception as exc:
                delay = backoff.next()
                log.info(
                    "ocpp.relay_record_retry",
                    charger=self.charger_id,
                    action=copy.action,
                    error=str(exc)[:200],
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self._queue.popleft()
            self.backlog.done()

    async def _record(self, copy: _Copy) -> None:
        r, charger = self.recorder, self.charger_id
        if copy.action == "":
            await r.dead_letter(charger, copy.text, Reason.INVALID_JSON, str(copy.answer))
            return
        if copy.action == "BootAnswer":
            await r.boot_answered(charger, copy.answer)
            return
        payload = frames.parse(copy.text).payload
        if copy.action == "BootNotification":
            await r.boot(charger, payload)
        elif copy.action == "Heartbeat":
            await r.heartbeat(charger)
        elif copy.action == "StatusNotification":
            await r.status(charger, payload)
        elif copy.action == "StartTransaction":
            tx = copy.answer
            await r.start_transaction(charger, payload, None if tx is None else str(tx))
        elif copy.action == "MeterValues":
            await r.meter_values(charger, payload)
        elif copy.action == "StopTransaction":
            await r.stop_transaction(charger, payload)
        elif copy.action == "TransactionEvent":
            await r.transaction_event(charger, payload)
        elif copy.action == "DataTransfer":
            await r.data_transfer(charger, payload)
