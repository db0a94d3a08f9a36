"""The shipped Prometheus files, checked by the real promtool.

* ``promtool check rules`` and ``promtool check config`` accept ``dashboards/prometheus/``;
* ``promtool test rules rules_test.yml`` passes: every alert fires on the failure it is for and
  stays silent on a healthy series beside it;
* every metric named in the rules and in their unit tests exists in the conventions.

promtool is the Debian ``prometheus`` package's. Without it these tests skip, except with
``CI=true``, where a missing binary is an error: CI must never pass without them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from odibi_observe.conventions import MetricKind, all_metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "dashboards" / "prometheus"


def require_binary(name: str) -> str:
    """Path of a Prometheus binary; skip without it, or fail when ``CI=true``."""
    path = shutil.which(name)
    if path:
        return path
    problem = f"{name} is not installed (apt-get install prometheus)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{problem}; the Prometheus tests must run in CI", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 20 rules found" in result.stdout


def test_promtool_checks_the_config(promtool: str) -> None:
    result = _promtool(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = _promtool(promtool, "test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    silent = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert firing == alerts
    assert silent == alerts


def _metric_names(text: str) -> set[str]:
    """Every ``odibi_*`` name outside comments."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"\b(odibi_\w+)", code))


def test_every_metric_in_rules_and_tests_is_in_the_conventions() -> None:
    known = set()
    for metric in all_metrics():
        known.add(metric.prometheus)
        if metric.kind is MetricKind.HISTOGRAM:
            known |= {f"{metric.prometheus}_{s}" for s in ("bucket", "sum", "count")}
    for name in ("rules.yml", "rules_test.yml"):
        used = _metric_names((PROMETHEUS_DIR / name).read_text())
        assert used, name
        assert used <= known, (name, used - known)
    labels = {label for m in all_metrics() for label in m.labels} | {"job", "instance"}
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())
    for test in tests["tests"]:
        for series in test["input_series"]:
            used_labels = set(re.findall(r"(\w+)=\"", series["series"]))
            assert used_labels <= labels, series["series"]
