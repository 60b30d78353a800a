"""The fleet figures are exactly what a direct computation from the history gives.

Whatever order readings arrive in, redelivered or late, and with link changes inside an
hour: the fleet query (custom windows, aligned or not) and the shared fleet view (the last
24 h as of its ``asOf``) agree with sums over the raw readings, done here in Python.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from api.fleet_view import FleetViews
from api.queries import links as ql
from api.reports import analytics as analytics_report
from collector.settings import load_settings
from tests.helpers import load

pytestmark = pytest.mark.services

SETTINGS = load_settings({"FLEET_MAX_AGE_S": "60"}, env_file=None)
AS_OF = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=17, seconds=20)
T0 = AS_OF - timedelta(hours=30)


async def expected(conn: asyncpg.Connection, start: datetime, end: datetime) -> dict:
    """Per linked vehicle (AC, DC, counts) and the fleet's totals, from the raw rows."""
    meters = await conn.fetch("SELECT meter_id, ts, kwh_consumed_ac FROM meter_readings")
    vehicles = await conn.fetch("SELECT vehicle_id, ts, kwh_delivered_dc FROM vehicle_readings")
    links = await conn.fetch(
        "SELECT vehicle_id, meter_id, started_at, ended_at FROM vehicle_meter_links"
    )
    inside = lambda ts: start <= ts < end  # noqa: E731
    per: dict[str, list[float]] = {}
    for link in links:
        s = max(link["started_at"], start)
        e = min(link["ended_at"] or datetime.max.replace(tzinfo=UTC), end)
        if s >= e:
            continue
        acc = per.setdefault(link["vehicle_id"], [0.0, 0, 0.0, 0])
        for m in meters:
            if m["meter_id"] == link["meter_id"] and s <= m["ts"] < e:
                acc[0] += m["kwh_consumed_ac"]
                acc[1] += 1
        for v in vehicles:
            if v["vehicle_id"] == link["vehicle_id"] and s <= v["ts"] < e:
                acc[2] += v["kwh_delivered_dc"]
                acc[3] += 1
    return {
        "vehicles": per,
        "ac": sum(m["kwh_consumed_ac"] for m in meters if inside(m["ts"])),
        "dc": sum(v["kwh_delivered_dc"] for v in vehicles if inside(v["ts"])),
        "meters_reporting": len({m["meter_id"] for m in meters if inside(m["ts"])}),
    }


def check(report: analytics_report.FleetReport, want: dict) -> None:
    got = {v.vehicleId: [v.totalKwhConsumedAc, v.totalKwhDeliveredDc] for v in report.vehicles}
    assert set(got) == set(want["vehicles"])
    for vehicle, (ac, _, dc, _) in want["vehicles"].items():
        assert got[vehicle] == [pytest.approx(ac, abs=1e-6), pytest.approx(dc, abs=1e-6)]
    assert report.summary.totalKwhConsumedAc == pytest.approx(want["ac"], abs=1e-6)
    assert report.summary.totalKwhDeliveredDc == pytest.approx(want["dc"], abs=1e-6)
    assert report.summary.meters.reporting == want["meters_reporting"]


async def test_fleet_figures_match_the_history(db, database_url):
    rng = random.Random(17)
    meters, vehicles = [], []
    for d in range(6):
        for minute in sorted(rng.sample(range(30 * 60), 400)):  # irregular, off the minute
            ts = T0 + timedelta(minutes=minute, seconds=rng.randint(0, 59))
            meters.append((f"m{d}", ts, round(rng.uniform(0, 2), 3), 230.0))
            vehicles.append((f"v{d}", ts, 50.0, round(rng.uniform(0, 1.8), 3), 30.0))
    rng.shuffle(meters)
    rng.shuffle(vehicles)
    # Most arrive first, in random order; the rest come late, and some come twice.
    await load(db, meters=meters[:1500], vehicles=vehicles[:1500])
    for d in range(5):
        await ql.put_link(db, f"v{d}", f"m{d}", T0 - timedelta(hours=1))
    # Link changes inside an hour and inside the windows: v0 moves to m5, v1 to m0.
    await ql.put_link(db, "v0", "m5", AS_OF - timedelta(hours=7, minutes=43))
    await ql.put_link(db, "v1", "m0", AS_OF - timedelta(hours=3, minutes=11))
    await load(db, meters=meters[1500:], vehicles=vehicles[1500:])
    await load(db, meters=meters[:300] + meters[2000:2100], vehicles=vehicles[100:400])

    hour = T0.replace(minute=0, second=0)
    windows = [
        (AS_OF - timedelta(hours=24), AS_OF),  # the default window, off the hour
        (hour + timedelta(hours=2), hour + timedelta(hours=9)),  # whole hours
        (AS_OF - timedelta(hours=5, minutes=7), AS_OF - timedelta(hours=4, minutes=55)),
        (T0 - timedelta(hours=2), AS_OF + timedelta(hours=1)),
    ]  # fmt: skip
    for start, end in windows:
        check(
            await analytics_report.fleet(db, SETTINGS, start, end), await expected(db, start, end)
        )

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        views = FleetViews(pool, SETTINGS, clock=lambda: AS_OF)
        view = await views.get()
        assert view.as_of == AS_OF and view.report.summary.asOf == AS_OF
        assert view.report.summary.windowStart == AS_OF - timedelta(hours=24)
        check(view.report, await expected(db, AS_OF - timedelta(hours=24), AS_OF))
        assert {r.vehicle_id for r in view.rows} >= set((await expected(db, T0, AS_OF))["vehicles"])
    finally:
        await pool.close()


async def test_the_view_is_shared_and_bounded_by_its_age(db, database_url):
    await load(db, meters=[("m1", AS_OF - timedelta(hours=1), 1.0, 230.0)])
    now = [AS_OF]
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        views = FleetViews(pool, SETTINGS, clock=lambda: now[0])
        first = await asyncio.gather(*(views.get() for _ in range(8)))
        assert views.computations == 1 and len({id(v) for v in first}) == 1
        now[0] = AS_OF + timedelta(seconds=20)  # younger than half FLEET_MAX_AGE_S
        assert await views.get() is first[0] and views.computations == 1
        # Past half its age: still served, refreshed in the background.
        now[0] = AS_OF + timedelta(seconds=40)
        assert await views.get() is first[0] and views.computations == 2
        await asyncio.sleep(0.5)
        assert (await views.get()).as_of == AS_OF + timedelta(seconds=40)
        # A new reading shows in the next view, never in one older than the bound.
        await load(db, meters=[("m1", AS_OF - timedelta(minutes=30), 2.0, 230.0)])
        now[0] = AS_OF + timedelta(seconds=101)  # the refreshed view is now 61 s old
        fresh = await views.get()
        assert fresh.as_of == now[0]
        assert fresh.report.summary.totalKwhConsumedAc == pytest.approx(3.0)
    finally:
        await pool.close()


async def test_a_standby_hour_is_idle_in_the_series_and_the_verdicts(db):
    hour = AS_OF.replace(minute=0, second=0) - timedelta(hours=3)
    await ql.put_link(db, "v1", "m1", hour - timedelta(hours=1))
    charging = [hour + timedelta(minutes=m) for m in range(0, 60, 10)]
    parked = [hour + timedelta(hours=1, minutes=m) for m in range(0, 60, 10)]
    await load(
        db,
        meters=[("m1", t, 1.0, 230.0) for t in charging]
        + [("m1", t, 0.001, 230.0) for t in parked],  # standby: 6 Wh in the hour
        vehicles=[("v1", t, 50.0, 0.9, 30.0) for t in charging]
        + [("v1", t, 50.0, 0.0, 30.0) for t in parked],
    )  # fmt: skip
    series = await analytics_report.series(
        db, SETTINGS, "v1", hour, hour + timedelta(hours=2), bucket="1h"
    )
    assert [p.efficiencyRatio for p in series.points] == [pytest.approx(0.9), None]
    parked_hour = await analytics_report.performance(
        db, SETTINGS, "v1", hour + timedelta(hours=1, minutes=10), hour + timedelta(hours=2)
    )
    assert parked_hour.status == "idle" and parked_hour.efficiencyRatio is None
    fleet = await analytics_report.fleet(
        db, SETTINGS, hour + timedelta(hours=1, minutes=10), hour + timedelta(hours=2)
    )
    assert fleet.summary.vehiclesByStatus.idle == 1
