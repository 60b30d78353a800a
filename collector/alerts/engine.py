"""The alert loop: one collector at a time evaluates the rules and sends the outbox.

Leadership is a PostgreSQL advisory lock held by the engine's own connection: when that
collector stops or loses its connection the lock goes with it, and another collector takes
over at its next try, from the state and outbox in the database (nothing is forgotten or
told twice). Every ``ALERT_INTERVAL_S`` the leader runs one pass: each rule's query, its
transitions, the firings to tell, all in one transaction. Delivery is not its business:
the leader's couriers (collector/alerts/couriers.py, one per target) send the outbox, so a
slow receiver never holds back a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg
import structlog

from collector.alerts import conditions, outbox, writes
from collector.alerts.conditions import Observation
from collector.alerts.couriers import Couriers
from collector.alerts.outbox import Outbox
from collector.alerts.rules import AlertRule
from collector.alerts.transitions import OpenAlert, decide
from collector.backoff import Backoff
from collector.db.connection import Connection
from collector.metrics import Metrics
from collector.readmodel.fleet import VehicleEnergy, vehicle_energy
from collector.settings import Settings
from collector.settlement.sites import Sites

log = structlog.get_logger("collector.alerts")

#: pg_advisory_lock key of the evaluating instance ("alerts").
LEADER_LOCK = 0x616C_6572_7473
#: Failures of a pass that are the database's (logged without a traceback).
_EXPECTED = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
Connect = Callable[[], Awaitable[asyncpg.Connection]]


class AlertEngine:
    def __init__(
        self,
        *,
        settings: Settings,
        rules: tuple[AlertRule, ...],
        outbox: Outbox,
        metrics: Metrics,
        connect: Connect,
        sites: Sites | None = None,
    ) -> None:
        self.settings = settings
        #: SITES_FILE, for the site_imbalance rules.
        self.sites = sites or Sites()
        self.rules = rules
        self.outbox = outbox
        self.metrics = metrics
        self.connect = connect
        self.interval_s = settings.alert_interval_s
        self.efficiency_interval_s = max(
            settings.alert_interval_s, settings.alert_efficiency_interval_s
        )
        self._next_efficiency = 0.0
        self.leader = False
        self.passes = 0
        self.last_pass_s: float | None = None
        #: Each rule's share of the last pass (query and writes), seconds.
        self.last_rule_s: dict[str, float] = {}
        self._conn: asyncpg.Connection | None = None
        self.couriers = Couriers(outbox, connect, metrics)
        self._reported: set[tuple[str, str]] = set()
        #: Set to run a pass of every rule now, not at the next interval.
        self.wake = asyncio.Event()
        self._pass_now = False
        self._next_pass = 0.0

    async def run(self) -> None:
        """Until cancelled: lead when the lock is free, evaluate and deliver while leading."""
        backoff = Backoff(1, 30)
        try:
            while True:
                try:
                    if await self._lead():
                        await self.step()
                        backoff.reset()
                    await self._sleep()
                except Exception as exc:  # whatever failed, alerts must never stop ingest
                    self.metrics.alert_evaluation_errors.inc()
                    delay = backoff.next()
                    expected = isinstance(exc, _EXPECTED)
                    log.warning(
                        "alerts.pass_failed",
                        error=repr(exc),
                        retry_in_s=round(delay, 1),
                        exc_info=None if expected else exc,
                    )
                    await self._drop_connection()
                    await asyncio.sleep(delay)
        finally:
            await self._drop_connection()
            await self.outbox.close()

    async def step(self) -> None:
        """The leader's work between two sleeps: a pass when one is due (every
        ``ALERT_INTERVAL_S``, or woken); the couriers are told of what it wrote."""
        assert self._conn is not None
        if self._pass_now or time.monotonic() >= self._next_pass:
            woken, self._pass_now = self._pass_now, False
            self._next_pass = time.monotonic() + self.interval_s
            made = await self.evaluate(self._conn, every_rule=woken)
            if made["fired"] or made["resolved"] or made["told"]:
                self.couriers.wake()
            await self.outbox.sweep_unknown(self._conn)
            if self.passes % 100 == 1:
                await outbox.prune_done(self._conn)

    async def _lead(self) -> bool:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self.connect()
            self.leader = False
        if not self.leader:
            self.leader = bool(
                await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK)
            )
            self.metrics.alerts_leader.set(1 if self.leader else 0)
            if self.leader:
                log.info("alerts.leading", rules=[r.name for r in self.rules])
                await self.outbox.sweep_unknown(self._conn)
                self.couriers.start()
        return self.leader

    async def _sleep(self) -> None:
        delay = self.interval_s
        if self.leader:
            delay = max(0.0, self._next_pass - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), delay)
        if self.wake.is_set():
            self._pass_now = True
            self.wake.clear()

    async def _drop_connection(self) -> None:
        await self.couriers.stop()
        if self.leader:
            log.info("alerts.stepped_down")
        self.leader = False
        self.metrics.alerts_leader.set(0)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 5)
            self._conn = None

    # --- evaluation ------------------------------------------------------------------------

    async def evaluate(self, conn: Connection, *, every_rule: bool = False) -> dict[str, int]:
        """One pass over the rules (the efficiency rules when their interval is up, or
        ``every_rule``); returns the transitions made, by kind of change."""
        started = time.perf_counter()
        made = {"new": 0, "fired": 0, "dropped": 0, "resolved": 0, "told": 0}
        targets = self.outbox.keys
        rule_seconds: dict[str, float] = {}
        async with conn.transaction():
            now: datetime = await conn.fetchval("SELECT now()")
            open_by_rule = await writes.open_alerts(conn)
            energy_cache: dict[float, list[VehicleEnergy]] = {}
            # A 24-hour ratio barely moves in minutes, and computing it is most of a pass
            # at fleet scale (README, "Alert evaluation"): on a cadence of its own.
            efficiency_due = every_rule or time.monotonic() >= self._next_efficiency
            if efficiency_due:
                self._next_efficiency = time.monotonic() + self.efficiency_interval_s
            for rule in self.rules:
                if rule.kind == "efficiency" and not efficiency_due:
                    continue  # not judged this pass: its alerts stay as they are
                rule_started = time.perf_counter()
                open_alerts = open_by_rule.get(rule.name, [])
                observed = await self._observe(conn, rule, open_alerts, now, energy_cache)
                changes = decide(rule, open_alerts, observed, now)
                if changes:
                    await writes.apply(conn, rule, changes, now, targets)
                made["new"] += len(changes.new)
                made["fired"] += len(changes.fire) + sum(
                    1 for n in changes.new if n.state == "firing"
                )
                made["dropped"] += len(changes.drop)
                made["resolved"] += len(changes.resolve)
                rule_seconds[rule.name] = time.perf_counter() - rule_started
            made["resolved"] += await writes.resolve_orphans(
                conn, [r.name for r in self.rules], now, targets
            )
            made["told"] = await writes.tell_firing(conn, now, targets)
            counts = await writes.firing_counts(conn)
        self._report(counts)
        elapsed = time.perf_counter() - started
        self.metrics.alert_evaluation_seconds.observe(elapsed)
        self.passes += 1
        self.last_pass_s = elapsed
        self.last_rule_s = rule_seconds
        if made["fired"] or made["resolved"] or made["told"]:
            log.info("alerts.pass", seconds=round(elapsed, 3), **made)
        return made

    async def _observe(
        self,
        conn: Connection,
        rule: AlertRule,
        open_alerts: list[OpenAlert],
        now: datetime,
        energy_cache: dict[float, list[VehicleEnergy]],
    ) -> list[Observation]:
        observed: list[Observation] = []
        for stream in rule.streams:
            open_ids = [a.device_id for a in open_alerts if a.kind == stream]
            if rule.kind == "threshold":
                observed += await conditions.threshold(conn, rule, open_ids, now)
            elif rule.kind == "silent":
                observed += await conditions.silent(conn, rule, stream, open_ids, now)
            elif rule.kind == "register":
                observed += await conditions.register(conn, rule, stream, open_ids, now)
            elif rule.kind == "charger_offline":
                observed += await conditions.charger_offline(conn, rule, open_ids, now)
            elif rule.kind == "site_imbalance":
                observed += await conditions.site_imbalance(conn, rule, self.sites, open_ids, now)
            elif rule.kind == "connector_faulted":
                observed += await conditions.connector_faulted(conn, rule, open_ids, now)
            elif rule.kind == "efficiency":
                if rule.window_s not in energy_cache:
                    start = now - timedelta(seconds=rule.window_s)
                    energy_cache[rule.window_s] = await vehicle_energy(conn, start, now)
                observed += conditions.efficiency(rule, energy_cache[rule.window_s])
        return observed

    def _report(self, counts: dict[tuple[str, str], int]) -> None:
        """The firing gauge: every (rule, severity) seen so far, 0 once none fires."""
        for key in self._reported | set(counts):
            self.metrics.alerts_firing.labels(*key).set(counts.get(key, 0))
        self._reported |= set(counts)
        for rule in self.rules:
            if (rule.name, rule.severity) not in self._reported:
                self.metrics.alerts_firing.labels(rule.name, rule.severity).set(0)
                self._reported.add((rule.name, rule.severity))
