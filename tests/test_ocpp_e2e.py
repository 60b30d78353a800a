"""OCPP chargers against the running collector in csms mode: real chargers made from the
``ocpp`` library's client, both protocol versions, credentials, sessions, tolerance."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from ocpp.routing import on
from ocpp.v16 import call as call16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201
from websockets.exceptions import InvalidStatus

from collector.service import CollectorService
from collector.sources.ocpp.chargers import ChargerBook
from collector.sources.ocpp.listener import OcppSource
from collector.sources.ocpp.passwords import basic_header
from collector.tools.ocpp_charger import SimCharger, iso
from tests.helpers import eventually

pytestmark = pytest.mark.services


def live_start() -> datetime:
    """A live session's start: minutes ago (a stop heard long after it happened is an
    offline replay)."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=12)


@pytest.fixture
async def ocpp(start_collector: Callable[..., Awaitable[CollectorService]]) -> Any:
    """A collector with its OCPP listener on a free port; ``url`` is what chargers dial."""
    service = await start_collector(ocpp_listen="127.0.0.1:0", ocpp_meter_interval_s=60)
    source = service.sources["ocpp"]
    assert isinstance(source, OcppSource)
    await eventually(lambda: asyncio.sleep(0, source.port), lambda port: port is not None)
    service.ocpp_url = f"ws://127.0.0.1:{source.port}/ocpp"  # type: ignore[attr-defined]
    service.book = ChargerBook(source.recorder._pool)  # type: ignore[attr-defined]
    return service


def api_client(service: CollectorService) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=30)


async def registers(db: asyncpg.Connection, meter_id: str) -> list[tuple[datetime, float]]:
    rows = await db.fetch(
        "SELECT ts, kwh_register_ac FROM meter_readings WHERE meter_id = $1 ORDER BY ts", meter_id
    )
    return [(r["ts"], r["kwh_register_ac"]) for r in rows]


async def test_a_16_charger_boots_charges_and_its_session_adds_up(ocpp, db) -> None:
    t0 = live_start()
    password = await ocpp.book.add("cp-16")
    async with SimCharger(ocpp.ocpp_url, "cp-16", "ocpp1.6", password) as cp:
        assert await cp.boot("Alfen", "Eve") == "Accepted"
        await cp.status(1, "Preparing")
        await ocpp.book.tag("TAG-1", "ev-7")
        tx = await cp.start(1, "TAG-1", 1000, t0)
        # Ack after commit: when the answer arrives, the reading is in the database.
        await cp.meter_values(1, 1500, t0 + timedelta(minutes=1), transaction_id=tx, soc=40)
        assert len(await registers(db, "cp-16-1")) == 2
        await cp.meter_values(1, 2100, t0 + timedelta(minutes=2), transaction_id=tx, soc=55)
        await cp.stop(tx, 2600, t0 + timedelta(minutes=3))
        await cp.heartbeat()
        # the boot configured metering (MeterValueSampleInterval and aligned data)
        configured = await eventually(lambda: asyncio.sleep(0, dict(cp.configured)), len)
        assert configured["MeterValueSampleInterval"] == "60"

    assert [kwh for _, kwh in await registers(db, "cp-16-1")] == [1.0, 1.5, 2.1, 2.6]
    async with api_client(ocpp) as api:
        sessions = (await api.get("/v1/sessions", params={"charger": "cp-16"})).json()
        assert len(sessions["sessions"]) == 1
        s = sessions["sessions"][0]
        assert s["transactionId"] == str(tx)
        assert s["state"] == "ended"
        assert s["meterId"] == "cp-16-1"
        assert s["idTag"] == "TAG-1"
        assert s["vehicleId"] == "ev-7"
        assert s["kwh"] == pytest.approx(1.6)
        assert s["kwhCharger"] == pytest.approx(1.6)
        assert s["kwhDifference"] == pytest.approx(0.0)
        assert s["socStart"] == 40 and s["socEnd"] == 55
        detail = (await api.get(f"/v1/sessions/{s['id']}")).json()
        assert [v["kwhRegister"] for v in detail["meterValues"]] == [1.0, 1.5, 2.1, 2.6]
        charger = (await api.get("/v1/chargers/cp-16")).json()
        assert charger["vendor"] == "Alfen" and charger["model"] == "Eve"
        assert charger["protocol"] == "ocpp1.6"
        assert charger["connectors"][0]["status"] == "Preparing"
        assert charger["lastHeartbeatAt"] is not None
        # the session linked the tag's vehicle to the connector's meter for its span
        links = (await api.get("/v1/links/ev-7")).json()
        assert links["history"][0]["meterId"] == "cp-16-1"
        assert links["history"][0]["endedAt"] is not None
        # the dashboard: the charger and its connector, the session on both devices' pages
        page = (await api.get("/dashboard/chargers")).text
        assert 'data-charger="cp-16"' in page and "1: Preparing" in page
        assert f'data-session="{s["id"]}"' in page
        for device in ("meters/cp-16-1", "vehicles/ev-7"):
            page = (await api.get(f"/dashboard/{device}")).text
            assert f'data-session="{s["id"]}"' in page and "1.600" in page, device
            # the meter's last 14 days (today's provisional); the vehicle reported none
            assert ("Daily energy" in page) is device.startswith("meters"), device
        # the sessions export: both energy figures and the vehicle, as a billing system reads
        day = t0.date()
        exported = await api.get("/v1/exports/sessions.csv", params={
            "from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat()
        })  # fmt: skip
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        row = next(r for r in rows if r["session_id"] == str(s["id"]))
        assert (float(row["kwh"]), float(row["kwh_charger"])) == pytest.approx((1.6, 1.6))
        assert (row["vehicle_id"], row["id_tag"], row["state"]) == ("ev-7", "TAG-1", "ended")


async def test_a_201_station_transaction_events_with_a_seq_no_guard(ocpp, db) -> None:
    t0 = live_start()
    password = await ocpp.book.add("cs-201")
    async with SimCharger(ocpp.ocpp_url, "cs-201", "ocpp2.0.1", password) as cs:
        assert await cs.boot() == "Accepted"
        await cs.status(1, "Occupied")
        await cs.event("Started", "T-1", 0, evse=1, wh=500.0, ts=t0, id_tag="CARD-9")
        await cs.event("Updated", "T-1", 1, evse=1, wh=3710.5, ts=t0 + timedelta(minutes=5))
        await cs.event(
            "Updated", "T-1", 1, evse=1, wh=3710.5, ts=t0 + timedelta(minutes=5)
        )  # resent
        await cs.event("Ended", "T-1", 3, evse=1, wh=6900.0, ts=t0 + timedelta(minutes=9),
                       stopped_reason="EVDisconnected")  # fmt: skip
        # an old event arriving after the end changes nothing
        await cs.event("Updated", "T-1", 2, evse=1, wh=5000.0, ts=t0 + timedelta(minutes=7))
    row = await db.fetchrow("SELECT * FROM charging_sessions WHERE transaction_id = 'T-1'")
    assert row["state"] == "ended" and row["stop_reason"] == "EVDisconnected"
    assert row["last_seq_no"] == 3 and "seq-gap" in row["quality"]
    assert row["meter_start_wh"] == 500.0 and row["meter_stop_wh"] == 6900.0
    assert row["stopped_at"] == t0 + timedelta(minutes=9)
    assert len(await registers(db, "cs-201-1")) == 4  # the resent event stored once
    async with api_client(ocpp) as api:
        s = (await api.get(f"/v1/sessions/{row['id']}")).json()
        assert s["kwh"] == pytest.approx(6.4) and s["kwhCharger"] == pytest.approx(6.4)


@pytest.mark.parametrize(
    ("user", "password", "status"),
    [("cp-auth", "wrong-password-000000", 401), ("cp-auth", None, 401), ("cp-unknown", "x", 404)],
)
async def test_bad_credentials_are_refused_at_the_upgrade(ocpp, user, password, status) -> None:
    await ocpp.book.add("cp-auth")
    charger = SimCharger(ocpp.ocpp_url, user, "ocpp1.6", password)
    with pytest.raises(InvalidStatus) as refused:
        await charger.connect()
    assert refused.value.response.status_code == status


async def raw_call(ws: Any, action: str, payload: Any, unique_id: str = "1") -> Any:
    await ws.send(json.dumps([2, unique_id, action, payload]))
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def test_what_real_chargers_send_is_read_or_refused_per_sample(ocpp, db) -> None:
    """Numbers for strings, an object for the array, empty lists, kWh, +10:00 offsets,
    1970 before the clock is set, signed data, frames that are not OCPP."""
    t0 = live_start()
    password = await ocpp.book.add("cp-odd")
    async with websockets.connect(
        f"{ocpp.ocpp_url}/cp-odd",
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        additional_headers={"Authorization": basic_header("cp-odd", password)},
    ) as ws:
        t = t0 + timedelta(minutes=10)
        frames = [
            # OpenEVSE: a JSON number
            {"connectorId": 1, "meterValue": [{"timestamp": iso(t), "sampledValue": [
                {"value": 1200, "measurand": "Energy.Active.Import.Register"}]}]},
            # Huawei: meterValue as an object; kWh
            {"connectorId": 1, "meterValue": {"timestamp": iso(t + timedelta(minutes=1)),
                "sampledValue": [{"value": "1.3", "unit": "kWh"}]}},
            # an empty sampledValue: no reading, no error
            {"connectorId": 1, "meterValue": [{"timestamp": iso(t), "sampledValue": []}]},
            # +10:00 offset, phases summed (no total), signed data kept
            {"connectorId": 1, "meterValue": [{"timestamp": (t + timedelta(minutes=2)).astimezone(
                __import__("datetime").timezone(timedelta(hours=10))).isoformat(),
                "sampledValue": [
                    {"value": "500", "phase": "L1"}, {"value": "450", "phase": "L2"},
                    {"value": "450", "phase": "L3"},
                    {"value": "OCMF|{...}|{SD:abc}", "format": "SignedData"}]}]},
            # 1970: the clock was not set; and a value that is no number
            {"connectorId": 1, "meterValue": [
                {"timestamp": "1970-01-01t00:00:07Z", "sampledValue": [{"value": "1"}]},
                {"timestamp": iso(t + timedelta(minutes=3)), "sampledValue": [{"value": "n/a"}]}]},
        ]  # fmt: skip
        for i, payload in enumerate(frames):
            answer = await raw_call(ws, "MeterValues", payload, f"mv-{i}")
            assert answer == [3, f"mv-{i}", {}], answer
        # not JSON: dead-lettered, nothing owed; a CALL with a bad payload: a CALLERROR
        await ws.send("this is not json")
        answer = await raw_call(ws, "MeterValues", ["not", "an", "object"], "bad")
        assert answer[0] == 4 and answer[1] == "bad" and answer[2] == "FormatViolation"
        answer = await raw_call(ws, "NoSuchAction", {}, "nsa")
        assert answer[0] == 4 and answer[2] in ("NotSupported", "NotImplemented")

    got = await registers(db, "cp-odd-1")
    assert [kwh for _, kwh in got] == [1.2, 1.3, 1.4]
    assert got[2][0] == t + timedelta(minutes=2)  # the +10:00 time, as an instant
    signed = await db.fetch("SELECT * FROM charger_signed_values WHERE meter_id = 'cp-odd-1'")
    assert [(r["ts"], r["signed_data"]) for r in signed] == [
        (t + timedelta(minutes=2), "OCMF|{...}|{SD:abc}")
    ]
    dead = await eventually(
        lambda: db.fetch(
            "SELECT reason, detail, payload FROM rejected_messages WHERE topic = 'ocpp:cp-odd'"
        ),
        lambda rows: len(rows) >= 3,
    )
    details = " | ".join(r["detail"] for r in dead)
    assert "clock was not set" in details
    assert "'n/a' is not a number" in details
    assert any(bytes(r["payload"]) == b"this is not json" for r in dead)


async def test_an_offline_replay_of_a_whole_session_ends_it_once(ocpp, db) -> None:
    t0 = live_start()
    password = await ocpp.book.add("cp-off")
    start = t0 - timedelta(hours=2)
    for _ in range(2):  # the charger replays its queue twice (the first answers were lost)
        async with SimCharger(ocpp.ocpp_url, "cp-off", "ocpp1.6", password) as cp:
            await cp.boot()
            tx = await cp.start(2, "TAG-OFF", 10_000, start)
            for minute in range(1, 4):
                await cp.meter_values(2, 10_000 + 700 * minute, start + timedelta(minutes=minute),
                                      transaction_id=tx)  # fmt: skip
            await cp.stop(tx, 13_000, start + timedelta(minutes=5), reason="EVDisconnected")
    rows = await db.fetch("SELECT * FROM charging_sessions WHERE charger_id = 'cp-off'")
    assert len(rows) == 1
    assert rows[0]["state"] == "ended-offline"
    async with api_client(ocpp) as api:
        s = (await api.get(f"/v1/sessions/{rows[0]['id']}")).json()
        assert s["kwh"] == pytest.approx(3.0) and s["kwhCharger"] == pytest.approx(3.0)
        listed = (await api.get("/v1/sessions", params={"state": "ended-offline"})).json()
        assert [x["id"] for x in listed["sessions"]] == [rows[0]["id"]]


async def test_a_faulted_connector_and_an_offline_charger_raise_alerts(
    start_collector: Callable[..., Awaitable[CollectorService]], db
) -> None:
    service = await start_collector(ocpp_listen="127.0.0.1:0", alert_interval_s=1, alert_mqtt=False)
    source = service.sources["ocpp"]
    assert isinstance(source, OcppSource)
    await eventually(lambda: asyncio.sleep(0, source.port), lambda port: port is not None)
    url = f"ws://127.0.0.1:{source.port}/ocpp"
    book = ChargerBook(source.recorder._pool)
    password = await book.add("cp-alarm")
    async with api_client(service) as api:

        async def states() -> dict[tuple[str, str], str]:
            alerts = (await api.get("/v1/alerts")).json()["alerts"]
            return {(a["rule"], a["deviceId"]): a["state"] for a in alerts}

        async with SimCharger(url, "cp-alarm", "ocpp1.6", password) as cp:
            await cp.boot()
            # Faulted since ten minutes ago (the charger's own time of it)
            await cp.call(
                call16.StatusNotification(
                    connector_id=2, error_code="GroundFailure", status="Faulted",
                    timestamp=iso(datetime.now(UTC) - timedelta(minutes=10)),
                )
            )  # fmt: skip
            await eventually(
                states, lambda s: s.get(("connector_faulted", "cp-alarm-2")) == "firing"
            )
            await cp.status(2, "Available")
            await eventually(states, lambda s: ("connector_faulted", "cp-alarm-2") not in s)
        # gone, and (as if) an hour ago: offline
        await eventually(
            lambda: db.fetchval("SELECT connected FROM chargers WHERE id = 'cp-alarm'"),
            lambda connected: connected is False,
        )
        await db.execute(
            "UPDATE chargers SET last_seen_at = now() - interval '1 hour' WHERE id = 'cp-alarm'"
        )
        await eventually(states, lambda s: s.get(("charger_offline", "cp-alarm-0")) == "firing")
        async with SimCharger(url, "cp-alarm", "ocpp1.6", password) as cp:
            await cp.heartbeat()
            await eventually(states, lambda s: ("charger_offline", "cp-alarm-0") not in s)


async def test_wss_with_a_certificate_of_its_own(start_collector, db, tmp_path) -> None:
    cert, key = tmp_path / "ocpp.crt", tmp_path / "ocpp.key"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    service = await start_collector(
        ocpp_listen="127.0.0.1:0", ocpp_tls_cert=str(cert), ocpp_tls_key=str(key)
    )
    source = service.sources["ocpp"]
    assert isinstance(source, OcppSource)
    await eventually(lambda: asyncio.sleep(0, source.port), lambda port: port is not None)
    password = await ChargerBook(source.recorder._pool).add("cp-tls")
    trust = ssl.create_default_context(cafile=str(cert))
    url = f"wss://127.0.0.1:{source.port}/ocpp"
    async with SimCharger(url, "cp-tls", "ocpp1.6", password, ssl=trust) as cp:
        assert await cp.boot() == "Accepted"
    with pytest.raises(ssl.SSLError):  # a charger that does not trust it cannot connect
        await SimCharger(url, "cp-tls", "ocpp1.6", password).connect()


async def test_relay_of_a_201_station(start_collector, db) -> None:
    """relay mode in-process, OCPP 2.0.1: the CSMS answers, we record the session."""
    received: list[str] = []

    class Csms(ChargePoint201):
        async def route_message(self, raw: str) -> Any:
            received.append(raw)
            return await super().route_message(raw)

        @on("BootNotification")
        def on_boot(self, **_: Any) -> Any:
            return result201.BootNotification(
                current_time=iso(datetime.now(UTC)), interval=60, status="Accepted"
            )

        @on("TransactionEvent")
        def on_event(self, **_: Any) -> Any:
            return result201.TransactionEvent()

    async def handler(ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await Csms(ws.request.path.rsplit("/", 1)[-1], ws).start()

    async with websockets.serve(handler, "127.0.0.1", 0, subprotocols=["ocpp2.0.1"]) as up:  # type: ignore[list-item]
        port = next(iter(up.sockets)).getsockname()[1]
        service = await start_collector(
            ocpp_listen="127.0.0.1:0",
            ocpp_mode="relay",
            ocpp_upstream_url=f"ws://127.0.0.1:{port}/csms/{{chargerId}}",
            ocpp_accept_unknown=True,
        )
        source = service.sources["ocpp"]
        assert isinstance(source, OcppSource)
        await eventually(lambda: asyncio.sleep(0, source.port), lambda p: p is not None)
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
        async with SimCharger(f"ws://127.0.0.1:{source.port}/ocpp", "cs-relay", "ocpp2.0.1") as cs:
            assert await cs.boot() == "Accepted"
            await cs.event("Started", "R-1", 0, evse=2, wh=100.0, ts=t0, id_tag="CARD")
            await cs.event("Updated", "R-1", 1, evse=2, wh=900.0, ts=t0 + timedelta(minutes=1))
            await cs.event("Ended", "R-1", 2, evse=2, wh=1500.0, ts=t0 + timedelta(minutes=2),
                           stopped_reason="Local")  # fmt: skip
        assert [json.loads(r)[2] for r in received] == ["BootNotification"] + 3 * [
            "TransactionEvent"
        ]
        row = await eventually(
            lambda: db.fetchrow("SELECT * FROM charging_sessions WHERE transaction_id = 'R-1'"),
            lambda r: r is not None and r["state"] == "ended",
        )
        assert row["meter_id"] == "cs-relay-2" and row["id_tag"] == "CARD"
        assert [kwh for _, kwh in await eventually(
            lambda: registers(db, "cs-relay-2"), lambda r: len(r) == 3
        )] == [0.1, 0.9, 1.5]  # fmt: skip


async def test_an_allow_list_of_id_tags(start_collector, db) -> None:
    service = await start_collector(ocpp_listen="127.0.0.1:0", ocpp_authorize="listed")
    source = service.sources["ocpp"]
    assert isinstance(source, OcppSource)
    await eventually(lambda: asyncio.sleep(0, source.port), lambda port: port is not None)
    book = ChargerBook(source.recorder._pool)
    password = await book.add("cp-list")
    await book.tag("CARD-OK", None)
    await book.tag("CARD-LOST", None, allowed=False)
    async with SimCharger(
        f"ws://127.0.0.1:{source.port}/ocpp", "cp-list", "ocpp1.6", password
    ) as cp:
        for tag, status in [
            ("CARD-OK", "Accepted"),
            ("CARD-LOST", "Invalid"),
            ("STRANGER", "Invalid"),
        ]:
            answer = await cp.call(call16.Authorize(id_tag=tag))
            assert answer.id_tag_info["status"] == status, tag
