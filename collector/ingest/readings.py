"""Reading models and validation: bytes in, a reading or a reason for rejecting it out.

Pure functions, no I/O. Used by every source (MQTT, HTTP, file import) so a reading is
accepted or rejected the same way wherever it comes from.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from collector.settings import Settings

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, max_length=64)]
Energy = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]  # kWh in one interval
#: A cumulative energy register, kWh (collector/ingest/registers.py).
Register = Annotated[float, Field(ge=0, le=1_000_000_000, allow_inf_nan=False)]
#: Readings before this are certainly a broken clock, not history.
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
_ISO_HINT = "Input should be an ISO 8601 date and time with an offset, e.g. 2026-02-09T10:00:00Z"
#: The fraction of a second in an ISO 8601 time; PostgreSQL keeps microseconds (6 digits).
_FRACTION = re.compile(r"[.,](\d+)")


def _iso8601(value: object) -> datetime:
    """Parse ISO 8601 only: pydantic alone also takes "1770631200" as a Unix time.

    (Parsing here also gives stdlib tzinfo objects, which compare and encode faster than
    pydantic's own.)
    """
    if isinstance(value, datetime):  # built in code, not parsed from input
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("datetime_type", "Input should be an ISO 8601 string")
    if "." in value or "," in value:
        _refuse_sub_microseconds(value)
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        try:  # RFC 3339 allows a lower-case t and z
            return datetime.fromisoformat(value.upper())
        except ValueError:
            raise PydanticCustomError("datetime_parsing", _ISO_HINT) from None


def _refuse_sub_microseconds(value: str) -> None:
    """More than 6 fractional digits would be cut to microseconds, and two readings that
    differ only past them would collide on one key: refuse them (trailing zeros are fine)."""
    match = _FRACTION.search(value)
    if match and len(match[1]) > 6 and match[1][6:].strip("0"):
        raise PydanticCustomError(
            "datetime_precision",
            "Input has {digits} fractional digits; at most 6 are stored (microseconds), so "
            "readings that differ past them would collide",
            {"digits": len(match[1])},
        )


#: An ISO 8601 date and time with an offset.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso8601)]


class Kind(enum.Enum):
    METER = "meter"
    VEHICLE = "vehicle"


class MeterReading(BaseModel):
    """AC energy drawn from the grid during the interval ending at ``timestamp``: given
    (``kwhConsumedAc``), or as the meter's import register (``kwhRegisterAc``), from which
    the writer derives it. Exactly one of the two (``ReadingValidator.check``)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    meterId: DeviceId  # camelCase: the payload field names are the contract
    kwhConsumedAc: Energy | None = None
    kwhRegisterAc: Register | None = None
    voltage: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]
    timestamp: Timestamp

    @property
    def device_id(self) -> str:
        return self.meterId

    @property
    def register(self) -> float | None:
        return self.kwhRegisterAc

    @property
    def energy(self) -> float | None:
        return self.kwhConsumedAc


class VehicleReading(BaseModel):
    """DC energy delivered into the battery (``kwhDeliveredDc``, or the unit's lifetime
    charged-energy register ``kwhRegisterDc``), state of charge and battery temperature."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    vehicleId: DeviceId
    soc: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    kwhDeliveredDc: Energy | None = None
    kwhRegisterDc: Register | None = None
    batteryTemp: Annotated[float, Field(ge=-50, le=100, allow_inf_nan=False)]
    timestamp: Timestamp

    @property
    def device_id(self) -> str:
        return self.vehicleId

    @property
    def register(self) -> float | None:
        return self.kwhRegisterDc

    @property
    def energy(self) -> float | None:
        return self.kwhDeliveredDc


Reading = MeterReading | VehicleReading
MODELS: dict[Kind, type[MeterReading] | type[VehicleReading]] = {
    Kind.METER: MeterReading,
    Kind.VEHICLE: VehicleReading,
}
#: Per kind, the two ways of giving the energy: (interval field, register field).
ENERGY_FIELDS = {
    Kind.METER: ("kwhConsumedAc", "kwhRegisterAc"),
    Kind.VEHICLE: ("kwhDeliveredDc", "kwhRegisterDc"),
}


class Reason(enum.StrEnum):
    """Why a message was rejected; the values are stored and exported as metric labels."""

    OVERSIZED = "oversized"
    UNKNOWN_TOPIC = "unknown_topic"
    UNKNOWN_KIND = "unknown_kind"
    INVALID_JSON = "invalid_json"
    INVALID_SHAPE = "invalid_shape"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    INVALID_ID = "invalid_id"
    ID_MISMATCH = "id_mismatch"
    OUT_OF_RANGE = "out_of_range"
    INVALID_TIMESTAMP = "invalid_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    DUPLICATE_FIELD = "duplicate_field"
    AMBIGUOUS_ENERGY = "ambiguous_energy"
    DATABASE_ERROR = "database_error"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that will not be stored as a reading, kept for the dead-letter table."""

    source: str  # the MQTT topic, or "http:<path>" / "import:<file>"
    payload: bytes
    reason: Reason
    detail: str
    #: Size of the message as it arrived; ``payload`` is cut at the size limit.
    size: int | None = None

    @property
    def payload_size(self) -> int:
        return len(self.payload) if self.size is None else self.size


_ERROR_REASONS = {
    "json_invalid": Reason.INVALID_JSON,
    "json_type": Reason.INVALID_JSON,
    "model_type": Reason.INVALID_SHAPE,
    "model_attributes_type": Reason.INVALID_SHAPE,
    "missing": Reason.MISSING_FIELD,
    "greater_than_equal": Reason.OUT_OF_RANGE,
    "greater_than": Reason.OUT_OF_RANGE,
    "less_than_equal": Reason.OUT_OF_RANGE,
    "less_than": Reason.OUT_OF_RANGE,
    "finite_number": Reason.OUT_OF_RANGE,
    "timezone_aware": Reason.INVALID_TIMESTAMP,
    "datetime_parsing": Reason.INVALID_TIMESTAMP,
    "datetime_from_date_parsing": Reason.INVALID_TIMESTAMP,
    "datetime_object_invalid": Reason.INVALID_TIMESTAMP,
    "datetime_precision": Reason.INVALID_TIMESTAMP,
}
_ID_ERRORS = {"string_pattern_mismatch", "string_too_long", "string_too_short"}


def describe(exc: ValidationError) -> tuple[Reason, str]:
    """Turn a pydantic error into a reason code and a one-line, human-readable detail."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    if kind in _ID_ERRORS:
        reason = Reason.INVALID_ID
    else:
        reason = _ERROR_REASONS.get(kind, Reason.INVALID_TYPE)
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    return reason, "; ".join(parts)


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

    def validate(
        self,
        kind: Kind,
        payload: bytes,
        *,
        source: str,
        expected_id: str | None,
        horizon: datetime,
    ) -> Reading | Rejection:
        """Validate one JSON payload of a known kind; ``expected_id`` comes from the topic."""
        if len(payload) > self.max_payload_bytes:
            return Rejection(
                source,
                payload[: self.max_payload_bytes],
                Reason.OVERSIZED,
                f"payload is {len(payload)} bytes, the limit is {self.max_payload_bytes}",
                size=len(payload),
            )
        try:
            reading = MODELS[kind].model_validate_json(payload)
        except ValidationError as exc:
            reason, detail = describe(exc)
            return Rejection(source, payload, reason, detail)
        twice = duplicate_field(payload, kind)
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
            kind = Kind.METER if isinstance(reading, MeterReading) else Kind.VEHICLE
            interval, cumulative = ENERGY_FIELDS[kind]
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


#: The contract's field names as they appear in a payload, per kind.
_FIELD_TOKENS = {
    kind: tuple(f'"{name}"'.encode() for name in model.model_fields)
    for kind, model in MODELS.items()
}


def duplicate_field(payload: bytes, kind: Kind) -> str | None:
    """A field of the contract that the JSON object ``payload`` holds twice, else None.

    A JSON parser keeps the last of two equal keys, so ``{"meterId":"evil","meterId":"m-1"}``
    would be stored as m-1: ambiguous, and refused. Checked cheaply (the field names are
    counted in the bytes); only a payload that may hold a duplicate, or escapes a key
    (``"met\\u0065rId"``), is parsed again to be sure.
    """
    if b"\\u" not in payload and all(payload.count(t) < 2 for t in _FIELD_TOKENS[kind]):
        return None
    names = [
        name for name, _ in json.loads(payload, object_pairs_hook=list) if isinstance(name, str)
    ]
    fields = MODELS[kind].model_fields
    return next((n for n in fields if names.count(n) > 1), None)


def kind_of(obj: object, forced: Kind | None = None) -> Kind | None:
    """The kind of a parsed reading (by its id field) where no topic says it."""
    if forced is not None:
        return forced
    if isinstance(obj, dict):
        has_meter, has_vehicle = "meterId" in obj, "vehicleId" in obj
        if has_meter != has_vehicle:
            return Kind.METER if has_meter else Kind.VEHICLE
    return None


def route_topic(topic: str, prefix: str) -> tuple[Kind, str] | None:
    """Map ``[prefix/]meters/{id}/reading`` or ``[prefix/]vehicles/{id}/reading`` to (kind, id)."""
    if prefix:
        if not topic.startswith(prefix) or topic[len(prefix) : len(prefix) + 1] != "/":
            return None
        topic = topic[len(prefix) + 1 :]
    parts = topic.split("/")
    if len(parts) != 3 or parts[2] != "reading" or not parts[1]:
        return None
    if parts[0] == "meters":
        return Kind.METER, parts[1]
    if parts[0] == "vehicles":
        return Kind.VEHICLE, parts[1]
    return None
