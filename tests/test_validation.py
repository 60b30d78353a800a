"""Validation beyond the golden cases (tests/decoders/native): the size limit, values a
decoder already took out of a payload."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from collector.ingest.readings import MeterReading, Reason, Rejection
from collector.ingest.streams import METER
from collector.ingest.validation import ReadingValidator

NOW = datetime(2026, 2, 9, 12, 0, tzinfo=UTC)
GOOD_METER = {
    "meterId": "meter-001",
    "kwhConsumedAc": 1.42,
    "voltage": 230.5,
    "timestamp": "2026-02-09T10:00:00Z",
}


@pytest.fixture
def validator() -> ReadingValidator:
    return ReadingValidator(max_payload_bytes=4096, max_future_skew_s=300)


def test_oversized_payload_is_cut_and_its_size_kept():
    validator = ReadingValidator(max_payload_bytes=100, max_future_skew_s=300)
    payload = json.dumps({**GOOD_METER, "padding": "x" * 500}).encode()
    result = validator.validate(
        METER, payload, source="t", expected_id=None, horizon=validator.horizon(NOW)
    )
    assert isinstance(result, Rejection)
    assert result.reason is Reason.OVERSIZED
    assert len(result.payload) == 100
    assert result.payload_size == len(payload)


def test_decoded_values_are_checked_like_a_payload(validator):
    values = {**GOOD_METER, "timestamp": datetime(2026, 2, 9, 10, tzinfo=UTC)}
    horizon = validator.horizon(NOW)
    reading = validator.validate_fields(
        METER, values, source="t", payload=b"raw", expected_id="meter-001", horizon=horizon
    )
    assert isinstance(reading, MeterReading)
    assert reading.kwhConsumedAc == 1.42
    refused = validator.validate_fields(
        METER, {**values, "voltage": 5000.0}, source="t", payload=b"raw", expected_id=None,
        horizon=horizon,
    )  # fmt: skip
    assert isinstance(refused, Rejection)
    assert (refused.reason, refused.payload) == (Reason.OUT_OF_RANGE, b"raw")
