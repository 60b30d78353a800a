"""What a browser on another site must not be able to do to a collector it can reach.

A page on any site can make the browser send requests to ``http://127.0.0.1:8000``: a
no-cors ``fetch`` or ``navigator.sendBeacon`` POSTs a body without reading the answer, and
DNS rebinding points a name the attacker controls at the collector. So:

* every request must be addressed to a host name the collector answers to
  (``ALLOWED_HOSTS``; Starlette's ``TrustedHostMiddleware``), which defeats rebinding;
* a write (POST, PUT, PATCH, DELETE) that carries an ``Origin`` must come from this same
  origin or one in ``ALLOWED_ORIGINS``; browsers always send ``Origin`` on such requests,
  devices and scripts send none and are not affected;
* writes must say they are JSON (``api.routes.common.json_media_type``), which a no-cors
  request cannot do without a CORS preflight that this API never answers.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import problem

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    try:
        url = urlsplit(f"{scheme}://{netloc}")
        port = url.port
    except ValueError:
        return None
    if not url.hostname:
        return None
    return scheme.lower(), url.hostname.lower(), port or _DEFAULT_PORTS.get(scheme.lower(), 0)


def same_origin(origin: str, scheme: str, host: str) -> bool:
    """Whether ``Origin: origin`` names the site a request to ``scheme://host`` is for."""
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        return False
    theirs = _origin_key(parts.scheme, parts.netloc)
    return theirs is not None and theirs == _origin_key(scheme, host)


class WriteGuard:
    """Refuses (403) a write whose ``Origin`` is neither this site nor an allowed origin."""

    def __init__(self, app: ASGIApp, *, allowed_origins: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self._allows(origin, scope["scheme"], headers):
                response = problem(
                    403,
                    f"a write from {origin!r} is refused: the request comes from another "
                    "site (add that origin to ALLOWED_ORIGINS if it is yours)",
                    instance=scope["path"],
                    title="Cross-site write refused",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allows(self, origin: str, scheme: str, headers: Headers) -> bool:
        if origin.rstrip("/").lower() in self.allowed:
            return True
        # "null": a sandboxed frame, a file: page, a redirect across sites. Never ours.
        return origin != "null" and same_origin(origin, scheme, headers.get("host", ""))
