"""Voltage, state of charge and battery temperature are optional (issue 27: most real
devices send energy alone): stored as null, averaged over the readings that had them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from collector.ingest.batch import Batch
from collector.ingest.readings import MeterReading, VehicleReading
from collector.ingest.store import write_batch

pytestmark = pytest.mark.services

HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)


async def test_a_missing_value_is_null_and_averages_count_only_the_readings_with_it(db, api):
    meters = [
        MeterReading(meterId="opt-m", timestamp=HOUR + timedelta(minutes=i), kwhConsumedAc=1.0,
                     voltage=v)
        for i, v in enumerate([230.0, 232.0, None])
    ]  # fmt: skip
    vehicles = [
        VehicleReading(vehicleId="opt-v", timestamp=HOUR + timedelta(minutes=i), kwhDeliveredDc=0.9)
        for i in range(3)
    ]
    await write_batch(db, Batch.of([*meters, *vehicles], datetime.now(UTC)), 60)
    hourly = await db.fetchrow(
        "SELECT readings, voltage_n, voltage_sum, voltage_min FROM meter_hourly "
        "WHERE meter_id = 'opt-m'"
    )
    assert tuple(hourly) == (3, 2, 462.0, 230.0)
    status = (await api.get("/v1/status/meter/opt-m")).json()
    assert status["voltage"] is None and status["kwhConsumedAc"] == 1.0
    vehicle = (await api.get("/v1/status/vehicle/opt-v")).json()
    assert vehicle["soc"] is None and vehicle["batteryTemp"] is None
    # the whole hour (rollups) and a part of it (raw rows) average the same way
    for start, end in [(HOUR, HOUR + timedelta(hours=1)), (HOUR, HOUR + timedelta(minutes=30))]:
        params = {"from": start.isoformat(), "to": end.isoformat()}
        body = (await api.get("/v1/analytics/meter/opt-m", params=params)).json()
        assert body["readingCount"] == 3
        assert body["voltage"]["avg"] == 231.0 and body["voltage"]["min"] == 230.0, body
        v = (await api.get("/v1/analytics/vehicle/opt-v", params=params)).json()
        assert v["batteryTemp"]["avg"] is None and v["soc"]["max"] is None
        assert v["kwhDeliveredDc"]["sum"] == pytest.approx(2.7)
    series = (
        await api.get(
            "/v1/analytics/meter/opt-m/series",
            params={"from": HOUR.isoformat(), "to": (HOUR + timedelta(hours=1)).isoformat()},
        )
    ).json()
    assert [p["voltageAvg"] for p in series["points"]] == [231.0]
    # the dashboard: a dash and no empty charts for what a device does not send
    vehicle_page = (await api.get("/dashboard/vehicles/opt-v")).text
    assert 'id="no-battery"' in vehicle_page and 'data-chart="soc"' not in vehicle_page
    assert 'id="battery-temp">–<' in vehicle_page
    meter_page = (await api.get("/dashboard/meters/opt-m")).text
    assert 'data-chart="voltage"' in meter_page and 'id="no-voltage"' not in meter_page
