"""Inputs that used to wedge ingest, exhaust memory or write across sites (issue 18).

Each test reproduces a defect found by an adversarial run against the documented
interfaces, and shows it fixed.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, date, datetime, timedelta

import asyncpg
import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from api import sessions
from collector.db.partitions import partition_spans
from collector.tools.local_services import PostgresProcess, free_port
from tests.conftest import forget_session
from tests.helpers import MQTT_URL, eventually, meter, publish, topic_for, vehicle
from tests.services import CollectorProcess

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def own_postgres():
    """A server of this module's own, with PostgreSQL's default lock table (64 locks per
    connection), so exhausting it cannot disturb the shared server."""
    pg = PostgresProcess()
    pg.init().start()
    yield pg
    pg.destroy()


def every_day_since_2000(device: str) -> list[dict]:
    """One reading a day from 2000-01-01 to yesterday: every day validation accepts."""
    days = (datetime.now(UTC).date() - date(2000, 1, 1)).days
    start = datetime(2000, 1, 1, 12, tzinfo=UTC)
    return [meter(device, start + timedelta(days=i), kwh=0.1) for i in range(days)]


@pytest.mark.timeout(300)
async def test_a_batch_of_far_apart_days_does_not_wedge_ingest(
    own_postgres, start_collector, prefix
):
    """Every day since 2000 in one request, twice (two meters), then maintenance: ingest
    goes on, MQTT readings are stored within seconds, and the server's other databases
    stay usable."""
    service = await start_collector(
        database_url=own_postgres.dsn("energy_wedge"), max_body_bytes=2 * 1024 * 1024
    )
    partitions = service.partitions
    assert partitions is not None
    first = every_day_since_2000("m-spread-a")
    assert len(first) > 9800
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{service.http_port}", timeout=120
    ) as client:
        r = await client.post(
            "/v1/ingest/meter",
            content=json.dumps(first),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200, r.text[:500]
        began = time.monotonic()
        await eventually(partitions.maintain, lambda report: not report.skipped, timeout=120)
        took = time.monotonic() - began
        assert took < 120, f"maintenance took {took:.0f} s"
        conn = await asyncpg.connect(own_postgres.dsn("energy_wedge"))
        try:
            spans = await partition_spans(conn, "meter_readings")
            in_default = await conn.fetchval("SELECT count(*) FROM meter_readings_default")
        finally:
            await conn.close()
        # about 27 years of months, and the days around today: not one partition a day
        assert 300 < len(spans) < 400, len(spans)
        assert in_default == 0

        second = every_day_since_2000("m-spread-b")
        r = await client.post(
            "/v1/ingest/meter",
            content=json.dumps(second),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200, r.text[:500]
        await eventually(partitions.maintain, lambda report: not report.skipped, timeout=120)

    now = datetime.now(UTC).replace(microsecond=0)
    live = [meter(f"m-live-{i}", now - timedelta(seconds=i)) for i in range(50)]
    published = time.monotonic()
    await asyncio.to_thread(
        publish, MQTT_URL, [(topic_for(m, prefix), json.dumps(m).encode()) for m in live]
    )
    conn = await asyncpg.connect(own_postgres.dsn("energy_wedge"))
    try:
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) FROM meter_readings WHERE meter_id LIKE 'm-live-%'"
            ),
            lambda n: n == 50,
            timeout=10,
        )
        assert time.monotonic() - published < 10
        stored = await conn.fetchval(
            "SELECT count(*) FROM meter_readings WHERE meter_id LIKE 'm-spread-%'"
        )
        assert stored == len(first) + len(second)
        assert await conn.fetchval("SELECT count(*) FROM rejected_messages") == 0
    finally:
        await conn.close()

    # Another database of the same server: plans over many relations still get their locks.
    other = await asyncpg.connect(own_postgres.dsn("postgres"))
    try:
        await other.execute("CREATE TABLE IF NOT EXISTS bystander (id int)")
        assert await other.fetchval("SELECT count(*) FROM pg_class") > 0
        await other.execute("DROP TABLE bystander")
    finally:
        await other.close()


# --- 2. one request cannot multiply ----------------------------------------------------------


async def test_a_request_is_bounded_in_items_and_in_its_rejection_report(api, db):
    tiny = b"[" + b",".join([b"1"] * 524_287) + b"]"  # 1 MiB of items
    r = await api.post("/v1/ingest", content=tiny, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "at most 10000 per request" in r.json()["detail"]
    assert len(r.content) < 2000
    lines = b"\n".join([b"1"] * 10_001)
    r = await api.post(
        "/v1/ingest", content=lines, headers={"content-type": "application/x-ndjson"}
    )
    assert r.status_code == 413
    assert await db.fetchval("SELECT count(*) FROM rejected_messages") == 0  # nothing kept

    r = await api.post("/v1/ingest", json=[1] * 5000)
    assert r.status_code == 422
    body = r.json()
    assert body["rejectedCount"] == 5000 and len(body["rejected"]) == 100
    assert len(r.content) < 20_000
    # 5,000 identical dead letters are one row that says how often.
    row = await db.fetchrow("SELECT reason, repeats FROM rejected_messages")
    assert tuple(row) == ("invalid_shape", 5000)


# --- 3. cross-site writes --------------------------------------------------------------------


async def test_writes_need_a_json_media_type_this_origin_and_a_known_host(start_collector, db):
    service = await start_collector(allowed_origins="https://ops.example.com")
    base = f"http://127.0.0.1:{service.http_port}"
    body = json.dumps(meter("m-x", datetime(2026, 2, 9, tzinfo=UTC))).encode()
    async with httpx.AsyncClient(base_url=base) as client:
        # what a no-cors fetch with a Blob, or sendBeacon, sends: no Content-Type, or text/plain
        assert (await client.post("/v1/ingest", content=body)).status_code == 415
        for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            r = await client.post("/v1/ingest", content=body, headers={"content-type": media})
            assert r.status_code == 415, media
        json_type = {"content-type": "application/json"}
        for origin in ("https://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"):
            r = await client.post(
                "/v1/ingest", content=body, headers={**json_type, "origin": origin}
            )
            assert r.status_code == 403, origin
            assert "another site" in r.json()["detail"]
        link = {"vehicleId": "v-x", "meterId": "m-x"}
        r = await client.put("/v1/links", json=link, headers={"origin": "https://evil.example"})
        assert r.status_code == 403
        r = await client.delete("/v1/links/v-x", headers={"origin": "https://evil.example"})
        assert r.status_code == 403
        r = await client.post(
            "/dashboard/login", data={"token": "x"}, headers={"origin": "https://evil.example"}
        )
        assert r.status_code == 403
        # DNS rebinding: the right address, another name
        r = await client.get("/v1/status/meters", headers={"host": "attacker.example:8000"})
        assert r.status_code == 400
        r = await client.post(
            "/v1/ingest", content=body, headers={**json_type, "host": "evil.test"}
        )
        assert r.status_code == 400
        assert await db.fetchval("SELECT count(*) FROM meter_readings") == 0

        # the same origin, an allowed one, and clients that send no Origin (devices) pass
        for headers in ({"origin": base}, {"origin": "https://ops.example.com"}, {}):
            r = await client.post("/v1/ingest", content=body, headers={**json_type, **headers})
            assert r.status_code == 200, (headers, r.text)
        r = await client.get("/health", headers={"host": "localhost"})
        assert r.status_code == 200


# --- 5. client mistakes are never a 500 -------------------------------------------------------


async def test_deep_nesting_and_out_of_range_windows_are_client_errors(api, db):
    deep = b'{"meterId":"m-d","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    good = json.dumps(meter("m-ok", datetime(2026, 2, 9, tzinfo=UTC))).encode()
    with capture_logs() as logs:
        r = await api.post(
            "/v1/ingest",
            content=good + b"\n" + deep,
            headers={"content-type": "application/x-ndjson"},
        )
        assert r.status_code == 207, r.text
        assert r.json()["rejected"][0]["reason"] == "invalid_json"
        r = await api.post("/v1/ingest", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["rejected"][0]["reason"] == "invalid_json"
        r = await api.post("/v1/ingest", content=b"[" + deep + b"]",
                           headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 422
        for query in (
            "to=0001-01-01T00:00:00Z",
            "from=9999-12-31T00:00:00Z&to=9999-12-31T23:59:59-14:00",
            "from=1999-12-31T00:00:00Z&to=2000-01-02T00:00:00Z",
        ):
            for path in ("/v1/analytics/fleet", "/v1/analytics/performance/v1"):
                r = await api.get(f"{path}?{query}")
                assert r.status_code == 422, (path, query, r.text)
                assert "must lie between 2000-01-01 and 2100-01-01" in r.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM meter_readings WHERE meter_id = 'm-ok'") == 1
    assert not [e for e in logs if e["event"] == "api.unhandled_error"]


async def test_nul_in_free_text_is_a_client_error_not_a_server_error(api):
    """PostgreSQL text cannot hold NUL: who acknowledges, a silence's comment (400)."""
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with capture_logs() as logs:
        r = await api.post("/v1/alerts/1/acknowledge", json={"by": "op\u0000erator"})
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["name"] == "by"
        r = await api.post(
            "/v1/silences",
            json={"rule": "battery_hot", "until": until, "by": "o", "comment": "\x00"},
        )
        assert r.status_code == 400, r.text
    assert not [e for e in logs if e["event"] == "api.unhandled_error"]


# --- 6. links in any year --------------------------------------------------------------------


async def test_links_obey_the_time_bounds_and_pages_survive_a_stored_odd_one(api, db):
    r = await api.put("/v1/links", json={"vehicleId": "v1", "meterId": "m1",
                                         "startedAt": "0001-01-01T00:00:00Z"})  # fmt: skip
    assert r.status_code == 422 and "before 2000-01-01" in r.json()["detail"]
    # One stored before the bound existed:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    await api.post("/v1/ingest", json=[meter("m1", now), vehicle("v1", now)])
    await db.execute(
        "INSERT INTO vehicle_meter_links (vehicle_id, meter_id, started_at) "
        "VALUES ('v1', 'm1', '0001-01-01T00:00:00Z')"
    )
    for path in ("/dashboard/vehicles/v1", "/dashboard/meters/m1", "/dashboard"):
        assert (await api.get(path)).status_code == 200, path
    assert (await api.delete("/v1/links/v1")).status_code == 200
    for path in ("/dashboard/vehicles/v1", "/dashboard/meters/m1"):
        r = await api.get(path)
        assert r.status_code == 200 and "0001-01-01" in r.text, path


# --- 10. sub-microsecond timestamps ----------------------------------------------------------


async def test_timestamps_finer_than_microseconds_are_refused_not_merged(api, db):
    stamps = [
        "2026-02-09T10:00:00.1234567Z",
        "2026-02-09T10:00:00.1234568Z",  # the same microsecond as the one before
        "2026-02-09T10:00:01.500000000Z",  # nanoseconds, but only zeros past the sixth digit
    ]
    readings = [{**meter("m-ns", datetime(2026, 2, 9, tzinfo=UTC)), "timestamp": t} for t in stamps]
    r = await api.post("/v1/ingest", json=readings)
    assert r.status_code == 207
    assert [(x["index"], x["reason"]) for x in r.json()["rejected"]] == [
        (0, "invalid_timestamp"),
        (1, "invalid_timestamp"),
    ]
    assert "fractional digits" in r.json()["rejected"][0]["detail"]
    stored = await db.fetch("SELECT ts FROM meter_readings WHERE meter_id = 'm-ns'")
    assert [row["ts"] for row in stored] == [datetime(2026, 2, 9, 10, 0, 1, 500000, tzinfo=UTC)]


# --- 11. ambiguous payloads, health details ---------------------------------------------------


async def test_a_field_given_twice_is_refused_over_every_path(api, db, prefix):
    twice = (
        b'{"meterId":"evil","meterId":"m-1","kwhConsumedAc":1,"voltage":230,'
        b'"timestamp":"2026-02-09T10:00:00Z"}'
    )
    escaped = twice.replace(b'"meterId":"m-1"', b'"met\\u0065rId":"m-1"')
    r = await api.post("/v1/ingest", content=twice, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["rejected"][0]["reason"] == "duplicate_field"
    r = await api.post("/v1/ingest", content=b"[" + escaped + b"]",
                       headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 422 and r.json()["rejected"][0]["reason"] == "duplicate_field"
    r = await api.post(
        "/v1/ingest", content=twice, headers={"content-type": "application/x-ndjson"}
    )
    assert r.status_code == 422
    await asyncio.to_thread(publish, MQTT_URL, [(f"{prefix}/meters/m-1/reading", twice)])
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM rejected_messages "
            "WHERE topic LIKE $1 AND reason = 'duplicate_field'",
            f"{prefix}/%",
        ),
        lambda n: n == 1,
    )
    assert await db.fetchval("SELECT count(*) FROM meter_readings") == 0


async def test_health_shows_error_details_only_to_readers(start_collector, database_url):
    read = "read-token-0123456789abcdef"
    service = await start_collector(read_tokens=read, database_url=database_url)
    service.writer.health.database_ok = False  # as after a failed write
    service.writer.health.last_error = "OSError: could not open /var/lib/postgresql/secret"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
        anyone = (await client.get("/health")).json()
        reader = (await client.get("/health", headers={"authorization": f"Bearer {read}"})).json()
    assert anyone["status"] == reader["status"] == "unavailable"
    assert "secret" not in json.dumps(anyone)
    assert "secret" in reader["database"]["detail"]


# --- 4. HTTP ingest while the database is down -----------------------------------------------


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise AssertionError(f"process {pid} is gone")


@pytest.mark.fault
@pytest.mark.timeout(180)
async def test_waiting_requests_hold_bounded_memory_while_the_database_is_down(tmp_path, prefix):
    """60 concurrent requests of ~0.9 MB while PostgreSQL is stopped: every one is answered
    within the ingest timeout, the collector's memory stays bounded (it grew by 330 MB for
    40 such requests before), and what was queued is stored once the database is back."""
    pg = PostgresProcess()
    pg.init().start()
    port = free_port()
    proc = CollectorProcess(
        {
            "DATABASE_URL": pg.dsn("energy_outage"),
            "MQTT_URL": MQTT_URL,
            "MQTT_TOPIC_PREFIX": prefix,
            "MQTT_CLIENT_ID": f"collector-{prefix}",
            "MQTT_SESSION_EXPIRY_S": "60",
            "PORT": str(port),
            "INGEST_TIMEOUT_S": "5",
        },
        tmp_path / "collector.log",
    ).start()
    try:
        proc.wait_for_log("collector.started", 30)
        assert proc.proc is not None
        pid = proc.proc.pid
        base = rss_mb(pid)
        pg.stop("fast")
        t0 = datetime(2026, 2, 9, tzinfo=UTC)

        def body(r: int) -> bytes:
            rows = [meter(f"m{r}-{i % 50}", t0 + timedelta(minutes=i)) for i in range(9400)]
            return json.dumps(rows).encode()

        bodies = [body(r) for r in range(60)]
        assert len(bodies[0]) > 850_000
        peak = base

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits
        ) as client:

            async def post(data: bytes) -> tuple[int, str, float]:
                began = time.monotonic()
                r = await client.post(
                    "/v1/ingest", content=data, headers={"content-type": "application/json"}
                )
                return r.status_code, r.json()["detail"], time.monotonic() - began

            answers = await asyncio.gather(*(post(b) for b in bodies))
        sampler.cancel()
        assert {status for status, _, _ in answers} == {503}
        assert max(took for _, _, took in answers) < 15
        assert peak - base < 150, f"RSS grew from {base} to {peak} MB"
        queued = sum("are queued and will be stored" in detail for _, detail, _ in answers)
        assert 0 < queued < 60

        pg.start()
        conn = await asyncpg.connect(pg.dsn("energy_outage"))
        try:
            await eventually(
                lambda: conn.fetchval("SELECT count(*) FROM meter_readings"),
                lambda n: n == queued * 9400,
                timeout=60,
            )
        finally:
            await conn.close()
    finally:
        proc.kill()
        pg.destroy()
        await asyncio.to_thread(forget_session, MQTT_URL, f"collector-{prefix}")


# --- 7. the dashboard's session -------------------------------------------------------------

READ_TOKEN = "read-token-0123456789abcdef"


async def sign_in(client: httpx.AsyncClient, headers: dict[str, str] | None = None):
    return await client.post(
        "/dashboard/login", data={"token": READ_TOKEN, "next": "/dashboard"}, headers=headers
    )


async def test_the_cookie_is_a_session_the_server_ends_and_secure_behind_a_trusted_proxy(
    start_collector, db
):
    behind = await start_collector(read_tokens=READ_TOKEN, trusted_proxies="127.0.0.1")
    direct = await start_collector(read_tokens=READ_TOKEN)
    https = {"x-forwarded-proto": "https"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{behind.http_port}") as client:
        r = await sign_in(client, https)
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert "Secure" in cookie and READ_TOKEN not in cookie
        session = r.cookies["energy_collector_session"]
        assert await db.fetchval("SELECT count(*) FROM dashboard_sessions") >= 1
        copy = {"cookie": f"energy_collector_session={session}"}
        assert (await client.get("/dashboard", headers={**https, **copy})).status_code == 200
        # (the client keeps no Secure cookie over http: send it as the browser would)
        out = await client.post("/dashboard/logout", headers={**https, **copy})
        assert out.status_code == 303
        # Signing out ended the session: a copy of the cookie opens nothing now.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{behind.http_port}") as thief:
            r = await thief.get("/dashboard", headers={**https, **copy})
            assert r.status_code == 303 and "/dashboard/login" in r.headers["location"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{direct.http_port}") as client:
        # The same header from an address that is not a trusted proxy changes nothing.
        r = await sign_in(client, https)
        assert r.status_code == 303 and "Secure" not in r.headers["set-cookie"]


async def test_a_session_ends_when_its_token_is_no_longer_configured(start_collector):
    before = await start_collector(read_tokens=READ_TOKEN)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{before.http_port}") as client:
        session = (await sign_in(client)).cookies["energy_collector_session"]
    after = await start_collector(read_tokens="another-read-token-0123456789")
    copy = {"cookie": f"energy_collector_session={session}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{after.http_port}") as client:
        assert (await client.get("/dashboard", headers=copy)).status_code == 303


async def test_a_signed_replica_session_opens_nothing_on_the_primary(start_collector):
    """Round 3, item 10: signed sessions are for read replicas; the primary has rows."""
    service = await start_collector(read_tokens=READ_TOKEN)
    cookie = sessions.signed_session(READ_TOKEN)  # as a replica would sign it
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
        client.cookies.set("energy_collector_session", cookie, path="/dashboard")
        r = await client.get("/dashboard")
        assert r.status_code == 303 and "/dashboard/login" in r.headers["location"]


# --- 8. slow and idle clients ----------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_idle_and_slow_clients_cannot_starve_others(start_collector):
    """Three times HTTP_MAX_CONNECTIONS held open, idle or sending headers slowly: others
    are still answered at once, and the held ones are closed after the header timeout."""
    service = await start_collector(http_max_connections=20, http_header_timeout_s=2)
    port = service.http_port
    held = []
    for i in range(60):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if i % 3 == 0:  # slowloris: a request line and some headers, never the end
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            await writer.drain()
        held.append((reader, writer))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        for _ in range(5):
            began = time.monotonic()
            r = await client.get("/health/live", headers={"connection": "close"})
            assert r.status_code == 200
            assert time.monotonic() - began < 1.0
    await asyncio.sleep(2.5)  # past the header timeout

    async def closed_by_server(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(), 2) is not None  # EOF (or 503)
        except (ConnectionError, TimeoutError):
            return isinstance(reader.exception(), ConnectionError)

    results = [await closed_by_server(reader) for reader, _ in held]
    assert all(results), f"{results.count(False)} of 60 still open"
    for _, writer in held:
        writer.close()


@pytest.mark.timeout(60)
async def test_health_and_metrics_answer_while_slow_uploads_hold_every_connection(
    start_collector,
):
    """Round 3, item 12: HTTP_MAX_CONNECTIONS uploads, each sending its body a little at a
    time: /health/live and /metrics are still answered (the reserve), other requests get a
    clear 503, and the uploads themselves are not disturbed."""
    service = await start_collector(http_max_connections=16, http_body_timeout_s=20)
    port = service.http_port
    uploads = []
    for _ in range(16):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/ingest/meter HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n[{"
        )
        await writer.drain()
        uploads.append((reader, writer))
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        for _ in range(5):  # new connections each time
            began = time.monotonic()
            r = await client.get("/health/live", headers={"connection": "close"})
            assert r.status_code == 200, r.text
            assert time.monotonic() - began < 2.0
        r = await client.get("/metrics", headers={"connection": "close"})
        assert r.status_code == 200 and "collector_" in r.text
        r = await client.get("/v1/status/meter/m1", headers={"connection": "close"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
    for reader, writer in uploads:  # still open: nobody was evicted for the probes
        assert not reader.at_eof()
        writer.close()


# --- round 3, 7. bounded request heads -------------------------------------------------------


async def _raw_request(port: int, head: bytes, stream_mb: int = 0) -> tuple[bytes, int]:
    """Send ``head`` and then up to ``stream_mb`` MiB more of one header's value (never
    ending it) until the server answers; returns the answer and the bytes sent by then."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(reader.read())
    sent = 0
    try:
        writer.write(head)
        sent += len(head)
        for _ in range(stream_mb * 16):
            if answer.done():
                break
            writer.write(b"a" * (1 << 16))
            await writer.drain()
            sent += 1 << 16
            await asyncio.sleep(0)
    except ConnectionError:
        pass
    try:
        got = await asyncio.wait_for(answer, 10)
    except ConnectionError:
        got = b""
    writer.close()
    return got, sent


async def test_request_heads_are_bounded_in_size_and_count(start_collector):
    service = await start_collector()
    port = service.http_port
    # one header that never ends: 431 once past the limit, not after 50 MB
    answer, sent = await _raw_request(
        port, b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ", stream_mb=50
    )
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert b"over 16384 bytes" in answer
    assert sent < 8 << 20  # answered long before: nothing near 50 MB read
    # a long URL is part of the head too
    answer, _ = await _raw_request(
        port, b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    # too many header fields
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(150))
    answer, _ = await _raw_request(
        port, b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert b"more than 100 header fields" in answer
    # within the limits: answered, also several requests on one connection
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(3):
            r = await client.get("/health/live", headers={"x-fine": "b" * 12_000})
            assert r.status_code == 200
            r = await client.get("/health/live", headers={f"x-{i}": "1" for i in range(90)})
            assert r.status_code == 200


# --- 9. retained invalid messages ------------------------------------------------------------


async def test_a_retained_invalid_message_is_one_dead_letter_however_often_it_comes(
    start_collector, db, prefix
):
    topic = f"{prefix}/meters/m-r/reading"
    retained = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"retain-{prefix}")
    endpoint = httpx.URL(MQTT_URL.replace("mqtt://", "http://"))
    retained.connect(endpoint.host, endpoint.port or 1883)
    retained.loop_start()
    try:
        retained.publish(topic, b"not json", qos=1, retain=True).wait_for_publish(5)
        query = "SELECT reason, repeats FROM rejected_messages WHERE topic = $1"
        for start in range(3):  # the first start, then two restarts: three subscriptions
            service = await start_collector()
            await eventually(
                lambda: db.fetch(query, topic),
                lambda rows, n=start + 1: len(rows) == 1 and rows[0]["repeats"] == n,
            )
            service.request_stop("restart")
            await asyncio.sleep(0.5)
        rows = await db.fetch(query, topic)
        assert len(rows) == 1 and rows[0]["reason"] == "invalid_json"
        assert rows[0]["repeats"] == 3
    finally:
        retained.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)  # clear it
        retained.loop_stop()
        retained.disconnect()


# --- 11. the real cause after a lost connection ----------------------------------------------


async def test_a_lost_connection_is_reported_as_such(start_collector, db, api):
    service = api.service
    with capture_logs() as logs:
        # the writer's connection goes away under it (as in a database restart)
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'energy-collector' AND datname = current_database()"
        )
        r = await api.post("/v1/ingest", json=meter("m-lost", datetime(2026, 2, 9, tzinfo=UTC)))
        assert r.status_code == 200
    retrying = [e for e in logs if e["event"] == "writer.retrying"]
    assert all("terminate()" not in e["error"] for e in retrying), retrying
    assert service.writer is not None and service.writer.health.database_ok
