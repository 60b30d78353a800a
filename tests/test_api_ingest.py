"""HTTP ingest: formats, per-item results after the commit, limits, dead letters."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import BASE_TS, meter, vehicle

pytestmark = pytest.mark.services


async def rows(db, table: str) -> int:
    return await db.fetchval(f"SELECT count(*) FROM {table}")


async def test_one_reading(api, db):
    r = await api.post("/v1/ingest", json=meter("m1", BASE_TS, kwh=1.5))
    assert r.status_code == 200
    assert r.json() == {"accepted": 1, "rejectedCount": 0, "rejected": []}
    # The response comes after the commit: the row is there now, no waiting.
    assert await db.fetchval("SELECT kwh_consumed_ac FROM meter_readings") == 1.5


async def test_array_of_both_kinds(api, db):
    body = [meter("m1", BASE_TS), vehicle("v1", BASE_TS), meter("m2", BASE_TS)]
    r = await api.post("/v1/ingest", json=body)
    assert r.status_code == 200 and r.json()["accepted"] == 3
    assert (await rows(db, "meter_readings"), await rows(db, "vehicle_readings")) == (2, 1)
    assert await rows(db, "vehicle_current") == 1


async def test_ndjson(api, db):
    lines = [json.dumps(meter("m1", BASE_TS)), "", json.dumps(vehicle("v1", BASE_TS)), "{oops"]
    r = await api.post(
        "/v1/ingest", content="\n".join(lines), headers={"content-type": "application/x-ndjson"}
    )
    assert r.status_code == 207
    body = r.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {"index": 2, "reason": "invalid_json", "detail": body["rejected"][0]["detail"]}
    ]
    dead = await db.fetchrow("SELECT * FROM rejected_messages")
    assert (dead["topic"], dead["reason"], dead["payload"]) == (
        "http:/v1/ingest",
        "invalid_json",
        b"{oops",
    )


async def test_mixed_batch_is_207_with_a_reason_per_rejected_item(api, db):
    body = [
        meter("m1", BASE_TS),
        {**vehicle("v1", BASE_TS), "soc": 140},
        {"something": "else"},
        42,
        meter("m2", BASE_TS),
    ]
    r = await api.post("/v1/ingest", json=body)
    assert r.status_code == 207
    result = r.json()
    assert result["accepted"] == 2
    assert [(x["index"], x["reason"]) for x in result["rejected"]] == [
        (1, "out_of_range"),
        (2, "unknown_kind"),
        (3, "invalid_shape"),
    ]
    assert await rows(db, "rejected_messages") == 3
    assert await rows(db, "meter_readings") == 2


async def test_nothing_accepted_is_422_problem_with_the_reasons(api, db):
    r = await api.post("/v1/ingest", json=[{**meter("m1", BASE_TS), "voltage": "high"}])
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["accepted"] == 0
    assert body["rejected"][0]["reason"] == "invalid_type"
    assert await rows(db, "rejected_messages") == 1


async def test_body_that_is_not_json_is_rejected_and_kept(api, db):
    r = await api.post(
        "/v1/ingest", content=b"definitely not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["rejected"][0]["reason"] == "invalid_json"
    assert await db.fetchval("SELECT payload FROM rejected_messages") == b"definitely not json"


async def test_typed_endpoints(api, db):
    assert (await api.post("/v1/ingest/meter", json=meter("m1", BASE_TS))).status_code == 200
    assert (await api.post("/v1/ingest/vehicle", json=[vehicle("v1", BASE_TS)])).status_code == 200
    # A vehicle reading sent to the meter endpoint is not a meter reading.
    r = await api.post("/v1/ingest/meter", json=vehicle("v2", BASE_TS))
    assert r.status_code == 422
    assert r.json()["rejected"][0]["reason"] == "missing_field"


async def test_duplicates_are_absorbed(api, db):
    reading = meter("m1", BASE_TS)
    for _ in range(3):
        assert (await api.post("/v1/ingest", json=reading)).status_code == 200
    assert await rows(db, "meter_readings") == 1


async def test_empty_body_is_400(api):
    for content in (b"[]", b"\n\n"):
        r = await api.post(
            "/v1/ingest",
            content=content,
            headers={
                "content-type": "application/x-ndjson"
                if content.startswith(b"\n")
                else "application/json"
            },
        )
        assert r.status_code == 400


async def test_oversized_body_is_413(start_collector):

    service = await start_collector(max_body_bytes=2048)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
        big = [meter(f"m{i}", BASE_TS) for i in range(100)]
        r = await client.post("/v1/ingest", json=big)
        assert r.status_code == 413
        assert "2048" in r.json()["detail"]

        async def chunks():  # no Content-Length: the limit holds while streaming too
            for _ in range(10):
                yield b" " * 1000

        r = await client.post(
            "/v1/ingest", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413


async def test_other_media_types_are_415(api):
    r = await api.post("/v1/ingest", content=b"a,b", headers={"content-type": "text/csv"})
    assert r.status_code == 415


@pytest.mark.parametrize("path", ["/v1/ingest", "/v1/ingest/meter"])
async def test_metrics_count_http_ingest(api, path):
    await api.post(path, json=[meter("m1", BASE_TS), {**meter("m2", BASE_TS), "voltage": -1}])
    text = (await api.get("/metrics")).text
    assert 'collector_messages_received_total{source="http"} 2.0' in text
    assert 'collector_messages_rejected_total{reason="out_of_range"} 1.0' in text
