"""Delivering the outbox: at least once, in order, with backoff per target.

A round claims the due rows (a lease, so a second sender skips them), sends each target's
rows grouped by rule, and marks what was taken. A target that fails gets all its claimed
rows back with one backoff (1 s doubling to ``ALERT_RETRY_MAX_S``, with jitter), so when a
receiver returns it gets the backlog in a few grouped requests, not a storm of retries.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import datetime, timedelta

import structlog

from collector.alerts.payloads import Notification
from collector.alerts.targets import DeliveryError, Target
from collector.db.connection import Connection
from collector.metrics import Metrics

log = structlog.get_logger("collector.alerts.outbox")

#: Most rows one round claims.
ROUND = 2000
#: Sent rows are kept this long (to look into), then deleted.
KEEP_SENT = timedelta(days=7)


class Outbox:
    def __init__(self, targets: list[Target], metrics: Metrics, *, retry_max_s: float) -> None:
        self.targets = {t.key: t for t in targets}
        self.metrics = metrics
        self.retry_max_s = retry_max_s

    @property
    def keys(self) -> list[str]:
        return list(self.targets)

    async def deliver(self, conn: Connection, *, lease_s: float) -> int:
        """One round: send what is due. Returns how many notifications were taken."""
        notes = await claim(conn, lease_s)
        if not notes:
            return 0
        by_target: dict[str, list[Notification]] = defaultdict(list)
        for n in notes:
            by_target[n.target].append(n)
        unknown = [
            n.id for key, group in by_target.items() if key not in self.targets for n in group
        ]
        if unknown:
            # A target removed from the settings: nobody to tell any more.
            await conn.execute(
                "UPDATE alert_notifications SET sent_at = now(), claimed_until = NULL, "
                "last_error = 'target no longer configured' WHERE id = ANY($1::bigint[])",
                unknown,
            )
        sends = {
            key: asyncio.create_task(self.targets[key].send(group))
            for key, group in by_target.items()
            if key in self.targets
        }
        await asyncio.wait(sends.values())
        taken = 0
        for key, task in sends.items():
            group = by_target[key]
            target = self.targets[key]
            error = task.exception()
            if error is None:
                await mark_sent(conn, [n.id for n in group])
                self.metrics.alert_notifications_sent.labels(target.label).inc(len(group))
                taken += len(group)
                continue
            attempts = max(n.attempts for n in group)
            delay = self.backoff_s(attempts)
            reason = str(error) if isinstance(error, DeliveryError) else repr(error)
            log.warning(
                "alerts.delivery_failed",
                target=target.label,
                notifications=len(group),
                attempts=attempts,
                retry_in_s=round(delay, 1),
                error=reason,
            )
            self.metrics.alert_notifications_failed.labels(target.label).inc(len(group))
            await retry_later(conn, [n.id for n in group], delay, reason)
        return taken

    def backoff_s(self, attempts: int) -> float:
        base = min(self.retry_max_s, 2.0 ** max(0, attempts - 1))
        return base * random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not a secret

    async def close(self) -> None:
        for target in self.targets.values():
            await target.close()


async def claim(conn: Connection, lease_s: float) -> list[Notification]:
    """Lease the due rows (oldest first) with their alerts."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT id FROM alert_notifications
            WHERE sent_at IS NULL AND next_attempt_at <= now()
              AND (claimed_until IS NULL OR claimed_until < now())
            ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
        )
        UPDATE alert_notifications n
        SET claimed_until = now() + $1::interval, attempts = n.attempts + 1
        FROM due, alerts a
        WHERE n.id = due.id AND a.id = n.alert_id
        RETURNING n.id, n.alert_id, n.target, n.transition, n.value, n.at, n.attempts,
                  a.rule, a.kind, a.device_id, a.severity, a.since
        """,
        timedelta(seconds=lease_s),
        ROUND,
    )
    notes = [
        Notification(
            id=r["id"],
            alert_id=r["alert_id"],
            target=r["target"],
            transition=r["transition"],
            rule=r["rule"],
            kind=r["kind"],
            device_id=r["device_id"],
            severity=r["severity"],
            value=r["value"],
            at=r["at"],
            since=r["since"],
            attempts=r["attempts"],
        )
        for r in rows
    ]
    notes.sort(key=lambda n: n.id)
    return notes


async def mark_sent(conn: Connection, ids: list[int]) -> None:
    await conn.execute(
        "UPDATE alert_notifications SET sent_at = now(), claimed_until = NULL, "
        "last_error = NULL WHERE id = ANY($1::bigint[])",
        ids,
    )


async def retry_later(conn: Connection, ids: list[int], delay_s: float, error: str) -> None:
    await conn.execute(
        "UPDATE alert_notifications SET claimed_until = NULL, last_error = $3, "
        "next_attempt_at = now() + $2::interval WHERE id = ANY($1::bigint[])",
        ids,
        timedelta(seconds=delay_s),
        error[:500],
    )


async def next_due(conn: Connection) -> datetime | None:
    """When the next unsent notification is due (None: nothing waits)."""
    value: datetime | None = await conn.fetchval(
        "SELECT min(next_attempt_at) FROM alert_notifications WHERE sent_at IS NULL"
    )
    return value


async def prune_sent(conn: Connection) -> None:
    await conn.execute(
        "DELETE FROM alert_notifications WHERE sent_at < now() - $1::interval", KEEP_SENT
    )
