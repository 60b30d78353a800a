"""Ingest throughput benchmark: readings stored per second at QoS 1, against its ceilings.

Starts its own Mosquitto (with the project's limits, mosquitto/limits.d) and its own PostgreSQL
(fsync on, track_commit_timestamp on), all on loopback. Two fast C publishers (libmosquitto,
bench/mqttload.c) play 10,000 meters and 10,000 vehicles. For each MQTT protocol version of
the subscriber, and each mode:

* ``live``: the publishers send N readings as fast as the broker accepts while the
  subscriber runs (the sustained rate);
* ``drain``: the N readings are queued in the subscriber's persistent session first, then
  drained (the collector's own speed, without publishers on the same cores),

it measures:

1. the broker delivering QoS 1 to a bare C subscriber;
2. the collector's own MQTT stack alone: a bare aiomqtt subscriber built by the collector's
   client factory with the same settings, acknowledging at once, no validation, no database
   (bench/bare_subscriber.py; ``--iterate`` adds stock aiomqtt ``async for``);
3. the collector (``python -m collector run``): validation, batches, history insert and
   current upsert, acknowledgements after commit. Stored/s is taken from the commit
   timestamps of the rows themselves; CPU and peak memory of collector, broker and
   PostgreSQL are sampled;
4. with ``--registers``, the collector again with the same load as cumulative registers
   (``kwhRegisterAc``/``kwhRegisterDc``, each device's growing by a plausible amount),
   which it books from each device's chain (collector/ingest/booking/): the
   ratio to (3) in the same run is the cost of registers;
5. with ``--mapped``, the same load as Shelly Gen2 NotifyStatus messages (Wh registers,
   epoch timestamps) decoded by a payload mapping (``SHELLY_SOURCE``, as
   deploy/sources/shelly-gen2.toml): the ratio to (3) and (4) is the cost of a mapping.

Then publishers send at 80 % of the collector's live rate and the publish-to-commit lag
(publish time is each reading's timestamp, commit time from track_commit_timestamp) is
reported as p50/p99. A markdown summary is printed; everything is saved as JSON in
bench/results/.

    .venv/bin/python bench/throughput.py                 # full run, ~4 minutes
    .venv/bin/python bench/throughput.py --readings 50000 --protocols 3.1.1 --modes live
    .venv/bin/python bench/throughput.py --instances 1,2  # one vs two collectors ($share)
    .venv/bin/python bench/throughput.py --readings 150000 --protocols 3.1.1 --registers \
        --skip-ceilings --lag-seconds 0             # registers vs interval readings
    .venv/bin/python bench/throughput.py --readings 150000 --protocols 5 --registers --mapped \
        --skip-ceilings --lag-seconds 0 --rounds 2  # mapped payloads vs native ones
    git worktree add /tmp/before 4873bcf            # an older commit's collector, alternated
    .venv/bin/python bench/throughput.py --protocols 5 --readings 200000 --lag-seconds 0 \
        --baseline /tmp/before --rounds 2           #   with today's in the same run

With ``--baseline [LABEL=]CHECKOUT`` (repeatable) each checkout's collector is measured in
the same run, alternating with today's (``--rounds`` times each): machines differ by 30 %
and more, so before/after is only comparable within one run (bench/baseline.py).

Bounded: every load is a fixed number of readings and every wait has a deadline.
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
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil

REPO = Path(__file__).resolve().parent.parent

from bench import baseline  # noqa: E402
from collector.tools.local_services import MosquittoProcess, PostgresProcess  # noqa: E402

BUILD = REPO / "bench" / ".build"
RESULTS = REPO / "bench" / "results"
TOOL = BUILD / "mqttload"
DEVICES = 10_000  # meter ids and vehicle ids each, as in the brief


def build_tool() -> Path:
    """Compile bench/mqttload.c (C publisher/subscriber on the installed libmosquitto)."""
    source = REPO / "bench" / "mqttload.c"
    if TOOL.exists() and TOOL.stat().st_mtime >= source.stat().st_mtime:
        return TOOL
    BUILD.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["gcc", "-O2", "-o", str(TOOL), str(source), "-l:libmosquitto.so.1", "-lpthread"],
        check=True,
    )
    return TOOL


def run_json(argv: list[str], timeout: float) -> dict:
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


#: The payload mapping of the ``mapped`` runs: Shelly Gen2 switches (deploy/sources/
#: shelly-gen2.toml) under the run's topic prefix.
SHELLY_SOURCE = """
[[source]]
name      = "bench-shelly"
topic     = "{prefix}/{{device}}/events/rpc"
kind      = "meter"
device_id = "{{device}}"
when      = {{ path = "method", equals = "NotifyStatus" }}
timestamp = {{ path = "params.ts", format = "epoch_s" }}
fields = [
  {{ target = "kwhRegisterAc", path = 'params."switch:0".aenergy.total', unit = "Wh" }},
  {{ target = "voltage",       path = 'params."switch:0".voltage' }},
]
"""


def publish(
    broker: MosquittoProcess,
    total: int,
    publishers: int,
    rate: float = 0.0,
    prefix: str = "",
    registers: bool = False,
    mapped: bool = False,
) -> list[dict]:
    """Publish ``total`` readings from ``publishers`` C processes in parallel (disjoint ids);
    with ``registers`` they carry cumulative registers (kwhRegisterAc/Dc), not intervals;
    ``mapped``: every one a Shelly Gen2 NotifyStatus with its Wh register (SHELLY_SOURCE).

    The publishers play the devices and always speak MQTT 3.1.1, whatever the collector
    uses: MQTT 5 publishing through libmosquitto 2.0.11 into Mosquitto 2.0.11 stalls at
    ~14,500/s here (broker mostly idle), which would measure the load generator instead.
    """
    proto = "4"
    per, devices = total // publishers, DEVICES // publishers
    procs = [
        subprocess.Popen(
            [
                str(TOOL),
                "pub",
                "127.0.0.1",
                str(broker.port),
                f"pub-{uuid.uuid4().hex[:6]}",
                str(per),
                str(devices),
                proto,
                prefix,
                str(rate / publishers),
                str(i * devices),
                "2" if mapped else "1" if registers else "0",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(publishers)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        if proc.returncode:
            raise RuntimeError(f"publisher failed ({proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@dataclass
class ProcessSampler:
    """CPU seconds and peak RSS of named process groups while a measurement runs."""

    groups: dict[str, list[psutil.Process]]
    interval: float = 0.2
    cpu_start: dict[int, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def cpu(proc: psutil.Process) -> float:
        try:
            t = proc.cpu_times()
            return t.user + t.system
        except psutil.NoSuchProcess:
            return 0.0

    def _members(self, name: str) -> list[psutil.Process]:
        members = list(self.groups[name])
        if name == "postgres":  # the postmaster and every backend it forks
            for root in self.groups[name]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    members += root.children(recursive=True)
        return members

    def start(self) -> ProcessSampler:
        for name in self.groups:
            for p in self._members(name):
                self.cpu_start[p.pid] = self.cpu(p)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            for name in self.groups:
                rss = 0
                for p in self._members(name):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rss += p.memory_info().rss
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        if self._thread:
            self._thread.join()
        out = {}
        for name in self.groups:
            cpu = sum(self.cpu(p) - self.cpu_start.get(p.pid, 0.0) for p in self._members(name))
            out[name] = {
                "cpu_s": round(cpu, 3),
                "peak_rss_mb": round(self.peak_rss.get(name, 0) / 2**20, 1),
            }
        return out


@dataclass
class Profiler:
    """py-spy on one process, collapsed stacks written to bench/results/ (optional)."""

    proc: subprocess.Popen | None
    path: Path | None

    @classmethod
    def start(cls, pid: int, name: str, enabled: bool) -> Profiler:
        if not enabled:
            return cls(None, None)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"profile-{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}.txt"
        py_spy = str(Path(sys.executable).with_name("py-spy"))
        proc = subprocess.Popen(
            [py_spy, "record", "-p", str(pid), "-o", str(path), "--rate", "250", "--format", "raw"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return cls(proc, path)

    def stop(self) -> str | None:
        if self.proc is None or self.path is None:
            return None
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        self.proc.wait(60)
        return str(self.path.relative_to(REPO))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="energy-bench-"))
        self.pg = PostgresProcess(
            settings={
                "fsync": "on",
                "track_commit_timestamp": "on",
                "shared_buffers": "512MB",
                "max_wal_size": "4GB",
            }
        )
        self.broker = MosquittoProcess(self.tmp / "mosquitto")
        self.collectors: list[subprocess.Popen] = []

    def __enter__(self) -> Bench:
        self.pg.init().start()
        self.broker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.collectors:
            if proc.poll() is None:
                proc.kill()
        self.broker.kill()
        self.pg.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def pg_group(self) -> list[psutil.Process]:
        return [psutil.Process(self.pg.postmaster_pid())]

    # --- ceilings --------------------------------------------------------------------------

    def subscriber(self, kind: str, protocol: str, n: int, mode: str) -> dict:
        """A bare subscriber (``c``, ``bulk`` or ``iterate``) takes N readings, live or drain."""
        cid = f"{kind}-{uuid.uuid4().hex[:6]}"
        prefix = cid  # every measurement on topics of its own: earlier sessions get no copies
        if kind == "c":
            proto = "5" if protocol == "5" else "4"
            port = str(self.broker.port)
            argv = [str(TOOL), "sub", "127.0.0.1", port, cid, proto, f"{prefix}/+/+/reading"]

            def with_count(count: int) -> list[str]:
                return [*argv, str(count), "300"]
        else:
            argv = [
                sys.executable,
                str(REPO / "bench" / "bare_subscriber.py"),
                "--url",
                self.broker.url,
                "--client-id",
                cid,
                "--protocol",
                protocol,
                "--mode",
                kind,
                "--prefix",
                prefix,
            ]

            def with_count(count: int) -> list[str]:
                return [*argv, "--count", str(count)]

        run_json(with_count(0), 30)  # create the persistent session and its subscription
        if mode == "drain":
            publish(self.broker, n, self.args.publishers, prefix=prefix)
            return run_json(with_count(n), 600)
        proc = subprocess.Popen(with_count(n), stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)  # connected by now; anything earlier would wait in the session anyway
        publish(self.broker, n, self.args.publishers, prefix=prefix)
        out, _ = proc.communicate(timeout=600)
        return json.loads(out.strip().splitlines()[-1])

    # --- the collector ---------------------------------------------------------------------

    def collector_env(self, protocol: str, database: str, client_id: str, **extra: str) -> dict:
        return {
            **os.environ,
            "DATABASE_URL": self.pg.dsn(database),
            "MQTT_URL": self.broker.url,
            "MQTT_PROTOCOL": protocol,
            "MQTT_CLIENT_ID": client_id,
            "HTTP_ENABLED": "false",
            "LOG_FORMAT": "json",
            **extra,
        }

    def start_collector(self, env: dict, log: Path) -> subprocess.Popen:
        env = dict(env)
        code = env.pop("BENCH_CODE", None)
        if code:  # an older checkout's collector (bench/baseline.py)
            env["PYTHONPATH"] = code
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
            )
        self.collectors.append(proc)
        return proc

    @staticmethod
    def wait_log(log: Path, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and needle in log.read_text(errors="replace"):
                return
            time.sleep(0.01)
        raise TimeoutError(f"{needle} not in {log}")

    async def stored(self, database: str) -> int:
        conn = await asyncpg.connect(self.pg.dsn(database))
        try:
            return await conn.fetchval(
                "SELECT (SELECT count(*) FROM meter_readings) "
                "+ (SELECT count(*) FROM vehicle_readings)"
            )
        finally:
            await conn.close()

    async def wait_stored(self, database: str, n: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while (got := await self.stored(database)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {got} of {n} readings stored")
            await asyncio.sleep(0.5)

    async def commit_stats(self, database: str) -> dict:
        """Rate from the rows' own commit times; publish-to-commit lag from their timestamps."""
        conn = await asyncpg.connect(self.pg.dsn(database))
        try:
            row = await conn.fetchrow("""
                WITH c AS (
                    SELECT pg_xact_commit_timestamp(xmin) AS committed, ts FROM meter_readings
                    UNION ALL
                    SELECT pg_xact_commit_timestamp(xmin), ts FROM vehicle_readings
                )
                SELECT count(*) AS n, min(committed) AS first, max(committed) AS last,
                       percentile_cont(0.5) WITHIN GROUP (
                           ORDER BY extract(epoch FROM committed - ts)) AS lag_p50,
                       percentile_cont(0.99) WITHIN GROUP (
                           ORDER BY extract(epoch FROM committed - ts)) AS lag_p99,
                       max(extract(epoch FROM committed - ts)) AS lag_max
                FROM c""")
        finally:
            await conn.close()
        span = (row["last"] - row["first"]).total_seconds()
        return {
            "stored": row["n"],
            "seconds": round(span, 3),
            "rate": round(row["n"] / span, 1) if span else 0.0,
            "lag_p50_s": round(float(row["lag_p50"]), 4),
            "lag_p99_s": round(float(row["lag_p99"]), 4),
            "lag_max_s": round(float(row["lag_max"]), 4),
        }

    async def collector(
        self,
        protocol: str,
        n: int,
        mode: str,
        instances: int = 1,
        registers: bool = False,
        code: str | None = None,
        label: str = "now",
        settings: dict[str, str] | None = None,
        mapped: bool = False,
    ) -> dict:
        """The collector(s) store N readings: ``live`` while fast publishers send them, or
        ``drain`` when they were all queued in the broker first; with ``registers`` the
        readings carry cumulative registers, which the collector books; ``mapped``: they
        are Shelly payloads, decoded by a payload mapping. ``code``: the directory of another
        checkout's collector (bench/baseline.py)."""
        database = f"bench_{uuid.uuid4().hex[:8]}"
        prefix = database  # topics of its own: earlier sessions get no copies
        if mapped:
            sources = self.tmp / f"sources-{database}.toml"
            sources.write_text(SHELLY_SOURCE.format(prefix=prefix))
            settings = {**(settings or {}), "SOURCES_FILE": str(sources)}
        group = f"g{uuid.uuid4().hex[:4]}" if instances > 1 else ""
        envs = [
            self.collector_env(
                protocol,
                database,
                f"bench-{uuid.uuid4().hex[:6]}-{i}",
                MQTT_SHARED_GROUP=group,
                MQTT_TOPIC_PREFIX=prefix,
                **({"BENCH_CODE": code} if code else {}),
                **self.args.collector_env,
                **(settings or {}),
            )
            for i in range(instances)
        ]
        logs = [self.tmp / f"collector-{uuid.uuid4().hex[:6]}.log" for _ in envs]
        if mode == "drain":  # create the database and the sessions, stop, queue the load
            for env, log in zip(envs, logs, strict=True):
                proc = self.start_collector(env, log)
                self.wait_log(log, '"mqtt.connected"')
                proc.terminate()
                proc.wait(30)
            publish(
                self.broker, n, self.args.publishers, prefix=prefix, registers=registers,
                mapped=mapped,
            )  # fmt: skip
        procs = [self.start_collector(env, log) for env, log in zip(envs, logs, strict=True)]
        for log in logs:
            self.wait_log(log, '"collector.started"' if mode == "drain" else '"mqtt.connected"')
        sampler = ProcessSampler(
            {
                "collector": [psutil.Process(p.pid) for p in procs],
                "mosquitto": [psutil.Process(self.broker.proc.pid)],
                "postgres": self.pg_group(),
            }
        ).start()
        profiler = Profiler.start(
            procs[0].pid,
            f"{label}-{mode}-{protocol}-x{instances}{'-registers' if registers else ''}"
            f"{'-mapped' if mapped else ''}",
            self.args.profile == mode and instances == 1,
        )
        if mode == "live":
            await asyncio.to_thread(
                publish, self.broker, n, self.args.publishers, 0.0, prefix, registers, mapped
            )
        await self.wait_stored(database, n)
        usage = sampler.stop()
        profile = profiler.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        stats = await self.commit_stats(database)
        if mode == "drain":  # queued before the start: a lag would only measure the queue
            for key in ("lag_p50_s", "lag_p99_s", "lag_max_s"):
                stats.pop(key)
        stats["processes"] = usage
        stats["collector_cpu_us_per_reading"] = round(usage["collector"]["cpu_s"] / n * 1e6, 1)
        if profile:
            stats["profile"] = profile
        return stats

    async def collector_paced(self, protocol: str, rate: float, seconds: float) -> dict:
        """Publishers at a fixed rate while the collector runs: the publish-to-commit lag."""
        database = f"bench_{uuid.uuid4().hex[:8]}"
        env = self.collector_env(
            protocol,
            database,
            f"bench-{uuid.uuid4().hex[:6]}",
            MQTT_TOPIC_PREFIX=database,  # topics of its own: earlier sessions get no copies
            **self.args.collector_env,
        )
        log = self.tmp / f"collector-{uuid.uuid4().hex[:6]}.log"
        proc = self.start_collector(env, log)
        self.wait_log(log, '"mqtt.connected"')
        n = int(rate * seconds) // self.args.publishers * self.args.publishers
        sampler = ProcessSampler(
            {
                "collector": [psutil.Process(proc.pid)],
                "mosquitto": [psutil.Process(self.broker.proc.pid)],
                "postgres": self.pg_group(),
            }
        ).start()
        profiler = Profiler.start(proc.pid, f"paced-{protocol}", self.args.profile == "paced")
        published = await asyncio.to_thread(
            publish, self.broker, n, self.args.publishers, rate, database
        )
        await self.wait_stored(database, n)
        usage = sampler.stop()
        profile = profiler.stop()
        proc.terminate()
        proc.wait(30)
        stats = await self.commit_stats(database)
        stats["target_rate"] = round(rate, 1)
        stats["published_rate"] = round(sum(p["rate"] for p in published), 1)
        stats["processes"] = usage
        if profile:
            stats["profile"] = profile
        return stats


def parse_env(pairs: list[str]) -> dict[str, str]:
    return dict(pair.partition("=")[::2] for pair in pairs)


def summary(report: dict) -> str:
    """The figures as a markdown table (what the README shows)."""
    lines = [
        "| readings/s (QoS 1) | " + " | ".join(f"MQTT {p}" for p in report["protocols"]) + " |",
        "|---|" + "---|" * len(report["protocols"]),
    ]

    def row(label: str, get) -> None:
        cells = []
        for result in report["protocols"].values():
            try:
                cells.append(get(result))
            except (KeyError, TypeError):
                cells.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for mode in report["modes"]:
        row(
            f"broker -> bare C subscriber ({mode})",
            lambda r, m=mode: f"{r['c_subscriber'][m]['rate']:,.0f}",
        )
        row(
            f"bare aiomqtt subscriber, collector's stack ({mode})",
            lambda r, m=mode: f"{r['bare_aiomqtt'][m]['rate']:,.0f}",
        )
        if report.get("iterate"):
            row(
                f"stock aiomqtt `async for` ({mode})",
                lambda r, m=mode: f"{r['aiomqtt_iterator'][m]['rate']:,.0f}",
            )
        for inst in report["instances"]:
            row(
                f"**collector x{inst}, stored** ({mode})",
                lambda r, m=mode, i=inst: f"**{r[f'collector_x{i}'][m]['rate']:,.0f}**",
            )

        def stored(label: str, key: str, m: str = mode) -> None:
            row(f"**collector, {label}, stored** ({m})", lambda r: f"**{r[key][m]['rate']:,.0f}**")

        def ratio(label: str, key: str, of: str, m: str = mode) -> None:
            row(f"{label} ({m})", lambda r: f"{r[key][m]['rate'] / r[of][m]['rate']:.0%}")

        if report.get("registers"):
            stored("register readings", "collector_registers")
            ratio("register readings / interval readings", "collector_registers", "collector_x1")
        if report.get("mapped"):
            stored("mapped Shelly payloads", "collector_mapped")
            ratio("mapped / native interval readings", "collector_mapped", "collector_x1")
            if report.get("registers"):
                ratio(
                    "mapped / native register readings", "collector_mapped", "collector_registers"
                )
        row(
            f"collector / faster bare aiomqtt ({mode})",
            lambda r, m=mode: f"{r['ratio_to_faster_bare_aiomqtt'][m]:.0%}",
        )
    row(
        "collector CPU per stored reading (live)",
        lambda r: f"{r['collector_x1']['live']['collector_cpu_us_per_reading']} µs",
    )
    if report.get("registers"):
        row(
            "collector CPU per stored register reading (live)",
            lambda r: f"{r['collector_registers']['live']['collector_cpu_us_per_reading']} µs",
        )
    row(
        "paced at 80 % of live: stored/s",
        lambda r: f"{r['paced_80pct']['rate']:,.0f} of {r['paced_80pct']['target_rate']:,.0f}",
    )
    row(
        "paced: publish-to-commit lag p50 / p99",
        lambda r: (
            f"{r['paced_80pct']['lag_p50_s'] * 1000:.0f} / "
            f"{r['paced_80pct']['lag_p99_s'] * 1000:.0f} ms"
        ),
    )
    for name in ("collector", "mosquitto", "postgres"):
        row(
            f"{name}: CPU s / peak RSS MB (live)",
            lambda r, n=name: "{cpu_s} / {peak_rss_mb}".format(
                **r["collector_x1"]["live"]["processes"][n]
            ),
        )
    lines += rounds_table(report)
    return "\n".join(lines)


def rounds_table(report: dict) -> list[str]:
    """Every collector run of every round, in run order, against the same run's ceiling."""
    out = []
    for protocol, result in report["protocols"].items():
        for mode, runs in result.get("rounds", {}).items():
            ceiling = result.get("c_subscriber", {}).get(mode, {}).get("rate")
            out += [
                "",
                f"MQTT {protocol}, {mode}:",
                "",
                "| collector | round | stored/s | vs bare C subscriber | CPU µs per reading |",
                "|---|---|---|---|---|",
            ]
            for r in runs:
                ratio = f"{r['rate'] / ceiling:.2f}x" if ceiling else ""
                out.append(
                    f"| {r['variant']} | {r['round']} | {r['rate']:,.0f} | {ratio} | "
                    f"{r['collector_cpu_us_per_reading']} |"
                )
    return out


async def main_async(args: argparse.Namespace) -> dict:
    build_tool()
    n = args.readings
    report: dict = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "readings": n,
        "publishers": args.publishers,
        "modes": args.modes,
        "instances": args.instances,
        "iterate": args.iterate,
        "registers": args.registers,
        "mapped": args.mapped,
        "collector_env": args.collector_env,
        "baselines": [label for label, *_ in args.baselines],
        "rounds": args.rounds,
        "protocols": {},
    }
    with Bench(args) as bench:
        for protocol in args.protocols:
            result: dict = {}
            for mode in args.modes:
                if not args.skip_ceilings:
                    print(f"[{protocol} {mode}] broker -> bare C subscriber", flush=True)
                    result.setdefault("c_subscriber", {})[mode] = bench.subscriber(
                        "c", protocol, n, mode
                    )
                    print(f"[{protocol} {mode}] bare aiomqtt subscriber", flush=True)
                    result.setdefault("bare_aiomqtt", {})[mode] = bench.subscriber(
                        "bulk", protocol, n, mode
                    )
                    if args.iterate:
                        print(f"[{protocol} {mode}] stock aiomqtt iterator", flush=True)
                        result.setdefault("aiomqtt_iterator", {})[mode] = bench.subscriber(
                            "iterate", protocol, n, mode
                        )
                for round_ in range(1, args.rounds + 1):
                    # Older checkouts first, then today's: alternated round after round.
                    collectors = [*args.baselines, ("now", args.now_code, {}, False)]
                    for label, code, env, older in collectors:
                        now = label == "now"
                        runs = [
                            *((f" x{i}", i, "") for i in (args.instances if now else [1])),
                            # an older commit may predate registers and mappings
                            *(
                                [(" registers", 1, "registers")]
                                if args.registers and not older
                                else []
                            ),
                            *([(" mapped", 1, "mapped")] if args.mapped and not older else []),
                        ]
                        for suffix, instances, shape in runs:
                            name = f"{label}{suffix}"
                            print(
                                f"[{protocol} {mode}] collector {name}, round {round_}", flush=True
                            )
                            stats = await bench.collector(
                                protocol, n, mode, instances, shape == "registers", code=code,
                                label=label, settings=env, mapped=shape == "mapped",
                            )  # fmt: skip
                            stats.update(variant=name, round=round_)
                            result.setdefault("rounds", {}).setdefault(mode, []).append(stats)
                            if now and round_ == 1:
                                key = f"collector_{shape}" if shape else f"collector_x{instances}"
                                result.setdefault(key, {})[mode] = stats
            live = result.get("collector_x1", {}).get("live", {}).get("rate")
            if args.lag_seconds and live:
                print(f"[{protocol}] paced at 80% of {live:,.0f}/s", flush=True)
                result["paced_80pct"] = await bench.collector_paced(
                    protocol, 0.8 * live, args.lag_seconds
                )
            report["protocols"][protocol] = result
        if not args.skip_ceilings:
            for result in report["protocols"].values():
                result["ratio_to_faster_bare_aiomqtt"] = {
                    mode: round(
                        result["collector_x1"][mode]["rate"]
                        / max(
                            r["bare_aiomqtt"][mode]["rate"] for r in report["protocols"].values()
                        ),
                        3,
                    )
                    for mode in args.modes
                    if "collector_x1" in result
                }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=300_000)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--protocols", type=lambda v: v.split(","), default=["3.1.1", "5"])
    parser.add_argument(
        "--modes",
        type=lambda v: v.split(","),
        default=["live", "drain"],
        help="live: publishers send while it runs; drain: all queued first",
    )
    parser.add_argument(
        "--instances",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1],
        help="collector processes sharing the load, e.g. 1,2",
    )
    parser.add_argument("--lag-seconds", type=float, default=20)
    parser.add_argument("--skip-ceilings", action="store_true")
    parser.add_argument(
        "--iterate", action="store_true", help="also measure stock aiomqtt `async for` (slow)"
    )
    parser.add_argument(
        "--profile",
        choices=["live", "drain", "paced"],
        help="py-spy the collector during that run (bench/results/)",
    )
    parser.add_argument("--collector-env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="[LABEL=]CHECKOUT",
        help="also run this checkout's collector (e.g. a git worktree of an older commit), "
        "alternating with today's; repeatable",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL[@CHECKOUT]:NAME=VALUE[,NAME=VALUE]",
        help="also run a collector (today's, or a checkout's) with these settings, "
        "alternating with the others, e.g. lanes1:WRITER_LANES=1; repeatable",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure each collector this many times, alternated"
    )
    parser.add_argument(
        "--registers",
        action="store_true",
        help="also measure the collector with register readings (kwhRegisterAc/Dc), which "
        "it books from each device's chain",
    )
    parser.add_argument(
        "--mapped",
        action="store_true",
        help="also measure the collector with Shelly Gen2 payloads decoded by a payload "
        "mapping (SOURCES_FILE): Wh registers under a quoted JMESPath key",
    )
    args = parser.parse_args()
    args.collector_env = parse_env(args.collector_env)
    work = Path(tempfile.mkdtemp(prefix="energy-bench-code-"))
    # Today's collector is this checkout's (whichever the installed package points at).
    args.now_code = str(baseline.overlay(REPO, work / "now"))
    args.baselines = [
        (label, str(baseline.overlay(path, work / label)), {}, True)
        for label, path in map(baseline.parse, args.baseline)
    ]
    for spec in args.variant:
        head, _, settings = spec.partition(":")
        label, _, checkout = head.partition("@")
        code = str(baseline.overlay(Path(checkout), work / label)) if checkout else args.now_code
        args.baselines.append((label, code, parse_env(settings.split(",")), False))
    try:
        report = asyncio.run(main_async(args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"throughput-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(summary(report))
    print(f"\nfull results: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
