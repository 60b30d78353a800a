"""The state machine of one rule in one pass, without I/O: what becomes pending, fires,
is dropped or resolves, from the open alerts and what the rule sees now.

pending -> firing once the condition has held ``for_s``; pending -> (deleted) if it stops
holding first (never told to anyone); firing -> resolved once the value is past the clear
threshold (hysteresis: a value between the threshold and the clear threshold changes
nothing). A device the rule does not see this pass keeps its alert as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from collector.alerts.conditions import Observation
from collector.alerts.rules import AlertRule
from collector.ingest.streams import StreamName

Key = tuple[StreamName, str]


@dataclass(frozen=True, slots=True)
class OpenAlert:
    id: int
    kind: StreamName
    device_id: str
    state: Literal["pending", "firing"]
    since: datetime


@dataclass(frozen=True, slots=True)
class NewAlert:
    kind: StreamName
    device_id: str
    state: Literal["pending", "firing"]
    value: float | None
    since: datetime


@dataclass(slots=True)
class Transitions:
    """What one pass of one rule changes."""

    new: list[NewAlert] = field(default_factory=list)
    #: (alert id, value): pending alerts that fire now.
    fire: list[tuple[int, float | None]] = field(default_factory=list)
    #: Pending alerts whose condition went away before they fired.
    drop: list[int] = field(default_factory=list)
    #: (alert id, value): firing alerts that resolve now.
    resolve: list[tuple[int, float | None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.fire or self.drop or self.resolve)


def decide(
    rule: AlertRule,
    open_alerts: Iterable[OpenAlert],
    observations: Iterable[Observation],
    now: datetime,
) -> Transitions:
    """The transitions of ``rule`` given its open alerts and this pass's observations."""
    seen: dict[Key, Observation] = {(o.kind, o.device_id): o for o in observations}
    out = Transitions()
    opened: set[Key] = set()
    for alert in open_alerts:
        key = (alert.kind, alert.device_id)
        opened.add(key)
        obs = seen.get(key)
        if alert.state == "pending":
            if obs is None or not obs.holds:
                out.drop.append(alert.id)
            elif _held_s(obs, alert.since, now) >= rule.for_s:
                out.fire.append((alert.id, obs.value))
        elif obs is not None and obs.cleared:
            out.resolve.append((alert.id, obs.value))
    for key, obs in seen.items():
        if key in opened or not obs.holds:
            continue
        since = obs.since or now
        ripe = _held_s(obs, since, now) >= rule.for_s
        out.new.append(
            NewAlert(obs.kind, obs.device_id, "firing" if ripe else "pending", obs.value, since)
        )
    return out


def _held_s(obs: Observation, pending_since: datetime, now: datetime) -> float:
    if obs.held_s is not None:
        return obs.held_s
    return (now - pending_since).total_seconds()
