"""`energy-collector demo`: the whole system on one machine, in one command.

Uses the local PostgreSQL and Mosquitto when they answer (a database and topics of its own,
so it never mixes with real data), otherwise starts throwaway ones from the local binaries.
Runs the collector with its API and a simulated fleet (a day of history at high speed, then
live), prints where to look, and on Ctrl-C stops everything it started and removes what it
created: the demo database, the broker session, the throwaway services and their files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiomqtt
import asyncpg
import structlog

from collector.errors import CollectorError
from collector.process import build_daemon
from collector.runtime import run_async
from collector.settings import Settings, load_settings, mask_url
from collector.sources.mappings.load import under_prefix
from collector.sources.mqtt.broker import clear_retained, client_options, forget_session
from collector.tools import ocpp_fleet
from collector.tools.local_services import MosquittoProcess, PostgresProcess, free_port
from collector.tools.simulate import Simulator, SimulatorError, SimulatorOptions

Say = Callable[[str], None]


#: How often the demo's collector evaluates its alert rules (ALERT_INTERVAL_S, and the
#: efficiency rules' ALERT_EFFICIENCY_INTERVAL_S).
DEMO_ALERT_INTERVAL_S = 5
#: OCPP chargers (half 1.6J, half 2.0.1) charging live, a meter value every few seconds.
DEMO_CHARGERS = 4
DEMO_CHARGER_INTERVAL_S = 5.0
#: Meters that publish as real devices do, decoded by the shipped mappings (deploy/sources).
DEMO_DEVICES_AS: tuple[tuple[str, int | None], ...] = (("shelly-gen2", 3), ("tasmota", 2))
SHIPPED_SOURCES = Path(__file__).resolve().parents[2] / "deploy" / "sources"
#: Faults the demo's fleet injects on purpose (shares of the readings), so an operator sees
#: what the collector does with them: duplicates absorbed, late readings stored without
#: moving a device's state back, malformed packets dead-lettered ("rejected").
DUPLICATE_RATE = 0.01
OUT_OF_ORDER_RATE = 0.01
MALFORMED_RATE = 0.002
#: Half the devices report cumulative registers (docs/registers.md), which now and then
#: restart from 0 (a reboot) or read 0 once (a glitch); the other half interval energies.
REGISTER_SHARE = 0.5
RESET_RATE = 0.0005
GLITCH_RATE = 0.001


@dataclass(frozen=True)
class DemoOptions:
    meters: int = 50
    vehicles: int = 50
    speed: float = 720.0  # the day of history in two minutes
    faulty_share: float = 0.1
    port: int = 8000
    keep: bool = False


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def postgres_answers(url: str) -> str | None:
    """None if a server answers at ``url`` (its maintenance database), else why not."""
    try:
        conn = await asyncpg.connect(with_database(url, "postgres"), timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return str(exc) or type(exc).__name__
    await conn.close()
    return None


async def broker_answers(settings: Settings) -> str | None:
    """None if the broker accepts a connection with the configured account, else why not."""
    identifier = f"demo-probe-{uuid.uuid4().hex[:6]}"
    try:
        async with aiomqtt.Client(
            **client_options(settings, identifier, keep_session=False, timeout=3)
        ):
            return None
    except aiomqtt.MqttError as exc:
        return str(exc)


class Demo:
    def __init__(self, settings: Settings, options: DemoOptions, say: Say) -> None:
        self.base = settings
        self.options = options
        self.say = say
        self.tag = uuid.uuid4().hex[:6]
        self._cleanups: list[tuple[str, Callable[[], object]]] = []
        self._tmp: Path | None = None
        #: meters playing real device families, when their mappings are at hand
        self._devices_as: tuple[tuple[str, int | None], ...] = ()

    async def run(self, stop: asyncio.Event) -> int:
        try:
            settings = await self._prepare()
        except DemoError as exc:
            self.say(f"demo: {exc}")
            await self._cleanup()
            return 1
        service = build_daemon(settings, handle_signals=False)
        collector = asyncio.create_task(service.run(), name="collector")
        self._cleanups.append(
            ("broker session", lambda: forget_session(settings))  # an awaitable
        )
        # run before the session is forgotten (the list runs backwards): the collector has
        # stopped by then, so nothing is published after
        self._cleanups.append(
            (
                "retained alert messages",
                lambda: clear_retained(settings, f"{settings.mqtt_topic_prefix}/alerts/#"),
            )
        )
        started = asyncio.create_task(service.started.wait())
        await asyncio.wait({collector, started}, return_when=asyncio.FIRST_COMPLETED)
        if collector.done():
            self.say("demo: the collector did not start (see the log lines above)")
            await self._cleanup()
            return 1
        api = f"http://127.0.0.1:{service.http_port}"
        simulator = Simulator(
            settings,
            SimulatorOptions(
                meters=self.options.meters,
                vehicles=self.options.vehicles,
                speed=self.options.speed,
                faulty_share=self.options.faulty_share,
                registers=REGISTER_SHARE,
                reset_rate=RESET_RATE,
                glitch_rate=GLITCH_RATE,
                devices_as=self._devices_as,
                duplicate_rate=DUPLICATE_RATE,
                out_of_order_rate=OUT_OF_ORDER_RATE,
                malformed_rate=MALFORMED_RATE,
                seed=42,
                api_url=api,
                progress=False,
            ),
        )
        sim_stop = threading.Event()
        simulating = asyncio.create_task(asyncio.to_thread(simulator.run, sim_stop))
        chargers = ocpp_fleet.OcppFleetReport()
        charging = asyncio.create_task(
            ocpp_fleet.run_fleet(
                settings,
                ocpp_fleet.OcppFleetOptions(
                    chargers=DEMO_CHARGERS, interval_s=DEMO_CHARGER_INTERVAL_S, seed=42
                ),
                chargers,
                sim_stop.is_set,
            )
        )
        self._print_guide(api, settings, simulator)
        code = await self._watch(stop, collector, simulating, service)
        sim_stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(charging, 60)
        with contextlib.suppress(SimulatorError, asyncio.CancelledError):
            await simulating
        service.request_stop("demo stopped")
        collector_code = await collector
        await self._cleanup()
        self.say("demo: stopped; everything it started is stopped and removed")
        return code or collector_code

    async def _watch(self, stop, collector, simulating, service) -> int:
        """Print a status line now and then until Ctrl-C (or something fails)."""
        last = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)
            if collector.done():
                self.say("demo: the collector stopped unexpectedly")
                return 1
            if simulating.done() and simulating.exception() is not None:
                self.say(f"demo: the simulator failed: {simulating.exception()}")
                return 1
            if time.monotonic() - last >= 15:
                last = time.monotonic()
                stored, rejected = service.metrics.stored_total(), service.metrics.rejected_total()
                self.say(f"demo: {stored:,} readings stored, {rejected} rejected")
        return 0

    async def _prepare(self) -> Settings:
        """Find or start PostgreSQL and Mosquitto; the settings the demo's collector runs on."""
        base = self.base
        overrides = {
            "MQTT_CLIENT_ID": f"energy-demo-{self.tag}",
            "MQTT_TOPIC_PREFIX": f"demo-{self.tag}",
            "MQTT_SHARED_GROUP": "",
            "MQTT_SESSION_EXPIRY_S": "300",
            "HOST": "127.0.0.1",
            "PORT": str(self._port()),
            "READ_TOKENS": "",
            "INGEST_TOKENS": "",
            "RETENTION_DAYS": "0",
            "OCPP_LISTEN": f"127.0.0.1:{free_port()}",
            "OCPP_MODE": "csms",
        }
        database = base.database_url.get_secret_value()
        why = await postgres_answers(database)
        if why is None:
            # its own database: a second demo on the machine neither shares nor drops it
            name = f"{base.database_name}_demo_{self.tag}"
            self.say(f"demo: using the PostgreSQL at {_where(database)}, database {name}")
            if not self.options.keep:
                self._cleanups.append((f"database {name}", lambda: _drop(database, name)))
            else:
                self.say(f"demo: --keep: the database {name} stays after the demo")
        else:
            self.say(f"demo: no PostgreSQL at {_where(database)} ({why})")
            pg = PostgresProcess(settings={"fsync": "off"})
            try:
                await asyncio.to_thread(pg.init)
                await asyncio.to_thread(pg.start)
            except (OSError, FileNotFoundError) as exc:
                pg.destroy()
                raise DemoError(f"cannot start a PostgreSQL of its own: {exc}") from None
            except Exception as exc:  # subprocess.CalledProcessError: initdb/pg_ctl output
                pg.destroy()
                output = getattr(exc, "stderr", b"") or b""
                raise DemoError(
                    f"cannot start a PostgreSQL of its own: {output.decode().strip() or exc}"
                ) from None
            self._cleanups.append(("throwaway PostgreSQL", pg.destroy))
            database, name = pg.dsn("postgres"), "energy_demo"
            self.say(f"demo: started a throwaway PostgreSQL on 127.0.0.1:{pg.port}")
        overrides["DATABASE_URL"] = with_database(database, name)

        why = await broker_answers(base)
        if why is None:
            self.say(f"demo: using the Mosquitto at {base.mqtt.host}:{base.mqtt.port}")
            overrides["MQTT_URL"] = base.mqtt_url.get_secret_value()
        else:
            self.say(f"demo: no MQTT broker at {base.mqtt.host}:{base.mqtt.port} ({why})")
            self._tmp = Path(tempfile.mkdtemp(prefix="energy-demo-"))
            broker = MosquittoProcess(self._tmp / "mosquitto")
            try:
                await asyncio.to_thread(broker.start)
            except (OSError, TimeoutError) as exc:
                raise DemoError(f"cannot start a Mosquitto of its own: {exc}") from None
            self._cleanups.append(("throwaway Mosquitto", broker.stop))
            overrides["MQTT_URL"] = broker.url
            self.say(f"demo: started a throwaway Mosquitto on 127.0.0.1:{broker.port}")

        overrides.update(self._mapped_sources(f"demo-{self.tag}"))
        # Alerts are evaluated often, so the faulty chargers' alerts fire within seconds.
        overrides["ALERT_INTERVAL_S"] = str(DEMO_ALERT_INTERVAL_S)
        overrides["ALERT_EFFICIENCY_INTERVAL_S"] = str(DEMO_ALERT_INTERVAL_S)
        env = {**base.to_env(), **overrides}
        return load_settings(env, env_file=None)

    def _mapped_sources(self, prefix: str) -> dict[str, str]:
        """A few meters publish as Shelly and Tasmota devices do: the shipped mappings,
        their topics under the demo's prefix, in a folder of the demo's own (SOURCES_FILE).
        Nothing when the shipped files are not at hand (a package without the repository)."""
        if not SHIPPED_SOURCES.is_dir():
            return {}
        folder = Path(tempfile.mkdtemp(prefix="energy-demo-sources-"))
        self._cleanups.append(("mapping files", lambda: shutil.rmtree(folder, True)))
        for family, _count in DEMO_DEVICES_AS:
            text = (SHIPPED_SOURCES / f"{family}.toml").read_text()
            (folder / f"{family}.toml").write_text(under_prefix(text, prefix))
        self._devices_as = DEMO_DEVICES_AS
        return {"SOURCES_FILE": str(folder)}

    def _port(self) -> int:
        """The asked port if it is free, else any free one."""
        port = self.options.port
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                chosen = free_port()
                self.say(f"demo: port {port} is taken; the API listens on {chosen}")
                return chosen
        return port

    def _print_guide(self, api: str, settings: Settings, simulator: Simulator) -> None:
        fleet = simulator.fleet
        faulty = next((v for v, m in fleet.links if m in fleet.faulty_meters), fleet.links[0][0])
        healthy = next((v for v, m in fleet.links if m not in fleet.faulty_meters), faulty)
        meter = fleet.links[0][1]
        topic = f"{settings.mqtt_topic_prefix}/meters/{meter}/reading"
        now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        payload = json.dumps(
            {"meterId": meter, "kwhConsumedAc": 0.1, "voltage": 230.5, "timestamp": now}
        )
        o = self.options
        dup, late, bad = DUPLICATE_RATE, OUT_OF_ORDER_RATE, MALFORMED_RATE
        replay_s = 24 * 3600 / o.speed
        replay = f"{replay_s / 60:.0f} min" if replay_s >= 90 else f"{replay_s:.0f} s"
        families: dict[str, list[str]] = {}
        for meter, shape in simulator.shaped.items():
            families.setdefault(shape.family, []).append(shape.device_id(meter))
        shaped = "".join(
            f"{len(ids)} meters publish as {family} devices do ({', '.join(sorted(ids))}),\n"
            f"      decoded by deploy/sources/{family}.toml (GET /v1/sources).\n      "
            for family, ids in families.items()
        )
        self.say(
            f"""
demo: running. {o.meters} meters and {o.vehicles} vehicles: the last 24 h are replayed
      {o.speed:g}x faster (in about {replay}), then readings arrive live, one a minute
      per device. {len(fleet.faulty_meters)} of the chargers are faulty (low efficiency):
      their vehicles' low_efficiency alerts fire (dashboard, /v1/alerts, MQTT alerts/#).
      {len(fleet.registers.values)} of the devices report cumulative registers (resets and
      glitches included), the others each interval's energy: both are booked the same way.
      {shaped}A register that restarts from 0 raises a register_anomaly alert for its device:
      expect a few over the day, nothing else (no device_silent: a replay is no silence).
      On purpose, {dup:.0%} of the packets are sent twice, {late:.0%} late and {bad:.1%}
      malformed: duplicates are absorbed, late readings never move a device's state
      back, and the malformed ones are what "rejected" counts (reasons in the table
      rejected_messages).

  Dashboard        {api}/dashboard
  API docs         {api}/docs
  Fleet, 24 h      curl -s {api}/v1/analytics/fleet
  A faulty charger curl -s {api}/v1/analytics/performance/{faulty}
  A healthy one    curl -s {api}/v1/analytics/performance/{healthy}
  Latest state     curl -s {api}/v1/status/meter/{meter}
  Hourly series    curl -s '{api}/v1/analytics/vehicle/{healthy}/series'
  Alerts firing    curl -s {api}/v1/alerts
  Alert topics     mosquitto_sub -h {settings.mqtt.host} -p {settings.mqtt.port} -v \\
                     -t '{settings.mqtt_topic_prefix}/alerts/#'   (retained while firing)
  OCPP chargers    {api}/dashboard/chargers ; curl -s {api}/v1/sessions
                   ({DEMO_CHARGERS} chargers, half OCPP 1.6J and half 2.0.1, charge live at
                   ws://{settings.ocpp_listen}/ocpp/sim-cp-N, one session after another)
  Health, metrics  curl -s {api}/health ; curl -s {api}/metrics
  The database     psql '{_masked_dsn(settings)}'
  Publish one      mosquitto_pub -h {settings.mqtt.host} -p {settings.mqtt.port} -q 1 \\
                     -t '{topic}' -m '{payload}'
                   (the demo's topics start with {settings.mqtt_topic_prefix}/)

Press Ctrl-C to stop; the demo removes what it created.
"""
        )

    async def _cleanup(self) -> None:
        for what, action in reversed(self._cleanups):
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, 15)
            except Exception as exc:  # report and go on: clean up as much as possible
                self.say(f"demo: could not remove the {what}: {exc}")
        self._cleanups.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


class DemoError(CollectorError):
    """The demo cannot start; the message says why."""


async def _drop(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(with_database(server_url, "postgres"), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}"


def _masked_dsn(settings: Settings) -> str:
    return mask_url(settings.database_url.get_secret_value())


def run(settings: Settings, options: DemoOptions, say: Say = print) -> int:
    """``energy-collector demo``: run until SIGINT/SIGTERM; the exit code."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await Demo(settings, options, say).run(stop)

    structlog.get_logger("collector.demo").debug("demo.start", options=options)
    return run_async(main())
