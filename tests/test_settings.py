"""Settings: defaults work locally; a bad value fails with one line naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collector.settings import Settings, SettingsError, load_settings, mask_url
from collector.sources.mqtt.topics import NativeTopics
from collector.sources.ocpp.listener import OcppConfig


def test_defaults_point_at_the_local_services():
    s = load_settings({}, env_file=None)
    assert s.database_url.get_secret_value() == "postgresql://postgres@127.0.0.1:5432/energy"
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.tls) == ("127.0.0.1", 1883, False)
    assert s.port == 8000
    assert s.mqtt_protocol == "5"
    assert NativeTopics.from_settings(s).filters() == ["meters/+/reading", "vehicles/+/reading"]


def test_mqtt_url_with_credentials_and_tls():
    s = load_settings({"MQTT_URL": "mqtts://collector:s%40cret@broker.example:8884"}, env_file=None)
    assert s.mqtt.tls
    assert s.mqtt.port == 8884
    assert (s.mqtt.username, s.mqtt.password) == ("collector", "s@cret")
    assert "s%40cret" not in str(s.masked())
    assert "***" in str(s.masked()["MQTT_URL"])


def test_mqtts_defaults_to_port_8883():
    assert load_settings({"MQTT_URL": "mqtts://broker"}, env_file=None).mqtt.port == 8883


def test_prefix_and_shared_group_shape_the_subscriptions():
    s = load_settings(
        {"MQTT_TOPIC_PREFIX": "site-a/", "MQTT_SHARED_GROUP": "collectors"}, env_file=None
    )
    assert NativeTopics.from_settings(s).filters() == [
        "$share/collectors/site-a/meters/+/reading",
        "$share/collectors/site-a/vehicles/+/reading",
    ]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MQTT_URL": "http://broker:1883"}, "MQTT_URL"),
        ({"MQTT_URL": "mqtt://broker:notaport"}, "MQTT_URL"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://127.0.0.1"}, "DATABASE_URL"),
        ({"BATCH_SIZE": "0"}, "BATCH_SIZE"),
        ({"BATCH_SIZE": "many"}, "BATCH_SIZE"),
        ({"PORT": "70000"}, "PORT"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        ({"MQTT_PROTOCOL": "4"}, "MQTT_PROTOCOL"),
        ({"MQTT_TOPIC_PREFIX": "a/+/b"}, "MQTT_TOPIC_PREFIX"),
        ({"MQTT_RECEIVE_MAXIMUM": "70000"}, "MQTT_RECEIVE_MAXIMUM"),
        ({"MIGRATE_ON_START": "perhaps"}, "MIGRATE_ON_START"),
        ({"DISPLAY_TIME_ZONE": "Mars/Olympus"}, "DISPLAY_TIME_ZONE"),
        ({"DISPLAY_TIME_ZONE": "../../etc/passwd"}, "DISPLAY_TIME_ZONE"),
        ({"OCPP_LISTEN": "9000"}, "OCPP_LISTEN"),
        ({"OCPP_LISTEN": "0.0.0.0:port"}, "OCPP_LISTEN"),
        ({"OCPP_MODE": "proxy"}, "OCPP_MODE"),
        ({"OCPP_UPSTREAM_URL": "https://csms.example/ocpp"}, "OCPP_UPSTREAM_URL"),
    ],
)
def test_invalid_setting_fails_with_one_line_naming_it(env, needle):
    with pytest.raises(SettingsError) as info:
        load_settings(env, env_file=None)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting {needle}=")


def test_password_is_masked_in_the_error():
    with pytest.raises(SettingsError) as info:
        load_settings({"DATABASE_URL": "mysql://u:topsecret@h/db"}, env_file=None)
    assert "topsecret" not in str(info.value)


def test_env_file_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("BATCH_SIZE=123\nPORT=9001\n")
    s = load_settings({"PORT": "9002"}, env_file=str(env_file))
    assert s.batch_size == 123
    assert s.port == 9002


def test_mask_url():
    assert mask_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_the_readme_documents_every_setting_with_its_default():
    """The configuration reference names each setting once, with the default it has."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
            defaults = re.findall(r"`([^`]*)`", cells[1]) or [""] * len(names)
            if len(defaults) != len(names):
                defaults = defaults[:1] * len(names)
            for name, default in zip(names, defaults, strict=True):
                assert name not in documented, f"{name} twice"
                documented[name] = default
    settings = Settings()
    assert set(documented) == {name.upper() for name in Settings.model_fields}
    for name, default in documented.items():
        value = getattr(settings, name.lower())
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if value in (None, "") or default == "":
            continue
        if isinstance(value, bool):
            assert default == str(value).lower(), name
        elif isinstance(value, (int, float)):
            assert float(default) == float(value), name
        else:
            assert default == str(value), name


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OCPP_LISTEN": "127.0.0.1:9000", "OCPP_MODE": "relay"},
            "OCPP_MODE=relay needs OCPP_UPSTREAM_URL",
        ),
        (
            {"OCPP_LISTEN": "127.0.0.1:9000", "OCPP_TLS_CERT": "/etc/x.crt"},
            "OCPP_TLS_CERT and OCPP_TLS_KEY go together",
        ),
        (
            {"OCPP_LISTEN": "127.0.0.1:9000", "OCPP_TLS_CERT": "/nonexistent.crt",
             "OCPP_TLS_KEY": "/nonexistent.key"},
            "invalid setting OCPP_TLS_CERT/OCPP_TLS_KEY",
        ),
    ],
)  # fmt: skip
def test_ocpp_settings_that_do_not_go_together_stop_the_start(env, message):
    with pytest.raises(SettingsError) as info:
        OcppConfig.from_settings(load_settings(env, env_file=None))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_ocpp_is_off_unless_a_listener_is_named():
    assert OcppConfig.from_settings(load_settings({}, env_file=None)) is None
    config = OcppConfig.from_settings(load_settings({"OCPP_LISTEN": ":9000"}, env_file=None))
    assert config is not None and (config.host, config.port) == ("0.0.0.0", 9000)
