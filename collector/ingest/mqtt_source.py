"""MQTT source: a persistent QoS 1 session whose messages become chunks in the buffer.

The session survives the collector (fixed client id; MQTT 5 with a session expiry, or a
3.1.1 persistent session), so the broker queues readings while the collector is down and
redelivers whatever was not acknowledged. Messages are acknowledged by the writer after the
commit (see ``collector.ingest.mqtt_client``). The connection is retried with backoff forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from functools import partial

import aiomqtt
import structlog

from collector.backoff import Backoff
from collector.ingest.broker import build_client
from collector.ingest.buffer import BufferClosed, Chunk, IngestBuffer
from collector.ingest.mqtt_client import BulkAckClient, Inbound
from collector.ingest.readings import (
    Kind,
    MeterReading,
    ReadingValidator,
    Reason,
    Rejection,
    VehicleReading,
    route_topic,
)
from collector.metrics import Metrics
from collector.settings import Settings

_UNKNOWN_TOPIC = "not a meters/{id}/reading or vehicles/{id}/reading topic"


class MqttSource:
    """Consumes the reading topics and puts each bulk of messages into the buffer."""

    def __init__(
        self,
        *,
        settings: Settings,
        buffer: IngestBuffer,
        validator: ReadingValidator,
        metrics: Metrics,
        log: structlog.stdlib.BoundLogger | None = None,
        leaving: bool = False,
        leave_idle_s: float = 3.0,
    ) -> None:
        self._settings = settings
        self._buffer = buffer
        self._validator = validator
        self._metrics = metrics
        self._log = log or structlog.get_logger("collector.mqtt")
        self._prefix = settings.mqtt_topic_prefix
        self._stop_taking = asyncio.Event()
        self._release = asyncio.Event()
        self._client: BulkAckClient | None = None
        self.last_error: str | None = None
        self._leaving = leaving
        self._leave_idle_s = leave_idle_s
        #: Leaving: set once nothing has arrived for leave_idle_s (the session is drained).
        self.drained = asyncio.Event()
        #: Leaving: at the end, nothing was left untaken or unacknowledged.
        self.left_clean = False

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def stop_taking(self) -> None:
        """Stop taking messages; keep the connection so committed ones can still be acked."""
        self._stop_taking.set()
        if self._client is not None:
            self._client.wake()

    def release(self) -> None:
        """Everything taken is committed (or given up): disconnect cleanly and return."""
        self._stop_taking.set()
        self._release.set()
        if self._client is not None:
            self._client.wake()

    async def run(self) -> None:
        """Connect, subscribe and consume until stopped, reconnecting with backoff."""
        s = self._settings
        backoff = Backoff(0.5, s.mqtt_reconnect_max_s)
        while not self._stop_taking.is_set():
            client = build_client(self._settings)
            assert isinstance(client, BulkAckClient)
            try:
                async with client:
                    self._client = client
                    # Consume from the first moment: a resumed session's queued messages come
                    # before the SUBACK, and once the client holds its limit it stops reading,
                    # so waiting for the SUBACK first could wait forever.
                    consuming = asyncio.create_task(self._consume(client))
                    try:
                        if self._leaving:
                            # The broker stops routing new readings to this session; what
                            # it already holds is still delivered.
                            await client.unsubscribe(s.subscriptions())
                        else:
                            await client.subscribe([(topic, 1) for topic in s.subscriptions()])
                    except BaseException:
                        consuming.cancel()
                        raise
                    self._metrics.mqtt_connects.inc()
                    self._metrics.mqtt_connected.set(1)
                    self.last_error = None
                    self._log.info(
                        "mqtt.connected",
                        broker=f"{s.mqtt.host}:{s.mqtt.port}",
                        client_id=s.mqtt_client_id,
                        protocol=s.mqtt_protocol,
                        topics=s.subscriptions(),
                    )
                    backoff.reset()
                    await consuming
                    # Stopping: hold the connection until the writer has acked what it took.
                    while not self._release.is_set() and client.connected:
                        await client.wait_woken()
                    self.left_clean = client.connected and client.held == 0
                    return
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc) or type(exc).__name__
                delay = backoff.next()
                self._log.warning(
                    "mqtt.disconnected", error=self.last_error, retry_in_s=round(delay, 2)
                )
            finally:
                self._metrics.mqtt_connected.set(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_taking.wait(), delay)

    async def _consume(self, client: BulkAckClient) -> None:
        while not self._stop_taking.is_set():
            if self._leaving:
                try:
                    messages = await asyncio.wait_for(client.take(), self._leave_idle_s)
                except TimeoutError:
                    self.drained.set()
                    continue
            else:
                messages = await client.take()
            if not messages:
                continue  # woken by stop_taking
            self._metrics.received.labels("mqtt").inc(len(messages))
            # A bulk can hold up to MQTT_RECEIVE_MAXIMUM messages; no chunk may be larger
            # than the buffer, so a smaller BUFFER_CAPACITY cuts the bulk (acks stay in order).
            size = self._buffer.capacity
            for start in range(0, len(messages), size):
                try:
                    await self._buffer.put(self.to_chunk(messages[start : start + size], client))
                except BufferClosed:
                    return

    def to_chunk(self, messages: list[Inbound], client: BulkAckClient) -> Chunk:
        """Validate a bulk of messages into one chunk that acks them after its commit."""
        validate = self._validator.validate
        received_at = datetime.now(UTC)
        horizon = self._validator.horizon(received_at)
        meters: list[MeterReading] = []
        vehicles: list[VehicleReading] = []
        rejected: list[Rejection] = []
        prefix = self._prefix
        for topic, payload, _mid, _qos in messages:
            route = route_topic(topic, prefix)
            if route is None:
                rejected.append(Rejection(topic, payload, Reason.UNKNOWN_TOPIC, _UNKNOWN_TOPIC))
                continue
            kind, device_id = route
            result = validate(kind, payload, source=topic, expected_id=device_id, horizon=horizon)
            if isinstance(result, Rejection):
                rejected.append(result)
            elif kind is Kind.METER:
                meters.append(result)  # type: ignore[arg-type]
            else:
                vehicles.append(result)  # type: ignore[arg-type]
        return Chunk(
            meters, vehicles, rejected, received_at, on_commit=partial(self._ack, client, messages)
        )

    def _ack(self, client: BulkAckClient, messages: list[Inbound]) -> None:
        if not client.ack(messages):
            self._metrics.mqtt_unacked_dropped.inc(len(messages))
