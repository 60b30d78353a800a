"""The dashboard's vehicle table: the API's statuses and verdicts, joined, filtered, sorted.

Pure functions over the models the API returns (``VehicleStatus`` and the fleet report's
``VehicleEfficiency``), so the table cannot disagree with ``/v1/status/vehicles`` or
``/v1/analytics/fleet``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from api.models import VehicleEfficiency, VehicleStatus
from api.policy import VERDICTS, Verdict

FILTERS = ("all", *VERDICTS, "silent")
PAGE_SIZE = 50
# Worst first when sorting by status.
SEVERITY = {verdict: rank for rank, verdict in enumerate(VERDICTS)}


@dataclass(frozen=True, slots=True)
class VehicleRow:
    vehicle_id: str
    meter_id: str | None  # the current link, else the window's last meter
    age_s: float | None  # None: never reported (known from links only)
    soc: float | None
    battery_temp: float | None
    ac_kwh: float
    dc_kwh: float
    efficiency: float | None
    status: Verdict
    silent: bool


@dataclass(frozen=True, slots=True)
class TablePage:
    rows: list[VehicleRow]
    total: int  # rows that pass the filter
    page: int
    pages: int


def is_silent(age_s: float | None, silent_after_s: float) -> bool:
    """The dashboard's one rule: no reading for ``silent_after_s``, or none ever (None)."""
    return age_s is None or age_s > silent_after_s


def join(
    statuses: Iterable[VehicleStatus],
    verdicts: Iterable[VehicleEfficiency],
    *,
    silent_after_s: float,
) -> list[VehicleRow]:
    """One row per vehicle that reported or was linked in the window.

    A vehicle without a verdict (no link in the window) is ``insufficient_data``, as the
    fleet summary counts it; it is silent when its last reading is older than
    ``silent_after_s`` or it never reported.
    """
    by_id = {v.vehicleId: v for v in verdicts}
    rows = []
    seen = set()
    for s in statuses:
        seen.add(s.vehicleId)
        rows.append(_row(s.vehicleId, s, by_id.get(s.vehicleId), silent_after_s))
    for vehicle_id, verdict in by_id.items():
        if vehicle_id not in seen:
            rows.append(_row(vehicle_id, None, verdict, silent_after_s))
    return rows


def _row(
    vehicle_id: str,
    status: VehicleStatus | None,
    verdict: VehicleEfficiency | None,
    silent_after_s: float,
) -> VehicleRow:
    meter = status.linkedMeterId if status else None
    if meter is None and verdict and verdict.meterIds:
        meter = verdict.meterIds[-1]
    return VehicleRow(
        vehicle_id=vehicle_id,
        meter_id=meter,
        age_s=status.ageSeconds if status else None,
        soc=status.soc if status else None,
        battery_temp=status.batteryTemp if status else None,
        ac_kwh=verdict.totalKwhConsumedAc if verdict else 0.0,
        dc_kwh=verdict.totalKwhDeliveredDc if verdict else 0.0,
        efficiency=verdict.efficiencyRatio if verdict else None,
        status=verdict.status if verdict else "insufficient_data",
        silent=is_silent(status.ageSeconds if status else None, silent_after_s),
    )


def counts(rows: list[VehicleRow]) -> dict[str, int]:
    """Rows per filter, for the filter tabs."""
    out = dict.fromkeys(FILTERS, 0)
    out["all"] = len(rows)
    for row in rows:
        out[row.status] += 1
        out["silent"] += row.silent
    return out


# Sort keys: (missing, value); missing values sort last in either order (see ``table``).
SORTS: dict[str, Callable[[VehicleRow], tuple[bool, Any]]] = {
    "status": lambda r: (False, (SEVERITY[r.status], r.efficiency or 0.0)),
    "vehicle": lambda r: (False, r.vehicle_id),
    "meter": lambda r: (r.meter_id is None, r.meter_id or ""),
    "age": lambda r: (r.age_s is None, r.age_s or 0.0),
    "soc": lambda r: (r.soc is None, r.soc or 0.0),
    "temp": lambda r: (r.battery_temp is None, r.battery_temp or 0.0),
    "ac": lambda r: (False, r.ac_kwh),
    "dc": lambda r: (False, r.dc_kwh),
    "efficiency": lambda r: (r.efficiency is None, r.efficiency or 0.0),
}


def ordered(
    rows: list[VehicleRow],
    *,
    show: str = "all",
    search: str = "",
    sort: str = "status",
    descending: bool = False,
) -> list[VehicleRow]:
    """The rows passing ``show`` (a FILTERS name) and ``search`` (in vehicle or meter id),
    sorted by ``sort`` (ties by vehicle id; missing values last in either order)."""
    needle = search.strip().lower()
    picked = [
        r
        for r in rows
        if (show == "all" or (r.silent if show == "silent" else r.status == show))
        and (
            not needle
            or needle in r.vehicle_id.lower()
            or (r.meter_id is not None and needle in r.meter_id.lower())
        )
    ]
    picked.sort(key=lambda r: r.vehicle_id)
    key = SORTS[sort]
    present = [r for r in picked if not key(r)[0]]
    missing = [r for r in picked if key(r)[0]]
    present.sort(key=lambda r: key(r)[1], reverse=descending)
    return present + missing


def paginate(rows: list[VehicleRow], *, page: int = 1, page_size: int = PAGE_SIZE) -> TablePage:
    """Page ``page`` of ``rows`` (clamped to the pages there are)."""
    pages = max(1, -(-len(rows) // page_size))
    page = min(max(page, 1), pages)
    start = (page - 1) * page_size
    return TablePage(rows=rows[start : start + page_size], total=len(rows), page=page, pages=pages)


def table(
    rows: list[VehicleRow],
    *,
    show: str = "all",
    search: str = "",
    sort: str = "status",
    descending: bool = False,
    page: int = 1,
    page_size: int = PAGE_SIZE,
) -> TablePage:
    """One page of :func:`ordered`."""
    picked = ordered(rows, show=show, search=search, sort=sort, descending=descending)
    return paginate(picked, page=page, page_size=page_size)
