"""Rollups for the whole hours, raw rows at the edges: the analytics' one reading pattern.

A window or a link span is cut by ``hour_pieces()`` (sql/003) into the whole UTC hours
inside it (``whole``: read from ``*_hourly``) and the partial hours at its edges (read from
the raw ``*_readings``). :func:`pieces_rows` writes that union for one stream, so every
query reads the same way and the cost of a query does not grow with the readings in its
window. Columns are named as in the rollups (``kwh_sum``, ``temp_max``, ``n`` for the count);
for a raw row each is the reading's own value (``1`` for ``n``).
"""

from __future__ import annotations

from collections.abc import Sequence

from collector.ingest.booking.registers import COUNTERS, counted
from collector.ingest.streams import Stream

#: Buckets of the series are aligned to this origin (UTC).
BUCKET_ORIGIN = "'2000-01-01 00:00:00+00'"
#: The window's partial hours for the fleet queries: $1, $2 the window, $3, $4 its whole
#: hours (``whole_hours()``), all constants the planner can prune partitions with.
FLEET_EDGES = "((x.ts >= $1 AND x.ts < $3) OR (x.ts >= $4 AND x.ts < $2))"
#: The register counters of the rollups, and what each is for one raw row.
REGISTER_COUNTS = {
    counter: f"({counted(counter, 'x.register_quality')})::int"
    for counter in ("register_readings", *COUNTERS)
}


def rollup(stream: Stream, column: str) -> str:
    """``kwh_sum`` -> ``r.kwh_sum``; ``n`` -> ``r.readings``; ``register_resets`` ->
    ``r.register_resets`` (the rollup row of ``stream``, aliased ``r``)."""
    if column == "n":
        return "r.readings"
    if column in REGISTER_COUNTS:
        return f"r.{column}"
    metric, _, aggregate = column.rpartition("_")
    if aggregate == "n" and column in _counts(stream):
        return f"r.{column}"
    if metric not in stream.metrics or aggregate not in ("sum", "min", "max"):
        raise ValueError(f"{stream.hourly} has no column {column!r}")
    return f"r.{column}"


def _counts(stream: Stream) -> dict[str, str]:
    """``voltage_n`` -> ``voltage``: the count of each optional value, and its raw column."""
    return {m.count: m.column for m in stream.measures if m.optional}


def count(stream: Stream, metric: str) -> str:
    """What an average of ``metric`` divides by: the readings that had it (``voltage_n``
    for an optional value), or every reading (``n``)."""
    m = next(m for m in stream.measures if m.metric == metric)
    return m.count if m.optional else "n"


def raw(stream: Stream, column: str) -> str:
    """``kwh_sum`` (or ``kwh_min``...) -> ``x.kwh_consumed_ac``; ``n`` -> ``1`` (a raw row
    of ``stream``, aliased ``x``, standing for a rollup row)."""
    if column == "n":
        return "1"
    if column in REGISTER_COUNTS:
        return REGISTER_COUNTS[column]
    counts = _counts(stream)
    if column in counts:
        return f"(x.{counts[column]} IS NOT NULL)::int"
    rollup(stream, column)  # the same names, checked the same way
    return f"x.{stream.metrics[column.rpartition('_')[0]]}"


def _select(exprs: Sequence[str], aliases: Sequence[str]) -> str:
    return ", ".join(f"{e} AS {a}" for e, a in zip(exprs, aliases, strict=True))


def pieces_rows(
    stream: Stream,
    columns: Sequence[str],
    *,
    pieces: str,
    device: str,
    keys: Sequence[str] = (),
    bucket: str | None = None,
    rollup_filter: str = "",
    raw_filter: str = "",
) -> str:
    """The union of rollup rows (whole pieces) and raw rows (partial pieces) of ``stream``.

    ``pieces`` names a relation of ``(lo, hi, whole)`` (aliased ``p``); ``device`` is the
    expression the rows' id must equal (``$1``, ``p.meter_id``); ``keys`` are columns of
    ``p`` to carry along; ``bucket`` (a parameter such as ``$4``) adds the bucket start as
    ``start``; the filters are extra conditions on ``r`` (rollups) and ``x`` (raw rows).
    """
    names = [*(k.rpartition(".")[2] for k in keys), *(["start"] if bucket else []), *columns]
    from_rollups = [
        *keys,
        *([f"date_bin({bucket}::interval, r.hour, {BUCKET_ORIGIN})"] if bucket else []),
    ]
    from_raw = [
        *keys,
        *([f"date_bin({bucket}::interval, x.ts, {BUCKET_ORIGIN})"] if bucket else []),
    ]
    from_rollups += [rollup(stream, c) for c in columns]
    from_raw += [raw(stream, c) for c in columns]
    return f"""
        SELECT {_select(from_rollups, names)}
        FROM {pieces} p JOIN {stream.hourly} r
          ON r.{stream.device} = {device} AND r.hour >= p.lo AND r.hour < p.hi
        WHERE p.whole {f"AND {rollup_filter}" if rollup_filter else ""}
        UNION ALL
        SELECT {_select(from_raw, names)}
        FROM {pieces} p JOIN {stream.readings} x
          ON x.{stream.device} = {device} AND x.ts >= p.lo AND x.ts < p.hi
        WHERE NOT p.whole {f"AND {raw_filter}" if raw_filter else ""}"""


def fleet_rows(stream: Stream, columns: Sequence[str], *, part: bool = False) -> str:
    """Every device's rollup rows in the window's whole hours and raw rows at its edges
    (parameters as in :data:`FLEET_EDGES`), with the device id first; with ``part``, also
    which part of the window a row is in (``head``, ``mid``, ``tail``)."""
    names = [stream.device, *(["part"] if part else []), *columns]
    from_rollups = [f"r.{stream.device}", *(["'mid'"] if part else [])]
    from_raw = [
        f"x.{stream.device}",
        *(["CASE WHEN x.ts < $3 THEN 'head' ELSE 'tail' END"] if part else []),
    ]
    from_rollups += [rollup(stream, c) for c in columns]
    from_raw += [raw(stream, c) for c in columns]
    return f"""
        SELECT {_select(from_rollups, names)} FROM {stream.hourly} r
        WHERE r.hour >= $3 AND r.hour < $4
        UNION ALL
        SELECT {_select(from_raw, names)} FROM {stream.readings} x WHERE {FLEET_EDGES}"""
