"""Chargers (OCPP) and their charging sessions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.context import context, reply
from api.endpoints import Endpoint, PathParam, Reply, parse_query
from api.models_charging import Charger, Chargers, SessionDetail, SessionQuery, Sessions
from api.problems import ProblemError
from api.reports import charging as reports
from api.routes.common import BAD_REQUEST, UNAUTHORIZED
from collector.sources.ocpp.naming import CHARGER_ID

CHARGER = PathParam(
    "chargerId", "a charger id", {"type": "string", "pattern": CHARGER_ID.pattern, "maxLength": 60}
)
SESSION_ID = PathParam(
    "sessionId", "a session's id", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
)


async def list_sessions(request: Request) -> Response:
    query = parse_query(request, SessionQuery)
    async with context(request).pool.acquire() as conn:
        return reply(
            await reports.sessions(
                conn, start=query.from_, end=query.to, charger=query.charger,
                id_tag=query.idTag, vehicle=query.vehicle, state=query.state, limit=query.limit,
            )
        )  # fmt: skip


async def get_session(request: Request) -> Response:
    raw = request.path_params["sessionId"]
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise ProblemError(400, f"invalid sessionId {raw!r}: a positive whole number")
    async with context(request).pool.acquire() as conn:
        return reply(await reports.session(conn, int(raw)))


async def list_chargers(request: Request) -> Response:
    ctx = context(request)
    async with ctx.pool.acquire() as conn:
        return reply(await reports.chargers(conn, ctx.settings.ocpp_heartbeat_s))


async def get_charger(request: Request) -> Response:
    charger_id = request.path_params["chargerId"]
    if not CHARGER_ID.fullmatch(charger_id):
        raise ProblemError(400, f"invalid chargerId {charger_id!r}")
    ctx = context(request)
    async with ctx.pool.acquire() as conn:
        return reply(await reports.charger(conn, charger_id, ctx.settings.ocpp_heartbeat_s))


NOT_FOUND = {404: Reply("not found")}
ENDPOINTS = [
    Endpoint(
        method="GET",
        path="/v1/sessions",
        handler=list_sessions,
        summary="Charging sessions (OCPP), newest first",
        tag="charging",
        role="read",
        responses={
            200: Reply("the sessions", Sessions),
            **BAD_REQUEST,
            **UNAUTHORIZED,
            422: Reply("to is not after from"),
        },
        description="Each session carries two energy figures: `kwh`, booked from the "
        "connector's register history inside the session (resets, glitches and replays "
        "booked exactly), and `kwhCharger`, the charger's own meterStop - meterStart.",
        query=SessionQuery,
    ),
    Endpoint(
        method="GET",
        path="/v1/sessions/{sessionId}",
        handler=get_session,
        summary="A charging session with its meter values and signed data",
        tag="charging",
        role="read",
        responses={
            200: Reply("the session", SessionDetail),
            **BAD_REQUEST,
            **UNAUTHORIZED,
            **NOT_FOUND,
        },
        path_params=(SESSION_ID,),
    ),
    Endpoint(
        method="GET",
        path="/v1/chargers",
        handler=list_chargers,
        summary="Chargers known over OCPP, with their connectors' status",
        tag="charging",
        role="read",
        responses={200: Reply("the chargers", Chargers), **UNAUTHORIZED},
    ),
    Endpoint(
        method="GET",
        path="/v1/chargers/{chargerId}",
        handler=get_charger,
        summary="One charger: identity from its boot, connection, connectors",
        tag="charging",
        role="read",
        responses={200: Reply("the charger", Charger), **BAD_REQUEST, **UNAUTHORIZED, **NOT_FOUND},
        path_params=(CHARGER,),
    ),
]
