"""Sites (SITES_FILE): their device-days and balance, and the exports to bill from."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.context import context, reply
from api.endpoints import Endpoint, PathParam, Reply, parse_query
from api.models_sites import (
    BalanceOut,
    BalanceQuery,
    DaysQuery,
    DeviceDaysOut,
    ExportQuery,
    SitesOut,
)
from api.policy import PolicyError, resolve_window
from api.problems import ProblemError
from api.reports import sites as reports
from api.routes.common import BAD_REQUEST, UNAUTHORIZED
from collector.settings import known_zone
from collector.settlement.export import EXPORTS, ExportRequest, manifest_for
from collector.settlement.parquet import available as parquet_available
from collector.settlement.sites import SITE_ID

SITE = PathParam("siteId", "a site's id (SITES_FILE)", {"type": "string", "pattern": SITE_ID})
EXPORT_MAX_DAYS = 400


async def list_sites(request: Request) -> Response:
    ctx = context(request)
    async with ctx.pool.acquire() as conn:
        return reply(await reports.sites_out(conn, ctx.sites))


async def get_balance(request: Request) -> Response:
    ctx = context(request)
    site = reports.site_of(ctx.sites, request.path_params["siteId"])
    query = parse_query(request, BalanceQuery)
    try:
        start, end = resolve_window(query.from_, query.to)
    except PolicyError as exc:
        raise ProblemError(422, str(exc)) from None
    if query.bucket == "hour" and end - start > timedelta(days=93):
        raise ProblemError(422, "at most 93 days of hours; ask for bucket=day")
    async with ctx.pool.acquire() as conn:
        return reply(await reports.balance(conn, site, start=start, end=end, bucket=query.bucket))


#: Local days exports and device-days cover: as readings are (2000-2099).
FIRST_DAY, END_DAY = date(2000, 1, 2), date(2100, 1, 1)


def _days_in_range(first: date, end: date) -> None:
    for name, value in (("from", first), ("to", end)):
        if not FIRST_DAY <= value <= END_DAY:
            raise ProblemError(
                422, f"invalid {name}: days lie between {FIRST_DAY} and {END_DAY}, as readings do"
            )


def _zone(tz: str | None) -> str | None:
    if tz is None:
        return None
    try:
        return known_zone(tz)
    except ValueError as exc:
        raise ProblemError(400, f"invalid tz {tz!r}: {exc}") from None


async def get_days(request: Request) -> Response:
    ctx = context(request)
    site = reports.site_of(ctx.sites, request.path_params["siteId"])
    query = parse_query(request, DaysQuery)
    today = datetime.now(UTC).date()
    first = query.from_ or today - timedelta(days=7)
    end = query.to or today + timedelta(days=1)
    _days_in_range(first, end)
    async with ctx.pool.acquire() as conn:
        return reply(
            await reports.days(
                conn, ctx.sites, site, first=first, last=end - timedelta(days=1),
                tz=_zone(query.tz),
            )
        )  # fmt: skip


def _export_request(request: Request, export: str) -> ExportRequest:
    ctx = context(request)
    query = parse_query(request, ExportQuery)
    _days_in_range(query.from_, query.to)
    if query.to <= query.from_:
        raise ProblemError(422, "to must be after from (to is the day after the last)")
    if (query.to - query.from_).days > EXPORT_MAX_DAYS:
        raise ProblemError(422, f"at most {EXPORT_MAX_DAYS} days per export")
    site = reports.site_of(ctx.sites, query.site) if query.site else None
    if export == "site-balance" and not (site or any(s.main_meter for s in ctx.sites.sites)):
        raise ProblemError(422, "site-balance needs a site with a main_meter (SITES_FILE)")
    if export == "site-balance" and site is not None and site.main_meter is None:
        raise ProblemError(422, f"site {site.id!r} has no main_meter: there is nothing to balance")
    last = date.fromordinal(query.to.toordinal() - 1)
    return ExportRequest(export, query.from_, last, site, _zone(query.tz), bucket=query.bucket)


MEDIA = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def _format(fmt: str) -> str:
    if fmt not in MEDIA:
        raise ProblemError(400, "format is csv or parquet")
    if fmt == "parquet" and not parquet_available():
        raise ProblemError(
            501, "Parquet exports need the optional extra: pip install 'energy-collector[parquet]'"
        )
    return fmt


def export_handler(export: str, fmt: str) -> Callable[[Request], Awaitable[Response]]:
    async def get_file(request: Request) -> Response:
        ctx = context(request)
        wanted = _export_request(request, export)
        manifest = manifest_for(wanted)
        name = f"{export}-{wanted.first}-{wanted.last}.{fmt}"
        return StreamingResponse(
            reports.export_stream(ctx.pool, ctx.sites, wanted, manifest, _format(fmt)),
            media_type=MEDIA[fmt],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return get_file


def manifest_handler(export: str) -> Callable[[Request], Awaitable[Response]]:
    async def get_manifest(request: Request) -> Response:
        ctx = context(request)
        wanted = _export_request(request, export)
        manifest = manifest_for(wanted)
        fmt = _format(request.query_params.get("format", "csv"))
        async for _ in reports.export_stream(ctx.pool, ctx.sites, wanted, manifest, fmt):
            pass  # the bytes the file would have: counted and hashed
        return Response(json.dumps(manifest.as_dict()), media_type="application/json")

    return get_manifest


EXPORT_NOTE = (
    "Streamed CSV (a day at a time: bounded memory whatever the window), `from` and `to` "
    "being local days (`to` exclusive). `.manifest.json` with the same parameters gives its "
    "manifest: rows, bytes and the SHA-256 of the CSV's bytes, the window, the zone, when and "
    "by which version it was made (data that arrives in between changes both: a provisional "
    "day can)."
)
ENDPOINTS = [
    Endpoint(
        method="GET",
        path="/v1/sites",
        handler=list_sites,
        summary="The sites of SITES_FILE, with the devices that belong to each",
        tag="sites",
        role="read",
        responses={200: Reply("the sites", SitesOut), **UNAUTHORIZED},
    ),
    Endpoint(
        method="GET",
        path="/v1/sites/{siteId}/balance",
        handler=get_balance,
        summary="A site's main meter against its members, per local hour or day",
        tag="sites",
        role="read",
        responses={
            200: Reply("the balance", BalanceOut),
            **BAD_REQUEST,
            **UNAUTHORIZED,
            404: Reply("no such site"),
            422: Reply("no main meter, or the window"),
        },
        query=BalanceQuery,
        path_params=(SITE,),
    ),
    Endpoint(
        method="GET",
        path="/v1/sites/{siteId}/days",
        handler=get_days,
        summary="A site's device-days: each member's energy per local day, with coverage",
        tag="sites",
        role="read",
        responses={
            200: Reply("the device-days", DeviceDaysOut),
            **BAD_REQUEST,
            **UNAUTHORIZED,
            404: Reply("no such site"),
            422: Reply("the window"),
        },
        query=DaysQuery,
        path_params=(SITE,),
    ),
]
for _export in EXPORTS:
    ENDPOINTS += [
        Endpoint(
            method="GET",
            path=f"/v1/exports/{_export}.csv",
            handler=export_handler(_export, "csv"),
            summary=f"Export {_export} as CSV",
            tag="exports",
            role="read",
            responses={200: Reply("the CSV, streamed"), **BAD_REQUEST, **UNAUTHORIZED,
                       404: Reply("no such site"), 422: Reply("the window")},
            description=EXPORT_NOTE,
            query=ExportQuery,
        ),
        Endpoint(
            method="GET",
            path=f"/v1/exports/{_export}.parquet",
            handler=export_handler(_export, "parquet"),
            summary=f"Export {_export} as Parquet",
            tag="exports",
            role="read",
            responses={200: Reply("the Parquet file, streamed"), **BAD_REQUEST,
                       **UNAUTHORIZED, 404: Reply("no such site"), 422: Reply("the window"),
                       501: Reply("the optional parquet extra is not installed")},
            description=EXPORT_NOTE + " Parquet: typed columns, a row group per 50,000 rows.",
            query=ExportQuery,
        ),
        Endpoint(
            method="GET",
            path=f"/v1/exports/{_export}.manifest.json",
            handler=manifest_handler(_export),
            summary=f"The manifest of the {_export} export",
            tag="exports",
            role="read",
            responses={200: Reply("the manifest"), **BAD_REQUEST, **UNAUTHORIZED,
                       404: Reply("no such site"), 422: Reply("the window"),
                       501: Reply("parquet asked, and the extra is not installed")},
            description="`format=parquet` for the Parquet file's (default csv).",
            query=ExportQuery,
        ),
    ]  # fmt: skip
