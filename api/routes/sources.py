"""The payload mappings of SOURCES_FILE: what they subscribe to and have taken, and a dry
run of one message (nothing is stored) to check a mapping before devices are switched."""

from __future__ import annotations

import json

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from api.context import context, reply
from api.endpoints import Body, Endpoint, Reply, bad_request
from api.models import Sources, SourceTestRequest, SourceTestResult
from api.problems import ProblemError
from api.routes.common import BAD_REQUEST, UNAUTHORIZED, json_media_type
from collector.sources.mappings.preview import SourcesDesk

#: A test message's body: the largest payload plus room for the topic and the envelope.
_ENVELOPE_BYTES = 70_000


def _desk(request: Request) -> SourcesDesk:
    desk = context(request).sources
    if desk is None:
        raise ProblemError(503, "this process has no sources to show")
    return desk


async def list_sources(request: Request) -> Response:
    return reply(Sources.model_validate(_desk(request).describe()))


async def test_source(request: Request) -> Response:
    desk = _desk(request)
    json_media_type(request, {"application/json"})
    limit = context(request).settings.max_payload_bytes + _ENVELOPE_BYTES
    body = await request.body()
    if len(body) > limit:
        raise ProblemError(413, f"the body is over {limit} bytes")
    try:
        asked = SourceTestRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc, "body") from None
    payload = asked.payload
    raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    result = desk.test(asked.topic, raw, retained=asked.retained)
    return reply(SourceTestResult.model_validate(result))


ENDPOINTS = [
    Endpoint(
        method="GET",
        path="/v1/sources",
        handler=list_sources,
        summary="The payload mappings (SOURCES_FILE) and what each has taken",
        tag="sources",
        role="read",
        responses={200: Reply("the sources", Sources), **UNAUTHORIZED},
    ),
    Endpoint(
        method="POST",
        path="/v1/sources/test",
        handler=test_source,
        summary="What one message would become (nothing is stored)",
        tag="sources",
        role="ingest",
        responses={
            200: Reply("the readings it would store, or why it would not", SourceTestResult),
            **BAD_REQUEST,
            413: Reply("body too large"),
            415: Reply("not application/json"),
            **UNAUTHORIZED,
        },
        body=Body({"application/json": SourceTestRequest}),
        description="The message goes through the source its topic belongs to (or the "
        "native contract) and the stream's validation, exactly as a received one; the write "
        "token is required because a payload may hold a device's data.",
    ),
]
