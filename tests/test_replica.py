"""`energy-collector api` against a real hot standby.

A throwaway primary (wal_level replica) and a standby made from it with
``pg_basebackup -R`` (``standby.signal``), both on free ports; the API runs as its own
process against the standby. It serves status, analytics and the dashboard with the
primary's figures, answers writes with 503, reports the replication lag in /health, and
a query cancelled by a recovery conflict (provoked for real) is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from starlette.requests import Request

from api import sessions
from api.problems import on_database_refusal
from api.queries import links as ql
from api.replica import is_recovery_conflict
from api.reports import analytics as analytics_report
from collector.settings import load_settings
from collector.tools.local_services import PostgresProcess, _pg_bin
from tests.helpers import load, meter
from tests.test_api_system import api_process

pytestmark = pytest.mark.services

TOKEN = "replica-reader-token"
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
START = NOW - timedelta(hours=3, minutes=30)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[PostgresProcess, PostgresProcess]]:
    primary = PostgresProcess(settings={"wal_level": "replica", "max_wal_senders": "4"})
    primary.init().start()
    standby = PostgresProcess(settings={"hot_standby": "on", "max_standby_streaming_delay": "0"})
    try:
        if os.geteuid() == 0:
            shutil.chown(standby.dir, "postgres", "postgres")
        subprocess.run(
            standby._as_owner(
                [_pg_bin("pg_basebackup"), "-D", str(standby.data), "-R", "-X", "stream",
                 "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"]
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        standby.start()
        yield primary, standby
    finally:
        standby.destroy()
        primary.destroy()


async def replayed(standby_dsn: str, sql: str, expected: object) -> None:
    """Wait until the standby answers ``sql`` with ``expected`` (replication is async)."""
    for _ in range(200):
        try:
            conn = await asyncpg.connect(standby_dsn)
        except asyncpg.InvalidCatalogNameError:  # CREATE DATABASE not replayed yet
            await asyncio.sleep(0.05)
            continue
        try:
            if await conn.fetchval(sql) == expected:
                return
        except asyncpg.UndefinedTableError:
            pass
        finally:
            await conn.close()
        await asyncio.sleep(0.05)
    raise AssertionError(f"the standby never replayed: {sql} = {expected!r}")


@pytest.fixture(scope="module")
async def fleet(servers) -> tuple[str, str]:
    """The schema and three hours of a small fleet on the primary, replayed."""
    primary, standby = servers
    dsn = primary.dsn("energy")
    env = {**os.environ, "DATABASE_URL": dsn}
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "collector", "migrate"],
        env=env,
        check=True,
        capture_output=True,
    )
    conn = await asyncpg.connect(dsn)
    try:
        minutes = [START + timedelta(minutes=i) for i in range(0, 210, 5)]
        await load(
            conn,
            meters=[(f"m{d}", t, 0.5 + d / 10, 230.0) for d in range(4) for t in minutes],
            vehicles=[(f"v{d}", t, 50.0, (0.5 + d / 10) * 0.9, 30.0) for d in range(4)
                      for t in minutes],
        )  # fmt: skip
        for d in range(4):
            await ql.put_link(conn, f"v{d}", f"m{d}", START - timedelta(hours=1))
    finally:
        await conn.close()
    await replayed(standby.dsn("energy"), "SELECT count(*) FROM vehicle_meter_links", 4)
    return dsn, standby.dsn("energy")


@pytest.fixture(scope="module")
async def replica_api(fleet, tmp_path_factory) -> AsyncIterator[httpx.AsyncClient]:
    env = {"DATABASE_URL": fleet[1], "READ_TOKENS": TOKEN}
    async with api_process(env, tmp_path_factory.mktemp("api")) as client:
        client.headers["authorization"] = f"Bearer {TOKEN}"
        yield client


async def test_the_replica_serves_the_primarys_figures(fleet, replica_api):
    health = await replica_api.get("/health")
    assert health.status_code == 200, health.text
    replication = health.json()["replication"]
    assert replication["lagSeconds"] is not None and replication["lagSeconds"] <= 300
    assert replication["replayLsn"] and replication["maxLagSeconds"] == 300

    window = {"from": START.isoformat(), "to": NOW.isoformat()}
    r = await replica_api.get("/v1/analytics/fleet", params=window)
    assert r.status_code == 200, r.text
    conn = await asyncpg.connect(fleet[0])
    try:
        direct = await analytics_report.fleet(conn, load_settings({}, env_file=None), START, NOW)
    finally:
        await conn.close()
    body = r.json()
    assert body["totalKwhConsumedAc"] == direct.summary.totalKwhConsumedAc
    assert body["totalKwhDeliveredDc"] == direct.summary.totalKwhDeliveredDc
    assert body["vehiclesByStatus"] == direct.summary.vehiclesByStatus.model_dump()
    assert (await replica_api.get("/v1/analytics/fleet")).json()["asOf"]
    for path in ("/v1/status/vehicle/v1", "/v1/analytics/performance/v1", "/v1/status/meters"):
        assert (await replica_api.get(path)).status_code == 200, path


async def test_new_readings_on_the_primary_reach_the_replica(fleet, replica_api):
    conn = await asyncpg.connect(fleet[0])
    try:
        await load(conn, meters=[("m-late", NOW - timedelta(minutes=1), 1.0, 231.0)])
    finally:
        await conn.close()
    for _ in range(100):
        r = await replica_api.get("/v1/status/meter/m-late")
        if r.status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert r.status_code == 200 and r.json()["voltage"] == 231.0


async def test_writes_are_refused_with_503(replica_api):
    r = await replica_api.put("/v1/links", json={"vehicleId": "v9", "meterId": "m9"})
    assert r.status_code == 503, r.text
    assert "read replica" in r.json()["detail"]
    r = await replica_api.post("/v1/ingest", json=meter("m1", NOW))
    assert r.status_code == 503


async def test_dashboard_sign_in_on_the_replica(replica_api):
    anonymous = httpx.AsyncClient(base_url=replica_api.base_url)
    async with anonymous as b:
        assert (await b.get("/dashboard")).status_code in (303, 401)
        r = await b.post("/dashboard/login", data={"token": TOKEN, "next": "/dashboard"})
        assert r.status_code == 303, r.text
        cookie = r.cookies.get("energy_collector_session")
        assert cookie and cookie.startswith("s2.") and TOKEN not in cookie
        assert r.headers["set-cookie"].count("Max-Age=3600") == 1  # an hour at most
        b.cookies.set("energy_collector_session", cookie, path="/dashboard")
        page = await b.get("/dashboard")
        assert page.status_code == 200 and "v1" in page.text
        b.cookies.set("energy_collector_session", cookie[:-4] + "0000", path="/dashboard")
        assert (await b.get("/dashboard")).status_code != 200  # a forged signature


async def test_signed_sessions_cannot_be_minted_from_the_database_nor_made_to_last(
    replica_api,
):
    """Round 3, item 10: the key is not the token digest the sessions table holds, and an
    expiry further ahead than a signed session lasts is refused."""
    stored = hashlib.sha256(TOKEN.encode()).digest()  # dashboard_sessions.token_sha256
    later = int(time.time()) + 1800
    forged = {
        "s1 from the stored digest": f"s1.{later}.{_mac(stored, f's1.{later}')}",
        "s2 from the stored digest": f"s2.{later}.{_mac(stored, f's2.{later}')}",
        "a year ahead, the right key": (
            f"s2.{later + 365 * 86400}."
            f"{_mac(sessions.signing_key(TOKEN.encode()), f's2.{later + 365 * 86400}')}"
        ),
    }
    right = f"s2.{later}.{_mac(sessions.signing_key(TOKEN.encode()), f's2.{later}')}"
    async with httpx.AsyncClient(base_url=replica_api.base_url) as b:
        for what, cookie in {**forged, "the right key, within the hour": right}.items():
            b.cookies.set("energy_collector_session", cookie, path="/dashboard")
            status = (await b.get("/dashboard")).status_code
            assert (status == 200) == (what == "the right key, within the hour"), what


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


async def test_a_recovery_conflict_is_retryable_not_500(fleet):
    primary_dsn, standby_dsn = fleet
    reader = await asyncpg.connect(standby_dsn)
    writer = await asyncpg.connect(primary_dsn)
    try:
        query = asyncio.create_task(
            reader.fetchval("SELECT count(*) FROM meter_readings, pg_sleep(20)")
        )
        await asyncio.sleep(0.5)
        async with writer.transaction():  # replayed as a lock the standby's query blocks
            await writer.execute("LOCK TABLE meter_current IN ACCESS EXCLUSIVE MODE")
            await writer.execute("LOCK TABLE meter_readings IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(asyncpg.PostgresError) as caught:
            await asyncio.wait_for(query, 15)
    finally:
        await writer.close()
        await reader.close()
    assert is_recovery_conflict(caught.value), repr(caught.value)
    scope = {"type": "http", "method": "GET", "path": "/v1/analytics/fleet", "headers": []}
    response = await on_database_refusal(Request(scope), caught.value)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
