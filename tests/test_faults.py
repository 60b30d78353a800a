"""Fault tests: the collector (a real child process) against PostgreSQL and Mosquitto processes
of the test's own, which it kills and restarts. Each ends with exactly the published set in
the history tables: nothing lost, nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import BASE_TS, Publisher, Stream, eventually
from tests.services import CollectorProcess, MosquittoProcess, PostgresProcess

pytestmark = [pytest.mark.fault, pytest.mark.services, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def postgres() -> PostgresProcess:
    pg = PostgresProcess().init().start()
    yield pg
    pg.destroy()


@pytest.fixture
async def database(postgres) -> AsyncIterator[str]:
    """A fresh database on the throwaway server for each test (created by the collector)."""
    name = f"faults_{uuid.uuid4().hex[:8]}"
    yield postgres.dsn(name)
    conn = await asyncpg.connect(postgres.dsn())
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


@pytest.fixture
def broker(tmp_path) -> MosquittoProcess:
    mq = MosquittoProcess(tmp_path / "mosquitto").start()
    yield mq
    mq.kill()


@pytest.fixture
def collector_env(database, broker) -> dict[str, str]:
    return {
        "DATABASE_URL": database,
        "MQTT_URL": broker.url,
        "MQTT_CLIENT_ID": f"fault-{uuid.uuid4().hex[:8]}",
        "HTTP_ENABLED": "false",
        "BATCH_SIZE": "1000",
        "FLUSH_INTERVAL_MS": "50",
        "MQTT_RECONNECT_MAX_S": "2",
        "DB_RETRY_MAX_S": "1",
    }


@pytest.fixture
def collectors(tmp_path):
    started: list[CollectorProcess] = []

    def start(env: dict[str, str], name: str = "collector") -> CollectorProcess:
        proc = CollectorProcess(env, tmp_path / f"{name}-{len(started)}.log").start()
        started.append(proc)
        proc.wait_for_log('"mqtt.connected"')
        return proc

    yield start
    for proc in started:
        proc.kill()


async def stored_keys(dsn: str) -> tuple[set, set, int, int]:
    """(meter keys, vehicle keys, meter rows, vehicle rows); rows == keys means no duplicates."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        meters = await conn.fetch("SELECT meter_id, ts FROM meter_readings")
        vehicles = await conn.fetch("SELECT vehicle_id, ts FROM vehicle_readings")
    finally:
        await conn.close()
    return ({tuple(r) for r in meters}, {tuple(r) for r in vehicles}, len(meters), len(vehicles))


async def stored_count(dsn: str) -> int:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return -1
    try:
        return await conn.fetchval(
            "SELECT (SELECT count(*) FROM meter_readings) + (SELECT count(*) FROM vehicle_readings)"
        )
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


async def assert_exactly(dsn: str, *streams: Stream, timeout: float = 60) -> None:
    meters: set = set()
    vehicles: set = set()
    for stream in streams:
        m, v = stream.expected_keys()
        meters |= m
        vehicles |= v
    total = len(meters) + len(vehicles)
    await eventually(lambda: stored_count(dsn), lambda n: n >= total, timeout=timeout, interval=0.2)
    await asyncio.sleep(1)  # a late duplicate would be a row too many, give it time to show
    # A statement planned while a collector's maintenance attaches the partition its rows
    # were just moved into can miss them, once (seen in CI when a restarted collector moved
    # a day out of the default partition): read again until the set is whole, or time out.
    expected = (meters, vehicles, len(meters), len(vehicles))
    for _ in range(20):
        got_m, got_v, rows_m, rows_v = got = await stored_keys(dsn)
        if got == expected:
            break
        await asyncio.sleep(0.5)
    assert got_m == meters, f"missing {len(meters - got_m)}, unexpected {len(got_m - meters)}"
    assert got_v == vehicles, f"missing {len(vehicles - got_v)}, unexpected {len(got_v - vehicles)}"
    assert (rows_m, rows_v) == (len(meters), len(vehicles))


def publish_in_background(
    url: str, messages: list[tuple[str, bytes]], rate: float | None = None
) -> asyncio.Task[None]:
    """Publish at QoS 1 in a thread (at ``rate`` messages/s if given) until all are acked."""

    def run() -> None:
        with Publisher(url) as pub:
            if rate is None:
                pub.publish_all(messages, timeout=180)
                return
            step = max(1, int(rate / 20))
            started = time.monotonic()
            for i in range(0, len(messages), step):
                pub.publish_all(messages[i : i + step], timeout=180)
                ahead = started + (i + step) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    return asyncio.ensure_future(asyncio.to_thread(run))


async def test_sigkill_mid_stream_then_restart_loses_nothing(
    broker, collector_env, collectors, database
):
    stream = Stream("", devices=100, per_device=100)  # 20,000 readings
    first = collectors(collector_env)
    publishing = publish_in_background(broker.url, stream.messages())
    await eventually(lambda: stored_count(database), lambda n: n >= 3000, timeout=60, interval=0.02)
    first.kill()  # SIGKILL: no flush, no acks for what was received but not committed
    at_kill = await stored_count(database)
    assert at_kill < 20000, "the kill must land mid-stream"
    collectors(collector_env)
    await publishing
    await assert_exactly(database, stream)


async def test_database_unreachable_for_10_s_loses_nothing_and_memory_stays_bounded(
    postgres, broker, collector_env, collectors, database
):
    env = {**collector_env, "BUFFER_CAPACITY": "2000"}
    proc = collectors(env)
    stream = Stream("", devices=50, per_device=60)  # 6,000 readings over ~15 s
    publishing = publish_in_background(broker.url, stream.messages(), rate=400)
    await eventually(lambda: stored_count(database), lambda n: n > 500, timeout=30)
    postgres.stop("fast")
    outage_started = time.monotonic()
    await asyncio.sleep(10)
    postgres.start()
    outage = time.monotonic() - outage_started
    assert outage >= 10
    await publishing
    await assert_exactly(database, stream)

    log = [json.loads(line) for line in proc.log_text().splitlines() if line.startswith("{")]
    retries = [e for e in log if e["event"] == "writer.retrying"]
    assert retries, "the writer must have retried while the database was down"
    assert {e["database"] for e in retries} == {f"127.0.0.1:{postgres.port}"}  # to where
    assert any(e["event"] == "writer.recovered" for e in log)
    # Stopped taking messages instead of growing: never more than the capacity held.
    assert max(e["buffered"] for e in retries) <= 2000


async def test_broker_restarts_with_persistence_lose_nothing(
    broker, collector_env, collectors, database
):
    a = Stream("", devices=20, per_device=10)
    b = Stream("", devices=20, per_device=10, start=BASE_TS + timedelta(days=1))
    c = Stream("", devices=50, per_device=40, start=BASE_TS + timedelta(days=2))

    first = collectors(collector_env)
    await asyncio.to_thread(_publish, broker.url, a.messages())
    await assert_exactly(database, a)

    # Collector down: B waits in the broker for the collector's persistent session...
    started = time.monotonic()
    assert first.terminate() == 0
    assert time.monotonic() - started < 5
    await asyncio.to_thread(_publish, broker.url, b.messages())
    # ...and survives a broker restart (persistence) before the collector comes back.
    broker.restart()
    second = collectors(collector_env)
    await assert_exactly(database, a, b)

    # Broker restart in the middle of a stream: the collector reconnects with backoff.
    publishing = publish_in_background(broker.url, c.messages(), rate=2000)
    await asyncio.sleep(1.5)
    broker.restart()
    await publishing
    await assert_exactly(database, a, b, c)
    second.wait_for_log('"mqtt.connected"', count=2)
    assert '"mqtt.disconnected"' in second.log_text()
    # the line says where it could not connect (issue 26: connection refused, to where?)
    assert f'"broker": "127.0.0.1:{broker.port}"' in second.log_text()


async def test_sigterm_while_the_database_is_down_exits_and_loses_nothing(
    postgres, broker, collector_env, collectors, database
):
    env = {**collector_env, "SHUTDOWN_TIMEOUT_S": "2"}
    proc = collectors(env)
    stream = Stream("", devices=30, per_device=10)
    postgres.stop("fast")
    try:
        await asyncio.to_thread(_publish, broker.url, stream.messages())
        await asyncio.sleep(0.5)
        started = time.monotonic()
        assert await asyncio.to_thread(proc.terminate) == 0
        assert time.monotonic() - started < 8, "exit within the shutdown deadline"
        assert '"writer.abandoned"' in proc.log_text()
    finally:
        postgres.start()
    collectors(env)  # same session: the broker redelivers what was never acknowledged
    await assert_exactly(database, stream)


def _publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    with Publisher(url) as pub:
        pub.publish_all(messages, timeout=120)


def test_throwaway_services_are_not_the_shared_ones(postgres, broker):
    assert postgres.port != 5432
    assert broker.port != 1883
    assert Path(broker.conf).read_text().count("include_dir") == 1


async def test_two_collectors_share_the_load_and_a_sigkilled_one_loses_nothing(
    broker, collector_env, collectors, database
):
    stream = Stream("", devices=100, per_device=100)  # 20,000 readings
    shared = {**collector_env, "MQTT_SHARED_GROUP": "collectors"}
    first = collectors({**shared, "MQTT_CLIENT_ID": "shared-a"}, name="a")
    collectors({**shared, "MQTT_CLIENT_ID": "shared-b"}, name="b")
    publishing = publish_in_background(broker.url, stream.messages())
    await eventually(lambda: stored_count(database), lambda n: n >= 4000, timeout=60, interval=0.02)
    first.kill()
    assert await stored_count(database) < 20000, "the kill must land mid-stream"
    await publishing
    # Mosquitto keeps routing the dead instance's share to its session meanwhile; systemd or
    # the container runtime restarts it, and its session gives back all it held.
    collectors({**shared, "MQTT_CLIENT_ID": "shared-a"}, name="a-again")
    await assert_exactly(database, stream)


async def test_leave_retires_an_instance_without_losing_its_share(
    broker, collector_env, collectors, database, tmp_path
):
    first_stream = Stream("", devices=50, per_device=20)  # 2,000
    later = Stream("", devices=50, per_device=20, start=BASE_TS + timedelta(days=1))
    shared = {**collector_env, "MQTT_SHARED_GROUP": "collectors"}
    a_env = {**shared, "MQTT_CLIENT_ID": "shared-a"}
    a = collectors(a_env, name="a")
    collectors({**shared, "MQTT_CLIENT_ID": "shared-b"}, name="b")
    assert a.terminate() == 0  # stopped for good: its share now waits in its session
    await asyncio.to_thread(_publish, broker.url, first_stream.messages())
    await asyncio.sleep(1)
    assert await stored_count(database) < 2000, "part of the load waits in a's session"

    leave = CollectorProcess(a_env, tmp_path / "leave.log", command="leave").start()
    assert await asyncio.to_thread(leave.proc.wait, 60) == 0, leave.log_text()
    assert "readings stored from session 'shared-a', which is deleted" in leave.log_text()
    await assert_exactly(database, first_stream)

    # From now on b gets everything: nothing is routed to a's old session any more.
    await asyncio.to_thread(_publish, broker.url, later.messages())
    await assert_exactly(database, first_stream, later, timeout=30)
