"""Fixtures: a fresh database per test run on the local PostgreSQL, unique MQTT topics and
client ids per test on the local Mosquitto, and an in-process collector.

Override the services with TEST_DATABASE_ADMIN_URL and TEST_MQTT_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.db.migrations import migrate
from collector.logs import configure_logging
from collector.process import build_daemon
from collector.service import CollectorService
from collector.settings import Settings, load_settings
from tests.helpers import ADMIN_URL, MQTT_URL, database_url_for

DATA_TABLES = (
    "meter_readings",
    "vehicle_readings",
    "meter_current",
    "vehicle_current",
    "rejected_messages",
    "vehicle_meter_links",
    "meter_hourly",
    "vehicle_hourly",
    "register_devices",
    "register_replacements",
    "dashboard_sessions",
    "alert_notifications",
    "alert_silences",
    "alerts",
    "chargers",
    "charger_connectors",
    "charger_id_tags",
    "charging_sessions",
    "charger_signed_values",
    "charger_data_transfers",
)


#: Fixtures that reach the shared PostgreSQL or Mosquitto (the others build on these).
SERVICE_FIXTURES = {"database_url", "start_collector"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a service fixture is a ``services`` test even if its module forgot
    the mark, so ``-m "not services"`` never tries to reach a database or a broker."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVICE_FIXTURES and item.get_closest_marker("services") is None:
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    """Log as the daemon does (readable lines; pytest shows them for failed tests)."""
    configure_logging("info", "console")


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A database created for this test run, migrated, dropped at the end."""
    name = f"energy_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = database_url_for(ADMIN_URL, name)
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, with every data table emptied first."""
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"TRUNCATE {', '.join(DATA_TABLES)}")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests never see each other's messages."""
    return f"test-{uuid.uuid4().hex[:10]}"


def forget_session(url: str, client_id: str) -> None:
    """Remove a persistent session (and its queue) from the broker."""
    endpoint = urlsplit(url)
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=True
    )
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password)
    with contextlib.suppress(OSError):
        client.connect(endpoint.hostname or "127.0.0.1", endpoint.port or 1883)
        client.loop(timeout=1)
        client.disconnect()


@pytest.fixture
def make_settings(database_url: str, prefix: str) -> Callable[..., Settings]:
    """Settings for a collector of this test: its database, topics and client id."""

    def make(**overrides: Any) -> Settings:
        env = {
            "DATABASE_URL": database_url,
            "MQTT_URL": MQTT_URL,
            "MQTT_TOPIC_PREFIX": prefix,
            "MQTT_CLIENT_ID": f"collector-{prefix}",
            "MQTT_SESSION_EXPIRY_S": "300",
            "FLUSH_INTERVAL_MS": "20",
            "PORT": "0",
            "LOG_FORMAT": "console",
        }
        env.update({k.upper(): str(v) for k, v in overrides.items()})
        return load_settings(env, env_file=None)

    return make


@pytest.fixture
async def start_collector(
    make_settings: Callable[..., Settings],
    db: asyncpg.Connection,
) -> AsyncIterator[Callable[..., Awaitable[CollectorService]]]:
    """Start in-process collectors; each is stopped (and its MQTT session removed) at the end.

    It asks for ``db`` so that the tables are emptied before any collector runs: a test
    asking for a collector fixture before ``db`` would otherwise truncate under a running
    collector's queries (a deadlock with the alert engine's fleet statement, seen in CI)."""
    running: list[tuple[CollectorService, asyncio.Task[int]]] = []

    async def start(**overrides: Any) -> CollectorService:
        service = build_daemon(make_settings(**overrides), handle_signals=False)
        task = asyncio.create_task(service.run())
        running.append((service, task))
        waiter = asyncio.create_task(service.started.wait())
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            raise RuntimeError(f"collector exited early with {task.result()}")
        if waiter not in done:
            raise TimeoutError("collector did not start within 20 s")
        for _ in range(400):
            if service.sources["mqtt"].health().connected:
                return service
            await asyncio.sleep(0.05)
        raise TimeoutError("collector did not connect to the broker")

    yield start
    for service, task in running:
        service.request_stop("test finished")
        assert await asyncio.wait_for(task, 30) == 0
        await asyncio.to_thread(
            forget_session,
            service.settings.mqtt_url.get_secret_value(),
            service.settings.mqtt_client_id,
        )


@pytest.fixture
async def api(start_collector) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for a running collector (its API on an ephemeral port)."""
    service = await start_collector()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{service.http_port}", timeout=30
    ) as client:
        client.service = service  # type: ignore[attr-defined]
        yield client
