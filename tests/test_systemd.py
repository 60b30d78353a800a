"""The daemon speaks systemd's notify protocol (deploy/systemd/energy-collector.service is
``Type=notify`` with a watchdog): a socket stands in for systemd and records what it is told."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

from collector.systemd import Notifier
from tests.conftest import forget_session
from tests.helpers import MQTT_URL
from tests.services import CollectorProcess


class FakeSystemd:
    """A datagram socket where the service's notifications arrive, like systemd's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in m for m in self.messages):
                return
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        raise TimeoutError(f"{text!r} not notified; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def test_notifier_is_silent_outside_systemd():
    notifier = Notifier(environ={})
    assert not notifier.enabled and notifier.watchdog_s is None
    notifier.notify("READY=1")  # nothing to send to, nothing raised


def test_notifier_reads_the_watchdog_interval_meant_for_it(tmp_path):
    sd = FakeSystemd(tmp_path / "notify")
    try:
        mine = Notifier(environ={"NOTIFY_SOCKET": str(sd.path), "WATCHDOG_USEC": "3000000"})
        assert mine.watchdog_s == 3.0
        other = Notifier(
            environ={
                "NOTIFY_SOCKET": str(sd.path),
                "WATCHDOG_USEC": "3000000",
                "WATCHDOG_PID": "1",  # meant for another process
            }
        )
        assert other.watchdog_s is None
        mine.notify("STATUS=hello")
        sd.wait_for("STATUS=hello", timeout=2)
    finally:
        sd.close()


def test_a_vanished_socket_does_not_stop_the_service(tmp_path):
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notifier.notify("WATCHDOG=1")


async def test_the_daemon_reports_ready_pings_the_watchdog_and_says_stopping(
    tmp_path, database_url
):
    sd = FakeSystemd(tmp_path / "notify")
    client_id = f"sd-{uuid.uuid4().hex[:8]}"
    proc = CollectorProcess(
        {
            "DATABASE_URL": database_url,
            "MQTT_URL": MQTT_URL,
            "MQTT_CLIENT_ID": client_id,
            "MQTT_TOPIC_PREFIX": client_id,
            "HTTP_ENABLED": "false",
            "NOTIFY_SOCKET": str(sd.path),
            "WATCHDOG_USEC": "1000000",  # pings every 0.5 s
        },
        tmp_path / "collector.log",
    ).start()
    try:
        await asyncio.to_thread(sd.wait_for, "READY=1")
        ready_at = len(sd.messages)
        await asyncio.sleep(1.6)
        await asyncio.to_thread(sd.wait_for, "WATCHDOG=1")
        pings_after_ready = await asyncio.to_thread(_drain, sd)
        assert pings_after_ready[ready_at:].count("WATCHDOG=1") >= 2, sd.messages
        assert await asyncio.to_thread(proc.terminate) == 0
        await asyncio.to_thread(sd.wait_for, "STOPPING=1", 5)
    finally:
        proc.kill()
        sd.close()
        await asyncio.to_thread(forget_session, MQTT_URL, client_id)


def _drain(sd: FakeSystemd) -> list[str]:
    while True:
        try:
            sd.messages.append(sd.sock.recv(4096).decode())
        except TimeoutError:
            return sd.messages
