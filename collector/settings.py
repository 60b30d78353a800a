"""Configuration: one frozen model read from the environment (and an optional ``.env``).

Every setting is an environment variable of the same name in upper case. A bad value fails at
start with one line naming the variable, so a typo in a unit file is found at deploy time and
not at the first reading.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from collector.errors import UsageError

PositiveFloat = Annotated[float, Field(gt=0)]


class SettingsError(UsageError):
    """A setting is missing or invalid; the message is one line meant for the operator."""


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where the broker is, parsed from ``MQTT_URL``."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


class Settings(BaseModel):
    """All settings of the collector and its HTTP API, with their defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- storage
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/energy")
    migrate_on_start: bool = True

    # --- broker
    mqtt_url: SecretStr = SecretStr("mqtt://127.0.0.1:1883")
    mqtt_client_id: Annotated[str, Field(min_length=1, max_length=128)] = "energy-collector"
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    mqtt_session_expiry_s: Annotated[int, Field(ge=0, le=4294967295)] = 7 * 24 * 3600
    mqtt_receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 10000
    mqtt_keepalive_s: Annotated[int, Field(ge=5, le=65535)] = 30
    mqtt_topic_prefix: str = ""
    mqtt_shared_group: str = ""
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None
    mqtt_reconnect_max_s: PositiveFloat = 30.0

    # --- validation
    max_payload_bytes: Annotated[int, Field(ge=64, le=1_048_576)] = 4096
    max_future_skew_s: Annotated[float, Field(ge=0)] = 300.0

    # --- batching and memory
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    #: On a Citus coordinator: a batch is a fixed fan-out of remote commands (docs/scale.md).
    citus_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 10_000
    #: 0: group commit (a write starts as soon as the writer is free); more: wait up to
    #: this long for a batch to fill (fewer, larger transactions; each reading waits).
    flush_interval_ms: Annotated[float, Field(ge=0, le=60_000)] = 0.0
    buffer_capacity: Annotated[int, Field(ge=1)] = 50_000
    #: Database connections writing at once, each a share of the devices (docs/ingest.md).
    writer_lanes: Annotated[int, Field(ge=1, le=16)] = 2
    db_retry_max_s: PositiveFloat = 5.0
    write_give_up_s: Annotated[float, Field(ge=1)] = 300.0
    shutdown_timeout_s: PositiveFloat = 10.0

    # --- history
    partition_ahead_days: Annotated[int, Field(ge=1, le=366)] = 7
    partition_daily_days: Annotated[int, Field(ge=1, le=3660)] = 31
    partition_max: Annotated[int, Field(ge=50, le=100_000)] = 2000
    retention_days: Annotated[int, Field(ge=0)] = 0
    rollup_retention_days: Annotated[int, Field(ge=0)] = 0
    maintenance_interval_s: Annotated[float, Field(ge=1)] = 3600.0

    # --- HTTP
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    http_enabled: bool = True
    api_pool_size: Annotated[int, Field(ge=1, le=100)] = 16
    api_statement_timeout_ms: Annotated[int, Field(ge=100)] = 15_000
    max_body_bytes: Annotated[int, Field(ge=1024, le=100 * 1024 * 1024)] = 1_048_576
    max_items_per_request: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    ingest_timeout_s: PositiveFloat = 30.0
    ingest_max_waiting: Annotated[int, Field(ge=0)] = 20_000
    allowed_hosts: str = ""
    allowed_origins: str = ""
    trusted_proxies: str = ""
    http_max_connections: Annotated[int, Field(ge=8, le=100_000)] = 512
    http_header_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    http_max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16_384
    http_max_headers: Annotated[int, Field(ge=8, le=1000)] = 100
    http_body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    read_tokens: SecretStr = SecretStr("")
    ingest_tokens: SecretStr = SecretStr("")

    # --- OCPP chargers (docs/ocpp.md); empty OCPP_LISTEN = off
    ocpp_listen: str = ""
    ocpp_mode: Literal["csms", "relay"] = "csms"
    ocpp_upstream_url: str = ""
    ocpp_accept_unknown: bool = False
    #: Id tags at Authorize: any (but those tagged --refuse), or only those tagged (listed).
    ocpp_authorize: Literal["any", "listed"] = "any"
    ocpp_meter_interval_s: Annotated[int, Field(ge=0, le=86_400)] = 60
    ocpp_heartbeat_s: Annotated[int, Field(ge=10, le=86_400)] = 300
    ocpp_tls_cert: str | None = None
    ocpp_tls_key: str | None = None
    #: Relay mode: frames read for metering that wait while the database is away.
    ocpp_relay_backlog: Annotated[int, Field(ge=100, le=10_000_000)] = 200_000

    # --- registers (docs/registers.md)
    register_dip_kwh: Annotated[float, Field(ge=0, le=1000)] = 0.05
    register_max_kw: Annotated[float, Field(gt=0, le=100_000)] = 400.0
    register_wrap_kwh: Annotated[float, Field(ge=0)] = 0.0

    # --- analytics
    efficiency_low: Annotated[float, Field(gt=0, lt=10)] = 0.85
    efficiency_max: Annotated[float, Field(gt=0, lt=10)] = 1.0
    efficiency_idle_kw: Annotated[float, Field(ge=0, le=1000)] = 0.05
    fleet_max_age_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    replica_max_lag_s: Annotated[float, Field(gt=0)] = 300.0

    # --- dashboard
    dashboard_silent_minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)] = 15
    dashboard_refresh_s: Annotated[int, Field(ge=0, le=3600)] = 30
    #: The dashboard's one time zone (IANA name): its cards, tables and chart axes.
    display_time_zone: str = "UTC"

    # --- alerts (docs/alerts.md)
    alerts_enabled: bool = True
    alert_rules_file: str | None = None
    #: Payload mappings for third-party MQTT devices (a TOML file or a folder of them).
    sources_file: str | None = None
    #: Sites (a TOML file of [[site]] tables): zones, main meters, members, prices.
    sites_file: str | None = None
    alert_interval_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    alert_efficiency_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 300.0
    alert_webhook_urls: str = ""
    alert_webhook_secret: SecretStr = SecretStr("")
    alert_webhook_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    alert_mqtt: bool = True
    alertmanager_url: str = ""
    alertmanager_resend_s: Annotated[float, Field(ge=5, le=600)] = 60.0
    alert_retry_max_s: Annotated[float, Field(ge=1, le=86_400)] = 300.0
    alert_give_up_s: Annotated[float, Field(ge=1, le=30 * 86_400)] = 86_400.0

    # --- logs
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("log_level", "log_format", "mqtt_protocol", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("ocpp_listen")
    @classmethod
    def _check_ocpp_listen(cls, value: str) -> str:
        if value.strip():
            parse_host_port(value)
        return value.strip()

    @field_validator("ocpp_upstream_url")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        url = urlsplit(value.strip())
        if value.strip() and (url.scheme not in ("ws", "wss") or not url.hostname):
            raise ValueError("must look like wss://csms.example/ocpp/{chargerId}")
        return value.strip()

    @field_validator("display_time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_zone(value)

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: SecretStr) -> SecretStr:
        parse_mqtt_url(value.get_secret_value())
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        url = urlsplit(value.get_secret_value())
        if url.scheme not in ("postgres", "postgresql"):
            raise ValueError("must look like postgresql://user@host:port/dbname")
        if not url.path.strip("/"):
            raise ValueError("must name a database, e.g. postgresql://postgres@127.0.0.1/energy")
        return value

    @field_validator("read_tokens", "ingest_tokens")
    @classmethod
    def _check_tokens(cls, value: SecretStr) -> SecretStr:
        if any(len(token) < 16 for token in _tokens(value)):
            raise ValueError("each token (comma-separated) must be at least 16 characters")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: str) -> str:
        for host in _items(value):
            wildcard = host.startswith("*.") or host == "*"
            if "*" in host[1:] or not (wildcard or _HOST_NAME.fullmatch(host)):
                raise ValueError(
                    f"{host!r} is not a host name, an IP address ([...] for IPv6), '*' or "
                    "'*.example.com'"
                )
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: str) -> str:
        for origin in _items(value):
            url = urlsplit(origin)
            if url.scheme not in ("http", "https") or not url.hostname or url.path.strip("/"):
                raise ValueError(f"{origin!r} is not an origin like https://ops.example.com")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        for proxy in _items(value):
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"{proxy!r} is not an IP address or network (CIDR)") from None
        return value

    @field_validator("alert_webhook_urls", "alertmanager_url")
    @classmethod
    def _check_http_urls(cls, value: str) -> str:
        for item in _items(value):
            url = urlsplit(item)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"{mask_url(item)!r} is not an http:// or https:// URL")
        return value

    @field_validator("mqtt_topic_prefix", "mqtt_shared_group")
    @classmethod
    def _check_topic_part(cls, value: str) -> str:
        if any(ch in value for ch in "+#\x00") or value.startswith("$"):
            raise ValueError("must not contain MQTT wildcards, NUL or start with '$'")
        return value.strip("/")

    @property
    def allowed_host_list(self) -> tuple[str, ...]:
        """Host names requests may be addressed to: ALLOWED_HOSTS, or the loopback names
        and HOST (when it names one address)."""
        if self.allowed_hosts.strip():
            return tuple(h.lower() for h in _items(self.allowed_hosts))
        hosts = ["localhost", "127.0.0.1", "[::1]"]
        if self.host not in ("", "0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
            hosts.append(f"[{self.host}]" if ":" in self.host else self.host.lower())
        return tuple(dict.fromkeys(hosts))

    @property
    def allowed_origin_list(self) -> tuple[str, ...]:
        return tuple(o.rstrip("/").lower() for o in _items(self.allowed_origins))

    @property
    def trusted_proxy_list(self) -> tuple[str, ...]:
        return _items(self.trusted_proxies)

    @property
    def ingest_items_limit(self) -> int:
        """Most readings one HTTP request may carry: never more than the buffer holds."""
        return min(self.max_items_per_request, self.buffer_capacity)

    @property
    def alert_webhook_url_list(self) -> tuple[str, ...]:
        return _items(self.alert_webhook_urls)

    @property
    def read_token_list(self) -> tuple[str, ...]:
        return _tokens(self.read_tokens)

    @property
    def ingest_token_list(self) -> tuple[str, ...]:
        return _tokens(self.ingest_tokens)

    @property
    def mqtt(self) -> MqttEndpoint:
        return parse_mqtt_url(self.mqtt_url.get_secret_value())

    @property
    def ocpp_address(self) -> tuple[str, int] | None:
        """Where the OCPP listener binds (None: off)."""
        return parse_host_port(self.ocpp_listen) if self.ocpp_listen else None

    @property
    def database_where(self) -> str:
        """``host:port`` of the database (for log lines; no credentials)."""
        parts = urlsplit(self.database_url.get_secret_value())
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"

    @property
    def database_name(self) -> str:
        return urlsplit(self.database_url.get_secret_value()).path.strip("/")

    def to_env(self) -> dict[str, str]:
        """Every setting as the environment variable that gives it (secrets included), to
        derive settings for another component (the demo's collector)."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out[name.upper()] = str(value)
        return out

    def masked(self) -> dict[str, object]:
        """Every setting with secrets (passwords in URLs, tokens) masked, for logs and ``check``."""
        out: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.endswith("_tokens"):
                value = f"({len(_tokens(value))} tokens)" if _tokens(value) else ""
            elif name.endswith("_secret"):
                value = "***" if value.get_secret_value() else ""
            elif name.endswith(("_urls", "_url")) and isinstance(value, str):
                value = ",".join(mask_url(item) for item in _items(value))
            elif isinstance(value, SecretStr):
                value = mask_url(value.get_secret_value())
            out[name.upper()] = value
        return out


def known_zone(value: str) -> str:
    """``value`` if it names an IANA time zone; ValueError (a one-line reason) if not."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not a time zone name (IANA, e.g. UTC or Europe/Berlin)"
        ) from None
    return value


def _items(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


#: A DNS name, an IPv4 address, or an IPv6 address in brackets (as in a Host header).
_HOST_NAME = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")


def _tokens(value: SecretStr) -> tuple[str, ...]:
    return tuple(t.strip() for t in value.get_secret_value().split(",") if t.strip())


def parse_mqtt_url(raw: str) -> MqttEndpoint:
    """Parse ``mqtt://[user:pass@]host[:port]`` (``mqtts://`` for TLS)."""
    url = urlsplit(raw)
    if url.scheme not in ("mqtt", "mqtts"):
        raise ValueError("must look like mqtt://[user:pass@]host:port (mqtts:// for TLS)")
    if not url.hostname:
        raise ValueError("has no host")
    try:
        port = url.port
    except ValueError as exc:
        raise ValueError(f"has an invalid port ({exc})") from None
    tls = url.scheme == "mqtts"
    return MqttEndpoint(
        host=url.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password else None,
    )


def parse_host_port(raw: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9000`` for IPv6; an empty host binds every address)."""
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{raw!r} is not host:port, e.g. 0.0.0.0:9000")
    return host.strip("[]"), int(port)


def mask_url(raw: str) -> str:
    """Replace the password in a URL by ``***``."""
    url = urlsplit(raw)
    if url.password is None:
        return raw
    netloc = url.netloc.replace(f":{url.password}@", ":***@", 1)
    return url._replace(netloc=netloc).geturl()


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | None = ".env"
) -> Settings:
    """Build the settings from ``environ`` (default: the process environment) and ``env_file``.

    Variables in the environment win over the file. Raises ``SettingsError`` with one line.
    """
    env = dict(os.environ if environ is None else environ)
    if env_file and os.path.exists(env_file):
        for key, value in dotenv_values(env_file).items():
            if value is not None:
                env.setdefault(key, value)
    known = {name.upper() for name in Settings.model_fields}
    values = {key.lower(): value for key, value in env.items() if key.upper() in known}
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = str(err["loc"][0]).upper() if err["loc"] else "settings"
        message = str(err["msg"]).removeprefix("Value error, ")
        shown = env.get(name, "")
        if "URL" in name:
            shown = mask_url(shown)
        elif name.endswith(("_TOKENS", "_SECRET")):
            shown = "***"
        raise SettingsError(f"invalid setting {name}={shown!r}: {message}") from None
