"""Vehicle-meter links: which vehicle is on the charger of which meter, and since when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from api.context import context, device_id, reply
from api.endpoints import Body, Endpoint, Reply, bad_request
from api.models import Link, LinkHistory, LinkRequest, MeterLinks
from api.problems import ProblemError
from api.reports import links as reports
from api.routes.common import BAD_REQUEST, METER_ID, UNAUTHORIZED, VEHICLE_ID, json_media_type
from collector.ingest.readings import EARLIEST_TIMESTAMP

#: How far ahead of the server's clock a link's startedAt may be (clock skew).
LINK_FUTURE_SKEW = timedelta(seconds=60)


async def put_link(request: Request) -> Response:
    json_media_type(request, {"application/json"})
    body = await request.body()
    if len(body) > 4096:
        raise ProblemError(413, "a link request is a small JSON object (at most 4096 bytes)")
    try:
        link = LinkRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc, "body") from None
    now = datetime.now(UTC)
    started = link.startedAt or now
    if started > now + LINK_FUTURE_SKEW:
        raise ProblemError(422, "startedAt is in the future; a link starts now or earlier")
    if started < EARLIEST_TIMESTAMP:
        raise ProblemError(
            422, f"startedAt is before {EARLIEST_TIMESTAMP.date()}, as no reading can be"
        )
    async with context(request).pool.acquire() as conn:
        out, created = await reports.put_link(conn, link.vehicleId, link.meterId, started)
    return reply(out, status=201 if created else 200)


async def get_links(request: Request) -> Response:
    vehicle = device_id(request, "vehicleId")
    async with context(request).pool.acquire() as conn:
        return reply(await reports.links(conn, vehicle))


async def get_meter_links(request: Request) -> Response:
    meter = device_id(request, "meterId")
    async with context(request).pool.acquire() as conn:
        return reply(await reports.meter_links(conn, meter))


async def delete_link(request: Request) -> Response:
    vehicle = device_id(request, "vehicleId")
    async with context(request).pool.acquire() as conn:
        return reply(await reports.end_link(conn, vehicle))


ENDPOINTS = [
    Endpoint(
        method="PUT",
        path="/v1/links",
        handler=put_link,
        summary="Link a vehicle to the meter of its charger",
        tag="links",
        role="ingest",
        responses={
            200: Reply("already linked so: unchanged", Link),
            201: Reply("linked (the vehicle's and the meter's previous links ended)", Link),
            **BAD_REQUEST,
            409: Reply("startedAt would rewrite link history"),
            422: Reply("startedAt is in the future, or before 2000"),
            413: Reply("body too large"),
            415: Reply("not application/json"),
            **UNAUTHORIZED,
        },
        description="Ends the vehicle's open link and the meter's open link to another "
        "vehicle at startedAt (default: now), then opens the new link. Link history "
        "only moves forward.",
        body=Body({"application/json": LinkRequest}),
    ),
    Endpoint(
        method="GET",
        path="/v1/links/{vehicleId}",
        handler=get_links,
        summary="A vehicle's current and past links",
        tag="links",
        role="read",
        responses={
            200: Reply("links, newest first", LinkHistory),
            **BAD_REQUEST,
            404: Reply("unknown vehicle"),
            **UNAUTHORIZED,
        },
        path_params=(VEHICLE_ID,),
    ),
    Endpoint(
        method="GET",
        path="/v1/links/meter/{meterId}",
        handler=get_meter_links,
        summary="A meter's current and past links: the vehicles it charged",
        tag="links",
        role="read",
        responses={
            200: Reply("links, newest first", MeterLinks),
            **BAD_REQUEST,
            404: Reply("unknown meter"),
            **UNAUTHORIZED,
        },
        path_params=(METER_ID,),
    ),
    Endpoint(
        method="DELETE",
        path="/v1/links/{vehicleId}",
        handler=delete_link,
        summary="Unlink a vehicle now",
        tag="links",
        role="ingest",
        responses={
            200: Reply("the link, now ended", Link),
            **BAD_REQUEST,
            404: Reply("the vehicle is not linked"),
            **UNAUTHORIZED,
        },
        path_params=(VEHICLE_ID,),
    ),
]
