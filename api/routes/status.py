"""Device status: the latest state of one device, or of all, a page at a time."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.context import context, device_id, reply
from api.endpoints import Endpoint, Reply, parse_query
from api.models import (
    MeterStatus,
    MeterStatusPage,
    PageQuery,
    VehiclePageQuery,
    VehicleStatus,
    VehicleStatusPage,
)
from api.reports import status as reports
from api.routes.common import BAD_REQUEST, METER_ID, UNAUTHORIZED, VEHICLE_ID


async def get_meter_status(request: Request) -> Response:
    meter = device_id(request, "meterId")
    async with context(request).pool.acquire() as conn:
        return reply(await reports.meter_status(conn, meter))


async def get_vehicle_status(request: Request) -> Response:
    vehicle = device_id(request, "vehicleId")
    async with context(request).pool.acquire() as conn:
        return reply(await reports.vehicle_status(conn, vehicle))


async def list_meters(request: Request) -> Response:
    query = parse_query(request, PageQuery)
    async with context(request).pool.acquire() as conn:
        page = await reports.meter_page(
            conn, after=query.cursor, limit=query.limit, silent_minutes=query.silentForMinutes
        )
    return reply(page)


async def list_vehicles(request: Request) -> Response:
    query = parse_query(request, VehiclePageQuery)
    async with context(request).pool.acquire() as conn:
        page = await reports.vehicle_page(
            conn,
            after=query.cursor,
            limit=query.limit,
            silent_minutes=query.silentForMinutes,
            soc_below=query.socBelow,
        )
    return reply(page)


ENDPOINTS = [
    Endpoint(
        method="GET",
        path="/v1/status/meter/{meterId}",
        handler=get_meter_status,
        summary="Latest state of a meter",
        tag="status",
        role="read",
        responses={
            200: Reply("latest state", MeterStatus),
            **BAD_REQUEST,
            404: Reply("the meter never reported"),
            **UNAUTHORIZED,
        },
        path_params=(METER_ID,),
    ),
    Endpoint(
        method="GET",
        path="/v1/status/vehicle/{vehicleId}",
        handler=get_vehicle_status,
        summary="Latest state of a vehicle",
        tag="status",
        role="read",
        responses={
            200: Reply("latest state", VehicleStatus),
            **BAD_REQUEST,
            404: Reply("the vehicle never reported"),
            **UNAUTHORIZED,
        },
        path_params=(VEHICLE_ID,),
    ),
    Endpoint(
        method="GET",
        path="/v1/status/meters",
        handler=list_meters,
        summary="Meters, by id, a page at a time",
        tag="status",
        role="read",
        responses={200: Reply("one page", MeterStatusPage), **BAD_REQUEST, **UNAUTHORIZED},
        query=PageQuery,
    ),
    Endpoint(
        method="GET",
        path="/v1/status/vehicles",
        handler=list_vehicles,
        summary="Vehicles, by id, a page at a time",
        tag="status",
        role="read",
        responses={200: Reply("one page", VehicleStatusPage), **BAD_REQUEST, **UNAUTHORIZED},
        query=VehiclePageQuery,
    ),
]
