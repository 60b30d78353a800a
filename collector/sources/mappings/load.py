"""``SOURCES_FILE`` from the settings: the mappings the MQTT source decodes with."""

from __future__ import annotations

import re

from collector.ingest.streams import STREAMS
from collector.settings import Settings
from collector.sources.mappings.decoder import Mappings
from collector.sources.mappings.spec import load_sources
from collector.sources.mappings.topic import TopicPattern
from collector.sources.mqtt.topics import READING


def under_prefix(text: str, prefix: str) -> str:
    """A sources file's text with every ``topic`` under ``prefix/``: the shipped files as a
    demo or a test uses them on a shared broker."""
    return re.sub(r'^topic(\s*)= "', rf'topic\1= "{prefix}/', text, flags=re.M)


def native_patterns(prefix: str) -> list[TopicPattern]:
    """The native topics as patterns: no mapping may take a message meant for them."""
    start = f"{prefix}/" if prefix else ""
    return [TopicPattern(f"{start}{s.topic}/{{id}}/{READING}") for s in STREAMS.values()]


def load_mappings(settings: Settings) -> Mappings | None:
    """The mappings of ``SOURCES_FILE``, checked (``SourcesError``: one line); None when
    it is not set."""
    if not settings.sources_file:
        return None
    native = native_patterns(settings.mqtt_topic_prefix)
    return Mappings(load_sources(settings.sources_file, native))
