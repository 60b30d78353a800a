"""What the fleet page costs in Python for a large fleet (the SQL is bench/queries.py's).

Builds N vehicles' statuses and verdicts (as the API's reports return them), then times
the join, the default sort with one page, and rendering the page's HTML.

    .venv/bin/python bench/dashboard_render.py --vehicles 10000
"""

from __future__ import annotations

try:  # run as a script: take bench/ off sys.path first (bench/_paths.py)
    import _paths
except ModuleNotFoundError:  # imported as bench.<module>: the path is right already
    _paths = None

# isort: split

import argparse
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from jinja2 import Environment, FileSystemLoader, select_autoescape

from api import dashboard, fleet_table
from api.models import (
    DeviceCounts,
    FleetSummary,
    StatusCounts,
    VehicleEfficiency,
    VehicleStatus,
)


def build(n: int) -> tuple[list[VehicleStatus], list[VehicleEfficiency]]:
    rng = random.Random(1)
    now = datetime.now(UTC)
    statuses, verdicts = [], []
    for i in range(n):
        vid = f"vehicle-{i:05d}"
        statuses.append(
            VehicleStatus(
                vehicleId=vid,
                timestamp=now,
                soc=rng.uniform(10, 100),
                kwhDeliveredDc=0.5,
                batteryTemp=rng.uniform(10, 40),
                receivedAt=now,
                ageSeconds=rng.uniform(0, 3600),
                linkedMeterId=f"meter-{i:05d}",
            )
        )
        ratio = rng.uniform(0.6, 0.95)
        verdicts.append(
            VehicleEfficiency(
                vehicleId=vid,
                meterIds=[f"meter-{i:05d}"],
                totalKwhConsumedAc=50.0,
                totalKwhDeliveredDc=50 * ratio,
                efficiencyRatio=ratio,
                status="low_efficiency" if ratio < 0.85 else "normal",
            )
        )
    return statuses, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    statuses, verdicts = build(args.vehicles)
    env = Environment(
        loader=FileSystemLoader(dashboard.TEMPLATES.env.loader.searchpath),
        autoescape=select_autoescape(),
    )
    env.filters.update(dashboard.TEMPLATES.env.filters)
    template = env.get_template("fleet_live.html")
    now = datetime.now(UTC)
    counts = DeviceCounts(total=args.vehicles, reporting=args.vehicles, silent=0)
    summary = FleetSummary(
        windowStart=now - timedelta(hours=24),
        windowEnd=now,
        totalKwhConsumedAc=1.0,
        totalKwhDeliveredDc=0.9,
        efficiencyOverall=0.9,
        meters=counts,
        vehicles=counts,
        vehiclesByStatus=StatusCounts(normal=1, low_efficiency=1, anomaly=0, insufficient_data=0),
        lowEfficiencyVehicles=[],
        anomalyVehicles=[],
    )
    timings: dict[str, list[float]] = {"join": [], "filter+sort+page": [], "render": []}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        rows = fleet_table.join(statuses, verdicts, silent_after_s=900)
        t1 = time.perf_counter()
        page = fleet_table.table(rows)
        t2 = time.perf_counter()
        html = template.render(
            summary=summary,
            table=page,
            counts=fleet_table.counts(rows),
            silent_meters=0,
            silent_minutes=15,
            show="all",
            search="",
            sort="status",
            descending=False,
            link=lambda **_: "/dashboard",
            sort_link=lambda _key: "/dashboard",
            filters=fleet_table.FILTERS,
            efficiency_low=0.85,
            now=now,
        )
        t3 = time.perf_counter()
        timings["join"].append(t1 - t0)
        timings["filter+sort+page"].append(t2 - t1)
        timings["render"].append(t3 - t2)
    print(f"{args.vehicles} vehicles, median of {args.repeat}; page HTML {len(html):,} bytes")
    for name, values in timings.items():
        print(f"  {name:18} {statistics.median(values) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
