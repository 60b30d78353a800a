"""Device-days: each device's energy per local day of its site's zone, as it is billed.

A row per device and local day ``[local midnight, next local midnight)``: 23 or 25 hours on
the days a DST change happens, starting on a half or quarter hour in such zones. The energy
is exact (``energy``: rollups for whole hours, raw readings at the edges, as the analytics
read); beside it what an auditor asks: how many readings, how much of the day they cover at
the device's usual cadence and how many minutes are missing (never filled in), the register
resets, quarantined readings and meter replacements in the day, whether the day can still
change (``provisional``), and its cost at the site's price.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from collector.db.connection import Connection
from collector.ingest.streams import STREAMS, Stream
from collector.settlement.energy import energy_by_bucket, usual_rates
from collector.settlement.sites import Site, Sites

#: A day that ended less than this ago is provisional: late readings (a charger's or a
#: meter's offline queue) may still arrive for it.
LATE_GRACE = timedelta(hours=2)
#: Days read per query: memory stays bounded whatever the window.
DAYS_PER_QUERY = 1


@dataclass(frozen=True, slots=True)
class DeviceDay:
    kind: str
    device_id: str
    site_id: str | None
    day: date
    tz: str
    start: datetime
    end: datetime
    kwh: float
    readings: int
    coverage: float
    gap_minutes: int
    resets: int
    quarantined: int
    replaced: int
    provisional: bool
    cost: float | None
    currency: str | None

    FIELDS = (
        "kind", "device_id", "site_id", "day", "tz", "start", "end", "kwh", "readings",
        "coverage", "gap_minutes", "resets", "quarantined", "replaced", "provisional",
        "cost", "currency",
    )  # fmt: skip


def local_day(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """A local day as UTC instants (fold=0: the first of an ambiguous midnight)."""
    start = datetime.combine(day, time(), zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
    return start, end


async def site_devices(conn: Connection, site: Site) -> list[tuple[str, str]]:
    """(kind, device id) of the site's main meter and members that have reported."""
    found: list[tuple[str, str]] = []
    for stream in STREAMS.values():
        ids = await conn.fetch(f"SELECT {stream.device} FROM {stream.current} ORDER BY 1")
        found += [(stream.name, r[0]) for r in ids if r[0] == site.main_meter or site.has(r[0])]
    if site.main_meter and ("meter", site.main_meter) not in found:
        found.insert(0, ("meter", site.main_meter))
    return found


async def device_days(
    conn: Connection,
    sites: Sites,
    first: date,
    last: date,
    *,
    site: Site | None = None,
    tz: str | None = None,
    now: datetime | None = None,
    devices: dict[str, list[str]] | None = None,
) -> AsyncIterator[DeviceDay]:
    """Device-days from ``first`` to ``last`` (inclusive), a day at a time, by device id.
    With ``site``: its main meter and members (also the days without readings); else
    every device that has readings, each in its site's zone (``tz`` overrides the zone;
    UTC for a device without a site). ``devices``: only these, by kind."""
    now = now or datetime.now(UTC)
    scope: dict[str, list[str]] | None = devices
    if site is not None:
        scope = {}
        for kind, device in await site_devices(conn, site):
            scope.setdefault(kind, []).append(device)
    zones = sorted({tz} if tz else {s.tz for s in sites.sites} | {"UTC"})
    day = first
    while day <= last:
        rows: list[DeviceDay] = []
        for stream in STREAMS.values():
            ids = None if scope is None else scope.get(stream.name, [])
            if ids == []:
                continue
            for zone_name in zones:
                rows += await _one_day(
                    conn, stream, sites, day=day, zone_name=zone_name, devices=ids,
                    only=site, now=now, explicit=tz is not None,
                )  # fmt: skip
        rows.sort(key=lambda r: (r.kind, r.device_id))
        for row in rows:
            yield row
        day += timedelta(days=1)


async def _one_day(
    conn: Connection,
    stream: Stream,
    sites: Sites,
    *,
    day: date,
    zone_name: str,
    devices: Sequence[str] | None,
    only: Site | None,
    now: datetime,
    explicit: bool,
) -> list[DeviceDay]:
    zone = ZoneInfo(zone_name)
    start, end = local_day(day, zone)
    # the device's usual cadence, from the day and the days around it
    rates = await usual_rates(
        conn, stream, start - timedelta(days=1), end + timedelta(days=1), devices
    )
    energy = await energy_by_bucket(conn, stream, [(start, end)], devices, rates)
    replaced = await conn.fetch(
        "SELECT device_id, count(*) AS n FROM register_replacements "
        "WHERE kind = $1 AND at >= $2 AND at < $3 GROUP BY device_id",
        stream.name, start, end,
    )  # fmt: skip
    replacements = {r["device_id"]: r["n"] for r in replaced}
    ids = set(devices) if devices is not None else {k[0] for k in energy}
    seconds = (end - start).total_seconds()
    out = []
    for device in sorted(ids):
        site = only or sites.of(device)
        if not explicit and (site.tz if site else "UTC") != zone_name:
            continue  # this device's days are in another zone
        e = energy.get((device, 0))
        coverage = e.coverage(seconds) if e else 0.0
        kwh = e.kwh if e else 0.0
        price = site.price_per_kwh if site else None
        out.append(
            DeviceDay(
                kind=stream.name,
                device_id=device,
                site_id=site.id if site else None,
                day=day,
                tz=zone_name,
                start=start,
                end=end,
                kwh=kwh,
                readings=e.readings if e else 0,
                coverage=round(coverage, 4),
                gap_minutes=round((1 - coverage) * seconds / 60),
                resets=e.resets if e else 0,
                quarantined=e.quarantined if e else 0,
                replaced=replacements.get(device, 0),
                provisional=end > now - LATE_GRACE or bool(e and e.pending),
                cost=None if price is None else kwh * price,
                currency=site.currency if site and price is not None else None,
            )
        )
    return out
