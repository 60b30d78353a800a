"""``simulate --ocpp N``: N chargers charging over OCPP against a running collector.

Half speak 1.6J, half 2.0.1 (the ``ocpp`` library's client, ``ocpp_charger``). Each boots,
reports its connector, and charges session after session in real time: a meter value every
``interval_s`` at 7-22 kW, now and then a glitch (the register reads 0 once) or an offline
stretch (the connection drops mid-session; what happened meanwhile is replayed with its own
times after reconnecting, as a charger's offline queue is). The chargers are registered
first (``chargers add``), so the collector needs no ``OCPP_ACCEPT_UNKNOWN``.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from collector.db.prepare import create_pool, prepare_database
from collector.settings import Settings
from collector.sources.ocpp.chargers import ChargerBook
from collector.tools.chargers import charger_url
from collector.tools.ocpp_charger import SimCharger

log = structlog.get_logger("collector.simulate.ocpp")


@dataclass(frozen=True, slots=True)
class OcppFleetOptions:
    chargers: int
    interval_s: float = 60.0
    duration_s: float | None = None
    url: str | None = None
    glitch_rate: float = 0.02
    offline_rate: float = 0.15
    seed: int | None = None
    #: Charger ids: ``{prefix}-{n}``.
    prefix: str = "sim-cp"


@dataclass(slots=True)
class OcppFleetReport:
    chargers: int = 0
    sessions: int = 0
    meter_values: int = 0
    replayed: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def failed(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


def run_in_thread(
    settings: Settings, options: OcppFleetOptions, stop: threading.Event
) -> tuple[threading.Thread, OcppFleetReport]:
    """Run the fleet on an event loop of its own (beside the MQTT simulator's threads)."""
    report = OcppFleetReport()

    def main() -> None:
        asyncio.run(run_fleet(settings, options, report, stop.is_set))

    thread = threading.Thread(target=main, name="ocpp-fleet", daemon=True)
    thread.start()
    return thread, report


async def run_fleet(
    settings: Settings,
    options: OcppFleetOptions,
    report: OcppFleetReport,
    stopped: Callable[[], bool],
) -> OcppFleetReport:
    """Register the chargers, then run them until ``stopped`` or the duration is over."""
    await prepare_database(settings)
    pool = await create_pool(settings, min_size=1, max_size=2, application_name="simulate-ocpp")
    try:
        book = ChargerBook(pool)
        ids = [f"{options.prefix}-{n}" for n in range(options.chargers)]
        passwords = [await book.add(charger_id) for charger_id in ids]
        for n in range(0, options.chargers, 2):  # the 1.6 chargers' tags, as a site has
            await book.tag(f"TAG-{options.prefix}-{n}", None)
    finally:
        await pool.close()
    url = options.url or charger_url(settings, "x").rsplit("/", 1)[0]
    loop = asyncio.get_running_loop()
    deadline = None if options.duration_s is None else loop.time() + options.duration_s

    def over() -> bool:
        return stopped() or (deadline is not None and loop.time() >= deadline)

    rng = random.Random(options.seed)  # noqa: S311 - simulation, not security
    report.chargers = options.chargers
    await asyncio.gather(
        *(
            _Charging(
                url, charger_id, password, n, options=options, report=report, seed=rng.random()
            ).run(over)
            for n, (charger_id, password) in enumerate(zip(ids, passwords, strict=True))
        )
    )
    return report


class _Charging:
    """One simulated charger's life: sessions, glitches, offline stretches."""

    def __init__(
        self,
        url: str,
        charger_id: str,
        password: str,
        n: int,
        *,
        options: OcppFleetOptions,
        report: OcppFleetReport,
        seed: float,
    ) -> None:
        self.protocol = "ocpp1.6" if n % 2 == 0 else "ocpp2.0.1"
        self.charger = SimCharger(url, charger_id, self.protocol, password, response_timeout=30)
        self.id = charger_id
        self.options = options
        self.report = report
        self.rng = random.Random(seed)  # noqa: S311 - simulation, not security
        self.wh = self.rng.uniform(1_000_000, 50_000_000)
        self.n = n

    async def run(self, over: Callable[[], bool]) -> None:
        try:
            await self._connect()
            await self.charger.boot("SimVendor", "AC22" if self.n % 2 else "DC50")
            await self.charger.status(1, "Available")
            session = 0
            while not over():
                session += 1
                await self._session(session, over)
                for _ in range(2):  # idle between sessions: aligned values, no transaction
                    if over():
                        break
                    await self._sleep()
                    await self.charger.meter_values(1, self.wh, datetime.now(UTC))
                    self.report.meter_values += 1
        except Exception as exc:
            self.report.failed(f"{self.id}: {exc!r}")
            log.warning("simulate.ocpp_charger_failed", charger=self.id, error=repr(exc))
        finally:
            await self.charger.close()

    async def _connect(self) -> None:
        for attempt in range(30):
            try:
                await self.charger.connect()
                return
            except OSError:
                await asyncio.sleep(min(5, 0.2 * 2**attempt))
        await self.charger.connect()

    async def _sleep(self) -> None:
        await asyncio.sleep(self.options.interval_s * self.rng.uniform(0.9, 1.1))

    def _charge(self, seconds: float, kw: float) -> float:
        self.wh += kw * 1000 * seconds / 3600
        return self.wh

    async def _session(self, number: int, over: Callable[[], bool]) -> None:
        c, v16 = self.charger, self.protocol == "ocpp1.6"
        kw = self.rng.uniform(7, 22)
        start = datetime.now(UTC)
        tag = f"TAG-{self.id}"
        await c.status(1, "Charging" if v16 else "Occupied")
        tx_id = f"{self.id}-{number}"
        seq = 0
        tx: int | None = None
        if v16:
            tx = await c.start(1, tag, self.wh, start)
        else:
            await c.event("Started", tx_id, seq, evse=1, wh=self.wh, ts=start, id_tag=tag)
        self.report.sessions += 1
        offline = self.rng.random() < self.options.offline_rate
        queued: list[Callable[[], Awaitable[None]]] = []
        readings = self.rng.randint(4, 10)
        last = start
        for k in range(readings):
            if over() and not queued:
                break
            if offline and k == 1:
                await c.close()  # the connection drops; the charger keeps its queue
            await self._sleep()
            now = datetime.now(UTC)
            wh = self._charge((now - last).total_seconds(), kw)
            last = now
            value = 0.0 if self.rng.random() < self.options.glitch_rate else wh
            seq += 1
            send = self._meter_value(value, now, tx, tx_id, seq)
            if offline and k >= 1:
                queued.append(send)
            else:
                await send()
        stop = datetime.now(UTC) + timedelta(milliseconds=1)
        seq += 1
        end = self._end(tx, tx_id, seq, wh=self._charge(0, kw), ts=stop, offline=offline)
        if offline:
            queued.append(end)
            await self._connect()
            for send in queued:  # the offline queue, replayed in order with its own times
                await send()
            self.report.replayed += len(queued)
        else:
            await end()
        await c.status(1, "Available")

    def _meter_value(
        self, wh: float, ts: datetime, tx: int | None, tx_id: str, seq: int
    ) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            if tx is not None:
                await self.charger.meter_values(1, wh, ts, transaction_id=tx)
            else:
                await self.charger.event("Updated", tx_id, seq, evse=1, wh=wh, ts=ts)
            self.report.meter_values += 1

        return send

    def _end(
        self, tx: int | None, tx_id: str, seq: int, *, wh: float, ts: datetime, offline: bool
    ) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            if tx is not None:
                await self.charger.stop(tx, wh, ts, reason="EVDisconnected")
            else:
                await self.charger.event(
                    "Ended", tx_id, seq, evse=1, wh=wh, ts=ts,
                    stopped_reason="EVDisconnected", offline=offline,
                )  # fmt: skip

        return send
