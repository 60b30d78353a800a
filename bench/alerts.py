"""Alert evaluation benchmark: the cost of one pass of the rules at fleet scale.

Starts its own PostgreSQL, loads a day of readings for N meters and N vehicles (the data of
bench/queries.py: one a minute, hourly rollups, links, a twentieth of the chargers faulty),
then makes some devices misbehave: 1 % of the vehicles hot (above 55 °C for their last
10 minutes of readings) and 1 % of the meters silent (their latest reading an hour old).
It then times the collector's evaluation pass (``AlertEngine.evaluate``, the built-in
rules, a webhook target so transitions queue outbox rows) on a connection of its own:

* the first pass, which raises every alert (firing rows and their notifications);
* ``--passes`` more passes of every rule, in which nothing changes (the steady state), and
  each rule's share of them (its query and its writes; the two efficiency rules share one
  computation of the vehicles' energy, which the first of them pays);
* ``--passes`` passes between two efficiency intervals (``ALERT_EFFICIENCY_INTERVAL_S``),
  which skip the efficiency rules: what most passes cost.

    .venv/bin/python bench/alerts.py                    # 2,000 + 2,000 devices
    .venv/bin/python bench/alerts.py --devices 10000    # the brief's scale (28.8M rows)
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
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent

from bench.queries import load_day  # noqa: E402
from collector.alerts.engine import AlertEngine  # noqa: E402
from collector.alerts.outbox import Outbox  # noqa: E402
from collector.alerts.rules import builtin_rules  # noqa: E402
from collector.alerts.targets import build_targets  # noqa: E402
from collector.metrics import Metrics  # noqa: E402
from collector.settings import load_settings  # noqa: E402
from collector.tools.local_services import PostgresProcess  # noqa: E402

RESULTS = REPO / "bench" / "results"

MISBEHAVE_SQL = """
UPDATE vehicle_readings SET battery_temp = 58
WHERE vehicle_id IN (SELECT 'vehicle-' || lpad(d::text, 5, '0')
                     FROM generate_series(100, $1::int, 100) AS d)
  AND ts >= $2::timestamptz - interval '10 minutes';
UPDATE vehicle_current SET battery_temp = 58
WHERE vehicle_id IN (SELECT 'vehicle-' || lpad(d::text, 5, '0')
                     FROM generate_series(100, $1::int, 100) AS d);
UPDATE meter_current SET ts = ts - interval '1 hour'
WHERE meter_id IN (SELECT 'meter-' || lpad(d::text, 5, '0')
                   FROM generate_series(50, $1::int, 100) AS d)
"""


async def misbehave(dsn: str, devices: int, end: datetime) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in MISBEHAVE_SQL.split(";\n"):
            args = (devices, end) if "$2" in statement else (devices,)
            await conn.execute(statement, *args)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def summary(samples: list[float]) -> dict:
    return {
        "median": round(statistics.median(samples) * 1000, 1),
        "max": round(max(samples) * 1000, 1),
        "passes": len(samples),
    }


async def measure(dsn: str, passes: int) -> dict:
    settings = load_settings(
        {"DATABASE_URL": dsn, "ALERT_WEBHOOK_URLS": "http://127.0.0.1:9/never-sent"},
        env_file=None,
    )
    rules = builtin_rules(settings)
    server = {"jit": "off", "timezone": "UTC", "plan_cache_mode": "force_custom_plan"}
    conn = await asyncpg.connect(dsn, server_settings=server)
    engine = AlertEngine(
        settings=settings,
        rules=rules,
        outbox=Outbox(
            build_targets(settings, {}),
            Metrics(),
            retry_max_s=60,
            give_up_s=settings.alert_give_up_s,
            request_timeout_s=settings.alert_webhook_timeout_s,
        ),
        metrics=Metrics(),
        connect=lambda: asyncpg.connect(dsn),
    )

    async def timed(every_rule: bool) -> float:
        t0 = time.perf_counter()
        await engine.evaluate(conn, every_rule=every_rule)
        return time.perf_counter() - t0

    try:
        t0 = time.perf_counter()
        made = await engine.evaluate(conn, every_rule=True)
        first = time.perf_counter() - t0
        counts = {
            r["rule"]: r["n"]
            for r in await conn.fetch("SELECT rule, count(*) AS n FROM alerts GROUP BY 1")
        }
        queued = await conn.fetchval("SELECT count(*) FROM alert_notifications")
        steady, shares = [], []
        for _ in range(passes):
            steady.append(await timed(every_rule=True))
            shares.append(engine.last_rule_s)
        per_rule = {
            r.name: round(statistics.median(s[r.name] for s in shares) * 1000, 1) for r in rules
        }
        # Between two efficiency intervals a pass skips the efficiency rules.
        between = [await timed(every_rule=False) for _ in range(passes)]
        await engine.outbox.close()
    finally:
        await conn.close()
    return {
        "first_pass_ms": round(first * 1000, 1),
        "first_pass_made": made,
        "alerts_by_rule": counts,
        "notifications_queued": queued,
        "steady_pass_ms": summary(steady),
        "pass_without_efficiency_ms": summary(between),
        "per_rule_ms": per_rule,
    }


async def main_async(args: argparse.Namespace) -> dict:
    pg = PostgresProcess(
        settings={"fsync": "on", "shared_buffers": "1GB", "max_wal_size": "8GB", "work_mem": "64MB"}
    )
    pg.init().start()
    try:
        dsn, loaded, end = await load_day(pg, args.devices)
        await misbehave(dsn, args.devices, end)
        print(f"loaded {loaded}; measuring ...", flush=True)
        result = await measure(dsn, args.passes)
    finally:
        pg.destroy()
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "devices": args.devices,
        "loaded": loaded,
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=10)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"alerts-{args.devices}-{stamp}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "command"}, indent=2))


if __name__ == "__main__":
    main()
