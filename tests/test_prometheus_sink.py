"""Prometheus sink: names and labels from the conventions, cardinality cap, de-dup, endpoint."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from odibi_observe._selfmetrics import SelfMonitor
from odibi_observe.conventions import (
    METRICS,
    OVERFLOW_LABEL_VALUE,
    PEAK_RSS_BUCKETS_BYTES,
    RESOURCE_METRICS,
    RunStatus,
)
from odibi_observe.sinks.prometheus import MetricsServer, PrometheusSink
from tests.helpers import finished, make_record, started


def _labels(record, *extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    names = METRICS.runs.labels if extra else METRICS.rows.labels
    return dict(zip(names, record.label_values(names), strict=True))


def test_finished_run_updates_every_metric_once_even_if_replayed() -> None:
    sink = PrometheusSink(CollectorRegistry())
    rec = make_record(rows=42, duration_ns=1_500_000_000)
    running = rec.finished(status=RunStatus.RUNNING, ended_ns=None, rows_processed=None)
    sink.export([started(running)])
    assert sink.registry.get_sample_value(METRICS.running.prometheus, _labels(rec)) == 1
    sink.export([finished(rec), finished(rec)])  # at-least-once delivery
    sink.export([finished(rec)])
    reg = sink.registry
    assert reg.get_sample_value(METRICS.runs.prometheus, _labels(rec, "status")) == 1
    assert reg.get_sample_value(METRICS.rows.prometheus, _labels(rec)) == 42
    assert reg.get_sample_value(METRICS.duration.prometheus + "_sum", _labels(rec)) == 1.5
    assert reg.get_sample_value(METRICS.duration.prometheus + "_count", _labels(rec)) == 1
    assert reg.get_sample_value(METRICS.running.prometheus, _labels(rec)) == 0


def test_unknown_rows_are_not_counted_as_zero_rows() -> None:
    sink = PrometheusSink(CollectorRegistry())
    rec = make_record(rows=None)
    sink.export([finished(rec)])
    assert sink.registry.get_sample_value(METRICS.rows.prometheus, _labels(rec)) is None
    assert sink.registry.get_sample_value(METRICS.runs.prometheus, _labels(rec, "s")) == 1


def test_run_id_is_never_a_label_and_buckets_span_batch_durations() -> None:
    sink = PrometheusSink(CollectorRegistry())
    sink.export([finished(make_record())])
    from prometheus_client import generate_latest

    text = generate_latest(sink.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for family in families.values():
        for sample in family.samples:
            assert "run_id" not in sample.labels
    buckets = [
        float(s.labels["le"])
        for s in families[METRICS.duration.prometheus].samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    ]
    assert min(buckets) == 0.05 and max(buckets) == 6 * 3600


def test_series_beyond_the_limit_fold_into_overflow_and_are_counted() -> None:
    monitor = SelfMonitor(CollectorRegistry())
    sink = PrometheusSink(monitor.registry, monitor=monitor, max_series=3)
    recs = [make_record(node=f"n{i}") for i in range(10)]
    sink.export([finished(r) for r in recs])
    reg = sink.registry
    kept = [r for r in recs if reg.get_sample_value(METRICS.runs.prometheus, _labels(r, "status"))]
    assert len(kept) == 3
    overflow = dict(_labels(recs[-1], "status"), node=OVERFLOW_LABEL_VALUE)
    assert reg.get_sample_value(METRICS.runs.prometheus, overflow) == 7
    assert (
        reg.get_sample_value(
            "odibi_observe_label_overflow_total", {"metric": METRICS.runs.prometheus}
        )
        == 7
    )


def test_metrics_endpoint_serves_on_loopback() -> None:
    sink = PrometheusSink(CollectorRegistry())
    sink.export([finished(make_record(node="served"))])
    server = MetricsServer(sink.registry, 0)
    assert server.host == "127.0.0.1"
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read().decode()
    assert 'node="served"' in body
    assert METRICS.runs.prometheus in body
    server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_label_values_are_plain_strings_in_label_order() -> None:
    rec = make_record(pipeline="p", node="n")
    values = rec.label_values(METRICS.runs.labels)
    assert values == ("proj", "p", "n", "test", "SUCCESS")
    assert all(type(v) is str for v in values)
    assert rec.label_values(("status",)) == ("SUCCESS",)
    assert rec.label_values(("node",)) == ("n",)


MIB = 1024 * 1024


def _scrape(sink: PrometheusSink) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """The sink's registry as a scrape sees it: family name -> (sample name, labels, value)."""
    from prometheus_client import generate_latest

    text = generate_latest(sink.registry).decode()
    return {
        f.name: [(s.name, dict(s.labels), s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def test_resources_of_finished_runs_are_histograms_and_the_limit_a_gauge() -> None:
    sink = PrometheusSink(CollectorRegistry())
    first = make_record(peak_rss_bytes=100 * MIB, cpu_seconds=2.0, memory_limit_bytes=512 * MIB)
    second = make_record(peak_rss_bytes=300 * MIB, cpu_seconds=0.5, memory_limit_bytes=512 * MIB)
    sink.export([finished(first), finished(second), finished(second)])  # a replay counts once
    families = _scrape(sink)
    labels = _labels(first)
    peak = RESOURCE_METRICS.peak_rss.prometheus
    by_name = {name: value for name, lab, value in families[peak] if lab.get("le") is None}
    assert by_name[peak + "_count"] == 2
    assert by_name[peak + "_sum"] == 400 * MIB
    buckets = {
        float(lab["le"]): value
        for name, lab, value in families[peak]
        if name.endswith("_bucket") and lab["le"] != "+Inf"
    }
    assert tuple(sorted(buckets)) == PEAK_RSS_BUCKETS_BYTES
    assert buckets[128 * MIB] == 1 and buckets[512 * MIB] == 2
    cpu = RESOURCE_METRICS.cpu.prometheus
    reg = sink.registry
    assert reg.get_sample_value(cpu + "_sum", labels) == 2.5
    assert reg.get_sample_value(cpu + "_count", labels) == 2
    assert reg.get_sample_value(RESOURCE_METRICS.memory_limit.prometheus, labels) == 512 * MIB


def test_runs_without_resources_expose_no_resource_series() -> None:
    """A run from an older client (no resource fields) is not a 0-byte run."""
    sink = PrometheusSink(CollectorRegistry())
    rec = make_record()
    sink.export([finished(rec)])
    reg = sink.registry
    assert (
        reg.get_sample_value(RESOURCE_METRICS.peak_rss.prometheus + "_count", _labels(rec)) is None
    )
    assert reg.get_sample_value(RESOURCE_METRICS.cpu.prometheus + "_count", _labels(rec)) is None
    assert reg.get_sample_value(RESOURCE_METRICS.memory_limit.prometheus, _labels(rec)) is None


def test_memory_limit_gauge_follows_a_changed_limit() -> None:
    """A sidecar sees processes of one node restarted under a new limit: the gauge moves."""
    sink = PrometheusSink(CollectorRegistry())
    old = make_record(memory_limit_bytes=256 * MIB)
    new = make_record(memory_limit_bytes=1024 * MIB)
    sink.export([finished(old)])
    gauge = RESOURCE_METRICS.memory_limit.prometheus
    assert sink.registry.get_sample_value(gauge, _labels(old)) == 256 * MIB
    sink.export([finished(new)])
    assert sink.registry.get_sample_value(gauge, _labels(new)) == 1024 * MIB
