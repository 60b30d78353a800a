"""The deployment files, checked here where Docker and systemd do not run.

* docker-compose.yml: `docker-compose config` validates it (schema, interpolation) without
  an engine; its services, healthchecks, start order and volumes are checked against the
  files they name; its commands parse as our CLI's.
* Dockerfile: what the build stage does (pip install of the files .dockerignore lets in)
  is done here into a fresh virtualenv, and the image's commands (run, the healthcheck,
  migrate) are run from it with the image's environment.
* deploy/compose-setup.sh: run on a copy; the broker starts with what it made, the
  collector and the simulator log in with the accounts it made and readings flow.
* deploy/systemd/energy-collector.service: `systemd-analyze verify`; the env example holds
  only real settings.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import aiomqtt
import asyncpg
import pytest
import yaml

from collector.cli import build_parser
from collector.settings import Settings, load_settings
from tests.helpers import ADMIN_URL, database_url_for, eventually
from tests.services import REPO, CollectorProcess, free_port, wait_for_port

pytestmark = pytest.mark.services

SETTINGS = {name.upper() for name in Settings.model_fields}
COMPOSE_ENV = {
    "POSTGRES_PASSWORD": "pg-pass-0123456789",
    "COLLECTOR_MQTT_PASSWORD": "collector-pass-0123",
    "GATEWAY_MQTT_PASSWORD": "gateway-pass-0123",
    "INGEST_TOKENS": "ingest-token-0123456789",
    "GRAFANA_ADMIN_PASSWORD": "grafana-pass-0123",
}


def compose_config(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing: `make test` installs it (Debian docker-compose)"
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        [compose, "--env-file", str(empty), "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": os.environ["PATH"], **env},
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    result = compose_config(COMPOSE_ENV, tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def parses(argv: list[str]) -> None:
    """``argv`` is a valid `energy-collector` command line (argparse exits otherwise)."""
    build_parser().parse_args(argv)


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with line continuations joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()  # noqa: PLW2901
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec form: {args}"
    return value


def test_compose_refuses_to_start_without_the_setup(tmp_path):
    result = compose_config({}, tmp_path)
    assert result.returncode != 0
    assert "run deploy/compose-setup.sh first" in result.stderr


def test_compose_services_start_in_order_with_healthchecks(compose):
    services = compose["services"]
    assert set(services) == {
        "postgres", "mosquitto", "collector", "simulator", "prometheus", "grafana"
    }  # fmt: skip
    assert services["postgres"]["image"].startswith("postgres:16")
    for name in ("postgres", "mosquitto"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    collector = services["collector"]
    assert collector["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "mosquitto": {"condition": "service_healthy"},
    }
    # The collector's own healthcheck is the image's (Dockerfile HEALTHCHECK).
    assert services["simulator"]["depends_on"] == {"collector": {"condition": "service_healthy"}}
    assert services["simulator"]["profiles"] == ["simulator"]
    assert "8000" in json.dumps(collector["ports"])


def test_compose_volumes_keep_the_data_where_the_services_write_it(compose):
    declared = set(compose["volumes"])
    assert declared == {"postgres-data", "mosquitto-data", "prometheus-data", "grafana-data"}
    pg_volumes = compose["services"]["postgres"]["volumes"]
    assert any(v.startswith("postgres-data:/var/lib/postgresql/data") for v in pg_volumes)

    mosquitto = compose["services"]["mosquitto"]
    config_mount = next(v for v in mosquitto["volumes"] if v.endswith(":/mosquitto/config:ro"))
    assert Path(config_mount.split(":")[0]) == REPO / "mosquitto"
    # mosquitto.conf names its files relative to its directory, the working directory here.
    assert mosquitto["working_dir"] == "/mosquitto/config"
    assert mosquitto["command"][-1] == "/mosquitto/config/mosquitto.conf"
    conf = (REPO / "mosquitto" / "mosquitto.conf").read_text()
    location = re.search(r"^persistence_location (\S+)$", conf, re.M)[1]
    assert f"mosquitto-data:/mosquitto/config/{location.rstrip('/')}:rw" in mosquitto["volumes"]
    listeners = (REPO / "mosquitto" / "listeners.d" / "listeners.conf").read_text()
    for name in re.findall(r"^(?:password_file|acl_file) (\S+)$", conf + listeners, re.M):
        # next to mosquitto.conf in the mounted directory
        assert name in ("passwd", "passwd-collector", "acl")
    assert mosquitto["healthcheck"]["test"][-1] in re.findall(r"^listener (\d+)", listeners, re.M)


def test_compose_provisions_prometheus_and_grafana_from_deploy(compose):
    """Prometheus reads deploy/prometheus (its scrape of the collector, alerts.yml);
    Grafana gets its data source and the collector's dashboard from deploy/grafana."""
    services = compose["services"]
    mounts = {
        name: {v.split(":")[1]: Path(v.split(":")[0]) for v in services[name]["volumes"]}
        for name in ("prometheus", "grafana")
    }
    assert mounts["prometheus"]["/etc/prometheus"] == REPO / "deploy" / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["collector:8000"]
    assert mounts["grafana"]["/etc/grafana/provisioning"] == REPO / "deploy/grafana/provisioning"
    assert mounts["grafana"]["/var/lib/grafana/dashboards"] == REPO / "deploy/grafana/dashboards"
    provider = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/energy-collector.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/energy-collector.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}


def test_compose_commands_and_settings_are_the_collectors(compose):
    services = compose["services"]
    for name in ("collector", "simulator"):
        env = services[name]["environment"]
        assert set(env) <= SETTINGS, set(env) - SETTINGS
        load_settings(env, env_file=None)  # valid values
    assert services["collector"]["environment"]["MQTT_URL"].startswith("mqtt://collector:")
    assert services["simulator"]["environment"]["MQTT_URL"].startswith("mqtt://gateway:")
    assert "command" not in services["collector"]  # the image's CMD: run
    parses(services["simulator"]["command"])
    assert services["simulator"]["image"] == services["collector"]["image"]


def test_dockerfile_runs_our_commands_as_a_non_root_user():
    instructions = dockerfile()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) == 2 and all(s.startswith("python:3.11-slim") for s in stages)
    entrypoint = exec_form(next(a for op, a in instructions if op == "ENTRYPOINT"))
    cmd = exec_form(next(a for op, a in instructions if op == "CMD"))
    assert entrypoint == ["energy-collector"]
    parses(cmd)
    healthcheck = next(a for op, a in instructions if op == "HEALTHCHECK")
    check = exec_form(healthcheck.split(" CMD ", 1)[1])
    assert check[0] == "energy-collector"
    parses(check[1:])
    user = next(a for op, a in instructions if op == "USER")
    assert user.split(":")[0] not in ("0", "root")


def dockerignore_admits(path: str) -> bool:
    """Whether .dockerignore lets ``path`` into the build context (the last match wins)."""
    admitted = True
    name, first = path.rsplit("/", 1)[-1], path.split("/", maxsplit=1)[0]
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            matched = fnmatch.fnmatch(name, pattern[3:])
        else:
            matched = fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(first, pattern)
        if matched:
            admitted = negate
    return admitted


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """What the Dockerfile's build stage makes: `pip install .` of the build context."""
    context = tmp_path_factory.mktemp("context")
    instructions = dockerfile()
    copies = [a.split() for op, a in instructions if op == "COPY" and "--from" not in a]
    for *sources, _dest in copies:
        for source in sources:
            assert dockerignore_admits(source), f".dockerignore keeps {source} out"
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, context / source)
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(context)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr
    return venv


def image_env(venv: Path, **extra: str) -> dict[str, str]:
    env = {}
    for op, args in dockerfile():
        if op == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(args))
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"  # the image's venv first, as its PATH says
    return {**env, **extra}


async def test_the_image_migrates_runs_and_answers_its_healthcheck(image_venv, tmp_path):
    name = f"energy_image_{os.getpid()}"
    dsn = database_url_for(ADMIN_URL, name)
    port = free_port()
    env = image_env(image_venv, DATABASE_URL=dsn, PORT=str(port), MQTT_CLIENT_ID=name)
    assert env["HOST"] == "0.0.0.0" and env["LOG_FORMAT"] == "json"
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    binary = str(image_venv / "bin" / "energy-collector")

    def command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [binary, *args], capture_output=True, text=True, cwd=workdir, env=env, timeout=timeout
        )

    try:
        migrate = await asyncio.to_thread(command, "migrate")
        assert migrate.returncode == 0, migrate.stderr
        # every SQL file of the repository is in the package
        shipped = len(list((REPO / "sql").glob("[0-9][0-9][0-9]_*.sql")))
        assert f"{shipped} migration(s) applied now" in migrate.stdout
        down = await asyncio.to_thread(command, "health", "--timeout", "2")
        assert down.returncode == 1
        daemon = subprocess.Popen(
            [binary, "run"],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while (health := await asyncio.to_thread(command, "health")).returncode != 0:
                assert time.monotonic() < deadline, health.stdout
                await asyncio.sleep(0.3)
            assert json.loads(health.stdout)["status"] == "ok"
            docs = await asyncio.to_thread(
                command,
                "health",
                "--url",
                f"http://127.0.0.1:{port}/static/swagger-ui/swagger-ui.css",
            )
            assert docs.returncode == 0, "Swagger UI's files are in the package"
            for path in ("/dashboard", "/static/uplot/uPlot.iife.min.js"):
                page = await asyncio.to_thread(
                    command, "health", "--url", f"http://127.0.0.1:{port}{path}"
                )
                assert page.returncode == 0, f"{path}: the templates and scripts are packaged"
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(daemon.wait, 30) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def compose_setup(tmp_path) -> Path:
    """A copy of mosquitto/ and deploy/ where compose-setup.sh has run (twice: idempotent)."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "deploy", root / "deploy")
    tracked = subprocess.run(
        ["git", "ls-files", "mosquitto"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    for _ in range(2):
        result = subprocess.run(
            ["sh", "deploy/compose-setup.sh"], cwd=root, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    return root


def test_compose_setup_writes_secrets_accounts_and_a_certificate(compose_setup):
    env = dict(line.split("=", 1) for line in (compose_setup / ".env").read_text().splitlines())
    assert set(env) == {"COMPOSE_PROJECT_NAME", *COMPOSE_ENV}
    assert all(len(v) >= 16 for k, v in env.items() if k != "COMPOSE_PROJECT_NAME")
    assert (compose_setup / ".env").stat().st_mode & 0o077 == 0
    accounts = {}
    for name in ("passwd", "passwd-collector"):
        passwd = (compose_setup / "mosquitto" / name).read_text()
        accounts[name] = [line.split(":")[0] for line in passwd.split()]
    assert accounts == {"passwd": ["gateway"], "passwd-collector": ["collector"]}  # once
    assert (compose_setup / "mosquitto/certs/server.crt").exists()
    assert (compose_setup / "mosquitto/data").is_dir()


async def test_the_compose_accounts_carry_readings_end_to_end(
    compose_setup, database_url, db, tmp_path
):
    """The broker as compose runs it (mosquitto.conf with what the setup made), the
    collector with the compose file's settings, the simulator with its command."""
    env = dict(line.split("=", 1) for line in (compose_setup / ".env").read_text().splitlines())
    conf_dir = compose_setup / "mosquitto"
    port, tls_port, collector_port = free_port(), free_port(), free_port()
    listeners = conf_dir / "listeners.d" / "listeners.conf"
    text = listeners.read_text().replace("listener 1883\n", f"listener {port}\n")
    text = text.replace("listener 1884\n", f"listener {collector_port}\n")
    listeners.write_text(text.replace("listener 8883\n", f"listener {tls_port}\n"))
    (conf_dir / "listeners.d" / "test-user.conf").write_text("user root\n")  # test only
    broker = subprocess.Popen(
        ["mosquitto", "-c", "mosquitto.conf"],
        cwd=conf_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_for_port, port)
        services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]

        def local(url: str) -> str:  # compose's host names and ${...} resolved here
            url = url.replace(
                "${COLLECTOR_MQTT_PASSWORD:?run deploy/compose-setup.sh first}",
                quote(env["COLLECTOR_MQTT_PASSWORD"]),
            )
            url = url.replace(
                "${GATEWAY_MQTT_PASSWORD:?run deploy/compose-setup.sh first}",
                quote(env["GATEWAY_MQTT_PASSWORD"]),
            )
            url = url.replace("@mosquitto:1884", f"@127.0.0.1:{collector_port}")
            return url.replace("@mosquitto:1883", f"@127.0.0.1:{port}")

        prefix = ""  # the ACL allows the real topics only
        collector_env = {
            "DATABASE_URL": database_url,
            "MQTT_URL": local(services["collector"]["environment"]["MQTT_URL"]),
            "MQTT_CLIENT_ID": services["collector"]["environment"]["MQTT_CLIENT_ID"],
            "MQTT_TOPIC_PREFIX": prefix,
            "HTTP_ENABLED": "false",
            "PATH": os.environ["PATH"],
        }
        collector = CollectorProcess(collector_env, tmp_path / "collector.log").start()
        try:
            await asyncio.to_thread(collector.wait_for_log, '"mqtt.connected"')
            args = [a for a in services["simulator"]["command"] if not a.startswith("--api-")]
            args += ["--count=300", "--speed=1000000", "--no-progress"]
            simulate = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "collector", *args],
                env={
                    "MQTT_URL": local(services["simulator"]["environment"]["MQTT_URL"]),
                    "PATH": os.environ["PATH"],
                },
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert simulate.returncode == 0, simulate.stdout + simulate.stderr
            assert "300 acknowledged, 0 errors" in simulate.stdout

            async def stored() -> int:
                return await db.fetchval(
                    "SELECT (SELECT count(*) FROM meter_readings) "
                    "+ (SELECT count(*) FROM vehicle_readings)"
                )

            await eventually(stored, lambda n: n == 300, timeout=30)
            # The collector's account may publish its alert topics (retained) and read them,
            # on its listener.
            account = {"username": "collector", "password": env["COLLECTOR_MQTT_PASSWORD"]}
            async with aiomqtt.Client(
                "127.0.0.1", collector_port, identifier="acl-pub", **account
            ) as c:
                await c.publish(
                    "alerts/battery_hot/v-acl", b'{"state":"firing"}', qos=1, retain=True
                )
            async with aiomqtt.Client(
                "127.0.0.1", collector_port, identifier="acl-sub", **account
            ) as c:
                await c.subscribe("alerts/#", qos=1)
                async with asyncio.timeout(5):
                    message = await anext(c.messages)
                assert (str(message.topic), message.payload) == (
                    "alerts/battery_hot/v-acl",
                    b'{"state":"firing"}',
                )
                await c.publish("alerts/battery_hot/v-acl", b"", qos=1, retain=True)
        finally:
            assert await asyncio.to_thread(collector.terminate) == 0
    finally:
        broker.kill()
        broker.wait()


def test_the_systemd_unit_verifies(tmp_path):
    unit = (REPO / "deploy" / "systemd" / "energy-collector.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "Restart=always" in unit
    binary = Path(sys.executable).parent / "energy-collector"
    assert binary.exists()
    local = unit.replace("/opt/energy-collector/bin/energy-collector", str(binary))
    local = re.sub(r"^(User|Group)=.*$", r"\1=root", local, flags=re.M)
    path = tmp_path / "energy-collector.service"
    path.write_text(local)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warnings
    command = re.search(r"^ExecStart=\S+ (.*)$", unit, re.M)[1].split()
    parses(command)


def test_the_environment_file_example_holds_real_settings():
    lines = (REPO / "deploy" / "collector.env.example").read_text().splitlines()
    values = {}
    for line in lines:
        match = re.match(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            assert match[1] in SETTINGS, f"{match[1]} is not a setting"
            if not line.startswith("#"):
                values[match[1]] = match[2]
    assert {"DATABASE_URL", "MQTT_URL", "MQTT_CLIENT_ID"} <= set(values)
    load_settings(values, env_file=None)
