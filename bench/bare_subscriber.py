"""Bare aiomqtt subscribers: the collector's MQTT ceiling with no validation and no database.

``--mode bulk``: the collector's own MQTT stack (``sources.mqtt.client.BulkAckClient``, the
same connection settings as the collector: persistent session, Receive Maximum, manual acks)
taking every ready message at once and acknowledging it right away.
``--mode iterate``: stock aiomqtt, ``async for message in client.messages`` (paho acks on
receipt), for reference.

Prints one JSON line: messages, seconds from the first to the last message, rate.
"""

from __future__ import annotations

try:  # run as a script: take bench/ off sys.path first (bench/_paths.py)
    import _paths
except ModuleNotFoundError:  # imported as bench.<module>: the path is right already
    _paths = None

# isort: split

import argparse
import asyncio
import json
import time

import aiomqtt
import uvloop

from collector.settings import load_settings
from collector.sources.mqtt.broker import build_client
from collector.sources.mqtt.client import BulkAckClient
from collector.sources.mqtt.topics import NativeTopics


async def run(args: argparse.Namespace) -> dict:
    settings = load_settings(
        {
            "MQTT_URL": args.url,
            "MQTT_CLIENT_ID": args.client_id,
            "MQTT_PROTOCOL": args.protocol,
            "MQTT_RECEIVE_MAXIMUM": str(args.receive_maximum),
            "MQTT_TOPIC_PREFIX": args.prefix,
        },
        env_file=None,
    )
    # Built by the collector's own factory, so the connection settings are the same.
    client = build_client(settings, BulkAckClient if args.mode == "bulk" else aiomqtt.Client)
    received = 0
    first = last = 0.0
    cpu_at_start = time.process_time()
    deadline = time.monotonic() + args.timeout

    async def consume() -> None:
        nonlocal received, first, last
        if isinstance(client, BulkAckClient):
            while received < args.count and time.monotonic() < deadline:
                try:
                    batch = await asyncio.wait_for(client.take(), 5)
                except TimeoutError:
                    continue
                if not first:
                    first = time.monotonic()
                client.ack(batch)
                received += len(batch)
                last = time.monotonic()
        else:
            async for _message in client.messages:
                if not first:
                    first = time.monotonic()
                received += 1
                last = time.monotonic()
                if received >= args.count or last > deadline:
                    break

    async with client:
        # As the collector does: take messages while the SUBACK is on its way.
        consuming = asyncio.create_task(consume())
        await client.subscribe([(t, 1) for t in NativeTopics.from_settings(settings).filters()])
        if args.count == 0:
            consuming.cancel()
            return {"subscribed": True}
        await consuming
        await asyncio.sleep(0.2)  # let the last PUBACKs leave before DISCONNECT
    seconds = last - first
    return {
        "received": received,
        "seconds": round(seconds, 4),
        "rate": round(received / seconds, 1) if seconds else 0.0,
        "cpu_us_per_message": round((time.process_time() - cpu_at_start) / received * 1e6, 1)
        if received
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="3.1.1")
    parser.add_argument("--receive-maximum", type=int, default=10000)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--mode", choices=["bulk", "iterate"], default="bulk")
    parser.add_argument("--prefix", default="", help="topic prefix, as MQTT_TOPIC_PREFIX")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
