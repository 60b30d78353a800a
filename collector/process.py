"""The composition root: the daemon with its HTTP API, and how the process runs it.

This is the only collector module that imports the ``api`` package. Everything the API may
use of a running daemon is passed to ``api.app.create_app`` explicitly here: the HTTP ingest
source, the health snapshot and the metrics registry.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry

from api.app import create_app
from collector.health import DaemonHealth
from collector.http_server import embedded_server, listen
from collector.ingest.sink import classify
from collector.ingest.validation import ReadingValidator
from collector.runtime import raise_open_files_limit, run_async, tune_gc
from collector.service import CollectorService
from collector.settings import Settings
from collector.sources.http.source import HttpIngest
from collector.sources.mappings.load import load_mappings
from collector.sources.mappings.preview import SourcesDesk
from collector.sources.mqtt.broker import forget_session
from collector.sources.mqtt.source import MqttSource
from collector.sources.mqtt.topics import NativeTopics


def build_daemon(settings: Settings, *, handle_signals: bool = True) -> CollectorService:
    """The collector with its HTTP API (MQTT and HTTP ingest, writer, reads, dashboard)."""

    def app_factory(
        ingest: HttpIngest,
        health: Callable[[], DaemonHealth],
        registry: CollectorRegistry,
        sources: SourcesDesk,
    ) -> Any:
        return create_app(
            settings, ingest=ingest, daemon_health=health, registry=registry, sources=sources
        )

    return CollectorService(settings, handle_signals=handle_signals, app_factory=app_factory)


def run_daemon(settings: Settings) -> int:
    """``energy-collector run``: until SIGTERM/SIGINT; the exit status."""
    service = build_daemon(settings)
    tune_gc()
    raise_open_files_limit()
    return run_async(service.run())


def run_api(settings: Settings) -> int:
    """``energy-collector api``: the HTTP API alone, read-only (e.g. next to a replica)."""

    async def main() -> int:
        sock = listen(settings.host, settings.port)  # StartupError: a taken port
        # the mappings of SOURCES_FILE, shown and tried (not counted: no MQTT here)
        desk = SourcesDesk(
            load_mappings(settings),
            NativeTopics.from_settings(settings),
            partial(classify, ReadingValidator.from_settings(settings)),
        )
        server = embedded_server(create_app(settings, sources=desk), settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        await server.serve(sockets=[sock])
        return 0 if server.started else 1

    return run_async(main())


def run_leave(settings: Settings) -> int:
    """``energy-collector leave``: retire this instance (MQTT_CLIENT_ID) for good, losing
    nothing it was holding.

    With shared subscriptions the broker keeps routing an instance's share of readings to
    its session while it is down. After the instance is stopped, this unsubscribes (no new
    readings for it), stores and acknowledges what its session still holds, and then
    deletes the session.
    """

    async def main() -> int:
        service = CollectorService(settings, leaving=True)
        code = await service.run()
        mqtt = service.sources["mqtt"]
        assert isinstance(mqtt, MqttSource)
        if code != 0 or not mqtt.left_clean:
            print(
                "energy-collector: the session still held readings at the end; it was "
                "kept. Run `energy-collector leave` again.",
                file=sys.stderr,
            )
            return 1
        await forget_session(settings)
        print(
            f"left: {service.metrics.stored_total()} readings stored from session "
            f"{settings.mqtt_client_id!r}, which is deleted"
        )
        return 0

    return run_async(main())
