"""Every PromQL expression of every panel, variable and alert rule, run by a real Prometheus.

The test starts the Debian ``prometheus`` binary on a free 127.0.0.1 port with a temporary
configuration and storage. It scrapes a real instrumented process: a Python subprocess that
runs the demo pipeline in a loop with odibi-observe serving ``/metrics``
(``prometheus_port``), so the node metrics are the ones odibi-observe really exposes.

The same process also serves the sidecar's and the reconciliation's metrics, created from the
conventions (names, kinds and labels) with plausible values. Those stand in for the sidecar
and reconciler processes, which this test does not run; what it proves about them is that the
queries and rules select the series the conventions define, with the labels they define.

Then, with Grafana's variables and ``$__*`` intervals expanded the way Grafana expands them:

* every dashboard variable resolves to values through Prometheus' label-values API;
* every panel query evaluates without error (``/api/v1/query`` for instant panels,
  ``/api/v1/query_range`` for graphs) and returns data; the overview's core panels return
  the values the demo pipeline implies;
* the shipped alert rules load, evaluate with health ``ok``, and the ones the demo's failures
  should trigger are pending or firing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# The SDK comes with the dev extra; without it these tests skip, except in CI.
if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("grafana_foundation_sdk")

from odibi_observe.grafana import expand
from odibi_observe.grafana.datasources import DEPLOYMENT
from tests.test_prometheus_rules import require_binary

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
SCRAPE_SECONDS = 1

#: Runs the demo pipeline every half second with odibi-observe's /metrics on a free port
#: (printed first), plus the sidecar and reconciliation metrics made from the conventions.
INSTRUMENTED_PROCESS = r"""
import os, sys, threading, time
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
import odibi_observe as oo
from odibi_observe.conventions import (
    DISCREPANCY_KINDS, HEALTH_FINDING_KINDS, HEALTH_METRICS, PEAK_RSS_BUCKETS_BYTES,
    RECONCILE_METRICS, RESOURCE_METRICS, SIDECAR_METRICS, MetricKind)
from odibi_observe.demo import run_pipeline

# The parent closes stdin when it is done (or dies): leave then, never as an orphan.
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()

registry = CollectorRegistry()
observer = oo.configure(project="demo", environment="local", service_name="grafana-test",
                        registry=registry, prometheus_port=0, handle_sigterm=False,
                        strict=True)
print(observer.prometheus_port, flush=True)

made = {}
stand_ins = [(m.key, m) for m in (*SIDECAR_METRICS, *RECONCILE_METRICS, *RESOURCE_METRICS)]
stand_ins += [("health_" + m.key, m) for m in HEALTH_METRICS]  # reconcile has a last_run too
for key, metric in stand_ins:
    if metric.kind is MetricKind.HISTOGRAM:
        make = lambda *a, **k: Histogram(*a, buckets=PEAK_RSS_BUCKETS_BYTES, **k)
    else:
        make = Counter if metric.kind is MetricKind.COUNTER else Gauge
    try:
        made[key] = make(metric.prometheus_base, metric.description, metric.labels,
                        registry=registry)
    except ValueError:  # already registered by the real code: keep the real one
        pass
# Where the real sink registered the limit gauge first, set that one: on a host without a
# cgroup memory limit the sink itself never sets it.
if "memory_limit" not in made:
    made["memory_limit"] = registry._names_to_collectors[
        RESOURCE_METRICS.memory_limit.prometheus_base]
# The real memory metrics (where the code registers them) label by node identity; the
# stand-ins give one demo node a 2 GiB limit and 1.5 GiB peaks.
NODE = dict(project="demo", pipeline="daily_sales", node="clean_orders", environment="local")

def sample(key, value=None, **labels):
    metric = made.get(key)
    if metric is None:
        return
    child = metric.labels(**labels) if labels else metric
    if value is None:
        child.inc()
    else:
        child.set(value)

backlog = 0
while True:
    run_pipeline()
    oo.flush(timeout=5)
    backlog += 3
    sample("ingested", kind="STARTED"); sample("ingested", kind="FINISHED")
    sample("spool_bytes", 4096 + backlog)
    sample("spool_backlog", backlog, sink="catalog"); sample("spool_backlog", 0, sink="otel")
    sample("spool_corrupt"); sample("spool_rejected", reason="size_limit")
    sample("ledger_spans", outcome="stored"); sample("sweeper_closed", reason="process_gone")
    sample("last_loop", time.time())
    for kind in DISCREPANCY_KINDS:
        sample("discrepancies", 2 if kind == "missing_in_catalog" else 0, kind=kind)
    sample("completeness", 0.97); sample("last_run", time.time() - 3600)
    sample("checked", 40); sample("deferred", 3)
    # The last health pass (its textfile gauges): one memory_growth finding.
    for kind in HEALTH_FINDING_KINDS:
        sample("health_findings", 1 if kind == "memory_growth" else 0, kind=kind)
    sample("health_open_finding", 1, kind="memory_growth", pipeline="daily_sales",
           node="clean_orders")
    sample("health_nodes", 6); sample("health_last_run", time.time() - 600)
    if "peak_rss" in made:
        made["peak_rss"].labels(**NODE).observe(1.5 * 2**30)
    sample("memory_limit", 2 * 2**30, **NODE)
    observer.monitor.sink_error("otel")
    observer.monitor.dropped("otel", "queue_full")
    time.sleep(0.5)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.get("/api/v1/query", query=expr)
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    def query_range(self, expr: str, seconds: int = 30, step: int = 2) -> list[dict[str, Any]]:
        now = time.time()
        body = self.get("/api/v1/query_range", query=expr, start=now - seconds, end=now, step=step)
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    pipeline = subprocess.Popen(
        [sys.executable, "-c", INSTRUMENTED_PROCESS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    server = None
    try:
        assert pipeline.stdout is not None
        metrics_port = int(pipeline.stdout.readline())
        # The shipped rules, evaluated every second instead of every 15 s.
        rules = yaml.safe_load((DASHBOARDS / "prometheus" / "rules.yml").read_text())
        for group in rules["groups"]:
            group["interval"] = f"{SCRAPE_SECONDS}s"
        (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
        (tmp / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_SECONDS}s",
                        "evaluation_interval": f"{SCRAPE_SECONDS}s",
                    },
                    "rule_files": [str(tmp / "rules.yml")],
                    "scrape_configs": [
                        {
                            "job_name": DEPLOYMENT.sidecar_job,
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                        }
                    ],
                }
            )
        )
        port = _free_port()
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        prom = Prometheus(f"http://127.0.0.1:{port}")
        _wait_until(lambda: _ready(prom), 30, "Prometheus did not become ready", server)
        # Enough scrapes for rate() over the expanded $__rate_interval, and runs in between.
        _wait_until(lambda: _scrapes(prom) >= 8, 40, "too few scrapes", server)
        yield prom
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        if pipeline.stdin is not None:
            pipeline.stdin.close()
        try:
            pipeline.wait(10)
        except subprocess.TimeoutExpired:
            pipeline.kill()
            pipeline.wait(5)


def _ready(prom: Prometheus) -> bool:
    try:
        with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:
            status: int = resp.status
            return status == 200
    except OSError:
        return False


def _scrapes(prom: Prometheus) -> int:
    result = prom.query(f'count_over_time(up{{job="{DEPLOYMENT.sidecar_job}"}}[1m])')
    return int(float(result[0]["value"][1])) if result else 0


def _wait_until(
    condition: Any, seconds: float, message: str, server: subprocess.Popen[str]
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prometheus exited: {server.stderr.read() if server.stderr else ''}")
        if condition():
            return
        time.sleep(0.25)
    pytest.fail(message)


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _resolve_variables(prom: Prometheus, dash: dict[str, Any]) -> dict[str, Any]:
    """Each variable's values from Prometheus, in order; "All" for multi-value ones."""
    values: dict[str, Any] = {}
    for var in dash["templating"].get("list", []):
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["query"])
        assert match, var["query"]
        selector = _expand(match.group(1), values)
        body = prom.get(f"/api/v1/label/{match.group(2)}/values", **{"match[]": selector})
        assert body["status"] == "success", body
        found = sorted(body["data"])
        assert found, f"variable {var['name']} resolves to nothing ({selector})"
        values[var["name"]] = found if var.get("multi") else found[0]
    return values


def _expand(expr: str, variables: dict[str, Any]) -> str:
    return expand.promql(expr, variables, interval="5s", rate_interval="10s", range_="1m")


def _panel_queries(dash: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            if "expr" in target:
                yield panel["title"], target


def test_every_panel_query_evaluates_and_returns_data(prometheus: Prometheus) -> None:
    evaluated = 0
    for name, dash in _dashboards().items():
        variables = _resolve_variables(prometheus, dash)
        for title, target in _panel_queries(dash):
            expr = _expand(target["expr"], variables)
            result = (
                prometheus.query(expr) if target.get("instant") else prometheus.query_range(expr)
            )
            assert result, f"{name} / {title}: no data for {expr}"
            evaluated += 1
    assert evaluated >= 35


def _by_title(dash: dict[str, Any], title: str) -> dict[str, Any]:
    return next(p for p in dash["panels"] if p.get("title") == title)


def test_overview_core_panels_show_the_demo_runs(prometheus: Prometheus) -> None:
    dash = _dashboards()["odibi-pipeline-overview"]
    variables = _resolve_variables(prometheus, dash)
    assert variables["pipeline"] == ["daily_sales"]

    def instant(title: str) -> list[dict[str, Any]]:
        return prometheus.query(_expand(_by_title(dash, title)["targets"][0]["expr"], variables))

    by_status = {r["metric"]["status"]: float(r["value"][1]) for r in instant("Runs by status")}
    # Each demo run: four successes, a failure and a cancellation (a KeyboardInterrupt), each
    # its own series; the sink exposes every terminal status from the start, so CRASHED is
    # there, at 0.
    assert {s for s, n in by_status.items() if n > 0} == {"SUCCESS", "FAILURE", "CANCELLED"}
    assert by_status["SUCCESS"] > by_status["FAILURE"] > 0
    assert by_status["CANCELLED"] == by_status["FAILURE"]
    ratio = float(instant("Success rate")[0]["value"][1])
    assert 0.5 < ratio < 0.8  # 4/6, give or take a run in flight at the window's edges
    rows = prometheus.query_range(
        _expand(_by_title(dash, "Rows per second by node")["targets"][0]["expr"], variables)
    )
    assert {r["metric"]["node"] for r in rows} >= {"ingest_orders", "clean_orders"}
    assert max(float(v) for r in rows for _, v in r["values"]) > 0
    quantiles = _by_title(dash, "Duration p50 / p95 by node")["targets"]
    for target in quantiles:
        series = prometheus.query_range(_expand(target["expr"], variables))
        assert len({r["metric"]["node"] for r in series}) == 6


def test_alert_rules_evaluate_and_the_expected_ones_trigger(prometheus: Prometheus) -> None:
    rules = yaml.safe_load((DASHBOARDS / "prometheus" / "rules.yml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        prometheus.query(rule["expr"])  # no error

    def loaded() -> list[dict[str, Any]]:
        body = prometheus.get("/api/v1/rules")
        return [r for g in body["data"]["groups"] for r in g["rules"]]

    deadline = time.monotonic() + 15
    while not all(r["lastEvaluation"] > "2000" for r in loaded()):
        assert time.monotonic() < deadline, "rules were not evaluated"
        time.sleep(0.5)
    states = {}
    for rule in loaded():
        assert rule["health"] == "ok", rule
        states[rule["name"]] = rule["state"]
    assert len(states) == 20
    # The demo fails two of its six nodes on every run; the stand-in metrics report a
    # completeness of 97 % and an exporter dropping events.
    assert states["OdibiNodeFailureRate"] in ("pending", "firing")
    assert states["OdibiCatalogIncomplete"] == "firing"
    assert states["OdibiEventsDropped"] == "firing"
    assert states["OdibiSinkErrors"] in ("pending", "firing")
    # The health pass (stand-in gauges) saw one memory_growth finding and nothing else.
    assert states["OdibiHealthMemoryGrowth"] == "firing"
    for kind in (
        "VolumeAnomaly",
        "ZeroRows",
        "DurationAnomaly",
        "Freshness",
        "FailureStreak",
        "Flaky",
    ):
        assert states[f"OdibiHealth{kind}"] == "inactive", kind
    # The sidecar (stand-in) is scraped and its loop is current.
    for healthy in (
        "OdibiSidecarDown",
        "OdibiSidecarAbsent",
        "OdibiSidecarStale",
        "OdibiReconciliationStale",
        "OdibiReconciliationCheckedNothing",
        "OdibiUncommittedWrite",  # every run of the stand-in committed what it wrote
    ):
        assert states[healthy] == "inactive", healthy
