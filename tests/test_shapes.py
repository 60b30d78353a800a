"""``simulate --devices-as``: a meter told as a device family tells it, and the shipped
mapping (deploy/sources/<family>.toml) turns it back into the same reading."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.cli import _devices_as
from collector.ingest.sink import classify
from collector.ingest.validation import ReadingValidator
from collector.sources.mappings.decoder import Mappings
from collector.sources.mappings.load import native_patterns
from collector.sources.mappings.spec import load_sources
from collector.tools.shapes import SHAPES

SOURCES = Path(__file__).parent.parent / "deploy" / "sources"
TS = "2026-07-01T10:15:00+00:00"  # summer: Tasmota's Berlin clock is UTC+2


@pytest.mark.parametrize("family", sorted(SHAPES))
def test_each_shape_comes_back_as_the_reading_it_was(family):
    shape = SHAPES[family]()
    mappings = Mappings(load_sources(str(SOURCES / f"{family}.toml"), native_patterns("")))
    validator = ReadingValidator(max_payload_bytes=4096, max_future_skew_s=300)
    bodies = [
        {"meterId": "meter-007", "kwhRegisterAc": 1234.5, "voltage": 231.5, "timestamp": TS},
        {"meterId": "meter-007", "kwhConsumedAc": 0.25, "timestamp": TS},  # an interval meter
    ]
    registers = [1234.5, 1000.25]
    for body, register in zip(bodies, registers, strict=True):
        topic = shape.topic("meter-007")
        mapping, captures = mappings.route(topic)
        item = mapping.decode(
            topic, captures, shape.payload("meter-007", body), retained=False,
            received_at=datetime.now(UTC),
        )  # fmt: skip
        (reading,) = classify(validator, [item]).readings["meter"]
        assert reading.meterId == shape.device_id("meter-007")
        assert reading.kwhRegisterAc == register
        assert reading.voltage == body.get("voltage")
        assert reading.timestamp == datetime.fromisoformat(TS)


def test_devices_as_takes_a_family_and_a_count():
    assert _devices_as("shelly-gen2") == ("shelly-gen2", None)
    assert _devices_as("tasmota=3") == ("tasmota", 3)
    for bad in ("sonoff", "tasmota=0", "tasmota=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _devices_as(bad)
