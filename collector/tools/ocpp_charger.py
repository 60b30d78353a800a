"""A charger made from the ``ocpp`` library's client side: what ``simulate --ocpp``, the tests
and ``bench/ocpp.py`` connect to the collector with. It speaks 1.6J or 2.0.1, answers the
CSMS's configuration requests as a real charger does, and offers the calls a session needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from collector.sources.ocpp.passwords import basic_header


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _Point16(ChargePoint16):
    """The charger side of 1.6: accepts configuration as most chargers do."""

    configured: list[tuple[str, str]]

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str) -> Any:
        self.configured.append((key, value))
        return result16.ChangeConfiguration(status="Accepted")


class _Point201(ChargePoint201):
    configured: list[tuple[str, str]]

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]]) -> Any:
        results = []
        for item in set_variable_data:
            self.configured.append((item["variable"]["name"], item["attribute_value"]))
            results.append(
                {
                    "attribute_status": "Accepted",
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return result201.SetVariables(set_variable_result=results)


@dataclass
class SimCharger:
    """One charger connected to ``url`` (``ws://host:port/ocpp``) as ``charger_id``."""

    url: str
    charger_id: str
    protocol: str = "ocpp1.6"
    password: str | None = None
    response_timeout: float = 30.0
    #: For wss:// with a certificate the system does not trust (tests: a self-signed one).
    ssl: ssl_module.SSLContext | None = None
    configured: list[tuple[str, str]] = field(default_factory=list)
    _ws: Any = None
    _point: Any = None
    _task: asyncio.Task[Any] | None = None

    async def connect(self) -> None:
        headers = {}
        if self.password is not None:
            headers["Authorization"] = basic_header(self.charger_id, self.password)
        self._ws = await websockets.connect(
            f"{self.url.rstrip('/')}/{self.charger_id}",
            subprotocols=[self.protocol],  # type: ignore[list-item]
            additional_headers=headers,
            open_timeout=20,
            ping_interval=None,
            ssl=self.ssl or (True if self.url.startswith("wss:") else None),
        )
        cls = _Point16 if self.protocol == "ocpp1.6" else _Point201
        self._point = cls(self.charger_id, self._ws, response_timeout=self.response_timeout)
        self._point.configured = self.configured
        self._task = asyncio.create_task(self._point.start())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._ws is not None:
            await self._ws.close()

    async def __aenter__(self) -> SimCharger:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def v16(self) -> bool:
        return self.protocol == "ocpp1.6"

    async def call(self, request: Any) -> Any:
        """Send one CALL and return its CALLRESULT (raises on a CALLERROR)."""
        return await self._point.call(request, suppress=False)

    async def send_raw(self, text: str) -> None:
        """A frame as it is (tolerance tests): its answer goes to the library's queue."""
        await self._ws.send(text)

    # --- the messages of a charger's life ------------------------------------------------

    async def boot(self, vendor: str = "SimVendor", model: str = "SimModel") -> str:
        if self.v16:
            answer = await self.call(
                call16.BootNotification(
                    charge_point_model=model, charge_point_vendor=vendor, firmware_version="1.0"
                )
            )
        else:
            answer = await self.call(
                call201.BootNotification(
                    charging_station={"model": model, "vendor_name": vendor,
                                      "firmware_version": "1.0"},
                    reason="PowerUp",
                )
            )  # fmt: skip
        return str(answer.status)

    async def heartbeat(self) -> None:
        await self.call(call16.Heartbeat() if self.v16 else call201.Heartbeat())

    async def status(self, connector: int, status: str, error_code: str = "NoError") -> None:
        if self.v16:
            await self.call(
                call16.StatusNotification(connector_id=connector, error_code=error_code,
                                          status=status, timestamp=iso(datetime.now(UTC)))
            )  # fmt: skip
        else:
            await self.call(
                call201.StatusNotification(timestamp=iso(datetime.now(UTC)),
                                           connector_status=status, evse_id=connector,
                                           connector_id=1)
            )  # fmt: skip

    async def start(self, connector: int, id_tag: str, meter_wh: float, ts: datetime) -> int:
        """1.6 StartTransaction; returns the transaction id the CSMS issued."""
        answer = await self.call(
            call16.StartTransaction(
                connector_id=connector, id_tag=id_tag, meter_start=int(meter_wh), timestamp=iso(ts)
            )
        )
        return int(answer.transaction_id)

    async def meter_values(
        self,
        connector: int,
        wh: float,
        ts: datetime,
        *,
        transaction_id: int | None = None,
        soc: float | None = None,
    ) -> None:
        sampled: list[dict[str, Any]] = [
            {"value": f"{wh:.1f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": "230.1", "measurand": "Voltage", "unit": "V"},
        ]
        if soc is not None:
            sampled.append({"value": f"{soc:.0f}", "measurand": "SoC", "unit": "Percent"})
        if self.v16:
            await self.call(
                call16.MeterValues(
                    connector_id=connector,
                    transaction_id=transaction_id,
                    meter_value=[{"timestamp": iso(ts), "sampled_value": sampled}],
                )
            )
        else:
            for s in sampled:  # 2.0.1: a decimal number, and a unit of measure
                s["value"] = float(s["value"])
                s["unit_of_measure"] = {"unit": s.pop("unit")}
            await self.call(
                call201.MeterValues(
                    evse_id=connector,
                    meter_value=[{"timestamp": iso(ts), "sampled_value": sampled}],
                )
            )

    async def stop(
        self, transaction_id: int, meter_wh: float, ts: datetime, reason: str = "Local"
    ) -> None:
        await self.call(
            call16.StopTransaction(
                meter_stop=int(meter_wh), timestamp=iso(ts), transaction_id=transaction_id,
                reason=reason,
            )
        )  # fmt: skip

    async def event(
        self,
        event_type: str,
        transaction_id: str,
        seq_no: int,
        *,
        evse: int,
        wh: float,
        ts: datetime,
        id_tag: str | None = None,
        stopped_reason: str | None = None,
        offline: bool = False,
    ) -> None:
        """2.0.1 TransactionEvent with the energy register at ``ts``."""
        info: dict[str, Any] = {"transaction_id": transaction_id}
        if stopped_reason is not None:
            info["stopped_reason"] = stopped_reason
        await self.call(
            call201.TransactionEvent(
                event_type=event_type,
                timestamp=iso(ts),
                trigger_reason="MeterValuePeriodic" if event_type == "Updated" else "Authorized",
                seq_no=seq_no,
                transaction_info=info,
                evse={"id": evse, "connector_id": 1},
                id_token={"id_token": id_tag, "type": "ISO14443"} if id_tag else None,
                offline=offline or None,
                meter_value=[
                    {
                        "timestamp": iso(ts),
                        "sampled_value": [
                            {
                                "value": wh,
                                "measurand": "Energy.Active.Import.Register",
                                "unit_of_measure": {"unit": "Wh"},
                            }
                        ],
                    }
                ],
            )
        )
