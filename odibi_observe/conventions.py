"""The conventions table: the single source of every name odibi-observe writes.

A node run is recorded in three backends that each have their own naming rules: a SQL catalog
(``meta_runs`` columns), OpenTelemetry (span attributes and metric instruments) and Prometheus
(metric names and labels). When each backend spells its own names they drift apart and the
records can no longer be joined or compared. So every name lives here, once, as data:

* :data:`FIELDS` — one :class:`Field` per recorded fact (run id, status, rows, ...), with the
  catalog column, span attribute and Prometheus label that carry it;
* :data:`METRICS` — one :class:`Metric` per instrument, with its OpenTelemetry name and unit and
  the Prometheus name those translate to under the standard OTel→Prometheus rules (the test
  suite proves the translation with ``opentelemetry-exporter-prometheus``);
* :data:`SELF_METRICS` — the metrics odibi-observe keeps about itself (sink errors, drops).

Sinks, dashboards and docs read these objects; none of them spells a name itself. Rendering the
table (``odibi-observe conventions``) is done by :func:`render_table`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Final, Generic, NamedTuple, TypeVar

from opentelemetry.semconv._incubating.attributes import cicd_attributes as _cicd
from opentelemetry.semconv._incubating.metrics import cicd_metrics as _cicd_metrics
from opentelemetry.semconv.attributes import error_attributes as _error
from opentelemetry.semconv.attributes import exception_attributes as _exception
from opentelemetry.semconv.attributes.service_attributes import (
    SERVICE_NAME as _SEMCONV_SERVICE_NAME,
)

_Entry = TypeVar("_Entry")


class _Table(Generic[_Entry]):
    """A table of names (fields or metrics) as a frozen dataclass: iterating it yields its
    entries in declaration order, the order the docs and ``odibi-observe conventions`` print.

    One base for every table, so that a table appended later iterates the same way without
    copying the method (its attributes stay plain dataclass fields: ``FIELDS.status``).
    """

    def __iter__(self) -> Iterator[_Entry]:
        entries: list[_Entry] = [getattr(self, f.name) for f in fields(self)]  # type: ignore[arg-type]
        return iter(entries)


class RunStatus(str, Enum):
    """Lifecycle of one node run.

    ``RUNNING`` is written when the node starts. Exactly one terminal status follows:
    ``SUCCESS`` (returned), ``FAILURE`` (raised, including ``BaseException`` such as
    ``SystemExit``), ``CANCELLED`` (a ``KeyboardInterrupt`` — Ctrl-C / SIGINT — raised in the
    node: an operator's abort, not a failure of the node) or ``CRASHED`` (the process ended
    while the node was running: SIGTERM, SIGKILL, OOM, interpreter exit, or a death the process
    could not see, closed later by a sweeper).

    ``SKIPPED`` is the one status a run reaches without ``RUNNING`` before it: a node its
    pipeline run planned that never started (its ``skip_reason`` says why, one of
    :data:`SKIP_REASONS`). It is neither a success nor a failure.
    """

    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def is_terminal(self) -> bool:
        return self is not RunStatus.RUNNING


class Source(str, Enum):
    """Who wrote a catalog row (column ``source``): provenance for audits."""

    DECORATOR = "decorator"
    SIDECAR = "sidecar"
    RECONCILER = "reconciler"


@dataclass(frozen=True)
class Field:
    """One recorded fact and the name it has in each backend.

    ``columns`` lists every catalog column that carries the fact (``duration`` also has
    ``started_at``/``ended_at``); the first one is the primary column. ``label`` is the
    Prometheus label (which is also the OpenTelemetry metric attribute key, so that the OTel
    metrics translate to the same Prometheus series).
    """

    key: str
    description: str
    columns: tuple[str, ...] = ()
    attribute: str | None = None
    label: str | None = None
    prometheus_note: str = "—"
    otel_metric_note: str = "—"

    @property
    def column(self) -> str:
        """The primary catalog column."""
        return self.columns[0]


@dataclass(frozen=True)
class Fields(_Table[Field]):
    """All fields, as attributes so that code reads ``FIELDS.status.column``."""

    run_id: Field
    project: Field
    pipeline: Field
    pipeline_run_id: Field
    node: Field
    attempt: Field
    status: Field
    rows: Field
    duration: Field
    environment: Field
    error: Field
    suggestions: Field
    trace_ids: Field
    liveness: Field
    provenance: Field
    attributes: Field


FIELDS: Final = Fields(
    run_id=Field(
        "run_id",
        "Unique id of one node run; the join key of every backend.",
        columns=("run_id",),
        attribute="odibi.run_id",
        prometheus_note="never a label",
    ),
    project=Field(
        "project",
        "Project the pipeline belongs to.",
        columns=("project",),
        attribute="odibi.project",
        label="project",
        prometheus_note="label `project`",
        otel_metric_note="attribute `project`",
    ),
    pipeline=Field(
        "pipeline",
        "Pipeline name.",
        columns=("pipeline_name",),
        attribute="odibi.pipeline",
        label="pipeline",
        prometheus_note="label `pipeline`",
        otel_metric_note="attribute `pipeline`",
    ),
    pipeline_run_id=Field(
        "pipeline_run_id",
        "Id of the pipeline run this node run belongs to.",
        columns=("pipeline_run_id",),
        attribute="odibi.pipeline_run_id",
    ),
    node=Field(
        "node",
        "Node name.",
        columns=("node_name",),
        attribute="odibi.node",
        label="node",
        prometheus_note="label `node`",
        otel_metric_note="attribute `node`",
    ),
    attempt=Field(
        "attempt",
        "Attempt number, 1 for the first try.",
        columns=("attempt",),
        attribute="odibi.attempt",
    ),
    status=Field(
        "status",
        "RUNNING, SUCCESS, FAILURE, CANCELLED, CRASHED or SKIPPED.",
        columns=("status",),
        attribute="odibi.status",
        label="status",
        prometheus_note="label `status` on `odibi_node_runs_total`",
        otel_metric_note="`odibi.node.runs`",
    ),
    rows=Field(
        "rows",
        "Rows processed by the node (unknown is NULL, never 0).",
        columns=("rows_processed",),
        attribute="odibi.rows_processed",
        prometheus_note="`odibi_node_rows_processed_total`",
        otel_metric_note="`odibi.node.rows_processed`",
    ),
    duration=Field(
        "duration",
        "Wall time of the node run.",
        columns=("duration_ms", "started_at", "ended_at"),
        attribute="odibi.duration_ms",
        prometheus_note="`odibi_node_duration_seconds` (histogram)",
        otel_metric_note="`odibi.node.duration` (unit `s`)",
    ),
    environment=Field(
        "environment",
        "Deployment environment (dev, prod, ...).",
        columns=("environment",),
        attribute="odibi.environment",
        label="environment",
        prometheus_note="label `environment`",
        otel_metric_note="attribute `environment`",
    ),
    error=Field(
        "error",
        "Exception type and redacted, length-bounded message.",
        columns=("error_type", "error_message"),
        attribute="error.type",
    ),
    suggestions=Field(
        "suggestions",
        "Actionable advice attached to a failure.",
        columns=("suggestions_json",),
        attribute="odibi.suggestions",
    ),
    trace_ids=Field(
        "trace_ids",
        "Trace and span id of the node run's span (lower-case hex).",
        columns=("trace_id", "span_id", "parent_span_id"),
    ),
    liveness=Field(
        "liveness",
        "Where the run executes, for crash detection.",
        columns=("host", "pid", "heartbeat_at"),
        attribute="host.name",
    ),
    provenance=Field(
        "provenance",
        "Who wrote the catalog row: decorator, sidecar or reconciler.",
        columns=("source", "updated_at"),
    ),
    attributes=Field(
        "attributes",
        "User attributes set with run.set_attribute() (Odibi's metrics_json).",
        columns=("metrics_json",),
        attribute="odibi.attr.*",
    ),
)

#: Odibi's own ``meta_runs`` columns. The catalog is a strict superset of these.
ODIBI_META_RUNS_COLUMNS: Final = (
    "run_id",
    "project",
    "pipeline_name",
    "node_name",
    "status",
    "rows_processed",
    "duration_ms",
    "metrics_json",
    "environment",
    "timestamp",
    "date",
)

#: The catalog table and its companion tables.
CATALOG_TABLE: Final = "meta_runs"
MIGRATIONS_VERSION_TABLE: Final = "odibi_observe_alembic_version"
#: The trace side as the sidecar's OTLP receiver saw it: one row per odibi node span.
SPAN_LEDGER_TABLE: Final = "odibi_span_ledger"
#: One row per reconciliation report, and one per discrepancy it found.
RECONCILIATION_TABLE: Final = "meta_reconciliation"
RECONCILIATION_ITEMS_TABLE: Final = "meta_reconciliation_items"
#: One row per data-health finding (``odibi-observe health``), open until a pass no longer sees it.
HEALTH_FINDINGS_TABLE: Final = "meta_health_findings"

#: ``error_type`` that runs closed because their process vanished had before crash causes
#: (``CRASH_CAUSES`` below) were told apart: rows written by older versions still carry it.
CRASHED_ERROR_TYPE: Final = "ProcessCrashed"

#: The reconcile kind (and ``runs`` mark) of a run that wrote but never committed the checkpoint
#: its writes wait for, and ended CRASHED, FAILURE or CANCELLED (or is a stale RUNNING row);
#: see "phases of a run" below.
UNCOMMITTED_WRITE: Final = "uncommitted_write"
#: A run committed a checkpoint older than the one committed before it (the next run re-reads
#: what was already read); and two runs of one checkpointing node ran at once (both read the
#: same window). Judged from the catalog's history of checkpoints.
CHECKPOINT_REGRESSED: Final = "checkpoint_regressed"
OVERLAPPING_RUNS: Final = "overlapping_runs"

#: Stable names of the discrepancies reconciliation reports (the JSON report's ``kind``).
DISCREPANCY_KINDS: Final = (
    "missing_in_catalog",
    "missing_in_traces",
    "status_mismatch",
    "rows_mismatch",
    "duration_mismatch",
    "duplicate_in_catalog",
    "duplicate_in_traces",
    "stale_running",
    UNCOMMITTED_WRITE,
    CHECKPOINT_REGRESSED,
    OVERLAPPING_RUNS,
    "count_mismatch",
    "missing_terminal_event",
)

#: Stable names of the findings ``odibi-observe health`` reports (the JSON report's ``kind``).
HEALTH_FINDING_KINDS: Final = (
    "volume_anomaly",
    "zero_rows",
    "duration_anomaly",
    "freshness",
    "failure_streak",
    "flaky",
    "memory_growth",
)

#: Resource attributes for liveness (standard OTel semantic conventions).
RESOURCE_HOST: Final = "host.name"
RESOURCE_PID: Final = "process.pid"
#: The resource attribute naming the service: the semantic-conventions package's own constant
#: (stable since 1.26), so it cannot be misspelled here either.
RESOURCE_SERVICE_NAME: Final[str] = _SEMCONV_SERVICE_NAME

#: The TraceQL query ``reconcile --traces tempo:`` searches with by default: every span that
#: carries the run-id attribute, i.e. every odibi node span.
TEMPO_DEFAULT_QUERY: Final = f'{{ span.{FIELDS.run_id.attribute} != "" }}'

#: Prefix of user attributes on spans: ``run.set_attribute("region", "eu")`` becomes
#: ``odibi.attr.region``.
USER_ATTRIBUTE_PREFIX: Final = "odibi.attr."

#: Span name of a node run: low-cardinality, the node name carried as an attribute too.
SPAN_NAME_FORMAT: Final = "node {node}"

#: Span name of a pipeline run (``pipeline_run()``, Odibi's ``Pipeline.run``), the parent of
#: its node spans: ``RUN sales``, the OTel CI/CD conventions' ``{action} {pipeline}``. Readers
#: (reconcile, the span ledger) never match span names: they read ``odibi.*`` attributes.
PIPELINE_SPAN_NAME_FORMAT: Final = f"{_cicd.CicdPipelineActionNameValues.RUN.value} {{pipeline}}"

#: Instrumentation scope of spans and metrics.
INSTRUMENTATION_SCOPE: Final = "odibi_observe"

#: The label value that series beyond the cardinality limit fold into.
OVERFLOW_LABEL_VALUE: Final = "__overflow__"


class MetricKind(str, Enum):
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"


@dataclass(frozen=True)
class Metric:
    """One instrument: its OpenTelemetry name/unit and the Prometheus name they translate to.

    ``prometheus`` is the exposed family name (counters include ``_total``; histograms are the
    base name of ``_bucket``/``_sum``/``_count``). ``labels`` are both the Prometheus labels and
    the OTel metric attribute keys, in exposition order.
    """

    key: str
    otel: str | None
    otel_unit: str
    prometheus: str
    kind: MetricKind
    labels: tuple[str, ...]
    description: str

    @property
    def prometheus_base(self) -> str:
        """The name passed to prometheus_client, which appends ``_total`` to counters itself."""
        if self.kind is MetricKind.COUNTER and self.prometheus.endswith("_total"):
            return self.prometheus[: -len("_total")]
        return self.prometheus


_NODE_LABELS: Final = ("project", "pipeline", "node", "environment")

#: Which RunRecord attribute each Prometheus label / OTel metric attribute takes its value from.
LABEL_SOURCES: Final = {
    FIELDS.project.label: "project",
    FIELDS.pipeline.label: "pipeline",
    FIELDS.node.label: "node",
    FIELDS.environment.label: "environment",
    FIELDS.status.label: "status",
}


@dataclass(frozen=True)
class Metrics(_Table[Metric]):
    runs: Metric
    rows: Metric
    duration: Metric
    running: Metric


METRICS: Final = Metrics(
    runs=Metric(
        "runs",
        "odibi.node.runs",
        "{run}",
        "odibi_node_runs_total",
        MetricKind.COUNTER,
        (*_NODE_LABELS, "status"),
        "Node runs that reached a terminal status.",
    ),
    rows=Metric(
        "rows",
        "odibi.node.rows_processed",
        "{row}",
        "odibi_node_rows_processed_total",
        MetricKind.COUNTER,
        _NODE_LABELS,
        "Rows processed by finished node runs.",
    ),
    duration=Metric(
        "duration",
        "odibi.node.duration",
        "s",
        "odibi_node_duration_seconds",
        MetricKind.HISTOGRAM,
        _NODE_LABELS,
        "Wall time of finished node runs, in seconds.",
    ),
    running=Metric(
        "running",
        None,
        "",
        "odibi_node_running",
        MetricKind.GAUGE,
        _NODE_LABELS,
        "Node runs currently in progress in this process.",
    ),
)

#: Histogram buckets for batch jobs: 50 ms to 6 h.
DURATION_BUCKETS_SECONDS: Final = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    21600.0,
)


@dataclass(frozen=True)
class SelfMetrics(_Table[Metric]):
    sink_errors: Metric
    events_dropped: Metric
    label_overflow: Metric
    invalid_input: Metric
    queue_size: Metric
    dead_letter: Metric


SELF_METRICS: Final = SelfMetrics(
    sink_errors=Metric(
        "sink_errors",
        None,
        "",
        "odibi_observe_sink_errors_total",
        MetricKind.COUNTER,
        ("sink",),
        "Failed export attempts per sink (the batch is kept and retried).",
    ),
    events_dropped=Metric(
        "events_dropped",
        None,
        "",
        "odibi_observe_events_dropped_total",
        MetricKind.COUNTER,
        ("sink", "reason"),
        "Events a sink will never receive, by reason (bounded buffers).",
    ),
    label_overflow=Metric(
        "label_overflow",
        None,
        "",
        "odibi_observe_label_overflow_total",
        MetricKind.COUNTER,
        ("metric",),
        'Samples folded into node="__overflow__" by the series limit.',
    ),
    invalid_input=Metric(
        "invalid_input",
        None,
        "",
        "odibi_observe_invalid_input_total",
        MetricKind.COUNTER,
        ("field",),
        "Values clamped or replaced because they were invalid (NaN rows, ...).",
    ),
    queue_size=Metric(
        "queue_size",
        None,
        "",
        "odibi_observe_queue_size",
        MetricKind.GAUGE,
        ("sink",),
        "Events waiting for delivery per sink (queue plus retry buffer).",
    ),
    dead_letter=Metric(
        "dead_letter",
        None,
        "",
        "odibi_observe_dead_letter_total",
        MetricKind.COUNTER,
        ("sink",),
        "Records a sink can never export, moved to the dead letter and skipped.",
    ),
)


@dataclass(frozen=True)
class SidecarMetrics(_Table[Metric]):
    """What the sidecar exposes about itself on ``/metrics``, next to the node metrics."""

    ingested: Metric
    spool_bytes: Metric
    spool_backlog: Metric
    spool_corrupt: Metric
    spool_rejected: Metric
    spool_damaged_regions: Metric
    spool_missing_segments: Metric
    ledger_spans: Metric
    sweeper_closed: Metric
    last_loop: Metric
    http_refused: Metric


SIDECAR_METRICS: Final = SidecarMetrics(
    ingested=Metric(
        "ingested",
        None,
        "",
        "odibi_observe_sidecar_events_ingested_total",
        MetricKind.COUNTER,
        ("kind",),
        "Run events the sidecar read from pipeline processes, by event kind.",
    ),
    spool_bytes=Metric(
        "spool_bytes",
        None,
        "",
        "odibi_observe_spool_bytes",
        MetricKind.GAUGE,
        (),
        "Bytes held in the write-ahead spool (all segments).",
    ),
    spool_backlog=Metric(
        "spool_backlog",
        None,
        "",
        "odibi_observe_spool_backlog_events",
        MetricKind.GAUGE,
        ("sink",),
        "Spooled events a sink has not acknowledged yet.",
    ),
    spool_corrupt=Metric(
        "spool_corrupt",
        None,
        "",
        "odibi_observe_spool_corrupt_frames_total",
        MetricKind.COUNTER,
        (),
        "Spool frames lost to damage (torn or corrupt), skipped; "
        "estimated from the bytes skipped where a frame's header is unreadable.",
    ),
    spool_rejected=Metric(
        "spool_rejected",
        None,
        "",
        "odibi_observe_spool_rejected_total",
        MetricKind.COUNTER,
        ("reason",),
        "Events the spool could not take (size limit, disk full), by reason.",
    ),
    spool_damaged_regions=Metric(
        "spool_damaged_regions",
        None,
        "",
        "odibi_observe_spool_damaged_regions_total",
        MetricKind.COUNTER,
        (),
        "Damaged byte ranges of spool segments skipped (each may hold several lost frames).",
    ),
    spool_missing_segments=Metric(
        "spool_missing_segments",
        None,
        "",
        "odibi_observe_spool_missing_segments_total",
        MetricKind.COUNTER,
        (),
        "Spool segments missing from a writer's sequence (deleted "
        "before every consumer had read them): their frames are lost.",
    ),
    ledger_spans=Metric(
        "ledger_spans",
        None,
        "",
        "odibi_observe_ledger_spans_total",
        MetricKind.COUNTER,
        ("outcome",),
        "Spans received on /v1/traces: stored in the ledger, ignored (not an "
        "odibi node span) or rejected (malformed).",
    ),
    sweeper_closed=Metric(
        "sweeper_closed",
        None,
        "",
        "odibi_observe_sweeper_closed_total",
        MetricKind.COUNTER,
        ("reason",),
        "RUNNING runs the sweeper closed as CRASHED, by how it knew.",
    ),
    last_loop=Metric(
        "last_loop",
        None,
        "",
        "odibi_observe_sidecar_last_loop_timestamp_seconds",
        MetricKind.GAUGE,
        (),
        "Unix time of the sidecar's last completed work loop.",
    ),
    http_refused=Metric(
        "http_refused",
        None,
        "",
        "odibi_observe_sidecar_http_refused_total",
        MetricKind.COUNTER,
        ("reason",),
        "HTTP connections or requests the sidecar refused: "
        "too many connections (503), bad framing (400), or a failing handler.",
    ),
)


@dataclass(frozen=True)
class ReconcileMetrics(_Table[Metric]):
    """The result of the last reconciliation, for dashboards and alerts."""

    discrepancies: Metric
    completeness: Metric
    last_run: Metric
    checked: Metric
    deferred: Metric


RECONCILE_METRICS: Final = ReconcileMetrics(
    discrepancies=Metric(
        "discrepancies",
        None,
        "",
        "odibi_reconcile_discrepancies",
        MetricKind.GAUGE,
        ("kind",),
        "Discrepancies found by the last reconciliation, by kind.",
    ),
    completeness=Metric(
        "completeness",
        None,
        "",
        "odibi_catalog_completeness_ratio",
        MetricKind.GAUGE,
        (),
        "Share of traced runs the catalog holds, in the last reconciliation (1 = all).",
    ),
    last_run=Metric(
        "last_run",
        None,
        "",
        "odibi_reconcile_last_run_timestamp_seconds",
        MetricKind.GAUGE,
        (),
        "Unix time the last reconciliation finished.",
    ),
    checked=Metric(
        "checked",
        None,
        "",
        "odibi_reconcile_runs_checked",
        MetricKind.GAUGE,
        (),
        "Runs the last reconciliation checked (0: it proved nothing).",
    ),
    deferred=Metric(
        "deferred",
        None,
        "",
        "odibi_reconcile_runs_deferred",
        MetricKind.GAUGE,
        (),
        "Runs the last reconciliation left for the next one (too recent: within the grace period).",
    ),
)


@dataclass(frozen=True)
class HealthMetrics(_Table[Metric]):
    """The result of the last data-health pass (``odibi-observe health``)."""

    findings: Metric
    opened: Metric
    resolved: Metric
    open_finding: Metric
    nodes: Metric
    last_run: Metric


HEALTH_METRICS: Final = HealthMetrics(
    findings=Metric(
        "findings",
        None,
        "",
        "odibi_health_findings",
        MetricKind.GAUGE,
        ("kind",),
        "Findings the last data-health pass saw, by kind.",
    ),
    opened=Metric(
        "opened",
        None,
        "",
        "odibi_health_findings_opened",
        MetricKind.GAUGE,
        ("kind",),
        "Findings the last data-health pass opened (not seen by the pass before).",
    ),
    resolved=Metric(
        "resolved",
        None,
        "",
        "odibi_health_findings_resolved",
        MetricKind.GAUGE,
        ("kind",),
        "Open findings the last data-health pass no longer saw, so resolved.",
    ),
    open_finding=Metric(
        "open_finding",
        None,
        "",
        "odibi_health_finding",
        MetricKind.GAUGE,
        ("kind", "pipeline", "node"),
        "1 for each finding the last data-health pass saw, "
        "per node (alert on these: one series per finding, no storm).",
    ),
    nodes=Metric(
        "nodes",
        None,
        "",
        "odibi_health_nodes_checked",
        MetricKind.GAUGE,
        (),
        "Nodes the last data-health pass had enough history to judge.",
    ),
    last_run=Metric(
        "last_run",
        None,
        "",
        "odibi_health_last_run_timestamp_seconds",
        MetricKind.GAUGE,
        (),
        "Unix time the last data-health pass finished.",
    ),
)


def all_metrics() -> tuple[Metric, ...]:
    """Every metric odibi-observe exposes, in documentation order."""
    return (
        *METRICS,
        *SELF_METRICS,
        *SIDECAR_METRICS,
        *RECONCILE_METRICS,
        *HEALTH_METRICS,
        *RESOURCE_METRICS,
        *PHASE_METRICS,
        *PIPELINE_METRICS,
    )


def field_rows() -> list[dict[str, str]]:
    """The conventions table as rows of strings (the shape printed and documented)."""
    rows = []
    events = {f.key for f in PHASE_FIELDS}
    for f in (*FIELDS, *RESOURCE_FIELDS, ERROR_STACK_FIELD, *PHASE_FIELDS, SKIP_REASON_FIELD):
        rows.append(
            {
                "field": f.key,
                "catalog column": ", ".join(f"`{c}`" for c in f.columns) or "—",
                "span attribute": f"event `{f.attribute}`"
                if f.key in events
                else f"`{f.attribute}`"
                if f.attribute
                else "native"
                if f.key == "trace_ids"
                else "—",
                "Prometheus": f.prometheus_note,
                "OTel metric": f.otel_metric_note,
                "OpenLineage": OPENLINEAGE_FIELDS.get(f.key, "—"),
            }
        )
    return rows


def render_table(fmt: str = "text") -> str:
    """Render the conventions as ``text`` (aligned columns), ``markdown`` or ``json``."""
    if fmt == "json":
        return json.dumps(
            {
                "fields": [asdict(f) for f in FIELDS],
                "metrics": [{**asdict(m), "kind": m.kind.value} for m in all_metrics()],
                "statuses": [s.value for s in RunStatus],
                "status_results": {s.value: r for s, r in TASK_RUN_RESULTS.items()},
                "semconv": semconv_rows(),
                "openlineage": OPENLINEAGE_FIELDS,
                "catalog_table": CATALOG_TABLE,
            },
            indent=2,
        )
    rows = field_rows()
    headers = list(rows[0])
    metric_rows = [
        {
            "metric": m.prometheus,
            "kind": m.kind.value,
            "OTel instrument": f"`{m.otel}` ({m.otel_unit})" if m.otel else "—",
            "labels": ", ".join(m.labels),
        }
        for m in all_metrics()
    ]
    if fmt == "markdown":
        return (
            "\n\n".join(
                [
                    _markdown(headers, rows),
                    _markdown(list(metric_rows[0]), metric_rows),
                    "Statuses (→ OTel CI/CD result): " + status_result_line() + ".",
                    _markdown(list(semconv_rows()[0]), semconv_rows()),
                ]
            )
            + "\n"
        )
    if fmt == "text":
        return (
            "\n\n".join(
                [
                    _text(headers, rows),
                    _text(list(metric_rows[0]), metric_rows),
                    "Statuses (-> OTel CI/CD result): " + status_result_line().replace(" →", " ->"),
                    _text(list(semconv_rows()[0]), semconv_rows()),
                ]
            ).replace("`", "")
            + "\n"
        )
    raise ValueError(f"unknown format {fmt!r}: choose text, markdown or json")


def _markdown(headers: list[str], rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r[h] for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def _text(headers: list[str], rows: list[dict[str, str]]) -> str:
    widths = [max(len(h), *(len(r[h].replace("`", "")) for r in rows)) for h in headers]

    def line(values: list[str]) -> str:
        cells = (v.replace("`", "").ljust(w) for v, w in zip(values, widths, strict=True))
        return "  ".join(cells).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line([r[h] for h in headers]) for r in rows]
    return "\n".join(out)


# --- extension points (odibi_observe.extensions) ----------------------------------------------
# Python entry point groups third-party packages register implementations in; an entry point's
# name is the implementation's scheme (``myscheme = "my_pkg.traces:MyTraceSource"``).

#: Sinks: the entry point loads a factory ``(SinkContext) -> Sink | None`` (or a Sink class
#: with a ``from_context`` classmethod); the name is the sink's ``scheme``.
SINKS_ENTRY_POINT_GROUP: Final = "odibi_observe.sinks"
#: Trace sources: ``reconcile --traces <name>:<location>``.
TRACE_SOURCES_ENTRY_POINT_GROUP: Final = "odibi_observe.trace_sources"
#: Catalog sources: ``reconcile --catalog <name>:<location>``.
CATALOG_SOURCES_ENTRY_POINT_GROUP: Final = "odibi_observe.catalog_sources"

# --- resources per node run, and why a crashed run crashed ---------------------------------------
#
# What a node run used (peak memory, CPU time) and the memory limit it ran under, recorded with
# the run (odibi_observe._resources); and the low-cardinality ``error_type`` of a CRASHED run.


@dataclass(frozen=True)
class ResourceFields(_Table[Field]):
    peak_rss: Field
    cpu: Field
    memory_limit: Field


RESOURCE_FIELDS: Final = ResourceFields(
    peak_rss=Field(
        "peak_rss",
        "Largest resident memory of the process seen while the node ran (bytes; "
        "sampled at start, every heartbeat and end).",
        columns=("peak_rss_bytes",),
        attribute="odibi.peak_rss_bytes",
        prometheus_note="`odibi_node_peak_rss_bytes` (histogram)",
    ),
    cpu=Field(
        "cpu",
        "Process CPU time (user + system, all threads) spent while the node ran.",
        columns=("cpu_seconds",),
        attribute="odibi.cpu_seconds",
        prometheus_note="`odibi_node_cpu_seconds` (histogram)",
    ),
    memory_limit=Field(
        "memory_limit",
        "The memory limit the process ran under (cgroup v2 memory.max, bytes; NULL: none).",
        columns=("memory_limit_bytes",),
        attribute="odibi.memory_limit_bytes",
        prometheus_note="`odibi_node_memory_limit_bytes` (gauge)",
    ),
)


@dataclass(frozen=True)
class ResourceMetrics(_Table[Metric]):
    peak_rss: Metric
    cpu: Metric
    memory_limit: Metric


RESOURCE_METRICS: Final = ResourceMetrics(
    peak_rss=Metric(
        "peak_rss",
        None,
        "",
        "odibi_node_peak_rss_bytes",
        MetricKind.HISTOGRAM,
        _NODE_LABELS,
        "Peak resident memory of finished node runs, in bytes.",
    ),
    cpu=Metric(
        "cpu",
        None,
        "",
        "odibi_node_cpu_seconds",
        MetricKind.HISTOGRAM,
        _NODE_LABELS,
        "Process CPU time of finished node runs, in seconds.",
    ),
    memory_limit=Metric(
        "memory_limit",
        None,
        "",
        "odibi_node_memory_limit_bytes",
        MetricKind.GAUGE,
        _NODE_LABELS,
        "Memory limit (cgroup memory.max) the node's last run ran under, bytes.",
    ),
)

#: Histogram buckets for peak memory: 16 MiB to 64 GiB, doubling.
PEAK_RSS_BUCKETS_BYTES: Final = tuple(float(2**e) for e in range(24, 37))

#: ``error_type`` of a CRASHED run: why it crashed, from what the closer could see.
#: ``OOMKilled``: the cgroup's ``memory.events`` oom_kill count rose, or the run's peak memory
#: was at its limit; ``SIGKILL`` / ``SIGTERM``: the process was killed by that signal (its exit
#: status, or for SIGKILL: it died on this host without running its exit handlers);
#: ``HeartbeatLost``: its heartbeats stopped and the process cannot be seen from here;
#: ``ProcessExit``: the interpreter (or the process, by its exit status) exited while the node
#: was running; ``Signaled``: another signal ended it (SIGSEGV, SIGABRT: the message names it).
CRASH_OOM_KILLED: Final = "OOMKilled"
CRASH_SIGKILL: Final = "SIGKILL"
CRASH_SIGTERM: Final = "SIGTERM"
CRASH_HEARTBEAT_LOST: Final = "HeartbeatLost"
CRASH_PROCESS_EXIT: Final = "ProcessExit"
CRASH_SIGNALED: Final = "Signaled"
CRASH_CAUSES: Final = (
    CRASH_OOM_KILLED,
    CRASH_SIGKILL,
    CRASH_SIGTERM,
    CRASH_HEARTBEAT_LOST,
    CRASH_PROCESS_EXIT,
    CRASH_SIGNALED,
)

# --- the status page (``odibi-observe report``) --------------------------------------------------

#: The one file ``odibi-observe report`` writes into its ``--out`` directory.
STATUS_PAGE_FILE: Final = "status.html"
#: Rows each list of the status page shows at most (recent failures, crashed, running, findings).
STATUS_PAGE_ROWS: Final = 20
#: Nodes the status page's "slowest nodes" table shows (as the overview dashboard's panel).
STATUS_PAGE_SLOWEST: Final = 10

# --- OpenLineage (odibi_observe.sinks.openlineage) ----------------------------------------------

#: The sink's scheme and ``name`` (``odibi_observe_sink_errors_total{sink="openlineage"}``).
OPENLINEAGE_SINK: Final = "openlineage"
#: ``producer`` of every event and facet odibi-observe writes (a URI naming the producer).
OPENLINEAGE_PRODUCER: Final = "https://pypi.org/project/odibi-observe/"
#: OpenLineage ``eventType`` per status; ``CANCELLED`` is looked up by its string, so the
#: table holds whether or not the status exists. ``RUNNING`` is the ``START`` event.
OPENLINEAGE_EVENT_TYPES: Final = {
    "RUNNING": "START",
    "SUCCESS": "COMPLETE",
    "FAILURE": "FAIL",
    "CRASHED": "FAIL",
    "CANCELLED": "ABORT",
    "SKIPPED": "COMPLETE",
}
#: The run facet that carries our record (status, rows, duration, trace) on every event.
OPENLINEAGE_RUN_FACET: Final = "odibi_run"
OPENLINEAGE_RUN_FACET_SCHEMA: Final = (
    "https://pypi.org/project/odibi-observe/#/definitions/OdibiRunFacet"
)
#: ``errorMessage.programmingLanguage``.
OPENLINEAGE_LANGUAGE: Final = "python"
#: ``jobType`` facet values: every node run is a finite task of a batch pipeline.
OPENLINEAGE_PROCESSING_TYPE: Final = "BATCH"
OPENLINEAGE_JOB_TYPE: Final = "TASK"
#: ``jobType.integration``: ``ODIBI`` for runs of an Odibi project (the Odibi integration is
#: instrumented in the process), ``ODIBI_OBSERVE`` for ``node_run``/decorated functions.
OPENLINEAGE_INTEGRATION_ODIBI: Final = "ODIBI"
OPENLINEAGE_INTEGRATION_DEFAULT: Final = "ODIBI_OBSERVE"
#: ``processing_engine.name``.
OPENLINEAGE_ENGINE_ODIBI: Final = "Odibi"
OPENLINEAGE_ENGINE_DEFAULT: Final = "odibi-observe"
#: Run attributes that name the node's output dataset (OpenLineage dataset naming:
#: ``namespace`` such as ``postgres://db:5432``, ``name`` such as ``sales.public.orders``).
#: When both are set, the terminal event lists that output with its ``outputStatistics``.
OPENLINEAGE_OUTPUT_NAMESPACE_ATTRIBUTE: Final = "lineage.output.namespace"
OPENLINEAGE_OUTPUT_NAME_ATTRIBUTE: Final = "lineage.output.name"
#: Environment variables and files through which the OpenLineage client is configured; any
#: of them present (and ``openlineage`` not set to false) turns the sink on.
OPENLINEAGE_CONFIG_ENV: Final = ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG")
OPENLINEAGE_TRANSPORT_ENV_PREFIX: Final = "OPENLINEAGE__TRANSPORT"
OPENLINEAGE_DISABLED_ENV: Final = "OPENLINEAGE_DISABLED"
OPENLINEAGE_CONFIG_FILE: Final = "openlineage.yml"
# --- the OpenTelemetry CI/CD semantic conventions ------------------------------------------------
#
# A node run is a CI/CD "pipeline task run", a pipeline run a "pipeline run": the same record
# also speaks the standard attribute names, next to the ``odibi.*`` ones (which stay). Every
# name and result value is the ``opentelemetry-semantic-conventions`` package's constant, never
# spelled here; the package marks these incubating, so they are read in this one place.

CICD_PIPELINE_NAME: Final = _cicd.CICD_PIPELINE_NAME
CICD_PIPELINE_RUN_ID: Final = _cicd.CICD_PIPELINE_RUN_ID
CICD_PIPELINE_RESULT: Final = _cicd.CICD_PIPELINE_RESULT
CICD_TASK_NAME: Final = _cicd.CICD_PIPELINE_TASK_NAME
CICD_TASK_RUN_ID: Final = _cicd.CICD_PIPELINE_TASK_RUN_ID
CICD_TASK_RUN_RESULT: Final = _cicd.CICD_PIPELINE_TASK_RUN_RESULT
CICD_TASK_RUN_URL: Final = _cicd.CICD_PIPELINE_TASK_RUN_URL_FULL
#: ``error.type`` (stable): the exception type of a run that did not succeed.
ERROR_TYPE_ATTRIBUTE: Final = _error.ERROR_TYPE
#: ``exception.stacktrace`` (stable) on the span's ``exception`` event.
EXCEPTION_STACKTRACE: Final = _exception.EXCEPTION_STACKTRACE

#: The semconv result of each terminal status (``cicd.pipeline.task.run.result``). A status
#: without a standard counterpart has no entry, and its span carries no result attribute.
TASK_RUN_RESULTS: Final[dict[RunStatus, str]] = {
    RunStatus.SUCCESS: _cicd.CicdPipelineTaskRunResultValues.SUCCESS.value,
    RunStatus.FAILURE: _cicd.CicdPipelineTaskRunResultValues.FAILURE.value,
    RunStatus.CRASHED: _cicd.CicdPipelineTaskRunResultValues.ERROR.value,
    RunStatus.CANCELLED: _cicd.CicdPipelineTaskRunResultValues.CANCELLATION.value,
    RunStatus.SKIPPED: _cicd.CicdPipelineTaskRunResultValues.SKIP.value,
}
#: The same for a whole pipeline run (``cicd.pipeline.result``).
PIPELINE_RESULTS: Final[dict[RunStatus, str]] = {
    RunStatus.SUCCESS: _cicd.CicdPipelineResultValues.SUCCESS.value,
    RunStatus.FAILURE: _cicd.CicdPipelineResultValues.FAILURE.value,
    RunStatus.CRASHED: _cicd.CicdPipelineResultValues.ERROR.value,
    RunStatus.CANCELLED: _cicd.CicdPipelineResultValues.CANCELLATION.value,
    RunStatus.SKIPPED: _cicd.CicdPipelineResultValues.SKIP.value,
}

#: Terminal statuses that count against a node's failure rate. ``CANCELLED`` is an operator's
#: abort, not the node failing: it is neither a failure nor a run the rate is taken over.
FAILED_STATUSES: Final = (RunStatus.FAILURE, RunStatus.CRASHED)
#: Terminal statuses a failure rate is not taken over: an operator's abort (``CANCELLED``) and
#: a node that never started (``SKIPPED``) are runs the node could not have failed.
UNJUDGED_STATUSES: Final = (RunStatus.CANCELLED, RunStatus.SKIPPED)

#: Placeholders ``task_run_url_template`` may use (``{run_id}``, ``{pipeline}``, ...).
TASK_RUN_URL_PLACEHOLDERS: Final = (
    "run_id",
    "pipeline",
    "node",
    "project",
    "pipeline_run_id",
    "environment",
)


def semconv_rows() -> list[dict[str, str]]:
    """The CI/CD semantic-convention attributes beside our own, for the conventions table."""

    def row(ours: str, theirs: str, span: str) -> dict[str, str]:
        return {"span": span, "odibi attribute": ours, "semconv attribute": f"`{theirs}`"}

    return [
        row(f"`{FIELDS.pipeline.attribute}`", CICD_PIPELINE_NAME, "node, pipeline"),
        row(f"`{FIELDS.pipeline_run_id.attribute}`", CICD_PIPELINE_RUN_ID, "node, pipeline"),
        row(f"`{FIELDS.node.attribute}`", CICD_TASK_NAME, "node"),
        row(f"`{FIELDS.run_id.attribute}`", CICD_TASK_RUN_ID, "node"),
        row(f"`{FIELDS.status.attribute}`", CICD_TASK_RUN_RESULT, "node"),
        row("—", CICD_TASK_RUN_URL, "node (setting `task_run_url_template`)"),
        row("—", ERROR_TYPE_ATTRIBUTE, "node, pipeline (not on success)"),
        row("—", CICD_PIPELINE_RESULT, "pipeline"),
    ]


#: The traceback of a run that raised (``FAILURE``, ``CANCELLED``): the catalog column
#: ``error_stack`` and ``exception.stacktrace`` on the span's ``exception`` event. Redacted and
#: bounded by ``max_error_stack_length`` (the innermost frames kept).
ERROR_STACK_FIELD: Final = Field(
    "error_stack",
    "Traceback of a FAILURE or CANCELLED run (redacted, bounded; the innermost frames kept).",
    columns=("error_stack",),
    attribute=EXCEPTION_STACKTRACE,
)


def status_result_line() -> str:
    """``SUCCESS → success, ...``: each status and its semconv task-run result."""
    return ", ".join(
        f"`{s.value}` → `{TASK_RUN_RESULTS[s]}`" if s in TASK_RUN_RESULTS else f"`{s.value}`"
        for s in RunStatus
    )


# --- the audit of an Odibi project (``odibi-observe audit``) --------------------------------------

#: Stable names of the findings ``odibi-observe audit`` reports (the JSON report's ``kind``):
#: a target commit no Odibi run claims; a data commit the node's high-water mark was not saved
#: after, before its next commit (the next run re-reads the same window); a high-water mark
#: saved older than the one before it.
AUDIT_FINDING_KINDS: Final = ("unclaimed_commit", "hwm_not_saved", "hwm_regressed")

#: ``odibi-observe audit`` writes ``audit.json``, ``audit.md`` and ``audit.html`` into ``--out``.
AUDIT_REPORT_STEM: Final = "audit"


@dataclass(frozen=True)
class AuditKeys:
    """The keys of ``audit.json`` (and of ``audit --json``), one name each."""

    # the report
    generated_at: str = "generated_at"
    project: str = "project"
    odibi_project: str = "odibi_project"
    meta_runs: str = "meta_runs"
    state: str = "state"
    catalog: str = "catalog"
    window: str = "window"
    since: str = "since"
    until: str = "until"
    grace_seconds: str = "grace_seconds"
    summary: str = "summary"
    nodes: str = "nodes"
    findings: str = "findings"
    errors: str = "errors"
    notes: str = "notes"
    seconds: str = "seconds"
    written: str = "written"
    clean: str = "clean"
    # the summary
    nodes_audited: str = "nodes_audited"
    commits_audited: str = "commits_audited"
    commits_in_flight: str = "commits_in_flight"
    findings_total: str = "findings_total"
    # a node, a finding
    kind: str = "kind"
    pipeline: str = "pipeline"
    node: str = "node"
    target: str = "target"
    state_key: str = "state_key"
    versions: str = "versions"
    commits: str = "commits"
    rows: str = "rows"
    hwm: str = "hwm"
    odibi_runs: str = "odibi_runs"
    our_catalog: str = "our_catalog"
    detail: str = "detail"
    todo: str = "todo"
    # a commit, an HWM update, a run
    version: str = "version"
    timestamp: str = "timestamp"
    operation: str = "operation"
    state_version: str = "state_version"
    value: str = "value"
    previous: str = "previous"
    run_id: str = "run_id"
    status: str = "status"
    logged_at: str = "logged_at"
    duration_ms: str = "duration_ms"
    hwm_pending: str = "hwm_pending"
    hwm_error: str = "hwm_error"
    started_at: str = "started_at"
    ended_at: str = "ended_at"
    error_type: str = "error_type"
    covers: str = "covers"
    source: str = "source"
    message: str = "message"


AUDIT_KEYS: Final = AuditKeys()

# --- phases of a run: what it wrote, and the checkpoint it committed ------------------------------
#
# ``run.record_write(target, rows=..., version=...)`` and ``run.record_checkpoint(key, value)``
# (the Odibi integration calls them around the engine's write and ``set_hwm``). A run that wrote
# and then ended without committing the checkpoint its writes wait for left data the next run
# will read and write again: an ``uncommitted_write`` (docs/exactly-once.md).


@dataclass(frozen=True)
class PhaseFields(_Table[Field]):
    writes: Field
    checkpoint: Field


#: Names of the span events a node span carries for each write and for the checkpoint.
WRITE_EVENT: Final = "odibi.write"
CHECKPOINT_EVENT: Final = "odibi.checkpoint"

PHASE_FIELDS: Final = PhaseFields(
    writes=Field(
        "writes",
        "The run's writes in order, a JSON list of {target, rows, version, at} (NULL: none "
        "recorded); one span event each.",
        columns=("writes_json",),
        attribute=WRITE_EVENT,
        prometheus_note="`odibi_node_uncommitted_writes_total` (uncommitted writes)",
    ),
    checkpoint=Field(
        "checkpoint",
        "The checkpoint the run committed, JSON {key, value, previous, at} (NULL: none); a "
        "span event.",
        columns=("checkpoint_json",),
        attribute=CHECKPOINT_EVENT,
    ),
)

#: Attributes of the ``odibi.write`` span event.
WRITE_TARGET_ATTRIBUTE: Final = "odibi.write.target"
WRITE_ROWS_ATTRIBUTE: Final = "odibi.write.rows"
WRITE_VERSION_ATTRIBUTE: Final = "odibi.write.version"
#: Whether the write waits for the run's checkpoint (see ``uncommitted_write``).
WRITE_AWAITS_CHECKPOINT_ATTRIBUTE: Final = "odibi.write.awaits_checkpoint"
#: Attributes of the ``odibi.checkpoint`` span event (values as JSON text unless a string).
CHECKPOINT_KEY_ATTRIBUTE: Final = "odibi.checkpoint.key"
CHECKPOINT_VALUE_ATTRIBUTE: Final = "odibi.checkpoint.value"
CHECKPOINT_PREVIOUS_ATTRIBUTE: Final = "odibi.checkpoint.previous"


@dataclass(frozen=True)
class PhaseKeys:
    """The keys of one write (an item of ``writes_json``, of ``RunRecord.writes``) and of the
    checkpoint (``checkpoint_json``, ``RunRecord.checkpoint``): a stored format, one name
    each."""

    # a write
    target: str = "target"
    rows: str = "rows"
    version: str = "version"
    awaits_checkpoint: str = "awaits_checkpoint"
    # the checkpoint
    key: str = "key"
    value: str = "value"
    previous: str = "previous"
    # both: when it was recorded (ns in the record, ISO 8601 UTC in the catalog)
    at: str = "at"


PHASE_KEYS: Final = PhaseKeys()

#: Statuses after which a write without its checkpoint is uncommitted.
UNCOMMITTED_STATUSES: Final = (RunStatus.FAILURE, RunStatus.CRASHED, RunStatus.CANCELLED)


@dataclass(frozen=True)
class PhaseMetrics(_Table[Metric]):
    uncommitted_writes: Metric


PHASE_METRICS: Final = PhaseMetrics(
    uncommitted_writes=Metric(
        "uncommitted_writes",
        None,
        "",
        "odibi_node_uncommitted_writes_total",
        MetricKind.COUNTER,
        _NODE_LABELS,
        "Node runs that wrote data and ended without committing their checkpoint "
        "(the next run re-reads and re-writes it).",
    ),
)

# --- the plan of a pipeline run: SKIPPED node runs and meta_pipeline_runs -----------------------
#
# A pipeline run declares the nodes it is going to run; a planned node that never started is
# recorded at the end of the pipeline run as a SKIPPED run with its reason, and the pipeline
# run itself is one row of ``meta_pipeline_runs`` (and the ``RUN {pipeline}`` span's counts).

#: Why a planned node never started (column ``skip_reason``, span ``odibi.skip_reason``).
#: ``dependency_failed``: a node it depends on failed (or was skipped); ``fail_fast``: the
#: pipeline stopped at the first failure; ``aborted``: the pipeline run ended by an exception
#: or an interrupt before the node's turn; ``not_selected``: a node of the pipeline left out
#: of this run by a selection (``--node``, ``--tag``).
SKIP_DEPENDENCY_FAILED: Final = "dependency_failed"
SKIP_FAIL_FAST: Final = "fail_fast"
SKIP_ABORTED: Final = "aborted"
SKIP_NOT_SELECTED: Final = "not_selected"
SKIP_REASONS: Final = (SKIP_DEPENDENCY_FAILED, SKIP_FAIL_FAST, SKIP_ABORTED, SKIP_NOT_SELECTED)

SKIP_REASON_FIELD: Final = Field(
    "skip_reason",
    "Why a SKIPPED run never started: " + ", ".join(SKIP_REASONS) + " (NULL otherwise).",
    columns=("skip_reason",),
    attribute="odibi.skip_reason",
)

#: One row per pipeline run: its status, times and node counts.
PIPELINE_RUNS_TABLE: Final = "meta_pipeline_runs"
#: When the pipeline run ended (``meta_runs`` says ``ended_at`` for a node run).
PIPELINE_FINISHED_AT: Final = "finished_at"


@dataclass(frozen=True)
class PipelineCounts(_Table[Field]):
    """The node counts of a pipeline run: a column of ``meta_pipeline_runs`` each, an
    attribute of the ``RUN {pipeline}`` span, and (by ``key``) an attribute of the pipeline
    run's record on the bus."""

    planned: Field
    ran: Field
    skipped: Field
    failed: Field


PIPELINE_COUNTS: Final = PipelineCounts(
    planned=Field(
        "planned",
        "Nodes the pipeline run declared it would run.",
        columns=("nodes_planned",),
        attribute="odibi.nodes_planned",
    ),
    ran=Field(
        "ran",
        "Planned nodes that started (whatever their end).",
        columns=("nodes_ran",),
        attribute="odibi.nodes_ran",
    ),
    skipped=Field(
        "skipped",
        "Planned nodes recorded as SKIPPED.",
        columns=("nodes_skipped",),
        attribute="odibi.nodes_skipped",
    ),
    failed=Field(
        "failed",
        "Nodes that ended FAILURE or CRASHED.",
        columns=("nodes_failed",),
        attribute="odibi.nodes_failed",
    ),
)


# --- Prometheus exemplars (odibi_observe.sinks.prometheus) --------------------------------------
#
# A node run's duration observation and its runs-counter increment carry the run's span as an
# exemplar, so that a point on a duration graph opens the trace of that very run. The label
# names are what Grafana's ``exemplarTraceIdDestinations`` and Prometheus'
# ``/api/v1/query_exemplars`` answer with; the metrics that carry them are listed here too.

EXEMPLAR_TRACE_ID_LABEL: Final = "trace_id"
EXEMPLAR_SPAN_ID_LABEL: Final = "span_id"
#: The Prometheus families whose samples carry the run's exemplar.
EXEMPLAR_METRICS: Final = (METRICS.duration, METRICS.runs)


# --- OpenLineage field names (odibi_observe.sinks.openlineage, reconcile openlineage-file:) -----
#
# Where each recorded fact is in an OpenLineage run event: the sink writes these names and the
# ``openlineage-file:`` reconciliation source reads them back, from this one table.


@dataclass(frozen=True)
class OdibiRunFacetKeys:
    """The fields of our ``odibi_run`` run facet (camelCase, as OpenLineage facets are)."""

    status: str = "status"
    environment: str = "environment"
    attempt: str = "attempt"
    rows: str = "rowsProcessed"
    duration: str = "durationMs"
    trace_id: str = "traceId"
    span_id: str = "spanId"
    pipeline_run_id: str = "pipelineRunId"
    error_type: str = "errorType"
    #: The record's ``run_id`` when it is not a UUID (``run.runId`` is then a name-based
    #: UUID of it); absent otherwise.
    run_id: str = "runId"


ODIBI_RUN_FACET_KEYS: Final = OdibiRunFacetKeys()


class OpenLineageFacetNames(NamedTuple):
    """The standard facets the sink writes, by the key they have in ``run.facets``,
    ``job.facets`` or an output's ``outputFacets``."""

    parent: str
    error_message: str
    processing_engine: str
    job_type: str
    output_statistics: str


OPENLINEAGE_FACETS: Final = OpenLineageFacetNames(
    parent="parent",
    error_message="errorMessage",
    processing_engine="processing_engine",
    job_type="jobType",
    output_statistics="outputStatistics",
)


def _run_facet(key: str) -> str:
    return f"`{OPENLINEAGE_RUN_FACET}.{key}`"


_K: Final = ODIBI_RUN_FACET_KEYS
_FACETS: Final = OPENLINEAGE_FACETS
#: The OpenLineage column of the conventions table: each field (by its key) and where an
#: OpenLineage run event carries it. Fields without an entry are not sent.
OPENLINEAGE_FIELDS: Final[dict[str, str]] = {
    "run_id": "`run.runId`",
    "project": "`job.namespace`",
    "pipeline": f"`job.name` (`pipeline.node`), `{_FACETS.parent}.job.name`",
    "pipeline_run_id": f"`{_FACETS.parent}.run.runId`, {_run_facet(_K.pipeline_run_id)}",
    "node": "`job.name` (`pipeline.node`)",
    "attempt": _run_facet(_K.attempt),
    "status": f"`eventType`, {_run_facet(_K.status)}",
    "rows": f"{_run_facet(_K.rows)}, `{_FACETS.output_statistics}.rowCount`",
    "duration": f"`eventTime` of `START` and the terminal event, {_run_facet(_K.duration)}",
    "environment": _run_facet(_K.environment),
    "error": f"`{_FACETS.error_message}.message`, {_run_facet(_K.error_type)}",
    "trace_ids": f"{_run_facet(_K.trace_id)}, {_run_facet(_K.span_id)}",
    "attributes": f"`outputs` (named by `{OPENLINEAGE_OUTPUT_NAMESPACE_ATTRIBUTE}`, "
    f"`{OPENLINEAGE_OUTPUT_NAME_ATTRIBUTE}`)",
    "error_stack": f"`{_FACETS.error_message}.stackTrace`",
}

#: ``reconcile --traces openlineage-file:PATH``: the OpenLineage client's file transport
#: output, reconciled against the catalog like spans are.
OPENLINEAGE_FILE_SCHEME: Final = "openlineage-file"


# --- pipeline-run metrics: the OTel CI/CD semantic conventions ------------------------------------
#
# Per *pipeline* run (not per node run), from the pipeline run's record (``EventKind.PIPELINE``,
# RUNNING at its start, terminal at its end): ``cicd.pipeline.run.duration`` (histogram, ``s``)
# and ``cicd.pipeline.run.active`` (UpDownCounter, ``{run}``). Metric names and attribute keys
# are the semantic-conventions package's constants; the Prometheus names and labels are their
# standard OTel→Prometheus translation, computed here (``tests/test_pipeline_metrics.py``
# proves it with ``opentelemetry-exporter-prometheus``).

CICD_PIPELINE_RUN_STATE: Final = _cicd.CICD_PIPELINE_RUN_STATE
#: The ``cicd.pipeline.run.state`` a pipeline run's metrics carry. Its record is written as it
#: starts executing and once it has ended: no pending (queued) or finalizing phase is seen, so
#: the whole run is its ``executing`` state.
PIPELINE_RUN_STATE: Final = _cicd.CicdPipelineRunStateValues.EXECUTING.value
#: ``error.type`` of a failed pipeline run that raised nothing (nodes of it failed).
ERROR_TYPE_OTHER: Final = _error.ErrorTypeValues.OTHER.value

_PROMETHEUS_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_]")
#: UCUM units and the suffix the OTel→Prometheus translation appends for them.
_PROMETHEUS_UNIT_SUFFIXES: Final = {"s": "seconds", "By": "bytes"}


def prometheus_label(attribute: str) -> str:
    """The Prometheus label an OTel attribute key becomes (``cicd.pipeline.name`` →
    ``cicd_pipeline_name``): every character a label cannot hold is an underscore."""
    return _PROMETHEUS_UNSAFE.sub("_", attribute)


def prometheus_metric_name(otel: str, unit: str, kind: MetricKind) -> str:
    """The Prometheus family an OTel instrument becomes: dots to underscores, the unit's
    suffix (none for an annotation such as ``{run}``), ``_total`` for a counter."""
    name = prometheus_label(otel)
    suffix = "" if unit.startswith("{") else _PROMETHEUS_UNIT_SUFFIXES.get(unit, unit)
    if suffix and not name.endswith(f"_{suffix}"):
        name = f"{name}_{suffix}"
    return f"{name}_total" if kind is MetricKind.COUNTER else name


@dataclass(frozen=True)
class SemconvMetric(Metric):
    """A metric whose OTel attribute keys are semantic-convention names (with dots): they
    are ``attributes``, and ``labels`` their Prometheus translation, in the same order."""

    attributes: tuple[str, ...] = ()


def _semconv_metric(
    key: str,
    otel: str,
    unit: str,
    kind: MetricKind,
    attributes: tuple[str, ...],
    *,
    description: str,
) -> SemconvMetric:
    return SemconvMetric(
        key,
        otel,
        unit,
        prometheus_metric_name(otel, unit, kind),
        kind,
        tuple(prometheus_label(a) for a in attributes),
        description,
        attributes=attributes,
    )


#: Required by the conventions: the pipeline's name and the run's state; ours beside them:
#: the project (pipeline names are unique per project only) and the environment.
_PIPELINE_RUN_ATTRIBUTES: Final = (
    FIELDS.project.label or "project",
    CICD_PIPELINE_NAME,
    FIELDS.environment.label or "environment",
    CICD_PIPELINE_RUN_STATE,
)


@dataclass(frozen=True)
class PipelineMetrics(_Table[SemconvMetric]):
    run_duration: SemconvMetric
    run_active: SemconvMetric


PIPELINE_METRICS: Final = PipelineMetrics(
    run_duration=_semconv_metric(
        "run_duration",
        _cicd_metrics.CICD_PIPELINE_RUN_DURATION,
        "s",
        MetricKind.HISTOGRAM,
        (*_PIPELINE_RUN_ATTRIBUTES, CICD_PIPELINE_RESULT, ERROR_TYPE_ATTRIBUTE),
        description="Wall time of finished pipeline runs, in seconds, by result "
        "(error.type: the exception type of a failed run).",
    ),
    run_active=_semconv_metric(
        "run_active",
        _cicd_metrics.CICD_PIPELINE_RUN_ACTIVE,
        "{run}",
        MetricKind.GAUGE,
        _PIPELINE_RUN_ATTRIBUTES,
        description="Pipeline runs in progress (an UpDownCounter in OpenTelemetry).",
    ),
)


def pipeline_run_attributes(
    *, project: str, pipeline: str, environment: str, status: RunStatus, error_type: str | None
) -> dict[str, str]:
    """The attributes of a pipeline run's metrics, by OTel key. ``cicd.pipeline.result`` once
    the run has one (a terminal status); ``error.type`` if and only if it failed (``FAILURE``,
    ``CRASHED``), as the conventions require: its exception type, else ``_OTHER``."""
    attributes = {
        _PIPELINE_RUN_ATTRIBUTES[0]: project,
        CICD_PIPELINE_NAME: pipeline,
        _PIPELINE_RUN_ATTRIBUTES[2]: environment,
        CICD_PIPELINE_RUN_STATE: PIPELINE_RUN_STATE,
    }
    result = PIPELINE_RESULTS.get(status)
    if result is not None:
        attributes[CICD_PIPELINE_RESULT] = result
        if status in FAILED_STATUSES:
            attributes[ERROR_TYPE_ATTRIBUTE] = error_type or ERROR_TYPE_OTHER
    return attributes
