"""OCPP under faults, with a collector process and a PostgreSQL and a broker of the test's
own: kill -9 during MeterValues in csms mode (the charger resends, stored once), and relay
mode in front of a small CSMS, byte for byte, while our database is down."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16

from collector.tools.ocpp_charger import SimCharger
from tests.helpers import eventually
from tests.services import CollectorProcess, MosquittoProcess, PostgresProcess, free_port

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresProcess]:
    pg = PostgresProcess().init().start()
    yield pg
    pg.destroy()


@pytest.fixture
def env(postgres: PostgresProcess, tmp_path: Path) -> Iterator[dict[str, str]]:
    broker = MosquittoProcess(tmp_path / "mosquitto").start()
    database = f"ocpp_{os.getpid()}_{free_port()}"
    yield {
        "DATABASE_URL": postgres.dsn(database),
        "MQTT_URL": broker.url,
        "MQTT_CLIENT_ID": f"ocpp-{database}",
        "PORT": "0",
        "OCPP_LISTEN": f"127.0.0.1:{free_port()}",
        "OCPP_METER_INTERVAL_S": "0",
        "FLUSH_INTERVAL_MS": "20",
        "ALERTS_ENABLED": "false",
    }
    broker.kill()


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "collector", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    return out.stdout


def ocpp_url(env: dict[str, str]) -> str:
    return f"ws://{env['OCPP_LISTEN']}/ocpp"


async def registers(dsn: str, meter_id: str) -> list[float]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT kwh_register_ac FROM meter_readings WHERE meter_id = $1 ORDER BY ts", meter_id
        )
    finally:
        await conn.close()
    return [r[0] for r in rows]


async def test_kill_9_during_meter_values_the_charger_resends_and_it_is_stored_once(
    env: dict[str, str], tmp_path: Path
) -> None:
    printed = cli(env, "chargers", "add", "cp-kill")
    password = re.search(r"password\s+(\S+)", printed)
    assert password, printed
    collector = CollectorProcess(env, tmp_path / "first.log").start()
    collector.wait_for_log("ocpp.listening")
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    dsn = env["DATABASE_URL"]
    locker = await asyncpg.connect(dsn)
    try:
        async with SimCharger(ocpp_url(env), "cp-kill", "ocpp1.6", password[1]) as cp:
            await cp.boot()
            tx = await cp.start(1, "TAG", 1000, t0)
            await cp.meter_values(1, 1500, t0 + timedelta(minutes=1), transaction_id=tx)
            # The writer cannot commit now: the MeterValues below gets no answer.
            tr = locker.transaction()
            await tr.start()
            await locker.execute("LOCK TABLE meter_readings IN ACCESS EXCLUSIVE MODE")
            cp._point._response_timeout = 2
            with pytest.raises(asyncio.TimeoutError):
                await cp.meter_values(1, 2100, t0 + timedelta(minutes=2), transaction_id=tx)
            held = await locker.fetchval(
                "SELECT count(*) FROM meter_readings WHERE meter_id = 'cp-kill-1'"
            )
            assert held == 2  # the third was not committed when the collector died
            collector.kill()
            await tr.rollback()
        second = CollectorProcess(env, tmp_path / "second.log").start()
        second.wait_for_log("ocpp.listening")
        try:
            # the charger reconnects and resends what was not answered (and, to be sure,
            # the one before it again)
            async with SimCharger(ocpp_url(env), "cp-kill", "ocpp1.6", password[1]) as cp:
                await cp.meter_values(1, 1500, t0 + timedelta(minutes=1), transaction_id=tx)
                await cp.meter_values(1, 2100, t0 + timedelta(minutes=2), transaction_id=tx)
                await cp.stop(tx, 2600, t0 + timedelta(minutes=3))
                assert await registers(dsn, "cp-kill-1") == [1.0, 1.5, 2.1, 2.6]
        finally:
            assert second.terminate() == 0
        # and out as figures to bill: the export command writes the CSV and its manifest
        out = tmp_path / "sessions.csv"
        day = t0.date()
        cli(env, "export", "sessions", "--from", day.isoformat(),
            "--to", (day + timedelta(days=1)).isoformat(), "--out", str(out))  # fmt: skip
        manifest = json.loads(Path(f"{out}.manifest.json").read_text())  # noqa: ASYNC240
        assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
        assert manifest["rows"] == 1 and manifest["export"] == "sessions"
        assert "cp-kill-1" in out.read_text().splitlines()[1]
    finally:
        collector.kill()
        await locker.close()


class Upstream:
    """A small CSMS of the operator's: answers 1.6 chargers, and keeps every frame it
    received and sent, as text."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.sent: list[str] = []
        self.port = free_port()
        self.auth: list[str | None] = []

    async def serve(self) -> AsyncIterator[None]:
        upstream = self

        class Csms(ChargePoint16):
            async def route_message(self, raw: str) -> Any:
                upstream.received.append(raw)
                return await super().route_message(raw)

            async def _send(self, message: str) -> None:
                upstream.sent.append(message)
                await super()._send(message)

            @on("BootNotification")
            def on_boot(self, **_: Any) -> Any:
                return result16.BootNotification(
                    current_time=datetime.now(UTC).isoformat(), interval=300, status="Accepted"
                )

            @on("StartTransaction")
            def on_start(self, **_: Any) -> Any:
                return result16.StartTransaction(
                    transaction_id=77, id_tag_info={"status": "Accepted"}
                )

            @on("MeterValues")
            def on_meter_values(self, **_: Any) -> Any:
                return result16.MeterValues()

            @on("StopTransaction")
            def on_stop(self, **_: Any) -> Any:
                return result16.StopTransaction()

        async def handler(ws: Any) -> None:
            self.auth.append(ws.request.headers.get("Authorization"))
            with contextlib.suppress(websockets.ConnectionClosed):
                await Csms(ws.request.path.rsplit("/", 1)[-1], ws).start()

        async with websockets.serve(handler, "127.0.0.1", self.port, subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
            yield


async def test_relay_forwards_byte_for_byte_and_stores_what_passed_while_the_database_was_down(
    env: dict[str, str], postgres: PostgresProcess, tmp_path: Path
) -> None:
    upstream = Upstream()
    serving = upstream.serve()
    await serving.__anext__()
    env = {
        **env,
        "OCPP_MODE": "relay",
        "OCPP_UPSTREAM_URL": f"ws://127.0.0.1:{upstream.port}/ocpp/{{chargerId}}",
    }
    cli(env, "chargers", "add", "cp-relay")
    collector = CollectorProcess(env, tmp_path / "relay.log").start()
    collector.wait_for_log("ocpp.listening")
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    dsn = env["DATABASE_URL"]
    charger_sent: list[str] = []
    charger_got: list[str] = []
    try:
        # the CSMS's password, not ours: relay mode passes the credentials on
        charger = SimCharger(ocpp_url(env), "cp-relay", "ocpp1.6", "the-csms-password-0001")
        await charger.connect()
        ws = charger._ws
        send, recv = ws.send, ws.recv

        async def sending(message: str, *args: Any, **kw: Any) -> None:
            charger_sent.append(message)
            await send(message, *args, **kw)

        async def receiving(*args: Any, **kw: Any) -> Any:
            message = await recv(*args, **kw)
            charger_got.append(message)
            return message

        ws.send, ws.recv = sending, receiving
        try:
            assert await charger.boot() == "Accepted"
            postgres.stop()  # our database goes away: the traffic must not notice
            tx = await asyncio.wait_for(charger.start(1, "TAG", 4000, t0), 5)
            assert tx == 77  # the CSMS's transaction id
            for minute in (1, 2, 3):
                await asyncio.wait_for(
                    charger.meter_values(1, 4000 + 500 * minute, t0 + timedelta(minutes=minute),
                                         transaction_id=tx),
                    5,
                )  # fmt: skip
            await asyncio.wait_for(charger.stop(tx, 6000, t0 + timedelta(minutes=4)), 5)
            # a frame that is not JSON reaches the CSMS as it is (and is dead-lettered here)
            await charger.send_raw("not json at all")
            await asyncio.sleep(0.3)
            postgres.start()
        finally:
            await charger.close()
        assert upstream.received == charger_sent
        assert upstream.sent == charger_got
        assert len(upstream.auth) == 1  # the charger's credentials went to the CSMS
        assert upstream.auth[0] is not None and upstream.auth[0].startswith("Basic ")

        async def stored() -> list[float]:
            try:
                return await registers(dsn, "cp-relay-1")
            except (OSError, asyncpg.PostgresError):
                return []

        got = await eventually(stored, lambda r: len(r) == 5, timeout=60)
        assert got == [4.0, 4.5, 5.0, 5.5, 6.0]
        conn = await asyncpg.connect(dsn)
        try:
            session = await eventually(
                lambda: conn.fetchrow(
                    "SELECT * FROM charging_sessions WHERE charger_id = 'cp-relay'"
                ),
                lambda row: row is not None and row["state"] != "active",
                timeout=30,
            )
            assert session["transaction_id"] == "77"
            assert session["meter_start_wh"] == 4000 and session["meter_stop_wh"] == 6000
            dead = await eventually(
                lambda: conn.fetch(
                    "SELECT payload FROM rejected_messages WHERE topic = 'ocpp:cp-relay'"
                ),
                lambda rows: len(rows) == 1,
            )
            assert bytes(dead[0]["payload"]) == b"not json at all"
            boot = await conn.fetchval("SELECT boot_status FROM chargers WHERE id = 'cp-relay'")
            assert boot == "Accepted"
        finally:
            await conn.close()
        assert json.loads(charger_sent[0])[2] == "BootNotification"
    finally:
        if not (postgres.data / "postmaster.pid").exists():
            postgres.start()
        assert collector.terminate() == 0
        await serving.aclose()


def test_the_chargers_command(env: dict[str, str]) -> None:
    printed = cli(env, "chargers", "add", "cp-cli")
    assert f"ws://127.0.0.1:{env['OCPP_LISTEN'].rsplit(':', 1)[1]}/ocpp/cp-cli" in printed
    listed = cli(env, "chargers", "list")
    assert listed.startswith("cp-cli  password  never connected")
    assert "vehicle ev-1" in cli(env, "chargers", "tag", "RFID-1", "--vehicle", "ev-1")
    assert "refused" in cli(env, "chargers", "tag", "RFID-2", "--refuse")
    assert "removed" in cli(env, "chargers", "remove", "cp-cli")
    refused = subprocess.run(
        [sys.executable, "-m", "collector", "chargers", "remove", "cp-cli"],
        env={**os.environ, **env}, capture_output=True, text=True, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    assert refused.returncode != 0
    assert refused.stderr.strip() == "energy-collector: no charger 'cp-cli' is registered"
    bad = subprocess.run(
        [sys.executable, "-m", "collector", "chargers", "add", "bad id"],
        env={**os.environ, **env}, capture_output=True, text=True, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    assert "is not a charger id" in bad.stderr and bad.stderr.count("\n") == 1
