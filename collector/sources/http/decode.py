"""HTTP bodies into items: one reading, a JSON array of readings, or NDJSON.

Each object's stream is told by its id field (``meterId``, ``vehicleId``) unless the
endpoint names it (``/v1/ingest/meter``). What cannot be a reading (a line that is not JSON,
an array element that is no object, an object of no stream) becomes an item with its
problem, so it is dead-lettered and reported with its index like any other rejection.
"""

from __future__ import annotations

import json
from typing import Any

from collector.ingest.readings import Reason
from collector.ingest.sink import Item
from collector.ingest.streams import STREAMS, Stream, of_object

_ID_FIELDS = " or ".join(s.id_field for s in STREAMS.values())
_UNKNOWN = (Reason.UNKNOWN_KIND, f"an object with either {_ID_FIELDS} is expected")
_TOO_DEEP = (Reason.INVALID_JSON, "nested too deeply (more than about 900 levels)")


class TooManyItems(Exception):
    """The body holds more readings than one request may carry; the message says how many."""


class _Object(dict[str, Any]):
    """A JSON object as parsed, remembering a key it held more than once (``json.loads``
    keeps the last value of a repeated key: ``{"meterId":"evil","meterId":"m-1"}``)."""

    __slots__ = ("twice",)
    twice: str | None


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.twice = None
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                obj.twice = key
                break
            seen.add(key)
    return obj


def parse_items(
    body: bytes, *, ndjson: bool, forced: Stream | None, limit: int, source: str
) -> list[Item]:
    """Split a body into items; what cannot be an item becomes a rejected one.

    More than ``limit`` items: ``TooManyItems``, before any is validated, so a request cannot
    multiply into more dead letters, memory or answer than that.
    """
    if forced is not None and not ndjson and body.lstrip()[:1] == b"{":
        # One reading to a stream's own endpoint: the validator parses it once, from the
        # bytes, duplicate fields and bad JSON included (json.loads here too would parse
        # it twice: a sixth of a single-reading request, bench/http.py).
        return [Item(forced, body, source)]
    if ndjson:
        lines = [line for line in body.splitlines() if line.strip()]
        _check_count(len(lines), limit)
        items = []
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError as exc:
                problem = (Reason.INVALID_JSON, f"invalid JSON: {exc}")
                items.append(Item(None, line, source, problem=problem))
                continue
            except RecursionError:
                items.append(Item(None, line, source, problem=_TOO_DEEP))
                continue
            items.append(_item(line, obj, forced, source))
        return items
    try:
        doc = json.loads(body, object_pairs_hook=_object)
    except ValueError as exc:
        problem = (Reason.INVALID_JSON, f"the body is not JSON: {exc}")
        return [Item(None, body, source, problem=problem)]
    except RecursionError:
        return [Item(None, body[:4096], source, problem=_TOO_DEEP)]
    if isinstance(doc, list):
        _check_count(len(doc), limit)
        items = []
        for obj in doc:
            try:
                raw = json.dumps(obj).encode()
            except RecursionError:
                items.append(Item(None, b"", source, problem=_TOO_DEEP))
                continue
            items.append(_item(raw, obj, forced, source))
        return items
    return [_item(body, doc, forced, source)]


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise TooManyItems(
            f"the body holds {count} readings; at most {limit} per request "
            "(MAX_ITEMS_PER_REQUEST, and never more than BUFFER_CAPACITY)"
        )


def _item(raw: bytes, obj: Any, forced: Stream | None, source: str) -> Item:
    if not isinstance(obj, dict):
        problem = (Reason.INVALID_SHAPE, "each reading must be a JSON object")
        return Item(None, raw, source, problem=problem)
    stream = forced or of_object(obj)
    if stream is None:
        return Item(None, raw, source, problem=_UNKNOWN)
    twice = getattr(obj, "twice", None)
    if twice is not None and twice in stream.payload_fields:
        detail = f"the field {twice!r} appears more than once; which value is meant is ambiguous"
        return Item(None, raw, source, problem=(Reason.DUPLICATE_FIELD, detail))
    return Item(stream, raw, source)
