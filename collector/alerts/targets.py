"""Where notifications go: webhooks, the broker's alert topics, Alertmanager.

Each target sends a list of notifications (one rule's, in outbox order) and raises
:class:`DeliveryError` if the receiver did not take all of them; the outbox then retries
them later. A target is named by a stable key in the outbox (``webhook:<digest>``, never
the URL, which may hold a password).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiomqtt
import httpx

from collector.alerts import payloads
from collector.alerts.payloads import Notification
from collector.settings import Settings
from collector.sources.mqtt.broker import client_options

#: Most alerts in one webhook or Alertmanager request.
CHUNK = 100


class DeliveryError(Exception):
    """A receiver did not take the notifications; the message says why (for the log)."""


class Target(Protocol):
    #: The outbox's name for it.
    key: str
    #: The metrics' label (webhook, mqtt, alertmanager).
    label: str

    async def send(self, notes: Sequence[Notification]) -> None: ...

    async def close(self) -> None: ...


class Webhook:
    """POSTs one JSON body per rule and chunk, signed with ``ALERT_WEBHOOK_SECRET``."""

    label = "webhook"

    def __init__(
        self, url: str, *, secret: bytes, timeout_s: float, descriptions: dict[str, str]
    ) -> None:
        self.url = url
        self.key = "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16]
        self.where = urlsplit(url).hostname or "?"
        self.secret = secret
        self.descriptions = descriptions
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def send(self, notes: Sequence[Notification]) -> None:
        for rule, group in _by_rule(notes).items():
            for start in range(0, len(group), CHUNK):
                chunk = group[start : start + CHUNK]
                body = payloads.webhook_body(rule, chunk, self.descriptions, datetime.now(UTC))
                headers = {"Content-Type": "application/json", "User-Agent": "energy-collector"}
                if self.secret:
                    headers[payloads.SIGNATURE_HEADER] = payloads.signature(self.secret, body)
                await _post(self.client, self.url, body, headers, self.where)

    async def close(self) -> None:
        await self.client.aclose()


class Alertmanager:
    """Alertmanager's v2 API: firing alerts with an ``endsAt`` past the next re-send,
    resolved ones with the time they resolved."""

    label = "alertmanager"
    key = "alertmanager"

    def __init__(
        self, url: str, *, timeout_s: float, resend_s: float, descriptions: dict[str, str]
    ) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.where = urlsplit(url).hostname or "?"
        self.resend_s = resend_s
        self.descriptions = descriptions
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def send(self, notes: Sequence[Notification]) -> None:
        firing_ends = payloads.firing_ends_at(datetime.now(UTC), self.resend_s)
        await self.post(
            [self._alert(n, n.at if n.transition == "resolved" else firing_ends) for n in notes]
        )

    async def resend(self, firing: Sequence[Mapping[str, Any]]) -> None:
        """Every alert firing now, again (rows with rule, kind, device_id, severity, value
        and since): Alertmanager resolves an alert that is not re-sent."""
        ends = payloads.firing_ends_at(datetime.now(UTC), self.resend_s)
        await self.post([self._alert(SimpleNamespace(**r), ends) for r in firing])

    def _alert(self, a: Any, ends_at: datetime) -> dict[str, Any]:
        return payloads.alertmanager_alert(
            rule=a.rule,
            kind=a.kind,
            device_id=a.device_id,
            severity=a.severity,
            value=a.value,
            starts_at=a.since,
            ends_at=ends_at,
            description=self.descriptions.get(a.rule, ""),
        )

    async def post(self, alerts: list[dict[str, Any]]) -> None:
        for start in range(0, len(alerts), CHUNK):
            body = json.dumps(alerts[start : start + CHUNK]).encode()
            await _post(
                self.client, self.url, body, {"Content-Type": "application/json"}, self.where
            )

    async def close(self) -> None:
        await self.client.aclose()


class MqttAlerts:
    """``alerts/{rule}/{deviceId}`` at QoS 1: retained while firing; on resolution the
    notice (not retained), then an empty retained message, which clears it, so a
    subscriber that connects later sees only what is firing now."""

    label = "mqtt"
    key = "mqtt"

    def __init__(self, settings: Settings, descriptions: dict[str, str]) -> None:
        self.settings = settings
        self.prefix = settings.mqtt_topic_prefix
        self.descriptions = descriptions

    async def send(self, notes: Sequence[Notification]) -> None:
        options = client_options(
            self.settings, f"{self.settings.mqtt_client_id}-alerts", keep_session=False
        )
        try:
            async with aiomqtt.Client(**options) as client:
                for n in notes:
                    topic = payloads.mqtt_topic(self.prefix, n.rule, n.device_id)
                    body = payloads.mqtt_payload(n, self.descriptions)
                    if n.transition == "firing":
                        await client.publish(topic, body, qos=1, retain=True)
                    else:
                        await client.publish(topic, body, qos=1, retain=False)
                        await client.publish(topic, b"", qos=1, retain=True)
        except aiomqtt.MqttError as exc:
            raise DeliveryError(f"broker: {exc}") from None

    async def close(self) -> None:
        return None


async def _post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], where: str
) -> None:
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"{where}: answered {response.status_code}")


def _by_rule(notes: Sequence[Notification]) -> dict[str, list[Notification]]:
    out: dict[str, list[Notification]] = defaultdict(list)
    for n in notes:
        out[n.rule].append(n)
    return out


def build_targets(settings: Settings, descriptions: dict[str, str]) -> list[Target]:
    """The targets the settings name (MQTT unless ``ALERT_MQTT=false``)."""
    targets: list[Target] = []
    secret = settings.alert_webhook_secret.get_secret_value().encode()
    for url in settings.alert_webhook_url_list:
        targets.append(
            Webhook(
                url,
                secret=secret,
                timeout_s=settings.alert_webhook_timeout_s,
                descriptions=descriptions,
            )
        )
    if settings.alert_mqtt:
        targets.append(MqttAlerts(settings, descriptions))
    if settings.alertmanager_url:
        targets.append(
            Alertmanager(
                settings.alertmanager_url,
                timeout_s=settings.alert_webhook_timeout_s,
                resend_s=settings.alertmanager_resend_s,
                descriptions=descriptions,
            )
        )
    return targets
