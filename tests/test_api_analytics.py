"""Analytics on hand-computed data, link changes mid-window included.

Window W = [T0, T0 + 4 h); every device reports every 10 minutes, k = 0..23 inside W, plus
one reading just before W and one at its (exclusive) end, which must not count.

    meters:   mA 1.0 kWh @230 V, mB 2.0 kWh @240 V, mC 1.0, mD 1.0, mE 0.5 (never linked)
    vehicles: V1 0.9 kWh, soc 10+k, temp 30+0.5k; V2 0.9; V3 1.2; V4 0.5 (never linked);
              V5 0.8
    links:    V1-mA from T0-1h, V1-mB from T0+2h (ends V1-mA), V5-mA from T0+3h,
              V2-mC and V3-mD from T0-1d

    V1: AC = 12 x 1.0 (mA, first 2 h) + 12 x 2.0 (mB, last 2 h) = 36; DC = 24 x 0.9 = 21.6
        -> 0.6 low_efficiency; avg temp = 30 + 0.5 x 11.5 = 35.75
    V5: AC = 6 x 1.0 (mA, last hour); DC = 6 x 0.8 = 4.8 linked, 14.4 unlinked -> 0.8 low
    V2: 21.6 / 24 = 0.9 normal; V3: 28.8 / 24 = 1.2 anomaly; V4: insufficient_data
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import load

pytestmark = pytest.mark.services

T0 = datetime(2026, 11, 20, tzinfo=UTC)
W = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=4)).isoformat()}
K = range(-1, 25)  # -1 and 24 fall outside W


def at(k: int) -> datetime:
    return T0 + timedelta(minutes=10 * k)


@pytest.fixture
async def scenario(db, api):
    meters = {
        "mA": (1.0, 230.0),
        "mB": (2.0, 240.0),
        "mC": (1.0, 231.0),
        "mD": (1.0, 232.0),
        "mE": (0.5, 233.0),
    }
    dc = {"V1": 0.9, "V2": 0.9, "V3": 1.2, "V4": 0.5, "V5": 0.8}
    await load(
        db,
        meters=[(m, at(k), kwh, volt) for m, (kwh, volt) in meters.items() for k in K],
        vehicles=[
            (v, at(k), 10.0 + k if v == "V1" else 50.0, kwh, 30 + 0.5 * k)
            for v, kwh in dc.items()
            for k in K
        ],
    )
    for vehicle, meter, start in [
        ("V2", "mC", T0 - timedelta(days=1)),
        ("V3", "mD", T0 - timedelta(days=1)),
        ("V1", "mA", T0 - timedelta(hours=1)),
        ("V1", "mB", T0 + timedelta(hours=2)),
        ("V5", "mA", T0 + timedelta(hours=3)),
    ]:
        r = await api.put(
            "/v1/links",
            json={"vehicleId": vehicle, "meterId": meter, "startedAt": start.isoformat()},
        )
        assert r.status_code == 201, r.text


async def perf(api, vehicle: str, **params) -> dict:
    r = await api.get(f"/v1/analytics/performance/{vehicle}", params=params or W)
    assert r.status_code == 200, r.text
    return r.json()


async def test_performance_attributes_meter_readings_across_a_link_change(api, scenario):
    body = await perf(api, "V1")
    assert body["meterIds"] == ["mA", "mB"]
    assert body["totalKwhConsumedAc"] == pytest.approx(36.0)
    assert body["totalKwhDeliveredDc"] == pytest.approx(21.6)
    assert body["unlinkedKwhDeliveredDc"] == pytest.approx(0.0)
    assert body["efficiencyRatio"] == pytest.approx(0.6)
    assert body["averageBatteryTemp"] == pytest.approx(35.75)
    assert (body["meterReadingCount"], body["vehicleReadingCount"]) == (24, 24)
    assert body["status"] == "low_efficiency"
    assert body["windowStart"].startswith("2026-11-20T00:00:00")
    assert body["windowEnd"].startswith("2026-11-20T04:00:00")


async def test_performance_of_a_vehicle_linked_mid_window(api, scenario):
    body = await perf(api, "V5")
    assert body["meterIds"] == ["mA"]
    assert body["totalKwhConsumedAc"] == pytest.approx(6.0)
    assert body["totalKwhDeliveredDc"] == pytest.approx(4.8)
    assert body["unlinkedKwhDeliveredDc"] == pytest.approx(14.4)
    assert body["efficiencyRatio"] == pytest.approx(0.8)
    assert (body["meterReadingCount"], body["vehicleReadingCount"]) == (6, 24)
    assert body["status"] == "low_efficiency"


@pytest.mark.parametrize(
    ("vehicle", "ratio", "status"),
    [
        ("V2", 0.9, "normal"),
        ("V3", 1.2, "anomaly"),
        ("V4", None, "insufficient_data"),
    ],
)
async def test_performance_statuses(api, scenario, vehicle, ratio, status):
    body = await perf(api, vehicle)
    assert body["status"] == status
    if ratio is None:
        assert body["efficiencyRatio"] is None
        assert body["totalKwhConsumedAc"] == 0
    else:
        assert body["efficiencyRatio"] == pytest.approx(ratio)


async def test_performance_defaults_to_the_last_24_hours(api, db):
    now = datetime.now(UTC)
    await load(
        db,
        meters=[
            ("m", now - timedelta(minutes=30), 2.0, 230),
            ("m", now - timedelta(hours=25), 50.0, 230),
        ],
        vehicles=[
            ("v", now - timedelta(minutes=30), 50, 1.8, 30),
            ("v", now - timedelta(hours=25), 50, 40.0, 30),
        ],
    )
    await api.put(
        "/v1/links",
        json={"vehicleId": "v", "meterId": "m", "startedAt": (now - timedelta(days=2)).isoformat()},
    )
    body = (await api.get("/v1/analytics/performance/v")).json()
    assert body["totalKwhConsumedAc"] == pytest.approx(2.0)
    assert body["totalKwhDeliveredDc"] == pytest.approx(1.8)
    assert body["status"] == "normal"
    span = datetime.fromisoformat(body["windowEnd"]) - datetime.fromisoformat(body["windowStart"])
    assert span == timedelta(hours=24)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"from": "yesterday"}, 400),
        ({"from": "2026-11-20T00:00:00"}, 400),
        ({"to": "1770631200"}, 400),
        ({"from": "2026-11-20T04:00:00Z", "to": "2026-11-20T00:00:00Z"}, 422),
        ({"from": "2024-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, 422),
    ],
)
async def test_bad_windows(api, scenario, params, status):
    r = await api.get("/v1/analytics/performance/V1", params=params)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_unknown_vehicle_is_404(api, scenario):
    assert (await api.get("/v1/analytics/performance/nobody", params=W)).status_code == 404


async def test_meter_window_stats(api, scenario):
    r = await api.get("/v1/analytics/meter/mA", params=W)
    body = r.json()
    assert body["readingCount"] == 24
    assert body["kwhConsumedAc"] == {"sum": 24.0, "min": 1.0, "max": 1.0, "avg": 1.0}
    assert body["voltage"] == {"sum": None, "min": 230.0, "max": 230.0, "avg": 230.0}
    assert body["firstReading"]["timestamp"].startswith("2026-11-20T00:00:00")
    assert body["lastReading"]["timestamp"].startswith("2026-11-20T03:50:00")
    assert body["vehicleIds"] == ["V1", "V5"]
    assert body["current"]["meterId"] == "mA"
    assert body["current"]["linkedVehicleId"] == "V5"


async def test_vehicle_window_stats(api, scenario):
    body = (await api.get("/v1/analytics/vehicle/V1", params=W)).json()
    assert body["readingCount"] == 24
    assert body["soc"] == {"sum": None, "min": 10.0, "max": 33.0, "avg": 21.5}
    assert body["kwhDeliveredDc"]["sum"] == pytest.approx(21.6)
    assert body["batteryTemp"]["min"] == 30.0 and body["batteryTemp"]["max"] == 41.5
    assert body["firstReading"]["soc"] == 10.0 and body["lastReading"]["soc"] == 33.0
    assert body["meterIds"] == ["mA", "mB"]
    assert body["current"]["linkedMeterId"] == "mB"


async def test_series_by_hour(api, scenario):
    body = (await api.get("/v1/analytics/vehicle/V1/series", params={**W, "bucket": "1h"})).json()
    points = body["points"]
    assert [p["bucketStart"][:19] for p in points] == [f"2026-11-20T0{h}:00:00" for h in range(4)]
    assert [p["kwhConsumedAc"] for p in points] == pytest.approx([6, 6, 12, 12])
    assert [p["kwhDeliveredDc"] for p in points] == pytest.approx([5.4] * 4)
    assert [p["efficiencyRatio"] for p in points] == pytest.approx([0.9, 0.9, 0.45, 0.45])
    first = points[0]
    assert (first["socMin"], first["socMax"], first["socAvg"]) == (10, 15, 12.5)
    assert first["batteryTempAvg"] == pytest.approx(31.25)
    assert first["batteryTempMax"] == pytest.approx(32.5)
    assert (first["meterReadingCount"], first["vehicleReadingCount"]) == (6, 6)


async def test_series_includes_empty_buckets(api, scenario):
    params = {"from": (T0 - timedelta(hours=2)).isoformat(), "to": W["to"], "bucket": "1h"}
    points = (await api.get("/v1/analytics/vehicle/V1/series", params=params)).json()["points"]
    assert len(points) == 6
    assert points[0]["vehicleReadingCount"] == 0 and points[0]["socAvg"] is None
    assert points[1]["vehicleReadingCount"] == 1  # the reading at T0 - 10 min


async def test_meter_series_whole_and_partial_hours(api, scenario):
    body = (await api.get("/v1/analytics/meter/mB/series", params={**W, "bucket": "1h"})).json()
    points = body["points"]
    assert [p["kwhConsumedAc"] for p in points] == pytest.approx([12.0] * 4)
    assert [p["readingCount"] for p in points] == [6] * 4
    assert points[0]["voltageAvg"] == pytest.approx(240.0)
    # 30-minute buckets from raw rows, the window starting mid-hour: the same readings.
    params = {"from": at(3).isoformat(), "to": at(9).isoformat(), "bucket": "30m"}
    points = (await api.get("/v1/analytics/meter/mB/series", params=params)).json()["points"]
    assert [p["kwhConsumedAc"] for p in points] == pytest.approx([6.0, 6.0])
    r = await api.get("/v1/analytics/meter/nope/series")
    assert r.status_code == 404


async def test_meter_links_name_the_vehicles_it_charged(api, scenario):
    body = (await api.get("/v1/links/meter/mA")).json()
    assert [link["vehicleId"] for link in body["history"]] == ["V5", "V1"]
    assert body["current"]["vehicleId"] == "V5"
    assert body["history"][1]["endedAt"][:19] == "2026-11-20T02:00:00"
    assert (await api.get("/v1/links/meter/mE")).json()["history"] == []
    assert (await api.get("/v1/links/meter/nope")).status_code == 404


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"bucket": "7m"}, 400),
        ({"bucket": "5m", "from": "2026-01-01T00:00:00Z", "to": "2026-11-20T00:00:00Z"}, 422),
    ],
)
async def test_bad_series_parameters(api, scenario, params, status):
    r = await api.get("/v1/analytics/vehicle/V1/series", params=params)
    assert r.status_code == status


async def test_fleet_summary(api, scenario):
    body = (await api.get("/v1/analytics/fleet", params=W)).json()
    assert body["totalKwhConsumedAc"] == pytest.approx(24 + 48 + 24 + 24 + 12)
    assert body["totalKwhDeliveredDc"] == pytest.approx(21.6 + 21.6 + 28.8 + 12 + 19.2)
    assert body["meters"] == {"total": 5, "reporting": 5, "silent": 0}
    assert body["vehicles"] == {"total": 5, "reporting": 5, "silent": 0}
    assert body["efficiencyOverall"] == pytest.approx((21.6 + 21.6 + 28.8 + 4.8) / 90, abs=1e-4)
    assert body["vehiclesByStatus"] == {
        "normal": 1,
        "low_efficiency": 2,
        "anomaly": 1,
        "idle": 0,
        "insufficient_data": 1,
    }
    assert [v["vehicleId"] for v in body["lowEfficiencyVehicles"]] == ["V1", "V5"]
    assert [v["vehicleId"] for v in body["anomalyVehicles"]] == ["V3"]
    assert body["lowEfficiencyVehicles"][0]["meterIds"] == ["mA", "mB"]


async def test_fleet_counts_silent_devices(api, scenario):
    later = {
        "from": (T0 + timedelta(hours=5)).isoformat(),
        "to": (T0 + timedelta(hours=6)).isoformat(),
    }
    body = (await api.get("/v1/analytics/fleet", params=later)).json()
    assert body["meters"] == {"total": 5, "reporting": 0, "silent": 5}
    assert body["totalKwhConsumedAc"] == 0
    assert body["efficiencyOverall"] is None
