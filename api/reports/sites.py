"""Sites, their device-days and balance, and the exports, as the API serves them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from api.models_sites import (
    BalanceOut,
    BalanceRowOut,
    DeviceDayOut,
    DeviceDaysOut,
    SiteOut,
    SitesOut,
)
from api.problems import ProblemError
from api.read_pool import FairPool
from collector.db.connection import Connection
from collector.settlement.balance import BalanceError, site_balance
from collector.settlement.days import DeviceDay, device_days, site_devices
from collector.settlement.export import ExportRequest, Manifest, csv_chunks, export_rows
from collector.settlement.parquet import parquet_chunks
from collector.settlement.sites import Site, Sites


def site_of(sites: Sites, site_id: str) -> Site:
    site = sites.get(site_id)
    if site is None:
        raise ProblemError(404, f"no site {site_id!r} (SITES_FILE)")
    return site


async def members(conn: Connection, site: Site) -> list[str]:
    """The site's member meters that have reported (not its main meter)."""
    return [
        d for kind, d in await site_devices(conn, site) if d != site.main_meter and kind == "meter"
    ]


async def sites_out(conn: Connection, sites: Sites) -> SitesOut:
    out = []
    for s in sites.sites:
        devices = [d for _, d in await site_devices(conn, s) if d != s.main_meter]
        out.append(
            SiteOut(
                id=s.id,
                name=s.label,
                tz=s.tz,
                mainMeter=s.main_meter,
                members=list(s.members),
                devices=devices,
                pricePerKwh=s.price_per_kwh,
                currency=s.currency,
                lossTolerancePct=s.loss_tolerance_pct,
            )
        )
    return SitesOut(sites=out)


async def balance(
    conn: Connection, site: Site, *, start: datetime, end: datetime, bucket: str
) -> BalanceOut:
    if end <= start:
        raise ProblemError(422, "to must be after from")
    meters = await members(conn, site)
    try:
        rows = await site_balance(
            conn,
            site,
            meters,
            start=start,
            end=end,
            bucket="day" if bucket == "day" else "hour",
        )
    except BalanceError as exc:
        raise ProblemError(422, str(exc)) from None
    tolerance = site.loss_tolerance_pct / 100
    assert site.main_meter is not None
    return BalanceOut(
        siteId=site.id,
        tz=site.tz,
        bucket=bucket,
        mainMeter=site.main_meter,
        members=meters,
        rows=[
            BalanceRowOut(
                start=r.start,
                end=r.end,
                mainKwh=r.main_kwh,
                membersKwh=r.members_kwh,
                untrackedKwh=r.untracked_kwh,
                untrackedRatio=r.untracked_ratio,
                mainCoverage=r.main_coverage,
                membersCoverage=r.members_coverage,
                complete=r.complete,
                overTolerance=r.complete and (r.untracked_ratio or 0.0) > tolerance,
            )
            for r in rows
        ],
    )


async def days(
    conn: Connection, sites: Sites, site: Site, *, first: date, last: date, tz: str | None
) -> DeviceDaysOut:
    if last < first:
        raise ProblemError(422, "to must be after from")
    if (last - first).days > 92:
        raise ProblemError(422, "at most 93 days; the exports take longer windows")
    rows = [_day_out(d) async for d in device_days(conn, sites, first, last, site=site, tz=tz)]
    return DeviceDaysOut(siteId=site.id, tz=tz or site.tz, days=rows)


async def device_daily(
    conn: Connection, sites: Sites, kind: str, device: str, *, days: int
) -> tuple[str, list[DeviceDayOut]]:
    """A device's last ``days`` local days (its site's zone, UTC without one), oldest
    first: what its dashboard page shows."""
    site = sites.of(device)
    zone = site.tz if site else "UTC"
    today = datetime.now(ZoneInfo(zone)).date()
    rows = [
        _day_out(d)
        async for d in device_days(
            conn, sites, today - timedelta(days=days - 1), today, tz=zone,
            devices={kind: [device]},
        )
    ]  # fmt: skip
    return zone, rows


def _day_out(d: DeviceDay) -> DeviceDayOut:
    return DeviceDayOut(
        kind=d.kind,
        deviceId=d.device_id,
        day=d.day,
        start=d.start,
        end=d.end,
        kwh=d.kwh,
        readings=d.readings,
        coverage=d.coverage,
        gapMinutes=d.gap_minutes,
        resets=d.resets,
        quarantined=d.quarantined,
        replaced=d.replaced,
        provisional=d.provisional,
        cost=d.cost,
        currency=d.currency,
    )


async def export_stream(
    pool: FairPool, sites: Sites, request: ExportRequest, manifest: Manifest, fmt: str
) -> AsyncIterator[bytes]:
    """The export's CSV (or Parquet), streamed a chunk at a time on one connection of the
    read pool."""
    async with pool.acquire() as conn:
        rows = export_rows(conn, sites, request)
        chunks = parquet_chunks(manifest, rows) if fmt == "parquet" else csv_chunks(manifest, rows)
        async for chunk in chunks:
            yield chunk
