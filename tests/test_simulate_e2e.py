"""`simulate` against a running collector: what it publishes is what gets stored."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from collector.tools.simulate import Simulator, SimulatorOptions
from tests.helpers import MQTT_URL, eventually

pytestmark = pytest.mark.services


async def stored(db) -> int:
    return await db.fetchval(
        "SELECT (SELECT count(*) FROM meter_readings) + (SELECT count(*) FROM vehicle_readings)"
    )


async def test_a_simulated_day_with_faults_is_stored_exactly(db, api, make_settings):
    service = api.service
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=24)
    options = SimulatorOptions(
        meters=20,
        vehicles=20,
        interval_s=300,
        speed=1_000_000,  # the whole day at once; the present is never overtaken
        start=start,
        count=20 * 2 * 288,  # one day
        faulty_share=0.1,
        duplicate_rate=0.02,
        out_of_order_rate=0.05,
        malformed_rate=0.02,
        seed=3,
        api_url=f"http://127.0.0.1:{service.http_port}",
        progress=False,
    )
    simulator = Simulator(service.settings, options)
    report = await asyncio.to_thread(simulator.run, threading.Event())
    malformed = sum(report.malformed.values())
    assert report.readings == 11_520 and report.errors == 0
    assert report.acked == report.sent == 11_520 + report.duplicates
    assert report.duplicates > 0 and report.out_of_order > 0 and malformed > 0
    assert report.links == 20

    await eventually(lambda: stored(db), lambda n: n == 11_520 - malformed, timeout=30)
    await eventually(
        # identical malformed packets (the same cut-off JSON) are one row with its repeats
        lambda: db.fetchval("SELECT coalesce(sum(repeats), 0) FROM rejected_messages"),
        lambda n: n == malformed,
    )
    await asyncio.sleep(0.5)  # nothing more arrives
    assert await stored(db) == 11_520 - malformed

    # Late packets never moved a device's state back: current = the newest stored reading.
    for kind in ("meter", "vehicle"):
        behind = await db.fetchval(
            f"""SELECT count(*) FROM {kind}_current c
                WHERE c.ts <> (SELECT max(ts) FROM {kind}_readings r
                               WHERE r.{kind}_id = c.{kind}_id)"""
        )
        assert behind == 0, kind
    assert await db.fetchval("SELECT count(*) FROM vehicle_current") == 20


async def test_the_analytics_find_the_faulty_chargers_of_a_simulated_day(db, api):
    service = api.service
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=24)
    options = SimulatorOptions(
        meters=20,
        vehicles=20,
        interval_s=300,
        speed=1_000_000,
        start=start,
        count=20 * 2 * 288,
        faulty_share=0.1,
        seed=3,
        api_url=f"http://127.0.0.1:{service.http_port}",
        progress=False,
    )
    simulator = Simulator(service.settings, options)
    await asyncio.to_thread(simulator.run, threading.Event())
    await eventually(lambda: stored(db), lambda n: n == 11_520, timeout=30)
    response = await api.get(
        "/v1/analytics/fleet",
        params={"from": start.isoformat(), "to": (start + timedelta(hours=25)).isoformat()},
    )
    assert response.status_code == 200, response.text
    fleet = response.json()
    faulty = {v for v, m in simulator.fleet.links if m in simulator.fleet.faulty_meters}
    flagged = {v["vehicleId"] for v in fleet["lowEfficiencyVehicles"]}
    assert len(faulty) == 2 and flagged == faulty, fleet
    assert fleet["anomalyVehicles"] == []
    by_status = fleet["vehiclesByStatus"]
    assert by_status["low_efficiency"] == 2
    assert by_status["normal"] + by_status["insufficient_data"] == 18
    assert by_status["normal"] >= 12  # most vehicles charge in a day
    assert 0.84 < fleet["efficiencyOverall"] < 0.92


def simulate_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "collector", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LOG_FORMAT": "json", **env},
    )


async def test_the_command_reports_what_it_sent(db, start_collector, prefix):
    await start_collector()
    result = await asyncio.to_thread(
        simulate_cli,
        "--meters=3",
        "--vehicles=2",
        "--count=50",
        "--speed=100000",
        "--seed=1",
        env={"MQTT_URL": MQTT_URL, "MQTT_TOPIC_PREFIX": prefix},
    )
    assert result.returncode == 0, result.stderr
    assert "simulated 50 readings" in result.stdout
    assert "sent 50 packets" in result.stdout and "50 acknowledged, 0 errors" in result.stdout
    await eventually(lambda: stored(db), lambda n: n == 50)


def test_the_command_says_why_it_cannot_run():
    unreachable = simulate_cli("--count=1", env={"MQTT_URL": "mqtt://127.0.0.1:1"})
    assert unreachable.returncode == 1
    assert "cannot connect to the broker at 127.0.0.1:1" in unreachable.stderr
    bad = simulate_cli("--malformed-rate=2", env={})
    assert bad.returncode == 2
    assert "a rate is between 0 and 1" in bad.stderr
    future = simulate_cli("--start=2999-01-01T00:00:00Z", "--count=1", env={"MQTT_URL": MQTT_URL})
    assert future.returncode == 1
    assert "--start is in the future" in future.stderr
