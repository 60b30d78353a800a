"""Window analytics: charging performance, per-device stats, fleet summary, series."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api import queries as q
from api.analytics import MAX_POINTS, efficiency, resolve_window
from api.context import context, device_id, reply
from api.endpoints import Endpoint, Reply, parse_query
from api.models import (
    BUCKET_WIDTHS,
    FleetSummary,
    MeterAnalytics,
    MeterReadingOut,
    Performance,
    Series,
    SeriesPoint,
    SeriesQuery,
    Stats,
    StatusCounts,
    VehicleAnalytics,
    VehicleEfficiency,
    VehicleReadingOut,
    WindowQuery,
)
from api.problems import ProblemError
from api.routes_status import (
    BAD_REQUEST,
    METER_ID,
    UNAUTHORIZED,
    VEHICLE_ID,
    meter_status_out,
    vehicle_status_out,
)

LIST_LIMIT = 100
UNPROCESSABLE = {422: Reply("window reversed, over 366 days, or too many buckets")}


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


async def get_performance(request: Request) -> Response:
    ctx = context(request)
    vehicle = device_id(request, "vehicleId")
    query = parse_query(request, WindowQuery)
    start, end = resolve_window(query.from_, query.to)
    async with ctx.pool.acquire() as conn:
        if await q.vehicle_status(conn, vehicle) is None and not await q.link_history(
            conn, vehicle
        ):
            raise ProblemError(404, f"vehicle {vehicle!r} has never reported nor been linked")
        row = await q.performance(conn, vehicle, start, end)
    ratio, status = efficiency(
        row["ac_kwh"],
        row["dc_kwh"],
        row["ac_n"],
        row["dc_n"],
        low=ctx.settings.efficiency_low,
        high=ctx.settings.efficiency_max,
    )
    return reply(
        Performance(
            vehicleId=vehicle,
            meterIds=list(row["meter_ids"]),
            windowStart=start,
            windowEnd=end,
            totalKwhConsumedAc=_round(row["ac_kwh"]),
            totalKwhDeliveredDc=_round(row["dc_kwh"]),
            unlinkedKwhDeliveredDc=_round(row["dc_unlinked"]),
            efficiencyRatio=_round(ratio, 4),
            averageBatteryTemp=_round(row["temp_avg"], 3),
            meterReadingCount=row["ac_n"],
            vehicleReadingCount=row["v_n"],
            status=status,
        )
    )


def _stats(row, prefix: str, *, with_sum: bool = True) -> Stats:
    return Stats(
        sum=_round(row[f"{prefix}_sum"]) if with_sum else None,
        min=_round(row[f"{prefix}_min"]),
        max=_round(row[f"{prefix}_max"]),
        avg=_round(row[f"{prefix}_avg"]),
    )


async def get_meter_analytics(request: Request) -> Response:
    meter = device_id(request, "meterId")
    start, end = resolve_window(*_window(request))
    async with context(request).pool.acquire() as conn:
        current = await q.meter_status(conn, meter)
        if current is None:
            raise ProblemError(404, f"meter {meter!r} has never reported")
        row = await q.meter_window(conn, meter, start, end)

    def reading(rec) -> MeterReadingOut | None:
        return (
            None
            if rec is None
            else MeterReadingOut(timestamp=rec[0], kwhConsumedAc=rec[1], voltage=rec[2])
        )

    return reply(
        MeterAnalytics(
            meterId=meter,
            windowStart=start,
            windowEnd=end,
            readingCount=row["n"],
            kwhConsumedAc=_stats(row, "kwh"),
            voltage=_stats(row, "v", with_sum=False),
            firstReading=reading(row["first"]),
            lastReading=reading(row["last"]),
            vehicleIds=list(row["vehicle_ids"]),
            current=meter_status_out(current),
        )
    )


async def get_vehicle_analytics(request: Request) -> Response:
    vehicle = device_id(request, "vehicleId")
    start, end = resolve_window(*_window(request))
    async with context(request).pool.acquire() as conn:
        current = await q.vehicle_status(conn, vehicle)
        if current is None:
            raise ProblemError(404, f"vehicle {vehicle!r} has never reported")
        row = await q.vehicle_window(conn, vehicle, start, end)

    def reading(rec) -> VehicleReadingOut | None:
        return (
            None
            if rec is None
            else VehicleReadingOut(
                timestamp=rec[0], soc=rec[1], kwhDeliveredDc=rec[2], batteryTemp=rec[3]
            )
        )

    return reply(
        VehicleAnalytics(
            vehicleId=vehicle,
            windowStart=start,
            windowEnd=end,
            readingCount=row["n"],
            soc=_stats(row, "soc", with_sum=False),
            kwhDeliveredDc=_stats(row, "kwh"),
            batteryTemp=_stats(row, "t", with_sum=False),
            firstReading=reading(row["first"]),
            lastReading=reading(row["last"]),
            meterIds=list(row["meter_ids"]),
            current=vehicle_status_out(current),
        )
    )


async def get_series(request: Request) -> Response:
    ctx = context(request)
    vehicle = device_id(request, "vehicleId")
    query = parse_query(request, SeriesQuery)
    start, end = resolve_window(query.from_, query.to)
    width = BUCKET_WIDTHS[query.bucket]
    if (end - start) / width > MAX_POINTS:
        raise ProblemError(
            422,
            f"invalid window: more than {MAX_POINTS} buckets of {query.bucket}; "
            "use a wider bucket or a shorter window",
        )
    async with ctx.pool.acquire() as conn:
        if await q.vehicle_status(conn, vehicle) is None and not await q.link_history(
            conn, vehicle
        ):
            raise ProblemError(404, f"vehicle {vehicle!r} has never reported nor been linked")
        rows = await q.series(conn, vehicle, start, end, width)
    points = []
    for r in rows:
        ratio, _ = efficiency(
            r["ac_kwh"],
            r["dc_kwh"],
            r["ac_n"],
            r["dc_n"],
            low=ctx.settings.efficiency_low,
            high=ctx.settings.efficiency_max,
        )
        points.append(
            SeriesPoint(
                bucketStart=r["start"],
                kwhConsumedAc=_round(r["ac_kwh"]),
                kwhDeliveredDc=_round(r["dc_kwh"]),
                efficiencyRatio=_round(ratio, 4),
                socAvg=_round(r["soc_avg"], 3),
                socMin=_round(r["soc_min"], 3),
                socMax=_round(r["soc_max"], 3),
                batteryTempAvg=_round(r["t_avg"], 3),
                batteryTempMax=_round(r["t_max"], 3),
                meterReadingCount=r["ac_n"],
                vehicleReadingCount=r["v_n"],
            )
        )
    return reply(
        Series(
            vehicleId=vehicle, bucket=query.bucket, windowStart=start, windowEnd=end, points=points
        )
    )


async def get_fleet(request: Request) -> Response:
    ctx = context(request)
    query = parse_query(request, WindowQuery)
    start, end = resolve_window(query.from_, query.to)
    async with ctx.pool.acquire() as conn:
        totals, vehicles = await q.fleet(conn, start, end)
    counts = {"normal": 0, "low_efficiency": 0, "anomaly": 0, "insufficient_data": 0}
    low, anomalies = [], []
    linked_ac = linked_dc = 0.0
    for v in vehicles:
        ratio, status = efficiency(
            v["ac_kwh"],
            v["dc_kwh"],
            v["ac_n"],
            v["dc_n"],
            low=ctx.settings.efficiency_low,
            high=ctx.settings.efficiency_max,
        )
        counts[status] += 1
        if v["ac_n"] and v["dc_n"]:
            linked_ac += v["ac_kwh"]
            linked_dc += v["dc_kwh"]
        entry = VehicleEfficiency(
            vehicleId=v["vehicle_id"],
            meterIds=list(v["meter_ids"]),
            totalKwhConsumedAc=_round(v["ac_kwh"]),
            totalKwhDeliveredDc=_round(v["dc_kwh"]),
            efficiencyRatio=_round(ratio, 4),
            status=status,
        )
        if status == "low_efficiency":
            low.append(entry)
        elif status == "anomaly":
            anomalies.append(entry)
    low.sort(key=lambda e: (e.efficiencyRatio, e.vehicleId))
    anomalies.sort(key=lambda e: (-(e.efficiencyRatio or 0), e.vehicleId))
    # Vehicles known only from links (never reported) are counted as insufficient data.
    counts["insufficient_data"] += max(0, totals["vehicles_total"] - len(vehicles))
    return reply(
        FleetSummary(
            windowStart=start,
            windowEnd=end,
            totalKwhConsumedAc=_round(totals["ac_kwh"]),
            totalKwhDeliveredDc=_round(totals["dc_kwh"]),
            efficiencyOverall=_round(linked_dc / linked_ac, 4) if linked_ac > 0 else None,
            meters={
                "total": totals["meters_total"],
                "reporting": totals["meters_reporting"],
                "silent": max(0, totals["meters_total"] - totals["meters_reporting"]),
            },
            vehicles={
                "total": totals["vehicles_total"],
                "reporting": totals["vehicles_reporting"],
                "silent": max(0, totals["vehicles_total"] - totals["vehicles_reporting"]),
            },
            vehiclesByStatus=StatusCounts(**counts),
            lowEfficiencyVehicles=low[:LIST_LIMIT],
            anomalyVehicles=anomalies[:LIST_LIMIT],
        )
    )


def _window(request: Request):
    query = parse_query(request, WindowQuery)
    return query.from_, query.to


WINDOW_NOTE = "The window is the last 24 h unless `from` / `to` say otherwise."

ENDPOINTS = [
    Endpoint(
        "GET",
        "/v1/analytics/performance/{vehicleId}",
        get_performance,
        "Charging performance of a vehicle: AC in vs DC out",
        "analytics",
        "read",
        {
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
        "GET",
        "/v1/analytics/meter/{meterId}",
        get_meter_analytics,
        "Window statistics of a meter, beside its current state",
        "analytics",
        "read",
        {
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
        "GET",
        "/v1/analytics/vehicle/{vehicleId}",
        get_vehicle_analytics,
        "Window statistics of a vehicle, beside its current state",
        "analytics",
        "read",
        {
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
        "GET",
        "/v1/analytics/vehicle/{vehicleId}/series",
        get_series,
        "Time-bucketed AC, DC, efficiency, SoC and temperature of a vehicle",
        "analytics",
        "read",
        {
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
        "GET",
        "/v1/analytics/fleet",
        get_fleet,
        "Fleet summary",
        "analytics",
        "read",
        {200: Reply("summary", FleetSummary), **BAD_REQUEST, **UNPROCESSABLE, **UNAUTHORIZED},
        description="Totals, devices reporting, overall efficiency and the vehicles "
        "outside the normal band. " + WINDOW_NOTE,
        query=WindowQuery,
    ),
]
