"""End to end through the local Mosquitto into PostgreSQL, with the in-process collector."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import (
    BASE_TS,
    MQTT_URL,
    Stream,
    eventually,
    iso,
    meter,
    publish,
    topic_for,
    vehicle,
)

pytestmark = pytest.mark.services

PORT = MQTT_URL.rsplit(":", 1)[1]


def mosquitto_pub(topic: str, payload: str | bytes, qos: int = 1) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    subprocess.run(
        ["mosquitto_pub", "-p", PORT, "-q", str(qos), "-t", topic, "-s"],
        input=data,
        check=True,
        timeout=10,
    )


async def count(db, table: str) -> int:
    return await db.fetchval(f"SELECT count(*) FROM {table}")


async def test_readings_from_mosquitto_pub_land_in_history_and_current(db, start_collector, prefix):
    service = await start_collector()
    m = meter("meter-001", BASE_TS, kwh=1.42, voltage=230.5)
    v = vehicle("vehicle-001", BASE_TS, soc=68.2, kwh=1.18, temp=31.4)
    started = asyncio.get_running_loop().time()
    await asyncio.to_thread(mosquitto_pub, topic_for(m, prefix), json.dumps(m))
    await asyncio.to_thread(mosquitto_pub, topic_for(v, prefix), json.dumps(v))
    await eventually(lambda: count(db, "vehicle_current"), lambda n: n == 1, timeout=5)
    assert asyncio.get_running_loop().time() - started < 1.5, "readings must land within ~1 s"

    row = await db.fetchrow("SELECT * FROM meter_readings")
    assert (row["meter_id"], row["ts"], row["kwh_consumed_ac"], row["voltage"]) == (
        "meter-001",
        BASE_TS,
        1.42,
        230.5,
    )
    assert abs((row["received_at"] - datetime.now(UTC)).total_seconds()) < 10
    row = await db.fetchrow("SELECT * FROM vehicle_readings")
    assert (
        row["vehicle_id"],
        row["ts"],
        row["soc"],
        row["kwh_delivered_dc"],
        row["battery_temp"],
    ) == ("vehicle-001", BASE_TS, 68.2, 1.18, 31.4)
    cur = await db.fetchrow("SELECT * FROM meter_current")
    assert (cur["meter_id"], cur["ts"], cur["kwh_consumed_ac"]) == ("meter-001", BASE_TS, 1.42)
    assert await count(db, "vehicle_current") == 1
    stored = service.metrics.stored
    assert stored.labels("meter")._value.get() == 1
    assert stored.labels("vehicle")._value.get() == 1


async def test_out_of_order_and_duplicate_packets(db, start_collector, prefix):
    await start_collector()
    t = [BASE_TS + timedelta(minutes=i) for i in range(4)]
    sequence = [
        meter("m1", t[0], kwh=0.0),
        meter("m1", t[2], kwh=2.0),
        meter("m1", t[1], kwh=1.0),
        meter("m1", t[2], kwh=2.0),
        meter("m1", t[0], kwh=0.0),  # duplicates
        vehicle("v1", t[3], soc=80),
        vehicle("v1", t[1], soc=60),
        vehicle("v1", t[3], soc=80),
    ]
    await asyncio.to_thread(
        publish, MQTT_URL, [(topic_for(r, prefix), json.dumps(r).encode()) for r in sequence]
    )
    await eventually(lambda: count(db, "meter_readings"), lambda n: n == 3)
    await eventually(lambda: count(db, "vehicle_readings"), lambda n: n == 2)
    await asyncio.sleep(0.3)  # anything late would show up now
    assert await count(db, "meter_readings") == 3
    assert await count(db, "vehicle_readings") == 2
    assert await db.fetchval("SELECT ts FROM meter_current WHERE meter_id = 'm1'") == t[2]
    assert await db.fetchval("SELECT kwh_consumed_ac FROM meter_current") == 2.0
    assert await db.fetchval("SELECT soc FROM vehicle_current WHERE vehicle_id = 'v1'") == 80
    assert await count(db, "rejected_messages") == 0


def future_ts() -> str:
    return iso(datetime.now(UTC) + timedelta(hours=1))


BAD_INPUTS = [
    ("meters/m1/reading", b"not json at all", "invalid_json"),
    ("meters/m1/reading", b"\xff\xfe\xfd", "invalid_json"),
    ("meters/m1/reading", b"[1,2]", "invalid_shape"),
    (
        "meters/m1/reading",
        json.dumps({"meterId": "m1", "voltage": 230, "timestamp": iso(BASE_TS)}).encode(),
        "missing_field",
    ),
    (
        "meters/m1/reading",
        json.dumps({**meter("m1", BASE_TS), "voltage": "230"}).encode(),
        "invalid_type",
    ),
    (
        "vehicles/v1/reading",
        json.dumps({**vehicle("v1", BASE_TS), "soc": 140}).encode(),
        "out_of_range",
    ),
    (
        "vehicles/v1/reading",
        json.dumps({**vehicle("v1", BASE_TS), "kwhDeliveredDc": -1}).encode(),
        "out_of_range",
    ),
    (
        "meters/m1/reading",
        json.dumps({**meter("m1", BASE_TS), "timestamp": "2026-02-09 10:00"}).encode(),
        "invalid_timestamp",
    ),
    ("meters/m1/reading", json.dumps(meter("m2", BASE_TS)).encode(), "id_mismatch"),
    ("meters/m1/reading", b"FUTURE", "future_timestamp"),
    (
        "meters/m1/reading",
        json.dumps({**meter("m1", BASE_TS), "pad": "x" * 5000}).encode(),
        "oversized",
    ),
]


async def test_every_class_of_bad_input_is_dead_lettered_with_its_reason(
    db, start_collector, prefix
):
    service = await start_collector()
    messages = []
    for topic, payload, _ in BAD_INPUTS:
        body = payload
        if payload == b"FUTURE":
            body = json.dumps({**meter("m1", BASE_TS), "timestamp": future_ts()}).encode()
        messages.append((f"{prefix}/{topic}", body))
    good = meter("m1", BASE_TS)
    messages.append((topic_for(good, prefix), json.dumps(good).encode()))
    await asyncio.to_thread(publish, MQTT_URL, messages)

    rows = await eventually(
        lambda: db.fetch("SELECT * FROM rejected_messages ORDER BY id"),
        lambda r: len(r) == len(BAD_INPUTS),
    )
    assert [r["reason"] for r in rows] == [reason for _, _, reason in BAD_INPUTS]
    for row, (topic, payload, _) in zip(rows, BAD_INPUTS, strict=True):
        assert row["topic"] == f"{prefix}/{topic}"
        assert row["detail"]
        if payload != b"FUTURE" and len(payload) <= 4096:
            assert row["payload"] == payload, "the raw payload is kept as it arrived"
    oversized = rows[-1]
    assert len(oversized["payload"]) == 4096
    assert oversized["payload_size"] > 5000
    # The good reading published after all of them is stored: bad input never stops ingest.
    await eventually(lambda: count(db, "meter_readings"), lambda n: n == 1)
    rejected = service.metrics.rejected
    assert rejected.labels("out_of_range")._value.get() == 2
    assert rejected.labels("invalid_json")._value.get() == 2


async def test_stream_of_many_readings_is_stored_exactly(db, start_collector, prefix):
    await start_collector(batch_size=200)
    stream = Stream(prefix, devices=50, per_device=20)
    await asyncio.to_thread(publish, MQTT_URL, stream.messages())
    meters, vehicles = stream.expected_keys()
    await eventually(
        lambda: count(db, "vehicle_readings"), lambda n: n == len(vehicles), timeout=30
    )
    got_m = {(r[0], r[1]) for r in await db.fetch("SELECT meter_id, ts FROM meter_readings")}
    got_v = {(r[0], r[1]) for r in await db.fetch("SELECT vehicle_id, ts FROM vehicle_readings")}
    assert got_m == meters
    assert got_v == vehicles
    assert await count(db, "meter_current") == 50


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_readings_published_while_the_collector_is_down_arrive_later(
    db, start_collector, prefix, protocol
):
    service = await start_collector(mqtt_protocol=protocol)
    service.request_stop("simulated outage")
    await asyncio.sleep(0.5)
    assert not service.sources["mqtt"].health().connected
    stream = Stream(prefix, devices=5, per_device=4)
    await asyncio.to_thread(publish, MQTT_URL, stream.messages())
    await asyncio.sleep(0.3)
    assert await count(db, "meter_readings") == 0
    await start_collector(mqtt_protocol=protocol)  # same client id: the session is resumed
    await eventually(lambda: count(db, "vehicle_readings"), lambda n: n == 20)
    assert await count(db, "meter_readings") == 20


async def test_stop_is_prompt(start_collector):
    service = await start_collector()
    started = asyncio.get_running_loop().time()
    service.request_stop("test")
    for _ in range(100):
        if not service.sources["mqtt"].health().connected:
            break
        await asyncio.sleep(0.02)
    assert asyncio.get_running_loop().time() - started < 2, "stop must not wait on timeouts"
