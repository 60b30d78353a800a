"""Analytics: a vehicle's performance and series, a device's window, the fleet."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from api.models import (
    BUCKET_WIDTHS,
    FleetSummary,
    MeterAnalytics,
    MeterReadingOut,
    MeterSeries,
    MeterSeriesPoint,
    Performance,
    Series,
    SeriesPoint,
    Stats,
    StatusCounts,
    VehicleAnalytics,
    VehicleEfficiency,
    VehicleReadingOut,
)
from api.policy import VERDICTS, check_buckets
from api.queries import analytics as qa
from api.reports.common import LIST_LIMIT, efficiency_bands, hours, rounded
from api.reports.links import require_vehicle
from api.reports.registers import register_stats
from api.reports.status import meter_status, vehicle_status
from collector.db.connection import Connection
from collector.settings import Settings


async def performance(
    conn: Connection, settings: Settings, vehicle: str, start: datetime, end: datetime
) -> Performance:
    await require_vehicle(conn, vehicle)
    row = await qa.performance(conn, vehicle, start, end)
    ratio, status = efficiency_bands(settings).judge(
        row["ac_kwh"], row["dc_kwh"], row["ac_n"], row["dc_n"], hours(start, end)
    )
    return Performance(
        vehicleId=vehicle,
        meterIds=list(row["meter_ids"]),
        windowStart=start,
        windowEnd=end,
        totalKwhConsumedAc=rounded(row["ac_kwh"]),
        totalKwhDeliveredDc=rounded(row["dc_kwh"]),
        unlinkedKwhDeliveredDc=rounded(row["dc_unlinked"]),
        efficiencyRatio=rounded(ratio, 4),
        averageBatteryTemp=rounded(row["temp_avg"], 3),
        meterReadingCount=row["ac_n"],
        vehicleReadingCount=row["v_n"],
        status=status,
        provisional=row["pending"] > 0,
    )


def _stats(row, prefix: str, *, with_sum: bool = True) -> Stats:
    return Stats(
        sum=rounded(row[f"{prefix}_sum"]) if with_sum else None,
        min=rounded(row[f"{prefix}_min"]),
        max=rounded(row[f"{prefix}_max"]),
        avg=rounded(row[f"{prefix}_avg"]),
    )


async def meter_analytics(
    conn: Connection, meter: str, start: datetime, end: datetime
) -> MeterAnalytics:
    current = await meter_status(conn, meter)
    row = await qa.meter_window(conn, meter, start, end)

    def reading(rec) -> MeterReadingOut | None:
        if rec is None:
            return None
        return MeterReadingOut(timestamp=rec[0], kwhConsumedAc=rec[1], voltage=rec[2])

    return MeterAnalytics(
        meterId=meter,
        windowStart=start,
        windowEnd=end,
        readingCount=row["n"],
        kwhConsumedAc=_stats(row, "kwh"),
        voltage=_stats(row, "voltage", with_sum=False),
        firstReading=reading(row["first"]),
        lastReading=reading(row["last"]),
        vehicleIds=list(row["vehicle_ids"]),
        registers=register_stats(row),
        current=current,
    )


async def vehicle_analytics(
    conn: Connection, vehicle: str, start: datetime, end: datetime
) -> VehicleAnalytics:
    current = await vehicle_status(conn, vehicle)
    row = await qa.vehicle_window(conn, vehicle, start, end)

    def reading(rec) -> VehicleReadingOut | None:
        if rec is None:
            return None
        return VehicleReadingOut(
            timestamp=rec[0], soc=rec[1], kwhDeliveredDc=rec[2], batteryTemp=rec[3]
        )

    return VehicleAnalytics(
        vehicleId=vehicle,
        windowStart=start,
        windowEnd=end,
        readingCount=row["n"],
        soc=_stats(row, "soc", with_sum=False),
        kwhDeliveredDc=_stats(row, "kwh"),
        batteryTemp=_stats(row, "temp", with_sum=False),
        firstReading=reading(row["first"]),
        lastReading=reading(row["last"]),
        meterIds=list(row["meter_ids"]),
        registers=register_stats(row),
        current=current,
    )


async def series(
    conn: Connection,
    settings: Settings,
    vehicle: str,
    start: datetime,
    end: datetime,
    *,
    bucket: str,
) -> Series:
    check_buckets(start, end, BUCKET_WIDTHS[bucket], bucket)
    await require_vehicle(conn, vehicle)
    width = BUCKET_WIDTHS[bucket]
    rows = await qa.series(conn, vehicle, start, end, width)
    bands = efficiency_bands(settings)
    points = []
    for r in rows:
        # The first and last buckets may be cut by the window: judge the part inside it.
        lo, hi = max(r["start"], start), min(r["start"] + width, end)
        ratio, _ = bands.judge(r["ac_kwh"], r["dc_kwh"], r["ac_n"], r["dc_n"], hours(lo, hi))
        points.append(
            SeriesPoint(
                bucketStart=r["start"],
                kwhConsumedAc=rounded(r["ac_kwh"]),
                kwhDeliveredDc=rounded(r["dc_kwh"]),
                efficiencyRatio=rounded(ratio, 4),
                socAvg=rounded(r["soc_avg"], 3),
                socMin=rounded(r["soc_min"], 3),
                socMax=rounded(r["soc_max"], 3),
                batteryTempAvg=rounded(r["t_avg"], 3),
                batteryTempMax=rounded(r["t_max"], 3),
                meterReadingCount=r["ac_n"],
                vehicleReadingCount=r["v_n"],
            )
        )
    return Series(vehicleId=vehicle, bucket=bucket, windowStart=start, windowEnd=end, points=points)


async def meter_series(
    conn: Connection, meter: str, start: datetime, end: datetime, bucket: str
) -> MeterSeries:
    check_buckets(start, end, BUCKET_WIDTHS[bucket], bucket)
    await meter_status(conn, meter)  # 404 for an unknown meter
    rows = await qa.meter_series(conn, meter, start, end, BUCKET_WIDTHS[bucket])
    points = [
        MeterSeriesPoint(
            bucketStart=r["start"],
            kwhConsumedAc=rounded(r["kwh"]),
            voltageAvg=rounded(r["v_avg"], 3),
            voltageMin=rounded(r["v_min"], 3),
            voltageMax=rounded(r["v_max"], 3),
            readingCount=r["n"],
        )
        for r in rows
    ]
    return MeterSeries(
        meterId=meter, bucket=bucket, windowStart=start, windowEnd=end, points=points
    )


@dataclass(frozen=True, slots=True)
class FleetReport:
    """The fleet summary the API returns, and every linked vehicle's verdict behind it."""

    summary: FleetSummary
    vehicles: list[VehicleEfficiency]


async def fleet(
    conn: Connection,
    settings: Settings,
    start: datetime,
    end: datetime,
    *,
    as_of: datetime | None = None,
) -> FleetReport:
    """The fleet over ``[start, end)``; ``as_of`` is when the figures are of (now unless
    the caller computes for an earlier instant)."""
    totals, rows = await qa.fleet(conn, start, end)
    counts = dict.fromkeys(VERDICTS, 0)
    vehicles = []
    linked_ac = linked_dc = 0.0
    bands, window_h = efficiency_bands(settings), hours(start, end)
    for v in rows:
        ratio, status = bands.judge(v["ac_kwh"], v["dc_kwh"], v["ac_n"], v["dc_n"], window_h)
        counts[status] += 1
        if v["ac_n"] and v["dc_n"]:
            linked_ac += v["ac_kwh"]
            linked_dc += v["dc_kwh"]
        vehicles.append(
            VehicleEfficiency(
                vehicleId=v["vehicle_id"],
                meterIds=list(v["meter_ids"]),
                totalKwhConsumedAc=rounded(v["ac_kwh"]),
                totalKwhDeliveredDc=rounded(v["dc_kwh"]),
                efficiencyRatio=rounded(ratio, 4),
                status=status,
            )
        )
    low = sorted(
        (e for e in vehicles if e.status == "low_efficiency"),
        key=lambda e: (e.efficiencyRatio, e.vehicleId),
    )
    anomalies = sorted(
        (e for e in vehicles if e.status == "anomaly"),
        key=lambda e: (-(e.efficiencyRatio or 0), e.vehicleId),
    )
    # Vehicles known only from links (never reported) are counted as insufficient data.
    counts["insufficient_data"] += max(0, totals["vehicles_total"] - len(rows))
    summary = FleetSummary(
        asOf=as_of or datetime.now(UTC),
        windowStart=start,
        windowEnd=end,
        totalKwhConsumedAc=rounded(totals["all_ac_kwh"]),
        totalKwhDeliveredDc=rounded(totals["all_dc_kwh"]),
        efficiencyOverall=rounded(linked_dc / linked_ac, 4) if linked_ac > 0 else None,
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
    return FleetReport(summary=summary, vehicles=vehicles)
