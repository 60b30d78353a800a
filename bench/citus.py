"""Citus benchmark: the collector draining a backlog into a local Citus cluster and into plain
PostgreSQL, alternated in one run.

Honest label: **three PostgreSQL nodes (a coordinator and two workers) on this one 2-core
machine**, so this measures the per-batch cost of going through the coordinator (every
batch is a fixed fan-out of remote commands: docs/scale.md), not how a cluster of real
machines scales. Plain PostgreSQL is a database on the coordinator's own server without the
extension: the same process, memory and disk.

For each target: the collector's MQTT session is made, the collector stopped, ``--readings``
interval readings (``--devices`` meters) published into its queue on the broker, and the
collector started again: the time from its start to the last row stored is the drain rate.
Targets alternate for ``--rounds``. Needs Citus installed (``make citus``).

    .venv/bin/python bench/citus.py                    # 100,000 readings, 2 rounds
    .venv/bin/python bench/citus.py --readings 50000 --rounds 1
"""

from __future__ import annotations

try:  # run as a script: take bench/ off sys.path first (bench/_paths.py)
    import _paths
except ModuleNotFoundError:  # imported as bench.<module>: the path is right already
    _paths = None

# isort: split

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent

from collector.tools.local_services import MosquittoProcess, PostgresProcess  # noqa: E402
from tests.helpers import Publisher  # noqa: E402
from tests.services import CollectorProcess  # noqa: E402

RESULTS = REPO / "bench" / "results"


async def make_database(nodes: list[PostgresProcess], name: str, citus: bool) -> str:
    for node in nodes if citus else nodes[:1]:
        conn = await asyncpg.connect(node.dsn())
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        if citus:
            conn = await asyncpg.connect(node.dsn(name))
            await conn.execute("CREATE EXTENSION citus")
            await conn.close()
    if citus:
        conn = await asyncpg.connect(nodes[0].dsn(name))
        await conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', $1)", nodes[0].port)
        for worker in nodes[1:]:
            await conn.execute("SELECT citus_add_node('127.0.0.1', $1)", worker.port)
        await conn.close()
    dsn = nodes[0].dsn(name)
    subprocess.run([sys.executable, "-m", "collector", "migrate"], check=True, capture_output=True,
                   env={**os.environ, "DATABASE_URL": dsn}, cwd=tempfile.gettempdir())  # fmt: skip
    return dsn


async def count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM meter_readings")
    finally:
        await conn.close()


def messages(devices: int, readings: int, start: datetime) -> list[tuple[str, bytes]]:
    out = []
    per = readings // devices
    for step in range(per):
        ts = (start + timedelta(minutes=step)).isoformat().replace("+00:00", "Z")
        for d in range(devices):
            body = {"meterId": f"b{d}", "kwhConsumedAc": 0.01, "voltage": 230.0, "timestamp": ts}
            out.append((f"meters/b{d}/reading", json.dumps(body).encode()))
    return out


async def drain(dsn: str, broker: MosquittoProcess, tmp: Path, label: str, args) -> dict:
    env = {"DATABASE_URL": dsn, "MQTT_URL": broker.url, "HTTP_ENABLED": "false",
           "ALERTS_ENABLED": "false", "MQTT_CLIENT_ID": f"bench-{uuid.uuid4().hex[:6]}",
           "LOG_LEVEL": "warning"}  # fmt: skip
    log = tmp / f"{label}-{uuid.uuid4().hex[:4]}.log"
    collector = CollectorProcess({**env, "LOG_LEVEL": "info"}, log).start()
    collector.wait_for_log('"mqtt.connected"', timeout=60)
    assert collector.terminate() == 0  # the session stays on the broker, queueing
    before = await count(dsn)
    start = datetime(2026, 6, 1, tzinfo=UTC) + timedelta(days=before // args.readings * 3)
    batch = messages(args.devices, args.readings, start)
    await asyncio.to_thread(_publish, broker.url, batch)
    started = time.perf_counter()
    collector = CollectorProcess({**env, "LOG_LEVEL": "info"}, log).start()
    while await count(dsn) < before + len(batch):
        await asyncio.sleep(0.2)
        if time.perf_counter() - started > 600:
            raise TimeoutError(f"{label}: not drained in 600 s")
    elapsed = time.perf_counter() - started
    collector.terminate()
    return {"target": label, "readings": len(batch), "seconds": round(elapsed, 2),
            "per_s": round(len(batch) / elapsed)}  # fmt: skip


def _publish(url: str, batch: list[tuple[str, bytes]]) -> None:
    for i in range(0, len(batch), 20_000):  # a client per 20,000 (paho's queue stays small)
        with Publisher(url, max_inflight=2000) as pub:
            pub.publish_all(batch[i : i + 20_000], timeout=600)


async def main_async(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-citus-"))
    settings = {"fsync": "on", "shared_preload_libraries": "citus",
                "max_prepared_transactions": "100", "shared_buffers": "256MB"}  # fmt: skip
    nodes = [PostgresProcess(settings=settings).init() for _ in range(3)]
    broker = MosquittoProcess(tmp / "mosquitto")
    runs = []
    try:
        for node in nodes:
            node.start()
        broker.start()
        targets = {
            "citus (3 nodes, one machine)": await make_database(nodes, "on_citus", True),
            "plain PostgreSQL": await make_database(nodes, "plain", False),
        }
        for round_ in range(1, args.rounds + 1):
            for label, dsn in targets.items():
                run = await drain(dsn, broker, tmp, label, args)
                run["round"] = round_
                runs.append(run)
                print(f"round {round_}: {label:<30} {run['readings']:,} readings drained in "
                      f"{run['seconds']} s = {run['per_s']:,}/s", flush=True)  # fmt: skip
    finally:
        broker.kill()
        for node in nodes:
            node.destroy()
    return {"runs": runs, "readings": args.readings, "devices": args.devices}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "label": "3 PostgreSQL nodes on one 2-core machine"}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"citus-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
