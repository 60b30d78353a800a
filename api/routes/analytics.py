"""Window analytics: charging performance, per-device stats, fleet summary, series."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.context import context, device_id, reply
from api.endpoints import Endpoint, Reply, parse_query
from api.models import (
    FleetSummary,
    MeterAnalytics,
    MeterSeries,
    Performance,
    Series,
    SeriesQuery,
    VehicleAnalytics,
    WindowQuery,
)
from api.policy import MAX_POINTS, resolve_window
from api.reports import analytics as reports
from api.routes.common import (
    BAD_REQUEST,
    METER_ID,
    UNAUTHORIZED,
    UNPROCESSABLE,
    VEHICLE_ID,
    WINDOW_NOTE,
    window,
)


async def get_performance(request: Request) -> Response:
    ctx = context(request)
    vehicle = device_id(request, "vehicleId")
    start, end = window(request)
    async with ctx.pool.acquire() as conn:
        return reply(await reports.performance(conn, ctx.settings, vehicle, start, end))


async def get_meter_analytics(request: Request) -> Response:
    meter = device_id(request, "meterId")
    start, end = window(request)
    async with context(request).pool.acquire() as conn:
        return reply(await reports.meter_analytics(conn, meter, start, end))


async def get_vehicle_analytics(request: Request) -> Response:
    vehicle = device_id(request, "vehicleId")
    start, end = window(request)
    async with context(request).pool.acquire() as conn:
        return reply(await reports.vehicle_analytics(conn, vehicle, start, end))


async def get_series(request: Request) -> Response:
    ctx = context(request)
    vehicle = device_id(request, "vehicleId")
    query = parse_query(request, SeriesQuery)
    start, end = resolve_window(query.from_, query.to)
    async with ctx.pool.acquire() as conn:
        return reply(
            await reports.series(conn, ctx.settings, vehicle, start, end, bucket=query.bucket)
        )


async def get_meter_series(request: Request) -> Response:
    meter = device_id(request, "meterId")
    query = parse_query(request, SeriesQuery)
    start, end = resolve_window(query.from_, query.to)
    async with context(request).pool.acquire() as conn:
        return reply(await reports.meter_series(conn, meter, start, end, query.bucket))


async def get_fleet(request: Request) -> Response:
    """The last 24 h from the shared fleet view (``asOf`` at most FLEET_MAX_AGE_S ago);
    a window given by ``from``/``to`` is computed for the request."""
    ctx = context(request)
    query = parse_query(request, WindowQuery)
    if query.from_ is None and query.to is None:
        return reply((await ctx.fleet.get()).report.summary)
    start, end = resolve_window(query.from_, query.to)
    async with ctx.pool.acquire() as conn:
        report = await reports.fleet(conn, ctx.settings, start, end)
    return reply(report.summary)


ENDPOINTS = [
    Endpoint(
        method="GET",
        path="/v1/analytics/performance/{vehicleId}",
        handler=get_performance,
        summary="Charging performance of a vehicle: AC in vs DC out",
        tag="analytics",
        role="read",
        responses={
            200: Reply("performance over the window", Performance),
            **BAD_REQUEST,
            **UNPROCESSABLE,
            404: Reply("unknown vehicle"),
            **UNAUTHORIZED,
        },
        description="AC is the energy drawn by the meters the vehicle was linked to, "
        "while it was linked (each meter reading counts for the vehicle linked at its "
        "time); DC is the energy delivered into the battery over the same spans. "
        "efficiencyRatio = DC/AC; status: normal (EFFICIENCY_LOW to EFFICIENCY_MAX, "
        "default 0.85-1.0), low_efficiency (below), anomaly (DC above AC), "
        "insufficient_data (no readings of one of the two streams). " + WINDOW_NOTE,
        path_params=(VEHICLE_ID,),
        query=WindowQuery,
    ),
    Endpoint(
        method="GET",
        path="/v1/analytics/meter/{meterId}",
        handler=get_meter_analytics,
        summary="Window statistics of a meter, beside its current state",
        tag="analytics",
        role="read",
        responses={
            200: Reply("statistics", MeterAnalytics),
            **BAD_REQUEST,
            **UNPROCESSABLE,
            404: Reply("unknown meter"),
            **UNAUTHORIZED,
        },
        description=WINDOW_NOTE,
        path_params=(METER_ID,),
        query=WindowQuery,
    ),
    Endpoint(
        method="GET",
        path="/v1/analytics/vehicle/{vehicleId}",
        handler=get_vehicle_analytics,
        summary="Window statistics of a vehicle, beside its current state",
        tag="analytics",
        role="read",
        responses={
            200: Reply("statistics", VehicleAnalytics),
            **BAD_REQUEST,
            **UNPROCESSABLE,
            404: Reply("unknown vehicle"),
            **UNAUTHORIZED,
        },
        description=WINDOW_NOTE,
        path_params=(VEHICLE_ID,),
        query=WindowQuery,
    ),
    Endpoint(
        method="GET",
        path="/v1/analytics/vehicle/{vehicleId}/series",
        handler=get_series,
        summary="Time-bucketed AC, DC, efficiency, SoC and temperature of a vehicle",
        tag="analytics",
        role="read",
        responses={
            200: Reply("one point per bucket, empty buckets included", Series),
            **BAD_REQUEST,
            **UNPROCESSABLE,
            404: Reply("unknown vehicle"),
            **UNAUTHORIZED,
        },
        description=f"At most {MAX_POINTS} buckets. " + WINDOW_NOTE,
        path_params=(VEHICLE_ID,),
        query=SeriesQuery,
    ),
    Endpoint(
        method="GET",
        path="/v1/analytics/meter/{meterId}/series",
        handler=get_meter_series,
        summary="Time-bucketed AC energy and voltage of a meter",
        tag="analytics",
        role="read",
        responses={
            200: Reply("one point per bucket, empty buckets included", MeterSeries),
            **BAD_REQUEST,
            **UNPROCESSABLE,
            404: Reply("unknown meter"),
            **UNAUTHORIZED,
        },
        description=f"At most {MAX_POINTS} buckets. " + WINDOW_NOTE,
        path_params=(METER_ID,),
        query=SeriesQuery,
    ),
    Endpoint(
        method="GET",
        path="/v1/analytics/fleet",
        handler=get_fleet,
        summary="Fleet summary",
        tag="analytics",
        role="read",
        responses={
            200: Reply("summary", FleetSummary),
            **BAD_REQUEST,
            **UNPROCESSABLE,
            **UNAUTHORIZED,
        },
        description="Totals, devices reporting, overall efficiency and the vehicles "
        "outside the normal band. " + WINDOW_NOTE + " The last 24 h are computed once for "
        "every client and kept for at most FLEET_MAX_AGE_S: `asOf` (= `windowEnd`) says "
        "when the figures are of. A window with `from` or `to` is computed for the request.",
        query=WindowQuery,
    ),
]
