"""The batch statement: history, current state, hourly rollups and dead letters at once.

Its SQL is generated from the stream catalogue (``streams``), one set of CTEs per stream.
A batch of interval readings is written by :func:`write_batch`; one with register readings
by the booker (``booking``), which adds the register columns and its compare-and-set to the
same parts. One statement is one implicit transaction and one round trip. Columns travel
as arrays and are expanded with ``unnest`` (asyncpg encodes them in binary), never a
statement per row.

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

from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

from collector.db.connection import Connection
from collector.ingest.batch import Batch, WriteResult
from collector.ingest.booking.registers import COUNTERS, counted
from collector.ingest.streams import STREAMS, Stream

REGISTER_COLUMNS = ("register_quality", "register_level", "register_level_ts")


def rollup_aggregates(t: Stream) -> list[str]:
    """The hourly rollup's columns, as aggregates over rows of ``t`` (``readings`` first)."""
    out = ["count(*)"]
    for m in t.measures:
        out += [f"sum({m.column})", f"min({m.column})", f"max({m.column})"]
        if m.optional:
            out.append(f"count({m.column})")
    out.append("count(register_quality)")
    out += [f"count(*) FILTER (WHERE {counted(counter)})" for counter in COUNTERS]
    return out


def rollup_columns(t: Stream) -> list[str]:
    columns = ["readings"]
    for m in t.measures:
        columns += [f"{m.metric}_sum", f"{m.metric}_min", f"{m.metric}_max"]
        if m.optional:
            columns.append(m.count)
    return [*columns, "register_readings", *COUNTERS]


#: The current row's reading before its latest, and the chain after that one: what a
#: pending latest reading is booked again from (booking).
PREVIOUS_COLUMNS = ("register_prev_ts", "register_prev_level", "register_prev_level_ts")


def history_sql(
    t: Stream,
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
    for m in t.measures:
        prefix = m.metric
        # least() and greatest() pass over NULL; a sum of an optional value with none in
        # one side is the other side's (NULL only while no reading had it)
        add = (
            f"{prefix}_sum = CASE WHEN excluded.{prefix}_sum IS NULL THEN r.{prefix}_sum"
            f" ELSE coalesce(r.{prefix}_sum, 0) + excluded.{prefix}_sum END"
            if m.optional
            else f"{prefix}_sum = r.{prefix}_sum + excluded.{prefix}_sum"
        )
        merges += [
            add,
            f"{prefix}_min = least(r.{prefix}_min, excluded.{prefix}_min)",
            f"{prefix}_max = greatest(r.{prefix}_max, excluded.{prefix}_max)",
        ]
        if m.optional:
            merges.append(f"{m.count} = r.{m.count} + excluded.{m.count}")
    counters = ["readings", "register_readings", *COUNTERS]
    merges = [f"{c} = r.{c} + excluded.{c}" for c in counters[:1]] + merges
    merges += [f"{c} = r.{c} + excluded.{c}" for c in counters[1:]]
    sql = f"""{t.name}_new AS (
    INSERT INTO {t.readings} AS h ({", ".join(inserted)})
    {rows}
    ON CONFLICT ({d}, ts) DO NOTHING
    RETURNING {", ".join(f"h.{c}" for c in inserted)}
), {t.name}_cur AS (
    INSERT INTO {t.current} AS c
        ({", ".join(current)}, {", ".join(PREVIOUS_COLUMNS)}, version, updated_at)
    SELECT DISTINCT ON (n.{d}) {", ".join(f"n.{c}" for c in current)},
           lag(n.ts) OVER w, lag(n.register_level) OVER w, lag(n.register_level_ts) OVER w, 1,
           now()
    FROM {t.name}_new n {skip_staying}
    WINDOW w AS (PARTITION BY n.{d} ORDER BY n.ts)
    ORDER BY n.{d}, n.ts DESC
    ON CONFLICT ({d}) DO UPDATE
        SET {updates}, version = c.version + 1, updated_at = excluded.updated_at
        WHERE c.ts < excluded.ts
    RETURNING c.{d} AS device, c.version
), {t.name}_roll AS (
    INSERT INTO {t.hourly} AS r ({d}, hour, {", ".join(rollup_columns(t))})
    SELECT {d}, date_trunc('hour', ts, 'UTC'), {", ".join(rollup_aggregates(t))}
    FROM {t.name}_new GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT ({d}, hour) DO UPDATE
        SET {", ".join(merges)}
)"""
    if mark_dirty:
        # A register device's readings are booked from their neighbours: an interval
        # reading among them changes those bookings (registers start over after it, a
        # pending one is decided). Only interval rows: every device with a register reading
        # here is handled (a hashed NOT IN: the handled array may hold thousands).
        skip = f" AND {d} NOT IN ({handled})" if handled else ""
        sql += f""", {t.name}_dirty AS (
    UPDATE register_devices s
    SET dirty_from = least(coalesce(s.dirty_from, n.ts), n.ts)
    FROM (SELECT {d}, min(ts) AS ts FROM {t.name}_new
          WHERE {t.register} IS NULL{skip} GROUP BY 1) n
    WHERE s.kind = '{t.name}' AND s.device_id = n.{d}
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
    params = ", ".join(_array_param(first + i, kind) for i, kind in enumerate(types))
    extra = " WITH ORDINALITY" if ordinality else ""
    columns = ", ".join([*names, "ord"] if ordinality else names)
    return f"unnest({params}){extra} AS {alias} ({columns})", first + len(types)


#: An array of device ids, sent as one array literal (``{"m-1","m-2"}``) and parsed by the
#: server: asyncpg checks and encodes a list element by element (0.5 µs each, measured).
IDS = "ids"


def _array_param(n: int, kind: str) -> str:
    return f"${n}::text::text[]" if kind == IDS else f"${n}::{kind}[]"


def id_literal(ids: list[str]) -> str:
    """Device ids as one array literal, each quoted. Validated ids hold no quote or
    backslash; anything else (a reading built in code) is escaped."""
    literal = '{"' + '","'.join(ids) + '"}' if ids else "{}"
    if "\\" in literal or literal.count('"') != 2 * len(ids):
        return _text_array(ids)
    return literal


def _text_array(ids: list[str]) -> str:
    """The literal of any strings, quoted and escaped (never the hot path)."""
    escaped = (i.replace("\\", "\\\\").replace('"', '\\"') for i in ids)
    return "{" + ",".join(f'"{e}"' for e in escaped) + "}"


#: A reading's time as sent: exact microseconds since the Unix epoch (asyncpg encodes a
#: datetime for 0.95 µs, the integer for a fifth of that), and back to a timestamptz in SQL
#: (an integer times one microsecond is exact: interval_mul rounds integers to themselves).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
TS_SQL = "('epoch'::timestamptz + {} * interval '1 microsecond')"


def micros(times: list[datetime]) -> list[int]:
    """Timestamps as whole microseconds since the Unix epoch (see :data:`TS_SQL`)."""
    return [(t - EPOCH) // MICROSECOND for t in times]


def interval_types(t: Stream) -> list[str]:
    """The array types of one stream's interval rows: id (a literal), ts (microseconds),
    its measured values, received_at (as epoch seconds)."""
    return [IDS, "int8", *["float8"] * len(t.measures), "float8"]


#: A batch with registers adds the raw register per row, and the rows whose booking is not
#: a plain increment: (ordinal, quality, level, level_ts as epoch seconds). An increment is
#: ``ok`` with the chain at the reading itself; sending only the others saves three arrays
#: of a value per row (asyncpg encodes ~0.5 µs per element here).
_EXCEPTION_TYPES = ["int8", "text", "float8", "float8"]


def array_rows(t: Stream, first: int, *, registers: bool) -> tuple[str, int]:
    """Rows of ``t`` from array parameters starting at ``$first``."""
    values = [f"v{i}" for i in range(len(t.values))]
    names = ["i", "t", *values, "r"]
    types = interval_types(t)
    ts = TS_SQL.format("t")
    base = f"i, {ts}, {', '.join(values)}, to_timestamp(r)"
    if not registers:
        source, nxt = unnest_arrays(names, types, first)
        return f"SELECT {base}, {NO_REGISTER} FROM {source}", nxt
    source, nxt = unnest_arrays([*names, "g"], [*types, "float8"], first, ordinality=True)
    exceptions, nxt = unnest_arrays(["o", "q", "l", "lt"], _EXCEPTION_TYPES, nxt, alias="x")
    return (
        f"SELECT {base}, g, "
        "CASE WHEN x.o IS NOT NULL THEN x.q WHEN g IS NOT NULL THEN 'ok' END, "
        "CASE WHEN x.o IS NOT NULL THEN x.l ELSE g END, "
        f"CASE WHEN x.o IS NOT NULL THEN to_timestamp(x.lt) WHEN g IS NOT NULL THEN {ts} END "
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


def counts() -> str:
    """The result columns every batch statement ends with: per stream the readings that were
    new (named after the stream), and the register devices marked dirty."""
    new = [f"(SELECT count(*) FROM {name}_new) AS {name}" for name in STREAMS]
    dirty = " + ".join(f"(SELECT count(*) FROM {name}_dirty)" for name in STREAMS)
    return ", ".join([*new, f"{dirty} AS dirty"])


def _write_sql() -> str:
    parts = []
    nxt = 1
    for t in STREAMS.values():
        rows, nxt = array_rows(t, nxt, registers=False)
        parts.append(history_sql(t, rows, mark_dirty=True))
    rejected, _ = rejected_sql(nxt)
    ctes = ",\n".join([*parts, rejected])
    return f"""
WITH {ctes}
SELECT {counts()}
"""


#: The batch statement: interval readings only (and dead letters). A batch with register
#: readings is written by collector/ingest/booking, from the same parts.
WRITE_BATCH_SQL = _write_sql()


_TIMESTAMP = attrgetter("timestamp")


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


def rejected_arrays(batch: Batch) -> list[list[Any]]:
    """The dead letters' arrays (see :func:`rejected_sql`)."""
    rejected = batch.rejected
    return [
        [r.source for r in rejected],
        [r.reason.value for r in rejected],
        [r.detail for r in rejected],
        [r.payload for r in rejected],
        [r.payload_size for r in rejected],
        epochs(batch.rejected_received),
    ]


def batch_arrays(batch: Batch) -> list[object]:
    """The batch statement's parameters: per stream its columns, then the dead letters."""
    args: list[object] = []
    for name, t in STREAMS.items():
        rows = batch.rows[name]
        readings = rows.readings
        args.append(id_literal(list(map(attrgetter(t.id_field), readings))))
        args.append(micros(list(map(_TIMESTAMP, readings))))
        args += [list(map(attrgetter(m.field), readings)) for m in t.measures]
        args.append(rows.received_epochs)
    return args + rejected_arrays(batch)


async def write_batch(conn: Connection, batch: Batch, statement_timeout_s: float) -> WriteResult:
    """Write ``batch`` of interval readings (and dead letters) in one statement; returns
    how many readings were new. Register readings go through ``booking``."""
    row = await conn.fetchrow(WRITE_BATCH_SQL, *batch_arrays(batch), timeout=statement_timeout_s)
    assert row is not None
    return WriteResult(
        {name: row[name] for name in STREAMS}, len(batch.rejected), dirty=row["dirty"]
    )
