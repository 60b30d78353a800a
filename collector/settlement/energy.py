"""Each device's energy per bucket (a local day, a local hour), exactly, with its coverage.

Buckets are any ``[lo, hi)`` instants: a local day of a site's zone is 23, 24 or 25 hours
and may start on a half hour (Asia/Kolkata) or a quarter (Asia/Kathmandu). Each bucket is
cut by ``hour_pieces()`` into the whole UTC hours inside it (read from the hourly rollups)
and the partial hours at its edges (the raw readings), the analytics' one reading pattern
(``pieces``), so the energy is exactly the sum of the readings inside and the cost does not
grow with the readings. Per piece the readings are counted too: a bucket's *coverage* is
the part of it that has readings at the device's usual cadence (its median readings per
hour over the request's hours with data), so a gap is stated, never filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from collector.db.connection import Connection
from collector.ingest.streams import STREAMS, Stream
from collector.readmodel.pieces import REGISTER_COUNTS

#: The register counters a bucket carries (hourly rollup columns).
COUNTERS = ("register_resets", "register_quarantined", "register_pending")


@dataclass(slots=True)
class BucketEnergy:
    """One device's energy in one bucket, and what its coverage is made of."""

    device_id: str
    bucket: int
    kwh: float = 0.0
    readings: int = 0
    resets: int = 0
    quarantined: int = 0
    pending: int = 0
    #: Readings counted up to the device's usual rate in each piece (min(n, rate x hours)).
    covered: float = 0.0
    #: Seconds of the pieces that have readings (the fallback without a usual rate).
    seconds_with_data: float = 0.0
    rate: float | None = None

    def coverage(self, bucket_seconds: float) -> float:
        """The part of the bucket with readings at the device's usual rate (or, without
        one, the part of its pieces that have readings)."""
        if bucket_seconds <= 0:
            return 0.0
        if self.rate:
            return min(1.0, self.covered / (self.rate * bucket_seconds / 3600))
        return min(1.0, self.seconds_with_data / bucket_seconds)


def _sql(stream: Stream, with_devices: bool) -> str:
    device = stream.device
    # A list of devices is joined as a relation: each device's rows by the primary key, a
    # plan that holds when the prepared statement runs again (`= ANY($3)` lost it).
    only_r = f"AND r.{device} IN (SELECT unnest($3::text[]))" if with_devices else ""
    only_x = f"AND x.{device} IN (SELECT unnest($3::text[]))" if with_devices else ""
    raw_counts = ", ".join(f"sum({REGISTER_COUNTS[c]})::int AS {c}" for c in COUNTERS)
    rollup_counts = ", ".join(f"r.{c}" for c in COUNTERS)
    sums = ", ".join(f"sum(q.{c})::int AS {c}" for c in COUNTERS)
    return f"""
        WITH b AS (SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[])
                   WITH ORDINALITY AS b (lo, hi, n)),
             p AS (SELECT b.n, h.lo, h.hi, h.whole FROM b, hour_pieces(b.lo, b.hi) h),
             rates AS (SELECT * FROM unnest($4::text[], $5::float8[]) AS t (device, rate)),
             q AS (
                SELECT r.{device} AS device, p.n AS bucket, 3600.0 AS seconds,
                       r.readings AS n, r.kwh_sum AS kwh, {rollup_counts}
                  FROM p JOIN {stream.hourly} r ON r.hour >= p.lo AND r.hour < p.hi
                 WHERE p.whole {only_r}
                UNION ALL
                SELECT x.{device}, p.n, extract(epoch FROM p.hi - p.lo)::float8,
                       count(*)::int, sum(x.{stream.energy.column}), {raw_counts}
                  FROM p JOIN {stream.readings} x ON x.ts >= p.lo AND x.ts < p.hi
                 WHERE NOT p.whole {only_x}
                 GROUP BY x.{device}, p.n, p.lo, p.hi)
        SELECT q.device, q.bucket, sum(q.n)::int AS n, coalesce(sum(q.kwh), 0) AS kwh, {sums},
               coalesce(sum(least(q.n, t.rate * q.seconds / 3600.0)), 0) AS covered,
               coalesce(sum(q.seconds) FILTER (WHERE q.n > 0), 0) AS seconds_with_data,
               min(t.rate) AS rate
          FROM q LEFT JOIN rates t ON t.device = q.device
         GROUP BY q.device, q.bucket"""


def _energy_sql(stream: Stream, with_devices: bool) -> str:
    sql = _sql(stream, with_devices)
    if not with_devices:  # $3 unused: keep the numbering
        sql = sql.replace("rates AS (", "unused AS (SELECT $3::text[]), rates AS (", 1)
    return sql


#: The energy statement per (stream, with a device list), built once (and seen by the
#: static Citus rules test).
ENERGY_SQL = {(s.name, w): _energy_sql(s, w) for s in STREAMS.values() for w in (True, False)}


async def energy_by_bucket(
    conn: Connection,
    stream: Stream,
    buckets: Sequence[tuple[datetime, datetime]],
    devices: Sequence[str] | None = None,
    rates: dict[str, float] | None = None,
) -> dict[tuple[str, int], BucketEnergy]:
    """Every device's (or ``devices``') energy in each bucket (by the bucket's index),
    only where it has readings; ``rates``: each device's usual readings per hour
    (:func:`usual_rates`), what its coverage is measured against."""
    if not buckets:
        return {}
    rates = rates or {}
    args: list[object] = [[b[0] for b in buckets], [b[1] for b in buckets]]
    args.append(list(devices) if devices is not None else [])
    args += [list(rates), list(rates.values())]
    sql = ENERGY_SQL[stream.name, devices is not None]
    out: dict[tuple[str, int], BucketEnergy] = {}
    for r in await conn.fetch(sql, *args):
        out[(r["device"], r["bucket"] - 1)] = BucketEnergy(
            device_id=r["device"],
            bucket=r["bucket"] - 1,
            kwh=r["kwh"],
            readings=r["n"],
            resets=r["register_resets"] or 0,
            quarantined=r["register_quarantined"] or 0,
            pending=r["register_pending"] or 0,
            covered=r["covered"],
            seconds_with_data=r["seconds_with_data"],
            rate=r["rate"],
        )
    return out


def _rates_sql(stream: Stream, with_devices: bool) -> str:
    device = stream.device
    source = (
        f"unnest($3::text[]) AS d (id) JOIN {stream.hourly} h ON h.{device} = d.id"
        if with_devices
        else f"{stream.hourly} h"
    )
    return f"""SELECT h.{device} AS device,
                   percentile_disc(0.5) WITHIN GROUP (ORDER BY h.readings) AS per_hour
              FROM {source}
             WHERE h.hour >= $1 AND h.hour < $2 AND h.readings > 0
             GROUP BY 1"""


RATES_SQL = {(s.name, w): _rates_sql(s, w) for s in STREAMS.values() for w in (True, False)}


async def usual_rates(
    conn: Connection,
    stream: Stream,
    start: datetime,
    end: datetime,
    devices: Sequence[str] | None = None,
) -> dict[str, float]:
    """Each device's usual readings per hour between ``start`` and ``end``: the median of
    its hourly counts over the hours with readings (one row per device, from the rollups).
    A list of devices is joined as a relation (each one's rows by the primary key), which
    keeps its plan when the statement is prepared and run again."""
    rows = await conn.fetch(
        RATES_SQL[stream.name, devices is not None],
        *([start, end, list(devices)] if devices is not None else [start, end]),
    )
    return {r["device"]: float(r["per_hour"]) for r in rows}
