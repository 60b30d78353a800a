"""Payload mappings end to end (issue 27): the shipped examples against the real broker and
database. Registers are booked from Shelly's Wh, Tasmota's local time is read in its zone,
a redelivered message books nothing twice, a retained message and one without energy are
ignored (counted, not dead-lettered)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiomqtt
import httpx
import pytest

from collector.sources.mappings.load import under_prefix
from tests.helpers import MQTT_URL, eventually, publish

pytestmark = pytest.mark.services

SOURCES = Path(__file__).parent.parent / "deploy" / "sources"
#: The examples loaded together (shelly-pro3em takes the same topics as shelly-gen2).
USED = ["shelly-gen2", "tasmota", "zigbee2mqtt", "everest", "dsmr-reader", "ha-statestream"]


def prefixed_sources(folder: Path, prefix: str) -> Path:
    """The shipped files, each topic under the test's prefix (the broker is shared)."""
    folder.mkdir()
    for name in USED:
        text = (SOURCES / f"{name}.toml").read_text()
        (folder / f"{name}.toml").write_text(under_prefix(text, prefix))
    return folder


TOKEN = "write-token-0123456789"


async def sources_api(service, prefix: str, db) -> None:
    """GET /v1/sources lists them with their counts; POST /v1/sources/test tells what a
    message would become and stores nothing (write token)."""
    base = f"http://127.0.0.1:{service.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as api:
        listed = (await api.get("/v1/sources")).json()
        by_name = {s["name"]: s for s in listed["sources"]}
        assert set(by_name) == {*USED[:-1], "ha-grid-import"}
        assert by_name["zigbee2mqtt"]["subscription"] == f"{prefix}/zigbee2mqtt/+"
        assert by_name["zigbee2mqtt"]["messages"] == {"stored": 1, "ignored": 2, "dead_lettered": 0}
        rows = await db.fetchval("SELECT count(*) FROM meter_readings")

        async def test(topic: str, payload: object, **more: object) -> dict:
            r = await api.post(
                "/v1/sources/test",
                json={"topic": topic, "payload": payload, **more},
                headers={"authorization": f"Bearer {TOKEN}"},
            )
            assert r.status_code == 200, r.text
            return r.json()

        tasmota = {"Time": "2026-01-15T13:00:00", "ENERGY": {"Total": 7.25, "Voltage": 229}}
        got = await test(f"{prefix}/tele/plug-x/SENSOR", tasmota)
        assert (got["source"], got["outcome"]) == ("tasmota", "stored")
        assert got["readings"] == [
            {"stream": "meter", "meterId": "tasmota-plug-x", "kwhRegisterAc": 7.25,
             "voltage": 229.0, "timestamp": "2026-01-15T12:00:00+00:00"}
        ]  # fmt: skip
        power = {"method": "NotifyStatus", "params": {"ts": 1.0, "switch:0": {"apower": 3}}}
        got = await test(f"{prefix}/s1/events/rpc", power)
        assert (got["outcome"], got["why"]) == ("ignored", "no_energy")
        got = await test(f"{prefix}/zigbee2mqtt/p", {"energy": 2}, retained=True)
        assert (got["outcome"], got["why"]) == ("ignored", "retained")
        got = await test(f"{prefix}/tele/plug-x/SENSOR", "not json")
        assert got["outcome"] == "dead_lettered" and "source tasmota" in got["rejected"]["detail"]
        assert (await test("nobody/listens/here", {}))["outcome"] == "no_source"
        native = await test(
            f"{prefix}/meters/m-1/reading",
            {"meterId": "m-1", "kwhConsumedAc": 0.5, "timestamp": "2026-01-15T12:00:00Z"},
        )
        assert (native["source"], native["outcome"]) == ("native", "stored")
        assert await db.fetchval("SELECT count(*) FROM meter_readings") == rows  # nothing stored
        refused = await api.post("/v1/sources/test", json={"topic": "x", "payload": 1})
        assert refused.status_code == 401


def shelly(total_wh: float, ts: datetime) -> bytes:
    return json.dumps(
        {
            "method": "NotifyStatus",
            "params": {"ts": ts.timestamp(), "switch:0": {"aenergy": {"total": total_wh}}},
        }
    ).encode()


async def test_the_shipped_mappings_store_what_devices_send(start_collector, db, prefix, tmp_path):
    folder = prefixed_sources(tmp_path / "sources", prefix)
    z2m = f"{prefix}/zigbee2mqtt/garage-plug"
    # a retained state from before the collector subscribed: old, not a new reading
    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        await client.publish(z2m, json.dumps({"energy": 1.20}).encode(), qos=1, retain=True)
    try:
        service = await start_collector(sources_file=str(folder), ingest_tokens=TOKEN)
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
        rpc = f"{prefix}/shellyplus1pm-a1/events/rpc"
        berlin = (t0 + timedelta(hours=1)).replace(tzinfo=None)  # a local time, no offset
        messages = [
            (rpc, shelly(12_000.0, t0)),
            (rpc, shelly(12_500.0, t0 + timedelta(minutes=1))),
            (rpc, shelly(12_500.0, t0 + timedelta(minutes=1))),  # redelivered
            (rpc, json.dumps({"method": "NotifyStatus", "params": {"ts": 1.0}}).encode()),
            (
                f"{prefix}/tele/plug-k/SENSOR",
                json.dumps({"Time": berlin.isoformat(), "ENERGY": {"Total": 3.5}}).encode(),
            ),
            (z2m, json.dumps({"energy": 1.25, "voltage": 231}).encode()),
            (f"{prefix}/zigbee2mqtt/hall-sensor", json.dumps({"temperature": 20.5}).encode()),
            (f"{prefix}/homeassistant/sensor/grid_energy_import/state", b"14523.871"),
            (
                f"{prefix}/everest_api/evse-1/var/powermeter",
                json.dumps(
                    {"timestamp": t0.timestamp(), "energy_Wh_import": {"total": 4611.95},
                     "voltage_V": {"L1": 230.1}}
                ).encode(),
            ),
            (
                f"{prefix}/dsmr/json",
                json.dumps(
                    {"timestamp": t0.isoformat(), "electricity_delivered_1": "1234.567",
                     "electricity_delivered_2": "2345.678", "phase_voltage_l1": "231.0"}
                ).encode(),
            ),
        ]  # fmt: skip
        await asyncio.to_thread(publish, MQTT_URL, messages)

        async def rows() -> dict[str, list[tuple]]:
            got = await db.fetch(
                "SELECT meter_id, ts, kwh_register_ac, kwh_consumed_ac FROM meter_readings "
                "ORDER BY meter_id, ts"
            )
            out: dict[str, list[tuple]] = {}
            for r in got:
                out.setdefault(r["meter_id"], []).append(tuple(r)[1:])
            return out

        stored = await eventually(
            rows, lambda r: len(r) == 6 and len(r["shelly-shellyplus1pm-a1"]) == 2, 15
        )
        first, second = stored["shelly-shellyplus1pm-a1"]
        assert (first[0], first[1]) == (t0, 12.0) and second[1] == 12.5
        assert second[2] == pytest.approx(0.5)  # booked from the register: 500 Wh
        # Tasmota's local time read as Europe/Berlin (UTC+1 in winter, UTC+2 in summer)
        offset = ZoneInfo("Europe/Berlin").utcoffset(berlin)
        assert stored["tasmota-plug-k"] == [(t0 + timedelta(hours=1) - offset, 3.5, 0.0)]
        assert [r[1] for r in stored["z2m-garage-plug"]] == [1.25]  # the retained 1.20: ignored
        assert [r[1] for r in stored["ha-grid-import"]] == [14523.871]
        assert stored["everest-evse-1"] == [(t0, 4.61195, 0.0)]  # Wh -> kWh, exactly
        assert stored["dsmr-p1"] == [(t0, 3580.245, 0.0)]  # the two tariffs summed
        assert await db.fetchval("SELECT count(*) FROM rejected_messages") == 0
        sample = service.metrics.registry.get_sample_value
        assert (
            sample(
                "collector_mapped_messages_total", {"source": "zigbee2mqtt", "outcome": "ignored"}
            )
            == 2
        )
        assert (
            sample(
                "collector_mapped_messages_total", {"source": "shelly-gen2", "outcome": "ignored"}
            )
            == 1
        )
        assert (
            sample(
                "collector_mapped_messages_total", {"source": "shelly-gen2", "outcome": "stored"}
            )
            == 3
        )
    finally:
        async with aiomqtt.Client("127.0.0.1", 1883) as client:
            await client.publish(z2m, b"", qos=1, retain=True)


async def test_the_pro3em_mapping_books_its_total_from_wh(start_collector, db, prefix, tmp_path):
    """shelly-pro3em takes the same topics as shelly-gen2: on its own here."""
    text = (SOURCES / "shelly-pro3em.toml").read_text()
    (tmp_path / "pro3em.toml").write_text(under_prefix(text, prefix))
    await start_collector(sources_file=str(tmp_path / "pro3em.toml"))
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    topic = f"{prefix}/shellypro3em-c8/events/rpc"

    def status(wh: float, at: datetime) -> bytes:
        params = {"ts": at.timestamp(), "emdata:0": {"total_act": wh}, "em:0": {"a_voltage": 229.8}}
        return json.dumps({"method": "NotifyStatus", "params": params}).encode()

    await asyncio.to_thread(
        publish,
        MQTT_URL,
        [(topic, status(3192.55, t0)), (topic, status(3292.55, t0 + timedelta(minutes=1)))],
    )
    rows = await eventually(
        lambda: db.fetch(
            "SELECT kwh_register_ac, kwh_consumed_ac, voltage FROM meter_readings "
            "WHERE meter_id = 'shellypro3em-c8' ORDER BY ts"
        ),
        lambda r: len(r) == 2,
        15,
    )
    assert [tuple(r) for r in rows] == [(3.19255, 0.0, 229.8), (3.29255, pytest.approx(0.1), 229.8)]
