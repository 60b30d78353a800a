"""Real receivers of alert notifications for the tests: an HTTP webhook receiver that can
be taken down and brought back on its port, and Debian's Alertmanager."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from collector.tools.local_services import free_port, wait_for_port, wait_port_closed


class WebhookReceiver:
    """Records every POST (headers and body) on 127.0.0.1:<port>; ``down()`` closes the
    port (connections are refused), ``up()`` listens on the same port again. Requests for
    a rule in ``refuse`` are answered 500 and recorded in ``refused`` instead."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.refused: list[bytes] = []
        self.refuse: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                refused = json.loads(body).get("rule") in receiver.refuse
                with receiver._lock:
                    if refused:
                        receiver.refused.append(body)
                    else:
                        receiver.requests.append((dict(self.headers.items()), body))
                self.send_response(500 if refused else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        wait_for_port(self.port)
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            wait_port_closed(self.port)

    def items(self) -> list[dict[str, Any]]:
        """Every alert item received, in order."""
        with self._lock:
            bodies = [body for _, body in self.requests]
        return [item for body in bodies for item in json.loads(body)["alerts"]]

    def of(self, rule: str, device: str) -> list[str]:
        """The states told for one alert, in order."""
        return [i["state"] for i in self.items() if (i["rule"], i["deviceId"]) == (rule, device)]


class DripReceiver:
    """A receiver that answers ``200`` headers at once and then its body a byte every half
    second, for ever: a client whose timeout counts per read never gives up on it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slow"

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._drip, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                while not self._stop.wait(0.5):
                    conn.sendall(b"x")

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for t in self._threads:
            t.join(5)


class AlertmanagerProcess:
    """``prometheus-alertmanager`` with a config of its own on a free port (no cluster)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="alertmanager-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AlertmanagerProcess:
        config = self.dir / "alertmanager.yml"
        config.write_text("route:\n  receiver: none\nreceivers:\n  - name: none\n")
        with (self.dir / "log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    "prometheus-alertmanager",
                    f"--config.file={config}",
                    f"--storage.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_for_port(self.port)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("alertmanager not ready")

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds as active (resolved ones are left out)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
