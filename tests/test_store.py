"""The batch statement against real PostgreSQL: history, guarded current upsert, dead letters,
and the writer's isolation of a row the database refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from collector.db.partitions import PartitionManager, Span, partition_name
from collector.ingest.batch import Batch
from collector.ingest.buffer import Chunk, IngestBuffer
from collector.ingest.readings import MeterReading, Reason, Rejection, VehicleReading
from collector.ingest.store import write_batch
from collector.ingest.writer import Writer, batch_of, is_partition_race
from collector.metrics import Metrics

pytestmark = pytest.mark.services

T0 = datetime(2026, 2, 9, 10, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 2, 9, 10, 0, 5, tzinfo=UTC)


def m(device: str, minute: int, kwh: float = 1.0, voltage: float = 230.0) -> MeterReading:
    return MeterReading(
        meterId=device, kwhConsumedAc=kwh, voltage=voltage, timestamp=T0 + timedelta(minutes=minute)
    )


def v(device: str, minute: int, soc: float = 50.0) -> VehicleReading:
    return VehicleReading(
        vehicleId=device,
        soc=soc,
        kwhDeliveredDc=0.9,
        batteryTemp=30.0,
        timestamp=T0 + timedelta(minutes=minute),
    )


def batch(meters=(), vehicles=(), rejected=()) -> Batch:
    return Batch.of([*meters, *vehicles], RECEIVED, rejected)


async def test_history_and_current_are_written_with_their_values(db):
    result = await write_batch(db, batch([m("m1", 0, 1.5, 231.0)], [v("v1", 0, 42.0)]), 10)
    assert (result.new["meter"], result.new["vehicle"]) == (1, 1)
    row = await db.fetchrow("SELECT * FROM meter_readings")
    assert (
        row["meter_id"],
        row["ts"],
        row["kwh_consumed_ac"],
        row["voltage"],
        row["received_at"],
    ) == ("m1", T0, 1.5, 231.0, RECEIVED)
    cur = await db.fetchrow("SELECT * FROM vehicle_current")
    assert (cur["vehicle_id"], cur["ts"], cur["soc"]) == ("v1", T0, 42.0)


async def test_duplicates_are_absorbed_within_and_across_batches(db):
    first = await write_batch(db, batch([m("m1", 0), m("m1", 0), m("m1", 1)]), 10)
    assert first.new["meter"] == 2
    again = await write_batch(db, batch([m("m1", 0), m("m1", 1)]), 10)
    assert again.new["meter"] == 0
    assert await db.fetchval("SELECT count(*) FROM meter_readings") == 2


async def test_current_only_moves_forward_in_time(db):
    await write_batch(db, batch([m("m1", 5, kwh=5.0)], [v("v1", 5, soc=80.0)]), 10)
    # An older reading arrives late: history gets it, current keeps the newer state.
    await write_batch(db, batch([m("m1", 3, kwh=3.0)], [v("v1", 3, soc=60.0)]), 10)
    assert await db.fetchval("SELECT count(*) FROM meter_readings") == 2
    assert await db.fetchval("SELECT kwh_consumed_ac FROM meter_current") == 5.0
    assert await db.fetchval("SELECT soc FROM vehicle_current") == 80.0
    # The newest of a batch wins, whatever its position in the batch.
    await write_batch(db, batch([m("m1", 9, kwh=9.0), m("m1", 7, kwh=7.0)]), 10)
    assert await db.fetchval("SELECT ts FROM meter_current") == T0 + timedelta(minutes=9)


async def test_replayed_reading_with_other_values_does_not_change_state(db):
    await write_batch(db, batch([m("m1", 5, kwh=5.0)]), 10)
    await write_batch(db, batch([m("m1", 5, kwh=99.0)]), 10)
    assert await db.fetchval("SELECT kwh_consumed_ac FROM meter_readings") == 5.0
    assert await db.fetchval("SELECT kwh_consumed_ac FROM meter_current") == 5.0


async def test_rejections_go_to_the_dead_letter_table(db):
    rejection = Rejection("meters/x/reading", b"\x00\xffraw", Reason.INVALID_JSON, "bad", size=9)
    await write_batch(db, batch(rejected=[rejection]), 10)
    row = await db.fetchrow("SELECT * FROM rejected_messages")
    assert (
        row["topic"],
        row["reason"],
        row["detail"],
        row["payload"],
        row["payload_size"],
        row["received_at"],
    ) == ("meters/x/reading", "invalid_json", "bad", b"\x00\xffraw", 9, RECEIVED)


async def test_empty_batch_is_a_no_op(db):
    result = await write_batch(db, batch(), 10)
    assert (result.new["meter"], result.new["vehicle"], result.rejected) == (0, 0, 0)


def test_halves_split_every_row_once():
    b = batch(
        [m("m1", i) for i in range(3)],
        [v("v1", 0)],
        [Rejection("t", b"", Reason.INVALID_JSON, "d")],
    )
    first, second = b.halves()
    assert len(first) + len(second) == 5
    assert len(first) == 2
    assert first.rows["meter"].readings + second.rows["meter"].readings == b.rows["meter"].readings
    assert first.rejected + second.rejected == b.rejected


@pytest.fixture
async def pool(database_url):
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as p:
        yield p


async def test_writer_isolates_a_row_the_database_refuses(db, pool):
    """A reading that passed validation but violates a database constraint (here: built
    without validation) must not block the batch: it goes to the dead-letter table."""
    poison = MeterReading(meterId="m-bad", kwhConsumedAc=-1.0, voltage=230.0, timestamp=T0)
    good = [m(f"m{i}", 0) for i in range(7)]
    buffer = IngestBuffer(100)
    committed = []
    await buffer.put(
        Chunk(
            {"meter": [*good[:3], poison, *good[3:]], "vehicle": [v("v1", 0)]},
            [],
            RECEIVED,
            on_commit=lambda: committed.append(True),
        )
    )
    buffer.close()
    writer = Writer(
        pool=pool,
        buffer=buffer,
        metrics=Metrics(),
        batch_size=100,
        flush_interval_s=0.01,
        retry_max_s=0.1,
    )
    await writer.run()
    assert committed == [True]
    assert await db.fetchval("SELECT count(*) FROM meter_readings") == 7
    assert await db.fetchval("SELECT count(*) FROM vehicle_readings") == 1
    dead = await db.fetchrow("SELECT * FROM rejected_messages")
    assert dead["reason"] == "database_error"
    assert "m-bad" in dead["payload"].decode()
    assert "check" in dead["detail"].lower()


def test_batch_of_stamps_each_row_with_its_chunk_time():
    t1, t2 = RECEIVED, RECEIVED + timedelta(seconds=1)
    b = batch_of(
        [
            Chunk({"meter": [m("a", 0)]}, [], t1),
            Chunk({"meter": [m("b", 0)], "vehicle": [v("c", 0)]}, [], t2),
        ]
    )
    assert b.rows["meter"].received == [t1, t2]
    assert b.rows["vehicle"].received == [t2]


async def test_partition_race_is_told_apart_from_bad_data(db, pool):
    """A row routed to the default partition while its day's partition is attached fails as
    a check violation of the partition constraint: the writer retries that, it does not
    dead-letter it (the same error class as a bad value, which it does dead-letter)."""

    DAY = datetime(2001, 1, 1, tzinfo=UTC)  # a day no other test writes to

    manager = PartitionManager(pool, ahead_days=1, retention_days=0, rollup_retention_days=0)
    async with pool.acquire() as conn:
        await manager._create(conn, "meter_readings", Span.day(DAY.date()))
    try:
        with pytest.raises(asyncpg.CheckViolationError) as race:
            await db.execute(
                "INSERT INTO meter_readings_default (meter_id, ts, kwh_consumed_ac,"
                " voltage) VALUES ('m', $1, 1, 230)",
                DAY,
            )
        assert is_partition_race(race.value)
        with pytest.raises(asyncpg.CheckViolationError) as bad:
            await db.execute(
                "INSERT INTO meter_readings (meter_id, ts, kwh_consumed_ac, "
                "voltage) VALUES ('m', $1, -1, 230)",
                DAY,
            )
        assert not is_partition_race(bad.value)
    finally:
        name = partition_name("meter_readings", DAY.date())
        await db.execute(f"ALTER TABLE meter_readings DETACH PARTITION {name}; DROP TABLE {name}")
