"""Alert delivery under trouble (issue 26, items 2, 4, 5, 9): a receiver that drips its
answer, one rule's receiver failing, a sender killed mid-send, a webhook URL changed. Real
collectors, the real database, real receivers and the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import httpx
import pytest

from collector.alerts.targets import Webhook
from tests.alert_receivers import DripReceiver, WebhookReceiver
from tests.helpers import arrived_live, eventually
from tests.test_alerts_e2e import meter, no_retained_left, retained  # noqa: F401 - a fixture

pytestmark = pytest.mark.services

RULES = """
[[rule]]
name = "silent_a"
kind = "silent"
stream = "meter"
for_s = 60

[[rule]]
name = "silent_b"
kind = "silent"
stream = "meter"
for_s = 60
"""


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return path


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().up()
    yield r
    r.down()


def settings(rules_file: Path, **more: object) -> dict:
    return {
        "alert_rules_file": str(rules_file),
        "alert_interval_s": 1,
        "alert_efficiency_interval_s": 1,
        "alert_retry_max_s": 1,
        **more,
    }


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


async def ingest(client: httpx.AsyncClient, service, readings: list[dict]) -> None:
    url = f"http://127.0.0.1:{service.http_port}/v1/ingest/meter"
    response = await client.post(url, json=readings)
    assert response.status_code == 200, response.text


async def went_quiet(client: httpx.AsyncClient, service, db, device: str) -> None:
    """A meter whose last reading, 10 minutes ago, arrived live: silent now."""
    await ingest(client, service, [meter(device, 600, 1.0)])
    await arrived_live(db, "meter", [device])


async def stopped(service, db) -> None:
    """Stop a collector and wait until its alert leadership is gone."""
    service.request_stop("test: stops")
    await eventually(
        lambda: db.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
        lambda n: n == 0,
        timeout=20,
    )


def sample(service, name: str, labels: dict[str, str]) -> float | None:
    value: float | None = service.metrics.registry.get_sample_value(name, labels)
    return value


async def test_a_receiver_dripping_its_answer_holds_back_neither_the_rules_nor_mqtt(
    start_collector, db, client, rules_file, prefix
):
    """It answers 200 and then a byte every half second: each request fails after
    ALERT_WEBHOOK_TIMEOUT_S in all, and meanwhile the rules are evaluated and MQTT served."""
    drip = DripReceiver()
    try:
        service = await start_collector(
            **settings(rules_file, alert_webhook_urls=drip.url, alert_webhook_timeout_s=1)
        )
        tag = uuid.uuid4().hex[:6]
        first, second = f"m-first-{tag}", f"m-second-{tag}"
        await went_quiet(client, service, db, first)
        told_on_mqtt = (
            "SELECT count(*) FROM alert_notifications WHERE target = 'mqtt' AND sent_at IS NOT NULL"
        )
        await eventually(lambda: db.fetchval(told_on_mqtt), lambda n: n == 2, timeout=15)
        cut = (
            "SELECT max(attempts) FROM alert_notifications WHERE target LIKE 'webhook:%' "
            "AND sent_at IS NULL AND last_error LIKE '%no complete answer in 1 s%'"
        )
        await eventually(lambda: db.fetchval(cut), lambda n: (n or 0) >= 2, timeout=15)
        # the rules are still evaluated: a second device fires and is told on MQTT
        passes = service.alerts.passes
        await went_quiet(client, service, db, second)
        await eventually(lambda: db.fetchval(told_on_mqtt), lambda n: n == 4, timeout=15)
        assert service.alerts.passes > passes
        assert service.alerts.leader
        topics = await retained(prefix)
        assert {f"{prefix}/alerts/silent_a/{d}" for d in (first, second)} <= set(topics)
        assert drip.connections >= 2
        failed = sample(
            service, "collector_alert_notifications_failed_total", {"target": "webhook"}
        )
        assert failed and failed >= 2
    finally:
        drip.close()


async def test_one_rules_failing_receiver_neither_starves_nor_repeats_another_and_gives_up(
    start_collector, db, client, rules_file, receiver
):
    receiver.refuse = {"silent_a"}
    service = await start_collector(
        **settings(rules_file, alert_webhook_urls=receiver.url, alert_mqtt="false"),
        alert_give_up_s=4,
    )
    device = f"m-{uuid.uuid4().hex[:6]}"
    await went_quiet(client, service, db, device)
    given_up = (
        "SELECT count(*) FROM alert_notifications n JOIN alerts a ON a.id = n.alert_id "
        "WHERE a.rule = 'silent_a' AND n.given_up_at IS NOT NULL AND n.sent_at IS NULL "
        "AND n.last_error LIKE '%answered 500%'"
    )
    await eventually(lambda: db.fetchval(given_up), lambda n: n == 1, timeout=20)
    assert len(receiver.refused) >= 2  # silent_a was tried again and again
    b_requests = [b for _, b in receiver.requests if json.loads(b)["rule"] == "silent_b"]
    assert len(b_requests) == 1  # silent_b, taken at once, was told once
    assert receiver.of("silent_b", device) == ["firing"]
    assert sample(
        service, "collector_alert_notifications_given_up_total", {"target": "webhook"}
    ) == pytest.approx(1)
    unsent = (
        "SELECT count(*) FROM alert_notifications WHERE sent_at IS NULL AND given_up_at IS NULL"
    )
    assert await db.fetchval(unsent) == 0
    # a given-up notification holds nothing back: the device reports, both resolve
    receiver.refuse = set()
    await ingest(client, service, [meter(device, 1, 1.0)])
    await eventually(
        lambda: _async(lambda: told(receiver, device)),
        lambda t: t == (["resolved"], ["firing", "resolved"]),
        timeout=15,
    )


async def test_after_a_sender_dies_mid_send_the_retained_topic_shows_the_newest_alert(
    start_collector, db, client, rules_file, prefix
):
    """Alert 1's resolution is held by a dead sender's lease; alert 2 (same rule and
    device) fires meanwhile. The resolution goes first, then the firing: the retained
    topic holds alert 2, not the empty message that clears alert 1."""
    device = f"m-{uuid.uuid4().hex[:6]}"
    topic = f"{prefix}/alerts/silent_a/{device}"
    first = await start_collector(**settings(rules_file))
    await went_quiet(client, first, db, device)
    sent = (
        "SELECT count(*) FROM alert_notifications n JOIN alerts a ON a.id = n.alert_id "
        "WHERE a.rule = 'silent_a' AND n.sent_at IS NOT NULL"
    )
    await eventually(lambda: db.fetchval(sent), lambda n: n == 1, timeout=15)
    await stopped(first, db)
    alert_1 = await db.fetchval("SELECT id FROM alerts WHERE rule = 'silent_a'")
    async with db.transaction():
        await db.execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = now(), value = 1 WHERE id = $1",
            alert_1,
        )
        await db.execute(  # leased 3 s more by a sender that died while sending it
            "INSERT INTO alert_notifications (alert_id, target, transition, value, at, "
            "attempts, claimed_until) VALUES ($1, 'mqtt', 'resolved', 1, now(), 1, "
            "now() + interval '3 s')",
            alert_1,
        )
        alert_2 = await db.fetchval(
            "INSERT INTO alerts (rule, kind, device_id, state, severity, value, since, "
            "fired_at, notified) VALUES ('silent_a', 'meter', $1, 'firing', 'warning', 600, "
            "now() - interval '10 min', now(), true) RETURNING id",
            device,
        )
        await db.execute(
            "INSERT INTO alert_notifications (alert_id, target, transition, value, at) "
            "VALUES ($1, 'mqtt', 'firing', 600, now())",
            alert_2,
        )
    heard: list[tuple[int | None, str | None]] = []
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"sub-{uuid.uuid4().hex[:8]}") as sub:
        await sub.subscribe(topic, qos=1)

        async def listen() -> None:
            async for message in sub.messages:
                if not message.retain:  # what is published from now on, in order
                    body = json.loads(message.payload) if message.payload else {}
                    heard.append((body.get("alertId"), body.get("state")))

        listener = asyncio.create_task(listen())
        try:
            await start_collector(**settings(rules_file), mqtt_client_id=f"c2-{prefix}")
            await eventually(lambda: _async(lambda: len(heard)), lambda n: n >= 3, timeout=20)
        finally:
            listener.cancel()
    assert heard == [(alert_1, "resolved"), (None, None), (alert_2, "firing")]
    now_retained = await retained(prefix)
    assert now_retained[topic]["alertId"] == alert_2
    assert now_retained[topic]["state"] == "firing"


async def test_a_changed_webhook_url_never_drops_undelivered_notifications(
    start_collector, db, client, rules_file, receiver
):
    """The old URL's unsent notification stays unsent (and visible) while two webhooks are
    configured, and goes to the webhook when one is."""
    gone = WebhookReceiver()  # never up: connections refused
    other = WebhookReceiver().up()
    try:
        base = settings(rules_file, alert_mqtt="false")
        device = f"m-{uuid.uuid4().hex[:6]}"
        first = await start_collector(**base, alert_webhook_urls=gone.url)
        await went_quiet(client, first, db, device)
        tried = (
            "SELECT count(*) FROM alert_notifications n JOIN alerts a ON a.id = n.alert_id "
            "WHERE a.rule = 'silent_a' AND n.attempts >= 1 AND n.sent_at IS NULL"
        )
        await eventually(lambda: db.fetchval(tried), lambda n: n == 1, timeout=15)
        await stopped(first, db)
        old_key = Webhook(gone.url, secret=b"", timeout_s=1, descriptions={}).key

        two = await start_collector(**base, alert_webhook_urls=f"{receiver.url},{other.url}")
        await eventually(lambda: _async(lambda: two.alerts.passes), lambda n: n >= 3)
        assert sample(
            two, "collector_alert_notifications_undeliverable", {"key": old_key}
        ) == pytest.approx(2)  # silent_a and silent_b
        waiting = await db.fetch(
            "SELECT target, sent_at, given_up_at FROM alert_notifications ORDER BY id"
        )
        assert {(r["target"], r["sent_at"], r["given_up_at"]) for r in waiting} == {
            (old_key, None, None)
        }
        assert receiver.items() == other.items() == []
        await stopped(two, db)

        await start_collector(**base, alert_webhook_urls=receiver.url)
        await eventually(
            lambda: _async(
                lambda: (receiver.of("silent_a", device), receiver.of("silent_b", device))
            ),
            lambda told: told == (["firing"], ["firing"]),
            timeout=15,
        )
        assert other.items() == []
    finally:
        other.down()


def told(receiver: WebhookReceiver, device: str) -> tuple[list[str], list[str]]:
    return receiver.of("silent_a", device), receiver.of("silent_b", device)


async def _async(fn):
    return fn()
