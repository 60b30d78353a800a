"""Export benchmark: a month of device-days for 10,000 devices, time and memory.

Starts its own PostgreSQL (fsync on) and loads a month of 10,000 meters at one reading a
minute (28.8M readings a day with the vehicles; the meters' 14.4M) the way the collector
keeps them for the device-days: the hourly rollups (7.2M rows), and for a zone whose days
do not start on a UTC hour also the raw readings of the partial hours at the days' edges
(``--zone Asia/Kolkata``: 30 minutes at each end of each day, 9M readings). Then it runs
``energy-collector export device-days`` for the month as a child process into a file and
reports its wall time, rows per second, CSV size and the child's peak memory (RSS). Every
device is in one site of the zone (a SITES_FILE the bench writes).

    .venv/bin/python bench/export.py                          # Europe/Berlin, ~3 minutes
    .venv/bin/python bench/export.py --zone Asia/Kolkata      # edges from raw readings
    .venv/bin/python bench/export.py --devices 1000 --days 7  # a quick look
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
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

REPO = Path(__file__).resolve().parent.parent

from collector.tools.local_services import PostgresProcess  # noqa: E402

RESULTS = REPO / "bench" / "results"
FIRST = date(2026, 10, 1)


async def load(dsn: str, devices: int, days: int, zone: str) -> dict:
    """The rollups of ``devices`` meters over ``days`` local days of ``zone`` (and the raw
    readings of the partial hours at the days' edges), and their current rows."""
    conn = await asyncpg.connect(dsn)
    tz = ZoneInfo(zone)
    start = datetime.combine(FIRST, datetime.min.time(), tz).astimezone(UTC)
    end = datetime.combine(FIRST + timedelta(days=days), datetime.min.time(), tz).astimezone(UTC)
    started = time.perf_counter()
    await conn.execute(
        """INSERT INTO meter_hourly (meter_id, hour, readings, kwh_sum, kwh_min, kwh_max,
                                     voltage_sum, voltage_min, voltage_max, voltage_n)
           SELECT 'm-' || lpad(d::text, 5, '0'), h, 60, 1.2 + (d % 7) * 0.1, 0.01, 0.04,
                  60 * 230, 228, 232, 60
             FROM generate_series(date_trunc('hour', $1::timestamptz, 'UTC'),
                                  $2::timestamptz, interval '1 hour') h,
                  generate_series(1, $3) d""",
        start - timedelta(days=1),
        end + timedelta(days=1),
        devices,
    )
    raw = 0
    if start.minute or start.second:  # the days' edges: raw readings, one a minute
        edges = []
        for n in range(days + 1):
            edge = datetime.combine(FIRST + timedelta(days=n), datetime.min.time(), tz)
            edge = edge.astimezone(UTC)
            hour = edge.replace(minute=0, second=0)
            edges.append((hour, hour + timedelta(hours=1)))
        for lo, hi in edges:
            status = await conn.execute(
                """INSERT INTO meter_readings (meter_id, ts, kwh_consumed_ac, voltage)
                   SELECT 'm-' || lpad(d::text, 5, '0'), t, 0.02, 230
                     FROM generate_series($1::timestamptz, $2::timestamptz - interval '1 minute',
                                          interval '1 minute') t,
                          generate_series(1, $3) d""",
                lo,
                hi,
                devices,
            )
            raw += int(status.split()[-1])
    await conn.execute(
        """INSERT INTO meter_current (meter_id, ts, kwh_consumed_ac, voltage, received_at)
           SELECT 'm-' || lpad(d::text, 5, '0'), $1, 0.02, 230, now()
             FROM generate_series(1, $2) d""",
        end,
        devices,
    )
    await conn.execute("VACUUM ANALYZE")
    rollups = await conn.fetchval("SELECT count(*) FROM meter_hourly")
    await conn.close()
    return {
        "rollup_rows": rollups,
        "raw_edge_readings": raw,
        "load_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--zone", default="Europe/Berlin")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    pg = PostgresProcess(settings={"fsync": "on", "shared_buffers": "512MB"})
    pg.init().start()
    report: dict = {"devices": args.devices, "days": args.days, "zone": args.zone}
    try:
        dsn = pg.dsn("bench_export")
        sites = tmp / "sites.toml"
        sites.write_text(f'[[site]]\nid = "all"\ntz = "{args.zone}"\nmembers = ["m-*"]\n'
                         'price_per_kwh = 0.3\ncurrency = "EUR"\n')  # fmt: skip
        env = {**os.environ, "DATABASE_URL": dsn, "SITES_FILE": str(sites), "LOG_LEVEL": "warning"}
        subprocess.run([sys.executable, "-m", "collector", "migrate"], env=env, check=True,
                       capture_output=True, cwd=tmp)  # fmt: skip
        report.update(asyncio.run(load(dsn, args.devices, args.days, args.zone)))
        print(f"loaded: {report['rollup_rows']:,} rollup rows, {report['raw_edge_readings']:,} "
              f"raw edge readings in {report['load_s']} s", flush=True)  # fmt: skip
        out = tmp / "device-days.csv"
        last = FIRST + timedelta(days=args.days)
        started = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(
            [sys.executable, "-m", "collector", "export", "device-days", "--from",
             FIRST.isoformat(), "--to", last.isoformat(), "--site", "all", "--out", str(out)],
            env=env, check=True, cwd=tmp,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        manifest = json.loads(Path(f"{out}.manifest.json").read_text())
        report.update(
            {
                "export_s": round(elapsed, 1),
                "rows": manifest["rows"],
                "rows_per_s": round(manifest["rows"] / elapsed),
                "csv_mb": round(manifest["bytes"] / 2**20, 1),
                "peak_rss_mb": round(max(peak_kb, before) / 1024, 1),
            }
        )
        print(
            f"export: {manifest['rows']:,} device-days ({report['csv_mb']} MB of CSV) in "
            f"{report['export_s']} s = {report['rows_per_s']:,} rows/s; the export process "
            f"peaked at {report['peak_rss_mb']} MB",
            flush=True,
        )
    finally:
        pg.destroy()
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / f"export-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    saved.write_text(json.dumps(report, indent=2))
    print(f"saved {saved.relative_to(REPO)}")


if __name__ == "__main__":
    main()
