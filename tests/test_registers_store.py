"""Register readings booked in the real database: in order, late, twice, in any order."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from collector.ingest.batch import Batch
from collector.ingest.booking.booker import RegisterBooker
from collector.ingest.booking.registers import Point, RegisterLimits, book
from collector.ingest.readings import MeterReading, VehicleReading

pytestmark = pytest.mark.services

T0 = datetime(2026, 2, 9, 10, 0, tzinfo=UTC)
RULES = RegisterLimits(dip_kwh=0.05, max_kw=400.0, wrap_kwh=100000.0)
RECEIVED = datetime(2026, 2, 9, 12, 0, tzinfo=UTC)


def m(device: str, minute: int, register: float) -> MeterReading:
    return MeterReading(
        meterId=device,
        kwhRegisterAc=register,
        voltage=230.0,
        timestamp=T0 + timedelta(minutes=minute),
    )


async def write(db, *readings, booker=None) -> None:
    booker = booker or RegisterBooker(RULES)
    batch = Batch.of(readings, RECEIVED)
    await booker.write(db, batch, 30)


async def stored(db, device: str):
    return await db.fetch(
        "SELECT ts, kwh_consumed_ac AS kwh, kwh_register_ac AS register, register_quality AS q "
        "FROM meter_readings WHERE meter_id = $1 ORDER BY ts",
        device,
    )


async def rollups_match_history(db) -> None:
    for table, device, kwh in (
        ("meter", "meter_id", "kwh_consumed_ac"),
        ("vehicle", "vehicle_id", "kwh_delivered_dc"),
    ):
        diff = await db.fetch(f"""
            SELECT h.{device}, h.hour FROM (
                SELECT {device}, date_trunc('hour', ts, 'UTC') AS hour, count(*) AS n,
                       sum({kwh}) AS kwh, count(register_quality) AS regs,
                       count(*) FILTER (WHERE register_quality = 'reset') AS resets,
                       count(*) FILTER (WHERE register_quality = 'glitch') AS glitches,
                       count(*) FILTER (WHERE register_quality = 'quarantined') AS quarantined,
                       count(*) FILTER (WHERE register_quality LIKE 'pending%') AS pending
                FROM {table}_readings GROUP BY 1, 2) h
            FULL JOIN {table}_hourly r USING ({device}, hour)
            WHERE h.n IS DISTINCT FROM r.readings OR abs(h.kwh - r.kwh_sum) > 1e-9
               OR h.regs IS DISTINCT FROM r.register_readings
               OR h.resets IS DISTINCT FROM r.register_resets
               OR h.glitches IS DISTINCT FROM r.register_glitches
               OR h.quarantined IS DISTINCT FROM r.register_quarantined
               OR h.pending IS DISTINCT FROM r.register_pending""")
        assert diff == [], f"{table} rollups differ from the history: {diff[:3]}"


async def test_in_order_readings_are_booked_from_the_state(db):
    for i, value in enumerate([100.0, 100.5, 0.0, 101.0, 101.5, 0.2, 0.6]):
        await write(db, m("m1", i, value))
    rows = await stored(db, "m1")
    assert [round(r["kwh"], 6) for r in rows] == [0, 0.5, 0, 0.5, 0.5, 0.2, 0.4]
    assert [r["q"] for r in rows] == ["baseline", "ok", "glitch", "ok", "ok", "reset", "ok"]
    assert [r["register"] for r in rows][:3] == [100.0, 100.5, 0.0]  # the raw values, kept
    current = await db.fetchrow("SELECT * FROM meter_current WHERE meter_id = 'm1'")
    assert current["kwh_register_ac"] == 0.6 and current["register_quality"] == "ok"
    await rollups_match_history(db)


async def test_a_pending_drop_shows_until_the_next_reading_decides_it(db):
    await write(db, m("m2", 0, 100.0), m("m2", 1, 100.5), m("m2", 2, 0.2))
    assert [r["q"] for r in await stored(db, "m2")][-1] == "pending_drop"
    assert (
        await db.fetchval("SELECT sum(register_pending) FROM meter_hourly WHERE meter_id = 'm2'")
        == 1
    )
    await write(db, m("m2", 3, 0.6))
    rows = await stored(db, "m2")
    assert [r["q"] for r in rows][-2:] == ["reset", "ok"]
    assert [round(r["kwh"], 6) for r in rows] == [0, 0.5, 0.2, 0.4]
    await rollups_match_history(db)


VALUES = [10.0, 10.2, 10.19, 0.0, 10.5, 10.7, 0.1, 0.3, 0.8, 900.0, 1.0, 1.2, 1.25, 1.3]


@pytest.mark.parametrize("seed", range(6))
async def test_any_arrival_order_books_what_the_sorted_set_books(db, seed):
    """Random permutations, in random batch sizes, with duplicates: the stored bookings and
    the rollups equal the in-order result."""
    device = f"p{seed}"
    readings = [m(device, i * 7, v) for i, v in enumerate(VALUES)]
    expected = book([Point(r.timestamp, r.kwhRegisterAc) for r in readings], RULES)
    rng = random.Random(seed)
    order = rng.sample(readings, len(readings)) + rng.sample(readings, 3)  # and 3 again
    while order:
        n = rng.randint(1, 4)
        await write(db, *order[:n])
        order = order[n:]
    rows = await stored(db, device)
    assert [round(r["kwh"], 9) for r in rows] == [round(b.kwh, 9) for b in expected]
    assert [r["q"] for r in rows] == [b.quality.value for b in expected]
    await rollups_match_history(db)


async def test_vehicles_book_their_registers_too(db):
    readings = [
        VehicleReading(vehicleId="v1", soc=50 + i, kwhRegisterDc=v, batteryTemp=25.0,
                       timestamp=T0 + timedelta(minutes=i))
        for i, v in enumerate([5000.0, 5000.4, 5000.9])
    ]  # fmt: skip
    await RegisterBooker(RULES).write(db, Batch.of(readings, RECEIVED), 30)
    rows = await db.fetch(
        "SELECT kwh_delivered_dc AS k, register_quality AS q FROM vehicle_readings ORDER BY ts"
    )
    assert [(round(r["k"], 6), r["q"]) for r in rows] == [(0, "baseline"), (0.4, "ok"), (0.5, "ok")]
    await rollups_match_history(db)


@pytest.mark.parametrize("seed", range(4))
async def test_two_collectors_with_their_own_memory_book_what_one_books(db, database_url, seed):
    """Two bookers (two collectors of a shared subscription) each remember the states they
    wrote; the other's writes, and interval readings among the registers, make those
    memories stale. Written in random order, some batches at the same time: every reading
    is still booked from the state it follows (compare-and-set), as in order."""
    device = f"s{seed}"
    rng = random.Random(seed)
    readings: list[MeterReading] = [m(device, i * 7, v) for i, v in enumerate(VALUES)]
    interval = MeterReading(
        meterId=device, kwhConsumedAc=0.3, voltage=230.0, timestamp=T0 + timedelta(minutes=38)
    )
    points = sorted(
        [Point(r.timestamp, r.kwhRegisterAc) for r in readings]
        + [Point(interval.timestamp, None, 0.3)],
        key=lambda p: p.ts,
    )
    expected = book(points, RULES)
    other = await asyncpg.connect(database_url)
    try:
        a, b = RegisterBooker(RULES), RegisterBooker(RULES)
        order = [*rng.sample(readings, len(readings)), interval]
        order = rng.sample(order, len(order))
        while order:
            first, second, order = order[:2], order[2:4], order[4:]
            await asyncio.gather(
                a.write(db, Batch.of(first, RECEIVED), 30),
                b.write(other, Batch.of(second, RECEIVED), 30),
            )
        while await a.rebook_dirty(db) or await b.rebook_dirty(other):
            pass
    finally:
        await other.close()
    rows = await db.fetch(
        "SELECT kwh_consumed_ac AS kwh, register_quality AS q FROM meter_readings "
        "WHERE meter_id = $1 ORDER BY ts",
        device,
    )
    assert [round(r["kwh"], 9) for r in rows] == [round(x.kwh, 9) for x in expected]
    assert [r["q"] for r in rows] == [x.quality.value if x.quality else None for x in expected]
    marks = await db.fetchval(
        "SELECT dirty_from FROM register_devices WHERE device_id = $1", device
    )
    latest = await db.fetchval("SELECT ts FROM meter_current WHERE meter_id = $1", device)
    assert marks is None and latest == points[-1].ts
    await rollups_match_history(db)


async def test_a_stale_memory_is_noticed_and_the_batch_booked_again(db):
    a, b = RegisterBooker(RULES), RegisterBooker(RULES)
    await a.write(db, Batch.of([m("c1", 0, 100.0)], RECEIVED), 30)
    await b.write(db, Batch.of([m("c1", 1, 100.5)], RECEIVED), 30)  # a does not know
    await a.write(db, Batch.of([m("c1", 2, 101.5)], RECEIVED), 30)  # from 100.5, not 100.0
    rows = await stored(db, "c1")
    assert [(round(r["kwh"], 6), r["q"]) for r in rows] == [
        (0, "baseline"), (0.5, "ok"), (1.0, "ok"),
    ]  # fmt: skip
    version = await db.fetchval("SELECT version FROM meter_current WHERE meter_id = 'c1'")
    assert version == 3  # one write each, none lost
