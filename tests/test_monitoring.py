"""The monitoring shipped in deploy/: Prometheus' alerts about the collector (checked and
unit-tested by promtool) and the Grafana dashboard, both over metrics the collector really
exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from collector.metrics import Metrics

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "energy-collector.json"
#: Series Prometheus makes itself, not the collector.
PROMETHEUS_OWN = {"up"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )


def exported() -> set[str]:
    """Every series name the collector's registry exposes (with the suffixes a counter and
    a histogram get), labelled or not."""
    text = generate_latest(Metrics().registry).decode()
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "counter":
            names.add(f"{name.removesuffix('_total')}_total")
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    return {n for n in re.findall(r"\b[a-z_][a-z0-9_]*\b", expr) if n.startswith("collector_")} | (
        PROMETHEUS_OWN & set(re.findall(r"\b[a-z_]+\b", expr))
    )


def alert_expressions() -> dict[str, str]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_expressions() -> dict[str, str]:
    doc = json.loads(DASHBOARD.read_text())
    return {f"{p['title']} / {t['refId']}": t["expr"] for p in doc["panels"] for t in p["targets"]}


def test_promtool_checks_the_rules_and_the_config():
    for args in (("check", "rules", "alerts.yml"), ("check", "config", "prometheus.yml")):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_the_alerts():
    done = promtool("test", "rules", "alerts.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts.test.yml").read_text()))
    untested = {"CollectorCommitLagHigh", "CollectorAlertEvaluationFailing"}
    assert set(alert_expressions()) - tested == untested


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_expression_names_metrics_the_collector_exports(source):
    expressions = alert_expressions() if source == "alerts" else dashboard_expressions()
    known = exported() | PROMETHEUS_OWN
    assert expressions
    for where, expr in expressions.items():
        names = metric_names(expr)
        assert names, f"{where}: names no metric: {expr}"
        assert names <= known, f"{where}: not exported: {sorted(names - known)}"


def test_the_check_sees_a_wrong_name():
    assert metric_names('rate(collector_readings_stord_total{kind="x"}[5m])') - exported() == {
        "collector_readings_stord_total"
    }
    assert metric_names("sum by (rule) (collector_alerts_firing)") == {"collector_alerts_firing"}
