"""The native MQTT contract, in one place: what the collector subscribes to, how a topic
is routed to its stream and device, and how a message becomes an item.

Native topics are ``[prefix/]{stream.topic}/{deviceId}/reading`` for every stream of the
catalogue (``meters/meter-001/reading``, ``vehicles/vehicle-001/reading``), and the payload
is the stream's JSON (``collector.ingest.readings``). The same :class:`NativeTopics` gives
the subscription filters (with the prefix and the shared group), routes a received topic,
and decodes a message (the native decoder: the sink validates the payload).
"""

from __future__ import annotations

from collector.ingest.readings import Reason
from collector.ingest.sink import Item
from collector.ingest.streams import STREAMS, Stream
from collector.settings import Settings

#: The last level of every native topic.
READING = "reading"
#: Routes of topics kept (one per device and stream): past it the cache starts over.
ROUTES_KEPT = 200_000


class NativeTopics:
    """``[prefix/]{stream}/{id}/reading`` for each stream: filters, routing, the error."""

    def __init__(self, prefix: str = "", shared_group: str = "") -> None:
        self.prefix = prefix
        self.shared_group = shared_group
        self._by_root = {s.topic: s for s in STREAMS.values()}
        #: topic -> its route: a device publishes to one topic again and again.
        self._routes: dict[str, tuple[Stream, str] | None] = {}
        shapes = " or ".join(f"{s.topic}/{{id}}/{READING}" for s in STREAMS.values())
        #: The dead letter's detail for a topic that is none of them.
        self.unknown = f"not a {shapes} topic"

    @classmethod
    def from_settings(cls, settings: Settings) -> NativeTopics:
        return cls(settings.mqtt_topic_prefix, settings.mqtt_shared_group)

    def filters(self) -> list[str]:
        """Topic filters to subscribe to, with the prefix and shared group applied."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        return self.shared([f"{prefix}{s.topic}/+/{READING}" for s in STREAMS.values()])

    def shared(self, filters: list[str]) -> list[str]:
        """``filters`` in the shared subscription group, if there is one (MQTT_SHARED_GROUP):
        the native ones and the payload mappings' alike."""
        if not self.shared_group:
            return filters
        return [f"$share/{self.shared_group}/{f}" for f in filters]

    def route(self, topic: str) -> tuple[Stream, str] | None:
        """The stream and device id of a native topic; None for any other topic."""
        try:
            return self._routes[topic]
        except KeyError:
            pass
        if len(self._routes) >= ROUTES_KEPT:
            self._routes.clear()  # only a shortcut: start over
        found = self._routes[topic] = self._route(topic)
        return found

    def _route(self, topic: str) -> tuple[Stream, str] | None:
        prefix = self.prefix
        if prefix:
            if not topic.startswith(prefix) or topic[len(prefix) : len(prefix) + 1] != "/":
                return None
            topic = topic[len(prefix) + 1 :]
        parts = topic.split("/")
        if len(parts) != 3 or parts[2] != READING or not parts[1]:
            return None
        stream = self._by_root.get(parts[0])
        return None if stream is None else (stream, parts[1])

    def decode(self, address: str, payload: bytes) -> tuple[Item]:
        """The native decoder: the topic's stream and device, the payload as it is."""
        return (self.item(address, payload),)

    def item(self, topic: str, payload: bytes) -> Item:
        """The one item of a native message (what :meth:`decode` returns, unwrapped)."""
        found = self.route(topic)
        if found is None:
            return Item(None, payload, topic, problem=(Reason.UNKNOWN_TOPIC, self.unknown))
        return Item(found[0], payload, topic, found[1])
