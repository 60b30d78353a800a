"""Simulated meters in the shapes real devices publish (``simulate --devices-as``, the demo).

A native meter reading is told again as its device family would send it, on that family's
topic, so that the shipped mapping (``deploy/sources/<family>.toml``) turns it back into
the same reading: ``tests/test_shapes.py`` checks the round trip through those files. The
families report registers; an interval meter's energy is added up into one.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

#: Tasmota's clock: the zone deploy/sources/tasmota.toml reads its local time in.
TASMOTA_ZONE = ZoneInfo("Europe/Berlin")


class Shape:
    """One family: its topic and device id for a meter, and its payload for a reading."""

    #: The family, as its file in deploy/sources/ is named.
    family: str = ""
    #: The topic with ``{device}`` for the meter id (as the shipped file's topic).
    topic_template: str = ""
    #: The device id the shipped mapping gives it.
    id_template: str = ""

    def __init__(self) -> None:
        #: meter -> its register, kWh (for meters that report each interval's energy)
        self._registers: dict[str, float] = {}

    def topic(self, meter: str) -> str:
        return self.topic_template.format(device=meter)

    def device_id(self, meter: str) -> str:
        return self.id_template.format(device=meter)

    def register_kwh(self, meter: str, body: dict[str, Any]) -> float:
        if "kwhRegisterAc" in body:
            return float(body["kwhRegisterAc"])
        total = self._registers.get(meter, 1000.0) + float(body.get("kwhConsumedAc", 0.0))
        self._registers[meter] = total
        return total

    def payload(self, meter: str, body: dict[str, Any]) -> bytes:
        raise NotImplementedError


class ShellyGen2(Shape):
    family = "shelly-gen2"
    topic_template = "{device}/events/rpc"
    id_template = "shelly-{device}"

    def payload(self, meter: str, body: dict[str, Any]) -> bytes:
        ts = datetime.fromisoformat(body["timestamp"])
        switch: dict[str, Any] = {
            "id": 0,
            "aenergy": {"total": round(self.register_kwh(meter, body) * 1000, 3)},
        }
        if "voltage" in body:
            switch["voltage"] = body["voltage"]
        return json.dumps(
            {
                "src": meter,
                "dst": f"{meter}/events",
                "method": "NotifyStatus",
                "params": {"ts": round(ts.timestamp(), 3), "switch:0": switch},
            }
        ).encode()


class Tasmota(Shape):
    family = "tasmota"
    topic_template = "tele/{device}/SENSOR"
    id_template = "tasmota-{device}"

    def payload(self, meter: str, body: dict[str, Any]) -> bytes:
        local = datetime.fromisoformat(body["timestamp"]).astimezone(TASMOTA_ZONE)
        energy: dict[str, Any] = {"Total": round(self.register_kwh(meter, body), 3)}
        if "voltage" in body:
            energy["Voltage"] = body["voltage"]
        return json.dumps(
            {"Time": local.replace(tzinfo=None).isoformat(timespec="seconds"), "ENERGY": energy}
        ).encode()


#: The families ``--devices-as`` knows, by name.
SHAPES: dict[str, type[Shape]] = {s.family: s for s in (ShellyGen2, Tasmota)}
