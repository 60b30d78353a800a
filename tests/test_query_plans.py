"""Analytics cost does not grow with the readings in the window.

A week of readings for 200 meters and 200 vehicles (every 10 minutes: 144 a day each),
written in time order with their hourly rollups, as ingest writes them. Each analytics
query over a day is run with EXPLAIN ANALYZE and the history rows it really read are
counted: whole hours come from the rollups, so only the partial hours at the edges of an
unaligned window are read raw (at most 2 x 6 readings per device), never the day.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from api.queries import analytics as q
from collector.readmodel import fleet
from tests.conftest import DATA_TABLES

pytestmark = pytest.mark.services

END = datetime(2026, 11, 20, tzinfo=UTC)
ALIGNED = (END - timedelta(days=1), END)
UNALIGNED = (END - timedelta(days=1, minutes=25), END - timedelta(minutes=25))
DEVICES = 200
HISTORY = ("meter_readings", "vehicle_readings")
ROLLUPS = ("meter_hourly", "vehicle_hourly")


@pytest.fixture(scope="module")
async def week(database_url):
    """The week, loaded once for the module's tests (they only read it): a connection to
    the test database with every data table emptied first and again at the end."""
    db = await asyncpg.connect(database_url)
    await db.execute(f"TRUNCATE {', '.join(DATA_TABLES)}")
    end = f"'{END.isoformat()}'::timestamptz"
    await db.execute(f"""
        INSERT INTO meter_readings (meter_id, ts, kwh_consumed_ac, voltage)
        SELECT 'm' || d, {end} - make_interval(mins => 10 * s), 1.0, 230
        FROM generate_series(1008, 1, -1) AS s, generate_series(1, {DEVICES}) AS d ORDER BY 2;
        INSERT INTO vehicle_readings (vehicle_id, ts, soc, kwh_delivered_dc, battery_temp)
        SELECT 'v' || d, {end} - make_interval(mins => 10 * s), 50, 0.9, 30
        FROM generate_series(1008, 1, -1) AS s, generate_series(1, {DEVICES}) AS d ORDER BY 2;
        INSERT INTO meter_hourly SELECT meter_id, date_trunc('hour', ts, 'UTC'), count(*),
            sum(kwh_consumed_ac), min(kwh_consumed_ac), max(kwh_consumed_ac),
            sum(voltage), min(voltage), max(voltage) FROM meter_readings GROUP BY 1, 2;
        INSERT INTO vehicle_hourly SELECT vehicle_id, date_trunc('hour', ts, 'UTC'), count(*),
            sum(soc), min(soc), max(soc), sum(kwh_delivered_dc), min(kwh_delivered_dc),
            max(kwh_delivered_dc), sum(battery_temp), min(battery_temp), max(battery_temp)
            FROM vehicle_readings GROUP BY 1, 2;
        INSERT INTO meter_current SELECT DISTINCT ON (meter_id) meter_id, ts, kwh_consumed_ac,
            voltage, received_at FROM meter_readings ORDER BY meter_id, ts DESC;
        INSERT INTO vehicle_current SELECT DISTINCT ON (vehicle_id) vehicle_id, ts, soc,
            kwh_delivered_dc, battery_temp, received_at FROM vehicle_readings
            ORDER BY vehicle_id, ts DESC;
        INSERT INTO vehicle_meter_links (vehicle_id, meter_id, started_at)
        SELECT 'v' || d, 'm' || d, {end} - interval '30 days'
        FROM generate_series(1, {DEVICES}) AS d;
    """)
    # Summarizes the BRIN ranges (autosummarize does it as ranges fill up on a live table).
    await db.execute("VACUUM ANALYZE")
    try:
        yield db
    finally:
        await db.execute(f"TRUNCATE {', '.join(DATA_TABLES)}")
        await db.close()


def rows_read(plan: dict, tables: tuple[str, ...]) -> int:
    """Rows the executor took from ``tables`` (any partition), kept or filtered out."""
    total = 0
    relation = plan.get("Relation Name", "")
    if any(relation == t or relation.startswith(f"{t}_") for t in tables):
        loops = plan.get("Actual Loops", 1)
        total += (
            plan.get("Actual Rows", 0)
            + plan.get("Rows Removed by Filter", 0)
            + plan.get("Rows Removed by Index Recheck", 0)
        ) * loops
    for child in plan.get("Plans", []):
        total += rows_read(child, tables)
    return total


async def reads(db, sql: str, *args) -> tuple[int, int]:
    (doc,) = json.loads(await db.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args))
    return rows_read(doc["Plan"], HISTORY), rows_read(doc["Plan"], ROLLUPS)


ONE_DEVICE = [
    ("performance", q.PERFORMANCE, lambda w: ("v7", *w)),
    ("meter window", q.METER_WINDOW, lambda w: ("m7", *w)),
    ("vehicle window", q.VEHICLE_WINDOW, lambda w: ("v7", *w)),
    ("series 1h", q.SERIES, lambda w: ("v7", *w, timedelta(hours=1), True)),
]


@pytest.mark.parametrize(("name", "sql", "args"), ONE_DEVICE, ids=[c[0] for c in ONE_DEVICE])
@pytest.mark.parametrize("window", [ALIGNED, UNALIGNED], ids=["aligned", "unaligned"])
async def test_one_device_reads_rollups_and_edges_only(week, name, sql, args, window):
    raw, rolled = await reads(week, sql, *args(window))
    day_of_raw_rows = 144 * 2  # the meter's and the vehicle's
    # Edges: at most two partial hours (6 readings each) per stream; first/last: a few rows.
    assert raw <= 4 * 6 + 4, f"{name} read {raw} raw rows (a day is {day_of_raw_rows})"
    assert 0 < rolled <= 4 * 25, f"{name} read {rolled} rollup rows"


@pytest.mark.parametrize("window", [ALIGNED, UNALIGNED], ids=["aligned", "unaligned"])
async def test_fleet_reads_rollups_and_edges_only(week, window):
    day = 144 * DEVICES * 2
    raw, rolled = await reads(week, fleet.FLEET, *window, *fleet.whole_hours(*window))
    # The edges hold 2 x 25 minutes of rows; BRIN reads whole 32-page block ranges
    # around them, about 16 minutes each in this small fleet (a range is a fixed size,
    # so with more devices it is a smaller part of a day).
    assert raw <= day // 4, f"read {raw} raw rows (the day has {day})"
    assert rolled <= 25 * DEVICES * 2 * 2


async def test_fine_series_buckets_read_raw_rows_of_the_window_only(week):
    raw, _ = await reads(week, q.SERIES, "v7", *ALIGNED, timedelta(minutes=15), False)
    # The meter's day once, the vehicle's twice (linked DC, and SoC/temperature), no more.
    assert raw <= 3 * 144


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("10:30", "13:20", ("11:00", "13:00")),
        ("10:00", "13:00", ("10:00", "13:00")),
        ("10:30", "11:15", ("11:15", "11:15")),
        ("10:10", "10:50", ("10:50", "10:50")),
    ],
)
def test_whole_hours(start, end, expected):
    def t(hm: str) -> datetime:
        h, m = map(int, hm.split(":"))
        return datetime(2026, 1, 1, h, m, tzinfo=UTC)

    assert fleet.whole_hours(t(start), t(end)) == (t(expected[0]), t(expected[1]))
