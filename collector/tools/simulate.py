"""`energy-collector simulate`: publish a simulated fleet's readings to the broker.

The fleet (collector/tools/fleet.py) is stepped one reading interval at a time. The simulated
clock runs ``speed`` times faster than the wall clock but never ahead of it: an accelerated
run starts in the past (by default 24 h ago), catches up with the present, and from then on
goes at real time, so no reading is ever in the future for the collector.

Publishing is QoS 1 through paho's network thread, with at most ``window`` messages not yet
acknowledged by the broker, so memory stays bounded whatever the broker's speed.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from tqdm import tqdm

from collector.errors import CollectorError, UsageError
from collector.settings import Settings
from collector.sources.mqtt.broker import tls_context
from collector.tools import ocpp_fleet
from collector.tools.fleet import FaultInjector, Fleet, Message, ticks
from collector.tools.shapes import SHAPES, Shape


class SimulatorError(CollectorError):
    """The simulator cannot run (broker refused, API refused); the message says why."""


@dataclass(frozen=True)
class SimulatorOptions:
    meters: int = 100
    vehicles: int = 100
    interval_s: float = 60.0
    speed: float = 1.0
    #: Simulated time of the first reading; default: now, or 24 h ago when accelerated.
    start: datetime | None = None
    duration_s: float | None = None  # wall-clock seconds
    count: int | None = None  # readings (faults come on top)
    faulty_share: float = 0.05
    #: share of the devices that report registers, and what their registers do
    registers: float = 0.0
    reset_rate: float = 0.0
    glitch_rate: float = 0.0
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0
    malformed_rate: float = 0.0
    seed: int | None = None
    #: (family, meters: None for a tenth): meters publishing in a device family's shape
    devices_as: tuple[tuple[str, int | None], ...] = ()
    api_url: str | None = None  # register each vehicle's link to its meter there
    api_token: str | None = None
    window: int = 5000  # unacknowledged messages at most
    progress: bool = True
    #: OCPP chargers charging in real time against the collector's OCPP listener
    ocpp: int = 0
    ocpp_interval_s: float = 60.0
    ocpp_url: str | None = None


@dataclass
class SimulationReport:
    readings: int = 0  # clean readings generated
    sent: int = 0  # packets published, faults included
    acked: int = 0
    errors: int = 0  # refused by the broker or lost in a disconnect
    links: int = 0
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    duplicates: int = 0
    out_of_order: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    register_devices: int = 0
    register_resets: int = 0
    register_glitches: int = 0
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s else 0.0


def default_start(options: SimulatorOptions, now: datetime) -> datetime:
    if options.start is not None:
        return options.start
    start = now - timedelta(hours=24) if options.speed > 1 else now
    # On a whole interval, like devices that report on the minute.
    step = options.interval_s
    return datetime.fromtimestamp(start.timestamp() // step * step, UTC)


class Publisher:
    """A paho client publishing QoS 1 with a bounded window of unacknowledged messages."""

    def __init__(self, settings: Settings, *, window: int) -> None:
        endpoint = settings.mqtt
        self._v5 = settings.mqtt_protocol == "5"
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"simulator-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
        )
        if endpoint.username:
            self.client.username_pw_set(endpoint.username, endpoint.password)
        context = tls_context(settings)
        if context is not None:
            self.client.tls_set_context(context)
        # No limit in paho (with one, every PUBACK makes it scan all queued messages): the
        # window above bounds what is unacknowledged.
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.5, 10)  # type: ignore[arg-type]  # paho takes floats
        self._endpoint = endpoint
        self._window = window
        self._cond = threading.Condition()
        self._outstanding = 0
        self.acked = 0
        self.errors = 0
        self.connected = threading.Event()
        self._refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def _on_connect(self, _c, _u, _flags, reason_code: ReasonCode, _props=None) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
        else:
            self.connected.set()
        with self._cond:
            self._cond.notify_all()

    def _on_disconnect(self, _c, _u, _flags, reason_code: ReasonCode, _props=None) -> None:
        self.connected.clear()
        if reason_code.is_failure:
            structlog.get_logger("collector.simulator").warning(
                "simulate.disconnected", reason=str(reason_code)
            )

    def _on_publish(self, _c, _u, _mid, reason_code: ReasonCode, _props=None) -> None:
        with self._cond:
            self._outstanding -= 1
            if reason_code.is_failure:  # MQTT 5: e.g. not authorized by the broker's ACL
                self.errors += 1
            else:
                self.acked += 1
            self._cond.notify_all()

    def connect(self, timeout_s: float = 10.0) -> None:
        where = f"{self._endpoint.host}:{self._endpoint.port}"
        try:
            self.client.connect(self._endpoint.host, self._endpoint.port, keepalive=30)
        except OSError as exc:
            raise SimulatorError(f"cannot connect to the broker at {where}: {exc}") from None
        self.client.loop_start()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self.connected.is_set() and self._refused is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        if not self.connected.is_set():
            self.close()
            why = self._refused or f"no answer within {timeout_s:g} s"
            raise SimulatorError(f"the broker at {where} refused the connection: {why}")

    def publish(self, topic: str, payload: bytes, stop: threading.Event) -> bool:
        """Publish at QoS 1, waiting while the window is full. False if stopped meanwhile."""
        with self._cond:
            while self._outstanding >= self._window:
                if stop.is_set():
                    return False
                self._cond.wait(0.2)
            self._outstanding += 1
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            with self._cond:  # not queued at all (NO_CONN is queued and sent on reconnect)
                self._outstanding -= 1
                self.errors += 1
        return True

    def drain(self, timeout_s: float) -> bool:
        """Wait for every published message to be acknowledged."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._outstanding > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def register_links(
    links: list[tuple[str, str]], started_at: datetime, api_url: str, token: str | None
) -> int:
    """PUT /v1/links for every (vehicle, meter); linking again to the same meter is a no-op."""
    if not api_url.startswith(("http://", "https://")):
        raise SimulatorError(f"--api-url must start with http:// or https://, not {api_url!r}")
    url = api_url.rstrip("/") + "/v1/links"
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"

    def put(link: tuple[str, str]) -> None:
        body = json.dumps(
            {"vehicleId": link[0], "meterId": link[1], "startedAt": started_at.isoformat()}
        ).encode()
        request = urllib.request.Request(url, body, headers, method="PUT")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30):  # noqa: S310 - http(s) only
                pass
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise SimulatorError(f"PUT {url} answered {exc.code}: {detail}") from None
        except OSError as exc:
            raise SimulatorError(f"cannot reach the API at {url}: {exc}") from None

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(put, links))
    return len(links)


class Simulator:
    def __init__(self, settings: Settings, options: SimulatorOptions, *, log=None) -> None:
        self.settings = settings
        self.options = options
        self.fleet = Fleet(
            options.meters,
            options.vehicles,
            faulty_share=options.faulty_share,
            seed=options.seed,
            registers=options.registers,
            reset_rate=options.reset_rate,
            glitch_rate=options.glitch_rate,
        )
        self.faults = FaultInjector(
            self.fleet.rng,
            duplicate_rate=options.duplicate_rate,
            out_of_order_rate=options.out_of_order_rate,
            malformed_rate=options.malformed_rate,
        )
        self.log = log or structlog.get_logger("collector.simulator")
        self.report = SimulationReport()
        prefix = settings.mqtt_topic_prefix
        self._prefix = f"{prefix}/" if prefix else ""
        #: meter -> the shape it publishes in (the last meters, family after family)
        self.shaped: dict[str, Shape] = {}
        meters = [c.meter_id for c in self.fleet.chargers]
        for family, count in options.devices_as:
            shape = SHAPES[family]()
            n = count if count is not None else max(1, len(meters) // 10)
            free = [m for m in reversed(meters) if m not in self.shaped]
            self.shaped.update({m: shape for m in free[:n]})

    def mapped_id(self, meter: str) -> str:
        """The id a meter has once its family's mapping decoded it."""
        shape = self.shaped.get(meter)
        return meter if shape is None else shape.device_id(meter)

    def run(self, stop: threading.Event) -> SimulationReport:
        """Publish until the duration or count is reached, or ``stop`` is set."""
        o, report = self.options, self.report
        now = datetime.now(UTC)
        start = default_start(o, now)
        if start > now + timedelta(seconds=1):
            raise SimulatorError("--start is in the future: the collector would reject it")
        if o.api_url and self.fleet.links:
            began = time.monotonic()
            links = [(v, self.mapped_id(m)) for v, m in self.fleet.links]
            report.links = register_links(
                links, start - timedelta(seconds=o.interval_s), o.api_url, o.api_token
            )
            self.log.info(
                "simulate.linked", links=report.links, seconds=round(time.monotonic() - began, 1)
            )
        publisher = Publisher(self.settings, window=o.window)
        publisher.connect()
        self.log.info(
            "simulate.started",
            meters=o.meters,
            vehicles=o.vehicles,
            faulty_meters=len(self.fleet.faulty_meters),
            start=start.isoformat(),
            speed=o.speed,
            interval_s=o.interval_s,
        )
        progress = Progress(o, publisher, report, self.log)
        began = time.monotonic()
        try:
            for ts in ticks(start, o.interval_s):
                if not self._wait_until(ts, start, began, stop):
                    break
                messages = self.fleet.step(ts, o.interval_s)
                if o.count is not None:
                    messages = messages[: o.count - report.readings]
                report.readings += len(messages)
                report.first_ts = report.first_ts or ts
                report.last_ts = ts
                if not self._send(publisher, self.faults.apply(messages), stop, progress):
                    break
                if o.count is not None and report.readings >= o.count:
                    break
            self._send(publisher, self.faults.flush(), threading.Event(), progress)
            if not publisher.drain(30):
                self.log.warning("simulate.unacknowledged", messages=publisher.outstanding)
        finally:
            publisher.close()
            report.elapsed_s = time.monotonic() - began
            report.acked, report.errors = publisher.acked, publisher.errors
            stats = self.faults.stats
            report.duplicates, report.out_of_order = stats.duplicates, stats.out_of_order
            report.malformed = dict(stats.malformed)
            registers = self.fleet.registers
            report.register_devices = len(registers.values)
            report.register_resets, report.register_glitches = registers.resets, registers.glitches
            progress.close()
        self.log.info(
            "simulate.finished",
            readings=report.readings,
            sent=report.sent,
            acked=report.acked,
            errors=report.errors,
            rate=round(report.rate),
            duplicates=report.duplicates,
            out_of_order=report.out_of_order,
            malformed=stats.malformed_total,
        )
        return report

    def _wait_until(
        self, ts: datetime, start: datetime, began: float, stop: threading.Event
    ) -> bool:
        """Sleep until the simulated time ``ts`` is due; False when the run is over."""
        o = self.options
        due = began + (ts - start).total_seconds() / o.speed
        # Never ahead of the wall clock: a reading is sent once its time has come.
        due = max(due, time.monotonic() + (ts - datetime.now(UTC)).total_seconds())
        if o.duration_s is not None:
            end = began + o.duration_s
            if due >= end:
                stop.wait(max(0.0, end - time.monotonic()))
                return False
        return not stop.wait(max(0.0, due - time.monotonic()))

    def _send(
        self,
        publisher: Publisher,
        messages: list[Message],
        stop: threading.Event,
        progress: Progress,
    ) -> bool:
        prefix, shaped = self._prefix, self.shaped
        for m in messages:
            topic, payload = m.topic, m.payload
            shape = shaped.get(m.device_id) if m.kind == "meter" else None
            if shape is not None:
                try:
                    body = json.loads(payload)
                    topic, payload = shape.topic(m.device_id), shape.payload(m.device_id, body)
                except (ValueError, KeyError, TypeError):
                    pass  # a malformed packet on purpose: sent as it is, a dead letter
            if not publisher.publish(prefix + topic, payload, stop):
                return False
            self.report.sent += 1
            progress.tick()
        return True


class Progress:
    """A progress bar on a terminal (tqdm); otherwise a log line every 10 s."""

    def __init__(self, options: SimulatorOptions, publisher: Publisher, report, log) -> None:

        self._publisher, self._report, self._log = publisher, report, log
        self._bar = None
        self._next_log = time.monotonic() + 10
        self._pending = 0
        self._next_update = 0.0
        if options.progress and sys.stderr.isatty():
            self._bar = tqdm(total=options.count, unit=" msg", unit_scale=True, dynamic_ncols=True)

    def tick(self) -> None:
        self._pending += 1
        if self._pending >= 1000 or time.monotonic() >= self._next_update:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, 0
        self._next_update = time.monotonic() + 0.25
        report = self._report
        if self._bar is not None:
            self._bar.update(pending)
            self._bar.set_postfix(
                acked=self._publisher.acked,
                errors=self._publisher.errors,
                at=report.last_ts.strftime("%m-%d %H:%M") if report.last_ts else "",
                refresh=False,
            )
        elif time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + 10
            self._log.info(
                "simulate.progress",
                sent=report.sent,
                acked=self._publisher.acked,
                errors=self._publisher.errors,
                simulated_time=report.last_ts.isoformat() if report.last_ts else None,
            )

    def close(self) -> None:
        self._flush()
        if self._bar is not None:
            self._bar.close()


def run(settings: Settings, options: SimulatorOptions) -> int:
    """``energy-collector simulate``: publish until done or SIGINT/SIGTERM; print a summary.
    Exit 0, or 1 when the broker refused or lost readings (or a charger failed)."""
    if options.meters + options.vehicles + options.ocpp == 0:
        raise UsageError("simulate needs at least one meter, vehicle or OCPP charger")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    chargers = None
    if options.ocpp:
        chargers = ocpp_fleet.run_in_thread(
            settings,
            ocpp_fleet.OcppFleetOptions(
                chargers=options.ocpp,
                interval_s=options.ocpp_interval_s,
                duration_s=options.duration_s,
                url=options.ocpp_url,
                seed=options.seed,
            ),
            stop,
        )
    errors = 0
    if options.meters + options.vehicles:
        report = Simulator(settings, options).run(stop)
        errors += report.errors
        print(
            f"simulated {report.readings} readings ({report.first_ts} .. {report.last_ts}); "
            f"sent {report.sent} packets in {report.elapsed_s:.1f} s ({report.rate:,.0f}/s), "
            f"{report.acked} acknowledged, {report.errors} errors; injected "
            f"{report.duplicates} duplicates, {report.out_of_order} out of order, "
            f"{sum(report.malformed.values())} malformed"
            + (
                f"; {report.register_devices} devices report registers "
                f"({report.register_resets} resets, {report.register_glitches} glitches)"
                if report.register_devices
                else ""
            )
        )
    if chargers is not None:
        thread, fleet = chargers
        if options.meters + options.vehicles and options.count is not None:
            stop.set()  # the MQTT readings are done: so are the chargers
        while thread.is_alive():
            thread.join(0.2)
        stop.set()
        errors += fleet.errors
        print(
            f"OCPP: {fleet.chargers} chargers, {fleet.sessions} sessions, "
            f"{fleet.meter_values} meter values ({fleet.replayed} replayed after an offline "
            f"stretch), {fleet.errors} errors"
            + (f": {'; '.join(fleet.error_samples)}" if fleet.error_samples else "")
        )
    return 1 if errors else 0
