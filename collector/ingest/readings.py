"""The payload contract, the readings it becomes, and the reasons a message is rejected.

Pure, no I/O. Each stream has a *payload* (``MeterPayload``, ``VehiclePayload``: the JSON a
device sends, as pydantic validates it) and a *reading* (``MeterReading``, ``VehicleReading``:
what the pipeline carries to the database, a plain slotted object, cheap to make and to
read). The stream catalogue (``streams``) says which belongs to which tables, and
``validation`` turns bytes into a reading or a rejection, the same way for every source.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, NotRequired

from pydantic import AwareDatetime, BeforeValidator, ConfigDict, Field, ValidationError, with_config
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, max_length=64)]
Energy = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]  # kWh in one interval
#: A cumulative energy register, kWh (collector/ingest/booking/registers.py).
Register = Annotated[float, Field(ge=0, le=1_000_000_000, allow_inf_nan=False)]
Voltage = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]
Soc = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
BatteryTemp = Annotated[float, Field(ge=-50, le=100, allow_inf_nan=False)]
#: Readings before this are certainly a broken clock, not history.
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
ISO_HINT = "Input should be an ISO 8601 date and time with an offset, e.g. 2026-02-09T10:00:00Z"
#: The fraction of a second in an ISO 8601 time; PostgreSQL keeps microseconds (6 digits).
_FRACTION = re.compile(r"[.,](\d+)")
_fromisoformat = datetime.fromisoformat


class TimestampError(ValueError):
    """Not an ISO 8601 date and time with an offset; the message says why."""


def parse_iso8601(value: str) -> datetime:
    """ISO 8601 only, with an offset (stdlib tzinfo objects: they compare and encode
    faster than pydantic's own), at most 6 significant fractional digits.

    pydantic alone would also take "1770631200" as a Unix time, and cut a seventh digit:
    two readings that differ only past the microsecond would collide on one key.
    """
    dot = value.find(".")
    if dot < 0:
        dot = value.find(",")
    if dot >= 0 and value[dot + 7 : dot + 8].isdigit():  # a seventh digit: look closer
        match = _FRACTION.search(value)
        if match and len(match[1]) > 6 and match[1][6:].strip("0"):
            raise TimestampError(
                f"Input has {len(match[1])} fractional digits; at most 6 are stored "
                "(microseconds), so readings that differ past them would collide"
            )
    try:
        parsed = _fromisoformat(value)
    except ValueError:
        try:  # RFC 3339 allows a lower-case t and z
            parsed = _fromisoformat(value.upper())
        except ValueError:
            raise TimestampError(ISO_HINT) from None
    if parsed.tzinfo is None:
        raise TimestampError("Input should have timezone info")
    return parsed


def _iso8601(value: object) -> datetime:
    """The pydantic form of :func:`parse_iso8601`, for request bodies and parameters."""
    if isinstance(value, datetime):  # built in code, not parsed from input
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("datetime_type", "Input should be an ISO 8601 string")
    try:
        return parse_iso8601(value)
    except TimestampError as exc:
        raise PydanticCustomError("datetime_parsing", str(exc)) from None


#: An ISO 8601 date and time with an offset (request bodies and parameters of the API).
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso8601)]


# --- the payloads: what devices send ------------------------------------------------------

#: A payload's timestamp: a string, checked as ISO 8601 with an offset after the schema.
PayloadTimestamp = Annotated[
    str,
    Field(
        description="ISO 8601 with an offset, e.g. 2026-02-09T10:00:00Z (at most 6 "
        "fractional digits)",
        json_schema_extra={"format": "date-time"},
    ),
]
#
# Validated by pydantic in Rust straight from the bytes (``TypeAdapter.validate_json``: a
# TypedDict costs a third of a model); unknown fields are ignored. The timestamp is
# checked as ISO 8601 afterwards (``parse_iso8601``). Every string field of a payload is
# named in ``STRING_FIELDS`` (the validator counts quotes to rule out a key given twice).


#: The string-valued fields of every payload (the rest are numbers).
STRING_FIELDS = 2  # the device id and the timestamp


@with_config(ConfigDict(strict=True, extra="ignore", title="MeterReading"))
class MeterPayload(TypedDict):
    """AC energy drawn from the grid during the interval ending at ``timestamp``: given
    (``kwhConsumedAc``), or as the meter's import register (``kwhRegisterAc``), from which
    the writer derives it. Exactly one of the two."""

    meterId: DeviceId  # camelCase: the payload field names are the contract
    kwhConsumedAc: NotRequired[Energy]
    kwhRegisterAc: NotRequired[Register]
    voltage: NotRequired[Voltage]  # most real meters send energy alone
    timestamp: PayloadTimestamp


@with_config(ConfigDict(strict=True, extra="ignore", title="VehicleReading"))
class VehiclePayload(TypedDict):
    """DC energy delivered into the battery (``kwhDeliveredDc``, or the unit's lifetime
    charged-energy register ``kwhRegisterDc``), state of charge and battery temperature."""

    vehicleId: DeviceId
    soc: NotRequired[Soc]
    kwhDeliveredDc: NotRequired[Energy]
    kwhRegisterDc: NotRequired[Register]
    batteryTemp: NotRequired[BatteryTemp]
    timestamp: PayloadTimestamp


# --- the readings: what the pipeline carries ----------------------------------------------


_new = object.__new__


class _Reading:
    """A validated reading: plain attributes (made per message, read per column)."""

    __slots__ = ()
    #: The payload fields, in the contract's order.
    FIELDS: ClassVar[tuple[str, ...]]

    def values(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.FIELDS}

    def to_json(self) -> bytes:
        """The reading as its payload (a dead letter keeps what the database refused)."""
        out = {k: v for k, v in self.values().items() if v is not None}
        out["timestamp"] = self.timestamp.isoformat()  # type: ignore[attr-defined]
        return json.dumps(out).encode()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Reading)
            and type(other) is type(self)
            and (self.values() == other.values())
        )

    def __hash__(self) -> int:
        return hash(tuple(self.values().values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.values().items() if v is not None)
        return f"{type(self).__name__}({fields})"


class MeterReading(_Reading):
    """A meter's reading: the interval's AC energy or the register, and the voltage."""

    __slots__ = ("kwhConsumedAc", "kwhRegisterAc", "meterId", "timestamp", "voltage")
    FIELDS = ("meterId", "kwhConsumedAc", "kwhRegisterAc", "voltage", "timestamp")

    def __init__(
        self,
        *,
        meterId: str,
        timestamp: datetime,
        voltage: float | None = None,
        kwhConsumedAc: float | None = None,
        kwhRegisterAc: float | None = None,
    ) -> None:
        self.meterId = meterId
        self.kwhConsumedAc = kwhConsumedAc
        self.kwhRegisterAc = kwhRegisterAc
        self.voltage = voltage
        self.timestamp = timestamp

    @classmethod
    def of(cls, values: dict[str, Any], timestamp: datetime) -> MeterReading:
        """From a validated payload: no checks, nothing called (once per message)."""
        r = _new(cls)
        r.meterId = values["meterId"]
        r.kwhConsumedAc = values.get("kwhConsumedAc")
        r.kwhRegisterAc = values.get("kwhRegisterAc")
        r.voltage = values.get("voltage")
        r.timestamp = timestamp
        return r

    @property
    def device_id(self) -> str:
        return self.meterId

    @property
    def register(self) -> float | None:
        return self.kwhRegisterAc

    @property
    def energy(self) -> float | None:
        return self.kwhConsumedAc


class VehicleReading(_Reading):
    """A vehicle's reading: the DC energy or the register, SoC, battery temperature."""

    __slots__ = ("batteryTemp", "kwhDeliveredDc", "kwhRegisterDc", "soc", "timestamp", "vehicleId")
    FIELDS = ("vehicleId", "soc", "kwhDeliveredDc", "kwhRegisterDc", "batteryTemp", "timestamp")

    def __init__(
        self,
        *,
        vehicleId: str,
        timestamp: datetime,
        soc: float | None = None,
        kwhDeliveredDc: float | None = None,
        kwhRegisterDc: float | None = None,
        batteryTemp: float | None = None,
    ) -> None:
        self.vehicleId = vehicleId
        self.soc = soc
        self.kwhDeliveredDc = kwhDeliveredDc
        self.kwhRegisterDc = kwhRegisterDc
        self.batteryTemp = batteryTemp
        self.timestamp = timestamp

    @classmethod
    def of(cls, values: dict[str, Any], timestamp: datetime) -> VehicleReading:
        """From a validated payload: no checks, nothing called (once per message)."""
        r = _new(cls)
        r.vehicleId = values["vehicleId"]
        r.soc = values.get("soc")
        r.kwhDeliveredDc = values.get("kwhDeliveredDc")
        r.kwhRegisterDc = values.get("kwhRegisterDc")
        r.batteryTemp = values.get("batteryTemp")
        r.timestamp = timestamp
        return r

    @property
    def device_id(self) -> str:
        return self.vehicleId

    @property
    def register(self) -> float | None:
        return self.kwhRegisterDc

    @property
    def energy(self) -> float | None:
        return self.kwhDeliveredDc


#: A reading of any stream (collector/ingest/streams.py says which).
Reading = MeterReading | VehicleReading


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
    "dict_type": Reason.INVALID_SHAPE,
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
