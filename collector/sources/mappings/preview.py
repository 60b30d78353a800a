"""What the API may ask of the payload mappings: list them with their counts, and try a
message without storing it ("here is a topic and a payload: what would you store?", the
question peers' users answer by trial and error on production logs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from collector.ingest.readings import Reading
from collector.ingest.sink import Item, Submission
from collector.ingest.streams import stream_of
from collector.sources.mappings.decoder import Ignored, Mappings
from collector.sources.mqtt.topics import NativeTopics

OUTCOMES = ("stored", "ignored", "dead_lettered")


def rendered(reading: Reading) -> dict[str, Any]:
    """A reading as its payload, with its stream: what would be stored."""
    out: dict[str, Any] = {"stream": stream_of(reading).name}
    out.update({k: v for k, v in reading.values().items() if v is not None})
    out["timestamp"] = reading.timestamp.astimezone(UTC).isoformat()
    return out


@dataclass(frozen=True, slots=True)
class SourcesDesk:
    mappings: Mappings | None
    native: NativeTopics
    #: The sink's classification (validation, no buffer): what a message would become.
    classify: Callable[[Sequence[Item], datetime], Submission]
    #: (source, outcome) -> messages so far (the daemon's metrics); None: not counted here.
    counted: Callable[[str, str], float] | None = None

    def describe(self) -> dict[str, Any]:
        sources = []
        for m in self.mappings.sources if self.mappings else ():
            spec = m.spec
            sources.append(
                {
                    "name": m.name,
                    "kind": spec.kind,
                    "topic": spec.topic,
                    "subscription": m.pattern.filter(),
                    "deviceId": spec.device_id,
                    "timestamp": spec.timestamp.format,
                    "retained": spec.retained,
                    "fields": [f.model_dump() for f in spec.fields],
                    "messages": {o: self._count(m.name, o) for o in OUTCOMES},
                }
            )
        return {"native": self.native.filters(), "sources": sources}

    def _count(self, source: str, outcome: str) -> int | None:
        return None if self.counted is None else int(self.counted(source, outcome))

    def test(self, topic: str, payload: bytes, *, retained: bool = False) -> dict[str, Any]:
        """What one message on ``topic`` would become; nothing is stored."""
        now = datetime.now(UTC)
        out: dict[str, Any] = {"topic": topic, "source": None, "readings": [], "rejected": None}
        item: Item
        found = self.mappings.route(topic) if self.mappings else None
        if self.native.route(topic) is not None:
            out["source"] = "native"
            item = self.native.item(topic, payload)
        elif found is None:
            out.update(outcome="no_source", why="no source takes this topic")
            return out
        else:
            mapping, captures = found
            out["source"] = mapping.name
            made = mapping.decode(topic, captures, payload, retained=retained, received_at=now)
            if isinstance(made, Ignored):
                out.update(outcome="ignored", why=made.why)
                return out
            item = made
        submission = self.classify([item], now)
        if submission.rejected:
            rejection = submission.rejected[0]
            out["outcome"] = "dead_lettered"
            out["rejected"] = {"reason": rejection.reason.value, "detail": rejection.detail}
        else:
            out["outcome"] = "stored"
            out["readings"] = [rendered(r) for g in submission.readings.values() for r in g]
        return out
