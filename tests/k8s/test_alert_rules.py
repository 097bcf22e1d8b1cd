"""The repository's alert rules (the chart's PrometheusRule and the local Prometheus'
rule file): valid for Prometheus, and each alert fires, or stays quiet, as its unit
tests in alerts.test.yaml say."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from kubekit import CHART

from lastro.core.config import Settings
from lastro.devstack.kubetools import tool_path

RULES = CHART / "files" / "prometheus"


def promtool(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool_path(settings, "promtool")), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULES,
        # A guard against a hang, not a time goal: the unit tests take about 40 s of CPU,
        # five minutes of wall clock on a shared two-core machine at load 20.
        timeout=900,
    )


def test_promtool_check_rules_accepts_the_alert_rules(k8s_tools: Settings) -> None:
    result = promtool(k8s_tools, "check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass(k8s_tools: Settings) -> None:
    result = promtool(k8s_tools, "test", "rules", "alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    rules = yaml.safe_load((RULES / "alerts.yaml").read_text())
    alerts = {
        rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
    }
    tests = yaml.safe_load((RULES / "alerts.test.yaml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == fired


def test_every_alert_has_a_severity_and_a_summary() -> None:
    rules = yaml.safe_load((RULES / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
                assert rule["annotations"]["summary"], rule["alert"]


def test_promtool_refuses_a_broken_rule_file(k8s_tools: Settings, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(\n")
    result = promtool(k8s_tools, "check", "rules", str(broken))
    assert result.returncode != 0
