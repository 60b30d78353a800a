"""Status endpoints and vehicle-meter links, over HTTP against the running collector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import load

pytestmark = pytest.mark.services

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def fleet(db):
    await load(
        db,
        meters=[(f"m{i}", NOW - timedelta(minutes=10 * i), 1.0 + i, 230.0 + i) for i in range(5)],
        vehicles=[
            (f"v{i}", NOW - timedelta(minutes=10 * i), 20.0 * i, 0.5, 25.0 + i) for i in range(5)
        ],
    )


async def test_meter_status(api, fleet):
    r = await api.get("/v1/status/meter/m2")
    assert r.status_code == 200
    body = r.json()
    assert body["meterId"] == "m2"
    assert body["kwhConsumedAc"] == 3.0 and body["voltage"] == 232.0
    assert datetime.fromisoformat(body["timestamp"]) == NOW - timedelta(minutes=20)
    # The reading's age as of now: NOW was fixed when the module was imported,
    # which can be minutes before this test runs on a busy CI machine.
    expected_age = (datetime.now(UTC) - (NOW - timedelta(minutes=20))).total_seconds()
    assert expected_age - 30 < body["ageSeconds"] <= expected_age + 1
    assert body["linkedVehicleId"] is None


async def test_vehicle_status(api, fleet):
    body = (await api.get("/v1/status/vehicle/v3")).json()
    assert (body["vehicleId"], body["soc"], body["kwhDeliveredDc"], body["batteryTemp"]) == (
        "v3",
        60.0,
        0.5,
        28.0,
    )
    assert body["linkedMeterId"] is None


@pytest.mark.parametrize("path", ["/v1/status/meter/nope", "/v1/status/vehicle/nope"])
async def test_unknown_device_is_404_problem(api, fleet, path):
    r = await api.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "never reported" in r.json()["detail"]


@pytest.mark.parametrize("bad", ["a%20b", "-dash-first", "x" * 65, "%00"])
async def test_bad_device_id_is_400(api, bad):
    r = await api.get(f"/v1/status/meter/{bad}")
    assert r.status_code == 400
    assert "invalid meterId" in r.json()["detail"]


async def test_meter_list_pages_by_id(api, fleet):
    first = (await api.get("/v1/status/meters", params={"limit": 2})).json()
    assert [m["meterId"] for m in first["items"]] == ["m0", "m1"]
    assert first["nextCursor"] == "m1"
    second = (
        await api.get("/v1/status/meters", params={"limit": 2, "cursor": first["nextCursor"]})
    ).json()
    assert [m["meterId"] for m in second["items"]] == ["m2", "m3"]
    last = (await api.get("/v1/status/meters", params={"limit": 2, "cursor": "m3"})).json()
    assert [m["meterId"] for m in last["items"]] == ["m4"]
    assert last["nextCursor"] is None


async def test_silent_filter(api, fleet):
    body = (await api.get("/v1/status/meters", params={"silentForMinutes": 25})).json()
    assert [m["meterId"] for m in body["items"]] == ["m3", "m4"]


async def test_vehicle_filters(api, fleet):
    body = (await api.get("/v1/status/vehicles", params={"socBelow": 50})).json()
    assert [v["vehicleId"] for v in body["items"]] == ["v0", "v1", "v2"]
    body = (
        await api.get("/v1/status/vehicles", params={"socBelow": 50, "silentForMinutes": 15})
    ).json()
    assert [v["vehicleId"] for v in body["items"]] == ["v2"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "ten"},
        {"silentForMinutes": -1},
        {"cursor": "bad id"},
        {"socBelow": 101},
    ],
)
async def test_bad_list_parameters_are_400(api, params):
    path = "/v1/status/vehicles" if "socBelow" in params else "/v1/status/meters"
    r = await api.get(path, params=params)
    assert r.status_code == 400
    assert r.json()["errors"][0]["name"] == next(iter(params))


async def test_link_lifecycle(api, fleet):
    r = await api.put("/v1/links", json={"vehicleId": "v1", "meterId": "m1"})
    assert r.status_code == 201
    assert r.json()["endedAt"] is None
    assert (
        await api.put("/v1/links", json={"vehicleId": "v1", "meterId": "m1"})
    ).status_code == 200
    assert (await api.get("/v1/status/vehicle/v1")).json()["linkedMeterId"] == "m1"
    assert (await api.get("/v1/status/meter/m1")).json()["linkedVehicleId"] == "v1"

    # The vehicle moves to another charger: the first link ends.
    assert (
        await api.put("/v1/links", json={"vehicleId": "v1", "meterId": "m2"})
    ).status_code == 201
    # Another vehicle takes m2: v1's link to m2 ends too.
    assert (
        await api.put("/v1/links", json={"vehicleId": "v2", "meterId": "m2"})
    ).status_code == 201
    history = (await api.get("/v1/links/v1")).json()
    assert history["current"] is None
    assert [link["meterId"] for link in history["history"]] == ["m2", "m1"]
    assert all(link["endedAt"] for link in history["history"])
    assert (await api.get("/v1/status/meter/m2")).json()["linkedVehicleId"] == "v2"

    ended = await api.delete("/v1/links/v2")
    assert ended.status_code == 200 and ended.json()["endedAt"] is not None
    assert (await api.delete("/v1/links/v2")).status_code == 404
    assert (await api.get("/v1/links/v2")).json()["current"] is None


async def test_link_with_start_time_and_history_only_moving_forward(api, fleet):
    t = NOW - timedelta(hours=3)
    r = await api.put(
        "/v1/links", json={"vehicleId": "v1", "meterId": "m1", "startedAt": t.isoformat()}
    )
    assert r.status_code == 201, r.text
    assert datetime.fromisoformat(r.json()["startedAt"]) == t
    r = await api.put(
        "/v1/links",
        json={
            "vehicleId": "v1",
            "meterId": "m2",
            "startedAt": (t - timedelta(hours=1)).isoformat(),
        },
    )
    assert r.status_code == 409
    assert "only moves forward" in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"vehicleId": "v1"},
        {"vehicleId": "v1", "meterId": "bad id"},
        {"vehicleId": "v1", "meterId": "m1", "extra": 1},
        {"vehicleId": "v1", "meterId": "m1", "startedAt": "2026-01-01T00:00:00"},
        {"vehicleId": 5, "meterId": "m1"},
    ],
)
async def test_bad_link_bodies_are_400(api, body):
    r = await api.put("/v1/links", json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_links_of_unknown_vehicle_is_404(api):
    assert (await api.get("/v1/links/ghost")).status_code == 404
    assert (await api.delete("/v1/links/ghost")).status_code == 404


async def test_link_starting_in_the_future_is_422(api):
    r = await api.put(
        "/v1/links", json={"vehicleId": "v1", "meterId": "m1", "startedAt": "2030-01-01T00:00:00Z"}
    )
    assert r.status_code == 422
    assert "future" in r.json()["detail"]
