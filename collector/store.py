"""Writes a batch in one statement: history insert, guarded current upsert, dead letters.

One statement is one implicit transaction and one round trip. Columns travel as arrays and
are expanded with ``unnest`` (asyncpg encodes them in binary), never a statement per row.

* History: ``ON CONFLICT DO NOTHING`` on (device id, ts), so a redelivered reading is
  absorbed; ``RETURNING`` tells which rows are new.
* Current: only rows that are new in history, newest per device, and only if newer than
  what is stored (``WHERE current.ts < excluded.ts``): a stale or replayed packet never
  moves a device's state backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from collector.readings import MeterReading, Rejection, VehicleReading

WRITE_BATCH_SQL = """
WITH meter_new AS (
    INSERT INTO meter_readings AS h (meter_id, ts, kwh_consumed_ac, voltage, received_at)
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[],
                         $5::timestamptz[])
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
), vehicle_new AS (
    INSERT INTO vehicle_readings AS h
        (vehicle_id, ts, soc, kwh_delivered_dc, battery_temp, received_at)
    SELECT * FROM unnest($6::text[], $7::timestamptz[], $8::float8[], $9::float8[],
                         $10::float8[], $11::timestamptz[])
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
), rejected AS (
    INSERT INTO rejected_messages (topic, reason, detail, payload, payload_size, received_at)
    SELECT * FROM unnest($12::text[], $13::text[], $14::text[], $15::bytea[], $16::int4[],
                         $17::timestamptz[])
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


async def write_batch(
    conn: asyncpg.Connection, batch: Batch, statement_timeout_s: float
) -> WriteResult:
    """Write ``batch`` in one statement; returns how many readings were new."""
    meters, vehicles, rejected = batch.meters, batch.vehicles, batch.rejected
    row = await conn.fetchrow(
        WRITE_BATCH_SQL,
        [r.meterId for r in meters],
        [r.timestamp for r in meters],
        [r.kwhConsumedAc for r in meters],
        [r.voltage for r in meters],
        batch.meters_received,
        [r.vehicleId for r in vehicles],
        [r.timestamp for r in vehicles],
        [r.soc for r in vehicles],
        [r.kwhDeliveredDc for r in vehicles],
        [r.batteryTemp for r in vehicles],
        batch.vehicles_received,
        [r.source for r in rejected],
        [r.reason.value for r in rejected],
        [r.detail for r in rejected],
        [r.payload for r in rejected],
        [r.payload_size for r in rejected],
        batch.rejected_received,
        timeout=statement_timeout_s,
    )
    assert row is not None
    return WriteResult(row["meters"], row["vehicles"], len(rejected))
