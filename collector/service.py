"""The daemon: builds the ingest pipeline and its sources, runs them, stops them in order.

Shutdown (SIGTERM/SIGINT): every source stops taking input, the writer commits what is
buffered and acknowledges it, then the sources let go (disconnect) and the pool closes. If
the database does not come back within ``SHUTDOWN_TIMEOUT_S``, what is left is not
acknowledged (the broker redelivers it to the next session) and the process still exits 0.

The HTTP API is not imported here: ``collector.process`` passes an ``app_factory`` that
builds it from the parts the API may use (HTTP ingest, the health snapshot, the metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from functools import partial
from typing import Any

import asyncpg
import structlog
from prometheus_client import CollectorRegistry

from collector.alerts.engine import AlertEngine
from collector.alerts.outbox import Outbox
from collector.alerts.rules import AlertRule, load_rules
from collector.alerts.targets import build_targets
from collector.backoff import Backoff
from collector.db.citus import is_distributed
from collector.db.partitions import PartitionManager
from collector.db.prepare import (
    DatabaseNotReady,
    DatabaseUnreachable,
    connect,
    create_pool,
    prepare_database,
)
from collector.health import DaemonHealth
from collector.http_server import EmbeddedServer, StartupError, embedded_server, listen
from collector.ingest.booking.booker import RegisterBooker
from collector.ingest.booking.rebooker import Rebooker
from collector.ingest.booking.registers import RegisterLimits
from collector.ingest.buffer import IngestBuffer
from collector.ingest.sink import Sink
from collector.ingest.validation import ReadingValidator
from collector.ingest.writer import Writer
from collector.metrics import Metrics
from collector.settings import Settings
from collector.settlement.sites import SitesError, check_devices, load_sites
from collector.sources.base import Source, SourceHealth
from collector.sources.http.source import HttpIngest
from collector.sources.mappings.load import load_mappings
from collector.sources.mappings.preview import SourcesDesk
from collector.sources.mqtt.source import MqttSource
from collector.sources.mqtt.topics import NativeTopics
from collector.sources.registry import Wiring, build_sources
from collector.systemd import Notifier

log = structlog.get_logger("collector.service")
#: Builds the HTTP application from what the API may use of a running daemon: its HTTP
#: ingest source, its health snapshot and its metrics (``collector.process`` wires
#: ``api.app.create_app``; nothing else in the collector imports the API).
AppFactory = Callable[[HttpIngest, Callable[[], DaemonHealth], CollectorRegistry, SourcesDesk], Any]


class CollectorService:
    """The long-running daemon: MQTT source, buffer, writer (and later the HTTP API)."""

    def __init__(
        self,
        settings: Settings,
        *,
        handle_signals: bool = True,
        app_factory: AppFactory | None = None,
        leaving: bool = False,
    ) -> None:
        self.settings = settings
        self.app_factory = app_factory
        #: Checked now: a bad rules file stops the start with one line (RulesError).
        self.alert_rules: tuple[AlertRule, ...] = (
            load_rules(settings) if settings.alerts_enabled and not leaving else ()
        )
        self.alerts: AlertEngine | None = None
        #: Checked now too: a bad SOURCES_FILE stops the start with one line (SourcesError).
        self.mappings = load_mappings(settings)
        #: And a bad SITES_FILE (SitesError).
        self.sites = load_sites(settings)
        #: Drain this instance's MQTT session for good (`energy-collector leave`).
        self.leaving = leaving
        self.metrics = Metrics()
        self.buffer = IngestBuffer(settings.buffer_capacity)
        self.metrics.buffer_capacity.set(settings.buffer_capacity)
        self.metrics.buffer_depth.set_function(lambda: self.buffer.depth)
        self.validator = ReadingValidator.from_settings(settings)
        self.sink = Sink(buffer=self.buffer, validator=self.validator)
        self.handle_signals = handle_signals
        self.systemd = Notifier()
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        #: Every source the settings call for, by name (sources/registry.py).
        self.sources: dict[str, Source] = build_sources(
            Wiring(
                settings,
                self.sink,
                self.metrics,
                leaving=leaving,
                mappings=self.mappings,
                open_pool=partial(
                    create_pool,
                    settings,
                    min_size=1,
                    max_size=4,
                    application_name="energy-collector-ocpp",
                ),
            )
        )
        self.pool: asyncpg.Pool | None = None
        self.writer: Writer | None = None
        self.partitions: PartitionManager | None = None
        self.rebooker: Rebooker | None = None
        self.http: EmbeddedServer | None = None
        self.http_port: int | None = None
        #: The database is a Citus coordinator with the schema distributed (docs/scale.md).
        self.citus = False

    @property
    def http_ingest(self) -> HttpIngest | None:
        """The HTTP source, which the API drives (None for ``leave``)."""
        source = self.sources.get("http")
        return source if isinstance(source, HttpIngest) else None

    def sources_desk(self) -> SourcesDesk:
        """The payload mappings as the API shows and tries them, with this daemon's counts."""
        registry = self.metrics.registry

        def counted(source: str, outcome: str) -> float:
            labels = {"source": source, "outcome": outcome}
            return registry.get_sample_value("collector_mapped_messages_total", labels) or 0.0

        native = NativeTopics.from_settings(self.settings)
        return SourcesDesk(self.mappings, native, self.sink.classify, counted)

    def health_snapshot(self) -> DaemonHealth:
        """The daemon's view for /health."""
        writer = self.writer
        mqtt = self.sources["mqtt"].health() if "mqtt" in self.sources else SourceHealth(None)
        return DaemonHealth(
            broker_connected=bool(mqtt.connected),
            broker_error=mqtt.error,
            writer_ok=writer is not None and writer.health.database_ok,
            writer_error=None if writer is None else writer.health.last_error,
            buffer_depth=self.buffer.depth,
            buffer_capacity=self.buffer.capacity,
            last_commit_at=None if writer is None else writer.health.last_commit_at,
            writer_permanent=writer is not None and writer.health.permanent,
            writer_hint=None if writer is None else writer.health.hint,
        )

    def request_stop(self, reason: str = "requested") -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        if not self._stop.is_set():
            log.info("collector.stopping", reason=reason, buffered=self.buffer.depth)
            self._stop.set()
            self.systemd.notify("STOPPING=1")

    async def run(self) -> int:
        """Run until stopped. Returns the process exit code."""
        s = self.settings
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        # From the start: waiting for the database must not look like a hang to systemd.
        watchdog = asyncio.create_task(self.systemd.watchdog(), name="watchdog")
        try:
            self._prepare_http()
            if not await self._wait_for_database():
                return 0
            # One connection per writer lane, one for the rebooker and maintenance.
            self.pool = await create_pool(s, min_size=1, max_size=s.writer_lanes + 2)
            booker = RegisterBooker(RegisterLimits.from_settings(s), self.metrics)
            self.rebooker = Rebooker(self.pool, booker)
            await self._inspect_database(self.pool)
            self.writer = Writer(
                pool=self.pool,
                buffer=self.buffer,
                metrics=self.metrics,
                # on Citus a batch costs a fixed fan-out of remote commands: larger ones
                batch_size=s.citus_batch_size if self.citus else s.batch_size,
                flush_interval_s=s.flush_interval_ms / 1000,
                retry_max_s=s.db_retry_max_s,
                give_up_s=s.write_give_up_s,
                lanes=s.writer_lanes,
                booker=booker,
                on_dirty=self.rebooker.wake,
                # its retry lines name the database they cannot reach
                log=structlog.get_logger("collector.writer").bind(database=s.database_where),
            )
            self.writer.health.database_ok = True
            self.partitions = PartitionManager.from_settings(self.pool, s)
            tasks = {
                asyncio.create_task(self.writer.run(), name="writer"),
                asyncio.create_task(self.partitions.run(), name="partitions"),
                asyncio.create_task(self.rebooker.run(), name="rebooker"),
            }
            for name, source in self.sources.items():
                tasks.add(asyncio.create_task(source.run(), name=f"source:{name}"))
            if self.alert_rules:
                self.alerts = self._alert_engine()
                tasks.add(asyncio.create_task(self.alerts.run(), name="alerts"))
            if self.app_factory is not None and s.http_enabled and not self.leaving:
                tasks.add(asyncio.create_task(self._serve_http(), name="http"))
            if self.leaving:
                tasks.add(asyncio.create_task(self._stop_when_drained(), name="leave"))
            log.info(
                "collector.started",
                database=s.database_name,
                http=f"http://{s.host}:{self.http_port}" if self.http_port else None,
                batch_size=s.citus_batch_size if self.citus else s.batch_size,
                citus=self.citus,
                flush_interval_ms=s.flush_interval_ms,
                buffer_capacity=s.buffer_capacity,
            )
            self.started.set()
            self.systemd.notify("READY=1\nSTATUS=ingesting")
            return await self._supervise(tasks)
        except StartupError as exc:
            log.error("collector.start_failed", error=str(exc))
            return 1
        finally:
            watchdog.cancel()
            await self._release(loop)

    async def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """What ``run`` holds, let go however it ends: the HTTP socket bound up front (it
        leaked when the start failed), the pool, the signal handlers."""
        socket_ = getattr(self, "_http_socket", None)
        if socket_ is not None:
            socket_.close()
        if self.pool is not None:
            await self.pool.close()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _inspect_database(self, pool: asyncpg.Pool) -> None:
        """Is it a Citus coordinator (larger batches), and do the sites' patterns put a
        device that has reported in two sites (a start error, one line)?"""
        async with pool.acquire() as conn:
            self.citus = await is_distributed(conn)
            try:
                where = f"SITES_FILE {self.settings.sites_file}"
                await check_devices(self.sites, conn, where)
            except SitesError as exc:
                raise StartupError(str(exc)) from None

    def _alert_engine(self) -> AlertEngine:
        s = self.settings
        descriptions = {r.name: r.description for r in self.alert_rules}
        outbox = Outbox(
            build_targets(s, descriptions),
            self.metrics,
            retry_max_s=s.alert_retry_max_s,
            give_up_s=s.alert_give_up_s,
            request_timeout_s=s.alert_webhook_timeout_s,
        )

        async def alerts_connection() -> asyncpg.Connection:
            return await connect(s, application_name="energy-collector-alerts")

        return AlertEngine(
            settings=s,
            rules=self.alert_rules,
            outbox=outbox,
            metrics=self.metrics,
            connect=alerts_connection,
            sites=self.sites,
        )

    async def _stop_when_drained(self) -> None:
        mqtt = self.sources["mqtt"]
        assert isinstance(mqtt, MqttSource)
        await mqtt.drained.wait()
        self.request_stop("session drained")
        await asyncio.Event().wait()  # until shutdown cancels it

    async def _serve_http(self) -> None:
        assert self.http is not None
        await self.http.serve(sockets=[self._http_socket])

    def _prepare_http(self) -> None:
        """Bind the socket and build the app before anything starts (errors stop the start)."""
        s = self.settings
        if self.app_factory is None or not s.http_enabled or self.leaving:
            return
        self._http_socket = listen(s.host, s.port)
        self.http_port = self._http_socket.getsockname()[1]
        assert self.http_ingest is not None
        app = self.app_factory(
            self.http_ingest, self.health_snapshot, self.metrics.registry, self.sources_desk()
        )
        self.http = embedded_server(app, s)

    async def _supervise(self, tasks: set[asyncio.Task[Any]]) -> int:
        stop = asyncio.create_task(self._stop.wait(), name="stop")
        done, _ = await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in done - {stop}:
            # A part ended on its own: that is a bug (each loop handles its own errors).
            exc = task.exception()
            log.error("collector.task_died", task=task.get_name(), error=repr(exc), exc_info=exc)
            code = 1
        stop.cancel()
        await self._shutdown(tasks)
        log.info("collector.stopped", exit_code=code)
        return code

    async def _shutdown(self, tasks: set[asyncio.Task[Any]]) -> None:
        by_name = {t.get_name(): t for t in tasks}
        writer = by_name["writer"]
        for name in ("partitions", "rebooker", "leave", "alerts"):
            if name in by_name:
                by_name[name].cancel()
        for source in self.sources.values():
            source.stop_taking()
        self.buffer.close()
        try:
            await asyncio.wait_for(asyncio.shield(writer), self.settings.shutdown_timeout_s)
        except TimeoutError:
            log.warning(
                "collector.shutdown_deadline",
                buffered=self.buffer.depth,
                hint="database unavailable; unacknowledged readings stay in the broker",
            )
            writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
        http = by_name.get("http")
        if http is not None and self.http is not None:
            # In-flight ingest requests have their answer now (committed or 503).
            self.http.should_exit = True
            try:
                await asyncio.wait_for(http, 10)
            except (TimeoutError, asyncio.CancelledError, Exception) as exc:
                log.warning("collector.http_close_failed", error=repr(exc))
        alerts = by_name.get("alerts")
        if alerts is not None:  # cancelled above: let it close its connection
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(alerts, 5)
        for name, source in self.sources.items():
            source.release()  # everything taken is committed or given up: disconnect
            try:
                await asyncio.wait_for(by_name[f"source:{name}"], 5)
            except (TimeoutError, asyncio.CancelledError, Exception) as exc:
                log.warning("collector.source_close_failed", source=name, error=repr(exc))

    async def _wait_for_database(self) -> bool:
        """Prepare the database (create, migrate or refuse); retry while it is unreachable."""
        backoff = Backoff(0.5, 10)
        while not self._stop.is_set():
            try:
                await prepare_database(self.settings)
            except DatabaseUnreachable as exc:
                delay = backoff.next()
                why = str(exc.__cause__ or exc)
                log.warning(
                    "database.unreachable",
                    database=self.settings.database_where,
                    error=why,
                    retry_in_s=round(delay, 2),
                )
                self.systemd.notify(f"STATUS=waiting for the database: {why}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            except DatabaseNotReady as exc:
                raise StartupError(str(exc)) from exc
            return True
        return False
