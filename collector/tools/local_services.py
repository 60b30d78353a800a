"""Throwaway PostgreSQL and Mosquitto processes, started from the local binaries.

For `energy-collector demo` on a machine without them, and for the tests and benchmarks
that must stop or kill a service. Never touches the machine's shared services: every
instance has its own directory and a free port, and is removed afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: The broker limits the collector relies on, when running from a checkout of the repository.
_REPO_LIMITS = Path(__file__).resolve().parents[2] / "mosquitto" / "limits.d"
LIMITS_DIR: Path | None = _REPO_LIMITS if _REPO_LIMITS.is_dir() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wait_port_closed(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
        except OSError:
            return
        time.sleep(0.05)
    raise TimeoutError(f"127.0.0.1:{port} still accepts connections after {timeout} s")


class MosquittoProcess:
    """A broker of our own, with persistence, on a free port."""

    def __init__(
        self,
        directory: Path,
        *,
        extra_config: str = "",
        port: int | None = None,
        include_dir: Path | None = LIMITS_DIR,
    ):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.conf.write_text(
            "\n".join(
                [
                    # Started as root, Mosquitto drops to the `mosquitto` user and then cannot
                    # write its persistence file in our root-owned temp directory.
                    "user root" if os.geteuid() == 0 else "",
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence true",
                    f"persistence_location {self.dir}/",
                    f"include_dir {include_dir}" if include_dir else "",
                    extra_config,
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, verbose: bool = False) -> MosquittoProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf), *(["-v"] if verbose else [])],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """Clean shutdown: the broker saves queued messages of persistent sessions."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        wait_port_closed(self.port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)

    def restart(self) -> None:
        self.stop()
        self.start()


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found (install postgresql)")
    return path


class PostgresProcess:
    """A PostgreSQL cluster of our own (initdb), trust auth, on a free port.

    Lives in a temp directory of its own (run as root, the server runs as `postgres`, which
    cannot enter pytest's 0700 temp directories); :meth:`destroy` removes it.
    """

    def __init__(self, *, port: int | None = None, settings: dict[str, str] | None = None):
        #: Server settings (-c name=value); tests run without fsync, benchmarks with it.
        self.settings = {"fsync": "off", **(settings or {})}
        self.dir = Path(tempfile.mkdtemp(prefix="energy-pg-"))
        self.data = self.dir / "data"
        self.port = port or free_port()
        self.log = self.dir / "postgres.log"

    def _as_owner(self, argv: list[str]) -> list[str]:
        # initdb refuses to run as root: run the server as `postgres` then.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def init(self) -> PostgresProcess:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            self._as_owner(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
        )
        return self

    @property
    def dsn_base(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def dsn(self, database: str = "postgres") -> str:
        return f"{self.dsn_base}/{database}"

    def start(self) -> PostgresProcess:
        extra = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 {extra}"
        subprocess.run(
            self._as_owner(
                [
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    opts,
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._as_owner([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=False,
            capture_output=True,
        )

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
