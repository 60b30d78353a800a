"""Migrations: applied in order, recorded, idempotent, and an edited file is refused."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from collector.db.migrations import (
    Migration,
    MigrationError,
    available_migrations,
    ensure_database,
    migrate,
    pending_migrations,
)
from tests.helpers import ADMIN_URL, database_url_for

pytestmark = pytest.mark.services


@pytest.fixture
async def empty_database():
    name = f"energy_mig_{uuid.uuid4().hex[:8]}"
    url = database_url_for(ADMIN_URL, name)
    yield url
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


def test_shipped_migrations_are_numbered_and_ordered():
    migrations = available_migrations()
    assert migrations, "sql/*.sql must ship with the package"
    versions = [m.version for m in migrations]
    assert versions == sorted(versions)
    assert versions[0] == 1


async def test_migrate_creates_database_and_schema_once(empty_database):
    assert await ensure_database(empty_database) is True
    assert await ensure_database(empty_database) is False
    conn = await asyncpg.connect(empty_database)
    try:
        assert len(await pending_migrations(conn)) == len(available_migrations())
        applied = await migrate(conn)
        assert applied == [m.version for m in available_migrations()]
        assert await migrate(conn) == []
        assert await pending_migrations(conn) == []
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {
            "meter_readings",
            "vehicle_readings",
            "meter_current",
            "vehicle_current",
            "rejected_messages",
            "schema_migrations",
        } <= tables
    finally:
        await conn.close()


async def test_changed_migration_is_refused(empty_database):
    await ensure_database(empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        first = [Migration(1, "one", "CREATE TABLE t1 (x int);")]
        await migrate(conn, first)
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, [Migration(1, "one", "CREATE TABLE t1 (x bigint);")])
    finally:
        await conn.close()


async def test_failed_migration_leaves_nothing_half_applied(empty_database):
    await ensure_database(empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        broken = [Migration(1, "one", "CREATE TABLE t1 (x int); SELECT no_such_function();")]
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrate(conn, broken)
        assert await conn.fetchval("SELECT to_regclass('t1')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
    finally:
        await conn.close()


async def test_range_query_on_one_device_uses_the_key_index(db):
    await db.execute("""
        INSERT INTO meter_readings (meter_id, ts, kwh_consumed_ac, voltage)
        SELECT 'm' || (i % 500), now() - make_interval(mins => i / 500), 1, 230
        FROM generate_series(1, 50000) AS i""")
    await db.execute("ANALYZE meter_readings")
    plan_text = "\n".join(
        r[0]
        for r in await db.fetch("""
        EXPLAIN SELECT sum(kwh_consumed_ac) FROM meter_readings
        WHERE meter_id = 'm7' AND ts >= now() - interval '1 hour' AND ts < now()""")
    )
    assert "Index" in plan_text, plan_text
    assert "Seq Scan" not in plan_text, plan_text


async def test_collectors_starting_together_create_and_migrate_once(empty_database):
    results = await asyncio.gather(*(ensure_database(empty_database) for _ in range(4)))
    assert results.count(True) == 1

    async def migrate_once() -> list[int]:
        conn = await asyncpg.connect(empty_database)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    applied = await asyncio.gather(*(migrate_once() for _ in range(3)))
    assert sorted(len(a) for a in applied) == [0, 0, len(available_migrations())]
