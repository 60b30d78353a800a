"""The writer facing a database that refuses it for a reason waiting cannot fix."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from structlog.testing import capture_logs

from collector.db.errors import diagnose
from collector.ingest.batch import Batch
from collector.ingest.buffer import Chunk, IngestBuffer
from collector.ingest.readings import MeterReading, Reason, Rejection
from collector.ingest.writer import Writer, split
from collector.metrics import Metrics
from tests.helpers import BASE_TS, eventually, meter

pytestmark = pytest.mark.services


def as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
async def limited_user(database_url, db):
    """A role that may do everything the collector does, except insert meter readings."""
    name = f"energy_limited_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {name} LOGIN")
    await db.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}")
    await db.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {name}")
    await db.execute(f"REVOKE INSERT ON meter_readings FROM {name}")
    try:
        yield name
    finally:
        await db.execute(f"DROP OWNED BY {name}")
        await db.execute(f"DROP ROLE {name}")


def test_permanent_errors_are_told_apart_by_sqlstate():
    refused = diagnose(asyncpg.InsufficientPrivilegeError("permission denied for table x"))
    assert refused.permanent and refused.sqlstate == "42501" and "GRANT" in (refused.hint or "")
    missing = diagnose(asyncpg.UndefinedTableError('relation "meter_readings" does not exist'))
    assert missing.permanent and "migrate" in (missing.hint or "")
    assert diagnose(asyncpg.InvalidPasswordError("password authentication failed")).permanent
    assert diagnose(asyncpg.InvalidCatalogNameError('database "x" does not exist')).permanent
    outage = diagnose(ConnectionRefusedError("connection refused"))
    assert not outage.permanent and outage.hint is None
    assert not diagnose(asyncpg.CannotConnectNowError("the database is starting up")).permanent


async def test_a_missing_privilege_is_logged_and_shown_as_such_and_still_retried(
    database_url, db, limited_user, start_collector
):
    with capture_logs() as logs:
        service = await start_collector(
            database_url=as_user(database_url, limited_user),
            migrate_on_start="false",
            db_retry_max_s="0.2",
            ingest_timeout_s="1",  # answer 503 soon; the reading stays queued
        )
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{service.http_port}", timeout=30
        ) as client:
            r = await client.post("/v1/ingest", json=meter("m-perm", BASE_TS))
            assert r.status_code == 503, r.text

            async def health():
                return (await client.get("/health")).json()

            body = await eventually(health, lambda b: b["database"]["hint"] is not None)
            assert body["status"] == "unavailable"
            assert "waiting will not fix it" in body["database"]["detail"]
            assert "permission denied" in body["database"]["detail"]
            assert "GRANT" in body["database"]["hint"]
            events = [e for e in logs if e["event"] == "writer.permanent_error"]
            assert events and events[0]["sqlstate"] == "42501" and "GRANT" in events[0]["hint"]
            assert not any(e["event"] == "writer.retrying" for e in logs)

            # Nothing accepted was dropped: once the operator grants it, the reading lands.
            await db.execute(f"GRANT INSERT ON meter_readings TO {limited_user}")
            await eventually(
                lambda: db.fetchval(
                    "SELECT count(*) FROM meter_readings WHERE meter_id = 'm-perm'"
                ),
                lambda n: n == 1,
            )
            body = await eventually(health, lambda b: b["status"] == "ok")
            assert body["database"] == {"ok": True, "detail": None, "hint": None}


def reading(device: str, minute: int) -> MeterReading:
    return MeterReading(
        meterId=device, kwhConsumedAc=0.5, voltage=230.0, timestamp=BASE_TS.replace(minute=minute)
    )


@pytest.fixture
async def tripwire(db):
    """A trigger that fails inserts with `out of shared memory` (53200), a statement error
    that is no bad data and no outage, for the meters named in the table ``tripwire``."""
    await db.execute("CREATE TABLE IF NOT EXISTS tripwire (meter_id text PRIMARY KEY)")
    await db.execute("TRUNCATE tripwire")
    await db.execute("""
        CREATE OR REPLACE FUNCTION tripwire() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM tripwire WHERE meter_id IN (NEW.meter_id, '*')) THEN
                RAISE EXCEPTION 'out of shared memory' USING ERRCODE = '53200';
            END IF;
            RETURN NEW;
        END $$""")
    await db.execute(
        "CREATE TRIGGER tripwire BEFORE INSERT ON meter_readings "
        "FOR EACH ROW EXECUTE FUNCTION tripwire()"
    )
    try:
        yield db
    finally:
        await db.execute("DROP TRIGGER IF EXISTS tripwire ON meter_readings")
        await db.execute("DROP TABLE IF EXISTS tripwire")


async def run_writer(pool, chunk: Chunk) -> Metrics:
    buffer = IngestBuffer(1000)
    await buffer.put(chunk)
    buffer.close()
    metrics = Metrics()
    writer = Writer(
        pool=pool,
        buffer=buffer,
        metrics=metrics,
        batch_size=1000,
        flush_interval_s=0.01,
        retry_max_s=0.05,
    )
    await asyncio.wait_for(writer.run(), 60)
    return metrics


async def test_a_batch_that_keeps_failing_is_written_in_parts_and_its_poison_dead_lettered(
    tripwire, database_url
):
    await tripwire.execute("INSERT INTO tripwire VALUES ('m-poison')")
    good = [reading(f"m{i}", i) for i in range(9)]
    committed: list[bool] = []
    chunk = Chunk(
        {"meter": [*good[:4], reading("m-poison", 30), *good[4:]]},
        [],
        datetime.now(UTC),
        on_commit=lambda: committed.append(True),
    )
    with capture_logs() as logs:
        async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
            metrics = await run_writer(pool, chunk)
    assert committed == [True]
    assert await tripwire.fetchval("SELECT count(*) FROM meter_readings") == 9
    dead = await tripwire.fetchrow("SELECT * FROM rejected_messages")
    assert dead["reason"] == "database_error" and "m-poison" in dead["payload"].decode()
    assert "out of shared memory" in dead["detail"]
    assert metrics.rejected_total() == 1 and metrics.stored_total() == 9
    assert any(e["event"] == "writer.splitting" for e in logs)
    assert any(e["event"] == "writer.row_failed" for e in logs)


async def test_when_nothing_goes_through_nothing_is_dead_lettered(tripwire, database_url):
    """Every row fails the same way: the server's problem, not the rows'. Retried until the
    server takes them again, never dead-lettered."""
    await tripwire.execute("INSERT INTO tripwire VALUES ('*')")
    rows = [reading(f"m{i}", i) for i in range(6)]
    chunk = Chunk({"meter": rows}, [], datetime.now(UTC))
    with capture_logs() as logs:
        async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
            writing = asyncio.create_task(run_writer(pool, chunk))

            async def set_aside():
                return [e for e in logs if e["event"] == "writer.set_aside"]

            [event] = await eventually(set_aside, bool, timeout=30)
            assert event["readings"] == 6 and not event["others_went_through"]
            await asyncio.sleep(0.5)  # retrying them, not dead-lettering them
            assert not writing.done()
            await tripwire.execute("TRUNCATE tripwire")
            metrics = await writing
    assert await tripwire.fetchval("SELECT count(*) FROM meter_readings") == 6
    assert await tripwire.fetchval("SELECT count(*) FROM rejected_messages") == 0
    assert metrics.stored_total() == 6 and metrics.rejected_total() == 0


async def test_group_commit_writes_at_once_and_batches_what_arrives_during_a_write(
    db, database_url
):
    """Group commit (FLUSH_INTERVAL_MS=0): what arrives while a write is in flight (here:
    waiting on a lock) is the next batch, whole, committed in order."""
    buffer = IngestBuffer(1000)
    metrics = Metrics()
    committed: list[str] = []

    def chunk(device: str) -> Chunk:
        return Chunk(
            {"meter": [reading(device, 0)]},
            [],
            datetime.now(UTC),
            on_commit=lambda: committed.append(device),
        )

    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        writer = Writer(
            pool=pool, buffer=buffer, metrics=metrics, batch_size=1000, flush_interval_s=0,
            retry_max_s=0.05,
        )  # fmt: skip
        running = asyncio.create_task(writer.run())
        locker = await asyncpg.connect(database_url)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE meter_current IN EXCLUSIVE MODE")
            await buffer.put(chunk("g-first"))
            await eventually(
                lambda: db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ),
                lambda n: n >= 1,
            )  # the first write started at once and waits on the lock
            for device in ("g-second", "g-third"):
                await buffer.put(chunk(device))
            await tx.rollback()
        finally:
            await locker.close()
        await eventually(lambda: asyncio.sleep(0, len(committed)), lambda n: n == 3)
        buffer.close()
        await asyncio.wait_for(running, 10)
    assert committed == ["g-first", "g-second", "g-third"]
    sizes = [s for s in metrics.flush_size.collect()[0].samples if s.name.endswith("_count")]
    assert sizes[0].value == 2  # two writes: the first alone, then the two that waited


def test_a_batch_is_split_by_device_each_device_in_one_lane_in_order():
    readings = [reading(f"lane-{i % 7}", i) for i in range(50)]
    dead = Rejection("t", b"x", Reason.INVALID_JSON, "d")
    batch = Batch.of(readings, datetime.now(UTC), [dead])
    parts = split(batch, 3)
    assert parts[0].rejected == [dead] and not parts[1].rejected and not parts[2].rejected
    seen = [r for part in parts for r in part.rows["meter"].readings]
    assert sorted(seen, key=id) == sorted(readings, key=id)  # each reading exactly once
    for part in parts:
        rows = part.rows["meter"]
        assert len(rows.received) == len(rows.received_epochs) == len(rows.readings)
        for device in {r.meterId for r in rows.readings}:
            mine = [r for r in rows.readings if r.meterId == device]
            assert mine == [r for r in readings if r.meterId == device]  # all, in order
    assert split(batch, 1) == [batch]


async def test_lanes_write_at_once_and_acknowledge_in_the_order_taken(db, database_url):
    """Two lanes: a batch whose lane waits (a lock) holds back the acknowledgement of a
    later batch that another lane committed meanwhile; then both, in order."""
    first, second = (
        "lane-a-0",
        next(f"lane-b-{i}" for i in range(100) if hash(f"lane-b-{i}") % 2 != hash("lane-a-0") % 2),
    )
    buffer = IngestBuffer(1000)
    committed: list[str] = []

    def chunk(device: str) -> Chunk:
        return Chunk(
            {"meter": [reading(device, 0)]},
            [],
            datetime.now(UTC),
            on_commit=lambda: committed.append(device),
        )

    await db.execute(
        "INSERT INTO meter_current (meter_id, ts, kwh_consumed_ac, voltage, received_at) "
        "VALUES ($1, $2, 0, 230, $2)",
        first,
        BASE_TS - timedelta(days=1),
    )
    async with asyncpg.create_pool(database_url, min_size=1, max_size=3) as pool:
        writer = Writer(
            pool=pool, buffer=buffer, metrics=Metrics(), batch_size=1000, flush_interval_s=0,
            retry_max_s=0.05, lanes=2,
        )  # fmt: skip
        running = asyncio.create_task(writer.run())
        locker = await asyncpg.connect(database_url)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute(
                "SELECT 1 FROM meter_current WHERE meter_id = $1 FOR UPDATE", first
            )
            await buffer.put(chunk(first))
            await eventually(
                lambda: db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ),
                lambda n: n >= 1,
            )  # the first batch's lane waits on the row lock
            await buffer.put(chunk(second))
            await eventually(
                lambda: db.fetchval(
                    "SELECT count(*) FROM meter_readings WHERE meter_id = $1", second
                ),
                lambda n: n == 1,
            )  # the other lane committed the second batch while the first waits
            assert committed == []
            await tx.rollback()
        finally:
            await locker.close()
        await eventually(lambda: asyncio.sleep(0, len(committed)), lambda n: n == 2)
        buffer.close()
        await asyncio.wait_for(running, 10)
    assert committed == [first, second]
