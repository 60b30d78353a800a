"""What each target is told: the JSON of a webhook, of an MQTT alert topic, of
Alertmanager's v2 API (documented in the README, "Alerts")."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

SIGNATURE_HEADER = "X-Alert-Signature-SHA256"


@dataclass(frozen=True, slots=True)
class Notification:
    """One transition of one alert, to be told to one target (an outbox row)."""

    id: int
    alert_id: int
    target: str
    transition: str  # firing | resolved
    rule: str
    kind: str
    device_id: str
    severity: str
    value: float | None
    at: datetime
    since: datetime
    attempts: int


def _time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def alert_item(n: Notification, descriptions: dict[str, str]) -> dict[str, Any]:
    """One alert's transition as webhooks and MQTT carry it."""
    return {
        "deliveryId": n.id,
        "alertId": n.alert_id,
        "rule": n.rule,
        "kind": n.kind,
        "deviceId": n.device_id,
        "state": n.transition,
        "severity": n.severity,
        "value": n.value,
        "at": _time(n.at),
        "since": _time(n.since),
        "description": descriptions.get(n.rule, ""),
    }


def webhook_body(
    rule: str, notes: list[Notification], descriptions: dict[str, str], sent_at: datetime
) -> bytes:
    """One request: the transitions of one rule (one pass, or a backlog), in order."""
    body = {
        "rule": rule,
        "sentAt": _time(sent_at),
        "alerts": [alert_item(n, descriptions) for n in notes],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def signature(secret: bytes, body: bytes) -> str:
    """HMAC-SHA256 of the body, hex: what a receiver recomputes with the shared secret."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def mqtt_topic(prefix: str, rule: str, device_id: str) -> str:
    return f"{prefix}/alerts/{rule}/{device_id}" if prefix else f"alerts/{rule}/{device_id}"


def mqtt_payload(n: Notification, descriptions: dict[str, str]) -> bytes:
    return json.dumps(alert_item(n, descriptions), separators=(",", ":")).encode()


def alertmanager_alert(
    *,
    rule: str,
    kind: str,
    device_id: str,
    severity: str,
    value: float | None,
    starts_at: datetime,
    ends_at: datetime,
    description: str,
) -> dict[str, Any]:
    """One alert in Alertmanager's v2 ``POST /api/v2/alerts`` shape. Alertmanager tells
    alerts apart by their labels, so the labels are the alert's identity only."""
    return {
        "labels": {
            "alertname": rule,
            "severity": severity,
            "kind": kind,
            "device": device_id,
            "service": "energy-collector",
        },
        "annotations": {
            "summary": f"{rule} on {kind} {device_id}",
            "description": description,
            "value": "" if value is None else f"{value:g}",
        },
        "startsAt": _time(starts_at),
        "endsAt": _time(ends_at),
    }


def firing_ends_at(now: datetime, resend_s: float) -> datetime:
    """The ``endsAt`` of a firing alert: well after the next re-send, as Prometheus does
    (4 intervals), so Alertmanager resolves it by itself only if the collector stops."""
    return now + timedelta(seconds=4 * resend_s)
