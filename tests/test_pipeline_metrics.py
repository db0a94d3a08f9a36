"""The OTel CI/CD pipeline-run metrics: ``cicd.pipeline.run.duration`` and
``cicd.pipeline.run.active``, per pipeline run (not per node run).

Real components: ``pipeline_run()`` and a real Odibi pipeline, the in-process ``/metrics``
server (``prometheus_port``) and a real sidecar scraped over HTTP, the OTel SDK with
``opentelemetry-exporter-prometheus`` for the OTel→Prometheus translation of the names, and the
real ``prometheus`` binary.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.semconv._incubating.attributes import cicd_attributes
from opentelemetry.semconv._incubating.metrics import cicd_metrics
from opentelemetry.semconv.attributes import error_attributes
from prometheus_client import CollectorRegistry, generate_latest

import odibi_observe as oo
from odibi_observe.conventions import (
    ERROR_TYPE_OTHER,
    METRICS,
    OVERFLOW_LABEL_VALUE,
    PIPELINE_METRICS,
    SELF_METRICS,
    RunStatus,
)
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sinks.otel import OtelSink
from odibi_observe.sinks.prometheus import PrometheusSink
from odibi_observe.testing import capture_runs
from tests.fault_helpers import ROOT, Sidecar, child_env, parse_metrics
from tests.helpers import wait_until
from tests.test_grafana_prometheus import Prometheus, _free_port, _ready
from tests.test_prometheus_rules import require_binary

DURATION = PIPELINE_METRICS.run_duration
ACTIVE = PIPELINE_METRICS.run_active
COUNT = f"{DURATION.prometheus}_count"
SUM = f"{DURATION.prometheus}_sum"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def base(pipeline: str = "sales", **extra: str) -> dict[str, str]:
    return {
        "project": "shop",
        "cicd_pipeline_name": pipeline,
        "environment": "test",
        "cicd_pipeline_run_state": cicd_attributes.CicdPipelineRunStateValues.EXECUTING.value,
        **extra,
    }


def value(samples: Samples, name: str, labels: dict[str, str]) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def pipeline_samples(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return parse_metrics(resp.read().decode())


# -- the names: the semantic-conventions package's ---------------------------------------------


def test_names_units_and_attributes_are_the_semantic_conventions_packages() -> None:
    meter = MeterProvider().get_meter("names")
    for metric, create in (
        (DURATION, cicd_metrics.create_cicd_pipeline_run_duration),
        (ACTIVE, cicd_metrics.create_cicd_pipeline_run_active),
    ):
        instrument: Any = create(meter)
        assert (metric.otel, metric.otel_unit) == (instrument.name, instrument.unit)
    # Required by the conventions on both: the pipeline's name and the run's state.
    required = (cicd_attributes.CICD_PIPELINE_NAME, cicd_attributes.CICD_PIPELINE_RUN_STATE)
    assert set(required) <= set(ACTIVE.attributes) < set(DURATION.attributes)
    # Conditionally required on the duration: the result, and error.type of a failed run.
    assert set(DURATION.attributes) - set(ACTIVE.attributes) == {
        cicd_attributes.CICD_PIPELINE_RESULT,
        error_attributes.ERROR_TYPE,
    }
    assert (DURATION.prometheus, ACTIVE.prometheus) == (
        "cicd_pipeline_run_duration_seconds",
        "cicd_pipeline_run_active",
    )


def _events_of_pipeline_runs() -> list[RunEvent]:
    """The PIPELINE events of two real pipeline runs (a success and a failure), as the bus
    carries them: each run's RUNNING record, then its terminal one."""
    with capture_runs() as runs:
        with oo.pipeline_run("sales", project="shop"):
            pass
        with contextlib.suppress(ValueError), oo.pipeline_run("sales", project="shop"):
            raise ValueError("bad input")
    events = [e for e in runs.events if e.kind is EventKind.PIPELINE]
    assert [e.record.status for e in events] == [
        RunStatus.RUNNING,
        RunStatus.SUCCESS,
        RunStatus.RUNNING,
        RunStatus.FAILURE,
    ]
    return [RunEvent(e.kind, e.record.replace(environment="test")) for e in events]


def test_otel_instruments_translate_to_the_prometheus_sinks_series() -> None:
    """The OTel instruments, through the standard OTel→Prometheus exporter, give the very
    families and labels the Prometheus sink exports, with the same values."""
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    otel = OtelSink(meter_provider=provider, install_global=False)
    assert EventKind.PIPELINE in otel.kinds
    prom = PrometheusSink(CollectorRegistry())
    events = _events_of_pipeline_runs()
    for sink in (otel, prom):
        sink.export(events)

    def ours(samples: Samples) -> Samples:
        return {
            (name, tuple((k, v) for k, v in labels if not k.startswith("otel_scope_"))): v
            for (name, labels), v in samples.items()
            if name.startswith("cicd_pipeline_run_") and not name.endswith("_created")
        }

    translated = ours(parse_metrics(generate_latest(registry).decode()))
    exported = ours(parse_metrics(generate_latest(prom.registry).decode()))
    # An attribute a point lacks (error.type of a success) is the empty label on both sides.
    assert translated.keys() == exported.keys()
    for key, got in translated.items():
        assert got == pytest.approx(exported[key]), key
    ok = base(cicd_pipeline_result="success", error_type="")
    bad = base(cicd_pipeline_result="failure", error_type="ValueError")
    assert value(translated, COUNT, ok) == value(translated, COUNT, bad) == 1
    assert value(translated, ACTIVE.prometheus, base()) == 0


def test_an_otel_sink_without_metrics_does_not_take_pipeline_runs(tmp_path: Path) -> None:
    """No meter, no instrument: the bus does not even queue pipeline runs for the sink."""
    sink = OtelSink(traces_file=str(tmp_path / "t.jsonl"), metrics=False, install_global=False)
    try:
        assert sink.kinds == frozenset({EventKind.FINISHED})
        sink.export(_events_of_pipeline_runs())  # and given them anyway, ignores them
        assert not (tmp_path / "t.jsonl").exists() or not (tmp_path / "t.jsonl").read_text()
    finally:
        sink.shutdown()


# -- the Prometheus sink: dedupe, order, cardinality ---------------------------------------------


def test_duplicate_and_out_of_order_deliveries_count_once() -> None:
    sink = PrometheusSink(CollectorRegistry())
    start, end, *_ = _events_of_pipeline_runs()
    sink.export([start, start])
    assert sink.registry.get_sample_value(ACTIVE.prometheus, base()) == 1
    sink.export([end, start, end])  # redelivered, and a start replayed after its end
    sink.export([end])
    ok = base(cicd_pipeline_result="success", error_type="")
    assert sink.registry.get_sample_value(COUNT, ok) == 1
    assert sink.registry.get_sample_value(ACTIVE.prometheus, base()) == 0
    assert sink.registry.get_sample_value(SUM, ok) == pytest.approx(end.record.duration_seconds)
    # An end delivered before its start: the late start must not leave the run active.
    other = PrometheusSink(CollectorRegistry())
    other.export([end])
    other.export([start])
    assert other.registry.get_sample_value(ACTIVE.prometheus, base()) == 0
    assert other.registry.get_sample_value(COUNT, ok) == 1


def test_pipeline_and_node_run_ids_never_shadow_each_other() -> None:
    """A pipeline run id equal to a node run's id (any string may be given) still counts."""
    sink = PrometheusSink(CollectorRegistry())
    start, end, *_ = _events_of_pipeline_runs()
    node = end.record.replace(node="load", pipeline_run_id=end.record.run_id)
    sink.export([RunEvent(EventKind.FINISHED, node), start, end])
    assert (
        sink.registry.get_sample_value(COUNT, base(cicd_pipeline_result="success", error_type=""))
        == 1
    )
    labels = {"project": "shop", "pipeline": "sales", "node": "load", "environment": "test"}
    assert sink.registry.get_sample_value(METRICS.runs.prometheus, {**labels, "status": "SUCCESS"})


def test_pipelines_beyond_the_series_limit_fold_into_overflow() -> None:
    monitor_registry = CollectorRegistry()
    from odibi_observe._selfmetrics import SelfMonitor

    sink = PrometheusSink(CollectorRegistry(), monitor=SelfMonitor(monitor_registry), max_series=2)
    _, end, *_ = _events_of_pipeline_runs()
    for i in range(4):
        record = end.record.replace(run_id=f"p{i}", pipeline=f"pipe{i}")
        sink.export([RunEvent(EventKind.PIPELINE, record)])
    # The active and the duration series of pipe0 fill the limit of 2.
    samples = pipeline_samples(parse_metrics(generate_latest(sink.registry).decode()), COUNT)
    names = sorted(dict(labels)["cicd_pipeline_name"] for labels in samples)
    assert names == [OVERFLOW_LABEL_VALUE, "pipe0"]
    folded = base(OVERFLOW_LABEL_VALUE, cicd_pipeline_result="success", error_type="")
    assert sink.registry.get_sample_value(COUNT, folded) == 3
    overflow = SELF_METRICS.label_overflow
    assert monitor_registry.get_sample_value(
        overflow.prometheus, {"metric": DURATION.prometheus}
    ) == pytest.approx(3)


# -- real pipeline runs, scraped over HTTP -----------------------------------------------------


def _fails_a_node() -> None:
    with contextlib.suppress(RuntimeError), oo.node_run("load"):
        raise RuntimeError("node failed")


def _raises(exc: BaseException) -> Callable[[], None]:
    def body() -> None:
        raise exc

    return body


OUTCOMES: dict[str, tuple[Callable[[], None], type[BaseException] | None, str, str]] = {
    "success": (lambda: None, None, "success", ""),
    "raises": (_raises(ValueError("bad")), ValueError, "failure", "ValueError"),
    "node failed": (_fails_a_node, None, "failure", ERROR_TYPE_OTHER),
    "interrupted": (_raises(KeyboardInterrupt()), KeyboardInterrupt, "cancellation", ""),
}


@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_a_pipeline_run_is_active_while_it_runs_then_observed_with_its_result(
    outcome: str,
) -> None:
    body, raised, result, error_type = OUTCOMES[outcome]
    observer = oo.configure(
        project="shop", environment="test", prometheus_port=0, handle_sigterm=False
    )
    url = f"http://127.0.0.1:{observer.prometheus_port}/metrics"
    try:
        raising: contextlib.AbstractContextManager[Any] = (
            pytest.raises(raised) if raised else contextlib.nullcontext()
        )
        with raising, oo.pipeline_run("sales"):
            assert oo.flush(10)
            during = scrape(url)
            body()
        assert oo.flush(10)
        after = scrape(url)
    finally:
        oo.shutdown()
    assert value(during, ACTIVE.prometheus, base()) == 1
    assert not pipeline_samples(during, COUNT)
    assert value(after, ACTIVE.prometheus, base()) == 0
    ended = base(cicd_pipeline_result=result, error_type=error_type)
    assert pipeline_samples(after, COUNT) == {tuple(sorted(ended.items())): 1.0}
    assert 0 < (value(after, SUM, ended) or 0) < 10


#: A pipeline process in sidecar mode: starts a pipeline run, says so, waits for a line on
#: stdin, then ends it by raising (a failure).
SIDECAR_PIPELINE = """
import sys
import odibi_observe as oo
oo.configure(project="shop", environment="test", handle_sigterm=False)
try:
    with oo.pipeline_run("sales"):
        print("started", flush=True)
        sys.stdin.readline()
        raise TimeoutError("upstream")
except TimeoutError:
    pass
oo.shutdown()
"""


def test_the_sidecar_serves_the_pipeline_metrics_from_the_spool(
    tmp_path: Path, pg_url: str
) -> None:
    spool = tmp_path / "spool"
    sidecar = Sidecar(pg_url, spool, log=tmp_path / "sidecar.log").start()
    env = child_env(ODIBI_OBSERVE_MODE="sidecar", ODIBI_OBSERVE_SPOOL_DIR=str(spool))
    proc = subprocess.Popen(
        [sys.executable, "-c", SIDECAR_PIPELINE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "started"
        assert wait_until(
            lambda: value(sidecar.metrics(), ACTIVE.prometheus, base()) == 1, timeout=30
        ), (tmp_path / "sidecar.log").read_text()[-3000:]
        proc.stdin.write("end\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0
        ended = base(cicd_pipeline_result="failure", error_type="TimeoutError")
        assert wait_until(lambda: value(sidecar.metrics(), COUNT, ended) == 1, timeout=30)
        samples = sidecar.metrics()
        assert value(samples, ACTIVE.prometheus, base()) == 0
        assert list(pipeline_samples(samples, COUNT).values()) == [1.0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        sidecar.stop()


# -- a real Odibi pipeline ---------------------------------------------------------------------


def test_a_real_odibi_pipeline_run_is_observed_once_with_its_result(tmp_path: Path) -> None:
    pytest.importorskip("odibi", reason="the Odibi integration needs the 'odibi' extra")
    pytest.importorskip("deltalake", reason="reading Odibi's tables needs the 'odibi' extra")
    from tests.test_odibi_integration import make_project
    from tests.test_odibi_plan import FAIL_FAST_NODES, run_project

    good = [n for n in FAIL_FAST_NODES if n["name"] not in ("bad", "after_bad")]
    ok = run_project(make_project(tmp_path / "good", good).parent)
    assert ok.error is None
    bad = run_project(
        make_project(tmp_path / "bad", FAIL_FAST_NODES).parent, parallel=True, on_error="fail_fast"
    )
    assert isinstance(bad.error, RuntimeError)
    for outcome, result, error_type in ((ok, "success", ""), (bad, "failure", "RuntimeError")):
        samples = parse_metrics(generate_latest(outcome.registry).decode())
        ended = base(cicd_pipeline_result=result, error_type=error_type)
        assert pipeline_samples(samples, COUNT) == {tuple(sorted(ended.items())): 1.0}
        assert value(samples, ACTIVE.prometheus, base()) == 0


# -- the real Prometheus server ----------------------------------------------------------------

#: A pipeline process serving /metrics: one pipeline run ended, one still running.
SERVED_PIPELINES = """
import sys
import odibi_observe as oo
observer = oo.configure(project="shop", environment="test", prometheus_port=0,
                        handle_sigterm=False)
with oo.pipeline_run("nightly"):
    pass
with oo.pipeline_run("sales"):
    oo.flush(10)
    print(observer.prometheus_port, flush=True)
    sys.stdin.readline()
oo.shutdown()
"""


@pytest.fixture
def served_pipelines() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVED_PIPELINES],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_prometheus_scrapes_and_queries_the_pipeline_metrics(
    tmp_path: Path, served_pipelines: int
) -> None:
    binary = require_binary("prometheus")
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "pipelines",
                        "static_configs": [{"targets": [f"127.0.0.1:{served_pipelines}"]}],
                    }
                ],
            }
        )
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        assert wait_until(lambda: _ready(prom), timeout=30)
        active = f"sum by (cicd_pipeline_name) ({ACTIVE.prometheus})"
        assert wait_until(lambda: len(prom.query(active)) == 2, timeout=30)
        by_name = {r["metric"]["cicd_pipeline_name"]: r["value"][1] for r in prom.query(active)}
        assert by_name == {"sales": "1", "nightly": "0"}
        done = f"sum by (cicd_pipeline_name, cicd_pipeline_result) ({COUNT})"
        [row] = prom.query(done)
        assert row["metric"] == {"cicd_pipeline_name": "nightly", "cicd_pipeline_result": "success"}
        assert row["value"][1] == "1"
        p95 = f"histogram_quantile(0.95, sum by (le) ({DURATION.prometheus}_bucket))"
        assert float(prom.query(p95)[0]["value"][1]) > 0
    finally:
        server.terminate()
        server.wait(10)
