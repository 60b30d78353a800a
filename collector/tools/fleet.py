"""A fleet of chargers and electric vehicles that produces realistic readings. No I/O.

Each vehicle has a home charger whose smart meter measures the AC energy it draws; vehicle
``i`` is linked to meter ``i``. A vehicle goes round a day-like cycle: it charges at its
charger until it reaches its target state of charge, stays parked, drives (state of charge
falls), comes back and charges again. While it charges, the meter reports the AC energy and
the vehicle the DC energy that reached its battery: DC = AC x the charger's efficiency (around
0.9 with noise; a share of chargers is faulty, well below the 0.85 the analytics flag).
The battery warms with charging power and cools towards a daily ambient temperature.

Everything comes from one seeded random generator: the same seed gives the same readings.
:class:`FaultInjector` turns a clean stream into a realistic dirty one (duplicates,
out-of-order and malformed packets) at given rates, and counts what it did.
"""

from __future__ import annotations

import enum
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: Efficiency (DC/AC) of a healthy charger, and of a faulty one; noise per reading.
HEALTHY_EFFICIENCY = (0.88, 0.93)
FAULTY_EFFICIENCY = (0.62, 0.76)
EFFICIENCY_NOISE = 0.012
#: AC charging power of a home/work wallbox, kW.
CHARGER_POWERS_KW = (7.4, 11.0, 11.0, 22.0)
#: AC energy a meter records while its charger is idle (standby), kWh per hour.
STANDBY_KWH_PER_HOUR = 0.004
NOMINAL_VOLTAGE = 230.0


class Phase(enum.Enum):
    CHARGING = "charging"
    PARKED = "parked"
    DRIVING = "driving"


@dataclass
class Charger:
    meter_id: str
    power_kw: float
    efficiency: float
    faulty: bool
    voltage_offset: float


@dataclass
class Vehicle:
    vehicle_id: str
    capacity_kwh: float
    soc: float
    phase: Phase
    phase_left_s: float  # time left in a parked or driving phase
    target_soc: float
    consumption_kw: float  # while driving
    battery_temp: float
    ambient_offset: float
    charger: Charger | None


@dataclass(frozen=True, slots=True)
class Message:
    """One packet as a device would publish it."""

    kind: str  # "meter" or "vehicle"
    device_id: str
    payload: bytes
    ts: datetime

    @property
    def topic(self) -> str:
        return f"{self.kind}s/{self.device_id}/reading"


def device_ids(prefix: str, n: int) -> list[str]:
    width = max(3, len(str(n)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, n + 1)]


def ambient_temp(ts: datetime, offset: float) -> float:
    """A daily cycle: coolest at 04:00 UTC, warmest at 16:00."""
    hour = ts.hour + ts.minute / 60
    return 15.0 + offset + 6.0 * math.sin((hour - 10.0) / 24.0 * 2 * math.pi)


class Fleet:
    """``meters`` chargers and ``vehicles`` vehicles; the first min(meters, vehicles) are
    paired. Extra meters only draw standby energy; extra vehicles never charge."""

    def __init__(
        self,
        meters: int,
        vehicles: int,
        *,
        faulty_share: float = 0.05,
        seed: int | None = None,
        registers: float = 0.0,
        reset_rate: float = 0.0,
        glitch_rate: float = 0.0,
    ) -> None:
        if meters < 0 or vehicles < 0 or meters + vehicles == 0:
            raise ValueError("need at least one meter or vehicle")
        for name, share in (
            ("faulty_share", faulty_share),
            ("registers", registers),
            ("reset_rate", reset_rate),
            ("glitch_rate", glitch_rate),
        ):
            if not 0 <= share <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        self.rng = random.Random(seed)  # noqa: S311 - a simulation, not a secret
        rng = self.rng
        # At least one faulty charger when asked for some, even in a small fleet.
        n_faulty = max(1, round(meters * faulty_share)) if faulty_share and meters else 0
        faulty = set(rng.sample(range(meters), n_faulty))
        self.chargers = [
            Charger(
                meter_id=meter_id,
                power_kw=rng.choice(CHARGER_POWERS_KW),
                efficiency=rng.uniform(*(FAULTY_EFFICIENCY if i in faulty else HEALTHY_EFFICIENCY)),
                faulty=i in faulty,
                voltage_offset=rng.gauss(0, 2.5),
            )
            for i, meter_id in enumerate(device_ids("meter", meters))
        ]
        self.vehicles = []
        for i, vehicle_id in enumerate(device_ids("vehicle", vehicles)):
            charger = self.chargers[i] if i < meters else None
            phase = rng.choice(list(Phase)) if charger else Phase.PARKED
            self.vehicles.append(
                Vehicle(
                    vehicle_id=vehicle_id,
                    capacity_kwh=rng.choice((40.0, 58.0, 64.0, 77.0, 82.0, 100.0)),
                    soc=rng.uniform(20, 90),
                    phase=phase,
                    phase_left_s=rng.uniform(0, 3 * 3600),
                    target_soc=rng.uniform(80, 100),
                    consumption_kw=rng.uniform(8, 14),
                    battery_temp=rng.uniform(12, 22),
                    ambient_offset=rng.gauss(0, 4),
                    charger=charger,
                )
            )
        self.registers = Registers(
            [c.meter_id for c in self.chargers] + [v.vehicle_id for v in self.vehicles],
            share=registers,
            reset_rate=reset_rate,
            glitch_rate=glitch_rate,
            seed=None if seed is None else seed + 1,
        )

    @property
    def links(self) -> list[tuple[str, str]]:
        """(vehicle id, meter id) of every vehicle with a home charger."""
        return [(v.vehicle_id, v.charger.meter_id) for v in self.vehicles if v.charger]

    @property
    def faulty_meters(self) -> set[str]:
        return {c.meter_id for c in self.chargers if c.faulty}

    def step(self, ts: datetime, interval_s: float) -> list[Message]:
        """Advance every device by ``interval_s`` seconds ending at ``ts``: one reading each."""
        rng = self.rng
        iso = ts.isoformat().replace("+00:00", "Z")
        hours = interval_s / 3600
        ac_by_meter: dict[str, float] = {}
        out: list[Message] = []
        for v in self.vehicles:
            dc, power = self._advance(v, interval_s, ac_by_meter)
            ambient = ambient_temp(ts, v.ambient_offset)
            load_heat = 0.9 * power if v.phase is Phase.CHARGING else 0.0
            if v.phase is Phase.DRIVING:
                load_heat = 0.4 * v.consumption_kw
            target = ambient + load_heat
            v.battery_temp += (target - v.battery_temp) * (1 - math.exp(-interval_s / 1200))
            temp = v.battery_temp + rng.gauss(0, 0.1)
            body = {
                "vehicleId": v.vehicle_id,
                "soc": round(v.soc, 2),
                **self.registers.energy(v.vehicle_id, dc, "kwhDeliveredDc", "kwhRegisterDc"),
                "batteryTemp": round(temp, 2),
                "timestamp": iso,
            }
            out.append(Message("vehicle", v.vehicle_id, json.dumps(body).encode(), ts))
        for c in self.chargers:
            standby = STANDBY_KWH_PER_HOUR * hours * rng.uniform(0.8, 1.2)
            ac = ac_by_meter.get(c.meter_id, 0.0) + standby
            voltage = NOMINAL_VOLTAGE + c.voltage_offset + rng.gauss(0, 0.8)
            if c.meter_id in ac_by_meter:
                voltage -= 1.5  # the load pulls the voltage down a little
            body = {
                "meterId": c.meter_id,
                **self.registers.energy(c.meter_id, ac, "kwhConsumedAc", "kwhRegisterAc"),
                "voltage": round(voltage, 1),
                "timestamp": iso,
            }
            out.append(Message("meter", c.meter_id, json.dumps(body).encode(), ts))
        return out

    def _advance(
        self, v: Vehicle, interval_s: float, ac_by_meter: dict[str, float]
    ) -> tuple[float, float]:
        """Move one vehicle on by an interval: (DC kWh into the battery, AC power kW)."""
        rng, hours = self.rng, interval_s / 3600
        if v.phase is Phase.CHARGING and v.charger is not None:
            c = v.charger
            # Constant power up to 80 %, then tapering to 30 % of it at 100 %.
            taper = 1.0 if v.soc < 80 else max(0.3, 1 - 0.7 * (v.soc - 80) / 20)
            power = c.power_kw * taper * rng.uniform(0.97, 1.0)
            ac = power * hours
            efficiency = min(0.99, max(0.3, rng.gauss(c.efficiency, EFFICIENCY_NOISE)))
            dc = ac * efficiency
            room = (v.target_soc - v.soc) / 100 * v.capacity_kwh
            if dc >= room:  # full: this interval's charge stops part way
                share = max(room, 0.0) / dc
                dc, ac = dc * share, ac * share
                v.phase, v.phase_left_s = Phase.PARKED, rng.uniform(2, 14) * 3600
            v.soc = min(100.0, v.soc + dc / v.capacity_kwh * 100)
            ac_by_meter[c.meter_id] = ac
            return dc, power
        v.phase_left_s -= interval_s
        if v.phase is Phase.DRIVING:
            v.soc = max(3.0, v.soc - v.consumption_kw * hours / v.capacity_kwh * 100)
            if v.phase_left_s <= 0 or v.soc <= 10:
                v.phase, v.phase_left_s = Phase.PARKED, rng.uniform(0.2, 1) * 3600
                v.target_soc = rng.uniform(80, 100)
                if v.charger is not None:
                    v.phase = Phase.CHARGING
        elif v.phase_left_s <= 0:  # parked long enough: go for a drive
            v.phase, v.phase_left_s = Phase.DRIVING, rng.uniform(0.2, 1.2) * 3600
        return 0.0, 0.0


class Registers:
    """Which devices report a cumulative register instead of each interval's energy, and
    what their registers do: count up, restart from 0 when the device reboots
    (``reset_rate``: a share of the readings), or read 0 for one reading (``glitch_rate``)
    while the register goes on. Its random numbers are its own: a fleet with registers
    draws the same energies as the same fleet without."""

    def __init__(
        self,
        devices: list[str],
        *,
        share: float,
        reset_rate: float,
        glitch_rate: float,
        seed: int | None,
    ) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - a simulation, not a secret
        self.reset_rate, self.glitch_rate = reset_rate, glitch_rate
        #: device -> its register now, kWh
        self.values = {
            d: round(self._rng.uniform(100, 50_000), 3)
            for d in devices
            if share and self._rng.random() < share
        }
        self.resets = self.glitches = 0

    def energy(self, device: str, kwh: float, interval: str, register: str) -> dict[str, float]:
        """The payload's energy field for ``kwh`` of this interval."""
        value = self.values.get(device)
        if value is None:
            return {interval: round(kwh, 5)}
        if self.reset_rate and self._rng.random() < self.reset_rate:
            value = 0.0  # rebooted: counts again from 0
            self.resets += 1
        value += kwh
        self.values[device] = value
        if self.glitch_rate and self._rng.random() < self.glitch_rate:
            self.glitches += 1
            return {register: 0.0}
        return {register: round(value, 5)}


#: Where a payload carries its energy: an interval's, or a register.
ENERGY_KEYS = ("kwhConsumedAc", "kwhRegisterAc", "kwhDeliveredDc", "kwhRegisterDc")
#: Malformed packets a broken device or gateway sends, each ends in the dead-letter table.
MALFORMED_KINDS = (
    "not_json",
    "missing_field",
    "negative_energy",
    "soc_out_of_range",
    "id_mismatch",
    "timestamp_without_offset",
)


@dataclass
class FaultStats:
    duplicates: int = 0
    out_of_order: int = 0
    malformed: Counter[str] = field(default_factory=Counter)

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())


class FaultInjector:
    """Adds duplicate, out-of-order and malformed packets to a stream at given rates.

    * duplicate: the packet is sent twice (the history key absorbs the second);
    * out of order: the packet is held back and sent after the device's next packet, so it
      arrives older than the device's current state (which must not move back);
    * malformed: the packet is replaced by a broken one (dead-lettered, not stored).
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        duplicate_rate: float = 0.0,
        out_of_order_rate: float = 0.0,
        malformed_rate: float = 0.0,
    ) -> None:
        for name, rate in (
            ("duplicate_rate", duplicate_rate),
            ("out_of_order_rate", out_of_order_rate),
            ("malformed_rate", malformed_rate),
        ):
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        self.rng = rng
        self.duplicate_rate = duplicate_rate
        self.out_of_order_rate = out_of_order_rate
        self.malformed_rate = malformed_rate
        self.stats = FaultStats()
        self._held: list[Message] = []

    def apply(self, messages: list[Message]) -> list[Message]:
        """One tick's packets, with faults; packets held back last tick go out after the
        same device's packet of this tick."""
        rng, out = self.rng, []
        late = {(m.kind, m.device_id): m for m in self._held}
        self._held = []
        for clean in messages:
            m = clean
            previous = late.pop((m.kind, m.device_id), None)
            broken = bool(self.malformed_rate) and rng.random() < self.malformed_rate
            if broken:
                kind = rng.choice(MALFORMED_KINDS)
                self.stats.malformed[kind] += 1
                m = Message(m.kind, m.device_id, malform(m.payload, kind), m.ts)
            elif (
                previous is None
                and self.out_of_order_rate
                and rng.random() < self.out_of_order_rate
            ):
                self._held.append(m)
                self.stats.out_of_order += 1
                continue
            out.append(m)
            if not broken and self.duplicate_rate and rng.random() < self.duplicate_rate:
                out.append(m)
                self.stats.duplicates += 1
            if previous is not None:
                out.append(previous)
        out.extend(late.values())  # devices without a packet this tick
        return out

    def flush(self) -> list[Message]:
        """Packets still held back (at the end of a run)."""
        held, self._held = self._held, []
        return held


def malform(payload: bytes, kind: str) -> bytes:
    body = json.loads(payload)
    id_field = "meterId" if "meterId" in body else "vehicleId"
    if kind == "not_json":
        return payload[: len(payload) // 2]
    if kind == "missing_field":
        body.pop("timestamp")
    elif kind == "negative_energy":
        energy = next(k for k in ENERGY_KEYS if k in body)
        body[energy] = -abs(body[energy]) - 0.5
    elif kind == "soc_out_of_range":
        if id_field == "vehicleId":
            body["soc"] = 140.0
        else:
            body["voltage"] = -5.0
    elif kind == "id_mismatch":
        body[id_field] = body[id_field] + "-x"
    elif kind == "timestamp_without_offset":
        body["timestamp"] = body["timestamp"].rstrip("Z")
    return json.dumps(body).encode()


def ticks(start: datetime, interval_s: float):
    """Reading times: start, start + interval, ... (an endless generator)."""
    step = timedelta(seconds=interval_s)
    ts = start
    while True:
        yield ts
        ts += step
