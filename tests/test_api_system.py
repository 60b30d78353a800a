"""Health, metrics, tokens, error format, docs, and the read-only API process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from collector.settings import SettingsError, load_settings
from tests.helpers import BASE_TS, load, meter
from tests.services import MosquittoProcess, free_port, wait_for_port

pytestmark = pytest.mark.services

READ = "read-token-0123456789"
INGEST = "ingest-token-0123456789"


async def test_health_reports_every_part(api):
    r = await api.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["role"] == "collector"
    assert body["database"]["ok"] and body["broker"]["ok"]
    assert body["buffer"] == {"depth": 0, "capacity": 50000}
    assert (await api.get("/health/live")).json() == {"status": "alive"}


async def test_health_is_503_when_the_broker_is_gone(start_collector, tmp_path):
    broker = MosquittoProcess(tmp_path / "mosquitto").start()
    try:
        service = await start_collector(mqtt_url=broker.url)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
            assert (await client.get("/health")).status_code == 200
            broker.kill()
            for _ in range(100):
                r = await client.get("/health")
                if r.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert r.status_code == 503
            assert r.json()["broker"]["ok"] is False
            assert r.json()["database"]["ok"] is True
    finally:
        broker.kill()


@contextlib.asynccontextmanager
async def api_process(env: dict[str, str], cwd) -> AsyncIterator[httpx.AsyncClient]:
    """`energy-collector api` as a child process; yields a client, checks its clean exit."""
    port = free_port()
    env = {"PORT": str(port), "LOG_FORMAT": "json", "PATH": "/usr/bin:/bin", **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "api"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
    )
    try:
        await asyncio.to_thread(wait_for_port, port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert all(json.loads(line) for line in out.decode().splitlines() if line.strip())


async def test_health_is_503_when_the_database_is_unreachable(tmp_path):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    async with api_process({"DATABASE_URL": dead}, tmp_path) as client:
        r = await client.get("/health")
    assert r.status_code == 503
    body = r.json()
    assert body["role"] == "api" and body["broker"] is None
    assert body["database"]["ok"] is False and "Connect" in body["database"]["detail"]


async def test_metrics_exposition(api):
    await api.post("/v1/ingest", json=meter("m1", BASE_TS))
    r = await api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for name in (
        "collector_messages_received_total",
        "collector_readings_stored_total",
        "collector_flush_size_bucket",
        "collector_flush_seconds_bucket",
        "collector_buffer_depth",
        "collector_commit_lag_seconds_bucket",
        "collector_mqtt_connected 1.0",
    ):
        assert name in r.text
    assert "_created" not in r.text


async def test_errors_are_problem_details(api):
    r = await api.get("/v2/nothing")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert set(r.json()) >= {"type", "title", "status", "detail"}
    r = await api.delete("/v1/status/meters")
    assert r.status_code == 405
    assert r.json()["status"] == 405


async def test_docs_are_served_from_the_package(api):
    page = await api.get("/docs")
    assert page.status_code == 200
    assert "/static/swagger-ui/swagger-ui-bundle.js" in page.text
    assert "http" not in page.text.replace("http-equiv", ""), "no CDN at run time"
    js = await api.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 500_000
    assert (await api.get("/", follow_redirects=False)).headers["location"] == "/dashboard"


async def test_openapi_document(api):
    doc = (await api.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ("GET", "/v1/analytics/performance/{vehicleId}") in ops
    assert ("PUT", "/v1/links") in ops and ("POST", "/v1/ingest/vehicle") in ops
    perf = doc["components"]["schemas"]["Performance"]
    assert {"vehicleId", "efficiencyRatio", "status"} <= set(perf["properties"])


@pytest.fixture
async def secured(start_collector):
    service = await start_collector(
        read_tokens=f"{READ},another-read-token-01", ingest_tokens=INGEST
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_tokens_when_configured(secured, db):
    assert (await secured.get("/v1/status/meters")).status_code == 401
    assert (await secured.get("/v1/status/meters", headers=bearer("nope" * 5))).status_code == 401
    assert (await secured.get("/v1/status/meters", headers=bearer(INGEST))).status_code == 403
    assert (await secured.get("/v1/status/meters", headers=bearer(READ))).status_code == 200
    r = await secured.post("/v1/ingest", json=meter("m1", BASE_TS), headers=bearer(READ))
    assert r.status_code == 403
    r = await secured.post("/v1/ingest", json=meter("m1", BASE_TS), headers=bearer(INGEST))
    assert r.status_code == 200
    assert (await secured.get("/metrics")).status_code == 401
    # Probes and docs stay open.
    assert (await secured.get("/health")).status_code == 200
    assert (await secured.get("/openapi.json")).status_code == 200
    assert "Bearer" in (await secured.get("/v1/status/meters")).headers["www-authenticate"]


def test_short_tokens_are_refused_at_start():

    with pytest.raises(SettingsError, match="READ_TOKENS"):
        load_settings({"READ_TOKENS": "short"}, env_file=None)


async def test_read_only_api_process(database_url, db, tmp_path):
    """`energy-collector api`: reads work, ingest says where to send readings."""
    await load(db, meters=[("m1", BASE_TS, 1.0, 230.0)])
    async with api_process({"DATABASE_URL": database_url}, tmp_path) as client:
        assert (await client.get("/v1/status/meter/m1")).json()["kwhConsumedAc"] == 1.0
        r = await client.post("/v1/ingest", json=meter("m2", BASE_TS))
        assert r.status_code == 503
        assert "energy-collector run" in r.json()["detail"]
        health = (await client.get("/health")).json()
        assert health["role"] == "api" and health["broker"] is None
