"""Query benchmark: latency of the analytics endpoints over a day of history.

Starts its own PostgreSQL, loads one day of readings (one a minute) for N meters and N
vehicles directly in SQL (in time order, as ingest writes them) into daily partitions, with
their hourly rollups; links vehicle i to meter i (a tenth of the vehicles move to another
charger at noon), then runs
``energy-collector api`` against it and times sequential HTTP requests:

* ``GET /v1/analytics/performance/{vehicleId}`` for random vehicles (last 24 h);
* ``GET /v1/analytics/vehicle/{vehicleId}/series?bucket=1h``;
* the fleet, three ways: a cold computation (``/v1/analytics/fleet`` with ``from``/``to``
  naming the last 24 h, off the hour: computed for each request, no shared view); the
  first ``/v1/analytics/fleet`` after the API starts (it computes the shared view); and
  ``--clients`` concurrent clients (8) for ``--seconds`` each on ``/v1/analytics/fleet``
  and on the fleet page (``/dashboard``), with ``FLEET_MAX_AGE_S=10`` so the shared view
  is refreshed in the background several times while they run.

It prints p50/p99 per endpoint and saves ``EXPLAIN (ANALYZE, BUFFERS)`` of the queries
behind them to bench/results/.

    .venv/bin/python bench/queries.py                       # 2,000 + 2,000 devices (5.8M rows)
    .venv/bin/python bench/queries.py --devices 10000       # the brief's scale (28.8M rows)
    .venv/bin/python bench/queries.py --devices 50000 --requests 100   # 144M rows, ~25 min
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
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

REPO = Path(__file__).resolve().parent.parent

from api.queries import analytics as q  # noqa: E402
from collector.db.partitions import PartitionManager  # noqa: E402
from collector.readmodel import fleet  # noqa: E402
from collector.tools.local_services import PostgresProcess, free_port, wait_for_port  # noqa: E402

RESULTS = REPO / "bench" / "results"

# Deterministic "random" values from the device and the minute, so AC and DC of a linked
# pair match minute by minute; a twentieth of the chargers are faulty (efficiency ~0.72).
LOAD_SQL = """
INSERT INTO meter_readings (meter_id, ts, kwh_consumed_ac, voltage, received_at)
SELECT 'meter-' || lpad(d::text, 5, '0'), t,
       0.5 + (abs(hashint8(d::bigint * 100000000 + extract(epoch FROM t)::bigint)) % 1000) / 666.0,
       225 + (d % 11), t
FROM generate_series($1::timestamptz, $2::timestamptz - interval '1 minute',
                     interval '1 minute') AS t,
     generate_series(1, $3::int) AS d
ORDER BY t, d;

INSERT INTO vehicle_readings (vehicle_id, ts, soc, kwh_delivered_dc, battery_temp, received_at)
SELECT 'vehicle-' || lpad(d::text, 5, '0'), t,
       least(100, 10 + (extract(epoch FROM t - $1::timestamptz) / 60)::int % 90),
       (0.5 + (abs(hashint8(d::bigint * 100000000 + extract(epoch FROM t)::bigint)) % 1000) / 666.0)
         * CASE WHEN d % 20 = 0 THEN 0.72 ELSE 0.88 + (d % 7) * 0.01 END,
       25 + (d % 13) + (extract(epoch FROM t - $1::timestamptz) / 3600)::int % 5, t
FROM generate_series($1::timestamptz, $2::timestamptz - interval '1 minute',
                     interval '1 minute') AS t,
     generate_series(1, $3::int) AS d
ORDER BY t, d;

INSERT INTO meter_hourly
SELECT meter_id, date_trunc('hour', ts, 'UTC'), count(*),
       sum(kwh_consumed_ac), min(kwh_consumed_ac), max(kwh_consumed_ac),
       sum(voltage), min(voltage), max(voltage)
FROM meter_readings GROUP BY 1, 2;

INSERT INTO vehicle_hourly
SELECT vehicle_id, date_trunc('hour', ts, 'UTC'), count(*),
       sum(soc), min(soc), max(soc),
       sum(kwh_delivered_dc), min(kwh_delivered_dc), max(kwh_delivered_dc),
       sum(battery_temp), min(battery_temp), max(battery_temp)
FROM vehicle_readings GROUP BY 1, 2;

INSERT INTO meter_current (meter_id, ts, kwh_consumed_ac, voltage, received_at)
SELECT DISTINCT ON (meter_id) meter_id, ts, kwh_consumed_ac, voltage, received_at
FROM meter_readings ORDER BY meter_id, ts DESC;
INSERT INTO vehicle_current (vehicle_id, ts, soc, kwh_delivered_dc, battery_temp, received_at)
SELECT DISTINCT ON (vehicle_id) vehicle_id, ts, soc, kwh_delivered_dc, battery_temp,
       received_at
FROM vehicle_readings ORDER BY vehicle_id, ts DESC;

INSERT INTO vehicle_meter_links (vehicle_id, meter_id, started_at, ended_at)
SELECT 'vehicle-' || lpad(d::text, 5, '0'), 'meter-' || lpad(d::text, 5, '0'),
       $2::timestamptz - interval '2 days',  -- linked since a day before the window
       CASE WHEN d % 10 = 0 THEN $1::timestamptz + interval '12 hours' END
FROM generate_series(1, $3::int) AS d
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def make_partitions(dsn: str, today) -> None:
    """The daily partitions the collector's partition manager would have made."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        await PartitionManager(
            pool, ahead_days=1, retention_days=0, rollup_retention_days=0
        ).maintain(today=today)
    finally:
        await pool.close()


async def load(dsn: str, devices: int, start: datetime, end: datetime) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.monotonic()
        await conn.execute("SET maintenance_work_mem = '512MB'")
        for statement in LOAD_SQL.split(";\n\n"):
            if statement.strip():
                args = (start, end, devices) if "$1" in statement else ()
                await conn.execute(statement, *args)
        # At noon every tenth vehicle d moves to the charger of meter d - 1, whose own
        # vehicle leaves then: link changes in the middle of the window.
        await conn.execute(
            """UPDATE vehicle_meter_links SET ended_at = $1::timestamptz + interval '12 hours'
               WHERE vehicle_id IN (SELECT 'vehicle-' || lpad((d - 1)::text, 5, '0')
                                    FROM generate_series(10, $2::int, 10) AS d)""",
            start,
            devices,
        )
        await conn.execute(
            """INSERT INTO vehicle_meter_links (vehicle_id, meter_id, started_at)
               SELECT 'vehicle-' || lpad(d::text, 5, '0'), 'meter-' || lpad((d - 1)::text, 5, '0'),
                      $1::timestamptz + interval '12 hours'
               FROM generate_series(10, $2::int, 10) AS d""",
            start,
            devices,
        )
        await conn.execute("VACUUM ANALYZE")
        rows = await conn.fetchval(
            "SELECT (SELECT count(*) FROM meter_readings) + (SELECT count(*) FROM vehicle_readings)"
        )
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
        return {"rows": rows, "seconds": round(time.monotonic() - t0, 1), "size": size}
    finally:
        await conn.close()


async def load_day(pg: PostgresProcess, devices: int) -> tuple[str, dict, datetime]:
    """Migrate ``pg``'s database ``energy``, make its partitions and load the last day of
    ``devices`` meters and vehicles: (its DSN, what was loaded, the day's end)."""
    dsn = pg.dsn("energy")
    env = {**os.environ, "DATABASE_URL": dsn, "LOG_FORMAT": "json"}
    subprocess.run(
        [sys.executable, "-m", "collector", "migrate"], env=env, check=True, capture_output=True
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    await make_partitions(dsn, end.date())
    print(f"loading {devices} meters + {devices} vehicles, one day ...", flush=True)
    return dsn, await load(dsn, devices, end - timedelta(days=1), end), end


async def explain(dsn: str, devices: int, start: datetime, end: datetime) -> str:
    conn = await asyncpg.connect(dsn)
    vehicle = "vehicle-00010"
    out = []
    try:
        for name, sql, args in [
            ("performance", q.PERFORMANCE, (vehicle, start, end)),
            ("series", q.SERIES, (vehicle, start, end, timedelta(hours=1), True)),
            ("fleet", fleet.FLEET, (start, end, *fleet.whole_hours(start, end))),
        ]:
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, *args)
            out.append(f"-- {name}\n" + "\n".join(r[0] for r in rows))
    finally:
        await conn.close()
    return "\n\n".join(out)


async def timed(client: httpx.AsyncClient, path: str, params: dict | None = None) -> float:
    t0 = time.perf_counter()
    r = await client.get(path, params=params)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    return elapsed


def stats(samples: list[float]) -> dict:
    return {
        "n": len(samples),
        "p50_ms": round(percentile(samples, 0.5) * 1000, 1),
        "p99_ms": round(percentile(samples, 0.99) * 1000, 1),
        "mean_ms": round(statistics.fmean(samples) * 1000, 1),
    }


async def concurrently(
    base: str, path: str, clients: int, seconds: float
) -> tuple[list[float], int]:
    """``clients`` clients, each on its own connection, requesting ``path`` back to back
    for ``seconds``: the latencies, and the number of distinct ``asOf`` seen (fleet)."""
    deadline = time.monotonic() + seconds
    samples: list[float] = []
    as_of: set[str] = set()

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                r = await client.get(path)
                samples.append(time.perf_counter() - t0)
                r.raise_for_status()
                if path.startswith("/v1/"):
                    as_of.add(r.json()["asOf"])

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return samples, len(as_of)


async def measure(
    base: str, devices: int, requests: int, fleet_requests: int, clients: int, seconds: float
) -> dict:
    rng = random.Random(7)  # a benchmark's choice of ids
    ids = [f"vehicle-{rng.randint(1, devices):05d}" for _ in range(requests)]
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        # The first request computes the shared fleet view: nothing is cached yet.
        first_fleet = await timed(client, "/v1/analytics/fleet")
        for vid in ids[:20]:  # warm the pool and the caches
            await timed(client, f"/v1/analytics/performance/{vid}")
        perf = [await timed(client, f"/v1/analytics/performance/{vid}") for vid in ids]
        series = [
            await timed(client, f"/v1/analytics/vehicle/{vid}/series", {"bucket": "1h"})
            for vid in ids[: requests // 2]
        ]
        # Cold computations: the last 24 h named explicitly (off the hour), so each
        # request computes the fleet from the rollups and the edges itself.
        cold = []
        for _ in range(fleet_requests):
            end = datetime.now(UTC)
            window = {"from": (end - timedelta(hours=24)).isoformat(), "to": end.isoformat()}
            cold.append(await timed(client, "/v1/analytics/fleet", window))
        sample = (await client.get("/v1/analytics/fleet")).json()
    fleet, fleet_views = await concurrently(base, "/v1/analytics/fleet", clients, seconds)
    page, _ = await concurrently(base, "/dashboard", clients, seconds)
    return {
        "performance": stats(perf),
        "series_1h": stats(series),
        "fleet_first": round(first_fleet * 1000, 1),
        "fleet_cold": stats(cold),
        "fleet_concurrent": {**stats(fleet), "clients": clients, "views_seen": fleet_views},
        "fleet_page_concurrent": {**stats(page), "clients": clients},
        "fleet_sample": {
            k: sample[k]
            for k in (
                "totalKwhConsumedAc",
                "totalKwhDeliveredDc",
                "efficiencyOverall",
                "vehiclesByStatus",
                "meters",
                "vehicles",
            )
        },
    }


async def main_async(args: argparse.Namespace) -> dict:
    pg = PostgresProcess(
        settings={"fsync": "on", "shared_buffers": "1GB", "max_wal_size": "8GB", "work_mem": "64MB"}
    )
    pg.init().start()
    api = None
    try:
        dsn, loaded, end = await load_day(pg, args.devices)
        start = end - timedelta(days=1)
        env = {**os.environ, "DATABASE_URL": dsn, "LOG_FORMAT": "json"}
        print(f"loaded {loaded}", flush=True)
        plans = await explain(dsn, args.devices, start, end)
        port = free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "collector", "api"],
            env={**env, "PORT": str(port), "FLEET_MAX_AGE_S": str(args.max_age)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tempfile.gettempdir(),
        )
        wait_for_port(port, 30)
        print("measuring ...", flush=True)
        latency = await measure(
            f"http://127.0.0.1:{port}",
            args.devices,
            args.requests,
            args.fleet_requests,
            args.clients,
            args.seconds,
        )
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
        pg.destroy()
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "devices": args.devices,
        "loaded": loaded,
        "latency": latency,
        "explain": plans,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--fleet-requests", type=int, default=10, help="cold computations")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30, help="per concurrent endpoint")
    parser.add_argument("--max-age", type=float, default=10, help="FLEET_MAX_AGE_S of the API")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"queries-{args.devices}-{stamp}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / f"queries-{args.devices}-{stamp}-explain.txt").write_text(report["explain"])
    lat = report["latency"]
    print(
        f"\n{report['loaded']['rows']:,} rows ({report['loaded']['size']}); "
        f"loaded in {report['loaded']['seconds']} s"
    )
    print("| request | clients | p50 | p99 |\n|---|---|---|---|")
    for name, path, clients in [
        ("performance", "/v1/analytics/performance/{vehicleId}", 1),
        ("series_1h", "/v1/analytics/vehicle/{vehicleId}/series?bucket=1h", 1),
        ("fleet_cold", "/v1/analytics/fleet?from=..&to=.. (cold computation)", 1),
        ("fleet_concurrent", "/v1/analytics/fleet", args.clients),
        ("fleet_page_concurrent", "/dashboard (fleet page)", args.clients),
    ]:
        print(f"| `{path}` | {clients} | {lat[name]['p50_ms']} ms | {lat[name]['p99_ms']} ms |")
    print(f"\nfirst /v1/analytics/fleet after start (computes the view): {lat['fleet_first']} ms")
    print(f"shared views seen by the concurrent clients: {lat['fleet_concurrent']['views_seen']}")
    print(f"\nfleet: {json.dumps(lat['fleet_sample'])}")
    print(f"results and EXPLAIN: bench/results/queries-{args.devices}-{stamp}*")


if __name__ == "__main__":
    main()
