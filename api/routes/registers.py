"""Register replacements: an operator records that a device's meter (or telematics unit) was
replaced, so its readings are booked as one continuous history (docs/registers.md)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from api.context import context, device_id, reply
from api.endpoints import Body, Endpoint, Reply, bad_request
from api.models import Replacement, ReplacementRequest, Replacements
from api.problems import ProblemError
from api.reports import registers as reports
from api.routes.common import (
    BAD_REQUEST,
    DEVICE_ID,
    KIND,
    UNAUTHORIZED,
    device_kind,
    json_media_type,
)
from api.routes.links import LINK_FUTURE_SKEW
from collector.ingest.readings import EARLIEST_TIMESTAMP


async def get_replacements(request: Request) -> Response:
    kind, device = device_kind(request), device_id(request, "deviceId")
    async with context(request).pool.acquire() as conn:
        return reply(await reports.replacements(conn, kind, device))


async def post_replacement(request: Request) -> Response:
    kind, device = device_kind(request), device_id(request, "deviceId")
    json_media_type(request, {"application/json"})
    body = await request.body()
    if len(body) > 4096:
        raise ProblemError(413, "a replacement is a small JSON object (at most 4096 bytes)")
    try:
        replacement = ReplacementRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc, "body") from None
    if replacement.at > datetime.now(UTC) + LINK_FUTURE_SKEW:
        raise ProblemError(422, "at is in the future; record a replacement once it happened")
    if replacement.at < EARLIEST_TIMESTAMP:
        raise ProblemError(422, f"at is before {EARLIEST_TIMESTAMP.date()}, as no reading can be")
    async with context(request).pool.acquire() as conn:
        out, created = await reports.add_replacement(
            conn,
            kind,
            device,
            at=replacement.at,
            final_kwh=replacement.finalKwh,
            start_kwh=replacement.startKwh,
        )
    return reply(out, status=201 if created else 200)


PATH = "/v1/registers/{kind}/{deviceId}/replacements"
ENDPOINTS = [
    Endpoint(
        method="POST",
        path=PATH,
        handler=post_replacement,
        summary="Record that a device's register was replaced",
        tag="registers",
        role="ingest",
        responses={
            201: Reply("recorded; the readings around it are booked again", Replacement),
            200: Reply("recorded already, with these values", Replacement),
            **BAD_REQUEST,
            409: Reply("a replacement at that time is recorded with other values"),
            413: Reply("body too large"),
            415: Reply("not application/json"),
            422: Reply("at is in the future or before 2000"),
            **UNAUTHORIZED,
        },
        description="The readings after `at` come from the new register. The old register's "
        "tail up to `finalKwh` (when known) and the new one's increments from `startKwh` (when "
        "known; else its first reading is a baseline) are booked as one continuous history, "
        "never as a reset. May be recorded before or after the new register's readings "
        "arrive: the collector books them again within about a second.",
        path_params=(KIND, DEVICE_ID),
        body=Body({"application/json": ReplacementRequest}),
    ),
    Endpoint(
        method="GET",
        path=PATH,
        handler=get_replacements,
        summary="A device's recorded register replacements",
        tag="registers",
        role="read",
        responses={200: Reply("newest first", Replacements), **BAD_REQUEST, **UNAUTHORIZED},
        path_params=(KIND, DEVICE_ID),
    ),
]
