"""The outbox, one target at a time: at least once, in order, each row on its own.

A round claims what a target may send now (a lease, so a second sender skips it), sends it
under a deadline, and books each row by its own outcome: taken rows are marked sent, the
others come back with one backoff (1 s doubling to ``ALERT_RETRY_MAX_S``, with jitter), so
a receiver that returns gets its backlog in a few grouped requests, not a storm.

Order: for one (target, rule, device) a row is claimed only when every earlier unsent row
of that key is claimable too, so a row leased by a sender that died waits out its lease
and holds back the later rows of its key (never the others): a resolution is never told
after the newer alert's firing, and the retained MQTT topic shows the newest state.

Rows still unsent ``ALERT_GIVE_UP_S`` after they were written are given up: kept with
their last error, counted (``collector_alert_notifications_given_up_total``) and logged
(``alerts.delivery_given_up``), never marked sent.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import structlog

from collector.alerts.payloads import Notification
from collector.alerts.targets import Outcome, Target
from collector.db.connection import Connection
from collector.metrics import Metrics

log = structlog.get_logger("collector.alerts.outbox")

#: Most rows one round claims.
ROUND = 2000
#: Sent and given-up rows are kept this long (to look into), then deleted.
KEEP_DONE = timedelta(days=7)
#: What a round leaves of its lease for booking the outcomes.
BOOKING_MARGIN_S = 5.0


class Outbox:
    def __init__(
        self,
        targets: Sequence[Target],
        metrics: Metrics,
        *,
        retry_max_s: float,
        give_up_s: float,
        request_timeout_s: float,
    ) -> None:
        self.targets = {t.key: t for t in targets}
        self.metrics = metrics
        self.retry_max_s = retry_max_s
        self.give_up_s = give_up_s
        # A round sends at most a few dozen requests; the lease outlasts a slow one.
        self.lease_s = request_timeout_s * 4 + 30
        self._undeliverable: set[str] = set()

    @property
    def keys(self) -> list[str]:
        return list(self.targets)

    async def round(self, conn: Connection, target: Target) -> int:
        """Send what ``target`` may send now; returns how many rows were taken."""
        await self.give_up_expired(conn, target.key, target.label)
        notes = await claim(conn, target.key, self.lease_s)
        if not notes:
            return 0
        outcome = Outcome()
        try:
            async with asyncio.timeout(self.lease_s - BOOKING_MARGIN_S):
                await target.send(notes, outcome)
        except TimeoutError:
            outcome.fail_rest(notes, "the round's deadline passed")
        except Exception as exc:  # a target's bug must not lose the rows: retry them
            log.warning("alerts.target_failed", target=target.label, exc_info=exc)
            outcome.fail_rest(notes, repr(exc))
        outcome.fail_rest(notes, "not attempted")
        if outcome.sent:
            await mark_sent(conn, outcome.sent)
            self.metrics.alert_notifications_sent.labels(target.label).inc(len(outcome.sent))
        if outcome.failed:
            await self._retry(conn, target, notes, outcome)
        return len(outcome.sent)

    async def _retry(
        self, conn: Connection, target: Target, notes: Sequence[Notification], outcome: Outcome
    ) -> None:
        failed = [n for n in notes if n.id in outcome.failed]
        attempts = max(n.attempts for n in failed)
        delay = self.backoff_s(attempts)
        reasons = Counter(outcome.failed.values())
        log.warning(
            "alerts.delivery_failed",
            target=target.label,
            notifications=len(failed),
            delivered=len(outcome.sent),
            rules=sorted({n.rule for n in failed}),
            attempts=attempts,
            retry_in_s=round(delay, 1),
            error=reasons.most_common(1)[0][0],
        )
        self.metrics.alert_notifications_failed.labels(target.label).inc(len(failed))
        for reason, ids in _ids_by_reason(outcome.failed).items():
            await retry_later(conn, ids, delay, reason)

    def backoff_s(self, attempts: int) -> float:
        base = min(self.retry_max_s, 2.0 ** max(0, attempts - 1))
        return base * random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not a secret

    async def give_up_expired(self, conn: Connection, key: str, label: str) -> int:
        """Give up the rows of ``key`` unsent for ``ALERT_GIVE_UP_S``."""
        rows = await conn.fetch(
            """
            UPDATE alert_notifications n SET given_up_at = now(), claimed_until = NULL
            FROM alerts a
            WHERE a.id = n.alert_id AND n.target = $1 AND n.sent_at IS NULL
              AND n.given_up_at IS NULL AND n.created_at < now() - $2::interval
              AND (n.claimed_until IS NULL OR n.claimed_until < now())
            RETURNING n.id, a.rule, n.last_error
            """,
            key,
            timedelta(seconds=self.give_up_s),
        )
        if rows:
            self.metrics.alert_notifications_given_up.labels(label).inc(len(rows))
            log.error(
                "alerts.delivery_given_up",
                target=label,
                key=key,
                notifications=len(rows),
                rules=sorted({r["rule"] for r in rows}),
                after_s=self.give_up_s,
                last_error=next((r["last_error"] for r in rows if r["last_error"]), None),
            )
        return len(rows)

    async def sweep_unknown(self, conn: Connection) -> dict[str, int]:
        """Rows of a target no longer configured: a changed webhook URL's rows follow the
        webhook when exactly one is configured; the others stay undeliverable (a gauge and
        a log line) until given up. Returns what stays undeliverable, by key."""
        webhooks = [key for key in self.targets if key.startswith("webhook:")]
        if len(webhooks) == 1:
            moved = await conn.fetch(
                "UPDATE alert_notifications SET target = $1 "
                "WHERE sent_at IS NULL AND given_up_at IS NULL "
                "AND target LIKE 'webhook:%' AND target <> $1 RETURNING id",
                webhooks[0],
            )
            if moved:
                log.info(
                    "alerts.notifications_retargeted", to=webhooks[0], notifications=len(moved)
                )
        rows = await conn.fetch(
            "SELECT target, count(*) AS n FROM alert_notifications "
            "WHERE sent_at IS NULL AND given_up_at IS NULL AND NOT target = ANY($1::text[]) "
            "GROUP BY target",
            self.keys,
        )
        waiting = {r["target"]: r["n"] for r in rows}
        for key in self._undeliverable - set(waiting):
            self.metrics.alert_notifications_undeliverable.labels(key).set(0)
        for key, n in waiting.items():
            self.metrics.alert_notifications_undeliverable.labels(key).set(n)
            if key not in self._undeliverable:
                log.warning(
                    "alerts.notifications_undeliverable",
                    key=key,
                    notifications=n,
                    why="target no longer configured",
                    given_up_after_s=self.give_up_s,
                )
            await self.give_up_expired(conn, key, key.split(":", 1)[0])
        self._undeliverable = set(waiting)
        return waiting

    async def close(self) -> None:
        for target in self.targets.values():
            await target.close()


def _ids_by_reason(failed: dict[int, str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for id_, reason in failed.items():
        out.setdefault(reason, []).append(id_)
    return out


async def claim(conn: Connection, target: str, lease_s: float) -> list[Notification]:
    """Lease what ``target`` may send now, oldest first, with the alerts: due, unclaimed,
    and with nothing earlier of its (rule, device) that is not."""
    rows = await conn.fetch(
        """
        WITH pending AS (
            SELECT n.id,
                   bool_and(n.next_attempt_at <= now()
                            AND (n.claimed_until IS NULL OR n.claimed_until < now()))
                       OVER (PARTITION BY a.rule, a.kind, a.device_id ORDER BY n.id) AS free
            FROM alert_notifications n JOIN alerts a ON a.id = n.alert_id
            WHERE n.target = $3 AND n.sent_at IS NULL AND n.given_up_at IS NULL
        ), due AS (
            SELECT n.id FROM alert_notifications n JOIN pending p ON p.id = n.id
            WHERE p.free
            ORDER BY n.id LIMIT $2 FOR UPDATE OF n SKIP LOCKED
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
        target,
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


async def mark_sent(conn: Connection, ids: Iterable[int]) -> None:
    await conn.execute(
        "UPDATE alert_notifications SET sent_at = now(), claimed_until = NULL, "
        "last_error = NULL WHERE id = ANY($1::bigint[])",
        list(ids),
    )


async def retry_later(conn: Connection, ids: list[int], delay_s: float, error: str) -> None:
    await conn.execute(
        "UPDATE alert_notifications SET claimed_until = NULL, last_error = $3, "
        "next_attempt_at = now() + $2::interval WHERE id = ANY($1::bigint[])",
        ids,
        timedelta(seconds=delay_s),
        error[:500],
    )


async def next_due(conn: Connection, target: str) -> datetime | None:
    """When ``target``'s next row may be sent (None: nothing waits): the latest of its
    retry time and the lease on it, for the first row of each (rule, device)."""
    value: datetime | None = await conn.fetchval(
        """
        SELECT min(greatest(next_attempt_at, coalesce(claimed_until, next_attempt_at)))
        FROM (
            SELECT DISTINCT ON (a.rule, a.kind, a.device_id) n.next_attempt_at, n.claimed_until
            FROM alert_notifications n JOIN alerts a ON a.id = n.alert_id
            WHERE n.target = $1 AND n.sent_at IS NULL AND n.given_up_at IS NULL
            ORDER BY a.rule, a.kind, a.device_id, n.id
        ) heads
        """,
        target,
    )
    return value


async def prune_done(conn: Connection) -> None:
    await conn.execute(
        "DELETE FROM alert_notifications WHERE sent_at < now() - $1::interval "
        "OR given_up_at < now() - $1::interval",
        KEEP_DONE,
    )
