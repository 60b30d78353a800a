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
  has waited longest without a request in progress. If every one is busy with a request
  (say 512 slow uploads, each allowed ``HTTP_BODY_TIMEOUT_S``), a few more are let in as a
  reserve that serves only ``/health*`` and ``/metrics`` (anything else there is 503): a
  liveness probe or a scrape is answered whatever the ingest load, where it would have been
  refused and the probe would restart a healthy collector. Past the reserve too, 503. So
  slow clients can delay others by no more than the header timeout, and never starve a
  client that is really asking;
* a request's line and headers are at most ``HTTP_MAX_HEADER_BYTES`` and its header fields
  at most ``HTTP_MAX_HEADERS``, else it is answered 431 and the connection closed: the C
  parser has no limit of its own, and it keeps a header it has not finished in memory (one
  50 MB header was answered 200, sixteen took the process to 510 MB).
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
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; "
    b"charset=utf-8\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
)
#: What a connection from the reserve may ask for (request targets start so).
_RESERVE_PATHS = (b"/health", b"/metrics")
#: How long a refused connection's further bytes are read and dropped before it is closed.
_LINGER_S = 2.0
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


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a request that is already answered
    (too large a head, or from the reserve and not for health)."""


class _Guard:
    """uvicorn's httptools protocol with a header timeout, a connection cap and bounded
    request heads (see above). It keeps the open connections in ``connections`` and the
    request in progress in ``cycle``.
    """

    header_timeout_s = 10.0
    max_connections = 512
    max_header_bytes = 16_384
    max_headers = 100
    #: Connections let in past ``max_connections`` when all are busy (health only).
    reserve = 32

    _header_timer: Any = None
    _armed_cycle: Any = None
    _waiting_since = 0.0
    #: Bytes received since the previous request ended, while a head is not complete.
    _head_bytes = 0
    #: The request's URL and headers so far, as parsed.
    _head_size = 0
    _in_head = True
    _header_count = 0
    _refused = False
    #: Let in from the reserve: answers health and metrics only.
    _from_reserve = False
    # the protocol's own
    connections: set[Any]
    cycle: Any
    transport: Any
    loop: Any
    url: bytes

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()
        open_now = len(self.connections)
        if open_now <= self.max_connections or self._evict_idle():
            return
        if open_now <= self.max_connections + self.reserve:
            self._from_reserve = True
            return
        log.warning("http.too_many_connections", limit=self.max_connections)
        transport.write(_BUSY)
        transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm()

    # --- bounded request heads ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and dropped
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        if self._in_head and self._head_bytes > self.max_header_bytes and not self._refused:
            # a head not finished after more bytes than a whole one may have
            self._refuse_head(f"request line and headers over {self.max_header_bytes} bytes")

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        self._check_head()
        super().on_url(url)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count > self.max_headers:
            self._refuse_head(f"more than {self.max_headers} header fields")
            raise _HeadTooLarge
        self._check_head()
        super().on_header(name, value)  # type: ignore[misc]

    def _check_head(self) -> None:
        """The finished parts of a head (URL, headers) counted exactly."""
        if self._head_size > self.max_header_bytes:
            self._refuse_head(f"request line and headers over {self.max_header_bytes} bytes")
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._from_reserve and not self.url.startswith(_RESERVE_PATHS):
            log.warning("http.too_many_connections", limit=self.max_connections)
            self._refuse(_BUSY)
            raise _HeadTooLarge  # stop parsing: answered
        super().on_headers_complete()  # type: ignore[misc]

    def on_message_complete(self) -> None:
        super().on_message_complete()  # type: ignore[misc]
        self._in_head = True  # the next request's head
        self._head_bytes = self._head_size = self._header_count = 0

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # the parser's error after a refusal: answered already
            super().send_400_response(msg)  # type: ignore[misc]

    def _refuse_head(self, why: str) -> None:
        body = why.encode()
        self._refuse(_TOO_LARGE % (len(body), body))

    def _refuse(self, answer: bytes) -> None:
        """Answer, then read and drop what still comes for a moment before closing:
        closing with unread data would reset the connection, and the client might never
        see the answer (a lingering close, as nginx does)."""
        self._refused = True
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.transport.close)

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
    *,
    header_timeout_s: float,
    max_connections: int,
    max_header_bytes: int = _Guard.max_header_bytes,
    max_headers: int = _Guard.max_headers,
) -> type[Any]:
    """httptools' HTTP protocol (its C parser takes a fifth less CPU per small request than
    h11's pure Python, bench/http.py) with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (_Guard, HttpToolsProtocol),
        {
            "header_timeout_s": header_timeout_s,
            "max_connections": max_connections,
            "max_header_bytes": max_header_bytes,
            "max_headers": max_headers,
            "reserve": reserve_for(max_connections),
        },
    )


def reserve_for(max_connections: int) -> int:
    """How many connections past the limit may serve health and metrics."""
    return max(8, max_connections // 16)


def connection_limit(wanted: int) -> int:
    """``wanted`` connections, if the process may open that many files (raising its soft
    limit up to the hard one when needed); fewer, with a warning, if it may not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + reserve_for(wanted) + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        allowed = max(8, (soft - _FD_RESERVE) * 16 // 17)
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
                max_header_bytes=settings.http_max_header_bytes,
                max_headers=settings.http_max_headers,
            ),
        )
    )
