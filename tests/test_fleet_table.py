"""The dashboard's vehicle table: join, filters, sorting and pages."""

from __future__ import annotations

from datetime import UTC, datetime

from api.fleet_table import counts, join, table
from api.models import VehicleEfficiency, VehicleStatus

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def status(vehicle: str, age_s: float, soc: float = 50.0, meter: str | None = None):
    return VehicleStatus(
        vehicleId=vehicle,
        timestamp=NOW,
        soc=soc,
        kwhDeliveredDc=0.5,
        batteryTemp=30.0,
        receivedAt=NOW,
        ageSeconds=age_s,
        linkedMeterId=meter,
    )


def verdict(vehicle: str, ratio: float | None, state: str, meters=("m",)):
    return VehicleEfficiency(
        vehicleId=vehicle,
        meterIds=list(meters),
        totalKwhConsumedAc=10.0,
        totalKwhDeliveredDc=10.0 * (ratio or 0),
        efficiencyRatio=ratio,
        status=state,
    )


ROWS = join(
    [
        status("v-good", 30, soc=80, meter="m-1"),
        status("v-low", 60, soc=20, meter="m-2"),
        status("v-odd", 90, soc=55, meter="m-3"),
        status("v-quiet", 7200, soc=10),  # silent, no link in the window
    ],
    [
        verdict("v-good", 0.9, "normal", ["m-1"]),
        verdict("v-low", 0.7, "low_efficiency", ["m-2"]),
        verdict("v-odd", 1.2, "anomaly", ["m-3"]),
        verdict("v-ghost", None, "insufficient_data", ["m-9"]),  # linked, never reported
    ],
    silent_after_s=900,
)


def ids(page) -> list[str]:
    return [r.vehicle_id for r in page.rows]


def test_join_keeps_every_vehicle_and_marks_the_silent_ones():
    by_id = {r.vehicle_id: r for r in ROWS}
    assert set(by_id) == {"v-good", "v-low", "v-odd", "v-quiet", "v-ghost"}
    assert by_id["v-quiet"].status == "insufficient_data" and by_id["v-quiet"].silent
    assert by_id["v-ghost"].age_s is None and by_id["v-ghost"].silent
    assert by_id["v-ghost"].meter_id == "m-9"  # no current link: the window's meter
    assert not by_id["v-good"].silent and by_id["v-good"].meter_id == "m-1"
    assert counts(ROWS) == {
        "all": 5,
        "anomaly": 1,
        "low_efficiency": 1,
        "idle": 0,
        "insufficient_data": 2,
        "normal": 1,
        "silent": 2,
    }


def test_default_order_is_worst_first():
    assert ids(table(ROWS)) == ["v-odd", "v-low", "v-ghost", "v-quiet", "v-good"]


def test_filters_and_search():
    assert ids(table(ROWS, show="low_efficiency")) == ["v-low"]
    assert ids(table(ROWS, show="silent")) == ["v-ghost", "v-quiet"]
    assert ids(table(ROWS, search="M-3")) == ["v-odd"]  # meter ids too, any case
    assert table(ROWS, show="anomaly", search="good").total == 0


def test_sorting_puts_missing_values_last_either_way():
    assert ids(table(ROWS, sort="efficiency")) == ["v-low", "v-good", "v-odd", "v-ghost", "v-quiet"]
    assert ids(table(ROWS, sort="efficiency", descending=True))[:3] == ["v-odd", "v-good", "v-low"]
    assert ids(table(ROWS, sort="age", descending=True))[-1] == "v-ghost"
    assert ids(table(ROWS, sort="soc")) == ["v-quiet", "v-low", "v-odd", "v-good", "v-ghost"]


def test_pages():
    first = table(ROWS, sort="vehicle", page_size=2)
    assert (ids(first), first.page, first.pages, first.total) == (["v-ghost", "v-good"], 1, 3, 5)
    last = table(ROWS, sort="vehicle", page_size=2, page=99)  # clamped
    assert (ids(last), last.page) == (["v-quiet"], 3)
    assert table(ROWS, page=-1).page == 1
