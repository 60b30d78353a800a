"""Alerts end to end: readings into the real database, the collector's evaluation, and
what a real webhook receiver, a real MQTT subscriber and a real Alertmanager are told."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import httpx
import pytest

from collector.alerts.payloads import SIGNATURE_HEADER
from tests.alert_receivers import AlertmanagerProcess, WebhookReceiver
from tests.helpers import arrived_live, eventually, iso

pytestmark = pytest.mark.services

SECRET = "test-webhook-secret"
RULES = """
[[rule]]
name = "battery_hot"
kind = "threshold"
field = "batteryTemp"
above = 55.0
for_s = 60
clear_below = 50.0
severity = "critical"

[[rule]]
name = "device_silent"
kind = "silent"
stream = "meter"
for_s = 120

[[rule]]
name = "low_efficiency"
kind = "efficiency"
below = 0.85
min_ac_kwh = 1.0

[[rule]]
name = "register_anomaly"
kind = "register"
"""


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().up()
    yield r
    r.down()


@pytest.fixture(scope="module")
def alertmanager() -> Iterator[AlertmanagerProcess]:
    am = AlertmanagerProcess().start()
    yield am
    am.stop()


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return path


def alert_settings(receiver: WebhookReceiver, rules_file: Path, **more: object) -> dict:
    return {
        "alert_rules_file": str(rules_file),
        "alert_interval_s": 1,
        "alert_efficiency_interval_s": 1,
        "alert_webhook_urls": receiver.url,
        "alert_webhook_secret": SECRET,
        "alert_retry_max_s": 1,
        **more,
    }


def vehicle(device: str, ago_s: float, temp: float = 25.0, dc: float = 0.0) -> dict:
    ts = datetime.now(UTC) - timedelta(seconds=ago_s)
    return {
        "vehicleId": device,
        "soc": 50.0,
        "kwhDeliveredDc": dc,
        "batteryTemp": temp,
        "timestamp": iso(ts),
    }


def meter(device: str, ago_s: float, ac: float = 0.0, **fields: float) -> dict:
    ts = datetime.now(UTC) - timedelta(seconds=ago_s)
    body = {"meterId": device, "voltage": 230.0, "timestamp": iso(ts)}
    body.update(fields or {"kwhConsumedAc": ac})
    return body


async def open_alerts(api: httpx.AsyncClient, **query: str) -> list[dict]:
    response = await api.get("/v1/alerts", params=query)
    assert response.status_code == 200, response.text
    return response.json()["alerts"]


async def states(api: httpx.AsyncClient) -> dict[tuple[str, str], str]:
    return {(a["rule"], a["deviceId"]): a["state"] for a in await open_alerts(api)}


async def retained(prefix: str, seconds: float = 1.5) -> dict[str, dict]:
    """What a subscriber that connects now is given on the alert topics."""
    seen: dict[str, dict] = {}
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"sub-{uuid.uuid4().hex[:8]}") as c:
        await c.subscribe(f"{prefix}/alerts/#", qos=1)
        try:
            async with asyncio.timeout(seconds):
                async for message in c.messages:
                    if message.payload:
                        seen[str(message.topic)] = json.loads(message.payload)
        except TimeoutError:
            pass
    return seen


async def clear_retained(prefix: str) -> None:
    """Remove the retained alert messages left on the broker under ``prefix``."""
    topics = await retained(prefix, seconds=0.5)
    if topics:
        async with aiomqtt.Client("127.0.0.1", 1883) as c:
            for topic in topics:
                await c.publish(topic, b"", qos=1, retain=True)


@pytest.fixture(autouse=True)
async def no_retained_left(prefix: str) -> AsyncIterator[None]:
    """Each test's retained alert messages are removed after it (its collectors stopped)."""
    yield
    await clear_retained(prefix)


@pytest.fixture
async def alert_api(start_collector, receiver, rules_file, alertmanager) -> AsyncIterator:
    service = await start_collector(
        **alert_settings(
            receiver, rules_file, alertmanager_url=alertmanager.url, alertmanager_resend_s=5
        )
    )
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{service.http_port}", timeout=30
    ) as client:
        client.service = service  # type: ignore[attr-defined]
        yield client


async def test_each_rule_kind_fires_and_resolves_on_every_target(
    alert_api, db, receiver, alertmanager, prefix
):
    api, tag = alert_api, uuid.uuid4().hex[:6]
    hot, quiet, slow, slow_meter, reg = (
        f"v-hot-{tag}", f"m-quiet-{tag}", f"v-slow-{tag}", f"m-slow-{tag}", f"m-reg-{tag}"
    )  # fmt: skip
    # battery_hot: above 55 for 2 minutes of readings (for_s is 60)
    hot_readings = [vehicle(hot, 150, 57.0), vehicle(hot, 90, 58.0), vehicle(hot, 30, 58.5)]
    assert (await api.post("/v1/ingest/vehicle", json=hot_readings)).status_code == 200
    # device_silent: a meter whose latest reading is 5 minutes old (for_s is 120)
    assert (await api.post("/v1/ingest/meter", json=[meter(quiet, 300, 1.0)])).status_code == 200
    await arrived_live(db, "meter", [quiet])  # it was live, then fell silent
    # low_efficiency: 10 kWh AC in, 5 kWh DC out
    link = {
        "vehicleId": slow,
        "meterId": slow_meter,
        "startedAt": iso(datetime.now(UTC) - timedelta(hours=1)),
    }
    assert (await api.put("/v1/links", json=link)).status_code == 201
    await api.post(
        "/v1/ingest/meter", json=[meter(slow_meter, 600 - 60 * i, 2.0) for i in range(5)]
    )
    await api.post(
        "/v1/ingest/vehicle", json=[vehicle(slow, 600 - 60 * i, dc=1.0) for i in range(5)]
    )
    # register_anomaly: a register that restarts from 0
    registers = [100.0, 100.5, 0.2, 0.6]
    await api.post(
        "/v1/ingest/meter",
        json=[meter(reg, 400 - 60 * i, kwhRegisterAc=v) for i, v in enumerate(registers)],
    )
    expected = {
        ("battery_hot", hot): "firing",
        ("device_silent", quiet): "firing",
        ("low_efficiency", slow): "firing",
        ("register_anomaly", reg): "firing",
    }
    await eventually(lambda: states(api), lambda s: expected.items() <= s.items(), timeout=20)
    # readings that arrived late, as in a replay (slow_meter's, reg's: 360 s and 220 s old
    # on arrival, for_s 120), are not silence: those devices are talking
    now_open = await states(api)
    assert ("device_silent", slow_meter) not in now_open and ("device_silent", reg) not in now_open

    # webhooks: one firing each, signed, naming rule, device, state, severity, value, when
    await eventually(
        lambda: _async(receiver.items),
        lambda items: {(i["rule"], i["deviceId"]) for i in items} >= set(expected),
        timeout=15,
    )
    for headers, body in receiver.requests:
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == signature
    hot_item = next(i for i in receiver.items() if i["deviceId"] == hot)
    assert hot_item["state"] == "firing"
    assert hot_item["severity"] == "critical"
    assert hot_item["value"] == pytest.approx(58.5)
    assert datetime.fromisoformat(hot_item["at"]) <= datetime.now(UTC)
    assert next(i for i in receiver.items() if i["deviceId"] == slow)["value"] == pytest.approx(0.5)

    # MQTT: a subscriber connecting now sees what fires, retained
    topics = await retained(prefix)
    assert {f"{prefix}/alerts/{rule}/{device}" for rule, device in expected} <= set(topics)
    # Alertmanager: active, labelled by rule and device
    held = await asyncio.to_thread(alertmanager.alerts)
    assert {(a["labels"]["alertname"], a["labels"]["device"]) for a in held} >= set(expected)
    for a in held:  # ends after the next re-send (4 x ALERTMANAGER_RESEND_S)
        ends = datetime.fromisoformat(a["endsAt"].replace("Z", "+00:00"))
        assert ends - datetime.now(UTC) > timedelta(seconds=10)
        assert a["status"]["state"] == "active"

    def hot_in_alertmanager() -> dict:
        return next(a for a in alertmanager.alerts() if a["labels"]["device"] == hot)

    first = await asyncio.to_thread(hot_in_alertmanager)
    await eventually(  # re-sent while it fires: Alertmanager sees it again, endsAt moved
        lambda: asyncio.to_thread(hot_in_alertmanager),
        lambda a: a["endsAt"] > first["endsAt"],
        timeout=15,
        interval=0.5,
    )

    # Resolve each: cooler (the band 50-55 keeps it firing), a reading, more DC, a replacement
    await api.post("/v1/ingest/vehicle", json=[vehicle(hot, 20, 52.0)])
    await asyncio.sleep(2.5)
    assert (await states(api))[("battery_hot", hot)] == "firing"  # hysteresis
    await api.post("/v1/ingest/vehicle", json=[vehicle(hot, 10, 49.0)])
    await api.post("/v1/ingest/meter", json=[meter(quiet, 1, 1.0)])
    await api.post("/v1/ingest/vehicle", json=[vehicle(slow, 30, dc=4.0)])
    swap = {"at": iso(datetime.now(UTC) - timedelta(seconds=310)), "finalKwh": 100.7}
    assert (await api.post(f"/v1/registers/meter/{reg}/replacements", json=swap)).status_code == 201
    await eventually(lambda: states(api), lambda s: not (set(expected) & set(s)), timeout=20)
    for rule, device in expected:
        await eventually(
            lambda r=rule, d=device: _async(lambda: receiver.of(r, d)),
            lambda told: told == ["firing", "resolved"],
            timeout=15,
        )
    # each target has a courier of its own: the webhook's "resolved" says nothing of when
    # MQTT's and Alertmanager's are sent, so wait for those too
    await eventually(
        lambda: retained(prefix),
        lambda topics: not set(topics) & {f"{prefix}/alerts/{r}/{d}" for r, d in expected},
        timeout=15,
    )
    await eventually(
        lambda: asyncio.to_thread(alertmanager.alerts),
        lambda held: (
            not {(a["labels"]["alertname"], a["labels"]["device"]) for a in held} & set(expected)
        ),
        timeout=15,
    )

    history = (await api.get(f"/v1/alerts/device/vehicle/{hot}")).json()["alerts"]
    assert [(a["rule"], a["state"]) for a in history] == [("battery_hot", "resolved")]
    assert history[0]["value"] == pytest.approx(49.0)


async def _async(fn):
    return fn()


async def test_restarts_two_collectors_and_a_down_receiver_lose_and_repeat_nothing(
    start_collector, db, receiver, rules_file
):
    """Two collectors share the database: one evaluates. The receiver goes down, the
    leader stops while a resolution waits in the outbox, the other takes over and tells it
    once the receiver is back; the stopped one restarts and tells nothing again."""
    settings = alert_settings(receiver, rules_file, alert_mqtt="false")
    first = await start_collector(**settings)
    second = await start_collector(**settings, mqtt_client_id=f"second-{uuid.uuid4().hex[:6]}")
    services = [first, second]
    await eventually(
        lambda: _async(lambda: sorted(s.alerts.leader for s in services if s.alerts)),
        lambda leaders: leaders == [False, True],
    )
    leader = next(s for s in services if s.alerts and s.alerts.leader)
    other = next(s for s in services if s is not leader)
    base = f"http://127.0.0.1:{first.http_port}"
    quiet = [f"m-quiet-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    async with httpx.AsyncClient(base_url=base, timeout=30) as api:
        await api.post("/v1/ingest/meter", json=[meter(m, 600, 1.0) for m in quiet])
        await arrived_live(db, "meter", quiet)
        for m in quiet:
            await eventually(
                lambda m=m: _async(lambda: receiver.of("device_silent", m)),
                lambda told: told == ["firing"],
                timeout=15,
            )
        receiver.down()
        await api.post("/v1/ingest/meter", json=[meter(m, 1, 1.0) for m in quiet])
        await eventually(
            lambda: db.fetchval(
                "SELECT count(*) FROM alert_notifications WHERE transition = 'resolved' "
                "AND sent_at IS NULL AND attempts >= 2"
            ),
            lambda n: n == len(quiet),
            timeout=15,
        )
    failed = leader.metrics.registry.get_sample_value(
        "collector_alert_notifications_failed_total", {"target": "webhook"}
    )
    assert failed and failed >= len(quiet)
    # the leader stops with the resolutions unsent; the other collector takes over
    leader.request_stop("test: leader stops")
    await eventually(lambda: _async(lambda: other.alerts.leader), lambda x: x, timeout=15)
    receiver.up()
    for m in quiet:
        await eventually(
            lambda m=m: _async(lambda: receiver.of("device_silent", m)),
            lambda told: told == ["firing", "resolved"],
            timeout=20,
        )
    # the stopped collector comes back: nothing is told again, nothing fires again
    await start_collector(**settings, mqtt_client_id=f"third-{uuid.uuid4().hex[:6]}")
    passes = other.alerts.passes
    await eventually(lambda: _async(lambda: other.alerts.passes), lambda n: n >= passes + 3)
    for m in quiet:
        assert receiver.of("device_silent", m) == ["firing", "resolved"]
    ids = [i["deliveryId"] for i in receiver.items()]
    assert len(ids) == len(set(ids))
    rows = await db.fetch("SELECT state, count(*) AS n FROM alerts GROUP BY state")
    assert {r["state"]: r["n"] for r in rows} == {"resolved": len(quiet)}


async def test_a_silence_holds_notifications_back_and_an_acknowledgement_is_kept(
    alert_api, db, receiver
):
    api, tag = alert_api, uuid.uuid4().hex[:6]
    loud, muted = f"m-loud-{tag}", f"m-muted-{tag}"
    until = iso(datetime.now(UTC) + timedelta(seconds=4))
    silence = {"kind": "meter", "deviceId": muted, "until": until, "by": "ops", "comment": "work"}
    created = await api.post("/v1/silences", json=silence)
    assert created.status_code == 201, created.text
    listed = (await api.get("/v1/silences")).json()["silences"]
    assert [s["deviceId"] for s in listed] == [muted]
    await api.post("/v1/ingest/meter", json=[meter(loud, 600, 1.0), meter(muted, 600, 1.0)])
    await arrived_live(db, "meter", [loud, muted])
    await eventually(
        lambda: states(api),
        lambda s: s.get(("device_silent", loud)) == s.get(("device_silent", muted)) == "firing",
        timeout=15,
    )
    await eventually(
        lambda: _async(lambda: receiver.of("device_silent", loud)), lambda t: t == ["firing"]
    )
    muted_alert = (await open_alerts(api, deviceId=muted))[0]
    assert muted_alert["silenced"] is True
    assert receiver.of("device_silent", muted) == []
    # the silence ends while it still fires: it is told then
    await eventually(
        lambda: _async(lambda: receiver.of("device_silent", muted)),
        lambda t: t == ["firing"],
        timeout=15,
    )
    ack = await api.post(f"/v1/alerts/{muted_alert['id']}/acknowledge", json={"by": "alice"})
    assert ack.status_code == 200
    assert ack.json()["acknowledgedBy"] == "alice"
    again = await api.post(f"/v1/alerts/{muted_alert['id']}/acknowledge", json={"by": "bob"})
    assert again.json()["acknowledgedBy"] == "alice"  # the first acknowledgement stands
    assert (await api.get("/v1/alerts", params={"severity": "critical"})).json()["alerts"] == []
    filtered = await open_alerts(api, rule="device_silent", kind="meter")
    assert {a["deviceId"] for a in filtered} >= {loud, muted}
    # bad input: clear errors
    assert (await api.post("/v1/silences", json={"until": until, "by": "x"})).status_code == 422
    assert (await api.post("/v1/alerts/999999/acknowledge", json={"by": "x"})).status_code == 404
    assert (await api.get("/v1/alerts", params={"severity": "loud"})).status_code == 400
    assert (await api.get("/v1/alerts/abc")).status_code == 400
    assert (await api.delete("/v1/silences/%C2%B2")).status_code == 400  # "²" is no number
    ended = await api.delete(f"/v1/silences/{created.json()['id']}")
    assert ended.status_code == 200 and ended.json()["active"] is False
