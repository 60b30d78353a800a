"""Device status (latest state) and vehicle-meter links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from api import queries as q
from api import reports
from api.context import context, device_id, reply
from api.endpoints import Body, Endpoint, PathParam, Reply, bad_request, parse_query
from api.models import (
    Link,
    LinkHistory,
    LinkRequest,
    MeterLinks,
    MeterStatus,
    MeterStatusPage,
    PageQuery,
    VehiclePageQuery,
    VehicleStatus,
    VehicleStatusPage,
)
from api.problems import ProblemError
from api.reports import link_out, meter_status_out, vehicle_status_out
from collector.readings import DEVICE_ID_PATTERN

#: How far ahead of the server's clock a link's startedAt may be (clock skew).
LINK_FUTURE_SKEW = timedelta(seconds=60)


async def get_meter_status(request: Request) -> Response:
    meter = device_id(request, "meterId")
    async with context(request).pool.acquire() as conn:
        row = await q.meter_status(conn, meter)
    if row is None:
        raise ProblemError(404, f"meter {meter!r} has never reported")
    return reply(meter_status_out(row))


async def get_vehicle_status(request: Request) -> Response:
    vehicle = device_id(request, "vehicleId")
    async with context(request).pool.acquire() as conn:
        row = await q.vehicle_status(conn, vehicle)
    if row is None:
        raise ProblemError(404, f"vehicle {vehicle!r} has never reported")
    return reply(vehicle_status_out(row))


async def list_meters(request: Request) -> Response:
    query = parse_query(request, PageQuery)
    async with context(request).pool.acquire() as conn:
        rows = await q.meter_status_page(
            conn, after=query.cursor, limit=query.limit, silent_minutes=query.silentForMinutes
        )
    items = [meter_status_out(r) for r in rows]
    next_cursor = items[-1].meterId if len(items) == query.limit else None
    return reply(MeterStatusPage(items=items, limit=query.limit, nextCursor=next_cursor))


async def list_vehicles(request: Request) -> Response:
    query = parse_query(request, VehiclePageQuery)
    async with context(request).pool.acquire() as conn:
        rows = await q.vehicle_status_page(
            conn,
            after=query.cursor,
            limit=query.limit,
            silent_minutes=query.silentForMinutes,
            soc_below=query.socBelow,
        )
    items = [vehicle_status_out(r) for r in rows]
    next_cursor = items[-1].vehicleId if len(items) == query.limit else None
    return reply(VehicleStatusPage(items=items, limit=query.limit, nextCursor=next_cursor))


async def put_link(request: Request) -> Response:
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
    async with context(request).pool.acquire() as conn:
        try:
            row, created = await q.put_link(conn, link.vehicleId, link.meterId, started)
        except q.LinkConflict as exc:
            raise ProblemError(409, str(exc)) from None
    return reply(link_out(row), status=201 if created else 200)


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
        row = await q.end_link(conn, vehicle)
    if row is None:
        raise ProblemError(404, f"vehicle {vehicle!r} is not linked to a meter")
    return reply(link_out(row))


ID_SCHEMA = {"type": "string", "pattern": DEVICE_ID_PATTERN, "maxLength": 64}
METER_ID = PathParam("meterId", "a meter id, as in the payloads", ID_SCHEMA)
VEHICLE_ID = PathParam("vehicleId", "a vehicle id, as in the payloads", ID_SCHEMA)
BAD_REQUEST = {400: Reply("invalid parameter")}
UNAUTHORIZED = {401: Reply("a token is required or not valid"), 403: Reply("token not allowed")}

ENDPOINTS = [
    Endpoint(
        "GET",
        "/v1/status/meter/{meterId}",
        get_meter_status,
        "Latest state of a meter",
        "status",
        "read",
        {
            200: Reply("latest state", MeterStatus),
            **BAD_REQUEST,
            404: Reply("the meter never reported"),
            **UNAUTHORIZED,
        },
        path_params=(METER_ID,),
    ),
    Endpoint(
        "GET",
        "/v1/status/vehicle/{vehicleId}",
        get_vehicle_status,
        "Latest state of a vehicle",
        "status",
        "read",
        {
            200: Reply("latest state", VehicleStatus),
            **BAD_REQUEST,
            404: Reply("the vehicle never reported"),
            **UNAUTHORIZED,
        },
        path_params=(VEHICLE_ID,),
    ),
    Endpoint(
        "GET",
        "/v1/status/meters",
        list_meters,
        "Meters, by id, a page at a time",
        "status",
        "read",
        {200: Reply("one page", MeterStatusPage), **BAD_REQUEST, **UNAUTHORIZED},
        query=PageQuery,
    ),
    Endpoint(
        "GET",
        "/v1/status/vehicles",
        list_vehicles,
        "Vehicles, by id, a page at a time",
        "status",
        "read",
        {200: Reply("one page", VehicleStatusPage), **BAD_REQUEST, **UNAUTHORIZED},
        query=VehiclePageQuery,
    ),
    Endpoint(
        "PUT",
        "/v1/links",
        put_link,
        "Link a vehicle to the meter of its charger",
        "links",
        "ingest",
        {
            200: Reply("already linked so: unchanged", Link),
            201: Reply("linked (the vehicle's and the meter's previous links ended)", Link),
            **BAD_REQUEST,
            409: Reply("startedAt would rewrite link history"),
            422: Reply("startedAt is in the future"),
            413: Reply("body too large"),
            **UNAUTHORIZED,
        },
        description="Ends the vehicle's open link and the meter's open link to another "
        "vehicle at startedAt (default: now), then opens the new link. Link history "
        "only moves forward.",
        body=Body({"application/json": LinkRequest}),
    ),
    Endpoint(
        "GET",
        "/v1/links/{vehicleId}",
        get_links,
        "A vehicle's current and past links",
        "links",
        "read",
        {
            200: Reply("links, newest first", LinkHistory),
            **BAD_REQUEST,
            404: Reply("unknown vehicle"),
            **UNAUTHORIZED,
        },
        path_params=(VEHICLE_ID,),
    ),
    Endpoint(
        "GET",
        "/v1/links/meter/{meterId}",
        get_meter_links,
        "A meter's current and past links: the vehicles it charged",
        "links",
        "read",
        {
            200: Reply("links, newest first", MeterLinks),
            **BAD_REQUEST,
            404: Reply("unknown meter"),
            **UNAUTHORIZED,
        },
        path_params=(METER_ID,),
    ),
    Endpoint(
        "DELETE",
        "/v1/links/{vehicleId}",
        delete_link,
        "Unlink a vehicle now",
        "links",
        "ingest",
        {
            200: Reply("the link, now ended", Link),
            **BAD_REQUEST,
            404: Reply("the vehicle is not linked"),
            **UNAUTHORIZED,
        },
        path_params=(VEHICLE_ID,),
    ),
]
