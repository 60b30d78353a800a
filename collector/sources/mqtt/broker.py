"""How this installation connects to its broker: address, account, protocol, TLS, session.

Every MQTT client of the project is built from here: the collector's persistent session,
``leave`` (which deletes it), ``check`` (a clean session of its own) and the tools that
publish (``simulate``, the demo's probe). So a setting such as ``MQTT_PROTOCOL`` or
``MQTT_CA_FILE`` means the same thing everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Literal, TypedDict

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.settings import Settings
from collector.sources.mqtt.client import BulkAckClient


class ClientOptions(TypedDict):
    """The ``aiomqtt.Client`` arguments that depend on the settings."""

    hostname: str
    port: int
    username: str | None
    password: str | None
    identifier: str
    protocol: aiomqtt.ProtocolVersion
    clean_session: bool | None
    clean_start: bool | Literal[3]  # paho.MQTT_CLEAN_START_FIRST_ONLY
    tls_context: ssl.SSLContext | None
    timeout: float


def client_options(
    settings: Settings, identifier: str, *, keep_session: bool, timeout: float = 10
) -> ClientOptions:
    """aiomqtt.Client arguments for the configured broker, account, protocol and TLS.

    ``keep_session``: the collector's persistent session (MQTT 5 never starts clean, its
    expiry keeps the session; 3.1.1 uses clean_session=False). Otherwise a clean session
    that the broker discards at disconnect, and that replaces one kept under the same id.
    """
    endpoint = settings.mqtt
    v5 = settings.mqtt_protocol == "5"
    clean_session: bool | None
    clean_start: bool | Literal[3]
    if v5:
        clean_session, clean_start = None, not keep_session
    else:
        clean_session, clean_start = not keep_session, paho.MQTT_CLEAN_START_FIRST_ONLY
    return {
        "hostname": endpoint.host,
        "port": endpoint.port,
        "username": endpoint.username,
        "password": endpoint.password,
        "identifier": identifier,
        "protocol": aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        "clean_session": clean_session,
        "clean_start": clean_start,
        "tls_context": tls_context(settings),
        "timeout": timeout,
    }


def build_client(
    settings: Settings, client_cls: type[aiomqtt.Client] = BulkAckClient
) -> aiomqtt.Client:
    """The broker connection as the collector makes it: persistent session, QoS 1 window.

    ``client_cls`` lets the benchmark build a stock aiomqtt client with the same settings.
    """
    s = settings
    properties = None
    if s.mqtt_protocol == "5":
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = s.mqtt_session_expiry_s
        properties.ReceiveMaximum = s.mqtt_receive_maximum
    options = client_options(s, s.mqtt_client_id, keep_session=True)
    if issubclass(client_cls, BulkAckClient):
        return client_cls(
            **options,
            properties=properties,
            keepalive=s.mqtt_keepalive_s,
            max_held=s.mqtt_receive_maximum,
        )
    return client_cls(**options, properties=properties, keepalive=s.mqtt_keepalive_s)


async def forget_session(settings: Settings) -> None:
    """Delete this client id's session (and anything still queued in it) from the broker."""
    # A clean start discards the old session; with no expiry, none is kept after.
    async with aiomqtt.Client(
        **client_options(settings, settings.mqtt_client_id, keep_session=False)
    ):
        pass


async def clear_retained(settings: Settings, topic_filter: str, listen_s: float = 1.0) -> int:
    """Remove the retained messages under ``topic_filter`` (what a broker gives a new
    subscriber within ``listen_s``): an empty retained message each. How many."""
    topics: set[str] = set()
    options = client_options(settings, f"{settings.mqtt_client_id}-cleanup", keep_session=False)
    async with aiomqtt.Client(**options) as client:
        await client.subscribe(topic_filter, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(listen_s):
                async for message in client.messages:
                    if message.retain and message.payload:
                        topics.add(str(message.topic))
        for topic in sorted(topics):
            await client.publish(topic, b"", qos=1, retain=True)
    return len(topics)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for ``mqtts://`` (None for a plain connection)."""
    if not settings.mqtt.tls:
        return None
    context = ssl.create_default_context(cafile=settings.mqtt_ca_file)
    if settings.mqtt_cert_file:
        context.load_cert_chain(settings.mqtt_cert_file, settings.mqtt_key_file)
    return context
