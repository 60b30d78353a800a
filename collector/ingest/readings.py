"""The reading models (the payload contract) and the reasons a message is rejected.

Pure, no I/O. The stream catalogue (``streams``) says which model belongs to which tables,
and ``validation`` turns bytes into a reading or a rejection, the same way for every source
(MQTT, HTTP, file import).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, max_length=64)]
Energy = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]  # kWh in one interval
#: A cumulative energy register, kWh (collector/ingest/booking/registers.py).
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
