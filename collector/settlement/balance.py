"""A site's balance: what its main meter drew against what its members used, per hour or
local day. The difference is *untracked* energy (losses, an unmetered load, a member
missing from the site); an hour in which either side lacks data is ``complete = false`` and
says nothing about losses (a silent sub-meter is not a leak)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from collector.db.connection import Connection
from collector.ingest.streams import METER
from collector.settlement.energy import energy_by_bucket, usual_rates
from collector.settlement.sites import Site

Bucket = Literal["hour", "day"]
#: Below this coverage a side's data for a bucket is incomplete.
COMPLETE = 0.98
MAX_BUCKETS = 24 * 93


class BalanceError(ValueError):
    """The balance cannot be computed as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class BalanceRow:
    site_id: str
    start: datetime
    end: datetime
    main_kwh: float
    members_kwh: float
    untracked_kwh: float
    untracked_ratio: float | None
    main_coverage: float
    members_coverage: float
    members: int
    complete: bool

    FIELDS = (
        "site_id", "start", "end", "main_kwh", "members_kwh", "untracked_kwh",
        "untracked_ratio", "main_coverage", "members_coverage", "members", "complete",
    )  # fmt: skip


def buckets(
    site: Site, start: datetime, end: datetime, bucket: Bucket
) -> list[tuple[datetime, datetime]]:
    """The site's local hours or local days from the one containing ``start`` to ``end``."""
    zone = site.zone
    local = start.astimezone(zone)
    if bucket == "day":
        cursor = local.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        cursor = local.replace(minute=0, second=0, microsecond=0)
    out: list[tuple[datetime, datetime]] = []
    while cursor.astimezone(UTC) < end:
        if bucket == "day":
            nxt = (cursor.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)
        else:
            nxt = (cursor.astimezone(UTC) + timedelta(hours=1)).astimezone(zone)
        out.append((cursor.astimezone(UTC), nxt.astimezone(UTC)))
        cursor = nxt
        if len(out) > MAX_BUCKETS:
            raise BalanceError(f"more than {MAX_BUCKETS} buckets: ask for a shorter window")
    return out


async def site_balance(
    conn: Connection,
    site: Site,
    members: list[str],
    *,
    start: datetime,
    end: datetime,
    bucket: Bucket,
) -> list[BalanceRow]:
    """The balance of ``site`` (its main meter against ``members``, meters)."""
    if site.main_meter is None:
        raise BalanceError(f"site {site.id!r} has no main_meter: there is nothing to balance")
    spans = buckets(site, start, end, bucket)
    devices = [site.main_meter, *members]
    rates = await usual_rates(
        conn, METER, spans[0][0] - timedelta(days=1), spans[-1][1] + timedelta(days=1), devices
    ) if spans else {}  # fmt: skip
    energy = await energy_by_bucket(conn, METER, spans, devices, rates)
    out = []
    for i, (lo, hi) in enumerate(spans):
        seconds = (hi - lo).total_seconds()

        def coverage(device: str, i: int = i, seconds: float = seconds) -> float:
            e = energy.get((device, i))
            return 0.0 if e is None else e.coverage(seconds)

        main = energy.get((site.main_meter, i))
        main_kwh = main.kwh if main else 0.0
        members_kwh = sum(e.kwh for d in members if (e := energy.get((d, i))) is not None)
        main_cov = coverage(site.main_meter)
        members_cov = min((coverage(d) for d in members if d in rates), default=1.0)
        untracked = main_kwh - members_kwh
        out.append(
            BalanceRow(
                site_id=site.id,
                start=lo,
                end=hi,
                main_kwh=main_kwh,
                members_kwh=members_kwh,
                untracked_kwh=untracked,
                untracked_ratio=untracked / main_kwh if main_kwh > 0 else None,
                main_coverage=round(main_cov, 4),
                members_coverage=round(members_cov, 4),
                members=len(members),
                complete=main_cov >= COMPLETE and members_cov >= COMPLETE,
            )
        )
    return out
