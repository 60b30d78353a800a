"""systemd's notify protocol: readiness, watchdog pings, stopping (``Type=notify``).

One datagram on the Unix socket named by ``$NOTIFY_SOCKET``; a no-op when not run by
systemd. Written out here rather than depending on systemd-python, which needs libsystemd's
headers to build: the protocol is these few lines.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("collector.systemd")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self._address = address or None
        self.watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if self._address and usec and (not pid or int(pid) == os.getpid()):
            self.watchdog_s = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError as exc:  # systemd gone or the socket misconfigured: keep running
            log.warning("systemd.notify_failed", address=self._address, error=str(exc))

    async def watchdog(self) -> None:
        """Ping at half the watchdog interval for as long as the event loop runs."""
        if self.watchdog_s is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)
