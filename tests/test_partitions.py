"""Daily partitions, the default partition, retention, and rollups under redelivery.

A database of this module's own: retention drops partitions, which must not touch the
other tests' data.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from collector.db.migrations import migrate
from collector.db.partitions import (
    PartitionManager,
    Span,
    partition_days,
    partition_spans,
    plan_partitions,
)
from collector.ingest.batch import Batch
from collector.ingest.readings import MeterReading, VehicleReading
from collector.ingest.store import write_batch
from tests.helpers import ADMIN_URL, database_url_for

pytestmark = pytest.mark.services

TODAY = date(2031, 1, 10)


@pytest.fixture(scope="module")
async def dsn():
    name = f"energy_parts_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = database_url_for(ADMIN_URL, name)
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    yield url
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def pool(dsn):
    async with asyncpg.create_pool(
        dsn, min_size=1, max_size=3, server_settings={"timezone": "UTC"}
    ) as p:
        async with p.acquire() as conn:
            await conn.execute(
                "TRUNCATE meter_readings, vehicle_readings, meter_hourly, "
                "vehicle_hourly, meter_current, vehicle_current"
            )
        yield p


def manager(pool, **kwargs) -> PartitionManager:
    options = {"ahead_days": 7, "retention_days": 0, "rollup_retention_days": 0, **kwargs}
    return PartitionManager(pool, **options)


def at(day: date, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def meters(*stamps: datetime, kwh: float = 1.0) -> Batch:
    rows = [
        MeterReading(meterId="m1", kwhConsumedAc=kwh, voltage=230.0, timestamp=t) for t in stamps
    ]
    now = datetime.now(UTC)
    return Batch.of(rows, now)


async def where(pool, ts: datetime) -> str:
    """The partition holding meter m1's reading at ``ts``."""
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT tableoid::regclass::text FROM meter_readings WHERE meter_id = 'm1' AND ts = $1",
            ts,
        )


async def test_partitions_are_created_ahead_of_time(pool):
    report = await manager(pool).maintain(today=TODAY)
    async with pool.acquire() as conn:
        days = await partition_days(conn, "meter_readings")
        vdays = await partition_days(conn, "vehicle_readings")
    expected = {TODAY + timedelta(days=d) for d in range(-1, 8)}
    assert expected <= days and expected <= vdays
    assert "meter_readings_p20310117" in report.created
    # Running again creates nothing new.
    assert (await manager(pool).maintain(today=TODAY)).created == []
    async with pool.acquire() as conn:
        await write_batch(conn, meters(at(TODAY + timedelta(days=3))), 10)
    assert await where(pool, at(TODAY + timedelta(days=3))) == "meter_readings_p20310113"


async def test_a_reading_without_a_partition_is_kept_and_later_moved(pool):
    old_day = TODAY - timedelta(days=20)  # no partition for this day yet
    async with pool.acquire() as conn:
        result = await write_batch(conn, meters(at(old_day), at(old_day, 13)), 10)
    assert result.new["meter"] == 2
    assert await where(pool, at(old_day)) == "meter_readings_default"
    report = await manager(pool).maintain(today=TODAY)
    assert "meter_readings_p20301221" in report.created
    assert report.moved_rows >= 2
    assert await where(pool, at(old_day)) == "meter_readings_p20301221"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM meter_readings_default") == 0
        assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 2
        # Still a duplicate after the move: the key holds across partitions.
        assert (await write_batch(conn, meters(at(old_day)), 10)).new["meter"] == 0


async def test_retention_drops_whole_days_and_old_rollups(pool):
    old, kept = TODAY - timedelta(days=40), TODAY - timedelta(days=5)
    await manager(pool).maintain(today=old)  # partitions around the old day
    await manager(pool).maintain(today=kept)
    async with pool.acquire() as conn:
        await write_batch(conn, meters(at(old), at(kept)), 10)
        await write_batch(conn, meters(at(date(2020, 1, 1))), 10)  # in the default partition
    report = await manager(pool, retention_days=30, rollup_retention_days=35).maintain(today=TODAY)
    assert f"meter_readings_p{old:%Y%m%d}" in report.dropped
    # The stray 2020 row in the default partition was deleted, not given a partition.
    assert "meter_readings_p20200101" not in report.created
    async with pool.acquire() as conn:
        days = await partition_days(conn, "meter_readings")
        assert all(d >= TODAY - timedelta(days=30) for d in days)
        remaining = {r["ts"] for r in await conn.fetch("SELECT ts FROM meter_readings")}
        assert remaining == {at(kept)}
        hours = {r["hour"] for r in await conn.fetch("SELECT hour FROM meter_hourly")}
        assert hours == {at(kept)}


async def test_rollups_are_exact_under_redelivery(pool):
    t = at(TODAY, 10)
    batch = meters(t, t + timedelta(minutes=1), t + timedelta(minutes=2), kwh=1.5)
    async with pool.acquire() as conn:
        await write_batch(conn, batch, 10)
        await write_batch(conn, batch, 10)  # the same readings, redelivered
        await write_batch(
            conn, meters(t + timedelta(minutes=2), t + timedelta(minutes=3), kwh=1.5), 10
        )  # one old, one new
        row = await conn.fetchrow("SELECT * FROM meter_hourly WHERE meter_id = 'm1'")
    assert row["hour"] == t
    assert row["readings"] == 4
    assert row["kwh_sum"] == pytest.approx(6.0)
    assert (row["kwh_min"], row["kwh_max"]) == (1.5, 1.5)


async def test_rollups_are_exact_when_two_writers_race_on_the_same_readings(pool):
    """Two collectors writing the same redelivered readings at the same moment."""
    t = at(TODAY, 11)
    stamps = [t + timedelta(seconds=s) for s in range(0, 3000, 10)]
    vehicles = [
        VehicleReading(vehicleId="v1", soc=50.0, kwhDeliveredDc=0.5, batteryTemp=20.0, timestamp=s)
        for s in stamps
    ]
    now = datetime.now(UTC)
    batch = Batch.of(vehicles, now)

    async def write() -> int:
        async with pool.acquire() as conn:
            return (await write_batch(conn, batch, 30)).new["vehicle"]

    results = await asyncio.gather(write(), write())
    assert sorted(results) == [0, len(stamps)]
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM vehicle_hourly WHERE vehicle_id = 'v1'")
        assert await conn.fetchval("SELECT count(*) FROM vehicle_readings") == len(stamps)
    assert row["readings"] == len(stamps)
    assert row["kwh_sum"] == pytest.approx(0.5 * len(stamps))


async def test_rollups_use_utc_hours_whatever_the_session_time_zone(dsn):
    async with (
        asyncpg.create_pool(
            dsn, min_size=1, max_size=1, server_settings={"timezone": "Asia/Kolkata"}
        ) as p,
        p.acquire() as conn,
    ):
        await conn.execute("TRUNCATE meter_readings, meter_hourly")
        await write_batch(conn, meters(at(TODAY, 10, 45)), 10)
        hour = await conn.fetchval("SELECT hour FROM meter_hourly")
    assert hour == at(TODAY, 10)


async def test_only_one_collector_maintains_at_a_time(pool):
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(x'656E65727061'::bigint)")
        try:
            assert (await manager(pool).maintain(today=TODAY)).skipped
        finally:
            await conn.execute("SELECT pg_advisory_unlock(x'656E65727061'::bigint)")


async def test_old_stray_rows_share_a_month_partition_and_the_count_is_bounded(pool):
    """Rows spread over years get one partition per month, not per day; past the cap
    they stay in the default partition, still stored."""
    days = [date(2001, 1, 1) + timedelta(days=3 * i) for i in range(800)]  # 2001-2007
    async with pool.acquire() as conn:
        await write_batch(conn, meters(*(at(d) for d in days)), 60)
    report = await manager(pool, max_partitions=60).maintain(today=TODAY)
    months = [n for n in report.created if n.startswith("meter_readings_m")]
    assert len(months) > 10
    assert not any(n.startswith("meter_readings_p200") for n in report.created)
    assert report.left_in_default > 0
    async with pool.acquire() as conn:
        assert len(await partition_spans(conn, "meter_readings")) == 60  # the cap
        assert await conn.fetchval("SELECT count(*) FROM meter_readings") == 800
        in_default = await conn.fetchval("SELECT count(*) FROM meter_readings_default")
        assert 0 < in_default < 800
        # the newest months got partitions first
        newest = await conn.fetchval(
            "SELECT tableoid::regclass::text FROM meter_readings ORDER BY ts DESC LIMIT 1"
        )
        assert newest.startswith("meter_readings_m2007")
    again = await manager(pool, max_partitions=60).maintain(today=TODAY)
    assert again.created == []  # at the cap: nothing more, every pass


def test_the_plan_cuts_recent_days_and_old_months():
    today = date(2026, 12, 3)
    existing = {Span.day(date(2026, 11, 1))}
    plan = plan_partitions(
        existing,
        regular=[today, today + timedelta(days=1)],
        stray=[
            date(2026, 11, 20),  # recent: its day
            date(2026, 11, 2),  # old, but November is cut into days already: its day
            date(2026, 3, 5),  # old: its month
            date(2026, 3, 9),  # the same month
            date(2026, 11, 1),  # has a partition
        ],
        today=today,
        daily_days=31,
        max_partitions=100,
    )
    assert plan.create == [
        Span.day(today),
        Span.day(today + timedelta(days=1)),
        Span.day(date(2026, 11, 20)),
        Span.day(date(2026, 11, 2)),
        Span.month(date(2026, 3, 1)),
    ]
    assert plan.create[-1].name("meter_readings") == "meter_readings_m202603"
    capped = plan_partitions(
        existing, regular=[today], stray=[date(2026, 3, 5), date(2025, 3, 5)],
        today=today, daily_days=31, max_partitions=3,
    )  # fmt: skip
    assert capped.create == [Span.day(today), Span.month(date(2026, 3, 1))]
    assert capped.left_in_default == 1
    # A regular day never overlaps a month partition that already holds it.
    assert (
        plan_partitions(
            {Span.month(today)}, regular=[today], today=today, daily_days=31, max_partitions=9
        ).create
        == []
    )
