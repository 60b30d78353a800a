"""Command line: ``energy-collector <command>`` (also ``python -m collector``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.logs import configure_logging
from collector.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from collector.service import CollectorService


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed (20-60 % more throughput here)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def tune_gc() -> None:
    """Make the cyclic garbage collector run far less often in the daemon.

    The collector holds up to ~10,000 readings in flight, several objects each. With the
    default threshold (a collection every 700 allocations) the collector walks them over
    and over: ~15 % of its CPU at 45,000 readings/s (bench/throughput.py). The hot path's
    objects are acyclic and freed by reference counting, so collections can be rarer; what
    was loaded at start is frozen out of them entirely.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def build_daemon(settings: Settings, *, handle_signals: bool = True) -> CollectorService:
    """The collector with its HTTP API. The CLI is the process-level composition root: the
    only collector module that imports the API package."""
    from api.app import create_app
    from collector.service import CollectorService

    def app_factory(service: CollectorService) -> object:
        return create_app(
            settings,
            ingest=service.http_ingest,
            daemon_health=service.health_snapshot,
            registry=service.metrics.registry,
        )

    return CollectorService(settings, handle_signals=handle_signals, app_factory=app_factory)


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    service = build_daemon(settings)
    tune_gc()
    return run_async(service.run())


def cmd_leave(settings: Settings, _args: argparse.Namespace) -> int:
    """Retire this instance (MQTT_CLIENT_ID) for good, losing nothing it was holding.

    With shared subscriptions the broker keeps routing an instance's share of readings to
    its session while it is down. After the instance is stopped, this unsubscribes (no new
    readings for it), stores and acknowledges what its session still holds, and then
    deletes the session.
    """
    from collector.mqtt_source import forget_session
    from collector.service import CollectorService

    async def main() -> int:
        service = CollectorService(settings, leaving=True)
        code = await service.run()
        if code != 0 or service.source is None or not service.source.left_clean:
            print(
                "energy-collector: the session still held readings at the end; it was "
                "kept. Run `energy-collector leave` again.",
                file=sys.stderr,
            )
            return 1
        await forget_session(settings)
        registry = service.metrics.registry
        stored = sum(
            registry.get_sample_value("collector_readings_stored_total", {"kind": kind}) or 0
            for kind in ("meter", "vehicle")
        )
        print(
            f"left: {int(stored)} readings stored from session "
            f"{settings.mqtt_client_id!r}, which is deleted"
        )
        return 0

    return run_async(main())


def cmd_api(settings: Settings, _args: argparse.Namespace) -> int:
    """The HTTP API alone, read-only (e.g. next to a read replica)."""
    import signal

    import uvicorn

    from api.app import create_app
    from collector.service import EmbeddedServer, StartupError, listen

    async def main() -> int:
        try:
            sock = listen(settings.host, settings.port)
        except StartupError as exc:
            print(f"energy-collector: {exc}", file=sys.stderr)
            return 1
        server = EmbeddedServer(
            uvicorn.Config(
                create_app(settings),
                log_config=None,
                access_log=False,
                lifespan="on",
                server_header=False,
                timeout_graceful_shutdown=5,
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        await server.serve(sockets=[sock])
        return 0 if server.started else 1

    return run_async(main())


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    import asyncpg

    from collector.migrations import MigrationError, ensure_database, migrate

    async def main() -> int:
        dsn = settings.database_url.get_secret_value()
        try:
            await ensure_database(dsn)
            conn = await asyncpg.connect(dsn, timeout=10)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            print(f"energy-collector: cannot reach the database: {exc}", file=sys.stderr)
            return 1
        try:
            applied = await migrate(conn)
        except MigrationError as exc:
            print(f"energy-collector: {exc}", file=sys.stderr)
            return 1
        finally:
            await conn.close()
        print(f"schema up to date ({len(applied)} migration(s) applied now)")
        return 0

    return run_async(main())


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    """Print the settings (secrets masked), reach the database and the broker."""
    from collector.checks import run_checks

    print("settings (secrets masked):")
    for name, value in settings.masked().items():
        print(f"  {name}={value}")
    checks = asyncio.run(run_checks(settings, args.listen))
    for check in checks:
        print(f"{check.name}: {'ok' if check.ok else 'FAILED'}: {check.detail}")
    failed = [c.name for c in checks if not c.ok]
    if failed:
        print(f"energy-collector: check failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    """Ask a running instance's /health (the container's healthcheck)."""
    from collector.checks import health_url, probe_health

    ready, body = probe_health(args.url or health_url(settings), args.timeout)
    print(body)
    return 0 if ready else 1


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "2h" or "1d"."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    number = text[:-1] if scale else text
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (e.g. 90, 90s, 15m, 2h, 1d)"
        ) from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return value


def parse_start(text: str) -> datetime:
    """An ISO 8601 time with an offset, or a time before now: "-24h", "-30m"."""
    if text.startswith("-"):
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text[1:]))
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time with an offset nor like -24h"
        )
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a rate is between 0 and 1")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _simulate_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--meters", type=_count, default=100, help="number of meters (default 100)")
    add("--vehicles", type=_count, default=100, help="number of vehicles (default 100)")
    add(
        "--interval",
        type=parse_duration,
        default=60.0,
        metavar="DURATION",
        help="time between two readings of a device, simulated (default 60s)",
    )
    add(
        "--speed",
        type=_positive,
        default=1.0,
        help="simulated seconds per real second (default 1); an accelerated run starts in "
        "the past and goes at real time once it reaches the present",
    )
    add(
        "--start",
        type=parse_start,
        metavar="TIME",
        help="simulated time of the first readings: ISO 8601, or -24h (default: now, or "
        "24 h ago with --speed > 1)",
    )
    add("--duration", type=parse_duration, metavar="DURATION", help="stop after this long")
    add("--count", type=_count, help="stop after this many readings")
    add(
        "--faulty-share",
        type=_rate,
        default=0.05,
        metavar="SHARE",
        help="share of chargers with a low efficiency (default 0.05)",
    )
    add("--duplicate-rate", type=_rate, default=0.0, metavar="RATE", help="default 0")
    add("--out-of-order-rate", type=_rate, default=0.0, metavar="RATE", help="default 0")
    add("--malformed-rate", type=_rate, default=0.0, metavar="RATE", help="default 0")
    add("--seed", type=int, help="same seed, same readings")
    add(
        "--api-url",
        metavar="URL",
        help="the collector's API: register each vehicle's link to its meter there",
    )
    add("--api-token", metavar="TOKEN", help="an ingest token, if the API requires one")
    add("--no-progress", action="store_true", help="no progress bar (log lines instead)")


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """Publish a simulated fleet's readings to MQTT_URL (as a gateway account)."""
    import signal
    import threading

    from collector.simulator import Simulator, SimulatorError, SimulatorOptions

    if args.meters + args.vehicles == 0:
        print("energy-collector: simulate needs at least one meter or vehicle", file=sys.stderr)
        return 2
    options = SimulatorOptions(
        meters=args.meters,
        vehicles=args.vehicles,
        interval_s=args.interval,
        speed=args.speed,
        start=args.start,
        duration_s=args.duration,
        count=args.count,
        faulty_share=args.faulty_share,
        duplicate_rate=args.duplicate_rate,
        out_of_order_rate=args.out_of_order_rate,
        malformed_rate=args.malformed_rate,
        seed=args.seed,
        api_url=args.api_url,
        api_token=args.api_token or None,
        progress=not args.no_progress,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        report = Simulator(settings, options).run(stop)
    except SimulatorError as exc:
        print(f"energy-collector: {exc}", file=sys.stderr)
        return 1
    print(
        f"simulated {report.readings} readings ({report.first_ts} .. {report.last_ts}); "
        f"sent {report.sent} packets in {report.elapsed_s:.1f} s ({report.rate:,.0f}/s), "
        f"{report.acked} acknowledged, {report.errors} errors; injected "
        f"{report.duplicates} duplicates, {report.out_of_order} out of order, "
        f"{sum(report.malformed.values())} malformed"
    )
    return 1 if report.errors else 0


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--meters", type=_count, default=50, help="default 50")
    parser.add_argument("--vehicles", type=_count, default=50, help="default 50")
    parser.add_argument(
        "--speed",
        type=_positive,
        default=720.0,
        help="how much faster than real time the last 24 h are replayed (default 720: two minutes)",
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="the API's port (default 8000, or a free one)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the demo database (<database>_demo) at exit"
    )


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The whole system locally with a simulated fleet, until Ctrl-C."""
    import os

    from collector.demo import DemoOptions, run_demo

    if args.meters < 1 or args.vehicles < 1:
        print(
            "energy-collector: the demo needs at least one meter and one vehicle", file=sys.stderr
        )
        return 2
    if "LOG_LEVEL" not in os.environ:  # the guide and status lines, not every log event
        configure_logging("warning", settings.log_format)
    options = DemoOptions(
        meters=args.meters,
        vehicles=args.vehicles,
        speed=args.speed,
        port=args.port,
        keep=args.keep,
    )
    return run_demo(settings, options, say=lambda text: print(text, flush=True))


def _import_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a CSV or NDJSON file of readings")
    parser.add_argument(
        "--format",
        choices=("auto", "csv", "ndjson"),
        default="auto",
        help="default: by the file name (.csv, .ndjson, .jsonl), else by its first byte",
    )
    parser.add_argument(
        "--rejects",
        type=Path,
        metavar="PATH",
        help="where to write the rejected rows (default: FILE.rejected.csv in the current "
        "directory; written only when a row is rejected)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    """Load history from a file; 0 when every row is stored (or was already), 3 when some
    rows were rejected (see the report), 1 when the import could not run."""
    import asyncpg

    from collector.importer import Importer, ImportFailed
    from collector.migrations import MigrationError, ensure_database, migrate, pending_migrations
    from collector.partitions import PartitionManager
    from collector.readings import ReadingValidator
    from collector.service import create_pool

    path: Path = args.file
    if not path.is_file():
        print(f"energy-collector: {path} is not a readable file", file=sys.stderr)
        return 1
    rejects_path = args.rejects or Path.cwd() / f"{path.name}.rejected.csv"

    async def main() -> int:
        dsn = settings.database_url.get_secret_value()
        try:
            await ensure_database(dsn)
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                if settings.migrate_on_start:
                    await migrate(conn)
                elif await pending_migrations(conn):
                    print(
                        "energy-collector: the schema is not up to date; run "
                        "`energy-collector migrate` first",
                        file=sys.stderr,
                    )
                    return 1
            finally:
                await conn.close()
            pool = await create_pool(settings, min_size=1, max_size=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, MigrationError) as exc:
            print(f"energy-collector: cannot prepare the database: {exc}", file=sys.stderr)
            return 1
        try:
            importer = Importer(
                pool,
                validator=ReadingValidator(
                    max_payload_bytes=settings.max_payload_bytes,
                    max_future_skew_s=settings.max_future_skew_s,
                ),
                partitions=PartitionManager(
                    pool,
                    ahead_days=settings.partition_ahead_days,
                    retention_days=settings.retention_days,
                    rollup_retention_days=settings.rollup_retention_days,
                ),
                retention_days=settings.retention_days,
            )
            report = await importer.run(
                path, fmt=args.format, rejects_path=rejects_path, progress=not args.no_progress
            )
        except ImportFailed as exc:
            print(f"energy-collector: {exc}", file=sys.stderr)
            return 1
        finally:
            await pool.close()
        rejected = sum(report.rejected.values())
        print(
            f"{path}: {report.rows} rows in {report.elapsed_s:.1f} s ({report.rate:,.0f}/s): "
            f"{report.meters_new} meter and {report.vehicles_new} vehicle readings stored, "
            f"{report.already_stored} already stored, {rejected} rejected"
        )
        if rejected:
            reasons = ", ".join(f"{n} {r}" for r, n in report.rejected.most_common())
            print(f"rejected: {reasons}; rows in {report.rejects_path}")
            return 3
        return 0

    return run_async(main())


def _check_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="count the readings arriving on the broker for this long (default 2)",
    )


def _health_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="default: http://HOST:PORT/health from the settings")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")


Command = tuple[
    Callable[[Settings, argparse.Namespace], int],
    str,
    Callable[[argparse.ArgumentParser], None] | None,
]
COMMANDS: dict[str, Command] = {
    "demo": (
        cmd_demo,
        "try it: the collector, its API and a simulated fleet on this machine (Ctrl-C ends)",
        _demo_args,
    ),
    "run": (cmd_run, "run the collector daemon (MQTT ingest, writer, HTTP API)", None),
    "api": (cmd_api, "run only the HTTP API, read-only (no ingest)", None),
    "migrate": (cmd_migrate, "create the database if needed and apply pending migrations", None),
    "check": (
        cmd_check,
        "check the settings and reach the database and the broker",
        _check_args,
    ),
    "health": (
        cmd_health,
        "ask a running instance whether it is ready (exit 0 or 1)",
        _health_args,
    ),
    "simulate": (
        cmd_simulate,
        "publish realistic readings of simulated meters and vehicles",
        _simulate_args,
    ),
    "import": (
        cmd_import,
        "load history from a CSV or NDJSON file (validated; safe to repeat)",
        _import_args,
    ),
    "leave": (cmd_leave, "retire this instance: drain and delete its MQTT session", None),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energy-collector",
        description="MQTT telemetry collector for smart meters and EV telematics. "
        "Configured by environment variables (and ./.env); see the README.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, help_text, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if add_args is not None:
            add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"energy-collector: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return args.func(settings, args)
