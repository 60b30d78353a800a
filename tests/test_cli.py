"""The command line as an operator meets it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import uuid

import asyncpg
import pytest

from tests.helpers import ADMIN_URL, MQTT_URL, database_url_for

pytestmark = pytest.mark.services


def run(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        cwd=cwd,
    )


def test_invalid_setting_fails_fast_with_one_line(tmp_path):
    result = run("run", env={"MQTT_URL": "http://nowhere"}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("energy-collector: invalid setting MQTT_URL=")


def test_env_file_is_read_from_the_working_directory(tmp_path):
    (tmp_path / ".env").write_text("BATCH_SIZE=-5\n")
    result = run("run", cwd=tmp_path)
    assert result.returncode == 2
    assert "BATCH_SIZE" in result.stderr


async def test_migrate_creates_the_database_and_is_idempotent(tmp_path):
    name = f"energy_cli_{uuid.uuid4().hex[:8]}"
    env = {"DATABASE_URL": database_url_for(ADMIN_URL, name)}
    try:
        first = run("migrate", env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert "migration(s) applied now" in first.stdout
        again = run("migrate", env=env, cwd=tmp_path)
        assert again.returncode == 0
        assert "(0 migration(s) applied now)" in again.stdout
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_migrate_reports_an_unreachable_database(tmp_path):
    result = run(
        "migrate", env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr


def test_help_lists_the_commands():
    out = run("--help").stdout
    for command in ("run", "api", "migrate"):
        assert command in out


def with_password(url: str, user_password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user_password}@{rest.split('@', 1)[-1]}"


def test_check_prints_the_settings_with_secrets_masked(tmp_path, database_url):
    # Trust authentication here: the passwords are accepted and ignored by both services.
    env = {
        "DATABASE_URL": with_password(database_url, "postgres:pg-secret-41"),
        "MQTT_URL": with_password(MQTT_URL, "collector:mqtt-secret-42"),
        "READ_TOKENS": "read-secret-43-0123456789",
        "PORT": "0",
    }
    result = run("check", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for secret in ("pg-secret-41", "mqtt-secret-42", "read-secret-43"):
        assert secret not in result.stdout + result.stderr
    assert "READ_TOKENS=(1 tokens)" in result.stdout
    assert "MQTT_URL=mqtt://collector:***@127.0.0.1:" in result.stdout
    assert "BATCH_SIZE=5000" in result.stdout
    assert "database: ok: PostgreSQL " in result.stdout
    assert "schema up to date" in result.stdout
    assert "broker: ok: " in result.stdout
    assert "http: ok: " in result.stdout


def test_check_warns_of_alert_targets_it_cannot_reach(tmp_path, database_url):
    """Issue 26: unreachable webhook URLs passed `check` silently. A refused webhook and a
    reachable one: a warning naming the refused one's host and port, exit code 0 (the
    collector would queue and retry)."""
    with socket.socket() as closed, socket.socket() as listening:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        refused, open_port = closed.getsockname()[1], listening.getsockname()[1]
        env = {
            "DATABASE_URL": database_url,
            "PORT": "0",
            "ALERT_WEBHOOK_URLS": f"http://127.0.0.1:{refused}/hook,http://127.0.0.1:{open_port}/",
        }
        result = run("check", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("alert targets:"))
    assert line.startswith("alert targets: WARNING: unreachable"), line
    assert f"127.0.0.1:{refused}: " in line and str(open_port) not in line


def test_check_fails_with_the_reason(tmp_path, database_url):
    broker_down = run(
        "check",
        env={"DATABASE_URL": database_url, "MQTT_URL": "mqtt://127.0.0.1:1", "PORT": "0"},
        cwd=tmp_path,
    )
    assert broker_down.returncode == 1
    assert "broker: FAILED: cannot connect to 127.0.0.1:1" in broker_down.stdout
    assert "database: ok" in broker_down.stdout
    assert "check failed: broker" in broker_down.stderr

    db_down = run(
        "check",
        env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x", "PORT": "0"},
        cwd=tmp_path,
    )
    assert db_down.returncode == 1
    assert "database: FAILED: cannot connect" in db_down.stdout
    assert "check failed: database" in db_down.stderr


def test_check_names_a_missing_database_and_the_fix(tmp_path):
    missing = database_url_for(ADMIN_URL, f"energy_missing_{uuid.uuid4().hex[:8]}")
    env = {"DATABASE_URL": missing, "PORT": "0"}
    created_at_start = run("check", env=env, cwd=tmp_path)
    assert created_at_start.returncode == 0
    assert "does not exist yet and is created at start" in created_at_start.stdout
    result = run("check", env={**env, "MIGRATE_ON_START": "false"}, cwd=tmp_path)
    assert result.returncode == 1
    assert "does not exist; run `energy-collector migrate`" in result.stdout


def test_check_finds_the_http_port_taken(tmp_path, database_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("check", env={"DATABASE_URL": database_url, "PORT": str(port)}, cwd=tmp_path)
    assert result.returncode == 1
    assert "http: FAILED: " in result.stdout and str(port) in result.stdout


async def test_health_asks_a_running_instance(tmp_path, api):
    port = api.service.http_port
    ready = await asyncio.to_thread(run, "health", env={"PORT": str(port)}, cwd=tmp_path)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert json.loads(ready.stdout)["status"] == "ok"

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    down = await asyncio.to_thread(
        run, "health", "--url", f"http://127.0.0.1:{closed}/health", "--timeout", "2", cwd=tmp_path
    )
    assert down.returncode == 1
    assert json.loads(down.stdout)["status"] == "unreachable"
