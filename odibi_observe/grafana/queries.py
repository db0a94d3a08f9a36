"""Every query the dashboards run, composed from the conventions and the catalog schema.

No metric, label, table or column is spelled here: metric names come from
:mod:`odibi_observe.conventions` (``METRICS``, ``SELF_METRICS``, ``SIDECAR_METRICS``,
``RECONCILE_METRICS``), labels from ``FIELDS``, tables and columns from
:mod:`odibi_observe.catalog.schema`. A rename there is a rename in every panel, and a typo is an
``AttributeError`` when the dashboards are built, not an empty panel in production.

Only Prometheus' and Grafana's own vocabulary is written out: ``le`` (histogram buckets), ``up``
and ``job`` (scrape health), and Grafana's macros and variables.

SQL queries are :class:`SqlPanelQuery` objects that declare the columns they return; the
PostgreSQL tests execute each one against a catalog filled by a demo run and compare, and the
panels' field overrides (the trace link on ``trace_id``) are checked against these columns.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from sqlalchemy import Column

from odibi_observe.catalog import schema
from odibi_observe.catalog.schema import (
    ATTEMPT,
    CHECKPOINT_JSON,
    DURATION_MS,
    ENDED_AT,
    ERROR_MESSAGE,
    ERROR_TYPE,
    HEARTBEAT_AT,
    HOST,
    MEMORY_LIMIT,
    PEAK_RSS,
    PID,
    PIPELINE_RUN_ID,
    ROWS,
    RUN_ID,
    SOURCE,
    STARTED_AT,
    STATUS,
    SUGGESTIONS_JSON,
    TRACE_ID,
    WRITES_JSON,
)
from odibi_observe.conventions import (
    CATALOG_TABLE,
    DISCREPANCY_KINDS,
    FAILED_STATUSES,
    FIELDS,
    HEALTH_FINDINGS_TABLE,
    HEALTH_METRICS,
    METRICS,
    PHASE_KEYS,
    PHASE_METRICS,
    RECONCILE_METRICS,
    RECONCILIATION_ITEMS_TABLE,
    RECONCILIATION_TABLE,
    RESOURCE_METRICS,
    SELF_METRICS,
    SIDECAR_METRICS,
    UNCOMMITTED_STATUSES,
    UNJUDGED_STATUSES,
    Field,
    Metric,
    MetricKind,
    RunStatus,
)
from odibi_observe.grafana.datasources import DEPLOYMENT
from odibi_observe.health.model import HealthOptions
from odibi_observe.health.store import OPEN as FINDING_OPEN

# --- Prometheus' own names ------------------------------------------------------------------

#: The bucket bound label of a Prometheus histogram.
BUCKET_LABEL: Final = "le"
#: Prometheus' scrape health series and the label naming the scrape job.
UP: Final = "up"
JOB_LABEL: Final = "job"
INSTANCE_LABEL: Final = "instance"


def label(field: Field) -> str:
    """The Prometheus label of a field (only node-identity fields and status have one)."""
    if field.label is None:
        raise ValueError(f"field {field.key!r} has no Prometheus label")
    return field.label


def column(field: Field) -> str:
    return field.column


PROJECT_LABEL: Final = label(FIELDS.project)
ENVIRONMENT_LABEL: Final = label(FIELDS.environment)
PIPELINE_LABEL: Final = label(FIELDS.pipeline)
NODE_LABEL: Final = label(FIELDS.node)
#: The labels that identify a node across projects and environments.
NODE_IDENTITY: Final = (PROJECT_LABEL, ENVIRONMENT_LABEL, PIPELINE_LABEL, NODE_LABEL)
STATUS_LABEL: Final = label(FIELDS.status)

SUCCESS: Final = RunStatus.SUCCESS.value
RUNNING: Final = RunStatus.RUNNING.value
#: Terminal statuses that are not a success: an exception, or a crash the process saw (SIGTERM,
#: interpreter exit) or a sweeper detected. Not ``CANCELLED``: an operator's abort.
FAILED: Final = tuple(s.value for s in FAILED_STATUSES)
#: Statuses a failure rate is not taken over: an operator's abort and a node that never
#: started (``SKIPPED``).
UNJUDGED: Final = tuple(s.value for s in UNJUDGED_STATUSES)


def series(metric: Metric | str, *matchers: str, suffix: str = "") -> str:
    """``name{m1, m2}``; ``suffix`` selects ``_bucket``/``_sum``/``_count`` of a histogram."""
    name = metric if isinstance(metric, str) else metric.prometheus
    if suffix:
        if not isinstance(metric, Metric) or metric.kind is not MetricKind.HISTOGRAM:
            raise ValueError(f"{name} is not a histogram: no {suffix} series")
        name += suffix
    return f"{name}{{{', '.join(matchers)}}}" if matchers else name


def eq(label_name: str, value: str) -> str:
    return f'{label_name}="{value}"'


def ne(label_name: str, value: str) -> str:
    return f'{label_name}!="{value}"'


def regex(label_name: str, value: str) -> str:
    return f'{label_name}=~"{value}"'


def not_regex(label_name: str, value: str) -> str:
    return f'{label_name}!~"{value}"'


def by(*labels: str) -> str:
    return f"by ({', '.join(labels)})"


# --- template variables -----------------------------------------------------------------------


def var_ref(name: str) -> str:
    """A dashboard variable in a query: Grafana substitutes ``$name`` before it runs the query."""
    return f"${name}"


@dataclass(frozen=True)
class Var:
    """A dashboard variable filtering by one field: the same name in PromQL and in SQL.

    The variable is named after the Prometheus label. Grafana formats its value for each data
    source: a multi-value (or "All") variable becomes a regex alternation ``(a|b)`` in PromQL and
    a list of quoted literals ``'a','b'`` in SQL, so PromQL uses ``=~`` and SQL ``IN (...)``; a
    single-value variable is inserted as it is (SQL escapes its quotes), so PromQL uses ``=``
    and SQL ``= '...'``.
    """

    field: Field
    multi: bool

    @property
    def name(self) -> str:
        return label(self.field)

    def matcher(self) -> str:
        """The PromQL label matcher."""
        ref = var_ref(self.name)
        return regex(self.name, ref) if self.multi else eq(self.name, ref)

    def predicate(self, qualifier: str = "") -> str:
        """The SQL condition on the field's catalog column."""
        col, ref = f"{qualifier}{column(self.field)}", var_ref(self.name)
        return f"{col} IN ({ref})" if self.multi else f"{col} = '{ref}'"


@dataclass(frozen=True)
class Filters:
    """The variables of one dashboard, in the order they cascade (project first)."""

    vars: tuple[Var, ...]

    def matchers(self, *extra: str) -> tuple[str, ...]:
        return (*(v.matcher() for v in self.vars), *extra)

    def predicates(self) -> list[str]:
        return [v.predicate() for v in self.vars]


#: Overview: several pipelines at once ("All" by default).
OVERVIEW_FILTERS: Final = Filters(
    tuple(Var(f, multi=True) for f in (FIELDS.project, FIELDS.environment, FIELDS.pipeline))
)
#: Node drill-down: exactly one node of one pipeline.
NODE_FILTERS: Final = Filters(
    tuple(
        Var(f, multi=False)
        for f in (FIELDS.project, FIELDS.environment, FIELDS.pipeline, FIELDS.node)
    )
)
#: Sidecar health: one or more sidecar instances.
INSTANCE_VAR_NAME: Final = INSTANCE_LABEL


def variable_query(filters: Filters, var: Var) -> str:
    """Grafana's ``label_values`` query for ``var``, narrowed by the variables before it."""
    before = filters.vars[: filters.vars.index(var)]
    return f"label_values({series(METRICS.runs, *(v.matcher() for v in before))}, {var.name})"


def instance_query() -> str:
    return f"label_values({series(UP, eq(JOB_LABEL, DEPLOYMENT.sidecar_job))}, {INSTANCE_LABEL})"


def instance_matcher() -> str:
    return regex(INSTANCE_LABEL, var_ref(INSTANCE_VAR_NAME))


# --- PromQL: node runs -----------------------------------------------------------------------


def agg(op: str, inner: str, *group: str) -> str:
    """``op by (group) (inner)``, or ``op(inner)`` without grouping."""
    return f"{op} {by(*group)} ({inner})" if group else f"{op}({inner})"


def runs_by_status(f: Filters, window: str) -> str:
    return agg("sum", f"increase({series(METRICS.runs, *f.matchers())}[{window}])", STATUS_LABEL)


def _ratio(part: str, whole: str, window: str, group: Sequence[str]) -> str:
    return (
        f"{agg('sum', f'increase({part}[{window}])', *group)}\n"
        f"/\n{agg('sum', f'increase({whole}[{window}])', *group)}"
    )


def success_ratio(f: Filters, window: str, *group: str) -> str:
    ok = series(METRICS.runs, *f.matchers(eq(STATUS_LABEL, SUCCESS)))
    return _ratio(ok, series(METRICS.runs, *f.matchers()), window, group)


def failure_ratio(f: Filters, window: str, *group: str) -> str:
    """Failed runs over runs that were neither cancelled nor skipped: a cancellation, or a
    node that never started, is neither a failure nor a run the node could have failed, so
    many Ctrl-Cs or skips neither trip nor dilute the rate."""
    failed = series(METRICS.runs, *f.matchers(regex(STATUS_LABEL, "|".join(FAILED))))
    judged = series(METRICS.runs, *f.matchers(not_regex(STATUS_LABEL, "|".join(UNJUDGED))))
    return _ratio(failed, judged, window, group)


def runs_total(f: Filters, window: str, *group: str) -> str:
    return agg("sum", f"increase({series(METRICS.runs, *f.matchers())}[{window}])", *group)


def running_now(f: Filters, *group: str) -> str:
    return agg("sum", series(METRICS.running, *f.matchers()), *group)


def rows_per_second(f: Filters, *group: str) -> str:
    return agg("sum", f"rate({series(METRICS.rows, *f.matchers())}[$__rate_interval])", *group)


def _increase(metric: Metric, f: Filters, window: str, *group: str) -> str:
    return agg("sum", f"increase({series(metric, *f.matchers())}[{window}])", *group)


def rows_total(f: Filters, window: str, *group: str) -> str:
    return _increase(METRICS.rows, f, window, *group)


def uncommitted_writes(f: Filters, window: str, *group: str) -> str:
    """Runs that wrote and committed no checkpoint (``uncommitted_write``) in ``window``."""
    return _increase(PHASE_METRICS.uncommitted_writes, f, window, *group)


def duration_quantile(q: float, f: Filters, window: str, *group: str) -> str:
    buckets = series(METRICS.duration, *f.matchers(), suffix="_bucket")
    per_bucket = agg("sum", f"rate({buckets}[{window}])", *group, BUCKET_LABEL)
    return f"histogram_quantile({q}, {per_bucket})"


NODE_GROUP: Final = (PIPELINE_LABEL, NODE_LABEL)

# --- PromQL: the sidecar, the spool, the sinks, reconciliation -----------------------------------


def sidecar_up() -> str:
    return series(UP, eq(JOB_LABEL, DEPLOYMENT.sidecar_job), instance_matcher())


def seconds_since_last_loop() -> str:
    return f"time() - {series(SIDECAR_METRICS.last_loop, instance_matcher())}"


def rate_by(metric: Metric, *group: str, matchers: Sequence[str] = ()) -> str:
    return agg("sum", f"rate({series(metric, *matchers)}[$__rate_interval])", *group)


def gauge_by(metric: Metric, *group: str, matchers: Sequence[str] = ()) -> str:
    return agg("sum", series(metric, *matchers), *group)


def completeness() -> str:
    return f"min({series(RECONCILE_METRICS.completeness)})"


def seconds_since_reconciliation() -> str:
    return f"time() - max({series(RECONCILE_METRICS.last_run)})"


def discrepancies_by_kind() -> str:
    return gauge_by(RECONCILE_METRICS.discrepancies, *RECONCILE_METRICS.discrepancies.labels)


def discrepancies_total() -> str:
    return f"sum({series(RECONCILE_METRICS.discrepancies)})"


def spool_backlog_by_sink(*matchers: str) -> str:
    return gauge_by(
        SIDECAR_METRICS.spool_backlog, *SIDECAR_METRICS.spool_backlog.labels, matchers=matchers
    )


def sink_errors_by_sink(*matchers: str) -> str:
    return rate_by(SELF_METRICS.sink_errors, *SELF_METRICS.sink_errors.labels, matchers=matchers)


# --- SQL ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlPanelQuery:
    """One catalog query of a panel: its SQL (with Grafana macros) and the columns it returns."""

    key: str
    sql: str
    columns: tuple[str, ...]
    time_series: bool = False


def _select(items: Sequence[tuple[str, str]]) -> tuple[str, tuple[str, ...]]:
    """``SELECT expr AS alias, ...`` over several lines, and the aliases in order."""
    lines = ",\n".join(
        f"  {expr}" if expr == alias else f"  {expr} AS {alias}" for expr, alias in items
    )
    return f"SELECT\n{lines}", tuple(alias for _, alias in items)


def _query(
    key: str, items: Sequence[tuple[str, str]], rest: str, *, time_series: bool = False
) -> SqlPanelQuery:
    head, columns = _select(items)
    return SqlPanelQuery(key, f"{head}\n{rest.strip()}", columns, time_series)


def _as_is(*columns: str) -> list[tuple[str, str]]:
    """Columns selected under their own name."""
    return [(col, col) for col in columns]


def _named(*columns: Column[typing.Any]) -> list[tuple[str, str]]:
    """Schema columns selected under their own name."""
    return _as_is(*(col.name for col in columns))


def _where(*conditions: str, indent: str = "") -> str:
    return "WHERE " + f"\n{indent}  AND ".join(conditions)


def _in(values: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


PROJECT_COL: Final = column(FIELDS.project)
ENVIRONMENT_COL: Final = column(FIELDS.environment)
PIPELINE_COL: Final = column(FIELDS.pipeline)
NODE_COL: Final = column(FIELDS.node)

#: Output names of the columns panels link from: the trace id opens Tempo, the node opens the
#: node drill-down (which also needs its pipeline).
TRACE_ID_OUT: Final = TRACE_ID
NODE_OUT: Final = NODE_LABEL
PIPELINE_OUT: Final = PIPELINE_LABEL
PROJECT_OUT: Final = PROJECT_LABEL
ENVIRONMENT_OUT: Final = ENVIRONMENT_LABEL
#: The columns that identify a node, named like the drill-down's variables so that a row can
#: open the drill-down on itself.
IDENTITY: Final = (
    (PROJECT_COL, PROJECT_OUT),
    (ENVIRONMENT_COL, ENVIRONMENT_OUT),
    (PIPELINE_COL, PIPELINE_OUT),
    (NODE_COL, NODE_OUT),
)
STARTED_OUT: Final = "started"
TIME_OUT: Final = "time"


def _suggestions(col: str) -> str:
    """A run's suggestions (a JSON array of strings) as one line each."""
    return (
        f"(SELECT string_agg(s, E'\\n') "  # noqa: S608 - names from the schema, no input
        f"FROM jsonb_array_elements_text({col}::jsonb) AS s)"
    )


def currently_running(f: Filters) -> SqlPanelQuery:
    """Runs whose row is still RUNNING, oldest first: long ones may be dead processes."""
    return _query(
        "currently_running",
        [
            (STARTED_AT, STARTED_OUT),
            *IDENTITY,
            *_as_is(ATTEMPT, HOST, PID),
            (HEARTBEAT_AT, "last_heartbeat"),
            (f"extract(epoch FROM $__timeTo()::timestamptz - {STARTED_AT})", "running_s"),
            *_as_is(RUN_ID),
            (TRACE_ID, TRACE_ID_OUT),
        ],
        f"""
FROM {CATALOG_TABLE}
{_where(f"{STATUS} = '{RUNNING}'", *f.predicates())}
ORDER BY {STARTED_AT}
LIMIT 100""",
    )


def recent_failures(f: Filters) -> SqlPanelQuery:
    return _query(
        "recent_failures",
        [
            (STARTED_AT, STARTED_OUT),
            *IDENTITY,
            *_as_is(STATUS, ATTEMPT, ERROR_TYPE, ERROR_MESSAGE),
            (_suggestions(SUGGESTIONS_JSON), "suggestions"),
            *_as_is(RUN_ID),
            (TRACE_ID, TRACE_ID_OUT),
        ],
        f"""
FROM {CATALOG_TABLE}
{_where(f"{STATUS} IN {_in(FAILED)}", f"$__timeFilter({STARTED_AT})", *f.predicates())}
ORDER BY {STARTED_AT} DESC
LIMIT 50""",
    )


#: ``writes_json`` holds a write that awaits its checkpoint (the JSON the catalog writes).
_AWAITS_CHECKPOINT: Final = f'%"{PHASE_KEYS.awaits_checkpoint}":true%'


def uncommitted_write_runs(f: Filters) -> SqlPanelQuery:
    """Runs that wrote (awaiting their checkpoint), committed none and did not succeed: what
    ``odibi_node_uncommitted_writes_total`` counts, with the writes to undo."""
    return _query(
        "uncommitted_write_runs",
        [
            (STARTED_AT, STARTED_OUT),
            *IDENTITY,
            *_as_is(STATUS, ERROR_TYPE, WRITES_JSON, RUN_ID),
            (TRACE_ID, TRACE_ID_OUT),
        ],
        f"""
FROM {CATALOG_TABLE}
{
            _where(
                f"{STATUS} IN {_in([s.value for s in UNCOMMITTED_STATUSES])}",
                f"{CHECKPOINT_JSON} IS NULL",
                f"{WRITES_JSON} LIKE '{_AWAITS_CHECKPOINT}'",
                f"$__timeFilter({STARTED_AT})",
                *f.predicates(),
            )
        }
ORDER BY {STARTED_AT} DESC
LIMIT 50""",
    )


def slowest_nodes(f: Filters) -> SqlPanelQuery:
    """Per node: runs, exact p50/p95/max duration in the range, and its slowest run's trace.

    Two steps, because the expensive part is per-row: the aggregate computes both quantiles
    with one ordered-set aggregate (one sort per node; PostgreSQL computes the identical call
    in ORDER BY only once) and keeps the 20 slowest nodes; only
    for those 20 does a lateral lookup find the slowest run, through the (pipeline, node,
    started_at) index, instead of carrying run ids through every node's sort. The grouping
    starts with the node, the most selective key: the sort behind it then rarely compares a
    second string (on 10 million runs, 24 hours: about half the time of project first).
    """
    finished = (
        f"$__timeFilter({{q}}{STARTED_AT})",
        f"{{q}}{STATUS} <> '{RUNNING}'",
        f"{{q}}{DURATION_MS} IS NOT NULL",
    )
    quantiles = f"percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY {DURATION_MS})"
    inner, _ = _select(
        [
            *IDENTITY,
            ("count(*)", "runs"),
            (quantiles, "quantiles"),
            (f"max({DURATION_MS})", "max_ms"),
        ]
    )
    same_node = [
        f"r.{col} IS NOT DISTINCT FROM s.{out}"
        if col in (PROJECT_COL, ENVIRONMENT_COL)
        else f"r.{col} = s.{out}"
        for col, out in IDENTITY
    ]
    head, columns = _select(
        [
            *((f"s.{out}", out) for _, out in IDENTITY),
            ("s.runs", "runs"),
            ("s.quantiles[1]", "p50_ms"),
            ("s.quantiles[2]", "p95_ms"),
            ("s.max_ms", "max_ms"),
            (f"slowest.{RUN_ID}", "slowest_run_id"),
            (f"slowest.{TRACE_ID}", TRACE_ID_OUT),
        ]
    )
    indent = "\n".join("  " + line for line in inner.splitlines())
    sql = f"""{head}
FROM (
{indent}
  FROM {CATALOG_TABLE}
  {_where(*(c.format(q="") for c in finished), *f.predicates(), indent="  ")}
  GROUP BY {NODE_COL}, {PIPELINE_COL}, {ENVIRONMENT_COL}, {PROJECT_COL}
  ORDER BY ({quantiles})[2] DESC
  LIMIT 20
) AS s
LEFT JOIN LATERAL (
  SELECT r.{RUN_ID}, r.{TRACE_ID}
  FROM {CATALOG_TABLE} AS r
  {_where(*same_node, *(c.format(q="r.") for c in finished), indent="  ")}
  ORDER BY r.{DURATION_MS} DESC, r.{RUN_ID}
  LIMIT 1
) AS slowest ON true
ORDER BY p95_ms DESC"""  # noqa: S608 - names from the schema, values are Grafana's
    return SqlPanelQuery("slowest_nodes", sql, columns)


def node_history(f: Filters) -> SqlPanelQuery:
    return _query(
        "node_history",
        [
            (STARTED_AT, STARTED_OUT),
            (ENDED_AT, "ended"),
            *_as_is(STATUS, ATTEMPT, ROWS, DURATION_MS, ERROR_TYPE),
            (_suggestions(SUGGESTIONS_JSON), "suggestions"),
            *_as_is(HOST, SOURCE, PIPELINE_RUN_ID, RUN_ID),
            (TRACE_ID, TRACE_ID_OUT),
        ],
        f"""
FROM {CATALOG_TABLE}
{_where(*f.predicates(), f"$__timeFilter({STARTED_AT})")}
ORDER BY {STARTED_AT} DESC
LIMIT 200""",
    )


def node_attempts(f: Filters) -> SqlPanelQuery:
    """Runs per time bucket by attempt number: retries show up as attempt 2, 3, ..."""
    return _query(
        "node_attempts",
        [
            (f"$__timeGroup({STARTED_AT}, $__interval)", TIME_OUT),
            (f"'attempt ' || {ATTEMPT}", "metric"),
            ("count(*)", "runs"),
        ],
        f"""
FROM {CATALOG_TABLE}
{_where(*f.predicates(), f"$__timeFilter({STARTED_AT})")}
GROUP BY 1, 2
ORDER BY 1, 2""",
        time_series=True,
    )


def node_rows_trend(f: Filters) -> SqlPanelQuery:
    """Rows per time bucket, and per run: a source that shrank shows up here first."""
    return _query(
        "node_rows_trend",
        [
            (f"$__timeGroup({STARTED_AT}, $__interval)", TIME_OUT),
            (f"sum({ROWS})", "rows_total"),
            (f"avg({ROWS})", "rows_per_run"),
        ],
        f"""
FROM {CATALOG_TABLE}
{_where(*f.predicates(), f"$__timeFilter({STARTED_AT})", f"{ROWS} IS NOT NULL")}
GROUP BY 1
ORDER BY 1""",
        time_series=True,
    )


def node_error_types(f: Filters) -> SqlPanelQuery:
    latest = f"ORDER BY {STARTED_AT} DESC"
    return _query(
        "node_error_types",
        [
            (ERROR_TYPE, ERROR_TYPE),
            ("count(*)", "runs"),
            (f"max({STARTED_AT})", "last_seen"),
            (f"(array_agg({ERROR_MESSAGE} {latest}))[1]", "last_message"),
            (f"(array_agg({SUGGESTIONS_JSON} {latest}))[1]", "last_suggestions"),
            (f"(array_agg({TRACE_ID} {latest}))[1]", TRACE_ID_OUT),
        ],
        f"""
FROM {CATALOG_TABLE}
{_where(*f.predicates(), f"$__timeFilter({STARTED_AT})", f"{STATUS} IN {_in(FAILED)}")}
GROUP BY {ERROR_TYPE}
ORDER BY runs DESC
LIMIT 20""",
    )


_REPORT = schema.reconciliation.c
_ITEM = schema.reconciliation_items.c


def _latest_report() -> str:
    return (
        f"(SELECT {_REPORT.report_id.name} FROM {RECONCILIATION_TABLE} "  # noqa: S608
        f"ORDER BY {_REPORT.created_at.name} DESC LIMIT 1)"
    )


def last_report() -> SqlPanelQuery:
    return _query(
        "last_report",
        [
            *_named(
                _REPORT.created_at,
                _REPORT.window_start,
                _REPORT.window_end,
                _REPORT.catalog_runs,
                _REPORT.trace_runs,
                _REPORT.matched,
                _REPORT.discrepancies,
                _REPORT.completeness_ratio,
                _REPORT.repaired,
                _REPORT.errors,
                _REPORT.report_id,
            ),
        ],
        f"""
FROM {RECONCILIATION_TABLE}
ORDER BY {_REPORT.created_at.name} DESC
LIMIT 1""",
    )


def _per_report(key: str, *series: tuple[str, str]) -> SqlPanelQuery:
    """A time series with one point per reconciliation report in the time range."""
    return _query(
        key,
        [(_REPORT.created_at.name, TIME_OUT), *series],
        f"""
FROM {RECONCILIATION_TABLE}
{_where(f"$__timeFilter({_REPORT.created_at.name})")}
ORDER BY 1""",
        time_series=True,
    )


def discrepancies_per_report() -> SqlPanelQuery:
    """One series per discrepancy kind, from each report's counts (a JSON object by kind)."""
    counts = f"{_REPORT.discrepancies_json.name}::jsonb"
    return _per_report(
        "discrepancies_per_report",
        *((f"COALESCE(({counts} ->> '{kind}')::bigint, 0)", kind) for kind in DISCREPANCY_KINDS),
    )


def completeness_per_report() -> SqlPanelQuery:
    return _per_report("completeness_per_report", *_named(_REPORT.completeness_ratio))


def last_report_items() -> SqlPanelQuery:
    return _query(
        "last_report_items",
        [
            (_ITEM.kind.name, _ITEM.kind.name),
            (_ITEM[PIPELINE_COL].name, PIPELINE_OUT),
            (_ITEM[NODE_COL].name, NODE_OUT),
            (_ITEM[STARTED_AT].name, STARTED_OUT),
            (_ITEM.repaired.name, _ITEM.repaired.name),
            (_ITEM.detail.name, _ITEM.detail.name),
            (_ITEM[RUN_ID].name, RUN_ID),
            (_ITEM[TRACE_ID].name, TRACE_ID_OUT),
        ],
        f"""
FROM {RECONCILIATION_ITEMS_TABLE}
{_where(f"{_ITEM.report_id.name} = {_latest_report()}")}
ORDER BY {_ITEM.kind.name}, {_ITEM[STARTED_AT].name}
LIMIT 500""",
    )


# --- data health: bands, freshness, findings, memory -------------------------------------------
#
# The bands and the freshness allowance are the ``odibi-observe health`` defaults
# (:class:`~odibi_observe.health.model.HealthOptions`), so what the dashboard draws is what the
# nightly pass judges by: a run outside its band is the run a health pass reports.

_HEALTH: Final = HealthOptions()
_FINDING = schema.health_findings.c

#: Data-health dashboard: several pipelines and nodes at once ("All" by default).
HEALTH_FILTERS: Final = Filters(
    tuple(
        Var(f, multi=True)
        for f in (FIELDS.project, FIELDS.environment, FIELDS.pipeline, FIELDS.node)
    )
)
#: The findings table has no project or environment: only pipeline and node filter it.
_FINDING_FILTERS: Final = Filters(
    tuple(v for v in HEALTH_FILTERS.vars if v.field in (FIELDS.pipeline, FIELDS.node))
)


def _interval(delta_seconds: float) -> str:
    return f"interval '{int(delta_seconds)} seconds'"


def value_band(f: Filters, col: str, key: str) -> SqlPanelQuery:
    """Each SUCCESS run's ``col`` and its node's band, mean ± sensitivity x stddev of the
    node's SUCCESS runs in the training period before it (long format: one series per node
    and line). The band is drawn only where the node has ``min_points`` runs of history."""
    training = _interval(_HEALTH.training.total_seconds())
    window = (
        f"PARTITION BY {PIPELINE_COL}, {NODE_COL} ORDER BY {STARTED_AT} "
        f"RANGE BETWEEN {training} PRECEDING AND CURRENT ROW EXCLUDE CURRENT ROW"
    )
    k = _HEALTH.sensitivity
    sql = f"""WITH runs AS (
  SELECT
    {STARTED_AT},
    {PIPELINE_COL} || '/' || {NODE_COL} AS node_key,
    {col}::float AS v,
    avg({col}) OVER w AS mean,
    stddev_samp({col}) OVER w AS sd,
    count({col}) OVER w AS n
  FROM {CATALOG_TABLE}
  {
        _where(
            f"{STATUS} = '{SUCCESS}'",
            f"{col} IS NOT NULL",
            f"{STARTED_AT} >= $__timeFrom()::timestamptz - {training}",
            f"{STARTED_AT} <= $__timeTo()::timestamptz",
            *f.predicates(),
            indent="  ",
        )
    }
  WINDOW w AS ({window})
)
SELECT
  runs.{STARTED_AT} AS {TIME_OUT},
  runs.node_key || ' ' || line.name AS metric,
  line.reading AS reading
FROM runs
CROSS JOIN LATERAL (VALUES
  ('{col}', runs.v),
  ('band low', CASE WHEN runs.n >= {_HEALTH.min_points} THEN runs.mean - {k} * runs.sd END),
  ('band high', CASE WHEN runs.n >= {_HEALTH.min_points} THEN runs.mean + {k} * runs.sd END)
) AS line(name, reading)
{_where(f"$__timeFilter(runs.{STARTED_AT})")}
ORDER BY 1, 2"""  # noqa: S608 - names from the schema, values are Grafana's
    return SqlPanelQuery(key, sql, (TIME_OUT, "metric", "reading"), time_series=True)


def rows_band(f: Filters) -> SqlPanelQuery:
    return value_band(f, ROWS, "rows_band")


def duration_band(f: Filters) -> SqlPanelQuery:
    return value_band(f, DURATION_MS, "duration_band")


def freshness(f: Filters) -> SqlPanelQuery:
    """Per node: its last SUCCESS, how old it is, the learned cadence and the allowed age
    (``freshness_factor`` x the mean interval between successes, at least
    ``freshness_min``); the stalest first. Declared SLAs live in the health config file,
    which the dashboard cannot read: the health findings below include them."""
    span = _interval((_HEALTH.training + timedelta(days=1)).total_seconds())
    cadence = f"extract(epoch FROM max({STARTED_AT}) - min({STARTED_AT})) / NULLIF(count(*) - 1, 0)"
    allowed = (
        f"GREATEST({_HEALTH.freshness_factor} * ({cadence}), "
        f"{_HEALTH.freshness_min.total_seconds()})"
    )
    age = f"extract(epoch FROM $__timeTo()::timestamptz - max({STARTED_AT}))"
    return _query(
        "freshness",
        [
            *IDENTITY,
            (f"max({STARTED_AT})", "last_success"),
            ("count(*)", "successes"),
            (age, "age_s"),
            (cadence, "cadence_s"),
            (allowed, "allowed_s"),
            (
                f"CASE WHEN count(*) >= {_HEALTH.min_points} THEN ({age}) / ({allowed}) END",
                "age_of_allowed",
            ),
        ],
        f"""
FROM {CATALOG_TABLE}
{
            _where(
                f"{STATUS} = '{SUCCESS}'",
                f"{STARTED_AT} >= $__timeTo()::timestamptz - {span}",
                f"{STARTED_AT} <= $__timeTo()::timestamptz",
                *f.predicates(),
            )
        }
GROUP BY {NODE_COL}, {PIPELINE_COL}, {ENVIRONMENT_COL}, {PROJECT_COL}
ORDER BY age_of_allowed DESC NULLS LAST
LIMIT 100""",
    )


def open_findings(f: Filters) -> SqlPanelQuery:
    """The findings a health pass recorded that are still open, newest first."""
    preds = [v.predicate() for v in _FINDING_FILTERS.vars]
    return _query(
        "open_findings",
        [
            *_named(_FINDING.kind),
            (_FINDING[PIPELINE_COL].name, PIPELINE_OUT),
            (_FINDING[NODE_COL].name, NODE_OUT),
            *_named(
                _FINDING.opened_at,
                _FINDING.last_seen_at,
                _FINDING.passes,
                _FINDING.score,
                _FINDING.baseline,
                _FINDING.value,
                _FINDING.detail,
            ),
        ],
        f"""
FROM {HEALTH_FINDINGS_TABLE}
{_where(f"{_FINDING.state.name} = '{FINDING_OPEN}'", *preds)}
ORDER BY {_FINDING.opened_at.name} DESC, {_FINDING.kind.name}
LIMIT 200""",
    )


def memory_per_run(f: Filters) -> SqlPanelQuery:
    """Each SUCCESS run's peak memory and the limit it ran under, per node (long format)."""
    sql = f"""SELECT
  {STARTED_AT} AS {TIME_OUT},
  {PIPELINE_COL} || '/' || {NODE_COL} || ' ' || line.name AS metric,
  line.reading AS reading
FROM {CATALOG_TABLE}
CROSS JOIN LATERAL (VALUES
  ('{PEAK_RSS}', {PEAK_RSS}::float),
  ('{MEMORY_LIMIT}', {MEMORY_LIMIT}::float)
) AS line(name, reading)
{
        _where(
            f"{STATUS} = '{SUCCESS}'",
            f"{PEAK_RSS} IS NOT NULL",
            f"$__timeFilter({STARTED_AT})",
            *f.predicates(),
        )
    }
ORDER BY 1, 2"""  # noqa: S608 - names from the schema, values are Grafana's
    return SqlPanelQuery("memory_per_run", sql, (TIME_OUT, "metric", "reading"), time_series=True)


def mean_peak_rss(f: Filters, window: str, *group: str) -> str:
    """Mean peak memory per run over ``window`` (the histogram's sum / count)."""
    total = series(RESOURCE_METRICS.peak_rss, *f.matchers(), suffix="_sum")
    runs = series(RESOURCE_METRICS.peak_rss, *f.matchers(), suffix="_count")
    return (
        f"{agg('sum', f'increase({total}[{window}])', *group)}\n"
        f"/\n{agg('sum', f'increase({runs}[{window}])', *group)}"
    )


def memory_limit(f: Filters, *group: str) -> str:
    """The memory limit per node; nodes running without one are left out."""
    return agg("max", f"{series(RESOURCE_METRICS.memory_limit, *f.matchers())} > 0", *group)


def memory_share(f: Filters, window: str) -> str:
    """Mean peak memory per run / the limit, per node."""
    group = NODE_IDENTITY
    return (
        f"(\n{mean_peak_rss(f, window, *group)}\n)\n/ on ({', '.join(group)})\n"
        f"{memory_limit(f, *group)}"
    )


def open_findings_total(f: Filters) -> str:
    finding = series(HEALTH_METRICS.open_finding, *(v.matcher() for v in _FINDING_FILTERS.vars))
    return f"sum({finding})"


def findings_by_kind() -> str:
    return gauge_by(HEALTH_METRICS.findings, *HEALTH_METRICS.findings.labels)


def seconds_since_health_pass() -> str:
    return f"time() - max({series(HEALTH_METRICS.last_run)})"


def crash_causes(f: Filters) -> SqlPanelQuery:
    """CRASHED runs in the range by node and cause (``error_type``: OOMKilled, SIGKILL, ...):
    the cause Prometheus cannot see, from the catalog."""
    crashed = RunStatus.CRASHED.value
    return _query(
        "crash_causes",
        [
            *IDENTITY,
            (ERROR_TYPE, ERROR_TYPE),
            ("count(*)", "runs"),
            (f"max({STARTED_AT})", "last_seen"),
            (f"max({PEAK_RSS})", "max_" + PEAK_RSS),
            (f"max({MEMORY_LIMIT})", MEMORY_LIMIT),
            (f"(array_agg({TRACE_ID} ORDER BY {STARTED_AT} DESC))[1]", TRACE_ID_OUT),
        ],
        f"""
FROM {CATALOG_TABLE}
{_where(f"{STATUS} = '{crashed}'", f"$__timeFilter({STARTED_AT})", *f.predicates())}
GROUP BY {NODE_COL}, {PIPELINE_COL}, {ENVIRONMENT_COL}, {PROJECT_COL}, {ERROR_TYPE}
ORDER BY last_seen DESC
LIMIT 100""",
    )
