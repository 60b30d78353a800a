"""The HTTP server of ``run`` and ``api``: uvicorn on a socket bound up front.

Binding first makes a taken port a clear start-up error (and lets ``PORT=0`` pick a free
one that the service can report). The daemon, not uvicorn, handles SIGTERM and SIGINT, so
it can drain the writer before the server stops answering.

uvicorn keeps a connection that never sends a request for ever, and counts it against its
concurrency limit, so a few hundred idle or slowly-typing clients (slowloris) can take every
slot and every file descriptor. :func:`guarded` gives its protocol two rules:

* a connection must finish its request headers within ``HTTP_HEADER_TIMEOUT_S`` of opening
  (or of its previous response), else it is closed;
* at most ``HTTP_MAX_CONNECTIONS`` are open: a new one past that closes the connection that
  has waited longest without a request in progress; if every one is busy with a request, the
  new one is answered 503. So slow clients can delay others by no more than the header
  timeout, and never starve a client that is really asking.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from typing import Any

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from collector.errors import CollectorError
from collector.settings import Settings

log = structlog.get_logger("collector.http")

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: 39\r\n\r\n"
    b"too many connections; try again shortly"
)
#: File descriptors kept beyond the HTTP connections (database, broker, files).
_FD_RESERVE = 128


class StartupError(CollectorError):
    """The process cannot start; the message says why in one line."""


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside the daemon: the daemon, not uvicorn, handles SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    """Bind the HTTP socket up front, so a taken port is a clear start-up error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Guard:
    """uvicorn's HTTP/1.1 protocol with a header timeout and a connection cap (see above).

    A mixin for either of uvicorn's protocols (httptools' or h11's): both keep the open
    connections in ``connections`` and the request in progress in ``cycle``.
    """

    header_timeout_s = 10.0
    max_connections = 512

    _header_timer: Any = None
    _armed_cycle: Any = None
    _waiting_since = 0.0
    # the protocol's own
    connections: set[Any]
    cycle: Any
    transport: Any
    loop: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()
        if len(self.connections) > self.max_connections and not self._evict_idle():
            log.warning("http.too_many_connections", limit=self.max_connections)
            transport.write(_BUSY)
            transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        """Expect the next request's headers within the timeout.

        One timer per connection, not one per request: re-arming only notes the time (a
        timer made and cancelled per request was 4 % of a status read, bench/http.py); the
        timer, when it fires early, waits for the rest.
        """
        self._waiting_since = time.monotonic()
        self._armed_cycle = self.cycle
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        left = self._waiting_since + self.header_timeout_s - time.monotonic()
        if left > 0:  # re-armed since it was set: the rest of the new wait
            self._header_timer = self.loop.call_later(left, self._header_deadline)
        elif self.cycle is self._armed_cycle:
            # No new request began since it was armed: idle, or headers too slow.
            self.transport.close()
        # else a request is in progress: its response arms the timer again

    @property
    def waiting_for_request(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _evict_idle(self) -> bool:
        """Close the connection that has waited longest without a request; False if none."""
        idle = [
            c
            for c in self.connections
            if c is not self and isinstance(c, _Guard) and c.waiting_for_request
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._waiting_since)
        oldest.transport.close()
        self.connections.discard(oldest)
        return True


def guarded(
    *, header_timeout_s: float, max_connections: int, base: type[Any] = HttpToolsProtocol
) -> type[Any]:
    """The HTTP protocol class with these limits: httptools' (its C parser takes a fifth
    less CPU per small request than h11's pure Python, bench/http.py), or ``base``."""
    protocol = base
    return type(
        f"Guarded{protocol.__name__}",
        (_Guard, protocol),
        {"header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )


def connection_limit(wanted: int) -> int:
    """``wanted`` connections, if the process may open that many files (raising its soft
    limit up to the hard one when needed); fewer, with a warning, if it may not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        allowed = max(8, soft - _FD_RESERVE)
        log.warning(
            "http.connection_limit_lowered",
            wanted=wanted,
            allowed=allowed,
            open_files_limit=soft,
            hint="raise the open files limit (LimitNOFILE=, ulimit -n)",
        )
        return allowed
    return wanted


def embedded_server(app: Any, settings: Settings) -> EmbeddedServer:
    """The server for ``app`` with the settings every HTTP process of the collector uses.

    Proxy headers (``X-Forwarded-Proto``, ``X-Forwarded-For``) are believed only from
    ``TRUSTED_PROXIES``: from anyone else they would let a client claim HTTPS or another
    address. Connections are bounded as the module's docstring says.
    """
    proxies = list(settings.trusted_proxy_list)
    return EmbeddedServer(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            proxy_headers=bool(proxies),
            forwarded_allow_ips=proxies or None,
            server_header=False,
            http=guarded(
                header_timeout_s=settings.http_header_timeout_s,
                max_connections=connection_limit(settings.http_max_connections),
            ),
        )
    )
