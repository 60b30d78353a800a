"""Writes a batch in one statement: history, current state, hourly rollups, dead letters.

One statement is one implicit transaction and one round trip. Columns travel as arrays and
are expanded with ``unnest`` (asyncpg encodes them in binary), never a statement per row.

* History: ``ON CONFLICT DO NOTHING`` on (device id, ts), so a redelivered reading is
  absorbed; ``RETURNING`` tells which rows are new.
* Current: only rows that are new in history, newest per device, and only if newer than
  what is stored (``WHERE current.ts < excluded.ts``): a stale or replayed packet never
  moves a device's state backwards.
* Dead letters: once per (topic, reason, payload); the same message again counts up its
  row's ``repeats`` (sql/004).
* Rollups: the new rows, per device and UTC hour, added to the hour's counts, sums, minima
  and maxima. Only rows the history insert really added are counted, so a redelivered
  reading is never counted twice. Upserts go in key order, so concurrent collectors take
  row locks in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from collector.db.connection import Connection
from collector.ingest.readings import MeterReading, Rejection, VehicleReading

# What follows a history insert, per kind: the CTEs that move the current state forward and
# add the new rows to the hourly rollups. They read the insert's RETURNING as ``<kind>_new``.
# Shared by the writer (rows from arrays) and the file import (rows from COPY).
METER_HISTORY = """meter_new AS (
    INSERT INTO meter_readings AS h (meter_id, ts, kwh_consumed_ac, voltage, received_at)
    {rows}
    ON CONFLICT (meter_id, ts) DO NOTHING
    RETURNING h.meter_id, h.ts, h.kwh_consumed_ac, h.voltage, h.received_at
), meter_cur AS (
    INSERT INTO meter_current AS c (meter_id, ts, kwh_consumed_ac, voltage, received_at)
    SELECT DISTINCT ON (meter_id) meter_id, ts, kwh_consumed_ac, voltage, received_at
    FROM meter_new ORDER BY meter_id, ts DESC
    ON CONFLICT (meter_id) DO UPDATE
        SET ts = excluded.ts, kwh_consumed_ac = excluded.kwh_consumed_ac,
            voltage = excluded.voltage, received_at = excluded.received_at, updated_at = now()
        WHERE c.ts < excluded.ts
), meter_roll AS (
    INSERT INTO meter_hourly AS r (meter_id, hour, readings, kwh_sum, kwh_min, kwh_max,
                                   voltage_sum, voltage_min, voltage_max)
    SELECT meter_id, date_trunc('hour', ts, 'UTC'), count(*),
           sum(kwh_consumed_ac), min(kwh_consumed_ac), max(kwh_consumed_ac),
           sum(voltage), min(voltage), max(voltage)
    FROM meter_new GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (meter_id, hour) DO UPDATE
        SET readings = r.readings + excluded.readings,
            kwh_sum = r.kwh_sum + excluded.kwh_sum,
            kwh_min = least(r.kwh_min, excluded.kwh_min),
            kwh_max = greatest(r.kwh_max, excluded.kwh_max),
            voltage_sum = r.voltage_sum + excluded.voltage_sum,
            voltage_min = least(r.voltage_min, excluded.voltage_min),
            voltage_max = greatest(r.voltage_max, excluded.voltage_max)
)"""

VEHICLE_HISTORY = """vehicle_new AS (
    INSERT INTO vehicle_readings AS h
        (vehicle_id, ts, soc, kwh_delivered_dc, battery_temp, received_at)
    {rows}
    ON CONFLICT (vehicle_id, ts) DO NOTHING
    RETURNING h.vehicle_id, h.ts, h.soc, h.kwh_delivered_dc, h.battery_temp, h.received_at
), vehicle_cur AS (
    INSERT INTO vehicle_current AS c
        (vehicle_id, ts, soc, kwh_delivered_dc, battery_temp, received_at)
    SELECT DISTINCT ON (vehicle_id) vehicle_id, ts, soc, kwh_delivered_dc, battery_temp,
           received_at
    FROM vehicle_new ORDER BY vehicle_id, ts DESC
    ON CONFLICT (vehicle_id) DO UPDATE
        SET ts = excluded.ts, soc = excluded.soc, kwh_delivered_dc = excluded.kwh_delivered_dc,
            battery_temp = excluded.battery_temp, received_at = excluded.received_at,
            updated_at = now()
        WHERE c.ts < excluded.ts
), vehicle_roll AS (
    INSERT INTO vehicle_hourly AS r (vehicle_id, hour, readings, soc_sum, soc_min, soc_max,
                                     kwh_sum, kwh_min, kwh_max, temp_sum, temp_min, temp_max)
    SELECT vehicle_id, date_trunc('hour', ts, 'UTC'), count(*),
           sum(soc), min(soc), max(soc),
           sum(kwh_delivered_dc), min(kwh_delivered_dc), max(kwh_delivered_dc),
           sum(battery_temp), min(battery_temp), max(battery_temp)
    FROM vehicle_new GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (vehicle_id, hour) DO UPDATE
        SET readings = r.readings + excluded.readings,
            soc_sum = r.soc_sum + excluded.soc_sum,
            soc_min = least(r.soc_min, excluded.soc_min),
            soc_max = greatest(r.soc_max, excluded.soc_max),
            kwh_sum = r.kwh_sum + excluded.kwh_sum,
            kwh_min = least(r.kwh_min, excluded.kwh_min),
            kwh_max = greatest(r.kwh_max, excluded.kwh_max),
            temp_sum = r.temp_sum + excluded.temp_sum,
            temp_min = least(r.temp_min, excluded.temp_min),
            temp_max = greatest(r.temp_max, excluded.temp_max)
)"""

METER_ARRAYS = """SELECT m, t, k, v, to_timestamp(r)
    FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[])
         AS u (m, t, k, v, r)"""
VEHICLE_ARRAYS = """SELECT i, t, s, k, b, to_timestamp(r)
    FROM unnest($6::text[], $7::timestamptz[], $8::float8[], $9::float8[], $10::float8[],
                $11::float8[]) AS u (i, t, s, k, b, r)"""

WRITE_BATCH_SQL = f"""
WITH {METER_HISTORY.format(rows=METER_ARRAYS)},
{VEHICLE_HISTORY.format(rows=VEHICLE_ARRAYS)},
rejected AS (
    INSERT INTO rejected_messages AS x (topic, reason, detail, payload, payload_size,
                                        payload_sha256, received_at, last_received_at, repeats)
    SELECT o, n, min(d), (array_agg(p))[1], max(z), sha256(p), to_timestamp(min(r)),
           to_timestamp(max(r)), count(*)
    FROM unnest($12::text[], $13::text[], $14::text[], $15::bytea[], $16::int4[],
                $17::float8[]) WITH ORDINALITY AS u (o, n, d, p, z, r, i)
    GROUP BY o, n, sha256(p) ORDER BY min(i)  -- ids in the order the messages arrived
    ON CONFLICT (topic, reason, payload_sha256) DO UPDATE
        SET repeats = x.repeats + excluded.repeats,
            last_received_at = greatest(x.last_received_at, excluded.last_received_at)
)
SELECT (SELECT count(*) FROM meter_new) AS meters, (SELECT count(*) FROM vehicle_new) AS vehicles
"""


@dataclass(slots=True)
class Batch:
    """Rows to write together; each row carries the time its message was received."""

    meters: list[MeterReading] = field(default_factory=list)
    meters_received: list[datetime] = field(default_factory=list)
    vehicles: list[VehicleReading] = field(default_factory=list)
    vehicles_received: list[datetime] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    rejected_received: list[datetime] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.meters) + len(self.vehicles) + len(self.rejected)

    @property
    def readings(self) -> int:
        return len(self.meters) + len(self.vehicles)

    def halves(self) -> tuple[Batch, Batch]:
        """Split in two, to isolate a row the database refuses (rare: no fast path needed)."""
        rows = [
            (name, row, received)
            for name in ("meters", "vehicles", "rejected")
            for row, received in zip(
                getattr(self, name), getattr(self, f"{name}_received"), strict=True
            )
        ]
        mid = len(rows) // 2
        return Batch.of(rows[:mid]), Batch.of(rows[mid:])

    @classmethod
    def of(cls, rows: list[tuple[str, object, datetime]]) -> Batch:
        batch = cls()
        for name, row, received in rows:
            getattr(batch, name).append(row)
            getattr(batch, f"{name}_received").append(received)
        return batch


@dataclass(frozen=True, slots=True)
class WriteResult:
    meters_new: int
    vehicles_new: int
    rejected: int
    #: Readings the database would not take, stored as dead letters instead (``rejected``
    #: counts their dead letters too).
    meters_dead: int = 0
    vehicles_dead: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.meters_new + other.meters_new,
            self.vehicles_new + other.vehicles_new,
            self.rejected + other.rejected,
            self.meters_dead + other.meters_dead,
            self.vehicles_dead + other.vehicles_dead,
        )


def epochs(times: list[datetime]) -> list[float]:
    """Receive times as epoch seconds: a fraction of the cost of encoding timestamps, and
    exact enough for when a message was received. Each chunk's rows share one datetime
    object, so each is converted once."""
    out: list[float] = []
    last: datetime | None = None
    value = 0.0
    for t in times:
        if t is not last:
            last, value = t, t.timestamp()
        out.append(value)
    return out


async def write_batch(conn: Connection, batch: Batch, statement_timeout_s: float) -> WriteResult:
    """Write ``batch`` in one statement; returns how many readings were new."""
    meters, vehicles, rejected = batch.meters, batch.vehicles, batch.rejected
    row = await conn.fetchrow(
        WRITE_BATCH_SQL,
        [r.meterId for r in meters],
        [r.timestamp for r in meters],
        [r.kwhConsumedAc for r in meters],
        [r.voltage for r in meters],
        epochs(batch.meters_received),
        [r.vehicleId for r in vehicles],
        [r.timestamp for r in vehicles],
        [r.soc for r in vehicles],
        [r.kwhDeliveredDc for r in vehicles],
        [r.batteryTemp for r in vehicles],
        epochs(batch.vehicles_received),
        [r.source for r in rejected],
        [r.reason.value for r in rejected],
        [r.detail for r in rejected],
        [r.payload for r in rejected],
        [r.payload_size for r in rejected],
        epochs(batch.rejected_received),
        timeout=statement_timeout_s,
    )
    assert row is not None
    return WriteResult(row["meters"], row["vehicles"], len(rejected))
