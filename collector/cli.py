"""Command line: ``energy-collector <command>`` (also ``python -m collector``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Callable, Coroutine
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
