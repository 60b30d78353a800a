"""Alert rules (the file and the built-ins) and the state machine, without services."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector.alerts.conditions import Observation, efficiency
from collector.alerts.rules import AlertRule, RulesError, builtin_rules, load_rules
from collector.alerts.transitions import OpenAlert, decide
from collector.settings import load_settings

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def settings(**env: str):
    return load_settings({k.upper(): v for k, v in env.items()}, env_file=None)


def rules_from(tmp_path: Path, text: str) -> tuple[AlertRule, ...]:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return load_rules(settings(alert_rules_file=str(path)))


def test_without_a_file_the_builtin_rules_apply_with_the_settings():
    rules = {
        r.name: r for r in load_rules(settings(efficiency_low="0.8", dashboard_silent_minutes="20"))
    }
    assert list(rules) == [
        "low_efficiency", "efficiency_anomaly", "device_silent", "battery_hot", "register_anomaly",
        "charger_offline", "site_imbalance", "connector_faulted",
    ]  # fmt: skip
    assert rules["charger_offline"].for_s == 1200  # two 300 s heartbeats + 60 s are less
    assert rules["connector_faulted"].streams == ("meter",)
    assert rules["low_efficiency"].below == 0.8
    assert rules["efficiency_anomaly"].above == 1.0
    assert rules["device_silent"].for_s == 1200
    assert rules["device_silent"].streams == ("meter", "vehicle")
    hot = rules["battery_hot"]
    assert (hot.above, hot.for_s, hot.clear_at, hot.severity) == (55.0, 300, 50.0, "critical")
    assert builtin_rules(settings())[0].min_ac_kwh > 0  # an idle vehicle is not flagged


def test_the_issue_example_parses(tmp_path):
    (rule,) = rules_from(
        tmp_path,
        """
        [[rule]]
        name = "battery_hot"
        kind = "threshold"        # threshold | silent | efficiency
        stream = "vehicle"        # vehicle | meter
        field = "batteryTemp"
        above = 55.0              # or below = ...
        for_s = 300               # must hold this long before it fires
        clear_below = 50.0        # hysteresis: resolves only below this
        severity = "critical"     # info | warning | critical
        """,
    )
    assert (rule.name, rule.streams, rule.clear_at) == ("battery_hot", ("vehicle",), 50.0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "x"\nkind = "threshold"\nfield = "batteryTemp"',
         "rule 'x': field 'above': a threshold rule needs exactly one of above, below"),
        ('name = "x"\nkind = "threshold"\nfield = "temp"\nabove = 1.0',
         "rule 'x': field 'field': 'temp' is not one of batteryTemp"),
        ('name = "x"\nkind = "threshold"\nfield = "voltage"\nstream = "vehicle"\nabove = 1.0',
         "rule 'x': field 'stream': voltage is a field of the meter stream"),
        ('name = "x"\nkind = "threshold"\nfield = "soc"\nabove = 50.0\nclear_below = 60.0',
         "rule 'x': field 'clear_below': must be at most above (50.0)"),
        ('name = "x"\nkind = "silent"\nfor_s = 60\nabove = 1.0',
         "rule 'x': field 'above': does not apply to a silent rule"),
        ('name = "x"\nkind = "silent"', "rule 'x': field 'for_s': a silent rule needs"),
        ('name = "x"\nkind = "flood"', "rule 'x': field 'kind': Input should be"),
        ('name = "x"\nkind = "register"\nseverity = "high"', "rule 'x': field 'severity':"),
        ('name = "x"\nkind = "register"\nfor = 3', "rule 'x': field 'for': is not a rule field"),
        ('name = "x"\nkind = "register"\nfor_s = "5m"', "rule 'x': field 'for_s': Input should be"),
        ('kind = "register"', "rule #1: field 'name': is required"),
        # numbers are numbers, finite, and sensible (round 3, item 8)
        ('name = "x"\nkind = "threshold"\nfield = "soc"\nabove = nan',
         "rule 'x': field 'above': Input should be a finite number"),
        ('name = "x"\nkind = "threshold"\nfield = "soc"\nabove = 5.0\nclear_below = -inf',
         "rule 'x': field 'clear_below': Input should be a finite number"),
        ('name = "x"\nkind = "efficiency"\nbelow = inf', "rule 'x': field 'below': Input should"),
        ('name = "x"\nkind = "threshold"\nfield = "soc"\nabove = true',
         "rule 'x': field 'above': Input should be a valid number"),
        ('name = "x"\nkind = "threshold"\nfield = "soc"\nbelow = "5"',
         "rule 'x': field 'below': Input should be a valid number"),
        ('name = "x"\nkind = "silent"\nfor_s = true', "rule 'x': field 'for_s': Input should"),
        ('name = "x"\nkind = "register"\nmin_count = 1000000000',
         "rule 'x': field 'min_count': Input should be less than or equal to 1000000"),
        ('name = "x"\nkind = "register"\nmin_count = 2.5', "rule 'x': field 'min_count':"),
        ('name = "x"\nkind = "efficiency"\nbelow = 0.8\nmin_ac_kwh = 1e300',
         "rule 'x': field 'min_ac_kwh': Input should be less than or equal to"),
        ('name = "Bad Name"\nkind = "register"', "rule 'Bad Name': field 'name':"),
    ],
)  # fmt: skip
def test_a_bad_rule_is_one_line_naming_the_rule_and_the_field(tmp_path, body, message):
    with pytest.raises(RulesError) as info:
        rules_from(tmp_path, f"[[rule]]\n{body}\n")
    text = str(info.value)
    assert "\n" not in text
    assert message in text, text


def test_a_bad_file_names_itself(tmp_path):
    with pytest.raises(RulesError, match="not valid TOML"):
        rules_from(tmp_path, "[[rule]\n")
    with pytest.raises(RulesError, match="cannot be read"):
        load_rules(settings(alert_rules_file=str(tmp_path / "missing.toml")))
    with pytest.raises(RulesError, match="field 'name': used by another rule"):
        rules_from(
            tmp_path, '[[rule]]\nname="a"\nkind="register"\n[[rule]]\nname="a"\nkind="register"\n'
        )
    with pytest.raises(RulesError, match="unknown table 'rules'"):
        rules_from(tmp_path, '[[rules]]\nname="a"\n')


def test_files_that_are_no_rules_are_one_line_errors(tmp_path):
    utf16 = '[[rule]]\nname = "a"\nkind = "register"\n'.encode("utf-16")
    for content, message in [
        (utf16, "not UTF-8 text (byte 0) (UTF-16? save it as UTF-8)"),
        (b"x = " + b"[" * 20_000 + b"]" * 20_000, "not valid TOML (nested too deeply)"),
        (b"", "no rules (no [[rule]] table); to run without alerts, set ALERTS_ENABLED=false"),
        (b"rule = []\n", "no rules"),
        (b"rule = [1]\n", "'rule' must be an array of tables"),
    ]:
        path = tmp_path / "rules.toml"
        path.write_bytes(content)
        with pytest.raises(RulesError) as info:
            load_rules(settings(alert_rules_file=str(path)))
        assert message in str(info.value) and "\n" not in str(info.value)
    # a UTF-8 byte order mark is fine
    path.write_bytes(b"\xef\xbb\xbf" + b'[[rule]]\nname = "a"\nkind = "register"\n')
    assert [r.name for r in load_rules(settings(alert_rules_file=str(path)))] == ["a"]


@pytest.mark.timeout(60)  # 76 s with the quadratic check of round 2
def test_twenty_thousand_rules_load_and_a_duplicate_among_them_is_named(tmp_path):
    body = "".join(f'[[rule]]\nname = "r{i}"\nkind = "register"\n' for i in range(20_000))
    assert len(rules_from(tmp_path, body)) == 20_000
    with pytest.raises(RulesError, match="rule 'r7': field 'name': used by another rule"):
        rules_from(tmp_path, body + '[[rule]]\nname = "r7"\nkind = "register"\n')


@pytest.mark.parametrize(
    ("command", "content", "message"),
    [
        ("run", '[[rule]]\nname = "hot"\nkind = "threshold"\nfield = "batteryTemp"\n',
         "rule 'hot': field 'above'"),
        ("check", '[[rule]]\nname = "hot"\nkind = "threshold"\nfield = "batteryTemp"\n',
         "rule 'hot': field 'above'"),
        ("run", "\ufeffrule = []".encode("utf-16").decode("latin-1"), "not UTF-8 text"),
        ("run", "x = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("check", "", "no rules"),
    ],
)  # fmt: skip
def test_a_bad_rules_file_stops_run_and_check_at_start(tmp_path, command, content, message):
    path = tmp_path / "rules.toml"
    path.write_bytes(content.encode("latin-1"))
    env = {
        "ALERT_RULES_FILE": str(path),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "collector", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0]


# --- the state machine --------------------------------------------------------------------

HOT = AlertRule(
    name="battery_hot", kind="threshold", field="batteryTemp", above=55, clear_below=50, for_s=300
)


def seen(device: str, value: float, held_s: float | None, *, holds=None, cleared=None):
    holds = value > 55 if holds is None else holds
    cleared = value < 50 if cleared is None else cleared
    since = NOW - timedelta(seconds=held_s or 0) if holds else None
    return Observation("vehicle", device, holds, cleared, value, since, held_s if holds else None)


def test_pending_then_firing_after_for_s_then_resolved_only_past_the_clear_value():
    first = decide(HOT, [], [seen("v1", 57, 60)], NOW)
    assert [(n.device_id, n.state) for n in first.new] == [("v1", "pending")]
    pending = OpenAlert(1, "vehicle", "v1", "pending", NOW - timedelta(seconds=60))
    assert not decide(HOT, [pending], [seen("v1", 57, 200)], NOW)
    assert decide(HOT, [pending], [seen("v1", 57, 300)], NOW).fire == [(1, 57)]
    firing = OpenAlert(1, "vehicle", "v1", "firing", NOW)
    assert not decide(HOT, [firing], [seen("v1", 52, None)], NOW)  # between 50 and 55
    assert not decide(HOT, [firing], [], NOW)  # not seen this pass: kept
    assert decide(HOT, [firing], [seen("v1", 49, None)], NOW).resolve == [(1, 49)]


def test_a_pending_alert_that_stops_holding_is_dropped_and_one_held_long_fires_at_once():
    pending = OpenAlert(7, "vehicle", "v1", "pending", NOW)
    assert decide(HOT, [pending], [seen("v1", 54, None)], NOW).drop == [7]
    assert decide(HOT, [pending], [], NOW).drop == [7]
    (new,) = decide(HOT, [], [seen("v2", 60, 900)], NOW).new
    assert (new.state, new.since) == ("firing", NOW - timedelta(seconds=900))


def test_one_alert_per_rule_and_device_whatever_the_observations():
    firing = OpenAlert(1, "vehicle", "v1", "firing", NOW)
    again = decide(HOT, [firing], [seen("v1", 60, 900), seen("v1", 61, 900)], NOW)
    assert not again.new  # already open: nothing new, however many readings say so


class Energy:
    def __init__(self, vehicle_id: str, ac: float, dc: float, n: int = 10) -> None:
        self.vehicle_id, self.ac_kwh, self.dc_kwh, self.ac_n, self.dc_n = vehicle_id, ac, dc, n, n


def test_efficiency_needs_enough_ac_and_both_streams():
    rule = AlertRule(name="low", kind="efficiency", below=0.85, min_ac_kwh=1.0)
    observed = {
        o.device_id: o
        for o in efficiency(
            rule,
            [
                Energy("bad", 10, 5),
                Energy("ok", 10, 9),
                Energy("idle", 0.2, 0.0),
                Energy("none", 10, 5, n=0),
            ],
        )
    }
    assert set(observed) == {"bad", "ok"}  # idle and no readings: neither flagged nor cleared
    assert (observed["bad"].holds, observed["bad"].value) == (True, 0.5)
    assert (observed["ok"].holds, observed["ok"].cleared) == (False, True)
