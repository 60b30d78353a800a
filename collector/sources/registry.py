"""The sources the settings call for, built by name: the daemon's one place that knows them.

Each entry of :data:`SOURCES` builds one source from the settings, the sink and the
metrics, or None when the settings leave it off. The daemon runs and stops whatever comes
back through the ``Source`` protocol alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from collector.ingest.sink import Sink
from collector.metrics import Metrics
from collector.settings import Settings
from collector.sources.base import Source
from collector.sources.http.source import HttpIngest
from collector.sources.mappings.decoder import Mappings
from collector.sources.mqtt.source import MqttSource
from collector.sources.ocpp.listener import OcppConfig, OcppSource


@dataclass(frozen=True, slots=True)
class Wiring:
    """What every source is built from."""

    settings: Settings
    sink: Sink
    metrics: Metrics
    #: ``energy-collector leave``: drain this instance's MQTT session for good, nothing else.
    leaving: bool = False
    #: The payload mappings of SOURCES_FILE, for the MQTT source.
    mappings: Mappings | None = None
    #: A pool of its own for a source that keeps state in the database (OCPP's chargers
    #: and sessions); opened when the source runs, after the database is ready.
    open_pool: Callable[[], Awaitable[asyncpg.Pool]] | None = None


def _mqtt(w: Wiring) -> Source:
    return MqttSource(
        settings=w.settings,
        sink=w.sink,
        metrics=w.metrics,
        leaving=w.leaving,
        mappings=w.mappings,
    )


def _http(w: Wiring) -> Source | None:
    if w.leaving:
        return None
    s = w.settings
    return HttpIngest(
        sink=w.sink,
        metrics=w.metrics,
        timeout_s=s.ingest_timeout_s,
        max_waiting=s.ingest_max_waiting,
    )


def _ocpp(w: Wiring) -> Source | None:
    config = OcppConfig.from_settings(w.settings)
    if config is None or w.leaving:
        return None
    assert w.open_pool is not None, "the OCPP source needs a database pool"
    return OcppSource(config=config, sink=w.sink, metrics=w.metrics, open_pool=w.open_pool)


#: Every kind of source, by name (its label in metrics and logs).
SOURCES: dict[str, Callable[[Wiring], Source | None]] = {
    "mqtt": _mqtt,
    "http": _http,
    "ocpp": _ocpp,
}


def build_sources(wiring: Wiring) -> dict[str, Source]:
    """The sources the settings call for, by name."""
    built = {name: make(wiring) for name, make in SOURCES.items()}
    return {name: source for name, source in built.items() if source is not None}
