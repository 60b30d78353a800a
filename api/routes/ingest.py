"""HTTP ingest: one reading, a JSON array, or NDJSON, through the same writer as MQTT.

The response comes after the commit: 200 when every item was accepted, 207 when some were
rejected (each with its index and reason, the first 100 listed; they are in
rejected_messages too), 422 when none was accepted, 413 for a body over MAX_BODY_BYTES or
over MAX_ITEMS_PER_REQUEST readings, 415 without a JSON or NDJSON media type.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.context import context, reply
from api.endpoints import Body, Endpoint, Reply
from api.models import IngestResponse, RejectedItem
from api.problems import ProblemError
from api.routes.common import json_media_type
from collector.ingest.http_source import IngestUnavailable, Item
from collector.ingest.readings import MODELS, Kind, Reason, kind_of

NDJSON_TYPES = {
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "application/jsonlines",
}
JSON_TYPES = {"application/json", "text/json"}
#: At most this many rejections are listed in an answer (``rejectedCount`` has them all).
REJECTIONS_LISTED = 100
_TOO_DEEP = (Reason.INVALID_JSON, "nested too deeply (more than about 900 levels)")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes without reading it all, and
    (408) a body that does not arrive within ``timeout_s``."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ProblemError(413, f"the body is {int(length)} bytes; the limit is {limit}")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ProblemError(413, f"the body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ProblemError(
            408, f"the body did not arrive within {timeout_s:g} s (HTTP_BODY_TIMEOUT_S)"
        ) from None
    return b"".join(chunks)


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


def parse_items(body: bytes, media_type: str, forced: Kind | None, limit: int) -> list[Item]:
    """Split a body into items; what cannot be an item becomes a rejected one.

    More than ``limit`` items: 413, before any is validated, so a request cannot multiply
    into more dead letters, memory or answer than that.
    """
    if forced is not None and media_type in JSON_TYPES and body.lstrip()[:1] == b"{":
        # One reading to a kind's own endpoint: the validator parses it once, from the
        # bytes, duplicate fields and bad JSON included (json.loads here too would parse
        # it twice: a sixth of a single-reading request, bench/http.py).
        return [Item(body, forced)]
    if media_type in NDJSON_TYPES:
        lines = [line for line in body.splitlines() if line.strip()]
        _check_count(len(lines), limit)
        items = []
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError as exc:
                items.append(Item(line, None, (Reason.INVALID_JSON, f"invalid JSON: {exc}")))
                continue
            except RecursionError:
                items.append(Item(line, None, _TOO_DEEP))
                continue
            items.append(_item(line, obj, forced))
        return items
    try:
        doc = json.loads(body, object_pairs_hook=_object)
    except ValueError as exc:
        return [Item(body, None, (Reason.INVALID_JSON, f"the body is not JSON: {exc}"))]
    except RecursionError:
        return [Item(body[:4096], None, _TOO_DEEP)]
    if isinstance(doc, list):
        _check_count(len(doc), limit)
        items = []
        for obj in doc:
            try:
                raw = json.dumps(obj).encode()
            except RecursionError:
                items.append(Item(b"", None, _TOO_DEEP))
                continue
            items.append(_item(raw, obj, forced))
        return items
    return [_item(body, doc, forced)]


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise ProblemError(
            413,
            f"the body holds {count} readings; at most {limit} per request "
            "(MAX_ITEMS_PER_REQUEST, and never more than BUFFER_CAPACITY)",
        )


def _item(raw: bytes, obj: Any, forced: Kind | None) -> Item:
    if not isinstance(obj, dict):
        return Item(raw, None, (Reason.INVALID_SHAPE, "each reading must be a JSON object"))
    kind = kind_of(obj, forced)
    if kind is None:
        return Item(
            raw,
            None,
            (Reason.UNKNOWN_KIND, "an object with either meterId or vehicleId is expected"),
        )
    twice = getattr(obj, "twice", None)
    if twice is not None and twice in MODELS[kind].model_fields:
        detail = f"the field {twice!r} appears more than once; which value is meant is ambiguous"
        return Item(raw, None, (Reason.DUPLICATE_FIELD, detail))
    return Item(raw, kind)


async def _ingest(request: Request, forced: Kind | None) -> Response:
    ctx = context(request)
    if ctx.ingest is None:
        raise ProblemError(
            503,
            "this instance only serves reads (energy-collector api); "
            "send readings to a collector (energy-collector run)",
        )
    media_type = json_media_type(request, JSON_TYPES | NDJSON_TYPES)
    settings = ctx.settings
    try:
        slot = await ctx.ingest.slot()  # the body is read and parsed in turn
        try:
            body = await read_body(request, settings.max_body_bytes, settings.http_body_timeout_s)
            limit = min(settings.ingest_items_limit, ctx.ingest.max_items)
            items = parse_items(body, media_type, forced, limit)
            del body
            if not items:
                raise ProblemError(400, "the body holds no readings")
            result = await ctx.ingest.submit(
                items, source=f"http:{request.url.path}", queued=slot.release
            )
        finally:
            slot.release()
    except IngestUnavailable as exc:
        raise ProblemError(503, str(exc), headers={"Retry-After": "5"}) from None
    rejected = [
        RejectedItem(index=i, reason=r.value, detail=d)
        for i, r, d in result.rejected[:REJECTIONS_LISTED]
    ]
    out = IngestResponse(
        accepted=result.accepted, rejectedCount=len(result.rejected), rejected=rejected
    )
    if result.accepted == 0:
        raise ProblemError(
            422, f"none of the {len(items)} readings was accepted", **out.model_dump(mode="json")
        )
    return reply(out, status=207 if rejected else 200)


async def ingest(request: Request) -> Response:
    return await _ingest(request, None)


async def ingest_meter(request: Request) -> Response:
    return await _ingest(request, Kind.METER)


async def ingest_vehicle(request: Request) -> Response:
    return await _ingest(request, Kind.VEHICLE)


def _reading_schema(kind: Kind | None) -> dict[str, Any]:
    meter: dict[str, Any] = {"$ref": "#/components/schemas/MeterReading"}
    vehicle: dict[str, Any] = {"$ref": "#/components/schemas/VehicleReading"}
    one = {Kind.METER: meter, Kind.VEHICLE: vehicle, None: {"anyOf": [meter, vehicle]}}[kind]
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]}


def _responses() -> dict[int, Reply]:
    return {
        200: Reply("every reading accepted and committed", IngestResponse),
        207: Reply("some readings rejected (each with its index and reason)", IngestResponse),
        400: Reply("no readings in the body"),
        401: Reply("a token is required or not valid"),
        403: Reply("token not allowed"),
        413: Reply("body over MAX_BODY_BYTES"),
        415: Reply("not JSON or NDJSON"),
        422: Reply("no reading accepted; `rejected` lists why"),
        503: Reply(
            "not stored now (stopping, busy, database down, or a read-only "
            "instance); retrying is safe",
            headers={"Retry-After": "seconds"},
        ),
    }


def _body(kind: Kind | None) -> Body:
    return Body(
        {
            "application/json": _reading_schema(kind),
            # NDJSON: the same readings, one JSON object per line.
            "application/x-ndjson": {
                "type": "array",
                "items": _reading_schema(kind)["anyOf"][0],
                "minItems": 1,
                "description": "one reading per line",
            },
        },
        description="One reading, a JSON array of readings, or NDJSON (one per line).",
    )


ENDPOINTS = [
    Endpoint(
        method="POST",
        path="/v1/ingest",
        handler=ingest,
        summary="Ingest meter and/or vehicle readings",
        tag="ingest",
        role="ingest",
        responses=_responses(),
        body=_body(None),
        description="Each item is told apart by meterId / vehicleId. "
        + __doc__.split("\n\n")[1].replace("\n", " "),
    ),
    Endpoint(
        method="POST",
        path="/v1/ingest/meter",
        handler=ingest_meter,
        summary="Ingest meter readings",
        tag="ingest",
        role="ingest",
        responses=_responses(),
        body=_body(Kind.METER),
    ),
    Endpoint(
        method="POST",
        path="/v1/ingest/vehicle",
        handler=ingest_vehicle,
        summary="Ingest vehicle readings",
        tag="ingest",
        role="ingest",
        responses=_responses(),
        body=_body(Kind.VEHICLE),
    ),
]
