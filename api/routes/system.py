"""Health, metrics, the OpenAPI document and its Swagger UI."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from api.context import context, reply
from api.endpoints import Endpoint, Reply
from api.models import BufferState, Component, Health, Replication

DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>energy-collector API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/swagger-ui/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static/swagger-ui/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>"""


async def health(request: Request) -> Response:
    """Ready when the database answers and (in the collector) the broker is connected."""
    ctx = context(request)
    replication = None
    try:
        async with asyncio.timeout(2):
            async with ctx.pool.acquire() as conn:
                row = await ctx.role.refresh(conn)
        database = Component(ok=True)
        if row["in_recovery"]:
            limit = ctx.settings.replica_max_lag_s
            replication = Replication(
                lagSeconds=row["lag_s"],
                receiveLsn=row["receive_lsn"],
                replayLsn=row["replay_lsn"],
                replayBehindBytes=row["replay_behind_bytes"],
                maxLagSeconds=limit,
            )
            if row["lag_s"] is None or row["lag_s"] > limit:
                database = Component(
                    ok=False,
                    detail=f"read replica lags the primary by {row['lag_s']} s "
                    f"(REPLICA_MAX_LAG_S={limit:g})",
                    hint="check the standby's connection to the primary "
                    "(pg_stat_wal_receiver) and its replay",
                )
    except Exception as exc:  # any failure means: not ready; say which
        database = Component(ok=False, detail=f"{type(exc).__name__}: {exc}".strip(": "))
    broker = buffer = last_commit = None
    ok = database.ok
    if ctx.daemon_health is not None:
        d = ctx.daemon_health()
        broker = Component(ok=d.broker_connected, detail=d.broker_error)
        if not d.writer_ok and database.ok:
            if d.writer_permanent:
                database = Component(
                    ok=False,
                    detail=f"writes failing, and waiting will not fix it: {d.writer_error}",
                    hint=d.writer_hint,
                )
            else:
                database = Component(ok=False, detail=f"writes failing: {d.writer_error}")
        buffer = BufferState(depth=d.buffer_depth, capacity=d.buffer_capacity)
        if d.last_commit_at is not None:
            last_commit = datetime.fromtimestamp(d.last_commit_at, UTC)
        ok = database.ok and broker.ok
    if not ctx.auth.allows(request, "read"):
        # /health is open (probes carry no token); error texts name hosts, paths and users,
        # so only a reader sees them.
        database = _without_details(database)
        broker = None if broker is None else _without_details(broker)
    body = Health(
        status="ok" if ok else "unavailable",
        role="collector" if ctx.daemon_health is not None else "api",
        database=database,
        broker=broker,
        buffer=buffer,
        lastCommitAt=last_commit,
        replication=replication,
        version=ctx.version,
    )
    return reply(body, status=200 if ok else 503)


def _without_details(component: Component) -> Component:
    if component.ok:
        return component
    return Component(ok=False, detail="details for holders of a read token", hint=None)


async def live(_request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(context(request).registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return JSONResponse(context(request).openapi)


async def docs(_request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


async def root(_request: Request) -> Response:
    return RedirectResponse("/dashboard", status_code=307)


ENDPOINTS = [
    Endpoint(
        method="GET",
        path="/health",
        handler=health,
        summary="Readiness: database, broker, buffer",
        tag="system",
        role=None,
        responses={200: Reply("ready", Health), 503: Reply("not ready (see which part)", Health)},
    ),
    Endpoint(
        method="GET",
        path="/health/live",
        handler=live,
        summary="Liveness: the process answers",
        tag="system",
        role=None,
        responses={200: Reply("alive")},
    ),
    Endpoint(
        method="GET",
        path="/metrics",
        handler=metrics,
        summary="Prometheus metrics",
        tag="system",
        role="read",
        responses={
            200: Reply("text exposition format", media_type=CONTENT_TYPE_LATEST),
            401: Reply("a token is required or not valid"),
            403: Reply("token not allowed"),
        },
    ),
    Endpoint(
        method="GET",
        path="/openapi.json",
        handler=openapi,
        summary="This document",
        tag="system",
        role=None,
        responses={200: Reply("OpenAPI 3.1")},
        in_schema=False,
    ),
    Endpoint(
        method="GET",
        path="/docs",
        handler=docs,
        summary="Swagger UI",
        tag="system",
        role=None,
        responses={200: Reply("HTML", media_type="text/html")},
        in_schema=False,
    ),
    Endpoint(
        method="GET",
        path="/",
        handler=root,
        summary="Redirect to the dashboard",
        tag="system",
        role=None,
        responses={307: Reply("redirect")},
        in_schema=False,
    ),
]
