"""The sources the settings call for, built by name: the daemon's one place that knows them.

Each entry of :data:`SOURCES` builds one source from the settings, the sink and the
metrics, or None when the settings leave it off. The daemon runs and stops whatever comes
back through the ``Source`` protocol alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from collector.ingest.sink import Sink
from collector.metrics import Metrics
from collector.settings import Settings
from collector.sources.base import Source
from collector.sources.http.source import HttpIngest
from collector.sources.mappings.decoder import Mappings
from collector.sources.mqtt.source import MqttSource


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


#: Every kind of source, by name (its label in metrics and logs).
SOURCES: dict[str, Callable[[Wiring], Source | None]] = {"mqtt": _mqtt, "http": _http}


def build_sources(wiring: Wiring) -> dict[str, Source]:
    """The sources the settings call for, by name."""
    built = {name: make(wiring) for name, make in SOURCES.items()}
    return {name: source for name, source in built.items() if source is not None}
