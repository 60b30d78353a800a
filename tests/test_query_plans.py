"""Analytics read only the rows of their window: no sequential scan of a history table.

A week of readings for 200 meters and 200 vehicles (every 10 minutes, inserted in time
order, as ingest writes them: the BRIN index relies on that); every analytics query over one
day must reach the history through an index (the primary key for one device, the BRIN index
on ts for the fleet).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api import queries as q

END = datetime(2026, 11, 20, tzinfo=UTC)
DAY = (END - timedelta(days=1), END)


@pytest.fixture
async def week(db):
    await db.execute(
        """
        INSERT INTO meter_readings (meter_id, ts, kwh_consumed_ac, voltage)
        SELECT 'm' || d, $1::timestamptz - make_interval(mins => 10 * s), 1.0, 230
        FROM generate_series(1008, 1, -1) AS s, generate_series(1, 200) AS d ORDER BY 2;
        INSERT INTO vehicle_readings (vehicle_id, ts, soc, kwh_delivered_dc, battery_temp)
        SELECT 'v' || d, $1::timestamptz - make_interval(mins => 10 * s), 50, 0.9, 30
        FROM generate_series(1008, 1, -1) AS s, generate_series(1, 200) AS d ORDER BY 2;
        INSERT INTO meter_current SELECT DISTINCT ON (meter_id) meter_id, ts, kwh_consumed_ac,
            voltage, received_at FROM meter_readings ORDER BY meter_id, ts DESC;
        INSERT INTO vehicle_current SELECT DISTINCT ON (vehicle_id) vehicle_id, ts, soc,
            kwh_delivered_dc, battery_temp, received_at FROM vehicle_readings
            ORDER BY vehicle_id, ts DESC;
        INSERT INTO vehicle_meter_links (vehicle_id, meter_id, started_at)
        SELECT 'v' || d, 'm' || d, $1::timestamptz - interval '30 days'
        FROM generate_series(1, 200) AS d;
        ANALYZE;
        """.replace("$1::timestamptz", f"'{END.isoformat()}'::timestamptz")
    )


async def plan(db, sql: str, *args) -> str:
    rows = await db.fetch("EXPLAIN " + sql, *args)
    return "\n".join(r[0] for r in rows)


def assert_reads_window_only(text: str) -> None:
    for table in ("meter_readings", "vehicle_readings"):
        assert f"Seq Scan on {table}" not in text, text


@pytest.mark.parametrize(
    ("name", "sql", "args"),
    [
        ("performance", q.PERFORMANCE, ("v7", *DAY)),
        ("meter window", q.METER_WINDOW, ("m7", *DAY)),
        ("vehicle window", q.VEHICLE_WINDOW, ("v7", *DAY)),
        ("series", q.SERIES, ("v7", *DAY, timedelta(hours=1))),
    ],
)
async def test_one_device_queries_use_the_primary_key(db, week, name, sql, args):
    text = await plan(db, sql, *args)
    assert_reads_window_only(text)
    assert "_pkey" in text, text


async def test_fleet_queries_use_the_time_index(db, week):
    totals = await plan(db, q.FLEET_TOTALS, *DAY)
    assert_reads_window_only(totals)
    assert "meter_readings_ts_brin" in totals and "vehicle_readings_ts_brin" in totals, totals
    vehicles = await plan(db, q.FLEET_VEHICLES, *DAY)
    assert_reads_window_only(vehicles)
