"""Validation: every class of bad input gets its own reason; good input becomes a reading."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from collector.ingest.readings import (
    Kind,
    MeterReading,
    ReadingValidator,
    Reason,
    Rejection,
    VehicleReading,
    route_topic,
)

NOW = datetime(2026, 2, 9, 12, 0, tzinfo=UTC)
GOOD_METER = {
    "meterId": "meter-001",
    "kwhConsumedAc": 1.42,
    "voltage": 230.5,
    "timestamp": "2026-02-09T10:00:00Z",
}
GOOD_VEHICLE = {
    "vehicleId": "vehicle-001",
    "soc": 68.2,
    "kwhDeliveredDc": 1.18,
    "batteryTemp": 31.4,
    "timestamp": "2026-02-09T10:00:00Z",
}


@pytest.fixture
def validator() -> ReadingValidator:
    return ReadingValidator(max_payload_bytes=4096, max_future_skew_s=300)


def check(validator: ReadingValidator, kind: Kind, payload: bytes | dict, expected_id=None):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return validator.validate(
        kind, raw, source="t", expected_id=expected_id, horizon=validator.horizon(NOW)
    )


def test_good_meter_reading_keeps_every_value(validator):
    reading = check(validator, Kind.METER, GOOD_METER, "meter-001")
    assert isinstance(reading, MeterReading)
    assert reading.meterId == "meter-001"
    assert reading.kwhConsumedAc == 1.42
    assert reading.voltage == 230.5
    assert reading.timestamp == datetime(2026, 2, 9, 10, 0, tzinfo=UTC)


def test_good_vehicle_reading_with_offset_timestamp(validator):
    payload = {**GOOD_VEHICLE, "timestamp": "2026-02-09T11:00:00+01:00"}
    reading = check(validator, Kind.VEHICLE, payload, "vehicle-001")
    assert isinstance(reading, VehicleReading)
    assert (reading.soc, reading.kwhDeliveredDc, reading.batteryTemp) == (68.2, 1.18, 31.4)
    assert reading.timestamp == datetime(2026, 2, 9, 10, 0, tzinfo=UTC)


def test_integers_are_accepted_as_numbers(validator):
    reading = check(validator, Kind.METER, {**GOOD_METER, "kwhConsumedAc": 2, "voltage": 230})
    assert isinstance(reading, MeterReading)
    assert reading.kwhConsumedAc == 2.0


def test_unknown_extra_fields_are_ignored(validator):
    reading = check(validator, Kind.METER, {**GOOD_METER, "firmware": "1.2.3"})
    assert isinstance(reading, MeterReading)


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        (Kind.METER, b"not json", Reason.INVALID_JSON),
        (Kind.METER, b"\xff\xfe\x00", Reason.INVALID_JSON),
        (Kind.METER, b'{"meterId": "meter-001", ', Reason.INVALID_JSON),
        (Kind.METER, b"[1, 2, 3]", Reason.INVALID_SHAPE),
        (Kind.METER, b'"a string"', Reason.INVALID_SHAPE),
        (Kind.METER, {k: v for k, v in GOOD_METER.items() if k != "voltage"}, Reason.MISSING_FIELD),
        (Kind.METER, {**GOOD_METER, "kwhConsumedAc": "1.42"}, Reason.INVALID_TYPE),
        (Kind.METER, {**GOOD_METER, "kwhConsumedAc": True}, Reason.INVALID_TYPE),
        (Kind.METER, {**GOOD_METER, "meterId": 17}, Reason.INVALID_TYPE),
        (Kind.METER, {**GOOD_METER, "kwhConsumedAc": -0.1}, Reason.OUT_OF_RANGE),
        (Kind.METER, {**GOOD_METER, "voltage": 5000}, Reason.OUT_OF_RANGE),
        (
            Kind.METER,
            b'{"meterId":"meter-001","kwhConsumedAc":NaN,"voltage":230.5,'
            b'"timestamp":"2026-02-09T10:00:00Z"}',
            Reason.OUT_OF_RANGE,
        ),
        (
            Kind.METER,
            b'{"meterId":"meter-001","kwhConsumedAc":1e999,"voltage":230.5,'
            b'"timestamp":"2026-02-09T10:00:00Z"}',
            Reason.OUT_OF_RANGE,
        ),
        (Kind.VEHICLE, {**GOOD_VEHICLE, "soc": 100.5}, Reason.OUT_OF_RANGE),
        (Kind.VEHICLE, {**GOOD_VEHICLE, "soc": -1}, Reason.OUT_OF_RANGE),
        (Kind.VEHICLE, {**GOOD_VEHICLE, "kwhDeliveredDc": -2}, Reason.OUT_OF_RANGE),
        (Kind.VEHICLE, {**GOOD_VEHICLE, "batteryTemp": 250}, Reason.OUT_OF_RANGE),
        (Kind.METER, {**GOOD_METER, "timestamp": "2026-02-09T10:00:00"}, Reason.INVALID_TIMESTAMP),
        (Kind.METER, {**GOOD_METER, "timestamp": "yesterday"}, Reason.INVALID_TIMESTAMP),
        (Kind.METER, {**GOOD_METER, "timestamp": 1770631200}, Reason.INVALID_TYPE),
        (Kind.METER, {**GOOD_METER, "timestamp": "1770631200"}, Reason.INVALID_TIMESTAMP),
        (Kind.METER, {**GOOD_METER, "timestamp": "2026-02-09"}, Reason.INVALID_TIMESTAMP),
        (Kind.METER, {**GOOD_METER, "timestamp": "1999-12-31T23:59:59Z"}, Reason.INVALID_TIMESTAMP),
        (Kind.METER, {**GOOD_METER, "meterId": "bad id/with slash"}, Reason.INVALID_ID),
        (Kind.METER, {**GOOD_METER, "meterId": "x" * 65}, Reason.INVALID_ID),
        (Kind.METER, {**GOOD_METER, "meterId": "nul\u0000byte"}, Reason.INVALID_ID),
    ],
)
def test_bad_input_is_rejected_with_its_reason(validator, kind, payload, reason):
    result = check(validator, kind, payload)
    assert isinstance(result, Rejection), result
    assert result.reason is reason, result.detail
    assert result.detail


def test_topic_id_must_match_payload_id(validator):
    result = check(validator, Kind.METER, GOOD_METER, expected_id="meter-002")
    assert isinstance(result, Rejection)
    assert result.reason is Reason.ID_MISMATCH
    assert "meter-002" in result.detail
    assert "meter-001" in result.detail


def test_timestamp_ahead_of_the_clock_beyond_the_skew_is_rejected(validator):
    ahead = NOW + timedelta(seconds=301)
    result = check(validator, Kind.METER, {**GOOD_METER, "timestamp": ahead.isoformat()})
    assert isinstance(result, Rejection)
    assert result.reason is Reason.FUTURE_TIMESTAMP


def test_timestamp_ahead_within_the_skew_is_accepted(validator):
    ahead = NOW + timedelta(seconds=299)
    result = check(validator, Kind.METER, {**GOOD_METER, "timestamp": ahead.isoformat()})
    assert isinstance(result, MeterReading)


def test_oversized_payload_is_cut_and_its_size_kept():
    validator = ReadingValidator(max_payload_bytes=100, max_future_skew_s=300)
    payload = json.dumps({**GOOD_METER, "padding": "x" * 500}).encode()
    result = check(validator, Kind.METER, payload)
    assert isinstance(result, Rejection)
    assert result.reason is Reason.OVERSIZED
    assert len(result.payload) == 100
    assert result.payload_size == len(payload)


@pytest.mark.parametrize(
    ("topic", "prefix", "expected"),
    [
        ("meters/meter-001/reading", "", (Kind.METER, "meter-001")),
        ("vehicles/v1/reading", "", (Kind.VEHICLE, "v1")),
        ("site/meters/m1/reading", "site", (Kind.METER, "m1")),
        ("sites/meters/m1/reading", "site", None),
        ("meters/m1/reading", "site", None),
        ("meters/m1/status", "", None),
        ("meters//reading", "", None),
        ("chargers/c1/reading", "", None),
        ("meters/m1/reading/extra", "", None),
    ],
)
def test_route_topic(topic, prefix, expected):
    assert route_topic(topic, prefix) == expected


def test_lower_case_rfc3339_timestamps_are_accepted(validator):
    reading = check(validator, Kind.METER, {**GOOD_METER, "timestamp": "2026-02-09t10:00:00z"})
    assert isinstance(reading, MeterReading)
    assert reading.timestamp == datetime(2026, 2, 9, 10, 0, tzinfo=UTC)
