"""Validation: a stream's payload in, a reading or the reason for rejecting it out.

Pure, no I/O. Every source's items pass through here (by way of the sink, or the importer),
so a reading is accepted or rejected the same way wherever it comes from. Each failure has
its reason code (``readings.Reason``), stored with the dead letter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import ValidationError

from collector.ingest.readings import (
    EARLIEST_TIMESTAMP,
    Reading,
    Reason,
    Rejection,
    describe,
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

    def oversized(self, payload: bytes, source: str) -> Rejection | None:
        """The dead letter of a payload over the size limit (cut to it), else None."""
        if len(payload) <= self.max_payload_bytes:
            return None
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
        *,
        source: str,
        expected_id: str | None,
        horizon: datetime,
    ) -> Reading | Rejection:
        """Validate one JSON payload of a known stream; ``expected_id`` comes from the topic."""
        if len(payload) > self.max_payload_bytes:
            too_big = self.oversized(payload, source)
            assert too_big is not None
            return too_big
        try:
            reading = stream.model.model_validate_json(payload)
        except ValidationError as exc:
            reason, detail = describe(exc)
            return Rejection(source, payload, reason, detail)
        twice = duplicate_field(payload, stream)
        if twice is not None:
            return Rejection(
                source,
                payload,
                Reason.DUPLICATE_FIELD,
                f"the field {twice!r} appears more than once; which value is meant is ambiguous",
            )
        return self.check(
            reading, source=source, payload=payload, expected_id=expected_id, horizon=horizon
        )

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
        a datetime); ``payload`` is the message as it arrived, kept for a dead letter."""
        try:
            reading = stream.model.model_validate(values)
        except ValidationError as exc:
            reason, detail = describe(exc)
            return Rejection(source, payload[: self.max_payload_bytes], reason, detail)
        return self.check(
            reading, source=source, payload=payload, expected_id=expected_id, horizon=horizon
        )

    def check(
        self,
        reading: Reading,
        *,
        source: str,
        payload: bytes,
        expected_id: str | None,
        horizon: datetime,
    ) -> Reading | Rejection:
        """The checks a model cannot do alone: one form of energy, the topic id, and the
        timestamp against the clock."""
        energy, register = reading.energy, reading.register
        if (energy is None) == (register is None):
            stream = BY_MODEL[type(reading)]
            interval, cumulative = stream.energy.field, stream.register_field
            if energy is None:
                return Rejection(
                    source,
                    payload,
                    Reason.MISSING_FIELD,
                    f"{interval} (the interval's energy) or {cumulative} (the register): "
                    "Field required",
                )
            return Rejection(
                source,
                payload,
                Reason.AMBIGUOUS_ENERGY,
                f"{interval} and {cumulative} are both given; a reading carries one of them",
            )
        if expected_id is not None and reading.device_id != expected_id:
            return Rejection(
                source,
                payload,
                Reason.ID_MISMATCH,
                f"topic is for {expected_id!r} but the payload is from {reading.device_id!r}",
            )
        ts = reading.timestamp
        if ts > horizon:
            return Rejection(
                source,
                payload,
                Reason.FUTURE_TIMESTAMP,
                f"timestamp {ts.isoformat()} is more than "
                f"{int(self.max_future_skew.total_seconds())} s ahead of the collector's clock",
            )
        if ts < EARLIEST_TIMESTAMP:
            return Rejection(
                source,
                payload,
                Reason.INVALID_TIMESTAMP,
                f"timestamp {ts.isoformat()} is before {EARLIEST_TIMESTAMP.date()}",
            )
        return reading


#: The contract's field names as they appear in a payload, per stream.
_FIELD_TOKENS = {
    name: tuple(f'"{field}"'.encode() for field in stream.model.model_fields)
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
    fields = stream.model.model_fields
    return next((n for n in fields if names.count(n) > 1), None)
