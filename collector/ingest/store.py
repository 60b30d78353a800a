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
from collector.ingest.registers import COUNTERS


@dataclass(frozen=True, slots=True)
class HistoryTable:
    """One kind's history, current state and rollups, as the write statement names them."""

    kind: str
    readings: str
    current: str
    hourly: str
    device: str
    kwh: str
    register: str
    #: The measured columns, in the table's order (the energy among them).
    values: tuple[str, ...]
    #: (rollup prefix, column) of each measured column.
    metrics: tuple[tuple[str, str], ...]


METER = HistoryTable(
    kind="meter",
    readings="meter_readings",
    current="meter_current",
    hourly="meter_hourly",
    device="meter_id",
    kwh="kwh_consumed_ac",
    register="kwh_register_ac",
    values=("kwh_consumed_ac", "voltage"),
    metrics=(("kwh", "kwh_consumed_ac"), ("voltage", "voltage")),
)
VEHICLE = HistoryTable(
    kind="vehicle",
    readings="vehicle_readings",
    current="vehicle_current",
    hourly="vehicle_hourly",
    device="vehicle_id",
    kwh="kwh_delivered_dc",
    register="kwh_register_dc",
    values=("soc", "kwh_delivered_dc", "battery_temp"),
    metrics=(("soc", "soc"), ("kwh", "kwh_delivered_dc"), ("temp", "battery_temp")),
)
REGISTER_COLUMNS = ("register_quality", "register_level", "register_level_ts")


def rollup_aggregates(t: HistoryTable) -> list[str]:
    """The hourly rollup's columns, as aggregates over rows of ``t`` (``readings`` first)."""
    out = ["count(*)"]
    for _, column in t.metrics:
        out += [f"sum({column})", f"min({column})", f"max({column})"]
    out.append("count(register_quality)")
    for qualities in COUNTERS.values():
        names = ", ".join(f"'{q.value}'" for q in qualities)
        out.append(f"count(*) FILTER (WHERE register_quality IN ({names}))")
    return out


def rollup_columns(t: HistoryTable) -> list[str]:
    columns = ["readings"]
    for prefix, _ in t.metrics:
        columns += [f"{prefix}_sum", f"{prefix}_min", f"{prefix}_max"]
    return [*columns, "register_readings", *COUNTERS]


#: The current row's reading before its latest, and the chain after that one: what a
#: pending latest reading is booked again from (register_store).
PREVIOUS_COLUMNS = ("register_prev_ts", "register_prev_level", "register_prev_level_ts")


def history_sql(
    t: HistoryTable,
    rows: str,
    *,
    mark_dirty: bool,
    handled: str = "",
    staying: str = "",
) -> str:
    """The CTEs that follow a history insert of ``rows`` for one kind: the insert itself
    (``<kind>_new``: the rows really added), the guarded current upsert (``<kind>_cur``
    returns each device it wrote with the row's new ``version``), the rollups, and, with
    ``mark_dirty``, the register devices whose bookings these rows change (``<kind>_dirty``),
    leaving out the devices the ``handled`` subquery yields (booked with them).

    ``rows`` yields the device id, ts, the measured values, received_at, the raw register,
    and the register quality, level and level_ts, in that order. ``staying``: a subquery
    of devices whose current row the statement writes elsewhere (one statement may not
    touch a row twice, not even to find it is newer).
    """
    d = t.device
    inserted = [d, "ts", *t.values, "received_at", t.register, *REGISTER_COLUMNS]
    current = [d, "ts", *t.values, "received_at", t.register, *REGISTER_COLUMNS]
    skip_staying = f"WHERE n.{d} NOT IN ({staying})" if staying else ""
    updates = ", ".join(f"{c} = excluded.{c}" for c in current[1:])
    # The reading before the newest: the one before it in the batch, or the row it replaces
    # as current, whichever is later (the locked row: exact under concurrent writers too).
    later = "excluded.register_prev_ts > c.ts"
    updates += (
        f", register_prev_ts = CASE WHEN {later} THEN excluded.register_prev_ts ELSE c.ts END"
        f", register_prev_level = CASE WHEN {later} THEN excluded.register_prev_level"
        " ELSE c.register_level END"
        f", register_prev_level_ts = CASE WHEN {later} THEN excluded.register_prev_level_ts"
        " ELSE c.register_level_ts END"
    )
    merges = []
    for prefix, _ in t.metrics:
        merges += [
            f"{prefix}_sum = r.{prefix}_sum + excluded.{prefix}_sum",
            f"{prefix}_min = least(r.{prefix}_min, excluded.{prefix}_min)",
            f"{prefix}_max = greatest(r.{prefix}_max, excluded.{prefix}_max)",
        ]
    counters = ["readings", "register_readings", *COUNTERS]
    merges = [f"{c} = r.{c} + excluded.{c}" for c in counters[:1]] + merges
    merges += [f"{c} = r.{c} + excluded.{c}" for c in counters[1:]]
    sql = f"""{t.kind}_new AS (
    INSERT INTO {t.readings} AS h ({", ".join(inserted)})
    {rows}
    ON CONFLICT ({d}, ts) DO NOTHING
    RETURNING {", ".join(f"h.{c}" for c in inserted)}
), {t.kind}_cur AS (
    INSERT INTO {t.current} AS c ({", ".join(current)}, {", ".join(PREVIOUS_COLUMNS)}, version)
    SELECT DISTINCT ON (n.{d}) {", ".join(f"n.{c}" for c in current)},
           lag(n.ts) OVER w, lag(n.register_level) OVER w, lag(n.register_level_ts) OVER w, 1
    FROM {t.kind}_new n {skip_staying}
    WINDOW w AS (PARTITION BY n.{d} ORDER BY n.ts)
    ORDER BY n.{d}, n.ts DESC
    ON CONFLICT ({d}) DO UPDATE
        SET {updates}, version = c.version + 1, updated_at = now()
        WHERE c.ts < excluded.ts
    RETURNING c.{d} AS device, c.version
), {t.kind}_roll AS (
    INSERT INTO {t.hourly} AS r ({d}, hour, {", ".join(rollup_columns(t))})
    SELECT {d}, date_trunc('hour', ts, 'UTC'), {", ".join(rollup_aggregates(t))}
    FROM {t.kind}_new GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT ({d}, hour) DO UPDATE
        SET {", ".join(merges)}
)"""
    if mark_dirty:
        # A register device's readings are booked from their neighbours: an interval
        # reading among them changes those bookings (registers start over after it, a
        # pending one is decided). Only interval rows: every device with a register reading
        # here is handled (a hashed NOT IN: the handled array may hold thousands).
        skip = f" AND {d} NOT IN ({handled})" if handled else ""
        sql += f""", {t.kind}_dirty AS (
    UPDATE register_devices s
    SET dirty_from = least(coalesce(s.dirty_from, n.ts), n.ts)
    FROM (SELECT {d}, min(ts) AS ts FROM {t.kind}_new
          WHERE {t.register} IS NULL{skip} GROUP BY 1) n
    WHERE s.kind = '{t.kind}' AND s.device_id = n.{d}
    RETURNING 1
)"""
    return sql


#: What an interval row has for the register columns.
NO_REGISTER = "NULL::float8, NULL::text, NULL::float8, NULL::timestamptz"


def unnest_arrays(
    names: list[str],
    types: list[str],
    first: int,
    *,
    ordinality: bool = False,
    alias: str = "u",
) -> tuple[str, int]:
    """``unnest`` of array parameters ``$first``... as ``alias (names)``; the next free
    number."""
    params = ", ".join(f"${first + i}::{kind}[]" for i, kind in enumerate(types))
    extra = " WITH ORDINALITY" if ordinality else ""
    columns = ", ".join([*names, "ord"] if ordinality else names)
    return f"unnest({params}){extra} AS {alias} ({columns})", first + len(types)


#: The array types of one kind's interval rows: id, ts, its measured values, received_at.
_INTERVAL_TYPES = {
    "meter": ["text", "timestamptz", "float8", "float8", "float8"],
    "vehicle": ["text", "timestamptz", "float8", "float8", "float8", "float8"],
}
#: A batch with registers adds the raw register per row, and the rows whose booking is not
#: a plain increment: (ordinal, quality, level, level_ts as epoch seconds). An increment is
#: ``ok`` with the chain at the reading itself; sending only the others saves three arrays
#: of a value per row (asyncpg encodes ~0.5 µs per element here).
_EXCEPTION_TYPES = ["int8", "text", "float8", "float8"]


def array_rows(t: HistoryTable, first: int, *, registers: bool) -> tuple[str, int]:
    """Rows of ``t`` from array parameters starting at ``$first``."""
    values = [f"v{i}" for i in range(len(t.values))]
    names = ["i", "t", *values, "r"]
    types = list(_INTERVAL_TYPES[t.kind])
    base = f"i, t, {', '.join(values)}, to_timestamp(r)"
    if not registers:
        source, nxt = unnest_arrays(names, types, first)
        return f"SELECT {base}, {NO_REGISTER} FROM {source}", nxt
    source, nxt = unnest_arrays([*names, "g"], [*types, "float8"], first, ordinality=True)
    exceptions, nxt = unnest_arrays(["o", "q", "l", "lt"], _EXCEPTION_TYPES, nxt, alias="x")
    return (
        f"SELECT {base}, g, "
        "CASE WHEN x.o IS NOT NULL THEN x.q WHEN g IS NOT NULL THEN 'ok' END, "
        "CASE WHEN x.o IS NOT NULL THEN x.l ELSE g END, "
        "CASE WHEN x.o IS NOT NULL THEN to_timestamp(x.lt) WHEN g IS NOT NULL THEN t END "
        f"FROM {source} LEFT JOIN {exceptions} ON x.o = u.ord",
        nxt,
    )


def rejected_sql(first: int) -> tuple[str, int]:
    """The dead-letter CTE (``rejected``) from array parameters starting at ``$first``."""
    rows, nxt = unnest_arrays(
        ["o", "n", "d", "p", "z", "r"],
        ["text", "text", "text", "bytea", "int4", "float8"],
        first,
        ordinality=True,
    )
    return (
        f"""rejected AS (
    INSERT INTO rejected_messages AS x (topic, reason, detail, payload, payload_size,
                                        payload_sha256, received_at, last_received_at, repeats)
    SELECT o, n, min(d), (array_agg(p))[1], max(z), sha256(p), to_timestamp(min(r)),
           to_timestamp(max(r)), count(*)
    FROM {rows}
    GROUP BY o, n, sha256(p) ORDER BY min(ord)  -- ids in the order the messages arrived
    ON CONFLICT (topic, reason, payload_sha256) DO UPDATE
        SET repeats = x.repeats + excluded.repeats,
            last_received_at = greatest(x.last_received_at, excluded.last_received_at)
)""",
        nxt,
    )


#: The result columns every batch statement ends with.
COUNTS = (
    "(SELECT count(*) FROM meter_new) AS meters, (SELECT count(*) FROM vehicle_new) AS vehicles,"
    " (SELECT count(*) FROM meter_dirty) + (SELECT count(*) FROM vehicle_dirty) AS dirty"
)


def _write_sql() -> str:
    meters, nxt = array_rows(METER, 1, registers=False)
    vehicles, nxt = array_rows(VEHICLE, nxt, registers=False)
    rejected, _ = rejected_sql(nxt)
    return f"""
WITH {history_sql(METER, meters, mark_dirty=True)},
{history_sql(VEHICLE, vehicles, mark_dirty=True)},
{rejected}
SELECT {COUNTS}
"""


#: The batch statement: interval readings only (and dead letters). A batch with register
#: readings is written by collector/ingest/register_store.py, from the same parts.
WRITE_BATCH_SQL = _write_sql()


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

    @property
    def has_registers(self) -> bool:
        """Whether a reading carries a register (it must be booked: register_store)."""
        return any(r.register is not None for r in self.meters) or any(
            r.register is not None for r in self.vehicles
        )

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
    #: Register devices whose bookings these rows change (booked again after the commit).
    dirty: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.meters_new + other.meters_new,
            self.vehicles_new + other.vehicles_new,
            self.rejected + other.rejected,
            self.meters_dead + other.meters_dead,
            self.vehicles_dead + other.vehicles_dead,
            self.dirty + other.dirty,
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
    """Write ``batch`` of interval readings (and dead letters) in one statement; returns
    how many readings were new. Register readings go through ``register_store``."""
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
    return WriteResult(row["meters"], row["vehicles"], len(rejected), dirty=row["dirty"])
