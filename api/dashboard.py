"""The operator dashboard: server-rendered pages over the API's own reports.

Every figure comes from ``api.reports`` (the models the JSON endpoints return), rendered
with Jinja2; the only JavaScript (refresh, charts with the vendored uPlot) ships in
``api/static``. Read-only. When read tokens are configured the pages want one too: as a
bearer header, or typed once into the login form, which keeps it in an HttpOnly cookie.
"""

from __future__ import annotations

import asyncio
import functools
import zoneinfo
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlencode

import asyncpg
import structlog
from jinja2 import pass_context
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from api import fleet_table, sessions
from api.context import context, device_id
from api.policy import PolicyError
from api.problems import ProblemError
from api.reports import alerts as alerts_report
from api.reports import analytics as analytics_report
from api.reports import charging as charging_report
from api.reports import links as links_report
from api.reports import sites as sites_report
from api.reports import status as status_report
from collector.alerts.rules import AlertRule, load_rules
from collector.errors import CollectorError
from collector.settings import Settings

log = structlog.get_logger("api.dashboard")

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
#: The cookie holds a session id (api/sessions.py), never the read token.
COOKIE = "energy_collector_session"
FRAGMENT_HEADER = "x-dashboard-fragment"
#: Window choices of the device pages: (label, length, series bucket).
WINDOWS = {
    "6h": (timedelta(hours=6), "15m"),
    "24h": (timedelta(hours=24), "1h"),
    "7d": (timedelta(days=7), "3h"),
    "30d": (timedelta(days=30), "12h"),
}
#: Firing alerts listed on the fleet page (worst first; the count says how many in all).
FIRING_SHOWN = 10
#: A device page's alert history, newest first.
ALERT_HISTORY = 20
HEADERS = {
    # Everything the pages load is ours; no inline scripts or styles.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


# --- formatting (Jinja filters) -------------------------------------------------------------


def fmt_number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def fmt_age(seconds: float | None) -> str:
    """'42 s', '5 min', '3 h 10 min', '2 d'; 'never' for a device that never reported."""
    if seconds is None:
        return "never"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def fmt_time(value: datetime | None, zone: tzinfo = UTC) -> str:
    """A stored time in the page's zone (DISPLAY_TIME_ZONE), 24-hour, with the zone's
    abbreviation. Never fails on what the database holds: a time so early that the driver
    returns it without a zone (a link stored before links were bounded, year 1) is shown as
    it is."""
    if value is None:
        return "–"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(zone)
    except (OverflowError, ValueError):
        return value.isoformat()
    return f"{value.year:04d}-{value:%m-%d %H:%M:%S} {value.tzname()}"  # %Y: no padding


#: The unit of a threshold rule's value, by the field it watches.
FIELD_UNITS = {"batteryTemp": "°C", "voltage": "V", "soc": "%"}


#: An alert's value, by its rule's kind (a threshold's: its field's unit).
_VALUE_FORMATS: dict[str, Callable[[float], str]] = {
    "silent": lambda v: f"silent {fmt_age(v)}",
    "charger_offline": lambda v: f"silent {fmt_age(v)}",
    "site_imbalance": lambda v: f"{100 * v:.1f} % untracked",
    "efficiency": lambda v: f"{v:.3f} DC/AC",
    "register": lambda v: f"{v:,.0f} event{'s' if v != 1 else ''}",
}


def fmt_alert_value(value: float | None, rule: AlertRule | None) -> str:
    """An alert's value with its unit, by its rule's kind: a silence is a duration, an
    efficiency a DC/AC ratio, a register rule a count, a threshold its field's unit."""
    if value is None:
        return "–"
    if rule is None:  # a rule no longer in the rules file
        return fmt_number(value, 3)
    by_kind = _VALUE_FORMATS.get(rule.kind)
    if by_kind is not None:
        return by_kind(value)
    field = rule.field or ""
    unit = FIELD_UNITS.get(field, "kWh" if "kwh" in field.lower() else "")
    return f"{value:,.1f} {unit}".rstrip()


@pass_context
def _alert_value(context: Any, alert: Any) -> str:
    return fmt_alert_value(alert.value, (context.get("rules") or {}).get(alert.rule))


@pass_context
def _time_in_page_zone(context: Any, value: datetime | None) -> str:
    return fmt_time(value, context.get("zone") or UTC)


TEMPLATES.env.filters.update(
    number=fmt_number,
    ratio=fmt_ratio,
    age=fmt_age,
    time=_time_in_page_zone,
    alert_value=_alert_value,
    label=lambda s: s.replace("_", " "),
)


# --- access ---------------------------------------------------------------------------------


async def _authorized(request: Request) -> bool:
    ctx = context(request)
    auth = ctx.auth
    if not auth.enabled("read"):
        return True
    if request.headers.get("authorization"):
        auth.check(request, "read")  # a wrong header is an error, not a login page
        return True
    session_id = request.cookies.get(COOKIE, "")
    if not session_id:
        return False
    if sessions.is_signed(session_id):
        if not ctx.role.in_recovery:  # signed sessions are a replica's; a primary has rows
            return False
        return auth.accepts_digest(
            "read", sessions.signed_session_token(session_id, auth.tokens("read"))
        )
    async with ctx.pool.acquire() as conn:
        token = await sessions.session_token(conn, session_id)
    return auth.accepts_digest("read", token)


def _safe_next(target: str) -> str:
    """Only our own pages: never redirect to another site after login."""
    return target if target.startswith("/dashboard") and "//" not in target else "/dashboard"


def page(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """A dashboard page: token check, security headers, and a page (not a blank screen or
    a JSON problem) when something fails."""

    async def wrapped(request: Request) -> Response:
        try:
            if not await _authorized(request):
                if request.headers.get(FRAGMENT_HEADER):
                    return _render(request, "message.html", {"title": "Signed out"}, status=401)
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(
                    "/dashboard/login?" + urlencode({"next": target}), status_code=303
                )
            return await handler(request)
        except ProblemError as exc:
            if exc.status in (401, 403):
                raise
            return _render(
                request, "message.html", {"title": exc.title, "detail": exc.detail}, exc.status
            )
        except PolicyError as exc:
            refused = ProblemError(422, str(exc))
            return _render(
                request, "message.html", {"title": refused.title, "detail": str(exc)}, 422
            )
        except DATABASE_ERRORS as exc:
            log.warning("dashboard.database_error", path=request.url.path, error=repr(exc))
            return _render(
                request,
                "message.html",
                {
                    "title": "Database unreachable",
                    "detail": _database_problem(exc),
                    "database_down": True,
                },
                503,
            )

    return wrapped


def _database_problem(exc: Exception) -> str:
    if isinstance(exc, asyncpg.QueryCanceledError):
        return "the query took longer than API_STATEMENT_TIMEOUT_MS and was cancelled"
    if isinstance(exc, TimeoutError):
        return "no connection to the database within the timeout"
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


_RULES: dict[tuple[bool, str | None], dict[str, AlertRule]] = {}


def _rules(settings: Settings) -> dict[str, AlertRule]:
    """The alert rules in force, by name (for their units); read once. None when they
    cannot be read here (the collector itself refuses to start with a bad file)."""
    key = (settings.alerts_enabled, settings.alert_rules_file)
    if key not in _RULES:
        try:
            rules = load_rules(settings) if settings.alerts_enabled else ()
        except CollectorError as exc:
            log.warning("dashboard.rules_unreadable", error=str(exc))
            rules = ()
        _RULES[key] = {r.name: r for r in rules}
    return _RULES[key]


@functools.cache
def _zone(name: str) -> tzinfo:
    return UTC if name == "UTC" else zoneinfo.ZoneInfo(name)


def _render(request: Request, template: str, data: dict[str, Any], status: int = 200) -> Response:
    ctx = context(request)
    fragment = bool(request.headers.get(FRAGMENT_HEADER))
    data = {
        "fragment": fragment,
        "now": datetime.now(UTC),
        "refresh_s": ctx.settings.dashboard_refresh_s,
        "signed_in": ctx.auth.enabled("read") and bool(request.cookies.get(COOKIE)),
        "version": ctx.version,
        "zone": _zone(ctx.settings.display_time_zone),
        "zone_name": ctx.settings.display_time_zone,
        "rules": _rules(ctx.settings),
        **data,
    }
    response = TEMPLATES.TemplateResponse(request, template, data, status_code=status)
    response.headers.update(HEADERS)
    return response


def _window(request: Request) -> tuple[str, datetime, datetime, str]:
    choice = request.query_params.get("window", "24h")
    if choice not in WINDOWS:
        raise ProblemError(400, f"window must be one of {', '.join(WINDOWS)}")
    length, bucket = WINDOWS[choice]
    end = datetime.now(UTC)
    return choice, end - length, end, bucket


# --- pages ----------------------------------------------------------------------------------


async def fleet_page(request: Request) -> Response:
    ctx = context(request)
    params = request.query_params
    show = params.get("show", "all")
    sort = params.get("sort", "status")
    if show not in fleet_table.FILTERS:
        raise ProblemError(400, f"show must be one of {', '.join(fleet_table.FILTERS)}")
    if sort not in fleet_table.SORTS:
        raise ProblemError(400, f"sort must be one of {', '.join(fleet_table.SORTS)}")
    try:
        page_number = int(params.get("page", "1"))
    except ValueError:
        raise ProblemError(400, "page must be a whole number") from None
    silent_minutes = ctx.settings.dashboard_silent_minutes
    view = await ctx.fleet.get()
    async with ctx.pool.acquire() as conn:
        alerts = await alerts_report.open_alerts(conn, state="firing", limit=FIRING_SHOWN)
        alert_counts = await alerts_report.rule_counts(conn, "firing")
    descending = params.get("order", "asc") == "desc"
    table = view.table(
        show=show,
        search=params.get("q", ""),
        sort=sort,
        descending=descending,
        page=page_number,
    )

    def link(**changes: Any) -> str:
        state = {
            "show": show,
            "q": params.get("q", ""),
            "sort": sort,
            "order": "desc" if descending else "asc",
            "page": table.page,
        }
        state.update(changes)
        defaults = {"show": "all", "q": "", "sort": "status", "order": "asc", "page": 1}
        query = {k: v for k, v in state.items() if v != defaults[k]}
        return "/dashboard" + (f"?{urlencode(query)}" if query else "")

    def sort_link(key: str) -> str:
        flip = key == sort and not descending
        return link(sort=key, order="desc" if flip else "asc", page=1)

    return _render(
        request,
        "fleet_live.html" if request.headers.get(FRAGMENT_HEADER) else "fleet.html",
        {
            "summary": view.report.summary,
            "alerts": alerts,
            "alert_counts": alert_counts,
            "table": table,
            "counts": view.counts,
            "silent_meters": view.silent_meters,
            "as_of": view.as_of,
            "silent_minutes": silent_minutes,
            "show": show,
            "search": params.get("q", ""),
            "sort": sort,
            "descending": descending,
            "link": link,
            "sort_link": sort_link,
            "filters": fleet_table.FILTERS,
            "efficiency_low": ctx.settings.efficiency_low,
            "sites": ctx.sites.sites,
        },
    )


async def vehicle_page(request: Request) -> Response:
    ctx = context(request)
    vehicle = device_id(request, "vehicleId")
    choice, start, end, bucket = _window(request)
    async with ctx.pool.acquire() as conn:
        history = await links_report.links(conn, vehicle)  # 404 for an unknown vehicle
        status = await status_report.vehicle_status_if_any(conn, vehicle)
        perf = await analytics_report.performance(conn, ctx.settings, vehicle, start, end)
        series = await analytics_report.series(
            conn, ctx.settings, vehicle, start, end, bucket=bucket
        )
        registers = None
        if status is not None:
            registers = (
                await analytics_report.vehicle_analytics(conn, vehicle, start, end)
            ).registers
        alerts = await alerts_report.device_alerts(conn, "vehicle", vehicle, limit=ALERT_HISTORY)
        charged = await _sessions(conn, vehicle=vehicle)
        zone, daily = await sites_report.device_daily(
            conn, ctx.sites, "vehicle", vehicle, days=DAYS_SHOWN
        )
    chart = {
        "kind": "vehicle",
        "t": [p.bucketStart.timestamp() for p in series.points],
        "ac": [p.kwhConsumedAc for p in series.points],
        "dc": [p.kwhDeliveredDc for p in series.points],
        "efficiency": [p.efficiencyRatio for p in series.points],
        "socAvg": [p.socAvg for p in series.points],
        "socMin": [p.socMin for p in series.points],
        "socMax": [p.socMax for p in series.points],
        "tempAvg": [p.batteryTempAvg for p in series.points],
        "tempMax": [p.batteryTempMax for p in series.points],
        "efficiencyLow": ctx.settings.efficiency_low,
        "zone": ctx.settings.display_time_zone,
    }
    return _render(
        request,
        "vehicle.html",
        {
            "vehicle_id": vehicle,
            "sessions": charged,
            "daily": daily,
            "daily_zone": zone,
            "status": status,
            "links": history,
            "perf": perf,
            "registers": registers,
            "alerts": alerts,
            "series": series,
            "chart": chart,
            "window": choice,
            "windows": WINDOWS,
            "silent": fleet_table.is_silent(
                status.ageSeconds if status else None, ctx.settings.dashboard_silent_minutes * 60
            ),
        },
    )


async def meter_page(request: Request) -> Response:
    ctx = context(request)
    meter = device_id(request, "meterId")
    choice, start, end, bucket = _window(request)
    async with ctx.pool.acquire() as conn:
        history = await links_report.meter_links(conn, meter)  # 404 for an unknown meter
        analytics = None
        series = None
        if await status_report.meter_has_reported(conn, meter):
            analytics = await analytics_report.meter_analytics(conn, meter, start, end)
            series = await analytics_report.meter_series(conn, meter, start, end, bucket)
        alerts = await alerts_report.device_alerts(conn, "meter", meter, limit=ALERT_HISTORY)
        charged = await _sessions(conn, meter=meter)
        zone, daily = await sites_report.device_daily(
            conn, ctx.sites, "meter", meter, days=DAYS_SHOWN
        )
    chart = None
    if series is not None:
        chart = {
            "kind": "meter",
            "t": [p.bucketStart.timestamp() for p in series.points],
            "ac": [p.kwhConsumedAc for p in series.points],
            "voltageAvg": [p.voltageAvg for p in series.points],
            "voltageMin": [p.voltageMin for p in series.points],
            "voltageMax": [p.voltageMax for p in series.points],
            "zone": ctx.settings.display_time_zone,
        }
    current = analytics.current if analytics else None
    return _render(
        request,
        "meter.html",
        {
            "meter_id": meter,
            "sessions": charged,
            "daily": daily,
            "daily_zone": zone,
            "site": ctx.sites.of(meter),
            "links": history,
            "alerts": alerts,
            "analytics": analytics,
            "series": series,
            "chart": chart,
            "window": choice,
            "windows": WINDOWS,
            "silent": fleet_table.is_silent(
                current.ageSeconds if current else None,
                ctx.settings.dashboard_silent_minutes * 60,
            ),
        },
    )


SESSIONS_SHOWN = 50
#: Local days of daily energy on the site and device pages.
DAYS_SHOWN = 14


async def site_page(request: Request) -> Response:
    """A site: its members' daily energy in its zone and cost, the balance of the last 24
    hours, its chargers' sessions, and links to export it all."""
    ctx = context(request)
    site = sites_report.site_of(ctx.sites, request.path_params["siteId"])
    today = datetime.now(zoneinfo.ZoneInfo(site.tz)).date()
    first = today - timedelta(days=DAYS_SHOWN - 1)
    async with ctx.pool.acquire() as conn:
        members = await sites_report.members(conn, site)
        found = await sites_report.days(conn, ctx.sites, site, first=first, last=today, tz=None)
        balance = None
        if site.main_meter:
            now = datetime.now(UTC)
            balance = await sites_report.balance(
                conn, site, start=now - timedelta(hours=24), end=now, bucket="hour"
            )
        charged = await charging_report.sessions(
            conn, start=None, end=None, charger=None, id_tag=None, vehicle=None, state=None,
            limit=SESSIONS_SHOWN, meters=members,
        )  # fmt: skip
    days: dict[Any, Any] = {}
    for d in found.days:  # the members' days, summed
        if d.deviceId == site.main_meter:
            continue
        day = days.setdefault(d.day, {"day": d.day, "kwh": 0.0, "coverage": 1.0,
                                      "gapMinutes": 0, "resets": 0, "quarantined": 0,
                                      "replaced": 0, "provisional": False, "cost": None,
                                      "currency": site.currency})  # fmt: skip
        day["kwh"] += d.kwh
        day["coverage"] = min(day["coverage"], d.coverage)
        day["gapMinutes"] = max(day["gapMinutes"], d.gapMinutes)
        day["resets"] += d.resets
        day["quarantined"] += d.quarantined
        day["replaced"] += d.replaced
        day["provisional"] = day["provisional"] or d.provisional
        if d.cost is not None:
            day["cost"] = (day["cost"] or 0.0) + d.cost
    rows = [SimpleNamespace(**v) for _, v in sorted(days.items())]
    return _render(
        request,
        "site.html",
        {
            "site": site,
            "members": members,
            "days": rows,
            "total_kwh": sum(r.kwh for r in rows),
            "total_cost": sum(r.cost or 0.0 for r in rows),
            "balance": balance,
            "sessions": charged.sessions,
            "export_query": urlencode(
                {
                    "from": first.isoformat(),
                    "to": (today + timedelta(days=1)).isoformat(),
                    "site": site.id,
                }
            ),
        },
    )


async def _sessions(conn: Any, *, meter: str | None = None, vehicle: str | None = None) -> Any:
    """A device's latest charging sessions (OCPP), newest first."""
    found = await charging_report.sessions(
        conn, start=None, end=None, charger=None, id_tag=None, vehicle=vehicle, state=None,
        limit=SESSIONS_SHOWN, meter=meter,
    )  # fmt: skip
    return found.sessions


async def chargers_page(request: Request) -> Response:
    """OCPP chargers: connection, identity, each connector's status; the latest sessions."""
    ctx = context(request)
    async with ctx.pool.acquire() as conn:
        chargers = await charging_report.chargers(conn, ctx.settings.ocpp_heartbeat_s)
        recent = await _sessions(conn)
    address = ctx.settings.ocpp_address
    return _render(
        request,
        "chargers.html",
        {
            "chargers": chargers.chargers,
            "connected": sum(c.connected for c in chargers.chargers),
            "sessions": recent,
            "port": address[1] if address else None,
        },
    )


ALERT_STATES = ("open", "firing", "pending", "resolved")
ALERT_SEVERITIES = ("critical", "warning", "info")
ALERTS_LISTED = 200


async def alerts_page(request: Request) -> Response:
    """Every alert by state, rule, severity and device; what needs action first. The
    acknowledge and silence buttons call the API with the write token (dashboard.js)."""
    ctx = context(request)
    params = request.query_params
    state = params.get("state", "open")
    severity = params.get("severity") or None
    rule = params.get("rule") or None
    device = (params.get("device") or "").strip() or None
    if state not in ALERT_STATES:
        raise ProblemError(400, f"state must be one of {', '.join(ALERT_STATES)}")
    if severity is not None and severity not in ALERT_SEVERITIES:
        raise ProblemError(400, f"severity must be one of {', '.join(ALERT_SEVERITIES)}")
    async with ctx.pool.acquire() as conn:
        alerts = await alerts_report.open_alerts(
            conn, state=state, rule=rule, severity=severity, device_id=device, limit=ALERTS_LISTED
        )
        counts = await alerts_report.rule_counts(conn, state)
    rule_names = sorted({*_rules(ctx.settings), *(c.rule for c in counts)})
    return _render(
        request,
        "alerts.html",
        {
            "alerts": alerts,
            "counts": counts,
            "state": state,
            "severity": severity,
            "rule": rule,
            "device": device or "",
            "states": ALERT_STATES,
            "severities": ALERT_SEVERITIES,
            "rule_names": rule_names,
            "write_token_needed": ctx.auth.enabled("ingest"),
        },
    )


async def login_page(request: Request) -> Response:
    ctx = context(request)
    target = _safe_next(request.query_params.get("next", "/dashboard"))
    if request.method == "GET":
        return _render(request, "login.html", {"next": target, "enabled": ctx.auth.enabled("read")})
    body = await request.body()
    if len(body) > 4096:
        raise ProblemError(413, "a login form is small (at most 4096 bytes)")
    form = parse_qs(body.decode("utf-8", "replace"))
    token = form.get("token", [""])[0].strip()
    target = _safe_next(form.get("next", [target])[0])
    if not ctx.auth.accepts("read", token):
        await asyncio.sleep(0.5)  # slow down guessing
        return _render(
            request,
            "login.html",
            {"next": target, "enabled": True, "error": "That token may not read."},
            status=401,
        )
    try:
        lifetime = sessions.SESSION_LIFETIME
        if ctx.role.in_recovery:  # a read replica: no session row can be written
            session_id = sessions.signed_session(token)
            lifetime = sessions.SIGNED_LIFETIME
        else:
            async with ctx.pool.acquire() as conn:
                session_id = await sessions.open_session(conn, token)
    except DATABASE_ERRORS as exc:
        log.warning("dashboard.database_error", path=request.url.path, error=repr(exc))
        return _render(
            request,
            "message.html",
            {"title": "Database unreachable", "detail": _database_problem(exc)},
            503,
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(lifetime.total_seconds()),
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    """Sign out: the session ends on the server, so a copy of the cookie opens nothing."""
    session_id = request.cookies.get(COOKIE, "")
    if session_id and not sessions.is_signed(session_id):
        try:
            async with context(request).pool.acquire() as conn:
                await sessions.end_session(conn, session_id)
        except DATABASE_ERRORS as exc:
            log.warning("dashboard.logout_failed", error=repr(exc))
            return _render(
                request,
                "message.html",
                {"title": "Database unreachable", "detail": "could not sign you out; try again"},
                503,
            )
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


ROUTES = [
    Route("/dashboard", page(fleet_page), methods=["GET"]),
    Route("/dashboard/alerts", page(alerts_page), methods=["GET"]),
    Route("/dashboard/chargers", page(chargers_page), methods=["GET"]),
    Route("/dashboard/sites/{siteId}", page(site_page), methods=["GET"]),
    Route("/dashboard/vehicles/{vehicleId}", page(vehicle_page), methods=["GET"]),
    Route("/dashboard/meters/{meterId}", page(meter_page), methods=["GET"]),
    Route("/dashboard/login", login_page, methods=["GET", "POST"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
]
