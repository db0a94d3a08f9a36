"""Exemplars: a node run's duration observation and runs-counter increment carry its span.

Real components: the in-process ``/metrics`` server (``prometheus_port``), a real sidecar fed
by a real sidecar-mode pipeline process, and the Debian ``prometheus`` binary with
``--enable-feature=exemplar-storage`` scraping both, asked through ``/api/v1/query_exemplars``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

import odibi_observe as oo
from odibi_observe.conventions import (
    DURATION_BUCKETS_SECONDS,
    EXEMPLAR_METRICS,
    EXEMPLAR_SPAN_ID_LABEL,
    EXEMPLAR_TRACE_ID_LABEL,
    METRICS,
)
from odibi_observe.grafana import provisioning
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sidecar.service import Sidecar
from odibi_observe.sinks.prometheus import (
    PrometheusSink,
    count_with_exemplar,
    observe_with_exemplar,
    run_exemplar,
)
from odibi_observe.testing.contracts import make_record
from tests.helpers import wait_until
from tests.test_prometheus_rules import require_binary
from tests.test_sidecar_service import catalog_rows, get, options, run_pipeline, settings

Configure = Callable[..., oo.Observer]
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
#: One exemplar as the OpenMetrics text renders it (labels in name order).
EXEMPLAR_RE = re.compile(
    r"# \{"
    + EXEMPLAR_SPAN_ID_LABEL
    + r'="(?P<span>[0-9a-f]{16})",'
    + EXEMPLAR_TRACE_ID_LABEL
    + r'="(?P<trace>[0-9a-f]{32})"\}'
)


def _exemplars(registry: CollectorRegistry, family: str) -> list[dict[str, str]]:
    """The exemplar labels of every sample of ``family`` that has one."""
    out = []
    for metric in registry.collect():
        if metric.name == family:
            out += [dict(s.exemplar.labels) for s in metric.samples if s.exemplar is not None]
    return out


def _finish(sink: PrometheusSink, record: RunRecord) -> None:
    sink.export([RunEvent(EventKind.FINISHED, record)])


def _ids(record: RunRecord) -> dict[str, str]:
    return {EXEMPLAR_TRACE_ID_LABEL: record.trace_id, EXEMPLAR_SPAN_ID_LABEL: record.span_id}


def test_duration_and_runs_samples_carry_the_run_s_span() -> None:
    sink = PrometheusSink()
    record = make_record(duration_ns=300_000_000)  # 0.3 s: the le="0.5" bucket
    _finish(sink, record)
    for metric in EXEMPLAR_METRICS:
        assert _exemplars(sink.registry, metric.prometheus_base) == [_ids(record)]
    bucket = next(
        s
        for m in sink.registry.collect()
        if m.name == METRICS.duration.prometheus
        for s in m.samples
        if s.exemplar is not None
    )
    assert bucket.labels["le"] == "0.5"
    assert bucket.exemplar is not None and bucket.exemplar.value == pytest.approx(0.3)
    # Rows carry none: only the families the conventions name.
    assert _exemplars(sink.registry, METRICS.rows.prometheus_base) == []


@pytest.mark.parametrize("seconds", [0.0, 0.05, 0.3, 2.5, 7.0, 50_000.0])
def test_the_direct_exemplar_path_matches_prometheus_client_s_own(seconds: float) -> None:
    """The sink sets exemplars on the children directly (no per-call validation): the
    samples, buckets and exemplars it exposes are those of ``observe``/``inc(exemplar=)``."""
    record = make_record(duration_ns=int(seconds * 1e9))
    exemplar = run_exemplar(record)
    assert exemplar is not None
    direct, public = CollectorRegistry(), CollectorRegistry()
    for registry, fast in ((direct, True), (public, False)):
        histogram = Histogram("d", "d", registry=registry, buckets=DURATION_BUCKETS_SECONDS)
        counter = Counter("r", "r", registry=registry)
        if fast:
            observe_with_exemplar(histogram, record.duration_seconds or 0.0, exemplar, 1.0)
            count_with_exemplar(counter, exemplar, 1.0)
        else:
            histogram.observe(record.duration_seconds or 0.0, exemplar)
            counter.inc(1, exemplar)

    def shown(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], Any]]:
        return [
            (
                s.name,
                s.labels,
                None if s.exemplar is None else (s.exemplar.labels, s.exemplar.value),
            )
            for m in registry.collect()
            for s in m.samples
            if not s.name.endswith("_created")
        ]

    assert shown(direct) == shown(public)
    assert any(e is not None for _, _, e in shown(direct))


def test_the_latest_run_of_a_bucket_is_its_exemplar() -> None:
    sink = PrometheusSink()
    first, second = make_record(), make_record()
    _finish(sink, first)
    _finish(sink, second)
    assert _exemplars(sink.registry, METRICS.duration.prometheus) == [_ids(second)]


@pytest.mark.parametrize(
    "ids",
    [
        {"trace_id": "", "span_id": ""},
        # Ids of unusual length (a foreign writer) could push the labels past the 128
        # characters prometheus_client allows; it would raise, and the batch be retried.
        {"trace_id": "f" * 100, "span_id": "e" * 60},
    ],
)
def test_a_record_without_usable_ids_is_counted_without_an_exemplar(ids: dict[str, str]) -> None:
    sink = PrometheusSink()
    record = make_record(trace_id=ids["trace_id"], span_id=ids["span_id"])
    _finish(sink, record)
    assert sink.registry.get_sample_value(
        METRICS.duration.prometheus + "_count",
        {"project": "proj", "pipeline": "sales", "node": "clean", "environment": "test"},
    ) == pytest.approx(1)
    assert _exemplars(sink.registry, METRICS.duration.prometheus) == []
    assert _exemplars(sink.registry, METRICS.runs.prometheus_base) == []


def _check_negotiation(url: str, run: dict[str, str]) -> None:
    """OpenMetrics (with the run's exemplar) when asked for, the classic text otherwise."""
    status, headers, body = get(url, "/metrics", OPENMETRICS)
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    found = {
        (m["trace"], m["span"])
        for line in text.splitlines()
        if line.startswith((METRICS.duration.prometheus + "_bucket", METRICS.runs.prometheus))
        for m in EXEMPLAR_RE.finditer(line)
    }
    assert (run[EXEMPLAR_TRACE_ID_LABEL], run[EXEMPLAR_SPAN_ID_LABEL]) in found
    status, headers, body = get(url, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"# {" not in body and b"# EOF" not in body
    assert METRICS.duration.prometheus.encode() + b"_bucket" in body


def test_in_process_metrics_negotiate_openmetrics_with_exemplars(
    fresh_observer: Configure,
) -> None:
    observer = fresh_observer(
        prometheus_port=0, handle_sigterm=False, mode="inline", registry=CollectorRegistry()
    )
    with oo.node_run("sales", "load") as run:
        ids = {EXEMPLAR_TRACE_ID_LABEL: str(run.trace_id), EXEMPLAR_SPAN_ID_LABEL: str(run.span_id)}
    assert oo.flush(10)
    _check_negotiation(f"http://127.0.0.1:{observer.prometheus_port}", ids)


def test_the_sidecar_s_metrics_carry_the_exemplars_of_spooled_runs(
    sqlite_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    sidecar = Sidecar(options(sqlite_url, spool), settings=settings(sqlite_url)).start()
    try:
        run_ids = run_pipeline(spool, 2)
        assert wait_until(lambda: set(run_ids) <= set(catalog_rows(sqlite_url)), 20)
        row = catalog_rows(sqlite_url)[run_ids[-1]]
        ids = {EXEMPLAR_TRACE_ID_LABEL: row.trace_id, EXEMPLAR_SPAN_ID_LABEL: row.span_id}
        assert wait_until(
            lambda: ids in _exemplars(sidecar.registry, METRICS.duration.prometheus), 20
        )
        _check_negotiation(sidecar.url, ids)
    finally:
        sidecar.stop(timeout=5)


def test_openmetrics_rendering_of_an_exemplar() -> None:
    """The exposition line as the docs show it."""
    sink = PrometheusSink()
    record = make_record(duration_ns=300_000_000)
    _finish(sink, record)
    text = openmetrics_latest(sink.registry).decode()  # type: ignore[no-untyped-call]
    line = next(line for line in text.splitlines() if 'le="0.5"' in line and "# {" in line)
    assert f'# {{span_id="{record.span_id}",trace_id="{record.trace_id}"}} 0.3' in line


# -- the real Prometheus ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(url: str, path: str, **params: Any) -> Any:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as resp:
        return json.load(resp)


@pytest.fixture
def prometheus_with_exemplars(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    """Start the real binary with exemplar storage scraping ``targets`` every second."""
    binary = require_binary("prometheus")
    servers: list[subprocess.Popen[str]] = []

    def start(targets: list[str]) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "odibi", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        port = _free_port()
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.terminate()
        server.wait(10)


def _stored_trace_ids(url: str, family: str) -> set[str]:
    now = time.time()
    try:
        body = _api(url, "/api/v1/query_exemplars", query=family, start=now - 600, end=now + 60)
    except OSError:
        return set()
    if body.get("status") != "success":
        return set()
    return {
        e["labels"][EXEMPLAR_TRACE_ID_LABEL]
        for series in body["data"]
        for e in series["exemplars"]
        if EXEMPLAR_TRACE_ID_LABEL in e["labels"]
    }


def test_prometheus_stores_the_exemplars_of_both_endpoints(
    fresh_observer: Configure,
    sqlite_url: str,
    tmp_path: Path,
    prometheus_with_exemplars: Callable[[list[str]], str],
) -> None:
    """The real Prometheus, scraping a process's own ``/metrics`` and a sidecar's, answers
    ``query_exemplars`` with the trace ids of the runs each of them recorded."""
    observer = fresh_observer(
        prometheus_port=0,
        handle_sigterm=False,
        mode="inline",
        registry=CollectorRegistry(),
        project="inproc",
    )
    with oo.node_run("sales", "load") as run:
        in_process = str(run.trace_id)
    assert oo.flush(10)
    spool = tmp_path / "spool"
    sidecar = Sidecar(options(sqlite_url, spool), settings=settings(sqlite_url)).start()
    try:
        run_ids = run_pipeline(spool, 1)
        assert wait_until(lambda: set(run_ids) <= set(catalog_rows(sqlite_url)), 20)
        spooled = catalog_rows(sqlite_url)[run_ids[0]].trace_id
        url = prometheus_with_exemplars(
            [f"127.0.0.1:{observer.prometheus_port}", sidecar.url.removeprefix("http://")]
        )
        want = {in_process, spooled}
        for family in (METRICS.duration.prometheus + "_bucket", METRICS.runs.prometheus):

            def stored(family: str = family) -> bool:
                return want <= _stored_trace_ids(url, family)

            assert wait_until(stored, 40), (family, _stored_trace_ids(url, family))
    finally:
        sidecar.stop(timeout=5)


# -- the deployment: compose, Grafana's data source, the duration panels -------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_the_compose_prometheus_stores_exemplars() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "--enable-feature=exemplar-storage" in compose["services"]["prometheus"]["command"]


def test_the_prometheus_data_source_links_exemplars_to_tempo() -> None:
    from odibi_observe.grafana.datasources import PROMETHEUS, TEMPO

    provisioned = yaml.safe_load(
        (ROOT / "dashboards/provisioning/datasources/odibi-observe.yml").read_text()
    )
    assert provisioned == provisioning.datasources_document()
    source = next(d for d in provisioned["datasources"] if d["uid"] == PROMETHEUS.uid)
    assert source["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": EXEMPLAR_TRACE_ID_LABEL, "datasourceUid": TEMPO.uid}
    ]


def test_every_duration_graph_shows_exemplars() -> None:
    """Each time-series target over the duration histogram asks for its exemplars (and the
    overview's and drill-down's p50/p95 graphs are among them)."""
    graphs = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets", []):
                if (
                    METRICS.duration.prometheus in target.get("expr", "")
                    and panel["type"] == "timeseries"
                    and not target.get("instant")
                ):
                    assert target.get("exemplar") is True, (path.name, panel["title"])
                    graphs.append((path.stem, panel["title"]))
    assert {d for d, _ in graphs} == {"odibi-pipeline-overview", "odibi-node-drilldown"}
