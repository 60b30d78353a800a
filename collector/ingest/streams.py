"""The stream catalogue: what each kind of device reports and where it is stored.

A *stream* is one kind of reading (a meter's AC energy, a vehicle's DC energy and battery)
with its payload model, its fields and its tables. Everything that writes or reads readings
derives its SQL and its arrays from here: the batch statement and the register booking
(``store``, ``booking``), the partition manager, the alert conditions, the importer and the
analytics' read model. Adding a stream is a catalogue entry and a migration; a test checks
that every table and column named here exists after the migrations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter

from collector.ingest.readings import (
    MeterPayload,
    MeterReading,
    Reading,
    VehiclePayload,
    VehicleReading,
)

#: A stream's name: in paths (``/v1/registers/{kind}/...``), alert rules, dead letters.
StreamName = Literal["meter", "vehicle"]


@dataclass(frozen=True, slots=True)
class Measure:
    """One measured value: its payload field, its column, and its name in the rollups
    (``{metric}_sum``, ``_min``, ``_max`` in the hourly table). An ``optional`` one may be
    absent from a reading (most real devices send energy alone): its column is NULL there,
    and the rollups count the readings that had it (``{metric}_n``) for its average."""

    field: str
    column: str
    metric: str
    optional: bool = False

    @property
    def count(self) -> str:
        """The rollup column counting the readings with this value (optional ones)."""
        return f"{self.metric}_n"


@dataclass(frozen=True, slots=True)
class Stream:
    """One kind of reading, from its payload to its tables."""

    name: StreamName
    #: What the pipeline carries, and the JSON contract it is validated from.
    model: type[Reading]
    payload: TypeAdapter[Any]
    #: The payload field naming the device (``meterId``), and its column (``meter_id``).
    id_field: str
    device: str
    #: The first level of its MQTT topic (``meters/{id}/reading``).
    topic: str
    #: History (partitioned by day), latest state, hourly rollups.
    readings: str
    current: str
    hourly: str
    #: The interval's energy; a register reading books its energy into the same column.
    energy: Measure
    #: The cumulative register's payload field and column.
    register_field: str
    register: str
    #: Every measured value, in the tables' column order (the energy among them).
    measures: tuple[Measure, ...]
    #: Rollup metric -> raw column (``kwh`` -> ``kwh_consumed_ac``).
    metrics: dict[str, str] = field(init=False)

    #: The payload's fields: the id, the measures, the register, the timestamp.
    payload_fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", {m.metric: m.column for m in self.measures})
        fields = (self.id_field, *self.fields, self.register_field, "timestamp")
        object.__setattr__(self, "payload_fields", fields)

    @property
    def values(self) -> tuple[str, ...]:
        """The measured columns, in the tables' order."""
        return tuple(m.column for m in self.measures)

    @property
    def fields(self) -> tuple[str, ...]:
        """The measured payload fields, in the tables' order."""
        return tuple(m.field for m in self.measures)

    def measure(self, payload_field: str) -> Measure | None:
        """The measure a payload field names, if any."""
        return next((m for m in self.measures if m.field == payload_field), None)


_METER_ENERGY = Measure("kwhConsumedAc", "kwh_consumed_ac", "kwh")
_VEHICLE_ENERGY = Measure("kwhDeliveredDc", "kwh_delivered_dc", "kwh")

METER = Stream(
    name="meter",
    model=MeterReading,
    payload=TypeAdapter(MeterPayload),
    id_field="meterId",
    device="meter_id",
    topic="meters",
    readings="meter_readings",
    current="meter_current",
    hourly="meter_hourly",
    energy=_METER_ENERGY,
    register_field="kwhRegisterAc",
    register="kwh_register_ac",
    measures=(_METER_ENERGY, Measure("voltage", "voltage", "voltage", optional=True)),
)
VEHICLE = Stream(
    name="vehicle",
    model=VehicleReading,
    payload=TypeAdapter(VehiclePayload),
    id_field="vehicleId",
    device="vehicle_id",
    topic="vehicles",
    readings="vehicle_readings",
    current="vehicle_current",
    hourly="vehicle_hourly",
    energy=_VEHICLE_ENERGY,
    register_field="kwhRegisterDc",
    register="kwh_register_dc",
    measures=(
        Measure("soc", "soc", "soc", optional=True),
        _VEHICLE_ENERGY,
        Measure("batteryTemp", "battery_temp", "temp", optional=True),
    ),
)

#: Every stream, by name, in the order batches write them.
STREAMS: dict[str, Stream] = {s.name: s for s in (METER, VEHICLE)}
#: The stream of a reading model.
BY_MODEL: dict[type[Reading], Stream] = {s.model: s for s in STREAMS.values()}


def stream_of(reading: Reading) -> Stream:
    """The stream a reading belongs to."""
    return BY_MODEL[type(reading)]


def of_object(obj: object) -> Stream | None:
    """The stream of a parsed payload, told by its id field, where nothing else says it."""
    if not isinstance(obj, dict):
        return None
    found = [s for s in STREAMS.values() if s.id_field in obj]
    return found[0] if len(found) == 1 else None
