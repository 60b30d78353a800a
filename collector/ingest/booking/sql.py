"""The booking's statements and their arrays, generated from the stream catalogue.

A batch with register readings is written by :data:`WRITE_REGISTERS_SQL`: the batch
statement's parts (``store``: history with each reading's booking, current state, rollups,
dead letters, interval readings' dirty marks) and, per stream, the handled devices' states,
compare-and-set. Per stream, the arrays after the readings and dead letters: the devices
whose newest row is in the batch ("moving": i, v; the upsert of the current rows writes
them), the other handled devices ("staying": i, v, a, pt, pl, plt; ``a``: the chain before
the latest reading changed, times as epoch seconds), the devices new to registers (i), and
the dirty marks worked off (i, d).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any

import asyncpg

from collector.db.connection import Connection
from collector.ingest.batch import Rows
from collector.ingest.booking.registers import Replacement
from collector.ingest.booking.state import OK, Plan, Stored
from collector.ingest.store import (
    PREVIOUS_COLUMNS,
    array_rows,
    counts,
    history_sql,
    id_literal,
    micros,
    rejected_sql,
    rollup_aggregates,
    rollup_columns,
    unnest_arrays,
)
from collector.ingest.streams import STREAMS, Stream

#: Raised by ``register_states_written`` (sql/006) when a state moved under a booking.
STATE_MOVED = "RS001"

_MOVING = (["i", "v"], ["text", "int8"])
_STAYING = (
    ["i", "v", "a", "pt", "pl", "plt"],
    ["text", "int8", "bool", "float8", "float8", "float8"],
)
_NEW = (["i"], ["text"])
_CLEANED = (["i", "d"], ["text", "timestamptz"])
#: How many of a stream's state arrays are the moving devices' (the rebooker has none).
MOVING_ARRAYS = len(_MOVING[0])


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One stream's handled devices, written compare-and-set: their current rows only from
    the version the bookings were made from. ``written`` counts the rows that were."""

    ctes: str
    expected: str
    written: str
    #: every handled device, as a subquery (their interval rows are booked, not marked)
    handled: str
    #: the staying devices, as a subquery (the current upsert leaves them alone)
    staying: str


def _state_sql(t: Stream, first: int, *, moving: bool) -> tuple[StateWrite, int]:
    name, d = t.name, t.device
    nxt = first + MOVING_ARRAYS if moving else first
    staying_src, nxt2 = unnest_arrays(*_STAYING, nxt)
    new_src, nxt3 = unnest_arrays(*_NEW, nxt2)
    cleaned_src, after = unnest_arrays(*_CLEANED, nxt3)
    previous = ("to_timestamp(u.pt)", "u.pl", "to_timestamp(u.plt)")
    keep = ", ".join(
        f"{c} = CASE WHEN u.a THEN {n} ELSE c.{c} END"
        for c, n in zip(PREVIOUS_COLUMNS, previous, strict=True)
    )
    ctes = f"""{name}_staying AS (
    UPDATE {t.current} c SET {keep}, version = c.version + 1
    FROM {staying_src}
    WHERE c.{d} = u.i AND c.version = u.v
    RETURNING 1
), {name}_known AS (
    INSERT INTO register_devices (kind, device_id)
    SELECT '{name}', i FROM {new_src} ORDER BY 2 ON CONFLICT DO NOTHING
), {name}_cleaned AS (
    UPDATE register_devices s SET dirty_from = NULL FROM {cleaned_src}
    WHERE s.kind = '{name}' AND s.device_id = u.i AND s.dirty_from = u.d
)"""
    written = f"(SELECT count(*) FROM {name}_staying)"
    expected = f"cardinality(${nxt}::text[])"
    staying = f"SELECT unnest(${nxt}::text[])"
    handled = staying
    if moving:
        # A moving device's current row was written by the upsert: from the version read
        # if it is now exactly one on (the upsert adds one), or inserted as 1 from none (0).
        written += (
            f" + (SELECT count(*) FROM {name}_cur x JOIN "
            f"unnest(${first}::text[], ${first + 1}::int8[]) AS w (i, v) "
            "ON w.i = x.device AND x.version = w.v + 1)"
        )
        expected += f" + cardinality(${first}::text[])"
        handled = f"SELECT unnest(${first}::text[]) UNION ALL {staying}"
    return StateWrite(ctes, expected, written, handled, staying), after


def _write_registers_sql() -> str:
    nxt = 1
    rows = {}
    for name, t in STREAMS.items():
        rows[name], nxt = array_rows(t, nxt, registers=True)
    rejected, nxt = rejected_sql(nxt)
    states = {}
    for name, t in STREAMS.items():
        states[name], nxt = _state_sql(t, nxt, moving=True)
    parts = [
        history_sql(
            t, rows[name], mark_dirty=True, handled=states[name].handled,
            staying=states[name].staying,
        )
        for name, t in STREAMS.items()
    ]  # fmt: skip
    parts += [rejected, *(s.ctes for s in states.values())]
    ctes = ",\n".join(parts)
    expected = " + ".join(s.expected for s in states.values())
    written = " + ".join(s.written for s in states.values())
    return f"""
WITH {ctes}
SELECT {counts()},
       register_states_written({expected}, {written}) AS states
"""


def _staying_sql(t: Stream) -> str:
    """The rebooker's statement: only staying devices (the arrays after the moving ones)."""
    s, _ = _state_sql(t, 1, moving=False)
    return f"WITH {s.ctes} SELECT register_states_written({s.expected}, {s.written})"


#: A batch with register readings: history with their bookings, current state, rollups,
#: dead letters, interval readings' dirty marks, and the handled devices, compare-and-set.
WRITE_REGISTERS_SQL = _write_registers_sql()
#: The rebooker's: the devices booked again, compare-and-set.
WRITE_STAYING_SQL = {name: _staying_sql(t) for name, t in STREAMS.items()}


def _states_sql(t: Stream) -> str:
    return f"""
SELECT u.d AS device, c.ts, c.{t.register} AS register, c.{t.energy.column} AS kwh,
       c.register_quality, c.register_level, c.register_level_ts, c.register_prev_ts,
       c.register_prev_level, c.register_prev_level_ts, coalesce(c.version, 0) AS version,
       r.device_id IS NOT NULL AS known, r.dirty_from, r.replacement_at
FROM unnest($1::text[]) AS u (d)
LEFT JOIN {t.current} c ON c.{t.device} = u.d
LEFT JOIN register_devices r ON r.kind = '{t.name}' AND r.device_id = u.d"""


#: Register devices' states (current row and ``register_devices`` row), by device id.
STATES_SQL = {name: _states_sql(t) for name, t in STREAMS.items()}


def _row_sql(t: Stream) -> str:
    return (
        f"SELECT ts, {t.register} AS register, {t.energy.column} AS kwh, "
        "register_quality AS quality, register_level AS level, register_level_ts AS level_ts "
        f"FROM {t.readings} WHERE {t.device} = $1"
    )


#: One device's history rows as the booking reads them (conditions on ``ts`` appended).
ROW_SQL = {name: _row_sql(t) for name, t in STREAMS.items()}
#: The devices marked dirty, oldest mark first.
DIRTY_SQL = (
    "SELECT device_id FROM register_devices WHERE kind = $1 AND dirty_from IS "
    "NOT NULL ORDER BY dirty_from LIMIT $2"
)


def stored(row: asyncpg.Record) -> Stored:
    return Stored(
        row["ts"], row["register"], row["kwh"], row["quality"], row["level"], row["level_ts"]
    )


def is_state_moved(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == STATE_MOVED


def _rollups_sql(t: Stream) -> str:
    columns = rollup_columns(t)
    return (
        f"INSERT INTO {t.hourly} AS r ({t.device}, hour, {', '.join(columns)}) "
        f"SELECT h.{t.device}, u.hr, {', '.join(rollup_aggregates(t))} "
        f"FROM unnest($1::text[], $2::timestamptz[]) AS u (i, hr) JOIN {t.readings} h "
        f"ON h.{t.device} = u.i AND h.ts >= u.hr AND h.ts < u.hr + interval '1 hour' "
        f"GROUP BY 1, 2 ORDER BY 1, 2 "
        f"ON CONFLICT ({t.device}, hour) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in columns)
    )


#: The rollups of (device, UTC hour)s computed again from the history.
ROLLUPS_SQL = {name: _rollups_sql(t) for name, t in STREAMS.items()}


async def recompute_rollups(
    conn: Connection, t: Stream, hours: Sequence[tuple[str, datetime]]
) -> None:
    """Compute the rollups of these (device, UTC hour)s again from the history."""
    if not hours:
        return
    await conn.execute(ROLLUPS_SQL[t.name], [d for d, _ in hours], [h for _, h in hours])


def _rebooked_sql(t: Stream) -> list[str]:
    """Stored rows booked again: the row (and the current row, if it is that one), then
    the current row's chain before it, when the changed row is its predecessor."""
    rows = [
        f"UPDATE {table} h SET {t.energy.column} = u.k, register_quality = u.q, "
        "register_level = u.l, register_level_ts = u.lt "
        "FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::text[], "
        "$5::float8[], $6::timestamptz[]) AS u (i, t, k, q, l, lt) "
        f"WHERE h.{t.device} = u.i AND h.ts = u.t"
        for table in (t.readings, t.current)
    ]
    previous = (
        f"UPDATE {t.current} c SET register_prev_level = u.l, register_prev_level_ts = u.lt "
        "FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::timestamptz[]) "
        f"AS u (i, t, l, lt) WHERE c.{t.device} = u.i AND c.register_prev_ts = u.t"
    )
    return [*rows, previous]


#: Per stream: the history row and current row booked again, the current row's predecessor.
REBOOKED_SQL = {name: _rebooked_sql(t) for name, t in STREAMS.items()}

REPLACEMENTS_SQL = (
    "SELECT device_id, at, final_kwh, start_kwh FROM register_replacements "
    "WHERE kind = $1 AND device_id = ANY($2::text[]) ORDER BY device_id, at"
)


async def replacements(
    conn: Connection, t: Stream, devices: list[str]
) -> dict[str, list[Replacement]]:
    rows = await conn.fetch(REPLACEMENTS_SQL, t.name, devices)
    out: dict[str, list[Replacement]] = {}
    for r in rows:
        out.setdefault(r["device_id"], []).append(
            Replacement(r["at"], r["final_kwh"], r["start_kwh"])
        )
    return out


_TIMESTAMP = attrgetter("timestamp")
_REGISTER = attrgetter("register")


def reading_arrays(t: Stream, rows: Rows, plan: Plan) -> list[Any]:
    """The main statement's arrays for one stream, each reading with its booking (see
    store.array_rows: the raw registers, and the bookings that are not increments); the
    measured columns in the table's order, the energy booked."""
    readings = rows.readings
    booked = plan.booked
    kwh: list[float] = []
    order: list[int] = []
    quality: list[str | None] = []
    level: list[float | None] = []
    level_ts: list[float | None] = []
    energies = map(attrgetter(t.energy.field), readings)
    for i, (r, energy) in enumerate(zip(readings, energies, strict=True), 1):
        b = booked.get(id(r))
        if b is None:
            kwh.append(energy or 0.0)
            continue
        kwh.append(b[0])
        if b[1] != OK:
            order.append(i)
            quality.append(b[1])
            level.append(b[2])
            level_ts.append(b[3].timestamp() if b[3] is not None else None)
    values = [
        kwh if m is t.energy else list(map(attrgetter(m.field), readings)) for m in t.measures
    ]
    return [
        id_literal(list(map(attrgetter(t.id_field), readings))),
        micros(list(map(_TIMESTAMP, readings))),
        *values,
        rows.received_epochs,
        list(map(_REGISTER, readings)),
        order,
        quality,
        level,
        level_ts,
    ]


def state_arrays(plan: Plan) -> list[list[Any]]:
    """The handled devices' arrays (see the statements), each group in device order:
    updates lock rows in one order. Times as epoch seconds (to_timestamp in the statement):
    a fraction of the cost of encoding timestamps. A moving device's chain before its
    newest reading is computed by the statement (store.history_sql), as it is here."""
    moving: list[str] = []
    staying: list[str] = []
    states, after = plan.handled, plan.after
    for device in sorted(states):
        if device in plan.moving:
            moving.append(device)
        elif states[device].version > 0:  # without a current row, nothing to write
            staying.append(device)
    st = [after.get(d) for d in staying]
    cleaned = sorted(d for d, s in states.items() if s.dirty_from is not None)
    return [
        moving,
        [states[d].version for d in moving],
        staying,
        [states[d].version for d in staying],
        [a is not None for a in st],
        _epochs([a.prev_ts if a else None for a in st]),
        [a.prev_level if a else None for a in st],
        _epochs([a.prev_level_ts if a else None for a in st]),
        sorted(d for d, s in states.items() if not s.known),
        cleaned,
        [states[d].dirty_from for d in cleaned],
    ]


def _epochs(times: list[datetime | None]) -> list[float | None]:
    return [t.timestamp() if t is not None else None for t in times]
