"""The collector on a real Citus cluster: a coordinator and two workers of the test's own
(initdb, ``shared_preload_libraries = 'citus'``, free ports), migrated by the collector.

Readings over MQTT and HTTP are stored once under a kill -9; partitions made by the
collector's maintenance are distributed; the alert engine leads; register bookings, the fleet
summary and per-vehicle analytics equal plain PostgreSQL's on the same data. Skipped, with
one line, where Citus is not installed (``make test`` builds it from ../shared/vendor/).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from api.queries import analytics
from collector.readmodel import fleet
from tests.helpers import Stream, eventually
from tests.services import CollectorProcess, MosquittoProcess, PostgresProcess, free_port
from tests.test_faults import assert_exactly, publish_in_background, stored_count

pytestmark = pytest.mark.services


def citus_installed() -> bool:
    pg_config = next(Path("/usr/lib/postgresql").glob("*/bin/pg_config"), None)
    if pg_config is None:
        return False
    libdir = subprocess.run([pg_config, "--pkglibdir"], capture_output=True, text=True).stdout
    return (Path(libdir.strip()) / "citus.so").exists()


if not citus_installed():
    pytest.skip(
        "Citus is not installed: run ../shared/vendor/build-citus.sh (make test does when it "
        "is at hand; CITUS_BUILD=path names another), or install Citus's own packages",
        allow_module_level=True,
    )


class Cluster:
    """A coordinator and two workers; ``database(name)`` makes a Citus database on all three
    (or a plain one on the coordinator alone)."""

    def __init__(self) -> None:
        settings = {"shared_preload_libraries": "citus", "max_prepared_transactions": "100"}
        self.nodes = [PostgresProcess(settings=settings).init() for _ in range(3)]
        for node in self.nodes:
            node.start()

    @property
    def coordinator(self) -> PostgresProcess:
        return self.nodes[0]

    async def database(self, name: str, *, citus: bool = True) -> str:
        for node in self.nodes if citus else self.nodes[:1]:
            conn = await asyncpg.connect(node.dsn())
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()
            if citus:
                conn = await asyncpg.connect(node.dsn(name))
                await conn.execute("CREATE EXTENSION citus")
                await conn.close()
        if citus:
            conn = await asyncpg.connect(self.coordinator.dsn(name))
            await conn.execute(
                "SELECT citus_set_coordinator_host('127.0.0.1', $1)", self.coordinator.port
            )
            for worker in self.nodes[1:]:
                await conn.execute("SELECT citus_add_node('127.0.0.1', $1)", worker.port)
            await conn.close()
        return self.coordinator.dsn(name)

    def destroy(self) -> None:
        for node in self.nodes:
            node.destroy()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    made = Cluster()
    yield made
    made.destroy()


def migrate(dsn: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "collector", "migrate"],
        env={**os.environ, "DATABASE_URL": dsn, "LOG_LEVEL": "warning"},
        capture_output=True, text=True, check=True, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    return out.stdout


async def test_the_collector_on_citus_stores_once_under_kill_9(cluster, tmp_path) -> None:
    dsn = await cluster.database(f"citus_{uuid.uuid4().hex[:6]}")
    await asyncio.to_thread(migrate, dsn)
    conn = await asyncpg.connect(dsn)
    distributed = {
        r[0] for r in await conn.fetch("SELECT logicalrelid::text FROM pg_dist_partition")
    }
    assert {"meter_readings", "meter_current", "meter_hourly", "vehicle_readings",
            "register_devices", "vehicle_meter_links"} <= distributed  # fmt: skip
    broker = MosquittoProcess(tmp_path / "mosquitto").start()
    port = free_port()
    env = {
        "DATABASE_URL": dsn,
        "MQTT_URL": broker.url,
        "MQTT_CLIENT_ID": f"citus-{uuid.uuid4().hex[:6]}",
        "PORT": str(port),
        "FLUSH_INTERVAL_MS": "50",
        "ALERT_INTERVAL_S": "2",
        "ALERT_MQTT": "false",
    }
    first = CollectorProcess(env, tmp_path / "first.log").start()
    try:
        first.wait_for_log('"mqtt.connected"', timeout=60)
        first.wait_for_log('"alerts.leading"')  # the advisory-lock leader, on the coordinator
        # a Citus database: the larger batches (CITUS_BATCH_SIZE)
        assert '"batch_size": 10000' in first.log_text()
        stream = Stream("", devices=40, per_device=100)  # 8,000 readings
        publishing = publish_in_background(broker.url, stream.messages(), rate=1500)
        await eventually(lambda: stored_count(dsn), lambda n: n >= 1000, timeout=60, interval=0.05)
        first.kill()
        assert await stored_count(dsn) < 8000, "the kill must land mid-stream"
        second = CollectorProcess(env, tmp_path / "second.log").start()
        second.wait_for_log('"mqtt.connected"', timeout=60)
        await publishing
        await assert_exactly(dsn, stream, timeout=120)
        # HTTP ingest, acknowledged after the commit on the cluster
        now = datetime.now(UTC).replace(microsecond=0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            r = await api.post("/v1/ingest/meter", json={
                "meterId": "citus-http", "kwhRegisterAc": 10.5, "timestamp": now.isoformat()
            })  # fmt: skip
            assert r.status_code == 200, r.text
            assert (await api.get("/v1/status/meter/citus-http")).status_code == 200
            fleet_now = (await api.get("/v1/analytics/fleet")).json()
            assert fleet_now["meters"]["total"] == 41
        # the rollups of the cluster add up to its history
        assert await conn.fetchval("SELECT sum(readings) FROM meter_hourly") == await conn.fetchval(
            "SELECT count(*) FROM meter_readings"
        )
        # the maintenance's day partitions are distributed with their parent
        # (a pass that lost a distributed deadlock to the batches is tried again soon)
        parts = await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) FROM pg_dist_partition "
                "WHERE logicalrelid::text LIKE 'meter_readings_p%'"
            ),
            lambda n: n >= 7,
            timeout=60,
        )
        assert parts >= 7
        assert second.terminate() == 0
    finally:
        first.kill()
        await conn.close()
        broker.kill()


def register_history(path: Path) -> None:
    """Register meters (a reset, a glitch) and interval vehicles, linked, over six hours."""
    start = datetime(2026, 11, 30, 6, tzinfo=UTC)
    lines = []
    for d in range(12):
        level = 100.0 * d
        for step in range(72):
            ts = (start + timedelta(minutes=5 * step)).isoformat()
            level += 0.3 + 0.01 * d
            value = 0.0 if (d == 3 and step == 40) else (0.2 if (d == 5 and step == 30) else level)
            if d == 5 and step > 30:
                value = 0.2 + (level - (100.0 * d + 31 * (0.3 + 0.05)))
            lines.append({"meterId": f"cm-{d}", "kwhRegisterAc": round(max(value, 0), 3),
                          "timestamp": ts})  # fmt: skip
            lines.append({"vehicleId": f"cv-{d}", "kwhDeliveredDc": 0.25 + 0.01 * d,
                          "soc": 50, "timestamp": ts})  # fmt: skip
    path.write_text("\n".join(json.dumps(x) for x in lines))


async def test_bookings_and_analytics_equal_plain_postgresql(cluster, tmp_path) -> None:
    tag = uuid.uuid4().hex[:6]
    on_citus = await cluster.database(f"citus_eq_{tag}")
    plain = await cluster.database(f"plain_eq_{tag}", citus=False)
    history = tmp_path / "history.ndjson"
    register_history(history)
    window = (datetime(2026, 11, 30, 6, 20, tzinfo=UTC), datetime(2026, 11, 30, 11, 40, tzinfo=UTC))
    results = []
    for dsn in (on_citus, plain):
        await asyncio.to_thread(migrate, dsn)
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "collector", "import", str(history), "--no-progress"],
            env={**os.environ, "DATABASE_URL": dsn, "LOG_LEVEL": "warning"},
            check=True, capture_output=True, cwd=tempfile.gettempdir(),
        )  # fmt: skip
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                """INSERT INTO vehicle_meter_links (vehicle_id, meter_id, started_at)
                   SELECT 'cv-' || d, 'cm-' || d, '2026-11-30T05:00Z'
                   FROM generate_series(0, 11) d"""
            )
            bookings = [tuple(r) for r in await conn.fetch(
                """SELECT meter_id, ts, kwh_consumed_ac, register_quality FROM meter_readings
                   ORDER BY 1, 2"""
            )]  # fmt: skip
            summary = await fleet.fleet(conn, *window)
            performance = [
                dict(await conn.fetchrow(analytics.PERFORMANCE, f"cv-{d}", *window))
                for d in range(12)
            ]
            meter_window = await analytics.meter_window(conn, "cm-3", *window)
        finally:
            await conn.close()
        results.append((bookings, summary, performance, meter_window))
    (b1, s1, p1, w1), (b2, s2, p2, w2) = results
    assert len(b1) == 12 * 72 and b1 == b2  # every reading booked the same
    assert {q for *_, q in b1} >= {"baseline", "ok", "glitch"}
    # the same figures, up to the order floats were added in (shards sum apart)
    for what, ours, theirs in (("fleet", s1, s2), ("performance", p1, p2), ("window", w1, w2)):
        a, b = plain_values(ours), plain_values(theirs)
        assert len(a) == len(b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if isinstance(x, float) and isinstance(y, float):
                assert x == pytest.approx(y, rel=1e-12, abs=1e-12), (what, i, ours, theirs)
            else:
                assert x == y, (what, i)


def plain_values(value: object) -> list[object]:
    """Every leaf of a nested result (records, dicts, tuples, lists), in order; dictionaries
    and records in key order, a list of records in the order of their values (a statement
    without ORDER BY returns its rows in any order, on Citus in the shards')."""
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in plain_values(value[key])]
    if isinstance(value, asyncpg.Record):
        return [leaf for key in sorted(value.keys()) for leaf in plain_values(value[key])]
    if isinstance(value, list) and value and isinstance(value[0], asyncpg.Record):
        value = sorted(value, key=lambda r: tuple(str(v) for v in r.values()))  # no ORDER BY
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in plain_values(item)]
    if hasattr(value, "__dataclass_fields__"):
        return plain_values({k: getattr(value, k) for k in value.__dataclass_fields__})
    return [value]
