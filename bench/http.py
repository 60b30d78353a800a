"""HTTP benchmark: the collector's HTTP ingest and reads against a ceiling, in one run.

Starts its own PostgreSQL (fsync on) and Mosquitto, loads a day of readings of N meters
and N vehicles (bench/queries.py's data: one a minute, rollups, links), then runs, one
after the other on the same machine:

* the **ceiling**: bench/ceiling_app.py, a minimal Starlette app on the collector's own
  server stack (same uvicorn configuration, uvloop, GC tuning) answering a small JSON POST
  and GET without a database;
* the **collector** (``python -m collector run``, default settings), one process, and with
  ``--processes 1,2`` also two (each with its own port, the load split between them as a
  load balancer would);

and drives each with wrk (Debian's ``wrk``; Lua scripts in bench/wrk/) for ``--seconds``
per case (after 2 s of warm-up), at each of ``--connections``:

* ``ingest``: ``POST /v1/ingest/vehicle`` with one new reading per request (unique device
  and timestamp; answered after its commit) — the ceiling's ``POST /ingest``;
* ``status``: ``GET /v1/status/vehicle/{id}`` of a random vehicle — the ceiling's GET;
* ``list``: ``GET /v1/status/vehicles?limit=100`` from a random cursor (the current-state
  list) — the ceiling's GET;
* ``performance``: ``GET /v1/analytics/performance/{id}`` of a random vehicle (last 24 h).

It prints requests/s, p50 and p99 per case and each case's ratio to the ceiling, the
round trip of one commit (an ``INSERT`` of one row in autocommit, measured on its own
connection), and with ``--profile`` records a py-spy profile of the collector during
``ingest`` and ``status`` at 16 connections (collapsed stacks in bench/results/, and the
functions that take most of the samples). Everything is saved as JSON in bench/results/.

    .venv/bin/python bench/http.py                         # ~4 minutes
    .venv/bin/python bench/http.py --processes 1,2 --profile
    git worktree add /tmp/before <commit>                  # and the collector of a commit:
    .venv/bin/python bench/http.py --baseline /tmp/before  # "before" cases in the same run
    .venv/bin/python bench/http.py --baseline /tmp/a --baseline /tmp/b  # before1, before2
    .venv/bin/python bench/http.py --baseline /tmp/before --rounds 2 --cases status \\
        --connections 16,64                                # alternated, reads only
"""

from __future__ import annotations

try:  # run as a script: take bench/ off sys.path first (bench/_paths.py)
    import _paths
except ModuleNotFoundError:  # imported as bench.<module>: the path is right already
    _paths = None

# isort: split

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil

REPO = Path(__file__).resolve().parent.parent

from bench import baseline  # noqa: E402
from bench.queries import load_day  # noqa: E402
from collector.tools.local_services import (  # noqa: E402
    MosquittoProcess,
    PostgresProcess,
    free_port,
    wait_for_port,
)

RESULTS = REPO / "bench" / "results"
WRK = REPO / "bench" / "wrk"
#: (case, wrk script, collector path, ceiling path)
CASES = {
    "ingest": ("ingest.lua", "/v1/ingest/vehicle", "/ingest"),
    "status": ("status.lua", "/v1/status/vehicle/", "/status/"),
    "list": ("list.lua", "/v1/status/vehicles", "/status/"),
    "performance": ("performance.lua", "/v1/analytics/performance/", "/status/"),
}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
#: Seconds of unrecorded load before each measured case.
WARMUP_S = 2


def parse_wrk(text: str) -> dict:
    """Requests/s, p50 and p99 (ms), and non-2xx answers from ``wrk --latency``."""

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return round(float(match[1]) * _UNITS[match[2]], 2) if match else float("nan")

    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)$", text, re.M)
    return {
        "rps": round(float(rate[1]), 1) if rate else 0.0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(errors[1]) if errors else 0,
        "socket_errors": socket_errors[1] if socket_errors else "",
    }


def wrk(
    urls: list[str],
    script: str,
    connections: int,
    seconds: float,
    env: dict[str, str],
    meter: CpuMeter | None = None,
) -> dict:
    """wrk against each URL at once (``connections`` split between them); summed rate,
    latency of the first, and with ``meter`` the CPU each party used."""
    per = max(1, connections // len(urls))
    # Warm up first, unrecorded: the pools' connections opened, statements prepared and
    # planned, as in a service that has been running.
    for url in urls:
        subprocess.run(
            ["wrk", f"-t{min(2, per)}", f"-c{per}", f"-d{WARMUP_S}s", "-s", str(WRK / script), url],
            env={**os.environ, **env, "WRK_PART": "w"},
            capture_output=True,
            timeout=WARMUP_S + 30,
            check=False,
        )
    if meter is not None:
        meter.start()
    procs = [
        subprocess.Popen(
            [
                "wrk",
                f"-t{min(2, per)}",
                f"-c{per}",
                f"-d{int(seconds)}s",
                "--latency",
                "--timeout",
                "10s",
                "-s",
                str(WRK / script),
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env, "WRK_PART": str(i)},
        )
        for i, url in enumerate(urls)
    ]
    outputs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    parsed = [parse_wrk(o) for o in outputs]
    out = dict(parsed[0])
    out["rps"] = round(sum(p["rps"] for p in parsed), 1)
    out["non_2xx"] = sum(p["non_2xx"] for p in parsed)
    if meter is not None:
        out["cpu_percent"] = meter.stop()
    if out["rps"] == 0:
        out["output"] = outputs[0][-2000:]
    return out


class CpuMeter:
    """CPU used by the server processes, PostgreSQL (every backend) and wrk during a case,
    in % of one core: what bounds a case on a machine of 2 cores."""

    def __init__(self, servers: list[int], postmaster: int) -> None:
        self.servers = [psutil.Process(pid) for pid in servers]
        self.postmaster = psutil.Process(postmaster)

    def _times(self) -> dict[str, float]:
        def cpu(procs: list[psutil.Process]) -> float:
            total = 0.0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system
            return total

        pg = [self.postmaster, *self.postmaster.children()]
        # wrk: the children that ended (each case's wrk processes, once waited for)
        ended = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "server": cpu(self.servers),
            "postgres": cpu(pg),
            "wrk": ended.ru_utime + ended.ru_stime,
        }

    def start(self) -> None:
        self._t0, self._before = time.monotonic(), self._times()

    def stop(self) -> dict[str, float]:
        after, elapsed = self._times(), time.monotonic() - self._t0
        return {k: round(100 * (after[k] - self._before[k]) / elapsed) for k in after}


def line(r: dict) -> str:
    cpu = r.get("cpu_percent", {})
    return (
        f"{r['rps']:>9.1f} req/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
        f"non-2xx {r['non_2xx']} {r['socket_errors']}  "
        f"CPU % server {cpu.get('server')} postgres {cpu.get('postgres')} wrk {cpu.get('wrk')}"
    )


async def commit_round_trip(dsn: str, n: int = 200) -> float:
    """Median ms of one single-row INSERT committed on its own (autocommit, fsync on)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (id bigint)")
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            await conn.execute("INSERT INTO bench_commit VALUES ($1)", i)
            samples.append(time.perf_counter() - t0)
        await conn.execute("DROP TABLE bench_commit")
        return round(statistics.median(samples) * 1000, 2)
    finally:
        await conn.close()


class Server:
    """A server process (the ceiling or a collector) on a port of its own."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [part.replace("{port}", str(self.port)) for part in command],
                env={**os.environ, **env, "PORT": str(self.port)},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tempfile.gettempdir(),
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> None:
        wait_for_port(self.port, 60)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def profile(pid: int, seconds: float, out: Path) -> list[tuple[str, float]]:
    """py-spy's collapsed stacks of ``pid`` for ``seconds``; the functions the samples were
    in (self time, the innermost Python frame), as (function, % of the samples)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run(
        [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw",
         "--output", str(out), "--nonblocking", "--rate", "200"],
        capture_output=True,
        timeout=seconds + 60,
        check=False,
    )  # fmt: skip
    if not out.exists():
        return []
    own: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        own[re.sub(r" \(.*?:\d+\)$", "", leaf) + _where(leaf)] += n
    return [(f, round(100 * n / total, 1)) for f, n in own.most_common(25)] if total else []


def _where(frame: str) -> str:
    match = re.search(r"\((?:.*/)?([^/]+\.py):\d+\)$", frame)
    return f" ({match[1]})" if match else ""


async def main_async(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    pg = PostgresProcess(settings={"fsync": "on", "shared_buffers": "512MB"})
    pg.init().start()
    broker = MosquittoProcess(tmp / "mosquitto")
    broker.start()
    servers: list[Server] = []
    report: dict = {"cases": {}}
    try:
        dsn, report["loaded"], _ = await load_day(pg, args.devices)
        env = {
            "DATABASE_URL": dsn,
            "MQTT_URL": broker.url,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "warning",
            "ALERTS_ENABLED": "false",
            **dict(item.split("=", 1) for item in args.env),
        }
        report["commit_round_trip_ms"] = await commit_round_trip(dsn)
        print(f"one commit's round trip: {report['commit_round_trip_ms']} ms", flush=True)
        lua_env = {"DEVICES": str(args.devices), "RUN": datetime.now(UTC).strftime("%H%M%S")}

        ceiling = Server(
            [sys.executable, str(REPO / "bench" / "ceiling_app.py"), "--port", "{port}"],
            {},
            tmp / "ceiling.log",
        )
        servers.append(ceiling)
        ceiling.ready()
        for case in ("ingest", "status"):
            script, _, path = CASES[case]
            for c in args.connections:
                meter = CpuMeter([ceiling.proc.pid], pg.postmaster_pid())
                r = wrk([ceiling.url(path)], f"ceiling_{case}.lua", c, args.seconds, lua_env, meter)
                report["cases"][f"ceiling {case} c{c}"] = r
                print(f"ceiling {case:<12} c={c:<3} {line(r)}", flush=True)
        ceiling.stop()
        servers.remove(ceiling)

        runs = [(f"x{n}", n, {}) for n in args.processes]
        # other checkouts' collectors (e.g. `git worktree add /tmp/before <commit>`), first
        for i, checkout in enumerate(args.baseline):
            code = baseline.overlay(Path(checkout), tmp / f"baseline{i}")  # its own sql/ too
            label = "before" if len(args.baseline) == 1 else f"before{i + 1}"
            runs.insert(i, (label, 1, {"PYTHONPATH": str(code)}))
        # alternate, round after round: machines drift by more than the differences sought
        schedule = [
            (label if args.rounds == 1 else f"{label}-r{r + 1}", processes, extra)
            for r in range(args.rounds)
            for label, processes, extra in runs
        ]
        for label, processes, extra in schedule:
            collectors = [
                Server(
                    [sys.executable, "-m", "collector", "run"],
                    {**env, **extra, "MQTT_CLIENT_ID": f"bench-http-{label}-{i}"},
                    tmp / f"collector-{label}-{i}.log",
                )
                for i in range(processes)
            ]
            servers.extend(collectors)
            for s in collectors:
                s.ready()
            time.sleep(1)
            for case, (script, path, _) in CASES.items():
                if case not in args.cases or (processes > 1 and case not in ("ingest", "status")):
                    continue
                for c in args.connections:
                    urls = [s.url(path) for s in collectors]
                    meter = CpuMeter([s.proc.pid for s in collectors], pg.postmaster_pid())
                    case_env = {**lua_env, "CASE": f"{label}{c}"}
                    r = wrk(urls, script, c, args.seconds, case_env, meter)
                    report["cases"][f"collector {label} {case} c{c}"] = r
                    print(f"{label} {case:<12} c={c:<3} {line(r)}", flush=True)
            if args.profile and processes == 1:
                report.setdefault("profiles", {})
                for case in ("ingest", "status"):
                    script, path, _ = CASES[case]
                    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
                    out = RESULTS / f"http-profile-{label}-{case}-{stamp}.txt"
                    RESULTS.mkdir(parents=True, exist_ok=True)
                    load_gen = subprocess.Popen(
                        ["wrk", "-t2", "-c16", f"-d{int(args.seconds) + 4}s",
                         "-s", str(WRK / script), collectors[0].url(path)],
                        env={**os.environ, **lua_env, "CASE": f"p{case}"},
                        stdout=subprocess.DEVNULL,
                    )  # fmt: skip
                    time.sleep(2)
                    top = profile(collectors[0].proc.pid, args.seconds, out)
                    load_gen.wait(args.seconds + 30)
                    report["profiles"][f"{label} {case}"] = {"file": out.name, "top": top}
                    print(f"profile {label} {case}: {out.name}")
                    for name, share in top[:15]:
                        print(f"  {share:5.1f} %  {name}")
            for s in collectors:
                s.stop()
                servers.remove(s)
    finally:
        for s in servers:
            s.stop()
        broker.stop()
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    report.update(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        command=" ".join(sys.argv),
        machine={"cpus": os.cpu_count(), "python": platform.python_version()},
        devices=args.devices,
        seconds=args.seconds,
    )
    return report


def ratios(report: dict) -> list[str]:
    """The markdown table: each collector case against the ceiling of the same run."""
    cases = report["cases"]
    lines = [
        "| case | connections | collector req/s | ceiling req/s | ratio | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in cases.items():
        if not key.startswith("collector"):
            continue
        _, procs, case, conn = key.split()
        ceiling_case = "ingest" if case == "ingest" else "status"
        ceiling = cases.get(f"ceiling {ceiling_case} {conn}", {}).get("rps") or float("nan")
        lines.append(
            f"| {case} ({procs}) | {conn[1:]} | {r['rps']:,.0f} | {ceiling:,.0f} | "
            f"{r['rps'] / ceiling:.2f}x | {r['p50_ms']} | {r['p99_ms']} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--processes", default="1")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="a setting of the collectors (e.g. FLUSH_INTERVAL_MS=100: the old batching)",
    )  # fmt: skip
    parser.add_argument("--cases", default=",".join(CASES), help="collector cases to run")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="measure the collectors (and the baseline) this many times, alternating",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", metavar="CHECKOUT", action="append", default=[],
        help="also measure the collector of another checkout first (bench/baseline.py); "
        "repeatable: before1, before2 ... in the order given",
    )  # fmt: skip
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    args.processes = [int(p) for p in args.processes.split(",")]
    args.cases = args.cases.split(",")
    args.baseline = [os.path.abspath(b) for b in args.baseline]
    if not shutil.which("wrk"):
        sys.exit("bench/http.py needs wrk (Debian: apt-get install wrk)")
    report = asyncio.run(main_async(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"http-{stamp}.json").write_text(json.dumps(report, indent=2))
    print(f"\none commit's round trip: {report['commit_round_trip_ms']} ms")
    print("\n".join(ratios(report)))


if __name__ == "__main__":
    main()
