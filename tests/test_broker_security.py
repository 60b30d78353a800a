"""The production broker configuration (mosquitto/), started as it is, with the collector.

mosquitto.conf, acl and limits.d are copied unchanged; listeners.d is the production file
with only its port numbers changed; accounts are made by mosquitto/add-device.sh; the TLS
certificate is a self-signed one made here. Shows: an anonymous client and a wrong password
are refused, a device cannot publish as another device or as the other kind, an oversized
packet is refused by the broker, a device's account can neither take the collector's
session nor log in on the collector's listener, and the collector (shared subscription, its
own account, its own listener) still stores every legitimate reading, over plain MQTT and
TLS.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import BASE_TS, Stream, eventually, meter, vehicle
from tests.services import REPO, free_port, wait_for_port

pytestmark = pytest.mark.services

MOSQUITTO = REPO / "mosquitto"
PASSWORDS = {
    "collector": "collector-pw-0123",
    "meters/m1": "m1-pw-0123",
    "meters/m2": "m2-pw-0123",
    "vehicles/v1": "v1-pw-0123",
}


class SecureBroker:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port, self.tls_port, self.collector_port = free_port(), free_port(), free_port()
        for name in ("mosquitto.conf", "acl"):
            shutil.copy(MOSQUITTO / name, directory / name)
        shutil.copytree(MOSQUITTO / "limits.d", directory / "limits.d")
        (directory / "listeners.d").mkdir()
        listeners = (MOSQUITTO / "listeners.d" / "listeners.conf").read_text()
        listeners = listeners.replace("listener 1883\n", f"listener {self.port}\n")
        listeners = listeners.replace("listener 8883\n", f"listener {self.tls_port}\n")
        listeners = listeners.replace("listener 1884\n", f"listener {self.collector_port}\n")
        assert all(str(p) in listeners for p in (self.port, self.tls_port, self.collector_port))
        (directory / "listeners.d" / "listeners.conf").write_text(listeners)
        # Test only: started as root, Mosquitto would drop to a user that cannot write here.
        (directory / "listeners.d" / "test-user.conf").write_text("user root\n")
        (directory / "certs").mkdir()
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                "certs/server.key",
                "-out",
                "certs/server.crt",
            ],
            cwd=directory,
            check=True,
            capture_output=True,
        )
        for user, password in PASSWORDS.items():
            kind, _, ident = user.partition("/")
            args = [kind.rstrip("s"), ident] if ident else [kind]
            subprocess.run(
                [str(MOSQUITTO / "add-device.sh"), *args],
                check=True,
                capture_output=True,
                env={
                    "PATH": "/usr/bin:/bin",
                    "PASSWD_FILE": str(directory / "passwd"),
                    "PASSWORD": password,
                },
            )
        self.proc: subprocess.Popen | None = None

    def start(self) -> SecureBroker:
        with (self.dir / "mosquitto.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", "mosquitto.conf"],
                cwd=self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port)
        wait_for_port(self.tls_port)
        wait_for_port(self.collector_port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def url(self, user: str, port: int | None = None) -> str:
        """An account's URL: on the collector's listener for the collector, else on the
        devices' (or ``port``)."""
        port = port or (self.collector_port if user == "collector" else self.port)
        return f"mqtt://{quote(user, safe='')}:{PASSWORDS[user]}@127.0.0.1:{port}"


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> SecureBroker:
    broker = SecureBroker(tmp_path_factory.mktemp("secure")).start()
    yield broker
    broker.stop()


def connect(
    broker: SecureBroker,
    user: str | None,
    password: str | None = None,
    *,
    tls: bool = False,
    protocol: int = paho.MQTTv5,
    client_id: str | None = None,
    clean_start: bool = True,
    port: int | None = None,
) -> tuple[paho.Client, object]:
    """Connect and return (client, reason code of the CONNACK)."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"dev-{uuid.uuid4().hex[:6]}",
        protocol=protocol,
    )
    if user is not None:
        client.username_pw_set(user, password if password is not None else PASSWORDS[user])
    if tls:
        client.tls_set(
            ca_certs=str(broker.dir / "certs" / "server.crt"), cert_reqs=ssl.CERT_REQUIRED
        )
    result: dict = {}
    done = threading.Event()

    def on_connect(_c, _u, _flags, reason_code, _props=None):
        result["rc"] = reason_code
        done.set()

    client.on_connect = on_connect
    port = port or (broker.tls_port if tls else broker.port)
    if protocol == paho.MQTTv5:
        properties = paho.Properties(paho.PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0 if clean_start else 3600
        client.connect("127.0.0.1", port, clean_start=clean_start, properties=properties)
    else:
        client.connect("127.0.0.1", port)
    client.loop_start()
    assert done.wait(5), "no CONNACK"
    return client, result["rc"]


def send(client: paho.Client, topic: str, payload: bytes | str) -> object:
    """Publish at QoS 1 and return the PUBACK's reason code (MQTT 5)."""
    acked = threading.Event()
    result: dict = {}

    def on_publish(_c, _u, _mid, reason_code, _props):
        result["rc"] = reason_code
        acked.set()

    client.on_publish = on_publish
    client.publish(topic, payload, qos=1)
    assert acked.wait(5), "no PUBACK"
    return result["rc"]


def close(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


@pytest.fixture
async def collector(start_collector, secure):
    return await start_collector(
        mqtt_url=secure.url("collector"), mqtt_topic_prefix="", mqtt_shared_group="collectors"
    )


async def rows(db, table: str) -> set:
    key = "meter_id" if table == "meter_readings" else "vehicle_id"
    return {(r[0], r[1]) for r in await db.fetch(f"SELECT {key}, ts FROM {table}")}


async def test_anonymous_and_wrong_passwords_are_refused(secure):
    for user, password in ((None, None), ("meters/m1", "wrong"), ("nobody", "x")):
        client, rc = await asyncio.to_thread(connect, secure, user, password)
        close(client)
        assert rc.is_failure and rc.value in (0x86, 0x87), (user, rc)  # bad credentials


async def test_a_device_publishes_only_its_own_readings(db, collector, secure):
    m1, rc = await asyncio.to_thread(connect, secure, "meters/m1")
    assert not rc.is_failure
    own = meter("m1", BASE_TS)
    assert not (await asyncio.to_thread(send, m1, "meters/m1/reading", json.dumps(own))).is_failure
    # As another meter, and as a vehicle: refused by the broker (MQTT 5 says so).
    for topic, reading in (
        ("meters/m2/reading", meter("m2", BASE_TS)),
        ("vehicles/m1/reading", vehicle("m1", BASE_TS)),
    ):
        rc = await asyncio.to_thread(send, m1, topic, json.dumps(reading))
        assert rc.is_failure and rc.value == 0x87, (topic, rc)  # Not authorized
    close(m1)
    await eventually(lambda: rows(db, "meter_readings"), lambda r: len(r) == 1)
    await asyncio.sleep(0.5)
    assert await rows(db, "meter_readings") == {("m1", BASE_TS)}
    assert await rows(db, "vehicle_readings") == set()


async def test_the_collector_stores_every_legitimate_reading(db, collector, secure):
    stream = Stream("", devices=1, per_device=50)
    expected_m, expected_v = stream.expected_keys()
    clients = {
        user: (await asyncio.to_thread(connect, secure, user))[0]
        for user in ("meters/m2", "vehicles/v1")
    }
    renamed = []
    for _topic, payload in stream.messages():  # device 0 of the stream, as m2 and v1
        reading = json.loads(payload)
        if "meterId" in reading:
            reading["meterId"] = "m2"
            renamed.append(("meters/m2", "meters/m2/reading", reading))
        else:
            reading["vehicleId"] = "v1"
            renamed.append(("vehicles/v1", "vehicles/v1/reading", reading))
    for user, topic, reading in renamed:
        await asyncio.to_thread(send, clients[user], topic, json.dumps(reading))
    await eventually(lambda: rows(db, "vehicle_readings"), lambda r: len(r) == 50)
    await eventually(lambda: rows(db, "meter_readings"), lambda r: len(r) == 50)
    for client in clients.values():
        close(client)
    assert {ts for _, ts in await rows(db, "meter_readings")} == {t for _, t in expected_m}
    assert {ts for _, ts in await rows(db, "vehicle_readings")} == {t for _, t in expected_v}


async def test_tls_listener(db, collector, secure):
    v1, rc = await asyncio.to_thread(connect, secure, "vehicles/v1", tls=True)
    assert not rc.is_failure
    reading = vehicle("v1", BASE_TS)
    assert not (
        await asyncio.to_thread(send, v1, "vehicles/v1/reading", json.dumps(reading))
    ).is_failure
    close(v1)
    await eventually(lambda: rows(db, "vehicle_readings"), lambda r: r == {("v1", BASE_TS)})


async def test_an_oversized_packet_is_refused_by_the_broker(db, collector, secure):
    m1, _ = await asyncio.to_thread(connect, secure, "meters/m1", protocol=paho.MQTTv311)
    dropped = threading.Event()
    m1.on_disconnect = lambda *_args: dropped.set()
    huge = json.dumps({**meter("m1", BASE_TS), "pad": "x" * 70_000})  # over max_packet_size
    m1.publish("meters/m1/reading", huge, qos=1)
    assert await asyncio.to_thread(dropped.wait, 5), "the broker should drop the client"
    close(m1)
    await asyncio.sleep(0.5)
    assert await rows(db, "meter_readings") == set()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_check_tells_a_collector_account_from_a_device_account(
    secure, database_url, tmp_path, protocol
):
    def check(url: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "collector", "check", "--listen", "1.5"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={
                "PATH": "/usr/bin:/bin",
                "DATABASE_URL": database_url,
                "MQTT_URL": url,
                "MQTT_PROTOCOL": protocol,
                "HTTP_ENABLED": "false",
            },
        )

    m1, _ = await asyncio.to_thread(connect, secure, "meters/m1")
    stop = threading.Event()

    def publish_steadily() -> None:  # a live device, as the check would meet in production
        while not stop.wait(0.05):
            m1.publish("meters/m1/reading", json.dumps(meter("m1", BASE_TS)), qos=1)

    device = threading.Thread(target=publish_steadily)
    device.start()
    try:
        ok = await asyncio.to_thread(check, secure.url("collector"))
        as_device = await asyncio.to_thread(check, secure.url("meters/m2"))  # m1 publishes
    finally:
        stop.set()
        device.join()
        close(m1)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert PASSWORDS["collector"] not in ok.stdout
    seen = int(ok.stdout.split(" readings arrived")[0].rsplit(" ", 1)[-1])
    assert seen >= 10, ok.stdout
    # Mosquitto grants the subscription and delivers nothing on it: the check says so.
    assert as_device.returncode == 0
    assert "0 readings arrived in 1.5 s (the devices are quiet, or the broker's ACL" in (
        as_device.stdout
    )

    wrong = await asyncio.to_thread(
        check, secure.url("collector").replace(PASSWORDS["collector"], "wrong")
    )
    assert wrong.returncode == 1
    assert "broker: FAILED: cannot connect" in wrong.stdout
    assert "check failed: broker" in wrong.stderr


async def test_no_device_account_takes_the_collectors_session_and_nothing_is_lost(
    db, start_collector, secure
):
    """A device's account connecting with the collector's client id and a persistent session
    (clean_start=false) would inherit the collector's session and its queued readings, and
    the broker would drop those the device may not read. On the devices' listeners a
    client's id is its user name, and on the collector's a device's account is refused."""
    service = await start_collector(mqtt_url=secure.url("collector"), mqtt_topic_prefix="")
    client_id = service.settings.mqtt_client_id
    m1, rc = await asyncio.to_thread(
        connect, secure, "meters/m1", client_id=client_id, clean_start=False
    )
    assert not rc.is_failure  # connected, but as "meters/m1": a session of its own
    stolen, refused = await asyncio.to_thread(
        connect, secure, "meters/m2", client_id=client_id, clean_start=False,
        port=secure.collector_port,
    )  # fmt: skip
    close(stolen)
    assert refused.is_failure and refused.value in (0x86, 0x87), refused  # not on this one
    for minute in range(40):  # published while the "takeover" stays connected
        reading = meter("m1", BASE_TS + timedelta(minutes=minute))
        assert not (
            await asyncio.to_thread(send, m1, "meters/m1/reading", json.dumps(reading))
        ).is_failure
    await eventually(lambda: rows(db, "meter_readings"), lambda r: len(r) == 40)
    assert service.sources["mqtt"].health().connected
    close(m1)
    log = (secure.dir / "mosquitto.log").read_text()
    assert f"Client {client_id} already connected, closing old connection" not in log
