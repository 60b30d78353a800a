"""`energy-collector demo`: starts the whole system, shows data, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import asyncpg
import pytest

from collector.tools.local_services import wait_port_closed
from tests.helpers import ADMIN_URL, MQTT_URL, database_url_for
from tests.test_alerts_e2e import retained

pytestmark = pytest.mark.services


class DemoProcess:
    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={"PATH": os.environ["PATH"], **env},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                match = re.search(pattern, line)
                if match:
                    return match
            try:
                self.lines.append(self._queue.get(timeout=0.2))
            except queue.Empty:
                if self.proc.poll() is not None and self._queue.empty():
                    break
        raise AssertionError(f"{pattern!r} not printed; output:\n{''.join(self.lines)}")

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(60)
        self._reader.join(5)  # it ends with the output
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_for_data(api: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet = get_json(f"{api}/v1/analytics/fleet")
        # 4 meters, and the demo's OCPP chargers' connectors are meters too
        if fleet["vehiclesByStatus"]["low_efficiency"] >= 1 and fleet["vehicles"]["total"] == 4:
            return fleet
        time.sleep(0.5)
    raise AssertionError(f"no analytics within {timeout} s: {fleet}")


def wait_for_alerts(api: str, vehicles: set[str], timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alerts = get_json(f"{api}/v1/alerts?rule=low_efficiency&state=firing")["alerts"]
        if vehicles and {a["deviceId"] for a in alerts} >= vehicles:
            return alerts
        time.sleep(0.5)
    raise AssertionError(f"low_efficiency not firing for {vehicles} within {timeout} s: {alerts}")


async def database_exists(name: str) -> bool:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await admin.close()


async def test_demo_on_the_local_services(tmp_path):
    name = f"energy_demotest_{uuid.uuid4().hex[:6]}"
    demo = DemoProcess(
        {"DATABASE_URL": database_url_for(ADMIN_URL, name), "MQTT_URL": MQTT_URL},
        "--meters=4",
        "--vehicles=4",
        "--speed=100000",
        "--port=0",
    )
    try:
        # a database of its own, so two demos neither share nor drop each other's
        using = demo.wait_for(rf"using the PostgreSQL at 127.0.0.1:\d+, database ({name}_demo_\w+)")
        own = using[1]
        demo.wait_for(r"using the Mosquitto at 127.0.0.1:\d+")
        prefix = demo.wait_for(r"the demo's topics start with (\S+)/\)")[1]
        api = demo.wait_for(r"API docs +(http://127.0.0.1:\d+)/docs")[1]
        demo.wait_for(r"Press Ctrl-C to stop")
        fleet = await asyncio.to_thread(wait_for_data, api)
        assert fleet["vehicles"]["total"] == 4
        # the faulty chargers' vehicles: their low_efficiency alerts fire
        low = {v["vehicleId"] for v in fleet["lowEfficiencyVehicles"]}
        firing = await asyncio.to_thread(wait_for_alerts, api, low)
        assert {a["severity"] for a in firing} == {"warning"}
        # the replay is no silence: only the alerts the demo announces
        assert get_json(f"{api}/v1/alerts?rule=device_silent")["alerts"] == []
        # its OCPP chargers charge live: sessions with energy
        deadline = time.monotonic() + 60
        while not get_json(f"{api}/v1/sessions?state=ended")["sessions"]:
            assert time.monotonic() < deadline, "no OCPP session ended within 60 s"
            await asyncio.sleep(1)
        chargers = get_json(f"{api}/v1/chargers")["chargers"]
        assert {c["protocol"] for c in chargers} == {"ocpp1.6", "ocpp2.0.1"}
        assert await database_exists(own)
        assert await asyncio.to_thread(demo.interrupt) == 0, "".join(demo.lines)
    finally:
        demo.kill()
    assert "everything it started is stopped and removed" in "".join(demo.lines)
    assert not await database_exists(own)
    assert await retained(prefix) == {}, "the demo left retained alert messages"
    port = int(api.rsplit(":", 1)[1])
    await asyncio.to_thread(wait_port_closed, port, 5)


async def test_demo_starts_its_own_services_when_none_answer():
    before = {d for d in os.listdir("/tmp") if d.startswith(("energy-pg-", "energy-demo-"))}
    demo = DemoProcess(
        {
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/energy",
            "MQTT_URL": "mqtt://127.0.0.1:1",
        },
        "--meters=4",
        "--vehicles=4",
        "--speed=100000",
        "--port=0",
    )
    try:
        demo.wait_for(r"no PostgreSQL at 127.0.0.1:1 \(")
        pg_port = int(demo.wait_for(r"started a throwaway PostgreSQL on 127.0.0.1:(\d+)")[1])
        demo.wait_for(r"no MQTT broker at 127.0.0.1:1 \(")
        mq_port = int(demo.wait_for(r"started a throwaway Mosquitto on 127.0.0.1:(\d+)")[1])
        api = demo.wait_for(r"API docs +(http://127.0.0.1:\d+)/docs", timeout=90)[1]
        await asyncio.to_thread(wait_for_data, api)
        assert await asyncio.to_thread(demo.interrupt) == 0, "".join(demo.lines)
    finally:
        demo.kill()
    for port in (pg_port, mq_port):
        await asyncio.to_thread(wait_port_closed, port, 10)
    after = {d for d in os.listdir("/tmp") if d.startswith(("energy-pg-", "energy-demo-"))}
    assert after <= before, "the demo left its files behind"
