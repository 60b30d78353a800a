"""OCPP benchmark: many connected chargers, meter values stored per second, memory per charger.

Starts its own PostgreSQL (fsync on) and Mosquitto, registers ``--chargers`` chargers (each
with its password), starts the collector (``python -m collector run``, csms mode) and then,
from a driver process of its own (uvloop, plain ``websockets``: prebuilt OCPP 1.6J frames,
no schema validation, so the driver costs as little CPU as a charger's load can):

1. connects every charger (HTTP Basic, ``ocpp1.6``) and sends its BootNotification; the
   collector's memory before and after, divided by the chargers, is the memory per
   connected charger;
2. for ``--seconds``, each charger sends MeterValues one after the other, each as soon as
   the previous was answered (OCPP allows one CALL in flight per connection; the answer
   leaves after the commit): a closed loop, as fast as the collector stores. Each frame
   carries one energy register sample (and a voltage) at its own timestamp, so each is one
   register reading, booked by the register engine.

It reports meter values stored per second (rows counted in the database), the answer's
latency (p50, p99), the collector's and PostgreSQL's CPU, and writes JSON to bench/results/.

    .venv/bin/python bench/ocpp.py                          # 2,000 chargers, 20 s (~1 minute)
    .venv/bin/python bench/ocpp.py --chargers 500 --seconds 10
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
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil
import websockets

REPO = Path(__file__).resolve().parent.parent

from bench.http import profile  # noqa: E402
from collector.runtime import run_async  # noqa: E402
from collector.sources.ocpp.chargers import ChargerBook  # noqa: E402
from collector.sources.ocpp.passwords import basic_header  # noqa: E402
from collector.tools.local_services import (  # noqa: E402
    MosquittoProcess,
    PostgresProcess,
    free_port,
    wait_for_port,
)

RESULTS = REPO / "bench" / "results"


# --- the driver: a process of its own, prints one JSON line ----------------------------------


async def drive(url: str, passwords: dict[str, str], seconds: float, t0: datetime) -> dict:
    connections = {}
    boot = json.dumps(
        [2, "boot", "BootNotification", {"chargePointVendor": "Bench", "chargePointModel": "B1"}]
    )

    async def connect(charger_id: str) -> None:
        ws = await websockets.connect(
            f"{url}/{charger_id}",
            subprotocols=["ocpp1.6"],
            additional_headers={"Authorization": basic_header(charger_id, passwords[charger_id])},
            open_timeout=120,
            ping_interval=None,
            compression=None,
        )
        await ws.send(boot)
        await ws.recv()
        connections[charger_id] = ws

    started = time.perf_counter()
    pending = list(passwords)
    for i in range(0, len(pending), 200):  # in waves, as chargers come back after a restart
        await asyncio.gather(*(connect(c) for c in pending[i : i + 200]))
    connect_s = time.perf_counter() - started
    print(json.dumps({"phase": "connected", "seconds": round(connect_s, 2)}), flush=True)
    sys.stdin.readline()  # the bench has measured the memory: go on

    latencies: list[float] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    async def charge(charger_id: str, ws) -> None:
        nonlocal sent
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            ts = (t0 + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
            frame = (
                f'[2,"{n}","MeterValues",{{"connectorId":1,"meterValue":[{{"timestamp":"{ts}",'
                f'"sampledValue":[{{"value":"{1000 + 5 * n}",'
                f'"measurand":"Energy.Active.Import.Register","unit":"Wh"}},'
                f'{{"value":"230.4","measurand":"Voltage","unit":"V"}}]}}]}}]'
            )
            before = time.perf_counter()
            await ws.send(frame)
            answer = await ws.recv()
            latencies.append(time.perf_counter() - before)
            if not answer.startswith("[3,"):
                raise RuntimeError(f"{charger_id}: {answer[:200]}")
            sent += 1

    started = time.perf_counter()
    await asyncio.gather(*(charge(c, ws) for c, ws in connections.items()))
    elapsed = time.perf_counter() - started
    for ws in connections.values():
        await ws.close()
    latencies.sort()
    return {
        "phase": "done",
        "sent": sent,
        "elapsed_s": round(elapsed, 2),
        "answered_per_s": round(sent / elapsed),
        "latency_ms": {
            "p50": round(1000 * latencies[len(latencies) // 2], 1),
            "p99": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
            "mean": round(1000 * statistics.fmean(latencies), 1),
        },
    }


def raise_file_limit() -> None:
    """As many open files as the hard limit allows (a connection is one)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def driver_main(args: argparse.Namespace) -> None:
    raise_file_limit()
    passwords = json.loads(Path(args.passwords).read_text())
    t0 = datetime.fromisoformat(args.t0)
    print(json.dumps(run_async(drive(args.url, passwords, args.seconds, t0))), flush=True)


# --- the bench --------------------------------------------------------------------------------


def cpu_seconds(proc: psutil.Process, children: bool = False) -> float:
    t = proc.cpu_times()
    total = t.user + t.system
    if children:
        for child in proc.children(recursive=True):
            try:
                ct = child.cpu_times()
                total += ct.user + ct.system
            except psutil.NoSuchProcess:
                pass
    return total


async def main_async(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ocpp-"))
    pg = PostgresProcess(settings={"fsync": "on", "shared_buffers": "512MB"})
    pg.init().start()
    broker = MosquittoProcess(tmp / "mosquitto")
    broker.start()
    collector = None
    report: dict = {"chargers": args.chargers, "seconds": args.seconds}
    try:
        dsn = pg.dsn("bench_ocpp")
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "MQTT_URL": broker.url,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "warning",
            "ALERTS_ENABLED": "false",
            "HTTP_ENABLED": "false",
            "OCPP_LISTEN": f"127.0.0.1:{free_port()}",
            "OCPP_METER_INTERVAL_S": "0",
            **dict(item.split("=", 1) for item in args.env),
        }
        subprocess.run(
            [sys.executable, "-m", "collector", "migrate"], env=env, check=True, cwd=tmp,
            capture_output=True,
        )  # fmt: skip
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        book = ChargerBook(pool)
        ids = [f"bench-{n:05d}" for n in range(args.chargers)]
        passwords = {c: await book.add(c) for c in ids}
        await pool.close()
        (tmp / "passwords.json").write_text(json.dumps(passwords))
        raise_file_limit()  # the collector inherits it
        with (tmp / "collector.log").open("ab") as out:
            collector = subprocess.Popen(
                [sys.executable, "-m", "collector", "run"], env=env, stdout=out,
                stderr=subprocess.STDOUT, cwd=tmp,
            )  # fmt: skip
        wait_for_port(int(env["OCPP_LISTEN"].rsplit(":", 1)[1]), 60)
        time.sleep(1)
        proc = psutil.Process(collector.pid)
        rss_before = proc.memory_info().rss
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        driver = subprocess.Popen(
            [sys.executable, __file__, "--drive", "--url", f"ws://{env['OCPP_LISTEN']}/ocpp",
             "--passwords", str(tmp / "passwords.json"), "--seconds", str(args.seconds),
             "--t0", t0.isoformat()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        assert driver.stdout is not None
        assert driver.stdin is not None
        connected = json.loads(driver.stdout.readline())
        time.sleep(2)  # let the collector settle (connections' buffers, the boot's writes)
        rss_after = proc.memory_info().rss
        report["connect_all_s"] = connected["seconds"]
        report["collector_rss_mb"] = {
            "idle": round(rss_before / 2**20, 1),
            "connected": round(rss_after / 2**20, 1),
        }
        report["kb_per_connected_charger"] = round(
            (rss_after - rss_before) / args.chargers / 1024, 1
        )
        print(
            f"{args.chargers} chargers connected in {connected['seconds']} s; collector "
            f"{report['collector_rss_mb']['idle']} -> {report['collector_rss_mb']['connected']} "
            f"MB ({report['kb_per_connected_charger']} KB per connected charger)",
            flush=True,
        )
        conn = await asyncpg.connect(dsn)
        stored_before = await conn.fetchval("SELECT count(*) FROM meter_readings")
        postmaster = psutil.Process(pg.postmaster_pid())
        cpu_c, cpu_pg = cpu_seconds(proc), cpu_seconds(postmaster, children=True)
        started = time.perf_counter()
        driver.stdin.write("go\n")
        driver.stdin.flush()
        if args.profile:  # the middle of the load
            stacks = RESULTS / f"ocpp-profile-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.txt"
            RESULTS.mkdir(parents=True, exist_ok=True)
            top = await asyncio.to_thread(profile, collector.pid, args.seconds / 2, stacks)
            report["profile"] = {"stacks": str(stacks.relative_to(REPO)), "top": top}
            for function, share in top[:20]:
                print(f"  {share:5.1f} %  {function}")
        result = json.loads(driver.stdout.readline())
        driver.wait(60)
        elapsed = time.perf_counter() - started
        cpu_c, cpu_pg = cpu_seconds(proc) - cpu_c, cpu_seconds(postmaster, children=True) - cpu_pg
        stored = await conn.fetchval("SELECT count(*) FROM meter_readings") - stored_before
        await conn.close()
        report.update(
            {
                "meter_values_answered": result["sent"],
                "meter_values_stored": stored,
                "stored_per_s": round(stored / result["elapsed_s"]),
                "latency_ms": result["latency_ms"],
                "collector_cpu_cores": round(cpu_c / elapsed, 2),
                "postgres_cpu_cores": round(cpu_pg / elapsed, 2),
                "collector_cpu_us_per_value": round(1e6 * cpu_c / max(stored, 1), 1),
            }
        )
        print(
            f"meter values: {stored:,} stored in {result['elapsed_s']} s = "
            f"{report['stored_per_s']:,}/s (answered {result['sent']:,}); answer latency "
            f"p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms; "
            f"CPU: collector {report['collector_cpu_cores']} cores "
            f"({report['collector_cpu_us_per_value']} µs per value), PostgreSQL "
            f"{report['postgres_cpu_cores']} cores",
            flush=True,
        )
        if stored != result["sent"]:
            raise SystemExit(f"answered {result['sent']} but stored {stored}: a lost reading")
    finally:
        if collector is not None:
            collector.terminate()
            collector.wait(30)
        broker.stop()
        pg.destroy()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chargers", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the collector (repeatable)")  # fmt: skip
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the collector under load (collapsed stacks in bench/results/)",
    )
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--passwords", help=argparse.SUPPRESS)
    parser.add_argument("--t0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        driver_main(args)
        return
    report = asyncio.run(main_async(args))
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"ocpp-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
