"""The command line as an operator meets it."""

from __future__ import annotations

import subprocess
import sys
import uuid

import asyncpg

from tests.helpers import ADMIN_URL, database_url_for


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
