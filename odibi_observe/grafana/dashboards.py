"""The five dashboards, built with grafana-foundation-sdk from the queries in :mod:`.queries`.

* **Pipeline overview** — runs by status, success rate, rows/s and duration quantiles per node
  (Prometheus); what is running, the slowest nodes and the recent failures with their
  suggestions (the catalog). Every catalog row links to its trace in Tempo and to the node's
  drill-down.
* **Node drill-down** — one node of one pipeline: history, attempts, rows trend, error types.
* **Catalog completeness & reconciliation** — the nightly proof that every traced run is in the
  catalog: completeness, discrepancies by kind over time, the last report's runs, and the
  sidecar backlog and sink errors that usually explain a gap.
* **Sidecar health** — ingest rate, spool size and backlog, sink errors, sweeper actions.
* **Data health** — rows and duration of every run against its node's band, freshness, the
  open findings of the nightly health pass, peak memory against the memory limit, crashes by
  cause.

Each builder returns a :class:`BuiltDashboard`: the SDK's dashboard model plus the catalog
queries its panels run, which the tests execute against PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
from grafana_foundation_sdk.builders.dashboard import (
    DashboardLink,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery as PromQuery
from grafana_foundation_sdk.builders.tempo import TempoQuery
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from odibi_observe.conventions import (
    HEALTH_METRICS,
    RECONCILE_METRICS,
    SELF_METRICS,
    SIDECAR_METRICS,
)
from odibi_observe.grafana import queries as q
from odibi_observe.grafana.datasources import CATALOG, PROMETHEUS, TEMPO
from odibi_observe.grafana.postgres import SqlFormat, SqlQuery

TAG: Final = "odibi-observe"

OVERVIEW_UID: Final = "odibi-pipeline-overview"
NODE_UID: Final = "odibi-node-drilldown"
RECONCILIATION_UID: Final = "odibi-reconciliation"
SIDECAR_UID: Final = "odibi-sidecar-health"
DATA_HEALTH_UID: Final = "odibi-data-health"


@dataclass
class BuiltDashboard:
    """A dashboard model and the catalog queries of its panels, in panel order."""

    uid: str
    model: dashboard.Dashboard
    sql: list[q.SqlPanelQuery] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"


# --- queries ---------------------------------------------------------------------------------


def prom(
    expr: str,
    legend: str | None = None,
    *,
    ref: str = "A",
    instant: bool = False,
    table_format: bool = False,
    exemplar: bool = False,
) -> PromQuery:
    """A Prometheus target. ``exemplar``: also ask for the series' exemplars, drawn as points
    that open the run's trace (the duration histogram's samples carry the run's span)."""
    query = PromQuery().expr(expr).ref_id(ref).datasource(PROMETHEUS.ref())
    query = query.instant() if instant else query.range()
    if exemplar:
        query = query.exemplar(True)
    if legend is not None:
        query = query.legend_format(legend)
    if table_format:
        query = query.format(PromQueryFormat.TABLE)
    return query


def legend(*labels: str) -> str:
    return " / ".join("{{" + name + "}}" for name in labels)


class _SqlTargets:
    """Collects the catalog queries of one dashboard while its panels are built."""

    def __init__(self) -> None:
        self.queries: list[q.SqlPanelQuery] = []

    def __call__(self, query: q.SqlPanelQuery, *, ref: str = "A") -> SqlQuery:
        self.queries.append(query)
        fmt = SqlFormat.TIME_SERIES if query.time_series else SqlFormat.TABLE
        return SqlQuery().raw_sql(query.sql).format(fmt).ref_id(ref)


# --- field overrides: links ------------------------------------------------------------------


def trace_link() -> dashboard.DynamicConfigValue:
    """A data link from a ``trace_id`` cell to that trace in the Tempo data source.

    An *internal* link (Grafana's ``DataLink.internal``): Grafana opens Explore on the Tempo
    data source with the cell's value as the query, which Tempo resolves as a trace id. The
    query object is the SDK's own Tempo model.
    """
    query = (
        TempoQuery()
        .ref_id("A")
        .query_type("traceql")
        .query("${__value.raw}")
        .datasource(TEMPO.ref())
        .build()
    )
    return dashboard.DynamicConfigValue(
        id_val="links",
        value=[
            {
                "title": "Open this run's trace in Tempo",
                "url": "",
                "internal": {
                    "datasourceUid": TEMPO.uid,
                    "datasourceName": TEMPO.name,
                    "query": query,
                },
            }
        ],
    )


def node_link() -> dashboard.DynamicConfigValue:
    """A data link from a ``node`` cell to the node drill-down, keeping the time range."""
    params = "&".join(
        f"var-{var.name}=${{__data.fields.{out}}}"
        for var, out in zip(
            q.NODE_FILTERS.vars,
            (q.PROJECT_OUT, q.ENVIRONMENT_OUT, q.PIPELINE_OUT, q.NODE_OUT),
            strict=True,
        )
    )
    return dashboard.DynamicConfigValue(
        id_val="links",
        value=[
            {
                "title": "Open the node drill-down",
                "url": f"/d/{NODE_UID}?{params}&${{__url_time_range}}",
            }
        ],
    )


def with_links(panel: table.Panel, query: q.SqlPanelQuery) -> table.Panel:
    """Trace links on ``trace_id``, drill-down links on ``node``, where the query has them."""
    if q.TRACE_ID_OUT in query.columns:
        panel = panel.override_by_name(q.TRACE_ID_OUT, [trace_link()])
    if {q.NODE_OUT, q.PIPELINE_OUT, q.PROJECT_OUT, q.ENVIRONMENT_OUT} <= set(query.columns):
        panel = panel.override_by_name(q.NODE_OUT, [node_link()])
    return panel


# --- panels ----------------------------------------------------------------------------------


def _thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=value, color=color) for value, color in steps])
    )


def stat_panel(
    title: str,
    description: str,
    *targets: PromQuery,
    unit: str = "short",
    thresholds: ThresholdsConfig | None = None,
    span: int = 6,
    text_mode: common.BigValueTextMode = common.BigValueTextMode.AUTO,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS.ref())
        .unit(unit)
        .height(5)
        .span(span)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .color_mode(common.BigValueColorMode.VALUE)
    )
    if thresholds is not None:
        panel = panel.thresholds(thresholds)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def series_panel(
    title: str,
    description: str,
    *targets: PromQuery | SqlQuery,
    unit: str = "short",
    span: int = 12,
    height: int = 8,
    bars: bool = False,
    stacked: bool = False,
    datasource: dashboard.DataSourceRef | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource or PROMETHEUS.ref())
        .unit(unit)
        .height(height)
        .span(span)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .fill_opacity(10)
        .line_width(1)
    )
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    for target in targets:
        panel = panel.with_target(target)
    return panel


def sql_table(
    title: str,
    description: str,
    query: q.SqlPanelQuery,
    sql: _SqlTargets,
    *,
    span: int = 24,
    height: int = 9,
) -> table.Panel:
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(CATALOG.ref())
        .height(height)
        .span(span)
        .show_header(True)
        .with_target(sql(query))
    )
    return with_links(panel, query)


def sql_series(
    title: str,
    description: str,
    query: q.SqlPanelQuery,
    sql: _SqlTargets,
    *,
    unit: str = "short",
    span: int = 12,
    bars: bool = False,
    stacked: bool = False,
) -> timeseries.Panel:
    return series_panel(
        title,
        description,
        sql(query),
        unit=unit,
        span=span,
        bars=bars,
        stacked=stacked,
        datasource=CATALOG.ref(),
    )


# --- dashboard frame ---------------------------------------------------------------------------


def _variables(filters: q.Filters) -> list[QueryVariable]:
    out = []
    for var in filters.vars:
        variable = (
            QueryVariable(var.name)
            .label(var.name)
            .datasource(PROMETHEUS.ref())
            .query(q.variable_query(filters, var))
            .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
        )
        if var.multi:
            # No custom "All" value: Grafana then expands All to every value, which both the
            # PromQL regex and the SQL IN list understand.
            variable = (
                variable.multi(True)
                .include_all(True)
                .current(dashboard.VariableOption(selected=True, text="All", value="$__all"))
            )
        out.append(variable)
    return out


def _frame(uid: str, title: str, description: str, time_from: str = "now-6h") -> DashboardBuilder:
    return (
        DashboardBuilder(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .time(time_from, "now")
        .refresh("1m")
        .timezone("utc")
        .editable()
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .link(
            DashboardLink("odibi-observe")
            .type(dashboard.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


def _number_panels(model: dashboard.Dashboard) -> dashboard.Dashboard:
    """Stable panel ids: 1, 2, ... in layout order (rows and the panels inside them)."""
    next_id = 1
    for panel in model.panels or []:
        panel.id_val = next_id
        next_id += 1
        for inner in getattr(panel, "panels", None) or []:
            inner.id_val = next_id
            next_id += 1
    return model


# --- the dashboards ---------------------------------------------------------------------------


def pipeline_overview() -> BuiltDashboard:
    f = q.OVERVIEW_FILTERS
    sql = _SqlTargets()
    status = q.STATUS_LABEL
    builder = (
        _frame(
            OVERVIEW_UID,
            "odibi-observe / Pipeline overview",
            "Every node run of the selected pipelines: how many, how fast, what failed "
            "and why. Metrics from Prometheus; runs from the meta_runs catalog, each linked "
            "to its trace.",
        )
        .variables(list(_variables(f)))
        .with_row(Row("Runs (Prometheus)"))
        .with_panel(
            stat_panel(
                "Runs by status",
                "Node runs that ended in the time range, by status.",
                prom(q.runs_by_status(f, "$__range"), legend(status), instant=True),
                span=9,
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .with_panel(
            stat_panel(
                "Success rate",
                "SUCCESS runs / all finished runs in the time range.",
                prom(q.success_ratio(f, "$__range"), instant=True),
                unit="percentunit",
                thresholds=_thresholds((None, "red"), (0.95, "orange"), (0.99, "green")),
                span=5,
            )
        )
        .with_panel(
            stat_panel(
                "Running now",
                "Node runs in progress, as the running processes report them.",
                prom(q.running_now(f), instant=True),
                span=5,
            )
        )
        .with_panel(
            stat_panel(
                "Rows processed",
                "Rows processed by node runs that ended in the time range.",
                prom(q.rows_total(f, "$__range"), instant=True),
                span=5,
            )
        )
        .with_panel(
            series_panel(
                "Runs by status",
                "Finished node runs per interval, stacked by status.",
                prom(q.runs_by_status(f, "$__interval"), legend(status)),
                bars=True,
                stacked=True,
            ).interval("1m")
        )
        .with_panel(
            series_panel(
                "Rows per second by node",
                "Throughput of each node (rate of rows processed).",
                prom(q.rows_per_second(f, *q.NODE_GROUP), legend(*q.NODE_GROUP)),
                unit="rowsps",
            )
        )
        .with_panel(
            series_panel(
                "Duration p50 / p95 by node",
                "Quantiles of node wall time from the duration histogram, per node.",
                prom(
                    q.duration_quantile(0.5, f, "$__rate_interval", *q.NODE_GROUP),
                    "p50 " + legend(*q.NODE_GROUP),
                    ref="A",
                    exemplar=True,
                ),
                prom(
                    q.duration_quantile(0.95, f, "$__rate_interval", *q.NODE_GROUP),
                    "p95 " + legend(*q.NODE_GROUP),
                    ref="B",
                    exemplar=True,
                ),
                unit="s",
                span=24,
            )
        )
        .with_panel(_node_summary(f))
        .with_row(Row("Runs (catalog)"))
        .with_panel(
            sql_table(
                "Running now (catalog)",
                "Rows still RUNNING in meta_runs, oldest first. A run far older than its usual "
                "duration with an old heartbeat is probably a dead process the sweeper will close "
                "as CRASHED.",
                q.currently_running(f),
                sql,
                height=7,
            )
        )
        .with_panel(
            sql_table(
                "Recent failures, with suggestions",
                "FAILURE and CRASHED runs in the time range, newest first, with the error and the "
                "actionable suggestions recorded with it. trace_id opens the run's trace.",
                q.recent_failures(f),
                sql,
                height=10,
            )
        )
        .with_panel(
            sql_table(
                "Slowest nodes",
                "Per node, the p50/p95/max duration of finished runs in the time range (exact, "
                "from the catalog) and the trace of its slowest run.",
                q.slowest_nodes(f),
                sql,
                height=10,
            )
        )
    )
    return BuiltDashboard(OVERVIEW_UID, _number_panels(builder.build()), sql.queries)


def _node_summary(f: q.Filters) -> table.Panel:
    """One row per node: runs, failure ratio, p50/p95 over the whole time range."""
    group = (q.PROJECT_LABEL, q.ENVIRONMENT_LABEL, *q.NODE_GROUP)
    targets = [
        ("A", "runs", q.runs_total(f, "$__range", *group)),
        ("B", "failure ratio", q.failure_ratio(f, "$__range", *group)),
        ("C", "p50 s", q.duration_quantile(0.5, f, "$__range", *group)),
        ("D", "p95 s", q.duration_quantile(0.95, f, "$__range", *group)),
    ]
    panel = (
        table.Panel()
        .title("Nodes in the time range")
        .description(
            "Runs, failure ratio and duration quantiles of every node over the whole "
            "time range; node opens its drill-down."
        )
        .datasource(PROMETHEUS.ref())
        .height(9)
        .span(24)
        .show_header(True)
        .with_transformation(dashboard.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dashboard.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {f"Value #{ref}": name for ref, name, _ in targets},
                },
            )
        )
        .override_by_name(
            "failure ratio", [dashboard.DynamicConfigValue(id_val="unit", value="percentunit")]
        )
        .override_by_name(q.NODE_OUT, [node_link()])
    )
    for ref, _, expr in targets:
        panel = panel.with_target(prom(expr, ref=ref, instant=True, table_format=True))
    return panel


def node_drilldown() -> BuiltDashboard:
    f = q.NODE_FILTERS
    sql = _SqlTargets()
    builder = (
        _frame(
            NODE_UID,
            "odibi-observe / Node drill-down",
            "One node of one pipeline: its runs, retries, rows and errors. Pick it with the "
            "variables, or open it from a node in the overview.",
            time_from="now-7d",
        )
        .variables(list(_variables(f)))
        .with_row(Row("Metrics (Prometheus)"))
        .with_panel(
            stat_panel(
                "Runs",
                "Finished runs of this node in the time range.",
                prom(q.runs_total(f, "$__range"), instant=True),
            )
        )
        .with_panel(
            stat_panel(
                "Success rate",
                "SUCCESS runs / finished runs of this node in the time range.",
                prom(q.success_ratio(f, "$__range"), instant=True),
                unit="percentunit",
                thresholds=_thresholds((None, "red"), (0.95, "orange"), (0.99, "green")),
            )
        )
        .with_panel(
            stat_panel(
                "Duration p95",
                "95th percentile of this node's wall time over the time range.",
                prom(q.duration_quantile(0.95, f, "$__range"), instant=True),
                unit="s",
            )
        )
        .with_panel(
            stat_panel(
                "Running now",
                "Runs of this node in progress.",
                prom(q.running_now(f), instant=True),
            )
        )
        .with_panel(
            series_panel(
                "Runs by status",
                "Finished runs per interval, stacked by status.",
                prom(q.runs_by_status(f, "$__interval"), legend(q.STATUS_LABEL)),
                bars=True,
                stacked=True,
            ).interval("1m")
        )
        .with_panel(
            series_panel(
                "Duration p50 / p95",
                "Quantiles of the node's wall time.",
                prom(
                    q.duration_quantile(0.5, f, "$__rate_interval"), "p50", ref="A", exemplar=True
                ),
                prom(
                    q.duration_quantile(0.95, f, "$__rate_interval"), "p95", ref="B", exemplar=True
                ),
                unit="s",
            )
        )
        .with_row(Row("Runs (catalog)"))
        .with_panel(
            sql_series(
                "Rows trend",
                "Rows processed per interval and per run. A source that shrank or "
                "a filter that broke shows up here before anyone complains.",
                q.node_rows_trend(f),
                sql,
            )
        )
        .with_panel(
            sql_series(
                "Runs by attempt",
                "Runs per interval by attempt number: attempt 2 and above are retries.",
                q.node_attempts(f),
                sql,
                bars=True,
                stacked=True,
            )
        )
        .with_panel(
            sql_table(
                "Error types",
                "Failed and crashed runs by error type, with the latest message, "
                "its suggestions and its trace.",
                q.node_error_types(f),
                sql,
                height=7,
            )
        )
        .with_panel(
            sql_table(
                "Run history",
                "Every run of the node in the time range, newest first; trace_id "
                "opens the run's trace.",
                q.node_history(f),
                sql,
                height=12,
            )
        )
    )
    return BuiltDashboard(NODE_UID, _number_panels(builder.build()), sql.queries)


def reconciliation() -> BuiltDashboard:
    sql = _SqlTargets()
    kind = RECONCILE_METRICS.discrepancies.labels
    sink = SIDECAR_METRICS.spool_backlog.labels
    builder = (
        _frame(
            RECONCILIATION_UID,
            "odibi-observe / Catalog completeness & reconciliation",
            "The nightly proof that every traced node run is in the catalog, identically: "
            "completeness, discrepancies by kind, the runs of the last report, and the "
            "backlog and sink errors that usually explain a gap.",
            time_from="now-30d",
        )
        .with_row(Row("Last reconciliation (Prometheus)"))
        .with_panel(
            stat_panel(
                "Catalog completeness",
                "Share of traced runs the catalog holds, in the last "
                "reconciliation. Anything below 100% is a run recorded in traces only.",
                prom(q.completeness(), instant=True),
                unit="percentunit",
                thresholds=_thresholds((None, "red"), (1.0, "green")),
            )
        )
        .with_panel(
            stat_panel(
                "Discrepancies",
                "Discrepancies the last reconciliation found, all kinds.",
                prom(q.discrepancies_total(), instant=True),
                thresholds=_thresholds((None, "green"), (1.0, "red")),
            )
        )
        .with_panel(
            stat_panel(
                "Since last reconciliation",
                "Time since the last reconciliation finished; it "
                "runs nightly, so more than a day means it is not running.",
                prom(q.seconds_since_reconciliation(), instant=True),
                unit="s",
                thresholds=_thresholds((None, "green"), (26 * 3600.0, "red")),
            )
        )
        .with_panel(
            series_panel(
                "Discrepancies by kind (metrics)",
                "The last reconciliation's counts, as Prometheus sampled them.",
                prom(q.discrepancies_by_kind(), legend(*kind)),
                span=6,
                stacked=True,
            )
        )
        .with_row(Row("Reports (catalog)"))
        .with_panel(
            sql_series(
                "Discrepancies by kind, per report",
                "Each report's discrepancy counts by kind (meta_reconciliation).",
                q.discrepancies_per_report(),
                sql,
                bars=True,
                stacked=True,
            )
        )
        .with_panel(
            sql_series(
                "Completeness, per report",
                "Each report's completeness ratio.",
                q.completeness_per_report(),
                sql,
                unit="percentunit",
            )
        )
        .with_panel(
            sql_table(
                "Last report",
                "The newest reconciliation report: its window, what each side "
                "held, what matched and what was repaired.",
                q.last_report(),
                sql,
                height=4,
            )
        )
        .with_panel(
            sql_table(
                "Last report's runs",
                "Every discrepancy of the newest report, by kind; trace_id opens the run's trace.",
                q.last_report_items(),
                sql,
                height=12,
            )
        )
        .with_row(Row("Delivery (Prometheus)"))
        .with_panel(
            series_panel(
                "Spool backlog by sink",
                "Spooled events each sink has not acknowledged: runs "
                "that will reach the catalog or traces late.",
                prom(q.spool_backlog_by_sink(), legend(*sink)),
            )
        )
        .with_panel(
            series_panel(
                "Sink errors by sink",
                "Failed export attempts per second (the batch is kept and retried).",
                prom(q.sink_errors_by_sink(), legend(*SELF_METRICS.sink_errors.labels)),
                unit="ops",
            )
        )
    )
    return BuiltDashboard(RECONCILIATION_UID, _number_panels(builder.build()), sql.queries)


def _instance_variable() -> QueryVariable:
    return (
        QueryVariable(q.INSTANCE_VAR_NAME)
        .label(q.INSTANCE_VAR_NAME)
        .datasource(PROMETHEUS.ref())
        .query(q.instance_query())
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(dashboard.VariableOption(selected=True, text="All", value="$__all"))
    )


def sidecar_health() -> BuiltDashboard:
    inst = q.instance_matcher()
    s = SIDECAR_METRICS
    builder = (
        _frame(
            SIDECAR_UID,
            "odibi-observe / Sidecar health",
            "The sidecar: what it ingests, what it holds in its spool, what its sinks fail "
            "to deliver and which dead runs its sweeper closed.",
            time_from="now-6h",
        )
        .variables([_instance_variable()])
        .with_row(Row("Liveness"))
        .with_panel(
            stat_panel(
                "Up",
                "Prometheus' last scrape of the sidecar's /metrics (1 = up).",
                prom(q.sidecar_up(), legend(q.INSTANCE_LABEL), instant=True),
                thresholds=_thresholds((None, "red"), (1.0, "green")),
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .with_panel(
            stat_panel(
                "Since last work loop",
                "Seconds since the sidecar last completed its work loop; "
                "growing means it is stuck even if /metrics answers.",
                prom(q.seconds_since_last_loop(), legend(q.INSTANCE_LABEL), instant=True),
                unit="s",
                thresholds=_thresholds((None, "green"), (60.0, "orange"), (120.0, "red")),
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .with_panel(
            stat_panel(
                "Spool size",
                "Bytes held in the write-ahead spool.",
                prom(
                    q.gauge_by(s.spool_bytes, q.INSTANCE_LABEL, matchers=[inst]),
                    legend(q.INSTANCE_LABEL),
                    instant=True,
                ),
                unit="bytes",
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .with_panel(
            stat_panel(
                "Queued events",
                "Events waiting for delivery, all sinks (queue plus retry buffer).",
                prom(
                    q.gauge_by(SELF_METRICS.queue_size, q.INSTANCE_LABEL, matchers=[inst]),
                    legend(q.INSTANCE_LABEL),
                    instant=True,
                ),
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .with_row(Row("Work"))
        .with_panel(
            series_panel(
                "Ingest rate by event kind",
                "Run events read from pipeline processes per second.",
                prom(
                    q.rate_by(s.ingested, *s.ingested.labels, matchers=[inst]),
                    legend(*s.ingested.labels),
                ),
                unit="ops",
            )
        )
        .with_panel(
            series_panel(
                "Spans received by outcome",
                "Spans on /v1/traces: stored in the ledger, ignored "
                "(not a node span) or rejected (malformed).",
                prom(
                    q.rate_by(s.ledger_spans, *s.ledger_spans.labels, matchers=[inst]),
                    legend(*s.ledger_spans.labels),
                ),
                unit="ops",
            )
        )
        .with_panel(
            series_panel(
                "Spool size and backlog",
                "Spool bytes (left) and the events each sink has not acknowledged yet.",
                prom(
                    q.gauge_by(s.spool_bytes, q.INSTANCE_LABEL, matchers=[inst]),
                    "bytes " + legend(q.INSTANCE_LABEL),
                    ref="A",
                ),
                prom(
                    q.spool_backlog_by_sink(inst),
                    "backlog " + legend(*s.spool_backlog.labels),
                    ref="B",
                ),
            )
        )
        .with_panel(
            series_panel(
                "Sweeper actions",
                "RUNNING runs the sweeper closed as CRASHED, by how it knew the process was gone.",
                prom(
                    q.rate_by(s.sweeper_closed, *s.sweeper_closed.labels, matchers=[inst]),
                    legend(*s.sweeper_closed.labels),
                ),
                unit="ops",
                bars=True,
            )
        )
        .with_row(Row("Failures"))
        .with_panel(
            series_panel(
                "Sink errors by sink",
                "Failed export attempts per second, per sink.",
                prom(q.sink_errors_by_sink(inst), legend(*SELF_METRICS.sink_errors.labels)),
                unit="ops",
            )
        )
        .with_panel(
            series_panel(
                "Events dropped",
                "Events a sink will never receive (a bound was hit). Any value "
                "here is a run missing from a backend until reconciliation repairs it.",
                prom(
                    q.rate_by(
                        SELF_METRICS.events_dropped,
                        *SELF_METRICS.events_dropped.labels,
                        matchers=[inst],
                    ),
                    legend(*SELF_METRICS.events_dropped.labels),
                ),
                unit="ops",
            )
        )
        .with_panel(
            series_panel(
                "Spool rejected and corrupt frames",
                "Events the spool refused (size limit, disk "
                "full) and torn frames skipped on replay.",
                prom(
                    q.rate_by(s.spool_rejected, *s.spool_rejected.labels, matchers=[inst]),
                    "rejected " + legend(*s.spool_rejected.labels),
                    ref="A",
                ),
                prom(
                    q.rate_by(s.spool_corrupt, q.INSTANCE_LABEL, matchers=[inst]),
                    "corrupt " + legend(q.INSTANCE_LABEL),
                    ref="B",
                ),
                unit="ops",
            )
        )
        .with_panel(
            series_panel(
                "Queue size by sink",
                "Events waiting per sink inside the sidecar.",
                prom(
                    q.gauge_by(
                        SELF_METRICS.queue_size, *SELF_METRICS.queue_size.labels, matchers=[inst]
                    ),
                    legend(*SELF_METRICS.queue_size.labels),
                ),
            )
        )
    )
    return BuiltDashboard(SIDECAR_UID, _number_panels(builder.build()))


def data_health() -> BuiltDashboard:
    f = q.HEALTH_FILTERS
    sql = _SqlTargets()
    node = q.NODE_GROUP
    builder = (
        _frame(
            DATA_HEALTH_UID,
            "odibi-observe / Data health",
            "Whether the data is right, not only whether the runs succeeded: rows and "
            "duration of every run against its node's band, freshness, the open findings "
            "of the nightly health pass and peak memory against the memory limit.",
            time_from="now-7d",
        )
        .variables(list(_variables(f)))
        .with_row(Row("Findings (the last health pass)"))
        .with_panel(
            stat_panel(
                "Open findings",
                "Findings the last `odibi-observe health` pass saw for the "
                "selected pipelines and nodes (one series per finding).",
                prom(q.open_findings_total(f), instant=True),
                thresholds=_thresholds((None, "green"), (1.0, "red")),
                span=6,
            )
        )
        .with_panel(
            stat_panel(
                "Since last health pass",
                "Time since the last health pass finished; it runs "
                "nightly, so more than a day means the findings are out of date.",
                prom(q.seconds_since_health_pass(), instant=True),
                unit="s",
                thresholds=_thresholds((None, "green"), (26 * 3600.0, "red")),
                span=6,
            )
        )
        .with_panel(
            series_panel(
                "Findings by kind",
                "Findings of each health pass by kind, as Prometheus sampled the gauges.",
                prom(q.findings_by_kind(), legend(*HEALTH_METRICS.findings.labels)),
                stacked=True,
            )
        )
        .with_panel(
            sql_table(
                "Open findings (catalog)",
                "Findings recorded in meta_health_findings that are "
                "still open, newest first: since when, how many passes saw them, and the evidence "
                "in one line. node opens its drill-down.",
                q.open_findings(f),
                sql,
                height=9,
            )
        )
        .with_row(Row("Volume and duration against their bands (catalog)"))
        .with_panel(
            sql_series(
                "Rows per run against its band",
                "rows_processed of every SUCCESS run and its "
                "node's band: the mean ± 3 standard deviations of the node's runs in the 14 days "
                "before it (the health pass's defaults; drawn once it has 7 runs). A point "
                "outside the band is a volume_anomaly.",
                q.rows_band(f),
                sql,
            )
        )
        .with_panel(
            sql_series(
                "Duration per run against its band",
                "duration_ms of every SUCCESS run and its "
                "node's band (mean ± 3 standard deviations of the 14 days before it). A point "
                "above it is a duration_anomaly.",
                q.duration_band(f),
                sql,
                unit="ms",
            )
        )
        .with_panel(
            sql_table(
                "Freshness",
                "Per node: its last SUCCESS, its age, the learned cadence (the mean "
                "interval between successes) and the allowed age (3 x the cadence, at least 1 h); "
                "age_of_allowed above 1 is a stale node. The stalest first.",
                q.freshness(f),
                sql,
                height=9,
            )
        )
        .with_row(Row("Memory"))
        .with_panel(
            series_panel(
                "Peak memory per node against its limit",
                "Mean peak resident memory per run "
                "(from the peak-memory histogram) and the memory limit (cgroup memory.max) the "
                "node runs under. A node without a limit shows no limit line.",
                prom(
                    q.mean_peak_rss(f, "$__rate_interval", *node), "peak " + legend(*node), ref="A"
                ),
                prom(q.memory_limit(f, *node), "limit " + legend(*node), ref="B"),
                unit="bytes",
            )
        )
        .with_panel(
            sql_series(
                "Peak memory per run against the limit (catalog)",
                "peak_rss_bytes of every "
                "SUCCESS run and the memory_limit_bytes it ran under, per node; a line climbing "
                "toward the limit is a memory_growth finding before it is an OOM kill.",
                q.memory_per_run(f),
                sql,
                unit="bytes",
            )
        )
        .with_panel(
            sql_table(
                "Crashed runs by cause",
                "CRASHED runs in the time range by node and cause "
                "(error_type: OOMKilled, SIGKILL, SIGTERM, HeartbeatLost, ProcessExit), with the "
                "largest peak memory recorded and the limit; trace_id opens the newest one.",
                q.crash_causes(f),
                sql,
                height=7,
            )
        )
    )
    return BuiltDashboard(DATA_HEALTH_UID, _number_panels(builder.build()), sql.queries)


#: Every dashboard, in the order the docs describe them.
BUILDERS: Final[Sequence[Callable[[], BuiltDashboard]]] = (
    pipeline_overview,
    node_drilldown,
    reconciliation,
    sidecar_health,
    data_health,
)


def build_dashboards() -> list[BuiltDashboard]:
    return [build() for build in BUILDERS]
