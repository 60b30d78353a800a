"""A source of ``SOURCES_FILE`` at work: a message on its topics -> an item, or "ignored".

What a mapping decides per message, in order: a retained message is old state (ignored
unless ``retained = "accept"``); the payload is parsed (JSON, or the scalar text); ``when``
selects the messages of several shapes on one topic; each field is looked up (a missing
path, or a value in ``ignore_values``, is a field absent); a message with no energy is
ignored (Shelly sends only what changed); the timestamp is read; units are scaled exactly.
The item then goes to the sink like a native one: the stream's own validation (ranges, the
device id, the clock) applies, and a rejection names the source.

"Ignored" is counted, not dead-lettered: it is the normal life of a topic that carries
more than readings. An unparseable payload or a value that is no number is a dead letter.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import jmespath  # type: ignore[import-untyped]
import jmespath.exceptions  # type: ignore[import-untyped]

from collector.ingest.readings import Reason, TimestampError, parse_iso8601
from collector.ingest.sink import Item
from collector.ingest.streams import STREAMS
from collector.sources.mappings.spec import SourceSpec
from collector.sources.mappings.topic import TopicPattern
from collector.sources.mappings.units import ENERGY_UNITS, NotANumber, number

_TEMPLATE = re.compile(r"{([^{}]*)}")
#: Device ids kept per source (one per device): past it the cache starts over.
_IDS_KEPT = 200_000


def _keys(node: dict[str, Any]) -> tuple[str, ...] | None:
    """The keys a path walks, if it is only keys (``a."b:c".d``, ``@``); else None."""
    kind = node.get("type")
    if kind == "field":
        return (node["value"],)
    if kind == "current":
        return ()
    if kind == "subexpression":
        out: tuple[str, ...] = ()
        for child in node["children"]:
            keys = _keys(child)
            if keys is None:
                return None
            out += keys
        return out
    return None


class _Path:
    """A compiled JMESPath; a path of keys only (most of them, quoted keys included) walks
    the dicts directly, 15 times faster than the general engine, with the same answer."""

    __slots__ = ("_expression", "_keys", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._expression = jmespath.compile(text)
        self._keys = _keys(self._expression.parsed)

    def search(self, document: Any) -> Any:
        keys = self._keys
        if keys is None:
            return self._expression.search(document)
        for key in keys:
            if not isinstance(document, dict):
                return None
            document = document.get(key)
        return document


class _Dead(Exception):
    """The message is a dead letter; the message says why."""


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message a source takes no reading from, and why (a metric label)."""

    why: str  # retained | when | no_energy


class Mapping:
    """One source, compiled."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.pattern = TopicPattern(spec.topic)
        self.stream = STREAMS[spec.kind]
        stream = self.stream
        self._energy = {stream.energy.field, stream.register_field}
        self._fields = [
            (f.target, _Path(f.path), ENERGY_UNITS[f.unit] if f.unit else None) for f in spec.fields
        ]
        self._when = (_Path(spec.when.path), spec.when.equals) if spec.when else None
        ts = spec.timestamp
        self._ts_path = _Path(ts.path) if ts.path else None
        self._ts_format = ts.format
        self._zone = ZoneInfo(ts.tz) if ts.tz else None
        self._ignore = frozenset(spec.ignore_values)
        self._scalar = spec.payload == "scalar"
        self._accept_retained = spec.retained == "accept"
        #: captured levels -> the device id they make (a device publishes again and again)
        self._ids: dict[tuple[str, ...], str] = {}

    def device_id(self, captures: dict[str, str]) -> str:
        key = tuple(captures.values())
        found = self._ids.get(key)
        if found is None:
            if len(self._ids) >= _IDS_KEPT:
                self._ids.clear()  # only a shortcut: start over
            found = self._ids[key] = _TEMPLATE.sub(lambda m: captures[m[1]], self.spec.device_id)
        return found

    def decode(  # noqa: PLR0911 - one return per outcome, in the order they are decided
        self,
        topic: str,
        captures: dict[str, str],
        payload: bytes,
        *,
        retained: bool,
        received_at: datetime,
    ) -> Item | Ignored:
        if retained and not self._accept_retained:
            return Ignored("retained")
        try:
            document = self._document(payload)
        except _Dead as dead:
            return self._dead(topic, payload, Reason.INVALID_JSON, str(dead))
        if self._when is not None and not self._selected(document):
            return Ignored("when")
        try:
            values = self._values(document)
        except _Dead as dead:
            return self._dead(topic, payload, Reason.INVALID_TYPE, str(dead))
        if not self._energy & values.keys():
            return Ignored("no_energy")
        try:
            values["timestamp"] = self._timestamp(document, received_at)
        except (TimestampError, NotANumber, ValueError, OverflowError, OSError) as exc:
            where = self._ts_path.text if self._ts_path else "timestamp"
            detail = f"timestamp at {where}: {exc}"
            return self._dead(topic, payload, Reason.INVALID_TIMESTAMP, detail)
        values[self.stream.id_field] = self.device_id(captures)
        return Item(self.stream, payload, topic, values=values, origin=self.name)

    def _document(self, payload: bytes) -> Any:
        if self._scalar:
            try:
                return payload.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise _Dead(f"not UTF-8 text ({exc})") from None
        try:
            return json.loads(payload)  # bytes: no decoding step of our own
        except UnicodeDecodeError as exc:
            raise _Dead(f"not UTF-8 text ({exc})") from None
        except (json.JSONDecodeError, RecursionError) as exc:
            raise _Dead(f"not JSON ({exc})") from None

    def _selected(self, document: Any) -> bool:
        assert self._when is not None
        path, equals = self._when
        try:
            value = path.search(document)
        except jmespath.exceptions.JMESPathError:
            return False
        return value == equals and isinstance(value, bool) == isinstance(equals, bool)

    def _values(self, document: Any) -> dict[str, Any]:
        """The mapped fields present, scaled; absent ones left out."""
        values: dict[str, Any] = {}
        for target, path, factor in self._fields:
            try:
                value = path.search(document)
            except jmespath.exceptions.JMESPathError as exc:  # sum() of a string, say
                raise _Dead(f"{target} at {path.text}: {exc}") from None
            if value is None or (isinstance(value, str) and value.strip() in self._ignore):
                continue
            if factor is None and type(value) in (int, float) and math.isfinite(value):
                values[target] = float(value)  # no unit: nothing to scale
                continue
            try:
                exact = number(value)
            except NotANumber as exc:
                raise _Dead(f"{target} at {path.text}: {exc}") from None
            values[target] = float(exact * factor) if factor is not None else float(exact)
        return values

    def _timestamp(self, document: Any, received_at: datetime) -> datetime:
        fmt = self._ts_format
        if fmt == "receive":
            return received_at
        assert self._ts_path is not None
        value = self._ts_path.search(document)
        if value is None:
            raise ValueError("missing")
        if fmt in ("epoch_s", "epoch_ms"):
            if type(value) is not float and type(value) is not int:
                value = float(number(value))  # a numeric string
            return datetime.fromtimestamp(value / 1000 if fmt == "epoch_ms" else value, UTC)
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a date and time")
        if fmt == "iso":
            return parse_iso8601(value)
        parsed = datetime.fromisoformat(value)  # iso_local: the device's own clock
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=self._zone)

    def _dead(self, topic: str, payload: bytes, reason: Reason, detail: str) -> Item:
        problem = (reason, f"source {self.name}: {detail}")
        return Item(self.stream, payload, topic, problem=problem, origin=self.name)


class Mappings:
    """Every source of the file: their subscriptions, and which one a topic belongs to."""

    def __init__(self, specs: Sequence[SourceSpec]) -> None:
        self.sources = [Mapping(s) for s in specs]
        self._by_topic: dict[str, tuple[Mapping, dict[str, str]] | None] = {}

    def filters(self) -> list[str]:
        return [m.pattern.filter() for m in self.sources]

    def route(self, topic: str) -> tuple[Mapping, dict[str, str]] | None:
        """The source of ``topic`` and its captured levels (at most one: checked at load)."""
        try:
            return self._by_topic[topic]
        except KeyError:
            pass
        found = None
        for mapping in self.sources:
            captures = mapping.pattern.match(topic)
            if captures is not None:
                found = (mapping, captures)
                break
        if len(self._by_topic) >= 200_000:
            self._by_topic.clear()  # only a shortcut: start over
        self._by_topic[topic] = found
        return found
