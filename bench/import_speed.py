"""How fast `energy-collector import` loads history: a day of a simulated fleet as a file.

    .venv/bin/python bench/import_speed.py --devices 2000 --format ndjson

Writes the file (collector/tools/fleet.py: 2 x devices x 1440 readings for a day at one a
minute), imports it into a fresh database on the local PostgreSQL, imports it a second
time (nothing is added), and prints rows/s for both runs. The database is dropped after.
"""

from __future__ import annotations

try:  # run as a script: take bench/ off sys.path first (bench/_paths.py)
    import _paths
except ModuleNotFoundError:  # imported as bench.<module>: the path is right already
    _paths = None

# isort: split

import argparse
import asyncio
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent

from collector.tools.fleet import Fleet, ticks  # noqa: E402

ADMIN_URL = os.environ.get(
    "BENCH_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def write_file(path: Path, devices: int, fmt: str, start: datetime) -> int:
    fleet = Fleet(devices, devices, seed=1)
    times = ticks(start, 60)
    n = 0
    with path.open("w", newline="") as f:
        if fmt == "csv":
            fields = [
                "meterId",
                "vehicleId",
                "kwhConsumedAc",
                "voltage",
                "soc",
                "kwhDeliveredDc",
                "batteryTemp",
                "timestamp",
            ]
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
        for _ in range(1440):
            for m in fleet.step(next(times), 60):
                if fmt == "csv":
                    writer.writerow(json.loads(m.payload))
                else:
                    f.write(m.payload.decode())
                    f.write("\n")
                n += 1
    return n


def run_import(path: Path, dsn: str) -> tuple[float, str]:
    began = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "import",
            str(path),
            "--no-progress",
            "--rejects",
            str(path) + ".rejected.csv",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": dsn, "LOG_LEVEL": "warning"},
        check=False,
    )
    elapsed = time.monotonic() - began
    if result.returncode != 0:
        raise SystemExit(f"import failed ({result.returncode}): {result.stderr}{result.stdout}")
    return elapsed, result.stdout.strip()


async def drop(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000, help="meters and as many vehicles")
    parser.add_argument("--format", choices=("ndjson", "csv"), default="ndjson")
    args = parser.parse_args()
    name = f"energy_bench_import_{uuid.uuid4().hex[:6]}"
    dsn = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"history.{args.format}"
        began = time.monotonic()
        rows = write_file(path, args.devices, args.format, start)
        size_mb = path.stat().st_size / 1e6
        print(
            f"file: {rows:,} rows, {size_mb:,.0f} MB, written in {time.monotonic() - began:.1f} s"
        )
        try:
            for label in ("first import", "same file again"):
                elapsed, out = run_import(path, dsn)
                print(f"{label}: {elapsed:.1f} s, {rows / elapsed:,.0f} rows/s: {out}")
        finally:
            asyncio.run(drop(name))


if __name__ == "__main__":
    main()
