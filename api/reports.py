"""The API's answers, built from the queries: one place that turns rows into models.

The layers go one way: routes and dashboard pages -> reports -> queries. The JSON handlers
reply with these models and the dashboard renders the same ones, so a figure on a page is
always the figure the API gives for the same window. Reports raise ``ProblemError`` for an
unknown device or a conflict, and ``api.rules.RuleError`` for a refused window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from api.models import (
    BUCKET_WIDTHS,
    Alert,
    AlertHistory,
    AlertList,
    FleetSummary,
    Link,
    LinkHistory,
    MeterAnalytics,
    MeterLinks,
    MeterReadingOut,
    MeterSeries,
    MeterSeriesPoint,
    MeterStatus,
    MeterStatusPage,
    Performance,
    RegisterStats,
    RegisterValue,
    Replacement,
    Replacements,
    Series,
    SeriesPoint,
    Silence,
    Silences,
    Stats,
    StatusCounts,
    VehicleAnalytics,
    VehicleEfficiency,
    VehicleReadingOut,
    VehicleStatus,
    VehicleStatusPage,
)
from api.problems import ProblemError
from api.queries import alerts as qal
from api.queries import analytics as qa
from api.queries import links as ql
from api.queries import registers as qr
from api.queries import status as qs
from api.rules import VERDICTS, EfficiencyRules, check_buckets
from collector.db.connection import Connection
from collector.settings import Settings

#: How many vehicles each list of the fleet summary holds at most.
LIST_LIMIT = 100
#: "Every row" as a page size for the status queries.
ALL = 1_000_000


def efficiency_rules(settings: Settings) -> EfficiencyRules:
    return EfficiencyRules(
        low=settings.efficiency_low,
        high=settings.efficiency_max,
        idle_kw=settings.efficiency_idle_kw,
    )


def _hours(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() / 3600


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def meter_status_out(row: asyncpg.Record) -> MeterStatus:
    return MeterStatus(
        meterId=row["meter_id"],
        timestamp=row["ts"],
        kwhConsumedAc=row["kwh_consumed_ac"],
        kwhRegisterAc=row["kwh_register_ac"],
        registerQuality=row["register_quality"],
        voltage=row["voltage"],
        receivedAt=row["received_at"],
        ageSeconds=row["age_s"],
        linkedVehicleId=row["linked"],
    )


def vehicle_status_out(row: asyncpg.Record) -> VehicleStatus:
    return VehicleStatus(
        vehicleId=row["vehicle_id"],
        timestamp=row["ts"],
        soc=row["soc"],
        kwhDeliveredDc=row["kwh_delivered_dc"],
        kwhRegisterDc=row["kwh_register_dc"],
        registerQuality=row["register_quality"],
        batteryTemp=row["battery_temp"],
        receivedAt=row["received_at"],
        ageSeconds=row["age_s"],
        linkedMeterId=row["linked"],
    )


def link_out(row: asyncpg.Record) -> Link:
    return Link(
        vehicleId=row["vehicle_id"],
        meterId=row["meter_id"],
        startedAt=row["started_at"],
        endedAt=row["ended_at"],
    )


# --- status ------------------------------------------------------------------------------


async def meter_status(conn: Connection, meter: str) -> MeterStatus:
    row = await qs.meter_status(conn, meter)
    if row is None:
        raise ProblemError(404, f"meter {meter!r} has never reported")
    return meter_status_out(row)


async def vehicle_status(conn: Connection, vehicle: str) -> VehicleStatus:
    row = await qs.vehicle_status(conn, vehicle)
    if row is None:
        raise ProblemError(404, f"vehicle {vehicle!r} has never reported")
    return vehicle_status_out(row)


async def vehicle_status_if_any(conn: Connection, vehicle: str) -> VehicleStatus | None:
    """The vehicle's state, or None for one known only from its links."""
    row = await qs.vehicle_status(conn, vehicle)
    return None if row is None else vehicle_status_out(row)


async def meter_has_reported(conn: Connection, meter: str) -> bool:
    return await qs.meter_status(conn, meter) is not None


async def meter_page(
    conn: Connection, *, after: str | None, limit: int, silent_minutes: int | None
) -> MeterStatusPage:
    rows = await qs.meter_status_page(conn, after=after, limit=limit, silent_minutes=silent_minutes)
    items = [meter_status_out(r) for r in rows]
    next_cursor = items[-1].meterId if len(items) == limit else None
    return MeterStatusPage(items=items, limit=limit, nextCursor=next_cursor)


async def vehicle_page(
    conn: Connection,
    *,
    after: str | None,
    limit: int,
    silent_minutes: int | None,
    soc_below: float | None,
) -> VehicleStatusPage:
    rows = await qs.vehicle_status_page(
        conn, after=after, limit=limit, silent_minutes=silent_minutes, soc_below=soc_below
    )
    items = [vehicle_status_out(r) for r in rows]
    next_cursor = items[-1].vehicleId if len(items) == limit else None
    return VehicleStatusPage(items=items, limit=limit, nextCursor=next_cursor)


async def all_vehicle_statuses(conn: Connection) -> list[VehicleStatus]:
    """Every vehicle's state (the dashboard's fleet table)."""
    rows = await qs.vehicle_status_page(
        conn, after=None, limit=ALL, silent_minutes=None, soc_below=None
    )
    return [vehicle_status_out(r) for r in rows]


async def silent_meter_count(conn: Connection, silent_minutes: int) -> int:
    """Meters whose latest reading is older than ``silent_minutes``."""
    return await qs.count_silent_meters(conn, silent_minutes)


# --- links ---------------------------------------------------------------------------------


async def _require_vehicle(conn: Connection, vehicle: str) -> None:
    if await qs.vehicle_status(conn, vehicle) is None and not await ql.link_history(conn, vehicle):
        raise ProblemError(404, f"vehicle {vehicle!r} has never reported nor been linked")


def _history(rows: list[asyncpg.Record]) -> tuple[list[Link], Link | None]:
    """Links newest first, and the open one (if any)."""
    history = [link_out(r) for r in rows]
    return history, next((link for link in history if link.endedAt is None), None)


async def links(conn: Connection, vehicle: str) -> LinkHistory:
    rows = await ql.link_history(conn, vehicle)
    if not rows and await qs.vehicle_status(conn, vehicle) is None:
        raise ProblemError(404, f"vehicle {vehicle!r} has never reported nor been linked")
    history, current = _history(rows)
    return LinkHistory(vehicleId=vehicle, current=current, history=history)


async def meter_links(conn: Connection, meter: str) -> MeterLinks:
    rows = await ql.meter_link_history(conn, meter)
    if not rows and await qs.meter_status(conn, meter) is None:
        raise ProblemError(404, f"meter {meter!r} has never reported nor been linked")
    history, current = _history(rows)
    return MeterLinks(meterId=meter, current=current, history=history)


async def put_link(
    conn: Connection, vehicle: str, meter: str, started_at: datetime
) -> tuple[Link, bool]:
    """Link ``vehicle`` to ``meter`` from ``started_at``: (the link, whether it is new);
    409 when that would rewrite the link history."""
    try:
        row, created = await ql.put_link(conn, vehicle, meter, started_at)
    except ql.LinkConflict as exc:
        raise ProblemError(409, str(exc)) from None
    return link_out(row), created


async def end_link(conn: Connection, vehicle: str) -> Link:
    """End the vehicle's open link now; 404 when it has none."""
    row = await ql.end_link(conn, vehicle)
    if row is None:
        raise ProblemError(404, f"vehicle {vehicle!r} is not linked to a meter")
    return link_out(row)


# --- registers -----------------------------------------------------------------------------


def replacement_out(row: asyncpg.Record) -> Replacement:
    return Replacement(
        kind=row["kind"],
        deviceId=row["device_id"],
        at=row["at"],
        finalKwh=row["final_kwh"],
        startKwh=row["start_kwh"],
        recordedAt=row["created_at"],
    )


async def replacements(conn: Connection, kind: str, device: str) -> Replacements:
    rows = await qr.replacements(conn, kind, device)
    return Replacements(
        kind=kind,
        deviceId=device,
        replacements=[replacement_out(r) for r in rows],
    )


async def add_replacement(
    conn: Connection,
    kind: str,
    device: str,
    *,
    at: datetime,
    final_kwh: float | None,
    start_kwh: float | None,
) -> tuple[Replacement, bool]:
    """Record a replacement (409 when one at that time has other values)."""
    try:
        row, created = await qr.add_replacement(
            conn, kind, device, at=at, final_kwh=final_kwh, start_kwh=start_kwh
        )
    except qr.ReplacementConflict as exc:
        raise ProblemError(409, str(exc)) from None
    return replacement_out(row), created


# --- analytics -----------------------------------------------------------------------------


async def performance(
    conn: Connection, settings: Settings, vehicle: str, start: datetime, end: datetime
) -> Performance:
    await _require_vehicle(conn, vehicle)
    row = await qa.performance(conn, vehicle, start, end)
    ratio, status = efficiency_rules(settings).judge(
        row["ac_kwh"], row["dc_kwh"], row["ac_n"], row["dc_n"], _hours(start, end)
    )
    return Performance(
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
        provisional=row["pending"] > 0,
    )


def register_stats(row: asyncpg.Record) -> RegisterStats | None:
    """The window's register readings (None when the device reported none in it)."""
    if not row["register_readings"]:
        return None

    def value(rec: asyncpg.Record | None) -> RegisterValue | None:
        return None if rec is None else RegisterValue(timestamp=rec[0], kwh=rec[1])

    return RegisterStats(
        readings=row["register_readings"],
        first=value(row["first_register"]),
        last=value(row["last_register"]),
        resets=row["register_resets"],
        glitches=row["register_glitches"],
        quarantined=row["register_quarantined"],
        dips=row["register_dips"],
        rollovers=row["register_rollovers"],
        shifts=row["register_shifts"],
        pending=row["register_pending"],
        provisional=row["register_pending"] > 0,
    )


def _stats(row, prefix: str, *, with_sum: bool = True) -> Stats:
    return Stats(
        sum=_round(row[f"{prefix}_sum"]) if with_sum else None,
        min=_round(row[f"{prefix}_min"]),
        max=_round(row[f"{prefix}_max"]),
        avg=_round(row[f"{prefix}_avg"]),
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
    await _require_vehicle(conn, vehicle)
    width = BUCKET_WIDTHS[bucket]
    rows = await qa.series(conn, vehicle, start, end, width)
    rules = efficiency_rules(settings)
    points = []
    for r in rows:
        # The first and last buckets may be cut by the window: judge the part inside it.
        lo, hi = max(r["start"], start), min(r["start"] + width, end)
        ratio, _ = rules.judge(r["ac_kwh"], r["dc_kwh"], r["ac_n"], r["dc_n"], _hours(lo, hi))
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
            kwhConsumedAc=_round(r["kwh"]),
            voltageAvg=_round(r["v_avg"], 3),
            voltageMin=_round(r["v_min"], 3),
            voltageMax=_round(r["v_max"], 3),
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
    rules, hours = efficiency_rules(settings), _hours(start, end)
    for v in rows:
        ratio, status = rules.judge(v["ac_kwh"], v["dc_kwh"], v["ac_n"], v["dc_n"], hours)
        counts[status] += 1
        if v["ac_n"] and v["dc_n"]:
            linked_ac += v["ac_kwh"]
            linked_dc += v["dc_kwh"]
        vehicles.append(
            VehicleEfficiency(
                vehicleId=v["vehicle_id"],
                meterIds=list(v["meter_ids"]),
                totalKwhConsumedAc=_round(v["ac_kwh"]),
                totalKwhDeliveredDc=_round(v["dc_kwh"]),
                efficiencyRatio=_round(ratio, 4),
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
        totalKwhConsumedAc=_round(totals["all_ac_kwh"]),
        totalKwhDeliveredDc=_round(totals["all_dc_kwh"]),
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
    return FleetReport(summary=summary, vehicles=vehicles)


@dataclass(frozen=True, slots=True)
class VehicleEnergy:
    """A linked vehicle's AC (of its meters) and DC over a window, with reading counts."""

    vehicle_id: str
    ac_kwh: float
    dc_kwh: float
    ac_n: int
    dc_n: int


async def vehicle_energy(conn: Connection, start: datetime, end: datetime) -> list[VehicleEnergy]:
    """Every linked vehicle's energy over ``[start, end)``: the fleet summary's own figures,
    which the collector's efficiency alert rules judge (so an alert and the dashboard's
    verdict agree)."""
    _, rows = await qa.fleet(conn, start, end)
    return [
        VehicleEnergy(r["vehicle_id"], r["ac_kwh"], r["dc_kwh"], r["ac_n"], r["dc_n"]) for r in rows
    ]


# --- alerts --------------------------------------------------------------------------------


def alert_out(row: asyncpg.Record) -> Alert:
    return Alert(
        id=row["id"],
        rule=row["rule"],
        kind=row["kind"],
        deviceId=row["device_id"],
        state=row["state"],
        severity=row["severity"],
        value=row["value"],
        since=row["since"],
        firedAt=row["fired_at"],
        resolvedAt=row["resolved_at"],
        acknowledgedAt=row["acknowledged_at"],
        acknowledgedBy=row["acknowledged_by"],
        silenced=row["silenced"],
    )


def silence_out(row: asyncpg.Record) -> Silence:
    return Silence(
        id=row["id"],
        rule=row["rule"],
        kind=row["kind"],
        deviceId=row["device_id"],
        until=row["until"],
        comment=row["comment"],
        createdBy=row["created_by"],
        createdAt=row["created_at"],
        active=row["active"],
    )


async def open_alerts(
    conn: Connection,
    *,
    state: str = "open",
    rule: str | None = None,
    severity: str | None = None,
    kind: str | None = None,
    device_id: str | None = None,
    limit: int = 500,
) -> AlertList:
    states = ["firing", "pending"] if state == "open" else [state]
    total, rows = await qal.open_alerts(
        conn,
        states=states,
        rule=rule,
        severity=severity,
        kind=kind,
        device_id=device_id,
        limit=limit,
    )
    return AlertList(count=total, alerts=[alert_out(r) for r in rows])


async def device_alerts(conn: Connection, kind: str, device: str, limit: int = 100) -> AlertHistory:
    rows = await qal.device_alerts(conn, kind, device, limit)
    return AlertHistory(kind=kind, deviceId=device, alerts=[alert_out(r) for r in rows])


async def alert(conn: Connection, alert_id: int) -> Alert:
    row = await qal.alert(conn, alert_id)
    if row is None:
        raise ProblemError(404, f"no alert {alert_id}")
    return alert_out(row)


async def acknowledge(conn: Connection, alert_id: int, by: str) -> Alert:
    row = await qal.acknowledge(conn, alert_id, by)
    if row is None:
        raise ProblemError(404, f"no alert {alert_id}")
    return alert_out(row)


async def add_silence(
    conn: Connection,
    *,
    rule: str | None,
    kind: str | None,
    device_id: str | None,
    until: datetime,
    comment: str,
    by: str,
) -> Silence:
    row = await qal.add_silence(
        conn, rule=rule, kind=kind, device_id=device_id, until=until, comment=comment, by=by
    )
    return silence_out(row)


async def silences(conn: Connection) -> Silences:
    return Silences(silences=[silence_out(r) for r in await qal.active_silences(conn)])


async def end_silence(conn: Connection, silence_id: int) -> Silence:
    row = await qal.end_silence(conn, silence_id)
    if row is None:
        raise ProblemError(404, f"no silence {silence_id}")
    return silence_out(row)
