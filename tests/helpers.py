"""Test helpers: readings, publishers, waiting for a condition."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from collector.ingest.batch import Batch
from collector.ingest.readings import MeterReading, VehicleReading
from collector.ingest.store import write_batch
from collector.ingest.streams import STREAMS

T = TypeVar("T")
ADMIN_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MQTT_URL = os.environ.get("TEST_MQTT_URL", "mqtt://127.0.0.1:1883")


def database_url_for(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


BASE_TS = datetime(2026, 2, 9, 10, 0, tzinfo=UTC)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    timeout: float = 10.0,
    interval: float = 0.05,
) -> T:
    """Call ``probe`` until ``until(result)`` holds; fail with the last result after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last value: {result!r}")
        await asyncio.sleep(interval)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def meter(device: str, ts: datetime, kwh: float = 1.42, voltage: float = 230.5) -> dict[str, Any]:
    return {"meterId": device, "kwhConsumedAc": kwh, "voltage": voltage, "timestamp": iso(ts)}


def vehicle(
    device: str, ts: datetime, soc: float = 68.2, kwh: float = 1.18, temp: float = 31.4
) -> dict[str, Any]:
    return {
        "vehicleId": device,
        "soc": soc,
        "kwhDeliveredDc": kwh,
        "batteryTemp": temp,
        "timestamp": iso(ts),
    }


def topic_for(reading: dict[str, Any], prefix: str = "") -> str:
    base = (
        f"meters/{reading['meterId']}/reading"
        if "meterId" in reading
        else f"vehicles/{reading['vehicleId']}/reading"
    )
    return f"{prefix}/{base}" if prefix else base


@dataclass(frozen=True)
class Stream:
    """A deterministic set of readings: ``devices`` meters and vehicles, ``n`` of each."""

    prefix: str
    devices: int
    per_device: int
    start: datetime = BASE_TS

    def messages(self) -> list[tuple[str, bytes]]:
        out = []
        for i in range(self.per_device):
            ts = self.start + timedelta(minutes=i)
            for d in range(self.devices):
                for reading in (
                    meter(f"m{d}", ts, kwh=1 + d / 100 + i / 1000),
                    vehicle(f"v{d}", ts, soc=min(100.0, 10 + i / 10)),
                ):
                    out.append((topic_for(reading, self.prefix), json.dumps(reading).encode()))
        return out

    def expected_keys(self) -> tuple[set[tuple[str, datetime]], set[tuple[str, datetime]]]:
        times = [self.start + timedelta(minutes=i) for i in range(self.per_device)]
        meters = {(f"m{d}", ts) for d in range(self.devices) for ts in times}
        vehicles = {(f"v{d}", ts) for d in range(self.devices) for ts in times}
        return meters, vehicles


class Publisher:
    """A paho publisher (QoS 1) that returns only when the broker acknowledged everything.

    paho's network thread reconnects by itself and resends unacknowledged QoS 1 messages,
    like a real device, so a broker restart does not lose what the test counts as published.
    """

    def __init__(self, url: str, *, max_inflight: int = 1000, protocol: int = paho.MQTTv311):
        endpoint = urlsplit(url)
        self.host, self.port = endpoint.hostname or "127.0.0.1", endpoint.port or 1883
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-pub-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 1)

    def __enter__(self) -> Publisher:
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish_all(self, messages: Iterable[tuple[str, bytes]], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            if info.rc == paho.MQTT_ERR_NO_CONN:
                # Published while reconnecting: paho keeps the message and sends it once
                # connected again, but marks it so that wait_for_publish() would raise.
                info.rc = paho.MQTT_ERR_SUCCESS
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError(f"message {info.mid} not acknowledged within {timeout} s")


def publish(url: str, messages: Iterable[tuple[str, bytes]], **kwargs: Any) -> None:
    """Publish ``messages`` at QoS 1 and wait for every PUBACK."""
    with Publisher(url, **kwargs) as pub:
        pub.publish_all(messages)


async def load(
    conn: Any,
    meters: Iterable[tuple[str, datetime, float, float]] = (),
    vehicles: Iterable[tuple[str, datetime, float, float, float]] = (),
) -> None:
    """Store readings through the writer's own statement (history and current tables).

    meters: (meterId, ts, kwhConsumedAc, voltage);
    vehicles: (vehicleId, ts, soc, kwhDeliveredDc, batteryTemp).
    """

    received = datetime.now(UTC)
    m = [MeterReading(meterId=d, timestamp=t, kwhConsumedAc=k, voltage=v) for d, t, k, v in meters]
    v = [
        VehicleReading(vehicleId=d, timestamp=t, soc=s, kwhDeliveredDc=k, batteryTemp=b)
        for d, t, s, k, b in vehicles
    ]
    await write_batch(conn, Batch.of([*m, *v], received), 60)


async def arrived_live(conn: asyncpg.Connection, stream: str, devices: Iterable[str]) -> None:
    """Let the devices' latest readings have arrived when they were taken: devices that were
    live and then fell silent (a reading ingested late, as tests do, is a replay)."""
    s = STREAMS[stream]  # type: ignore[index]
    await conn.execute(
        f"UPDATE {s.current} SET received_at = ts WHERE {s.device} = ANY($1::text[])",
        list(devices),
    )
