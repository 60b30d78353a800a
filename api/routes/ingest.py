"""HTTP ingest: one reading, a JSON array, or NDJSON, through the same writer as MQTT.

The response comes after the commit: 200 when every item was accepted, 207 when some were
rejected (each with its index and reason, the first 100 listed; they are in
rejected_messages too), 422 when none was accepted, 413 for a body over MAX_BODY_BYTES or
over MAX_ITEMS_PER_REQUEST readings, 415 without a JSON or NDJSON media type.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.context import context, reply
from api.endpoints import Body, Endpoint, Reply
from api.models import IngestResponse, RejectedItem
from api.problems import ProblemError
from api.routes.common import json_media_type
from collector.ingest.streams import METER, VEHICLE, Stream
from collector.sources.http.decode import TooManyItems, parse_items
from collector.sources.http.source import IngestUnavailable

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


async def _ingest(request: Request, forced: Stream | None) -> Response:
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
            try:
                items = parse_items(
                    body,
                    ndjson=media_type in NDJSON_TYPES,
                    forced=forced,
                    limit=limit,
                    source=f"http:{request.url.path}",
                )
            except TooManyItems as exc:
                raise ProblemError(413, str(exc)) from None
            del body
            if not items:
                raise ProblemError(400, "the body holds no readings")
            result = await ctx.ingest.submit(items, queued=slot.release)
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
    return await _ingest(request, METER)


async def ingest_vehicle(request: Request) -> Response:
    return await _ingest(request, VEHICLE)


def _reading_schema(stream: Stream | None) -> dict[str, Any]:
    def ref(s: Stream) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{s.model.__name__}"}

    one = ref(stream) if stream else {"anyOf": [ref(METER), ref(VEHICLE)]}
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


def _body(stream: Stream | None) -> Body:
    return Body(
        {
            "application/json": _reading_schema(stream),
            # NDJSON: the same readings, one JSON object per line.
            "application/x-ndjson": {
                "type": "array",
                "items": _reading_schema(stream)["anyOf"][0],
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
        body=_body(METER),
    ),
    Endpoint(
        method="POST",
        path="/v1/ingest/vehicle",
        handler=ingest_vehicle,
        summary="Ingest vehicle readings",
        tag="ingest",
        role="ingest",
        responses=_responses(),
        body=_body(VEHICLE),
    ),
]
