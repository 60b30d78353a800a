"""Memory bounds on a broker with the project's limits (a window of 10,000, unlike the local
broker's default of 20): the client's own limit on held messages, and a resumed session
whose backlog is bigger than that limit."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt
import pytest

from collector.sources.mqtt.client import BulkAckClient
from tests.helpers import Stream, eventually, publish
from tests.services import MosquittoProcess

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> MosquittoProcess:
    mq = MosquittoProcess(tmp_path_factory.mktemp("mosquitto")).start()
    yield mq
    mq.kill()


def client(broker: MosquittoProcess, client_id: str, max_held: int) -> BulkAckClient:
    return BulkAckClient(
        "127.0.0.1",
        port=broker.port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=False,
        max_held=max_held,
    )


async def test_client_stops_reading_at_its_limit_and_resumes_after_acks(broker):
    client_id, topic = f"flow-{uuid.uuid4().hex[:6]}", f"flow/{uuid.uuid4().hex[:6]}"
    async with client(broker, client_id, max_held=100) as c:
        await c.subscribe(topic, qos=1)
        await asyncio.to_thread(publish, broker.url, [(topic, b"x")] * 1000)
        held = []
        for _ in range(20):
            held += await asyncio.wait_for(c.take(), 5)
            await asyncio.sleep(0.05)
            if c.reading_paused:
                break
        await asyncio.sleep(0.3)
        assert c.reading_paused
        assert len(held) + c.pending <= 101, "held more than the limit"
        assert c.held == len(held) + c.pending
        total = len(held)
        while total < 1000:  # acking lets the rest in, the limit holding all along
            c.ack(held)
            held = await asyncio.wait_for(c.take(), 5)
            assert len(held) <= 101
            total += len(held)
        c.ack(held)
        assert total == 1000


async def test_collector_resumes_a_session_with_a_backlog_bigger_than_its_limit(
    start_collector, db, broker, prefix
):
    """The backlog arrives before the SUBACK; the collector must not wait for the SUBACK
    before taking messages, or it would stop reading at its limit and wait forever."""
    service = await start_collector(mqtt_url=broker.url, mqtt_receive_maximum=50, mqtt_protocol="5")
    service.request_stop("make a backlog")
    await asyncio.sleep(0.3)
    stream = Stream(prefix, devices=25, per_device=20)  # 1,000 readings, 20x the limit
    await asyncio.to_thread(publish, broker.url, stream.messages())
    await start_collector(mqtt_url=broker.url, mqtt_receive_maximum=50, mqtt_protocol="5")
    await eventually(
        lambda: db.fetchval(
            "SELECT (SELECT count(*) FROM meter_readings) + (SELECT count(*) FROM vehicle_readings)"
        ),
        lambda n: n == 1000,
        timeout=20,
    )
