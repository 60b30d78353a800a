"""Meter values as chargers really send them, normalised into samples (pure, no I/O).

Strict OCPP schemas refuse what real chargers send (numbers instead of strings, ``meterValue``
as an object, empty ``sampledValue``: docs/ocpp.md lists them), and a batch without an energy
sample must not look like zero energy. So every shape is read leniently here: one
:class:`Sample` per ``meterValue`` entry (its time, the energy register in kWh, the voltage,
the state of charge, signed data), and a :class:`Problem` with a reason for what cannot be
read; one bad sampled value never costs the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from collector.ingest.readings import EARLIEST_TIMESTAMP, Reason, TimestampError, parse_iso8601

ENERGY = "Energy.Active.Import.Register"
VOLTAGE = "Voltage"
SOC = "SoC"
#: Energy units, as kWh per unit (1.6 ``unit``; 2.0.1 ``unitOfMeasure.unit``).
_ENERGY_UNITS = {"wh": 0.001, "kwh": 1.0}  # any case: some chargers send "KWh"
_VOLTAGE_UNITS = {"v": 1.0}
_PHASES = {"L1", "L2", "L3", "L1-N", "L2-N", "L3-N"}
#: Energy measured where a meter of the connector sits; ``EV`` and ``Body`` are not it.
_METER_LOCATIONS = {None, "Outlet", "Inlet"}


@dataclass(frozen=True, slots=True)
class Signed:
    """A signed meter value (OCMF and the like), kept verbatim with the reading it signs."""

    measurand: str
    data: str
    signing_method: str | None = None
    encoding: str | None = None
    public_key: str | None = None


@dataclass(slots=True)
class Sample:
    """What one ``meterValue`` entry says: at ``ts``, the register (kWh), the voltage (V),
    the state of charge (%), and the signatures; each None (or empty) when absent."""

    ts: datetime
    register_kwh: float | None = None
    voltage: float | None = None
    soc: float | None = None
    signed: list[Signed] = field(default_factory=list)
    #: The entry as it arrived (camelCase), for dead letters.
    raw: Any = None


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the meter values that could not be read, and the raw part it is about."""

    reason: Reason
    detail: str
    raw: Any


def as_list(value: Any) -> list[Any]:
    """A JSON list as is; an object as a list of one (Huawei's ``meterValue``); null as []."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def read_meter_values(meter_value: Any) -> tuple[list[Sample], list[Problem]]:
    """The samples and problems of a ``meterValue`` (or ``transactionData``) field."""
    samples: list[Sample] = []
    problems: list[Problem] = []
    for entry in as_list(meter_value):
        if not isinstance(entry, dict):
            problems.append(Problem(Reason.INVALID_SHAPE, "a meterValue is a JSON object", entry))
            continue
        ts, trouble = _timestamp(entry.get("timestamp"))
        if ts is None:
            problems.append(Problem(Reason.INVALID_TIMESTAMP, trouble, entry))
            continue
        entry_reader = _Entry(Sample(ts, raw=entry))
        for value in as_list(entry.get("sampledValue")):
            problem = entry_reader.read(value)
            if problem is not None:
                problems.append(Problem(problem[0], problem[1], entry))
        samples.append(entry_reader.finish())
    return samples, problems


@dataclass(slots=True)
class _Entry:
    """One ``meterValue`` entry being read: its energy (unphased, or per phase) and voltages."""

    sample: Sample
    energy_total: float | None = None
    energy_phases: dict[str, float] = field(default_factory=dict)
    voltages: list[float] = field(default_factory=list)

    def read(self, value: Any) -> tuple[Reason, str] | None:
        """Take one sampled value in; the problem with it, if any."""
        if not isinstance(value, dict):
            return Reason.INVALID_SHAPE, "a sampledValue is a JSON object"
        measurand = value.get("measurand") or ENERGY
        if value.get("format") == "SignedData":  # 1.6: the value is the signed blob
            self.sample.signed.append(Signed(measurand, str(value.get("value"))))
            return None
        signed = value.get("signedMeterValue")
        if isinstance(signed, dict) and signed.get("signedMeterData"):
            self.sample.signed.append(
                Signed(
                    measurand,
                    str(signed["signedMeterData"]),
                    signed.get("signingMethod"),
                    signed.get("encodingMethod"),
                    signed.get("publicKey"),
                )
            )
        if measurand not in (ENERGY, VOLTAGE, SOC):
            return None
        number, trouble = _number(value)
        if number is None:
            return Reason.INVALID_TYPE, f"{measurand}: {trouble}"
        unit_trouble = self._measure(measurand, number, value)
        if unit_trouble is None:
            return None
        return Reason.INVALID_TYPE, f"{measurand}: {unit_trouble}"

    def _measure(self, measurand: str, number: float, value: dict[str, Any]) -> str | None:
        phase = value.get("phase")
        if measurand == SOC:
            self.sample.soc = number
        elif measurand == VOLTAGE:
            scale, trouble = _scale(value, _VOLTAGE_UNITS, "V")
            if scale is None:
                return trouble
            if phase is None or phase in _PHASES:
                self.voltages.append(number * scale)
        elif value.get("location") in _METER_LOCATIONS:
            scale, trouble = _scale(value, _ENERGY_UNITS, "Wh")
            if scale is None:
                return trouble
            if phase is None:
                self.energy_total = number * scale
            elif phase in _PHASES:
                self.energy_phases[phase.removesuffix("-N")] = number * scale
        return None

    def finish(self) -> Sample:
        sample = self.sample
        sample.register_kwh = self.energy_total
        if sample.register_kwh is None and self.energy_phases:  # no total: the phases' sum
            sample.register_kwh = sum(self.energy_phases.values())
        if self.voltages:
            sample.voltage = sum(self.voltages) / len(self.voltages)
        return sample


def _timestamp(raw: Any) -> tuple[datetime | None, str]:
    if not isinstance(raw, str):
        return None, "timestamp: an ISO 8601 date and time is required"
    try:
        ts = parse_iso8601(raw)
    except TimestampError as exc:
        return None, f"timestamp {raw!r}: {exc}"
    if ts < EARLIEST_TIMESTAMP:
        return None, (
            f"timestamp {raw} is before {EARLIEST_TIMESTAMP.date()}: the charger's clock was "
            "not set yet"
        )
    return ts, ""


def _number(value: dict[str, Any]) -> tuple[float | None, str]:
    """The sampled value's number: a decimal string as the spec says, or a JSON number as
    some chargers send (OpenEVSE)."""
    raw = value.get("value")
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        return None, f"value {raw!r} is not a number"
    try:
        number = float(raw)
    except ValueError:
        return None, f"value {raw!r} is not a number"
    if not math.isfinite(number):
        return None, f"value {raw!r} is not a finite number"
    return number, ""


def _scale(
    value: dict[str, Any], units: dict[str, float], default: str
) -> tuple[float | None, str]:
    """The factor to the stored unit: 1.6 ``unit``, 2.0.1 ``unitOfMeasure`` (with its
    power-of-ten ``multiplier``); a missing unit is the spec's default."""
    unit_of_measure = value.get("unitOfMeasure")
    multiplier = 0
    if isinstance(unit_of_measure, dict):
        unit = unit_of_measure.get("unit") or default
        raw_multiplier = unit_of_measure.get("multiplier", 0)
        multiplier = raw_multiplier if isinstance(raw_multiplier, int) else 0
    else:
        unit = value.get("unit") or default
    factor = units.get(unit.lower()) if isinstance(unit, str) else None
    if factor is None:
        return None, f"unit {unit!r} is not {default}" + (" or kWh" if default == "Wh" else "")
    return factor * 10.0**multiplier, ""
