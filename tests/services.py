"""Processes for tests and benchmarks: the throwaway services (collector/tools/local_services.py)
and the collector itself as a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from collector.tools.local_services import (  # noqa: F401 - re-exported for the tests and benches
    MosquittoProcess,
    PostgresProcess,
    free_port,
    wait_for_port,
    wait_port_closed,
)

REPO = Path(__file__).resolve().parent.parent
LIMITS_DIR = REPO / "mosquitto" / "limits.d"


class CollectorProcess:
    """``python -m collector run`` as a child process, logging JSON lines to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, command: str = "run"):
        self.env = {**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "info", **env}
        self.log_path = log_path
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CollectorProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", self.command],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tempfile.gettempdir(),  # no stray .env from the developer's checkout
            )
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 20.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(needle) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"collector exited ({self.proc.returncode}):\n{self.log_text()}")
            time.sleep(0.05)
        raise TimeoutError(f"{needle!r} not logged within {timeout} s:\n{self.log_text()[-4000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
