"""Validation: a stream's payload in, a reading or the reason for rejecting it out.

Pure, no I/O. Every source's items pass through here (by way of the sink, or the importer),
so a reading is accepted or rejected the same way wherever it comes from. Each failure has
its reason code (``readings.Reason``), stored with the dead letter.

This is the collector's hottest code: it runs once per message. pydantic validates the
payload's types and ranges in Rust into a dict (``Stream.payload``); the rest is a few
comparisons here, and the reading is built without a second validation (docs/ingest.md,
"CPU").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from collector.ingest.readings import (
    EARLIEST_TIMESTAMP,
    STRING_FIELDS,
    Reading,
    Reason,
    Rejection,
    TimestampError,
    describe,
    parse_iso8601,
)
from collector.ingest.streams import BY_MODEL, STREAMS, Stream

if TYPE_CHECKING:
    from collector.settings import Settings


class ReadingValidator:
    """Validates payloads against the contract, the topic, the size limit and the clock."""

    def __init__(self, *, max_payload_bytes: int, max_future_skew_s: float) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_future_skew = timedelta(seconds=max_future_skew_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadingValidator:
        return cls(
            max_payload_bytes=settings.max_payload_bytes,
            max_future_skew_s=settings.max_future_skew_s,
        )

    def horizon(self, now: datetime | None = None) -> datetime:
        """The latest timestamp accepted now: the collector's clock plus the allowed skew."""
        return (now or datetime.now(UTC)) + self.max_future_skew

    def oversized(self, payload: bytes, source: str) -> Rejection:
        """The dead letter of a payload over the size limit (cut to it)."""
        return Rejection(
            source,
            payload[: self.max_payload_bytes],
            Reason.OVERSIZED,
            f"payload is {len(payload)} bytes, the limit is {self.max_payload_bytes}",
            size=len(payload),
        )

    def validate(
        self,
        stream: Stream,
        payload: bytes,
        source: str,
        expected_id: str | None,
        horizon: datetime,
    ) -> Reading | Rejection:
        """Validate one JSON payload of a known stream; ``expected_id`` comes from the topic.
        (Positional arguments allowed: the sink calls this once per message.)"""
        if len(payload) > self.max_payload_bytes:
            return self.oversized(payload, source)
        try:
            values = stream.payload.validate_json(payload)
        except ValidationError as exc:
            reason, detail = describe(exc)
            return Rejection(source, payload, reason, detail)
        raw_ts = values["timestamp"]
        try:
            ts = parse_iso8601(raw_ts)
        except TimestampError as exc:
            return Rejection(source, payload, Reason.INVALID_TIMESTAMP, f"timestamp: {exc}")
        # A key given twice: the parser kept the last value. Cheap proof there is none: the
        # payload's quotes are exactly those of the dict's keys and string values (2 each).
        # A key given twice, an unknown field, anything nested or escaped adds more; then
        # look closer.
        if payload.count(b'"') != 2 * (len(values) + STRING_FIELDS):
            twice = duplicate_field(payload, stream)
            if twice is not None:
                return Rejection(
                    source,
                    payload,
                    Reason.DUPLICATE_FIELD,
                    f"the field {twice!r} appears more than once; which value is meant is "
                    "ambiguous",
                )
        device = values[stream.id_field]
        # The usual case first, inline: one form of energy, the topic's device, in time.
        if (
            (stream.energy.field in values) != (stream.register_field in values)
            and (expected_id is None or device == expected_id)
            and EARLIEST_TIMESTAMP <= ts <= horizon
        ):
            return stream.model.of(values, ts)
        problem = self._problem(
            stream, values, device, ts, expected_id=expected_id, horizon=horizon
        )
        assert problem is not None
        return Rejection(source, payload, *problem)

    def validate_fields(
        self,
        stream: Stream,
        values: Mapping[str, object],
        *,
        source: str,
        payload: bytes,
        expected_id: str | None,
        horizon: datetime,
    ) -> Reading | Rejection:
        """Validate values a decoder already took out of a payload (Python objects: numbers,
        the timestamp as a datetime); ``payload`` is the message as it arrived, kept for a
        dead letter."""
        cut = payload[: self.max_payload_bytes]
        ts = values.get("timestamp")
        if not isinstance(ts, datetime) or ts.tzinfo is None:
            detail = "timestamp: a timezone-aware date and time is required"
            return Rejection(source, cut, Reason.INVALID_TIMESTAMP, detail, size=len(payload))
        try:
            checked = stream.payload.validate_python({**values, "timestamp": ts.isoformat()})
        except ValidationError as exc:
            reason, detail = describe(exc)
            return Rejection(source, cut, reason, detail, size=len(payload))
        problem = self._problem(
            stream, checked, checked[stream.id_field], ts, expected_id=expected_id, horizon=horizon
        )
        if problem is not None:
            return Rejection(source, cut, *problem, size=len(payload))
        return stream.model.of(checked, ts)

    def _problem(
        self,
        stream: Stream,
        values: dict[str, Any],
        device: str,
        ts: datetime,
        *,
        expected_id: str | None,
        horizon: datetime,
    ) -> tuple[Reason, str] | None:
        """The checks a schema cannot do: one form of energy, the topic id, the clock."""
        interval, cumulative = stream.energy.field, stream.register_field
        if (interval in values) == (cumulative in values):
            if interval not in values:
                return (
                    Reason.MISSING_FIELD,
                    f"{interval} (the interval's energy) or {cumulative} (the register): "
                    "Field required",
                )
            return (
                Reason.AMBIGUOUS_ENERGY,
                f"{interval} and {cumulative} are both given; a reading carries one of them",
            )
        if expected_id is not None and device != expected_id:
            return (
                Reason.ID_MISMATCH,
                f"topic is for {expected_id!r} but the payload is from {device!r}",
            )
        if ts > horizon:
            return (
                Reason.FUTURE_TIMESTAMP,
                f"timestamp {ts.isoformat()} is more than "
                f"{int(self.max_future_skew.total_seconds())} s ahead of the collector's clock",
            )
        if ts < EARLIEST_TIMESTAMP:
            return (
                Reason.INVALID_TIMESTAMP,
                f"timestamp {ts.isoformat()} is before {EARLIEST_TIMESTAMP.date()}",
            )
        return None

    def check(
        self,
        reading: Reading,
        *,
        source: str,
        payload: bytes,
        expected_id: str | None,
        horizon: datetime,
    ) -> Reading | Rejection:
        """The checks a schema cannot do, on a reading built in code."""
        stream = BY_MODEL[type(reading)]
        values = {k: v for k, v in reading.values().items() if v is not None}
        problem = self._problem(
            stream, values, reading.device_id, reading.timestamp, expected_id=expected_id,
            horizon=horizon,
        )  # fmt: skip
        return reading if problem is None else Rejection(source, payload, *problem)


#: The contract's field names as they appear in a payload, per stream.
_FIELD_TOKENS = {
    name: tuple(f'"{field}"'.encode() for field in stream.payload_fields)
    for name, stream in STREAMS.items()
}


def duplicate_field(payload: bytes, stream: Stream) -> str | None:
    """A field of the contract that the JSON object ``payload`` holds twice, else None.

    A JSON parser keeps the last of two equal keys, so ``{"meterId":"evil","meterId":"m-1"}``
    would be stored as m-1: ambiguous, and refused. Checked cheaply (the field names are
    counted in the bytes); only a payload that may hold a duplicate, or escapes a key
    (``"met\\u0065rId"``), is parsed again to be sure.
    """
    if b"\\u" not in payload and all(payload.count(t) < 2 for t in _FIELD_TOKENS[stream.name]):
        return None
    names = [
        name for name, _ in json.loads(payload, object_pairs_hook=list) if isinstance(name, str)
    ]
    return next((n for n in stream.payload_fields if names.count(n) > 1), None)
