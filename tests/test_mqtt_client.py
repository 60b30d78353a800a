"""The manual-ack workaround (collector.sources.mqtt.client) against a real Mosquitto.

What it must guarantee: a message not acknowledged is redelivered to the next session, an
acknowledged one is not, nothing is acknowledged on a dead connection, and the broker's
in-flight window (MQTT 5 Receive Maximum) bounds how many unacked messages we hold.
"""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.sources.mqtt.client import BulkAckClient, MqttDisconnected
from tests.conftest import forget_session
from tests.helpers import MQTT_URL, publish

pytestmark = pytest.mark.services

HOST, PORT = "127.0.0.1", int(MQTT_URL.rsplit(":", 1)[1])
PROTOCOLS = [aiomqtt.ProtocolVersion.V311, aiomqtt.ProtocolVersion.V5]


def make_client(client_id: str, protocol, receive_maximum: int | None = None) -> BulkAckClient:
    props = None
    if protocol is aiomqtt.ProtocolVersion.V5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        if receive_maximum:
            props.ReceiveMaximum = receive_maximum
    if protocol is aiomqtt.ProtocolVersion.V311:
        return BulkAckClient(
            HOST, port=PORT, identifier=client_id, protocol=protocol, clean_session=False
        )
    return BulkAckClient(
        HOST,
        port=PORT,
        identifier=client_id,
        protocol=protocol,
        clean_start=False,
        properties=props,
    )


async def take_at_least(client: BulkAckClient, n: int, timeout: float = 5) -> list:
    got: list = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got.extend(await client.take())
    return got


async def nothing_arrives(client: BulkAckClient, wait: float = 0.5) -> bool:
    try:
        async with asyncio.timeout(wait):
            await client.take()
    except TimeoutError:
        return True
    return False


@pytest.fixture
def ids():
    tag = uuid.uuid4().hex[:8]
    client_id = f"test-ack-{tag}"
    yield client_id, f"test-ack/{tag}/x"
    forget_session(MQTT_URL, client_id)


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=["3.1.1", "5"])
async def test_unacked_messages_are_redelivered_and_acked_ones_are_not(ids, protocol):
    client_id, topic = ids
    async with make_client(client_id, protocol) as client:
        await client.subscribe(topic, qos=1)
    messages = [(topic, f"m{i}".encode()) for i in range(5)]
    await asyncio.to_thread(publish, MQTT_URL, messages)

    async with make_client(client_id, protocol) as client:
        first = await take_at_least(client, 5)
        assert [m[1] for m in first] == [p for _, p in messages]
        # No ack: leave (as a crash between receipt and commit would).
    async with make_client(client_id, protocol) as client:
        again = await take_at_least(client, 5)
        assert sorted(m[1] for m in again) == [p for _, p in messages]
        assert client.ack(again) is True
        await asyncio.sleep(0.2)  # let the PUBACKs reach the broker before we leave
    async with make_client(client_id, protocol) as client:
        assert await nothing_arrives(client)


async def test_take_hands_over_everything_that_is_ready_at_once(ids):
    client_id, topic = ids
    async with make_client(client_id, aiomqtt.ProtocolVersion.V311) as client:
        await client.subscribe(topic, qos=1)
        await asyncio.to_thread(publish, MQTT_URL, [(topic, b"x")] * 15)
        await asyncio.sleep(0.3)
        batch = await client.take()
        assert len(batch) == 15
        client.ack(batch)


async def test_receive_maximum_bounds_unacked_messages(ids):
    client_id, topic = ids
    async with make_client(client_id, aiomqtt.ProtocolVersion.V5, receive_maximum=3) as client:
        await client.subscribe(topic, qos=1)
        await asyncio.to_thread(publish, MQTT_URL, [(topic, f"{i}".encode()) for i in range(10)])
        held = await take_at_least(client, 3)
        assert await nothing_arrives(client), "broker must wait for acks past the window"
        assert len(held) == 3
        client.ack(held)
        rest = await take_at_least(client, 3)
        assert [m[1] for m in rest][:3] == [b"3", b"4", b"5"]
        client.ack(rest)
        remaining = await take_at_least(client, 10 - 3 - len(rest))
        client.ack(remaining)


async def test_ack_after_the_connection_is_gone_sends_nothing(ids):
    client_id, topic = ids
    client = make_client(client_id, aiomqtt.ProtocolVersion.V311)
    async with client:
        await client.subscribe(topic, qos=1)
        await asyncio.to_thread(publish, MQTT_URL, [(topic, b"x")])
        held = await take_at_least(client, 1)
    assert client.ack(held) is False
    async with make_client(client_id, aiomqtt.ProtocolVersion.V311) as again:
        redelivered = await take_at_least(again, 1)
        assert redelivered[0][1] == b"x"
        again.ack(redelivered)


async def test_take_raises_when_the_broker_drops_us(ids):
    client_id, topic = ids
    async with make_client(client_id, aiomqtt.ProtocolVersion.V311) as client:
        await client.subscribe(topic, qos=1)
        waiting = asyncio.create_task(client.take())
        await asyncio.sleep(0.05)
        # Another connection with the same client id takes the session over.
        async with make_client(client_id, aiomqtt.ProtocolVersion.V311):
            with pytest.raises(MqttDisconnected):
                await asyncio.wait_for(waiting, 5)


async def test_wake_returns_an_empty_take(ids):
    client_id, _ = ids
    async with make_client(client_id, aiomqtt.ProtocolVersion.V311) as client:
        waiting = asyncio.create_task(client.take())
        await asyncio.sleep(0.05)
        client.wake()
        assert await asyncio.wait_for(waiting, 1) == []
