"""Analytics SQL: a vehicle's performance and series, a device's window, the fleet.

Every analytics query reads only the rows of its window: one device's rows through the
primary key (device id, ts) as a range scan, the fleet's through the BRIN index on ts.
A meter reading counts for the vehicle linked to the meter at the reading's time
(started_at <= ts < ended_at).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg

from collector.db.connection import Connection
from collector.ingest.streams import METER, VEHICLE, Stream
from collector.readmodel.fleet import fleet
from collector.readmodel.pieces import REGISTER_COUNTS, count, pieces_rows

__all__ = ["fleet"]  # the fleet's statement is the read model's (alerts use it too)

# A window or link span is cut by hour_pieces() (sql/003) into whole UTC hours, read from
# the hourly rollups, and the partial hours at its edges, read from the raw rows
# (collector/readmodel/pieces.py): the cost of an analytics query does not grow with the number
# of readings in the window.

# The vehicle's links clipped to the window: [s, e) spans of one meter each.
SPANS = """
spans AS (
    SELECT meter_id, greatest(started_at, $2) AS s,
           least(coalesce(ended_at, 'infinity'), $3) AS e
    FROM vehicle_meter_links
    WHERE vehicle_id = $1 AND started_at < $3 AND coalesce(ended_at, 'infinity') > $2
)"""
IN_WINDOW = "x.ts >= $2 AND x.ts < $3"

# What each CTE sums, over the pieces of the spans (pieces) or of the window (window_pieces).
_LINKED_AC = pieces_rows(
    METER,
    ["kwh_sum", "n", "register_pending"],
    pieces="pieces",
    device="p.meter_id",
    raw_filter=IN_WINDOW,
)
_LINKED_DC = pieces_rows(
    VEHICLE, ["kwh_sum", "n"], pieces="pieces", device="$1", raw_filter=IN_WINDOW
)
_VEHICLE_WINDOW_DC = pieces_rows(
    VEHICLE,
    ["kwh_sum", "n", "temp_sum", "temp_n", "register_pending"],
    pieces="window_pieces",
    device="$1",
)
PERFORMANCE = f"""
WITH {SPANS},
pieces AS (
    SELECT spans.meter_id, p.lo, p.hi, p.whole FROM spans, hour_pieces(spans.s, spans.e) p
),
window_pieces AS (SELECT lo, hi, whole FROM hour_pieces($2, $3)),
ac AS (  -- AC of the linked meters over the spans
    SELECT coalesce(sum(kwh_sum), 0) AS kwh, coalesce(sum(n), 0)::bigint AS n,
           coalesce(sum(register_pending), 0)::bigint AS pending
    FROM ({_LINKED_AC}) u
),
dc AS (  -- the vehicle's DC over the same spans
    SELECT coalesce(sum(kwh_sum), 0) AS kwh, coalesce(sum(n), 0)::bigint AS n
    FROM ({_LINKED_DC}) u
),
total AS (  -- the vehicle over the whole window, linked or not
    SELECT coalesce(sum(kwh_sum), 0) AS kwh, coalesce(sum(n), 0)::bigint AS n,
           sum(temp_sum) AS temp, sum(temp_n) AS temp_n,
           coalesce(sum(register_pending), 0)::bigint AS pending
    FROM ({_VEHICLE_WINDOW_DC}) u
)
SELECT ac.kwh AS ac_kwh, ac.n AS ac_n, dc.kwh AS dc_kwh, dc.n AS dc_n,
       greatest(total.kwh - dc.kwh, 0) AS dc_unlinked, total.n AS v_n,
       total.temp / nullif(total.temp_n, 0) AS temp_avg, ac.pending + total.pending AS pending,
       coalesce((SELECT array_agg(DISTINCT meter_id ORDER BY meter_id) FROM spans),
                '{{}}') AS meter_ids
FROM ac, dc, total
"""


async def performance(
    conn: Connection, vehicle_id: str, start: datetime, end: datetime
) -> asyncpg.Record:
    row = await conn.fetchrow(PERFORMANCE, vehicle_id, start, end)
    assert row is not None
    return row


REGISTER_COLUMNS = list(REGISTER_COUNTS)


def _window_stats(stream: Stream, columns: list[str]) -> str:
    """sum, min, max and avg of each metric over the window's pieces, from ``u``, and the
    sums of the register counters."""
    out = ["coalesce(sum(n), 0)::bigint AS n"]
    out += [f"coalesce(sum({c}), 0)::bigint AS {c}" for c in columns if c in REGISTER_COUNTS]
    metrics = [c for c in columns if c != "n" and c not in REGISTER_COUNTS]
    for metric in dict.fromkeys(c.rpartition("_")[0] for c in metrics if not c.endswith("_n")):
        divisor = count(stream, metric)
        out += [
            f"sum({metric}_sum) AS {metric}_sum",
            f"min({metric}_min) AS {metric}_min",
            f"max({metric}_max) AS {metric}_max",
            f"sum({metric}_sum) / nullif(sum({divisor}), 0) AS {metric}_avg",
        ]
    return ",\n       ".join(out)


def _columns(stream: Stream) -> list[str]:
    """Every rollup column of ``stream``: the count, each metric's sum, min and max, and
    the register counters."""
    out = ["n"]
    for m in stream.measures:
        out += [f"{m.metric}_sum", f"{m.metric}_min", f"{m.metric}_max"]
        if m.optional:
            out.append(m.count)
    return [*out, *REGISTER_COLUMNS]


def _window(stream: Stream, other: Stream) -> str:
    """One device's window: the stats of every metric, the first and last reading and
    register, and the devices of ``other`` it was linked to."""
    columns = _columns(stream)
    d, table, register = stream.device, stream.readings, stream.register
    values = ", ".join(f"{c} AS {c}" for c in ("ts", *stream.values))
    in_window = f"{d} = $1 AND ts >= $2 AND ts < $3"
    edges = [  # (alias, columns, condition, order): the first and last reading and register
        ("first", values, in_window, "ts"),
        ("last", values, in_window, "ts DESC"),
        # only when the window has register readings (a one-time filter: else no scan)
        ("first_register", f"ts, {register}",
         f"s.register_readings > 0 AND {in_window} AND {register} IS NOT NULL", "ts"),
        ("last_register", f"ts, {register}",
         f"s.register_readings > 0 AND {in_window} AND {register} IS NOT NULL", "ts DESC"),
    ]  # fmt: skip
    # Each as plain columns of a LATERAL (LIMIT 1, no aggregate): Citus cannot send an
    # anonymous row() back from a shard (docs/scale.md).
    picked = ", ".join(
        f"{alias}.{c} AS {alias}_{c}"
        for alias, cols, _, _ in edges
        for c in [part.split(" AS ")[-1].strip() for part in cols.split(",")]
    )
    laterals = "\n".join(
        f"LEFT JOIN LATERAL (SELECT {cols} FROM {table} WHERE {cond} ORDER BY {order} LIMIT 1)"
        f" {alias} ON true"
        for alias, cols, cond, order in edges
    )
    return f"""
WITH w AS (SELECT lo, hi, whole FROM hour_pieces($2, $3)),
u AS ({pieces_rows(stream, columns, pieces="w", device="$1")}),
s AS (SELECT {_window_stats(stream, columns)} FROM u)
SELECT s.*, {picked},
       coalesce((SELECT array_agg(DISTINCT {other.device} ORDER BY {other.device})
                 FROM vehicle_meter_links WHERE {d} = $1 AND started_at < $3
                   AND coalesce(ended_at, 'infinity') > $2), '{{}}') AS {other.device}s
FROM s
{laterals}
"""


def _edges(row: asyncpg.Record, stream: Stream) -> dict[str, Any]:
    """The window's row with its first and last reading and register as tuples
    (``first``: (ts, *values)), as the reports read them."""
    out: dict[str, Any] = dict(row)
    for alias, names in (
        ("first", ("ts", *stream.values)),
        ("last", ("ts", *stream.values)),
        ("first_register", ("ts", stream.register)),
        ("last_register", ("ts", stream.register)),
    ):
        got = tuple(out.pop(f"{alias}_{n}") for n in names)
        out[alias] = None if got[0] is None else got
    return out


#: One meter's (vehicle's) window, with the vehicles (meters) it was linked to.
METER_WINDOW = _window(METER, VEHICLE)
VEHICLE_WINDOW = _window(VEHICLE, METER)


async def meter_window(
    conn: Connection, meter_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    row = await conn.fetchrow(METER_WINDOW, meter_id, start, end)
    assert row is not None
    return _edges(row, METER)


async def vehicle_window(
    conn: Connection, vehicle_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    row = await conn.fetchrow(VEHICLE_WINDOW, vehicle_id, start, end)
    assert row is not None
    return _edges(row, VEHICLE)


# Buckets of whole hours ($5 true) read the rollups; smaller buckets read raw rows only.
BUCKETS = """
buckets AS (
    SELECT generate_series(date_bin($4::interval, $2, '2000-01-01 00:00:00+00'),
                           $3 - interval '1 microsecond', $4::interval) AS start
)"""

_SERIES_AC = pieces_rows(
    METER, ["kwh_sum", "n"], pieces="pieces", device="p.meter_id", bucket="$4",
    raw_filter=IN_WINDOW,
)  # fmt: skip
_SERIES_DC = pieces_rows(
    VEHICLE, ["kwh_sum", "n"], pieces="pieces", device="$1", bucket="$4", raw_filter=IN_WINDOW
)
_SERIES_STATE = pieces_rows(
    VEHICLE, ["n", "soc_sum", "soc_min", "soc_max", "soc_n", "temp_sum", "temp_max", "temp_n"],
    pieces="window_pieces", device="$1", bucket="$4",
)  # fmt: skip
SERIES = f"""
WITH {SPANS},
pieces AS (
    SELECT spans.meter_id, p.lo, p.hi, p.whole
    FROM spans, hour_pieces(spans.s, spans.e) p WHERE $5
    UNION ALL
    SELECT meter_id, s, e, false FROM spans WHERE NOT $5
),
window_pieces AS (
    SELECT lo, hi, whole FROM hour_pieces($2, $3) WHERE $5
    UNION ALL
    SELECT $2, $3, false WHERE NOT $5
),
{BUCKETS},
ac AS (SELECT start, sum(kwh_sum) AS kwh, sum(n) AS n FROM ({_SERIES_AC}) u GROUP BY start),
dc AS (SELECT start, sum(kwh_sum) AS kwh, sum(n) AS n FROM ({_SERIES_DC}) u GROUP BY start),
vs AS (  -- state of charge and temperature over the whole window
    SELECT start, sum(n) AS n, sum(soc_sum) / nullif(sum(soc_n), 0) AS soc_avg,
           min(soc_min) AS soc_min, max(soc_max) AS soc_max,
           sum(temp_sum) / nullif(sum(temp_n), 0) AS t_avg, max(temp_max) AS t_max
    FROM ({_SERIES_STATE}) u GROUP BY start
)
SELECT b.start, coalesce(ac.kwh, 0) AS ac_kwh, coalesce(ac.n, 0) AS ac_n,
       coalesce(dc.kwh, 0) AS dc_kwh, coalesce(dc.n, 0) AS dc_n,
       vs.soc_avg, vs.soc_min, vs.soc_max, vs.t_avg, vs.t_max, coalesce(vs.n, 0) AS v_n
FROM buckets b LEFT JOIN ac USING (start) LEFT JOIN dc USING (start) LEFT JOIN vs USING (start)
ORDER BY b.start
"""


async def series(
    conn: Connection, vehicle_id: str, start: datetime, end: datetime, bucket: timedelta
) -> list[asyncpg.Record]:
    whole_hours = bucket % timedelta(hours=1) == timedelta(0)
    return await conn.fetch(SERIES, vehicle_id, start, end, bucket, whole_hours)


# One meter's AC and voltage per bucket; whole-hour buckets ($5 true) read the rollups.
_METER_SERIES = pieces_rows(
    METER, ["kwh_sum", "n", "voltage_sum", "voltage_min", "voltage_max", "voltage_n"],
    pieces="w", device="$1", bucket="$4",
)  # fmt: skip
METER_SERIES = f"""
WITH w AS (
    SELECT lo, hi, whole FROM hour_pieces($2, $3) WHERE $5
    UNION ALL
    SELECT $2, $3, false WHERE NOT $5
),
{BUCKETS},
agg AS (
    SELECT start, sum(kwh_sum) AS kwh, sum(n) AS n,
           sum(voltage_sum) / nullif(sum(voltage_n), 0) AS v_avg,
           min(voltage_min) AS v_min, max(voltage_max) AS v_max
    FROM ({_METER_SERIES}) u GROUP BY start
)
SELECT b.start, coalesce(agg.kwh, 0) AS kwh, coalesce(agg.n, 0) AS n,
       agg.v_avg, agg.v_min, agg.v_max
FROM buckets b LEFT JOIN agg USING (start)
ORDER BY b.start
"""


async def meter_series(
    conn: Connection, meter_id: str, start: datetime, end: datetime, bucket: timedelta
) -> list[asyncpg.Record]:
    whole_hours = bucket % timedelta(hours=1) == timedelta(0)
    return await conn.fetch(METER_SERIES, meter_id, start, end, bucket, whole_hours)
