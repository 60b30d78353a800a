"""MQTT source: a persistent QoS 1 session whose messages go to the sink, acked after commit.

The session survives the collector (fixed client id; MQTT 5 with a session expiry, or a
3.1.1 persistent session), so the broker queues readings while the collector is down and
redelivers whatever was not acknowledged. Each bulk of messages is decoded (``topics``: the
native contract) and submitted to the sink; its PUBACKs are sent once the writer has
committed it (``client``). The connection is retried with backoff forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import UTC, datetime
from functools import partial

import aiomqtt
import structlog

from collector.backoff import Backoff
from collector.ingest.sink import Item, Sink, SinkClosed, Submission
from collector.metrics import Metrics
from collector.settings import Settings
from collector.sources.base import SourceHealth
from collector.sources.mappings.decoder import Ignored, Mappings
from collector.sources.mqtt.broker import build_client
from collector.sources.mqtt.client import RETAINED, BulkAckClient, Inbound
from collector.sources.mqtt.topics import NativeTopics


class MqttSource:
    """Consumes the reading topics and submits each bulk of messages to the sink."""

    name = "mqtt"

    def __init__(
        self,
        *,
        settings: Settings,
        sink: Sink,
        metrics: Metrics,
        log: structlog.stdlib.BoundLogger | None = None,
        leaving: bool = False,
        leave_idle_s: float = 3.0,
        mappings: Mappings | None = None,
    ) -> None:
        self._settings = settings
        #: The payload mappings of SOURCES_FILE: their topics are subscribed to as well.
        self.mappings = mappings
        self._sink = sink
        self._metrics = metrics
        self._log = log or structlog.get_logger("collector.mqtt")
        self.topics = NativeTopics.from_settings(settings)
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

    def health(self) -> SourceHealth:
        return SourceHealth(self.connected, self.last_error)

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
                            await client.unsubscribe(self.filters())
                        else:
                            await client.subscribe([(t, 1) for t in self.filters()])
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
                        topics=self.filters(),
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
                broker = self._settings.mqtt
                self._log.warning(
                    "mqtt.disconnected",
                    broker=f"{broker.host}:{broker.port}",
                    error=self.last_error,
                    retry_in_s=round(delay, 2),
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
            # A bulk can hold up to MQTT_RECEIVE_MAXIMUM messages; no submission may be larger
            # than the buffer, so a smaller BUFFER_CAPACITY cuts the bulk (acks stay in order).
            size = self._sink.capacity
            for start in range(0, len(messages), size):
                bulk = messages[start : start + size]
                items = self.decode(bulk)
                try:
                    submission = await self._sink.submit(
                        items, on_commit=partial(self._ack, client, bulk)
                    )
                except SinkClosed:
                    return
                if self.mappings is not None:
                    self._count_mapped(items, submission)

    def filters(self) -> list[str]:
        """What the session subscribes to: the native topics and each mapping's."""
        native = self.topics.filters()
        if self.mappings is None:
            return native
        return [*native, *self.topics.shared(self.mappings.filters())]

    def decode(self, messages: list[Inbound]) -> list[Item]:
        """Each message's item: the native contract (one item per message), or, on a
        mapping's topic, what the mapping makes of it (nothing, when it ignores it)."""
        item = self.topics.item
        if self.mappings is None:
            return [item(topic, payload) for topic, payload, _mid, _flags in messages]
        route = self.mappings.route
        received_at = datetime.now(UTC)
        ignored: Counter[str] = Counter()
        out = []
        for topic, payload, _mid, flags in messages:
            found = route(topic)
            if found is None:
                out.append(item(topic, payload))
                continue
            mapping, captures = found
            made = mapping.decode(
                topic, captures, payload, retained=bool(flags & RETAINED), received_at=received_at
            )
            if isinstance(made, Ignored):
                ignored[mapping.name] += 1
            else:
                out.append(made)
        for name, n in ignored.items():
            self._metrics.mapped.labels(name, "ignored").inc(n)
        return out

    def _count_mapped(self, items: list[Item], submission: Submission) -> None:
        """Per mapping: its items taken for storage, and those dead-lettered."""
        refused = {index for index, _ in submission.refused}
        counts: Counter[tuple[str, str]] = Counter()
        for index, it in enumerate(items):
            if it.origin is not None:
                outcome = "dead_lettered" if index in refused else "stored"
                counts[it.origin, outcome] += 1
        for (origin, outcome), n in counts.items():
            self._metrics.mapped.labels(origin, outcome).inc(n)

    def _ack(self, client: BulkAckClient, messages: list[Inbound]) -> None:
        if not client.ack(messages):
            self._metrics.mqtt_unacked_dropped.inc(len(messages))
