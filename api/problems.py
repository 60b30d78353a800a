"""Errors as RFC 9457 problem details (``application/problem+json``), never a stack trace."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from api.policy import PolicyError
from api.replica import RETRY_AFTER_S, is_read_only_refusal, is_recovery_conflict

log = structlog.get_logger("api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


class ProblemError(Exception):
    """Raised by handlers; rendered as a problem response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        self.headers = headers
        self.extra = extra


def problem(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem(
        exc.status,
        exc.detail,
        instance=request.url.path,
        title=exc.title,
        headers=exc.headers,
        **exc.extra,
    )


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"there is no endpoint at {request.url.path}; see /docs"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs"
    return problem(
        exc.status_code,
        str(detail),
        instance=request.url.path,
        headers=getattr(exc, "headers", None),
    )


async def on_rule_error(request: Request, exc: Exception) -> Response:
    """A rule refused well-formed input (``api.policy``): 422."""
    return problem(422, str(exc), instance=request.url.path)


async def on_database_refusal(request: Request, exc: Exception) -> Response:
    """What a read replica answers (api/replica.py): a recovery conflict is 503 with
    Retry-After, a write 503 naming the primary; any other such error is unexpected."""
    if is_recovery_conflict(exc):
        log.warning("api.recovery_conflict", path=request.url.path, error=str(exc))
        return problem(
            503,
            "the read replica cancelled this query to go on replaying the primary's "
            "changes (a recovery conflict); retry",
            instance=request.url.path,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if is_read_only_refusal(exc):
        return problem(
            503,
            "this API serves a read replica: send writes (links, replacements, ingest) to "
            "the collector on the primary",
            instance=request.url.path,
        )
    return await on_unexpected(request, exc)


async def on_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client closed its connection before sending all of its request (an upload cut
    short): an everyday event, not an error, and there is nobody left to answer."""
    log.info("http.client_disconnected", path=request.url.path, method=request.method)
    return Response(status_code=400)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("api.unhandled_error", path=request.url.path, method=request.method)
    return problem(
        500, "an unexpected error occurred; it has been logged", instance=request.url.path
    )


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    ProblemError: on_problem,
    PolicyError: on_rule_error,
    asyncpg.ReadOnlySQLTransactionError: on_database_refusal,
    asyncpg.SerializationError: on_database_refusal,
    asyncpg.DeadlockDetectedError: on_database_refusal,
    HTTPException: on_http_exception,
    ClientDisconnect: on_client_disconnect,
    Exception: on_unexpected,
}
