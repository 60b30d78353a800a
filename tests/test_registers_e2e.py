"""Cumulative registers end to end: over MQTT and HTTP, into the real database, out of the
API, each case of the issue's table, late and repeated readings, a rollover, a replacement."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.helpers import MQTT_URL, eventually, iso, publish

pytestmark = pytest.mark.services

T0 = datetime(2026, 2, 9, 10, 0, tzinfo=UTC)
WINDOW = f"from={iso(T0 - timedelta(hours=1))}&to={iso(T0 + timedelta(hours=3))}"


def meter(device: str, minute: int, register: float, voltage: float = 230.0) -> dict:
    return {
        "meterId": device,
        "kwhRegisterAc": register,
        "voltage": voltage,
        "timestamp": iso(T0 + timedelta(minutes=minute)),
    }


def vehicle(device: str, minute: int, register: float) -> dict:
    return {
        "vehicleId": device,
        "soc": 20.0 + minute / 10,
        "kwhRegisterDc": register,
        "batteryTemp": 25.0,
        "timestamp": iso(T0 + timedelta(minutes=minute)),
    }


async def booked(db, table: str, device: str) -> list[tuple[float, str]]:
    kind = table.removesuffix("s")
    kwh = "kwh_consumed_ac" if kind == "meter" else "kwh_delivered_dc"
    rows = await db.fetch(
        f"SELECT {kwh} AS kwh, register_quality AS q FROM {kind}_readings "
        f"WHERE {kind}_id = $1 ORDER BY ts",
        device,
    )
    return [(round(r["kwh"], 6), r["q"]) for r in rows]


#: (case, registers in time order, energy booked, the qualities) as in the issue's table
TABLE = [
    ("increments", [100.0, 100.5, 101.0], [0, 0.5, 0.5], ["baseline", "ok", "ok"]),
    ("glitch", [100.0, 100.5, 0.0, 101.0], [0, 0.5, 0, 0.5], ["baseline", "ok", "glitch", "ok"]),
    ("reset", [100.0, 100.5, 0.2, 0.6], [0, 0.5, 0.2, 0.4], ["baseline", "ok", "reset", "ok"]),
    ("dip", [100.0, 100.5, 100.49, 101.0], [0, 0.5, 0, 0.5], ["baseline", "ok", "dip", "ok"]),
    ("implausible", [100.0, 100.5, 5000.0, 101.0], [0, 0.5, 0, 0.5],
     ["baseline", "ok", "quarantined", "ok"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "registers", "kwh", "quality"), TABLE, ids=[c[0] for c in TABLE])
async def test_the_table_over_http_one_request_at_a_time(api, db, case, registers, kwh, quality):
    device = f"m-{case}"
    for minute, value in enumerate(registers):
        r = await api.post("/v1/ingest/meter", json=meter(device, minute, value))
        assert r.status_code == 200, r.text
    assert await booked(db, "meters", device) == list(zip(kwh, quality, strict=True))
    body = (await api.get(f"/v1/analytics/meter/{device}?{WINDOW}")).json()
    assert body["kwhConsumedAc"]["sum"] == pytest.approx(sum(kwh))
    stats = body["registers"]
    assert stats["first"]["kwh"] == registers[0] and stats["last"]["kwh"] == registers[-1]
    assert stats["readings"] == len(registers) and not stats["provisional"]
    assert stats["resets"] == quality.count("reset")
    assert stats["glitches"] == quality.count("glitch")
    assert stats["quarantined"] == quality.count("quarantined")
    assert stats["dips"] == quality.count("dip")


@pytest.mark.parametrize(("case", "registers", "kwh", "quality"), TABLE, ids=[c[0] for c in TABLE])
async def test_the_table_over_mqtt_in_any_order(
    db, start_collector, prefix, case, registers, kwh, quality
):
    """Vehicles this time, published shuffled, in separate batches: the same bookings."""
    await start_collector()
    device = f"v-{case}"
    readings = [vehicle(device, minute, value) for minute, value in enumerate(registers)]
    shuffled = random.Random(case).sample(readings, len(readings))
    for n, reading in enumerate(shuffled, 1):
        topic = f"{prefix}/vehicles/{device}/reading"
        await asyncio.to_thread(publish, MQTT_URL, [(topic, json.dumps(reading).encode())])
        await eventually(lambda: booked(db, "vehicles", device), lambda rows, n=n: len(rows) == n)
    assert await booked(db, "vehicles", device) == list(zip(kwh, quality, strict=True))


async def test_a_drop_stays_provisional_until_the_next_reading(api, db):
    for minute, value in enumerate([100.0, 100.5, 0.2]):
        await api.post("/v1/ingest/meter", json=meter("m-prov", minute, value))
    status = (await api.get("/v1/status/meter/m-prov")).json()
    assert status["registerQuality"] == "pending_drop" and status["kwhRegisterAc"] == 0.2
    stats = (await api.get(f"/v1/analytics/meter/m-prov?{WINDOW}")).json()["registers"]
    assert stats["provisional"] and stats["pending"] == 1
    await api.post("/v1/ingest/meter", json=meter("m-prov", 3, 0.6))
    stats = (await api.get(f"/v1/analytics/meter/m-prov?{WINDOW}")).json()["registers"]
    assert not stats["provisional"] and stats["resets"] == 1
    assert await booked(db, "meters", "m-prov") == [
        (0, "baseline"), (0.5, "ok"), (0.2, "reset"), (0.4, "ok")
    ]  # fmt: skip


async def test_late_readings_split_their_interval_and_duplicates_are_absorbed(api, db):
    day = [meter("m-late", minute, 100.0 + minute * 0.25) for minute in range(0, 240, 4)]
    first, late = day[::2], day[1::2]
    r = await api.post("/v1/ingest/meter", json=first)
    assert r.status_code == 200
    before = await db.fetchval("SELECT sum(kwh_consumed_ac) FROM meter_readings")
    # The late ones, one request each in reverse: each splits a stored interval in two.
    for reading in reversed(late):
        assert (await api.post("/v1/ingest/meter", json=reading)).status_code == 200
    # And everything once more: absorbed, nothing booked twice.
    lines = "\n".join(json.dumps(x) for x in random.Random(1).sample(day, len(day)))
    r = await api.post(
        "/v1/ingest/meter", content=lines, headers={"content-type": "application/x-ndjson"}
    )
    assert r.status_code == 200
    after = await db.fetchval("SELECT sum(kwh_consumed_ac) FROM meter_readings")
    assert after == pytest.approx(before + 0.25 * 4)  # the tail past the last early reading
    assert after == pytest.approx(day[-1]["kwhRegisterAc"] - day[0]["kwhRegisterAc"])
    rows = await booked(db, "meters", "m-late")
    assert rows[0] == (0, "baseline") and all(row == (1.0, "ok") for row in rows[1:])
    hourly = await db.fetch(
        "SELECT hour, readings, kwh_sum FROM meter_hourly WHERE meter_id = 'm-late' ORDER BY hour"
    )
    assert [r["readings"] for r in hourly] == [15, 15, 15, 15]
    assert [round(r["kwh_sum"], 6) for r in hourly] == [14.0, 15.0, 15.0, 15.0]


async def test_a_rollover_with_the_wrap_set(start_collector, db):
    service = await start_collector(register_wrap_kwh="100000")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
        r = await client.post(
            "/v1/ingest/meter", json=[meter("m-wrap", 0, 99999.5), meter("m-wrap", 1, 0.3)]
        )
        assert r.status_code == 200
    assert await booked(db, "meters", "m-wrap") == [(0, "baseline"), (0.8, "rollover")]


@pytest.mark.parametrize("recorded", ["before", "after"])
async def test_a_meter_replacement_is_one_continuous_history(api, db, recorded):
    """The old register's tail up to finalKwh, then the new one from startKwh: never a
    reset, whether the replacement is recorded before or after the new readings arrive."""
    device = f"m-swap-{recorded}"
    old = [meter(device, m, v) for m, v in ((0, 100.0), (1, 100.5))]
    new = [meter(device, m, v) for m, v in ((3, 3.4), (4, 3.9))]
    swap = {"at": iso(T0 + timedelta(minutes=2)), "finalKwh": 100.7, "startKwh": 3.0}
    path = f"/v1/registers/meter/{device}/replacements"
    await api.post("/v1/ingest/meter", json=old)
    if recorded == "before":
        assert (await api.post(path, json=swap)).status_code == 201
    await api.post("/v1/ingest/meter", json=new)
    if recorded == "after":
        assert (await api.post(path, json=swap)).status_code == 201
    expected = [(0, "baseline"), (0.5, "ok"), (0.6, "replaced"), (0.5, "ok")]
    await eventually(lambda: booked(db, "meters", device), lambda rows: rows == expected)
    assert (await api.post(path, json=swap)).status_code == 200  # the same again: unchanged
    other = {**swap, "startKwh": 9.0}
    assert (await api.post(path, json=other)).status_code == 409
    listed = (await api.get(path)).json()["replacements"]
    assert [(x["finalKwh"], x["startKwh"]) for x in listed] == [(100.7, 3.0)]
    body = (await api.get(f"/v1/analytics/meter/{device}?{WINDOW}")).json()
    assert body["kwhConsumedAc"]["sum"] == pytest.approx(1.6)
    assert body["registers"]["resets"] == 0


async def test_bad_registers_are_rejected_with_a_reason(api, db):
    base = meter("m-bad", 0, 1.0)
    cases = [
        ({**base, "kwhConsumedAc": 0.5}, "ambiguous_energy"),
        ({**base, "kwhRegisterAc": -1.0}, "out_of_range"),
        ({k: v for k, v in base.items() if k != "kwhRegisterAc"}, "missing_field"),
        ({**base, "kwhRegisterAc": "12"}, "invalid_type"),
    ]
    r = await api.post("/v1/ingest/meter", json=[c for c, _ in cases])
    assert r.status_code == 422
    assert [x["reason"] for x in r.json()["rejected"]] == [reason for _, reason in cases]
    body = json.dumps({**base, "kwhRegisterAc": 1.0}).replace("1.0", "1e999").encode()
    r = await api.post(
        "/v1/ingest/meter", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["rejected"][0]["reason"] == "out_of_range"


async def test_register_and_interval_devices_mix_and_the_analytics_equal_a_hand_computation(
    api, db
):
    """A register meter charging a register vehicle, beside an interval pair: the same
    performance figures as the interval readings they stand for."""
    link = {"vehicleId": "v-r", "meterId": "m-r", "startedAt": iso(T0 - timedelta(minutes=5))}
    assert (await api.put("/v1/links", json=link)).status_code == 201
    ac = [10.0 + 0.5 * i for i in range(61)]  # 0.5 kWh a minute for an hour
    dc = [400.0 + 0.45 * i for i in range(61)]
    readings = [meter("m-r", i, ac[i]) for i in range(61)] + [
        vehicle("v-r", i, dc[i]) for i in range(61)
    ]
    assert (await api.post("/v1/ingest", json=readings)).status_code == 200
    body = (await api.get(f"/v1/analytics/performance/v-r?{WINDOW}")).json()
    assert body["totalKwhConsumedAc"] == pytest.approx(30.0)
    assert body["totalKwhDeliveredDc"] == pytest.approx(27.0)
    assert body["efficiencyRatio"] == pytest.approx(0.9) and body["status"] == "normal"
    assert body["meterReadingCount"] == 61 and not body["provisional"]
    # One device switching forms: interval readings among registers are never counted twice.
    switch = [meter("m-s", 0, 50.0), meter("m-s", 2, 51.0)]
    interval = {"meterId": "m-s", "kwhConsumedAc": 0.4, "voltage": 230.0,
                "timestamp": iso(T0 + timedelta(minutes=1))}  # fmt: skip
    await api.post("/v1/ingest/meter", json=switch)
    await api.post("/v1/ingest/meter", json=interval)  # late, between the two registers
    await eventually(
        lambda: booked(db, "meters", "m-s"),
        lambda rows: rows == [(0, "baseline"), (0.4, None), (0, "baseline")],
    )


async def test_the_device_pages_show_the_register(api, db):
    now = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)

    def at(minute: int, **reading) -> dict:
        return {**reading, "timestamp": iso(now + timedelta(minutes=minute))}

    meters = [at(i, meterId="m-page", kwhRegisterAc=v, voltage=230.0)
              for i, v in enumerate([100.0, 100.5, 0.2, 0.6, 0.9, 0.0])]  # fmt: skip
    vehicles = [at(i, vehicleId="v-page", soc=50.0, kwhRegisterDc=v, batteryTemp=25.0)
                for i, v in enumerate([10.0, 10.4, 10.8])]  # fmt: skip
    assert (await api.post("/v1/ingest", json=meters + vehicles)).status_code == 200
    page = (await api.get("/dashboard/meters/m-page?window=6h")).text
    assert 'id="registers"' in page
    assert 'id="register-resets">1<' in page and 'id="register-last">0.000<' in page
    assert 'id="register-provisional"' in page  # the last reading, a drop, is undecided
    page = (await api.get("/dashboard/vehicles/v-page?window=6h")).text
    assert 'id="register-last">10.800<' in page and 'id="register-resets">0<' in page
    metrics = (await api.get("/metrics")).text
    assert 'collector_register_bookings_total{kind="meter",quality="reset"} 1.0' in metrics
    assert 'collector_register_bookings_total{kind="vehicle",quality="baseline"} 1.0' in metrics
