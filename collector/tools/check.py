"""`energy-collector check` and `energy-collector health`: what an operator runs to see
whether the configuration works, and what the container's healthcheck runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt

from collector.alerts.rules import AlertRule, load_rules
from collector.db.prepare import (
    DatabaseNotReady,
    DatabaseUnreachable,
    inspect_database,
    migration_names,
)
from collector.errors import CollectorError
from collector.http_server import StartupError, listen
from collector.settings import Settings, mask_url
from collector.settlement.sites import load_sites
from collector.sources.mappings.load import load_mappings
from collector.sources.mqtt.broker import client_options
from collector.sources.mqtt.topics import NativeTopics
from collector.sources.ocpp.listener import OcppConfig


class CheckFailed(CollectorError):
    """At least one check failed; each printed its own line with the reason."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    #: Worth a look, not a failure (the collector runs, and queues what it cannot send).
    warning: bool = False

    @property
    def verdict(self) -> str:
        return "FAILED" if not self.ok else "WARNING" if self.warning else "ok"


async def check_database(settings: Settings) -> Check:
    try:
        state = await inspect_database(settings)
    except (DatabaseUnreachable, DatabaseNotReady) as exc:
        return Check("database", False, str(exc))
    if not state.exists:
        if settings.migrate_on_start:
            return Check(
                "database",
                True,
                f"reachable; database {settings.database_name!r} "
                "does not exist yet and is created at start",
            )
        return Check(
            "database",
            False,
            f"database {settings.database_name!r} does not exist; run `energy-collector migrate`",
        )
    where = f"PostgreSQL {state.server_version}, database {settings.database_name!r}"
    if not state.pending:
        return Check("database", True, f"{where}; schema up to date")
    names = migration_names(state.pending)
    if settings.migrate_on_start:
        return Check("database", True, f"{where}; pending migrations applied at start: {names}")
    return Check(
        "database",
        False,
        f"{where}; pending migrations ({names}) and "
        "MIGRATE_ON_START=false: run `energy-collector migrate`",
    )


async def check_broker(settings: Settings, listen_s: float = 2.0) -> Check:
    """Connect and subscribe as the collector's account, without its session, and count the
    readings that arrive for ``listen_s`` seconds.

    A client id of its own and a clean session: the running collector's session is not
    touched. It subscribes to the reading topics without the shared group, so it only gets
    copies, never a reading meant for a collector. Mosquitto grants a subscription that its
    ACL forbids and then delivers nothing on it, so readings arriving is the only proof
    that this account may read them.
    """
    s, endpoint = settings, settings.mqtt
    identifier = f"{s.mqtt_client_id}-check-{uuid.uuid4().hex[:6]}"
    client = aiomqtt.Client(**client_options(s, identifier, keep_session=False, timeout=5))
    topics = NativeTopics(s.mqtt_topic_prefix).filters()  # without the shared group
    where = f"{endpoint.host}:{endpoint.port}{' (TLS)' if endpoint.tls else ''}"
    seen = 0
    try:
        async with client:
            codes = await client.subscribe([(t, 1) for t in topics])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(listen_s):
                    async for _message in client.messages:
                        seen += 1
    except aiomqtt.MqttError as exc:
        return Check("broker", False, f"cannot connect to {where}: {exc}")
    refused = [
        t
        for t, code in zip(topics, codes, strict=True)
        if getattr(code, "is_failure", code == 0x80)
    ]
    if refused:
        return Check(
            "broker",
            False,
            f"connected to {where}, but this account may not "
            f"subscribe to {', '.join(refused)} (see mosquitto/acl)",
        )
    detail = (
        f"{where}, MQTT {s.mqtt_protocol}, subscribed to {' and '.join(topics)}; "
        f"{seen} readings arrived in {listen_s:g} s"
    )
    if not seen:
        detail += (
            " (the devices are quiet, or the broker's ACL does not let this account "
            "read them: see mosquitto/acl)"
        )
    return Check("broker", True, detail)


def check_http(settings: Settings) -> Check:
    if not settings.http_enabled:
        return Check("http", True, "disabled (HTTP_ENABLED=false)")
    try:
        listen(settings.host, settings.port).close()
    except StartupError as exc:
        return Check("http", False, str(exc))
    return Check("http", True, f"{settings.host}:{settings.port} is free to listen on")


def check_ocpp(settings: Settings) -> Check | None:
    """The OCPP listener: its settings go together (a bad combination stops here with one
    line), and its address is free."""
    config = OcppConfig.from_settings(settings)
    if config is None:
        return None
    try:
        listen(config.host, config.port).close()
    except StartupError as exc:
        return Check("ocpp", False, str(exc))
    scheme = "wss" if config.tls else "ws"
    where = f"{scheme}://{config.host}:{config.port}/ocpp/{{chargerId}}"
    if config.mode == "relay":
        return Check("ocpp", True, f"relay mode on {where} to {config.upstream_url}")
    unknown = "admitted" if config.accept_unknown else "refused"
    return Check("ocpp", True, f"csms mode on {where}; unregistered chargers {unknown}")


async def run_checks(settings: Settings, listen_s: float = 2.0) -> list[Check]:
    checks = [
        await check_database(settings),
        await check_broker(settings, listen_s),
        check_http(settings),
    ]
    ocpp = check_ocpp(settings)
    return checks if ocpp is None else [*checks, ocpp]


def check_alerts(settings: Settings, rules: tuple[AlertRule, ...]) -> Check:
    if not settings.alerts_enabled:
        return Check("alerts", True, "disabled (ALERTS_ENABLED=false)")
    source = settings.alert_rules_file or "built-in"
    targets = [f"{len(settings.alert_webhook_url_list)} webhook(s)"]
    if settings.alert_mqtt:
        targets.append("MQTT alert topics")
    if settings.alertmanager_url:
        targets.append(f"Alertmanager {mask_url(settings.alertmanager_url)}")
    if settings.alert_webhook_url_list and not settings.alert_webhook_secret.get_secret_value():
        targets[0] += " (unsigned: ALERT_WEBHOOK_SECRET is not set)"
    names = ", ".join(r.name for r in rules)
    return Check("alerts", True, f"{len(rules)} rules ({source}): {names}; to {', '.join(targets)}")


async def check_alert_targets(settings: Settings, timeout_s: float = 3.0) -> Check | None:
    """Can a connection be opened to each webhook and to Alertmanager? Only a TCP
    connection: nothing is sent, so no receiver pages anyone. Unreachable is a warning:
    the collector keeps the notifications and retries (a receiver may start later)."""
    if not settings.alerts_enabled:
        return None
    urls = [*settings.alert_webhook_url_list]
    if settings.alertmanager_url:
        urls.append(settings.alertmanager_url)
    if not urls:
        return None
    unreachable = []
    for url in urls:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
        except (OSError, TimeoutError) as exc:
            why = (
                f"no answer within {timeout_s:g} s"
                if isinstance(exc, TimeoutError)
                else (exc.strerror or str(exc))
            )
            unreachable.append(f"{mask_url(url)} ({host}:{port}: {why})")
    if unreachable:
        return Check(
            "alert targets",
            True,
            "unreachable, notifications will wait and be retried: " + "; ".join(unreachable),
            warning=True,
        )
    return Check("alert targets", True, f"{len(urls)} reachable")


def run(settings: Settings, *, listen_s: float) -> int:
    """``energy-collector check``: print the settings (secrets masked) and every check's
    result; raise :class:`CheckFailed` naming the ones that failed. A bad rules file
    stops it first, with one line (``RulesError``)."""
    rules = load_rules(settings) if settings.alerts_enabled else ()
    mappings = load_mappings(settings)  # a bad SOURCES_FILE stops here too, with one line
    sites = load_sites(settings)  # and a bad SITES_FILE
    print("settings (secrets masked):")
    for name, value in settings.masked().items():
        print(f"  {name}={value}")
    checks = [*asyncio.run(run_checks(settings, listen_s)), check_alerts(settings, rules)]
    targets = asyncio.run(check_alert_targets(settings))
    if targets is not None:
        checks.append(targets)
    if mappings is not None:
        names = ", ".join(f"{m.name} ({m.pattern.filter()})" for m in mappings.sources)
        checks.append(Check("sources", True, f"{len(mappings.sources)} mapped: {names}"))
    if sites.sites:
        names = ", ".join(f"{s.id} ({s.tz})" for s in sites.sites)
        checks.append(Check("sites", True, f"{len(sites.sites)}: {names}"))
    for check in checks:
        print(f"{check.name}: {check.verdict}: {check.detail}", flush=True)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        raise CheckFailed(f"check failed: {', '.join(failed)}")
    return 0


def probe_health(url: str, timeout_s: float) -> tuple[bool, str]:
    """GET /health of a running instance: (ready, what it answered)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            return True, response.read().decode()
    except urllib.error.HTTPError as exc:  # 503: answered, not ready
        return False, exc.read().decode()
    except OSError as exc:
        return False, json.dumps({"status": "unreachable", "url": url, "error": str(exc)})


def health_url(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "", "::"):  # noqa: S104 - listening everywhere: ask locally
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/health"
