"""Delivery apart from evaluation: one courier per target, each on a connection of its own.

A receiver that is slow, dead or answering a byte a second holds back only its own
courier: the rules are still evaluated every ``ALERT_INTERVAL_S`` and the other targets
are still served. The engine runs the couriers while it leads and stops them when it
steps down, so one collector delivers at a time (the outbox's leases cover the handover).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from collector.alerts import outbox
from collector.alerts.outbox import Outbox
from collector.alerts.targets import Alertmanager, DeliveryError, Target
from collector.backoff import Backoff
from collector.metrics import Metrics

log = structlog.get_logger("collector.alerts.couriers")

Connect = Callable[[], Awaitable[asyncpg.Connection]]
#: Longest a courier sleeps with nothing due (new rows wake it at once).
IDLE_S = 10.0


class Courier:
    """Sends one target's outbox rows as they fall due."""

    def __init__(self, box: Outbox, target: Target, connect: Connect, metrics: Metrics) -> None:
        self.outbox = box
        self.target = target
        self.connect = connect
        self.metrics = metrics
        #: Set when new rows were written for the target.
        self.wake = asyncio.Event()
        self.rounds = 0
        self._conn: asyncpg.Connection | None = None
        self._next_resend = 0.0

    async def run(self) -> None:
        backoff = Backoff(1, 30)
        try:
            while True:
                try:
                    conn = await self._connection()
                    self.wake.clear()
                    taken = await self.outbox.round(conn, self.target)
                    self.rounds += 1
                    await self._resend_if_due(conn)
                    backoff.reset()
                    if not taken:
                        await self._sleep(conn)
                except Exception as exc:  # a courier must outlive whatever failed
                    delay = backoff.next()
                    log.warning(
                        "alerts.courier_failed",
                        target=self.target.label,
                        error=repr(exc),
                        retry_in_s=round(delay, 1),
                    )
                    await self._drop_connection()
                    await asyncio.sleep(delay)
        finally:
            await self._drop_connection()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self.connect()
        return self._conn

    async def _sleep(self, conn: asyncpg.Connection) -> None:
        delay = IDLE_S
        due = await outbox.next_due(conn, self.target.key)
        if due is not None:
            now = await conn.fetchval("SELECT now()")
            delay = min(delay, max(0.05, (due - now).total_seconds()))
        if isinstance(self.target, Alertmanager):
            delay = min(delay, max(0.05, self._next_resend - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), delay)

    async def _resend_if_due(self, conn: asyncpg.Connection) -> None:
        """Alertmanager resolves an alert that is not re-sent: tell it again what fires."""
        manager = self.target
        if not isinstance(manager, Alertmanager) or time.monotonic() < self._next_resend:
            return
        self._next_resend = time.monotonic() + manager.resend_s
        rows = await conn.fetch(
            "SELECT rule, kind, device_id, severity, value, since FROM alerts "
            "WHERE state = 'firing' AND notified ORDER BY id"
        )
        if not rows:
            return
        try:
            async with asyncio.timeout(self.outbox.lease_s):
                await manager.resend([dict(r) for r in rows])
        except (DeliveryError, TimeoutError) as exc:
            self.metrics.alert_notifications_failed.labels(manager.label).inc(len(rows))
            log.warning("alerts.resend_failed", target=manager.label, error=str(exc) or "timeout")

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 5)
            self._conn = None


class Couriers:
    """The leader's couriers: started when it leads, stopped when it steps down."""

    def __init__(self, box: Outbox, connect: Connect, metrics: Metrics) -> None:
        self.couriers = [Courier(box, t, connect, metrics) for t in box.targets.values()]
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(c.run(), name=f"alerts-courier-{c.target.label}")
                for c in self.couriers
            ]

    def wake(self) -> None:
        for c in self.couriers:
            c.wake.set()

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
