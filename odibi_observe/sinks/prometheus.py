"""Prometheus sink: node-run counters, rows, duration histogram and in-flight gauge, the
resources of each run (peak memory and CPU time histograms, the memory limit gauge), and the
OTel CI/CD pipeline-run metrics (``cicd_pipeline_run_duration_seconds``,
``cicd_pipeline_run_active``) from each pipeline run's record (``EventKind.PIPELINE``).

Names, labels and buckets come from :mod:`odibi_observe.conventions`. Two properties matter for
Prometheus specifically:

* **Bounded cardinality.** ``run_id`` is never a label, and the number of distinct
  (project, pipeline, node, environment) series is capped at ``max_series``. A new combination
  past the cap is folded into ``node="__overflow__"`` (the other labels kept, so totals per
  pipeline stay right) and counted in ``odibi_observe_label_overflow_total{metric}``.
* **At-least-once safe.** Counters are not idempotent, so terminal events are de-duplicated by
  ``run_id`` (a bounded LRU of recent run ids): a retried or replayed batch counts once.
  Pipeline runs have their own LRUs (and their own set of series, up to ``max_series`` too,
  folding ``cicd_pipeline_name`` and ``error_type`` into the overflow value), so a pipeline run id
  never shadows a node run's, and a pipeline's start and end move its active gauge once each.

**Exemplars.** A run's duration observation and its runs-counter increment carry the run's
``trace_id``/``span_id`` as an exemplar (label names from the conventions), so a point on a
duration graph opens that run's trace. The exemplar dict is built once per record and shared
by both samples. prometheus_client renders exemplars in the OpenMetrics format only, which
both ``/metrics`` endpoints serve when the scraper asks for it (``Accept:
application/openmetrics-text``, what Prometheus sends with ``--enable-feature=exemplar-storage``).

The registry is injectable (one per :class:`~odibi_observe.Observer`, one per test), and
:func:`serve` exposes it on 127.0.0.1 by default.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Final, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.samples import Exemplar

from odibi_observe._selfmetrics import SelfMonitor
from odibi_observe._textsafe import encodable_text
from odibi_observe.conventions import (
    CICD_PIPELINE_NAME,
    DURATION_BUCKETS_SECONDS,
    ERROR_TYPE_ATTRIBUTE,
    EXEMPLAR_SPAN_ID_LABEL,
    EXEMPLAR_TRACE_ID_LABEL,
    FIELDS,
    METRICS,
    OVERFLOW_LABEL_VALUE,
    PEAK_RSS_BUCKETS_BYTES,
    PHASE_METRICS,
    PIPELINE_METRICS,
    RESOURCE_METRICS,
    Metric,
    MetricKind,
    RunStatus,
    SemconvMetric,
    pipeline_run_attributes,
    prometheus_label,
)
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.base import RecentKeys, Sink

_NODE_LABELS = METRICS.rows.labels
_NODE_INDEX = _NODE_LABELS.index(FIELDS.node.label or "node")
#: The labels a series past the limit folds into the overflow value: the node of a node
#: run's series; the pipeline and the error type of a pipeline run's.
_NODE_FOLD: Final = (_NODE_INDEX,)
_PIPELINE_FOLD_LABELS: Final = tuple(
    prometheus_label(a) for a in (CICD_PIPELINE_NAME, ERROR_TYPE_ATTRIBUTE)
)
_MAX_LABEL_VALUE = 128
#: Lengths of well-formed hex ids. An exemplar's labels may hold 128 characters in all
#: (prometheus_client raises past that): ids of these lengths always fit, others are left out.
_TRACE_ID_LENGTH = 32
_SPAN_ID_LENGTH = 16


def run_exemplar(record: RunRecord) -> dict[str, str] | None:
    """The exemplar of ``record``'s samples: its span, or None when it has no usable ids (a
    record without a span, or ids whose length could push the labels past the limit)."""
    trace_id, span_id = record.trace_id, record.span_id
    if len(trace_id) != _TRACE_ID_LENGTH or len(span_id) != _SPAN_ID_LENGTH:
        return None
    return {EXEMPLAR_TRACE_ID_LABEL: trace_id, EXEMPLAR_SPAN_ID_LABEL: span_id}


def count_with_exemplar(counter: Counter, exemplar: dict[str, str] | None, now: float) -> None:
    """``counter.inc()``, with ``exemplar`` attached.

    ``inc(exemplar=...)`` validates the label names and lengths on every call and reads the
    clock again: 2.6 µs a run against 0.6 µs for the increment, measured here. Our exemplar's
    names are constants and its values fixed-length ids (:func:`run_exemplar`), so it is set
    on the child's value directly, with the record's one timestamp; a prometheus_client
    whose children lack that value falls back to the public call
    (``tests/test_exemplars.py`` compares both paths' output).
    """
    counter.inc()
    if exemplar is not None:
        value = getattr(counter, "_value", None)
        if hasattr(value, "set_exemplar"):
            value.set_exemplar(Exemplar(exemplar, 1, now))  # type: ignore[union-attr]
        else:  # pragma: no cover - another prometheus_client
            counter.inc(0, exemplar)


def observe_with_exemplar(
    histogram: Histogram, seconds: float, exemplar: dict[str, str] | None, now: float
) -> None:
    """``histogram.observe(seconds)``, with ``exemplar`` on the bucket ``seconds`` falls in
    (the first upper bound not below it, as ``observe`` counts it); see
    :func:`count_with_exemplar` for why not ``observe(exemplar=...)`` (4.5 µs a run)."""
    histogram.observe(seconds)
    if exemplar is None:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    if bounds is None or buckets is None:
        histogram.observe(0, exemplar)  # pragma: no cover - another prometheus_client
        return
    buckets[bisect_left(bounds, seconds)].set_exemplar(Exemplar(exemplar, seconds, now))


#: The families this sink exports, in exposition order.
_EXPORTED: Final = (
    METRICS.runs,
    METRICS.rows,
    METRICS.duration,
    METRICS.running,
    RESOURCE_METRICS.peak_rss,
    RESOURCE_METRICS.cpu,
    RESOURCE_METRICS.memory_limit,
    PHASE_METRICS.uncommitted_writes,
    *PIPELINE_METRICS,
)
#: The buckets of each histogram, by metric key.
_BUCKETS: Final = {
    METRICS.duration.key: DURATION_BUCKETS_SECONDS,
    RESOURCE_METRICS.peak_rss.key: PEAK_RSS_BUCKETS_BYTES,
    RESOURCE_METRICS.cpu.key: DURATION_BUCKETS_SECONDS,
    PIPELINE_METRICS.run_duration.key: DURATION_BUCKETS_SECONDS,
}


def _family(metric: Metric, registry: CollectorRegistry) -> MetricWrapperBase:
    """``metric``'s family in ``registry``: named, described and labelled as the conventions
    say, one builder for every kind (a histogram takes its buckets from ``_BUCKETS``)."""
    args = (metric.prometheus_base, metric.description, metric.labels)
    if metric.kind is MetricKind.HISTOGRAM:
        return Histogram(*args, registry=registry, buckets=_BUCKETS[metric.key])
    return (Counter if metric.kind is MetricKind.COUNTER else Gauge)(*args, registry=registry)


class PrometheusSink(Sink):
    """Record node runs as Prometheus metrics in ``registry``."""

    name = "prometheus"
    scheme = "prometheus"  # its key in odibi_observe.extensions
    coalesces_starts = True

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        monitor: SelfMonitor | None = None,
        max_series: int = 2_000,
        dedupe_capacity: int = 100_000,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.monitor = monitor
        self.max_series = max_series
        self.families = {m.key: _family(m, self.registry) for m in _EXPORTED}
        self.runs = cast(Counter, self.families[METRICS.runs.key])
        self._series: set[tuple[str, ...]] = set()
        self._known: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._by_labels: dict[tuple[str, ...], _Series] = {}
        self._finished = RecentKeys(dedupe_capacity)
        self._started = RecentKeys(dedupe_capacity)
        # Pipeline runs: their own series (up to max_series too) and their own run ids.
        self._pipeline_series: set[tuple[str, ...]] = set()
        self._pipeline_known: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._pipelines_finished = RecentKeys(dedupe_capacity)
        self._pipelines_started = RecentKeys(dedupe_capacity)
        self._lock = threading.Lock()

    #: Heartbeats change no metric; not queueing them saves a slot per run per interval.
    #: ``PIPELINE``: a pipeline run's start and end (once per pipeline run, not per node).
    kinds = frozenset({EventKind.STARTED, EventKind.FINISHED, EventKind.PIPELINE})

    def export(self, events: Sequence[RunEvent]) -> None:
        with self._lock:
            for event in events:
                if event.kind is EventKind.STARTED:
                    self._on_start(event.record)
                elif event.kind is EventKind.FINISHED:
                    self._on_finish(event.record)
                elif event.kind is EventKind.PIPELINE:
                    self._on_pipeline(event.record)

    def _node_labels(self, record: RunRecord, metric: str) -> tuple[str, ...]:
        """Label values for ``record``, clamped and folded into the overflow series if needed."""
        raw = record.label_values(_NODE_LABELS)
        known = self._known.get(raw)
        if known is not None:  # the common case: a series seen before
            return known
        return self._admit(raw, metric, self._series, self._known, _NODE_FOLD)

    def _admit(
        self,
        raw: tuple[str, ...],
        metric: str,
        series: set[tuple[str, ...]],
        known: dict[tuple[str, ...], tuple[str, ...]],
        fold: tuple[int, ...],
    ) -> tuple[str, ...]:
        """The label values of a series not seen before: clamped, kept in ``series`` while
        there is room, else with the ``fold`` labels set to the overflow value (counted)."""
        # Escaped before cut: a label value the exposition format cannot encode would fail
        # every /metrics scrape (see odibi_observe._textsafe).
        values = tuple(encodable_text(v)[:_MAX_LABEL_VALUE] for v in raw)
        if values in series or len(series) < self.max_series:
            series.add(values)
            known[raw] = values  # bounded: at most one raw form per kept series, mostly
            return values
        if self.monitor is not None:
            self.monitor.overflow(metric)
        folded = list(values)
        for index in fold:
            folded[index] = OVERFLOW_LABEL_VALUE
        return tuple(folded)

    def _children(self, labels: tuple[str, ...]) -> _Series:
        """The metric children of one label set, looked up once (``labels()`` is not cheap).

        The run counters of every terminal status exist from the first run on, at 0, so that
        ``rate(odibi_node_runs_total{status="FAILURE"}[5m])`` is 0 rather than absent (and so
        does ``odibi_node_uncommitted_writes_total``, whose first increase an alert must see);
        rows and durations appear with the first run that has them.
        """
        series = self._by_labels.get(labels)
        if series is None:
            series = self._by_labels[labels] = _Series(
                runs={
                    status: self.runs.labels(*labels, status.value)
                    for status in RunStatus
                    if status.is_terminal
                },
                labels=labels,
                sink=self,
            )
            series.uncommitted_writes  # noqa: B018 - created at 0 with the series (see above)
        return series

    def _on_start(self, record: RunRecord) -> None:
        if record.run_id in self._finished:
            return  # a start delivered after its end (out of order) must not count as running
        if record.status is RunStatus.RUNNING and self._started.add(record.run_id):
            labels = self._node_labels(record, METRICS.running.prometheus)
            self._children(labels).running.inc()

    def _on_finish(self, record: RunRecord) -> None:
        if not self._finished.add(record.run_id):
            return  # at-least-once delivery: this run was already counted
        series = self._children(self._node_labels(record, METRICS.runs.prometheus))
        if self._started.discard(record.run_id):
            series.running.dec()
        exemplar = run_exemplar(record)  # one dict and one timestamp for both samples
        now = time.time()
        count_with_exemplar(series.runs[record.status], exemplar, now)
        if record.writes and record.uncommitted_write:
            series.uncommitted_writes.inc()
        if record.status is _SKIPPED:
            return  # never started: no rows, no duration, no resources to observe
        if record.rows_processed is not None:
            series.rows.inc(record.rows_processed)
        seconds = record.duration_seconds
        if seconds is not None:
            observe_with_exemplar(series.duration, seconds, exemplar, now)
        if record.peak_rss_bytes is not None:
            series.peak_rss.observe(record.peak_rss_bytes)
        if record.cpu_seconds is not None:
            series.cpu.observe(record.cpu_seconds)
        limit = record.memory_limit_bytes
        if limit is not None and limit != series.limit_seen:
            # The limit is read once per process: set the gauge when a series' value changes,
            # not on every run (a sidecar sees many processes' records for one series).
            series.limit_seen = limit
            series.memory_limit.set(limit)

    def _on_pipeline(self, record: RunRecord) -> None:
        """A pipeline run's start (``RUNNING``: active +1) or end (active -1, and its
        duration observed under its result). Each at most once per pipeline run id, and a
        start arriving after its end is ignored, as for node runs."""
        active = cast(Gauge, self._pipeline_child(PIPELINE_METRICS.run_active, record))
        run_id = record.run_id
        if record.status is RunStatus.RUNNING:
            if run_id not in self._pipelines_finished and self._pipelines_started.add(run_id):
                active.inc()
            return
        if not self._pipelines_finished.add(run_id):
            return  # at-least-once delivery: this pipeline run was already counted
        if self._pipelines_started.discard(run_id):
            active.dec()
        seconds = record.duration_seconds
        if seconds is not None and record.status is not _SKIPPED:
            duration = cast(Histogram, self._pipeline_child(PIPELINE_METRICS.run_duration, record))
            observe_with_exemplar(duration, seconds, run_exemplar(record), time.time())

    def _pipeline_child(self, metric: SemconvMetric, record: RunRecord) -> MetricWrapperBase:
        """``metric``'s child for ``record``'s attributes (an absent one is the empty label
        value, which Prometheus treats as no label)."""
        attributes = pipeline_run_attributes(
            project=record.project,
            pipeline=record.pipeline,
            environment=record.environment,
            status=record.status,
            error_type=record.error_type,
        )
        raw = tuple(attributes.get(a, "") for a in metric.attributes)
        values = self._pipeline_known.get(raw)
        if values is None:
            # An error type is folded, never the empty one of a run that did not fail.
            fold = tuple(
                i for i, n in enumerate(metric.labels) if n in _PIPELINE_FOLD_LABELS and raw[i]
            )
            values = self._admit(
                raw, metric.prometheus, self._pipeline_series, self._pipeline_known, fold
            )
        return self.families[metric.key].labels(*values)


_SKIPPED: Final = RunStatus.SKIPPED


class _Series:
    """Children of one label set; rows, duration, running and the resource metrics are
    created on first use (a series never given a resource figure exposes none).

    Each such child is an attribute named like its metric's key: the first read misses, so
    :meth:`__getattr__` creates it from the sink's family of that key and keeps it as a plain
    instance attribute, which every later read finds directly (no property call per event).
    """

    rows: Counter
    duration: Histogram
    running: Gauge
    peak_rss: Histogram
    cpu: Histogram
    memory_limit: Gauge
    uncommitted_writes: Counter

    def __init__(
        self,
        runs: dict[RunStatus, Counter],
        labels: tuple[str, ...],
        sink: PrometheusSink,
    ) -> None:
        self.runs, self.labels, self.sink = runs, labels, sink
        self.limit_seen: int | None = None

    def __getattr__(self, key: str) -> MetricWrapperBase:
        family = self.sink.families.get(key)
        if family is None:
            raise AttributeError(key)
        child = family.labels(*self.labels)
        setattr(self, key, child)
        return child


class MetricsServer:
    """``registry`` served at ``http://host:port/metrics`` (port 0: any free port).

    Stopped by :meth:`close`, so that re-configuring a process frees the port and never leaves
    an old registry answering scrapes.
    """

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
