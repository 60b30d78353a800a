"""Command line: ``energy-collector <command>`` (also ``python -m collector``).

This module declares the commands and their arguments and hands each to the module that
does it (imported only when that command runs, so ``--help`` and ``health`` start fast).
Errors an operator must act on arrive here as ``CollectorError`` and are printed as one
line; nothing else is caught.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from collector.errors import CollectorError, UsageError
from collector.logs import configure_logging
from collector.settings import Settings, load_settings
from collector.tools.shapes import SHAPES

# --- argument types ---------------------------------------------------------------------------


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


def _number(
    convert: Callable[[str], float], accept: Callable[[float], bool], rule: str, what: str
) -> Callable[[str], float]:
    """An argument type: ``convert`` the text, then refuse it unless ``accept`` holds."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r}{rule}")
        return value

    return parse


_rate = _number(float, lambda v: 0 <= v <= 1, ": a rate is between 0 and 1", "a number")
_count = _number(int, lambda v: v >= 0, " must not be negative", "a whole number")
_positive = _number(float, lambda v: 0 < v < float("inf"), " must be positive", "a number")


# --- commands ---------------------------------------------------------------------------------


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from collector.process import run_daemon

    return run_daemon(settings)


def cmd_api(settings: Settings, _args: argparse.Namespace) -> int:
    from collector.process import run_api

    return run_api(settings)


def cmd_leave(settings: Settings, _args: argparse.Namespace) -> int:
    from collector.process import run_leave

    return run_leave(settings)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from collector.db.prepare import prepare_database
    from collector.runtime import run_async

    applied = run_async(prepare_database(settings, migrate_now=True))
    print(f"schema up to date ({len(applied)} migration(s) applied now)")
    if args.citus:
        from collector.db.citus import distribute
        from collector.db.prepare import connect

        async def citus() -> int:
            conn = await connect(settings, application_name="energy-collector-migrate")
            try:
                return await distribute(conn)
            finally:
                await conn.close()

        print(f"citus: {run_async(citus())} table(s) distributed now (the rest were already)")
    return 0


def _migrate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--citus",
        action="store_true",
        help="and distribute the schema on this Citus coordinator (docs/scale.md); needed only "
        "when Citus was installed after the migrations ran",
    )


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from collector.tools import check

    return check.run(settings, listen_s=args.listen)


def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    from collector.tools.check import health_url, probe_health

    ready, body = probe_health(args.url or health_url(settings), args.timeout)
    print(body)
    return 0 if ready else 1


#: The device families ``simulate --devices-as`` can play.
SHAPE_NAMES = tuple(SHAPES)


def _devices_as(value: str) -> tuple[str, int | None]:
    family, _, count = value.partition("=")
    if family not in SHAPE_NAMES:
        raise argparse.ArgumentTypeError(f"{family!r} is not one of {', '.join(SHAPE_NAMES)}")
    if not count:
        return family, None
    if not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{count!r}: a number of meters, at least 1")
    return family, int(count)


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from collector.tools import simulate

    return simulate.run(
        settings,
        simulate.SimulatorOptions(
            meters=args.meters,
            vehicles=args.vehicles,
            interval_s=args.interval,
            speed=args.speed,
            start=args.start,
            duration_s=args.duration,
            count=args.count,
            faulty_share=args.faulty_share,
            registers=args.registers,
            reset_rate=args.reset_rate,
            glitch_rate=args.glitch_rate,
            devices_as=tuple(args.devices_as),
            duplicate_rate=args.duplicate_rate,
            out_of_order_rate=args.out_of_order_rate,
            malformed_rate=args.malformed_rate,
            seed=args.seed,
            api_url=args.api_url,
            api_token=args.api_token or None,
            progress=not args.no_progress,
            ocpp=args.ocpp,
            ocpp_interval_s=args.ocpp_interval,
            ocpp_url=args.ocpp_url,
        ),
    )


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from collector.tools import demo

    if args.meters < 1 or args.vehicles < 1:
        raise UsageError("the demo needs at least one meter and one vehicle")
    if "LOG_LEVEL" not in os.environ:  # the guide and status lines, not every log event
        configure_logging("warning", settings.log_format)
    options = demo.DemoOptions(
        meters=args.meters,
        vehicles=args.vehicles,
        speed=args.speed,
        port=args.port,
        keep=args.keep,
    )
    return demo.run(settings, options, say=lambda text: print(text, flush=True))


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    """0 when every row is stored (or was already), 3 when some rows were rejected (see the
    report), 1 when the import could not run."""
    from collector.tools import importer

    return importer.run(
        settings,
        args.file,
        fmt=args.format,
        rejects_path=args.rejects,
        progress=not args.no_progress,
    )


def parse_day(text: str) -> date:
    """A date, YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from collector.tools import export

    today = datetime.now(UTC).date()
    return export.run(
        settings,
        args.export,
        first=args.from_ or today - timedelta(days=1),
        end=args.to or today,
        site_id=args.site,
        tz=args.tz,
        bucket=args.bucket,
        out=args.out,
        fmt=args.format,
    )


def cmd_chargers(settings: Settings, args: argparse.Namespace) -> int:
    from collector.tools import chargers

    return chargers.run(
        settings, args.action, args.target, vehicle=args.vehicle, refuse=args.refuse
    )


# --- arguments --------------------------------------------------------------------------------


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
    add(
        "--registers",
        type=_rate,
        nargs="?",
        const=1.0,
        default=0.0,
        metavar="SHARE",
        help="devices report cumulative registers (kwhRegisterAc, kwhRegisterDc) instead of "
        "each interval's energy: all of them, or this share (default: none)",
    )
    add(
        "--reset-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="share of register readings after a reboot: the register restarts from 0",
    )
    add(
        "--glitch-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="share of register readings that read 0 once (default 0)",
    )
    add(
        "--devices-as",
        type=_devices_as,
        action="append",
        default=[],
        metavar="FAMILY[=N]",
        help="N meters (default: a tenth) publish as this device family does, on its topics "
        f"({', '.join(SHAPE_NAMES)}), for SOURCES_FILE=deploy/sources/FAMILY.toml; repeatable",
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
    add(
        "--ocpp",
        type=_count,
        default=0,
        metavar="N",
        help="also run N OCPP chargers (half 1.6J, half 2.0.1) charging in real time against "
        "the collector's OCPP_LISTEN; registered first (chargers add)",
    )
    add(
        "--ocpp-interval",
        type=parse_duration,
        default=60.0,
        metavar="DURATION",
        help="time between two meter values of a charging session (real time, default 60s)",
    )
    add("--ocpp-url", metavar="URL", help="default: ws://OCPP_LISTEN/ocpp")


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
        help="where to write the rejected rows (default: FILE.rejected.csv beside the file; "
        "written only when a row is rejected)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _export_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("export", choices=("device-days", "sessions", "site-balance"), help="what to export")
    add("--from", dest="from_", type=parse_day, metavar="DATE",
        help="the first local day (default: yesterday)")  # fmt: skip
    add("--to", type=parse_day, metavar="DATE", help="the day after the last (default: today)")
    add("--site", help="one site of SITES_FILE (default: every device, or every site)")
    add("--tz", help="the days' zone (default: each device's site's, UTC without one)")
    add("--bucket", choices=("hour", "day"), default="hour", help="site-balance: per hour or day")
    add("--format", choices=("csv", "parquet"), default="csv",
        help="csv (default), or parquet (the extra energy-collector[parquet])")  # fmt: skip
    add("--out", type=Path, metavar="FILE",
        help="write here, and the manifest to FILE.manifest.json (default: stdout, the "
        "manifest to stderr)")  # fmt: skip


def _chargers_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("add", "list", "remove", "tag"),
        help="add ID: register a charger and print its password; list; remove ID; "
        "tag IDTAG [--vehicle V] [--refuse]: what an id tag stands for",
    )
    parser.add_argument("target", nargs="?", help="the charger id (the id tag for `tag`)")
    parser.add_argument("--vehicle", help="tag: the vehicle this id tag stands for")
    parser.add_argument("--refuse", action="store_true", help="tag: refuse it at Authorize")


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
    "migrate": (
        cmd_migrate,
        "create the database if needed and apply pending migrations",
        _migrate_args,
    ),
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
    "export": (
        cmd_export,
        "device-days, sessions or site balances as CSV, with a manifest (rows, sha256)",
        _export_args,
    ),
    "chargers": (
        cmd_chargers,
        "the OCPP chargers allowed to connect (add prints a password), and id tags",
        _chargers_args,
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
        configure_logging(settings.log_level, settings.log_format)
        code: int = args.func(settings, args)
    except CollectorError as exc:
        print(f"energy-collector: {exc}", file=sys.stderr)
        return exc.exit_code
    return code
