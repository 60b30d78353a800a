"""The writer facing a database that refuses it for a reason waiting cannot fix."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from structlog.testing import capture_logs

from collector.db.errors import diagnose
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
