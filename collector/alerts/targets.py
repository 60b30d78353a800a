"""Where notifications go: webhooks, the broker's alert topics, Alertmanager.

Each target sends a list of notifications (in outbox order) and books each row's outcome
in an :class:`Outcome` as it goes: taken, or failed with the reason (for the log). Every
request has a total deadline (``ALERT_WEBHOOK_TIMEOUT_S``, headers and body together), so
a receiver that answers a byte a second cannot hold a sender. Where one row fails, the
later rows of its rule are not tried (they would overtake it). A target is named by a
stable key in the outbox (``webhook:<digest>``, never the URL, which may hold a password).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
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


class Outcome:
    """What became of each row of a round: the ids taken, and the others' reasons."""

    __slots__ = ("failed", "sent")

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.failed: dict[int, str] = {}

    def took(self, notes: Iterable[Notification]) -> None:
        self.sent += [n.id for n in notes]

    def fail(self, notes: Iterable[Notification], reason: str) -> None:
        for n in notes:
            self.failed.setdefault(n.id, reason)

    def fail_rest(self, notes: Iterable[Notification], reason: str) -> None:
        """Every row with no outcome yet fails with ``reason``."""
        taken = set(self.sent)
        self.fail((n for n in notes if n.id not in taken), reason)


class Target(Protocol):
    #: The outbox's name for it.
    key: str
    #: The metrics' label (webhook, mqtt, alertmanager).
    label: str

    async def send(self, notes: Sequence[Notification], outcome: Outcome) -> None: ...

    async def close(self) -> None: ...


class Webhook:
    """POSTs one JSON body per rule and chunk, signed with ``ALERT_WEBHOOK_SECRET``."""

    label = "webhook"

    def __init__(
        self, url: str, *, secret: bytes, timeout_s: float, descriptions: dict[str, str]
    ) -> None:
        self.url = url
        self.key = "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16]
        self.where = _where(url)
        self.secret = secret
        self.timeout_s = timeout_s
        self.descriptions = descriptions
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def send(self, notes: Sequence[Notification], outcome: Outcome) -> None:
        """One rule's failure is its own: the other rules are still sent."""
        for rule, group in _by_rule(notes).items():
            for start in range(0, len(group), CHUNK):
                chunk = group[start : start + CHUNK]
                body = payloads.webhook_body(rule, chunk, self.descriptions, datetime.now(UTC))
                headers = {"Content-Type": "application/json", "User-Agent": "energy-collector"}
                if self.secret:
                    headers[payloads.SIGNATURE_HEADER] = payloads.signature(self.secret, body)
                try:
                    await _post(
                        self.client,
                        self.url,
                        body,
                        headers,
                        where=self.where,
                        timeout_s=self.timeout_s,
                    )
                except DeliveryError as exc:
                    outcome.fail(group[start:], str(exc))
                    break
                outcome.took(chunk)

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
        self.where = _where(url)
        self.timeout_s = timeout_s
        self.resend_s = resend_s
        self.descriptions = descriptions
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def send(self, notes: Sequence[Notification], outcome: Outcome) -> None:
        """Chunks in order; after a failed one the rest wait (Alertmanager is down)."""
        firing_ends = payloads.firing_ends_at(datetime.now(UTC), self.resend_s)
        for start in range(0, len(notes), CHUNK):
            chunk = notes[start : start + CHUNK]
            alerts = [
                self._alert(n, n.at if n.transition == "resolved" else firing_ends) for n in chunk
            ]
            try:
                await self.post(alerts)
            except DeliveryError as exc:
                outcome.fail(notes[start:], str(exc))
                return
            outcome.took(chunk)

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
                self.client,
                self.url,
                body,
                {"Content-Type": "application/json"},
                where=self.where,
                timeout_s=self.timeout_s,
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
        self.timeout_s = settings.alert_webhook_timeout_s
        self.where = _where(settings.mqtt_url.get_secret_value())

    async def send(self, notes: Sequence[Notification], outcome: Outcome) -> None:
        """In order, each publish acknowledged (QoS 1) before the next; the first that
        fails leaves the rest for the retry (a later state must not overtake it)."""
        options = client_options(
            self.settings, f"{self.settings.mqtt_client_id}-alerts", keep_session=False
        )
        done = 0
        loop = asyncio.get_running_loop()
        try:
            # each step (connect, each publish, disconnect) within the timeout
            async with asyncio.timeout(self.timeout_s) as deadline:
                async with aiomqtt.Client(**options) as client:
                    for n in notes:
                        deadline.reschedule(loop.time() + self.timeout_s)
                        topic = payloads.mqtt_topic(self.prefix, n.rule, n.device_id)
                        body = payloads.mqtt_payload(n, self.descriptions)
                        if n.transition == "firing":
                            await client.publish(topic, body, qos=1, retain=True)
                        else:
                            await client.publish(topic, body, qos=1, retain=False)
                            await client.publish(topic, b"", qos=1, retain=True)
                        outcome.took([n])
                        done += 1
                    deadline.reschedule(loop.time() + self.timeout_s)
        except aiomqtt.MqttError as exc:
            outcome.fail(notes[done:], f"broker {self.where}: {exc}")
        except TimeoutError:
            outcome.fail(notes[done:], f"broker {self.where}: no answer in {self.timeout_s:g} s")

    async def close(self) -> None:
        return None


def _where(url: str) -> str:
    """host:port of a URL, for log lines (never its path or password)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


async def _post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    where: str,
    timeout_s: float,
) -> None:
    """One request, headers and body within ``timeout_s`` in all (httpx's own timeout is
    per read: a receiver sending a byte a second would never reach it)."""
    try:
        async with asyncio.timeout(timeout_s):
            response = await client.post(url, content=body, headers=headers)
    except TimeoutError:
        raise DeliveryError(f"{where}: no complete answer in {timeout_s:g} s") from None
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
