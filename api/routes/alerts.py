"""Alerts: what fires now, a device's history, acknowledging, silencing (docs/alerts.md).

The collector evaluates the rules and owns every state transition; these endpoints read
the result and write what operators decide: an acknowledgement, a silence.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from api.context import context, device_id, reply
from api.endpoints import (
    Body,
    Endpoint,
    Handler,
    M,
    PathParam,
    Reply,
    bad_request,
    parse_query,
)
from api.models import (
    AcknowledgeRequest,
    Alert,
    AlertHistory,
    AlertList,
    AlertQuery,
    HistoryQuery,
    Silence,
    SilenceRequest,
    Silences,
)
from api.problems import ProblemError
from api.reports import alerts as reports
from api.routes.common import (
    BAD_REQUEST,
    DEVICE_ID,
    KIND,
    UNAUTHORIZED,
    device_kind,
    json_media_type,
)

#: ASCII digits only (str.isdigit also takes "²", which int() refuses).
_DIGITS = re.compile(r"[0-9]{1,19}")
#: Longest silence: a forgotten silence must not hide a charger's faults for good.
MAX_SILENCE = timedelta(days=90)
ALERT_ID = PathParam(
    "alertId", "an alert's id", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
)
SILENCE_ID = PathParam(
    "silenceId", "a silence's id", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
)
WRITE_REPLIES = {
    **BAD_REQUEST,
    413: Reply("body too large"),
    415: Reply("not application/json"),
    **UNAUTHORIZED,
}


def _number(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not _DIGITS.fullmatch(raw) or not 0 < int(raw) < 2**63:
        raise ProblemError(400, f"invalid {name} {raw!r}: a positive whole number")
    return int(raw)


async def _body(request: Request, model: type[M]) -> M:
    json_media_type(request, {"application/json"})
    body = await request.body()
    if len(body) > 4096:
        raise ProblemError(413, "a small JSON object is expected (at most 4096 bytes)")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc, "body") from None


async def list_alerts(request: Request) -> Response:
    q = parse_query(request, AlertQuery)
    async with context(request).pool.acquire() as conn:
        return reply(
            await reports.open_alerts(
                conn,
                state=q.state,
                rule=q.rule,
                severity=q.severity,
                kind=q.kind,
                device_id=q.deviceId,
                limit=q.limit,
            )
        )


async def get_alert(request: Request) -> Response:
    alert_id = _number(request, "alertId")
    async with context(request).pool.acquire() as conn:
        return reply(await reports.alert(conn, alert_id))


async def acknowledge_alert(request: Request) -> Response:
    alert_id = _number(request, "alertId")
    ack = await _body(request, AcknowledgeRequest)
    async with context(request).pool.acquire() as conn:
        return reply(await reports.acknowledge(conn, alert_id, ack.by))


async def device_history(request: Request) -> Response:
    kind = device_kind(request)
    device = device_id(request, "deviceId")
    q = parse_query(request, HistoryQuery)
    async with context(request).pool.acquire() as conn:
        return reply(await reports.device_alerts(conn, kind, device, q.limit))


async def list_silences(request: Request) -> Response:
    async with context(request).pool.acquire() as conn:
        return reply(await reports.silences(conn))


async def add_silence(request: Request) -> Response:
    s = await _body(request, SilenceRequest)
    if s.rule is None and s.deviceId is None:
        raise ProblemError(422, "a silence names a rule, a device (kind and deviceId), or both")
    if (s.kind is None) != (s.deviceId is None):
        raise ProblemError(422, "kind and deviceId go together: which device to silence")
    now = datetime.now(UTC)
    if s.until <= now:
        raise ProblemError(422, "until is not in the future")
    if s.until > now + MAX_SILENCE:
        raise ProblemError(422, f"until is more than {MAX_SILENCE.days} days ahead")
    async with context(request).pool.acquire() as conn:
        silence = await reports.add_silence(
            conn,
            rule=s.rule,
            kind=s.kind,
            device_id=s.deviceId,
            until=s.until,
            comment=s.comment,
            by=s.by,
        )
    return reply(silence, status=201)


async def end_silence(request: Request) -> Response:
    silence_id = _number(request, "silenceId")
    async with context(request).pool.acquire() as conn:
        return reply(await reports.end_silence(conn, silence_id))


def _read(
    path: str,
    handler: Handler,
    summary: str,
    model: type[BaseModel],
    *,
    query: type[BaseModel] | None = None,
    path_params: tuple[PathParam, ...] = (),
    replies: dict[int, Reply] | None = None,
    description: str = "",
) -> Endpoint:
    return Endpoint(
        method="GET",
        path=path,
        handler=handler,
        summary=summary,
        tag="alerts",
        role="read",
        responses={200: Reply("found", model), **BAD_REQUEST, **UNAUTHORIZED, **(replies or {})},
        query=query,
        path_params=path_params,
        description=description,
    )


ENDPOINTS = [
    _read(
        "/v1/alerts",
        list_alerts,
        "Alerts firing and pending, what needs action first",
        AlertList,
        query=AlertQuery,
        description="Filters combine. Order: neither acknowledged nor silenced first, then "
        "critical, warning, info; firing before pending; oldest first. "
        "An alert is one (rule, device): pending while its "
        "condition holds for less than the rule's for_s, firing after, resolved once past "
        "its clear threshold.",
    ),
    _read(
        "/v1/alerts/{alertId}",
        get_alert,
        "One alert",
        Alert,
        path_params=(ALERT_ID,),
        replies={404: Reply("no such alert")},
    ),
    Endpoint(
        method="POST",
        path="/v1/alerts/{alertId}/acknowledge",
        handler=acknowledge_alert,
        summary="Acknowledge an alert",
        tag="alerts",
        role="ingest",
        responses={
            200: Reply("acknowledged (the first acknowledgement stands)", Alert),
            404: Reply("no such alert"),
            **WRITE_REPLIES,
        },
        description="Marks that an operator has seen it; it still resolves by itself.",
        path_params=(ALERT_ID,),
        body=Body({"application/json": AcknowledgeRequest}),
    ),
    _read(
        "/v1/alerts/device/{kind}/{deviceId}",
        device_history,
        "A device's alerts, open and resolved",
        AlertHistory,
        path_params=(KIND, DEVICE_ID),
        query=HistoryQuery,
    ),
    _read("/v1/silences", list_silences, "Active silences", Silences),
    Endpoint(
        method="POST",
        path="/v1/silences",
        handler=add_silence,
        summary="Silence a rule, a device, or a rule on a device until a time",
        tag="alerts",
        role="ingest",
        responses={
            201: Reply("silenced", Silence),
            422: Reply("names neither a rule nor a device, or until is not ahead"),
            **WRITE_REPLIES,
        },
        description="While it lasts, alerts still change state but nothing is notified; "
        "an alert that fires during it is notified when it ends (if it still fires).",
        body=Body({"application/json": SilenceRequest}),
    ),
    Endpoint(
        method="DELETE",
        path="/v1/silences/{silenceId}",
        handler=end_silence,
        summary="End a silence now",
        tag="alerts",
        role="ingest",
        responses={
            200: Reply("ended", Silence),
            404: Reply("no such silence"),
            **BAD_REQUEST,
            **UNAUTHORIZED,
        },
        path_params=(SILENCE_ID,),
    ),
]
