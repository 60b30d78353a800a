"""The Starlette application: routes from the endpoint descriptions, a read pool of its own.

Reads use their own connection pool (with a statement timeout), so a heavy query never
starves the writer. In the collector process the app also gets the HTTP ingest source and
the daemon's health; on its own (``energy-collector api``) it only reads.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import structlog
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from api import dashboard
from api.auth import TokenAuth
from api.context import ApiContext
from api.endpoints import Endpoint, build_openapi
from api.fleet_view import FleetViews
from api.guard import WriteGuard
from api.problems import EXCEPTION_HANDLERS
from api.read_pool import FairPool
from api.replica import DatabaseRole, is_recovery_conflict
from api.routes import alerts, analytics, charging, links, registers, sites, status, system
from api.routes import ingest as ingest_routes
from api.routes import sources as source_routes
from collector.health import DaemonHealth
from collector.ingest.streams import STREAMS
from collector.settings import Settings
from collector.settlement.sites import load_sites
from collector.sources.http.source import HttpIngest
from collector.sources.mappings.preview import SourcesDesk

log = structlog.get_logger("api")
STATIC = Path(__file__).parent / "static"
ENDPOINTS: list[Endpoint] = [
    *status.ENDPOINTS,
    *links.ENDPOINTS,
    *registers.ENDPOINTS,
    *analytics.ENDPOINTS,
    *alerts.ENDPOINTS,
    *charging.ENDPOINTS,
    *sites.ENDPOINTS,
    *source_routes.ENDPOINTS,
    *ingest_routes.ENDPOINTS,
    *system.ENDPOINTS,
]
#: The same endpoints, the busiest first: Starlette tries the routes in order, a regular
#: expression each, and matching took 9 % of a single-reading ingest when ingest came
#: after 25 others (bench/http.py's profile).
ROUTE_ORDER: list[Endpoint] = [
    *ingest_routes.ENDPOINTS,
    *status.ENDPOINTS,
    *(ep for ep in ENDPOINTS if ep not in (*ingest_routes.ENDPOINTS, *status.ENDPOINTS)),
]
DESCRIPTION = (
    "Device status, 24-hour analytics (AC in vs DC out, efficiency DC/AC, battery "
    "temperature), alerts, vehicle-meter links and HTTP ingest. Errors are RFC 9457 problem "
    "details. Bearer tokens are required only when configured (READ_TOKENS, INGEST_TOKENS)."
)


def version() -> str:
    try:
        return importlib.metadata.version("energy-collector")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def openapi_document() -> dict:
    doc = build_openapi(
        ENDPOINTS, title="energy-collector", version=version(), description=DESCRIPTION
    )
    for stream in STREAMS.values():  # the payloads, named as the readings they become
        schema = stream.payload.json_schema(ref_template="#/components/schemas/{model}")
        doc["components"]["schemas"][stream.model.__name__] = schema
    return doc


def _routes(endpoints: list[Endpoint], auth: TokenAuth) -> list[Route]:
    """One route per path, dispatching by method (so a 405 lists every allowed method)."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for ep in endpoints:
        by_path.setdefault(ep.path, {})[ep.method] = ep
    routes = []
    for path, methods in by_path.items():

        async def endpoint(request: Request, methods: dict[str, Endpoint] = methods) -> Response:
            ep = methods[request.method if request.method != "HEAD" else "GET"]
            auth.check(request, ep.role)
            if ep.method != "GET":
                return await ep.handler(request)
            try:
                return await ep.handler(request)
            except Exception as exc:
                if not is_recovery_conflict(exc):
                    raise
                # A standby cancelled the read to go on replaying; once more, then 503.
                log.info("api.recovery_conflict_retry", path=request.url.path)
                return await ep.handler(request)

        routes.append(Route(path, endpoint, methods=list(methods)))
    return routes


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The read pool's reset on release: only a rollback, if a transaction was left open.

    asyncpg's default (advisory unlocks, CLOSE ALL, UNLISTEN *, RESET ALL) is one more round
    trip per request, as long as a primary-key read itself (bench/http.py's profile), and
    the API changes no session state: no SET, no LISTEN, no advisory lock, no cursor
    outliving its transaction.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_read_pool(settings: Settings) -> FairPool:
    pool = await asyncpg.create_pool(
        settings.database_url.get_secret_value(),
        min_size=0,
        max_size=settings.api_pool_size,
        reset=_keep_session,
        command_timeout=settings.api_statement_timeout_ms / 1000 + 5,
        server_settings={
            "application_name": "energy-collector-api",
            "statement_timeout": str(settings.api_statement_timeout_ms),
            "jit": "off",
            "timezone": "UTC",
            # The default (generic plans after five executions): one device's queries are
            # planned once; re-planning them took more than their execution (per-vehicle
            # performance 1.46 ms instead of 0.70 ms, 0.8 ms of it planning). The fleet-wide
            # statements plan each execution themselves (api/queries/analytics.py).
        },
    )
    return FairPool(pool, settings.api_pool_size)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(
    settings: Settings,
    *,
    ingest: HttpIngest | None = None,
    daemon_health: Callable[[], DaemonHealth] | None = None,
    registry: CollectorRegistry | None = None,
    sources: SourcesDesk | None = None,
) -> Starlette:
    """The API application. Its lifespan opens (and closes) the read pool."""
    auth = TokenAuth(read=settings.read_token_list, ingest=settings.ingest_token_list)
    document = openapi_document()
    sites = load_sites(settings)  # checked: a bad SITES_FILE stops the start with one line

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, ApiContext]]:
        if not _is_loopback(settings.host) and not (
            auth.enabled("read") and auth.enabled("ingest")
        ):
            log.warning(
                "api.open_to_network",
                host=settings.host,
                hint="set READ_TOKENS and INGEST_TOKENS to require bearer tokens",
            )
        pool = await create_read_pool(settings)
        fleet = FleetViews(pool, settings)
        role = DatabaseRole()
        try:
            async with pool.acquire(timeout=5) as conn:
                await role.refresh(conn)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Not reachable yet, or the connection dropped (a server shutting down closes
            # it mid-query): /health tells, and learns the role once it is. Never fail the
            # start for it: the collector would stop with its HTTP server.
            log.warning(
                "api.database_unreachable", database=settings.database_where, error=repr(exc)
            )
        if role.in_recovery:
            log.info("api.read_replica", hint="writes are answered 503; send them to the primary")
        try:
            yield {
                "ctx": ApiContext(
                    settings=settings,
                    pool=pool,
                    auth=auth,
                    registry=registry or CollectorRegistry(),
                    ingest=ingest,
                    daemon_health=daemon_health,
                    openapi=document,
                    version=version(),
                    fleet=fleet,
                    role=role,
                    sources=sources,
                    sites=sites,
                )
            }
        finally:
            await fleet.close()
            await pool.close()

    routes: list[BaseRoute] = [*_routes(ROUTE_ORDER, auth), *dashboard.ROUTES]
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            # Outermost first: a request for another host name (DNS rebinding) or a write
            # from another site is refused before it reaches a route (api/guard.py).
            Middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_host_list)),
            Middleware(WriteGuard, allowed_origins=settings.allowed_origin_list),
            Middleware(GZipMiddleware, minimum_size=2048),
        ],
    )
