"""The HTTP server of ``run`` and ``api``: uvicorn on a socket bound up front.

Binding first makes a taken port a clear start-up error (and lets ``PORT=0`` pick a free
one that the service can report). The daemon, not uvicorn, handles SIGTERM and SIGINT, so
it can drain the writer before the server stops answering.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from collector.errors import CollectorError


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


def embedded_server(app: Any) -> EmbeddedServer:
    """The server for ``app`` with the settings every HTTP process of the collector uses."""
    return EmbeddedServer(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            proxy_headers=False,
            server_header=False,
        )
    )
