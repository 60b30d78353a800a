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
from dataclasses import dataclass, field
from datetime import datetime

from collector.db.connection import Connection
from collector.ingest.streams import Stream
from collector.readmodel.pieces import REGISTER_COUNTS

#: The register counters a bucket carries (hourly rollup columns).
COUNTERS = ("register_resets", "register_quarantined", "register_pending")


@dataclass(slots=True)
class Piece:
    """One device's readings in one piece of a bucket."""

    seconds: float
    readings: int
    kwh: float
    resets: int
    quarantined: int
    pending: int


@dataclass(slots=True)
class BucketEnergy:
    """One device's energy in one bucket."""

    device_id: str
    bucket: int
    kwh: float = 0.0
    readings: int = 0
    resets: int = 0
    quarantined: int = 0
    pending: int = 0
    pieces: list[Piece] = field(default_factory=list)

    def coverage(self, per_hour: float | None, bucket_seconds: float) -> float:
        """The part of the bucket with readings at ``per_hour`` (the device's usual rate)."""
        if not per_hour or bucket_seconds <= 0:
            return 0.0
        covered = sum(min(p.readings, per_hour * p.seconds / 3600) for p in self.pieces)
        return min(1.0, covered / (per_hour * bucket_seconds / 3600))


def _sql(stream: Stream, with_devices: bool) -> str:
    device = stream.device
    only_r = f"AND r.{device} = ANY($3::text[])" if with_devices else ""
    only_x = f"AND x.{device} = ANY($3::text[])" if with_devices else ""
    raw_counts = ", ".join(f"sum({REGISTER_COUNTS[c]})::int" for c in COUNTERS)
    rollup_counts = ", ".join(f"r.{c}" for c in COUNTERS)
    return f"""
        WITH b AS (SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[])
                   WITH ORDINALITY AS b (lo, hi, n)),
             p AS (SELECT b.n, h.lo, h.hi, h.whole FROM b, hour_pieces(b.lo, b.hi) h)
        SELECT r.{device} AS device, p.n AS bucket, 3600.0 AS seconds, r.readings AS n,
               r.kwh_sum AS kwh, {rollup_counts}
          FROM p JOIN {stream.hourly} r ON r.hour >= p.lo AND r.hour < p.hi
         WHERE p.whole {only_r}
        UNION ALL
        SELECT x.{device}, p.n, extract(epoch FROM p.hi - p.lo)::float8, count(*)::int,
               sum(x.{stream.energy.column}), {raw_counts}
          FROM p JOIN {stream.readings} x ON x.ts >= p.lo AND x.ts < p.hi
         WHERE NOT p.whole {only_x}
         GROUP BY x.{device}, p.n, p.lo, p.hi"""


async def energy_by_bucket(
    conn: Connection,
    stream: Stream,
    buckets: Sequence[tuple[datetime, datetime]],
    devices: Sequence[str] | None = None,
) -> dict[tuple[str, int], BucketEnergy]:
    """Every device's (or ``devices``') energy in each bucket (by the bucket's index),
    only where it has readings."""
    if not buckets:
        return {}
    args: list[object] = [[b[0] for b in buckets], [b[1] for b in buckets]]
    if devices is not None:
        args.append(list(devices))
    rows = await conn.fetch(_sql(stream, devices is not None), *args)
    out: dict[tuple[str, int], BucketEnergy] = {}
    for r in rows:
        key = (r["device"], r["bucket"] - 1)
        got = out.get(key)
        if got is None:
            got = out[key] = BucketEnergy(r["device"], r["bucket"] - 1)
        piece = Piece(r["seconds"], r["n"], r["kwh"] or 0.0, *(r[c] or 0 for c in COUNTERS))
        got.pieces.append(piece)
        got.kwh += piece.kwh
        got.readings += piece.readings
        got.resets += piece.resets
        got.quarantined += piece.quarantined
        got.pending += piece.pending
    return out


async def usual_rates(
    conn: Connection,
    stream: Stream,
    start: datetime,
    end: datetime,
    devices: Sequence[str] | None = None,
) -> dict[str, float]:
    """Each device's usual readings per hour between ``start`` and ``end``: the median of
    its hourly counts over the hours with readings (one row per device, from the rollups)."""
    only = f"AND {stream.device} = ANY($3::text[])" if devices is not None else ""
    rows = await conn.fetch(
        f"""SELECT {stream.device} AS device,
                   percentile_disc(0.5) WITHIN GROUP (ORDER BY readings) AS per_hour
              FROM {stream.hourly}
             WHERE hour >= $1 AND hour < $2 AND readings > 0 {only}
             GROUP BY 1""",
        *([start, end, list(devices)] if devices is not None else [start, end]),
    )
    return {r["device"]: float(r["per_hour"]) for r in rows}


def rate_of(energy: BucketEnergy) -> float | None:
    """A device's readings per hour in the bucket itself: the fallback when it has no whole
    hour of readings around it."""
    seconds = sum(p.seconds for p in energy.pieces if p.readings)
    return energy.readings * 3600 / seconds if seconds else None
