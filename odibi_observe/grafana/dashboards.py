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
from enum import StrEnum
from typing import Final, Protocol, Self, TypeVar

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
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from odibi_observe.conventions import (
    HEALTH_METRICS,
    RECONCILE_METRICS,
    SELF_METRICS,
    SIDECAR_METRICS,
    Metric,
)
from odibi_observe.grafana import queries as q
from odibi_observe.grafana.datasources import CATALOG, PROMETHEUS, TEMPO
from odibi_observe.grafana.postgres import SqlFormat, SqlQuery

#: The tag, folder and link menu every dashboard shares.
TAG: Final = "odibi-observe"


class Uid(StrEnum):
    """The dashboards' uids: links, bookmarks and the file names use them, so they never change."""

    OVERVIEW = "odibi-pipeline-overview"
    NODE = "odibi-node-drilldown"
    RECONCILIATION = "odibi-reconciliation"
    SIDECAR = "odibi-sidecar-health"
    DATA_HEALTH = "odibi-data-health"


@dataclass
class BuiltDashboard:
    """A dashboard model and the catalog queries of its panels, in panel order."""

    uid: Uid
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


def _own_labels(
    metric: Metric, inst: str, *, gauge: bool = False, prefix: str = "", ref: str = "A"
) -> PromQuery:
    """A sidecar self-metric summed by its own labels over the selected instances, one series
    per label set: the rate of a counter, or a gauge as it is."""
    aggregate = q.gauge_by if gauge else q.rate_by
    expr = aggregate(metric, *metric.labels, matchers=[inst])
    return prom(expr, prefix + legend(*metric.labels), ref=ref)


def _sql_target(query: q.SqlPanelQuery, *, ref: str = "A") -> SqlQuery:
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
                "url": f"/d/{Uid.NODE}?{params}&${{__url_time_range}}",
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

#: Threshold steps ``(from value, colour)`` of the stat panels.
Steps = Sequence[tuple[float | None, str]]
#: A success rate is fine from 99%, worrying from 95%.
SUCCESS_RATE_STEPS: Final[Steps] = ((None, "red"), (0.95, "orange"), (0.99, "green"))
#: Anything short of all of it is bad (completeness, up).
ALL_OR_RED: Final[Steps] = ((None, "red"), (1.0, "green"))
#: Any at all is bad (discrepancies, open findings).
ANY_IS_RED: Final[Steps] = ((None, "green"), (1.0, "red"))
#: Seconds since a nightly job: more than 26 hours is a missed night.
NIGHTLY_STEPS: Final[Steps] = ((None, "green"), (26 * 3600.0, "red"))
#: Any uncommitted write is a data problem waiting for the next run.
UNCOMMITTED_STEPS: Final[Steps] = ((None, "green"), (1.0, "red"))


def _thresholds(steps: Steps) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=value, color=color) for value, color in steps])
    )


class _Panel(Protocol):
    """What the SDK's panel builders (stat, time series, table) have in common."""

    def title(self, title: str, /) -> Self: ...
    def description(self, description: str, /) -> Self: ...
    def datasource(self, datasource: dashboard.DataSourceRef, /) -> Self: ...
    def height(self, h: int, /) -> Self: ...
    def span(self, w: int, /) -> Self: ...
    def with_target(self, target: cogbuilder.Builder[cogvariants.Dataquery], /) -> Self: ...


_P = TypeVar("_P", bound=_Panel)


def _placed(
    panel: _P,
    title: str,
    description: str,
    datasource: dashboard.DataSourceRef,
    *,
    height: int,
    span: int,
) -> _P:
    """What every panel sets: its title and description, data source and size."""
    return (
        panel.title(title).description(description).datasource(datasource).height(height).span(span)
    )


def _with_targets(panel: _P, targets: Sequence[PromQuery | SqlQuery]) -> _P:
    for target in targets:
        panel = panel.with_target(target)
    return panel


def stat_panel(
    title: str,
    description: str,
    *targets: PromQuery,
    unit: str = "short",
    thresholds: Steps | None = None,
    span: int = 6,
    text_mode: common.BigValueTextMode = common.BigValueTextMode.AUTO,
) -> stat.Panel:
    panel = (
        _placed(stat.Panel(), title, description, PROMETHEUS.ref(), height=5, span=span)
        .unit(unit)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .color_mode(common.BigValueColorMode.VALUE)
    )
    if thresholds is not None:
        panel = panel.thresholds(_thresholds(thresholds))
    return _with_targets(panel, targets)


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
    ref = datasource or PROMETHEUS.ref()
    panel = (
        _placed(timeseries.Panel(), title, description, ref, height=height, span=span)
        .unit(unit)
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
    return _with_targets(panel, targets)


def sql_table(query: q.SqlPanelQuery, title: str, description: str, *, height: int) -> table.Panel:
    """A catalog query as a table over the whole width, with its trace and node links."""
    panel = _placed(table.Panel(), title, description, CATALOG.ref(), height=height, span=24)
    return with_links(panel.show_header(True).with_target(_sql_target(query)), query)


# --- dashboard frame ---------------------------------------------------------------------------


def _variables(filters: q.Filters) -> list[cogbuilder.Builder[dashboard.VariableModel]]:
    out: list[cogbuilder.Builder[dashboard.VariableModel]] = []
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


def _frame(uid: str, title: str, description: str, time_from: str) -> DashboardBuilder:
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


class _Board:
    """One dashboard while it is built: the SDK's builder and the catalog queries its panels
    run, in panel order. Each method adds a row or a panel and returns the board, so that a
    dashboard reads as its panels in layout order."""

    def __init__(
        self,
        uid: Uid,
        title: str,
        description: str,
        *,
        time_from: str,
        variables: Sequence[cogbuilder.Builder[dashboard.VariableModel]] = (),
    ) -> None:
        self.uid = uid
        self.sql: list[q.SqlPanelQuery] = []
        self.builder = _frame(uid, title, description, time_from)
        if variables:
            self.builder = self.builder.variables(list(variables))

    def row(self, title: str) -> Self:
        self.builder = self.builder.with_row(Row(title))
        return self

    def panel(self, panel: cogbuilder.Builder[dashboard.Panel]) -> Self:
        self.builder = self.builder.with_panel(panel)
        return self

    def table(self, title: str, description: str, query: q.SqlPanelQuery, height: int) -> Self:
        """A catalog query as a table (see :func:`sql_table`)."""
        self.sql.append(query)
        return self.panel(sql_table(query, title, description, height=height))

    def sql_series(
        self,
        title: str,
        description: str,
        query: q.SqlPanelQuery,
        *,
        unit: str = "short",
        bars: bool = False,
        stacked: bool = False,
    ) -> Self:
        """A catalog query drawn as time series, half the width."""
        self.sql.append(query)
        target = _sql_target(query)
        panel = series_panel(
            title,
            description,
            target,
            unit=unit,
            bars=bars,
            stacked=stacked,
            datasource=CATALOG.ref(),
        )
        return self.panel(panel)

    def built(self) -> BuiltDashboard:
        return BuiltDashboard(self.uid, _number_panels(self.builder.build()), self.sql)


# --- panels more than one dashboard shows ------------------------------------------------------


def _instant(expr: str, *labels: str) -> PromQuery:
    """A stat panel's query: the value at the end of the range, named by ``labels``."""
    return prom(expr, legend(*labels) if labels else None, instant=True)


def _success_rate(f: q.Filters, description: str, *, span: int = 6) -> stat.Panel:
    return stat_panel(
        "Success rate",
        description,
        _instant(q.success_ratio(f, "$__range")),
        unit="percentunit",
        thresholds=SUCCESS_RATE_STEPS,
        span=span,
    )


def _since_nightly(title: str, description: str, expr: str) -> stat.Panel:
    """Seconds since a nightly job last finished: red once a night is missed."""
    return stat_panel(title, description, _instant(expr), unit="s", thresholds=NIGHTLY_STEPS)


def _runs_by_status(f: q.Filters, description: str) -> timeseries.Panel:
    target = prom(q.runs_by_status(f, "$__interval"), legend(q.STATUS_LABEL))
    panel = series_panel("Runs by status", description, target, bars=True, stacked=True)
    return panel.interval("1m")


# --- the dashboards ---------------------------------------------------------------------------


def pipeline_overview() -> BuiltDashboard:
    f = q.OVERVIEW_FILTERS
    return (
        _Board(
            Uid.OVERVIEW,
            "odibi-observe / Pipeline overview",
            "Every node run of the selected pipelines: how many, how fast, what failed "
            "and why. Metrics from Prometheus; runs from the meta_runs catalog, each linked "
            "to its trace.",
            time_from="now-6h",
            variables=_variables(f),
        )
        .row("Runs (Prometheus)")
        .panel(
            stat_panel(
                "Runs by status",
                "Node runs that ended in the time range, by status.",
                _instant(q.runs_by_status(f, "$__range"), q.STATUS_LABEL),
                span=8,
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .panel(_success_rate(f, "SUCCESS runs / all finished runs in the time range.", span=4))
        .panel(
            stat_panel(
                "Running now",
                "Node runs in progress, as the running processes report them.",
                _instant(q.running_now(f)),
                span=4,
            )
        )
        .panel(
            stat_panel(
                "Rows processed",
                "Rows processed by node runs that ended in the time range.",
                _instant(q.rows_total(f, "$__range")),
                span=4,
            )
        )
        .panel(
            stat_panel(
                "Uncommitted writes",
                "Runs that wrote their target and crashed, failed or were cancelled before "
                "committing their checkpoint (HWM): the next run re-reads and re-writes those "
                "rows. The catalog table below lists them; docs/exactly-once.md says what to do.",
                _instant(q.uncommitted_writes(f, "$__range")),
                thresholds=UNCOMMITTED_STEPS,
                span=4,
            )
        )
        .panel(_runs_by_status(f, "Finished node runs per interval, stacked by status."))
        .panel(
            series_panel(
                "Rows per second by node",
                "Throughput of each node (rate of rows processed).",
                prom(q.rows_per_second(f, *q.NODE_GROUP), legend(*q.NODE_GROUP)),
                unit="rowsps",
            )
        )
        .panel(
            series_panel(
                "Duration p50 / p95 by node",
                "Quantiles of node wall time from the duration histogram, per node.",
                *(
                    prom(
                        q.duration_quantile(quantile, f, "$__rate_interval", *q.NODE_GROUP),
                        f"{name} " + legend(*q.NODE_GROUP),
                        ref=ref,
                        exemplar=True,
                    )
                    for quantile, name, ref in ((0.5, "p50", "A"), (0.95, "p95", "B"))
                ),
                unit="s",
                span=24,
            )
        )
        .panel(_node_summary(f))
        .row("Runs (catalog)")
        .table(
            "Running now (catalog)",
            "Rows still RUNNING in meta_runs, oldest first. A run far older than its usual "
            "duration with an old heartbeat is probably a dead process the sweeper will close "
            "as CRASHED.",
            q.currently_running(f),
            7,
        )
        .table(
            "Recent failures, with suggestions",
            "FAILURE and CRASHED runs in the time range, newest first, with the error and the "
            "actionable suggestions recorded with it. trace_id opens the run's trace.",
            q.recent_failures(f),
            10,
        )
        .table(
            "Uncommitted writes",
            "Runs that wrote (an append awaiting its checkpoint) and ended FAILURE, CRASHED or "
            "CANCELLED without committing it, newest first: what each wrote (target, rows, "
            "Delta version) is in writes_json. Undo or dedupe those rows, or advance the "
            "checkpoint, before the node runs again.",
            q.uncommitted_write_runs(f),
            7,
        )
        .table(
            "Slowest nodes",
            "Per node, the p50/p95/max duration of finished runs in the time range (exact, "
            "from the catalog) and the trace of its slowest run.",
            q.slowest_nodes(f),
            10,
        )
        .built()
    )


def _node_summary(f: q.Filters) -> table.Panel:
    """One row per node: runs, failure ratio, p50/p95 over the whole time range."""
    group = q.NODE_IDENTITY
    targets = [
        ("A", "runs", q.runs_total(f, "$__range", *group)),
        ("B", "failure ratio", q.failure_ratio(f, "$__range", *group)),
        ("C", "p50 s", q.duration_quantile(0.5, f, "$__range", *group)),
        ("D", "p95 s", q.duration_quantile(0.95, f, "$__range", *group)),
    ]
    panel = (
        _placed(
            table.Panel(),
            "Nodes in the time range",
            "Runs, failure ratio and duration quantiles of every node over the whole "
            "time range; node opens its drill-down.",
            PROMETHEUS.ref(),
            height=9,
            span=24,
        )
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
    queries = [prom(expr, ref=ref, instant=True, table_format=True) for ref, _, expr in targets]
    return _with_targets(panel, queries)


def node_drilldown() -> BuiltDashboard:
    f = q.NODE_FILTERS
    return (
        _Board(
            Uid.NODE,
            "odibi-observe / Node drill-down",
            "One node of one pipeline: its runs, retries, rows and errors. Pick it with the "
            "variables, or open it from a node in the overview.",
            time_from="now-7d",
            variables=_variables(f),
        )
        .row("Metrics (Prometheus)")
        .panel(
            stat_panel(
                "Runs",
                "Finished runs of this node in the time range.",
                _instant(q.runs_total(f, "$__range")),
            )
        )
        .panel(_success_rate(f, "SUCCESS runs / finished runs of this node in the time range."))
        .panel(
            stat_panel(
                "Duration p95",
                "95th percentile of this node's wall time over the time range.",
                _instant(q.duration_quantile(0.95, f, "$__range")),
                unit="s",
            )
        )
        .panel(
            stat_panel("Running now", "Runs of this node in progress.", _instant(q.running_now(f)))
        )
        .panel(_runs_by_status(f, "Finished runs per interval, stacked by status."))
        .panel(
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
        .row("Runs (catalog)")
        .sql_series(
            "Rows trend",
            "Rows processed per interval and per run. A source that shrank or "
            "a filter that broke shows up here before anyone complains.",
            q.node_rows_trend(f),
        )
        .sql_series(
            "Runs by attempt",
            "Runs per interval by attempt number: attempt 2 and above are retries.",
            q.node_attempts(f),
            bars=True,
            stacked=True,
        )
        .table(
            "Error types",
            "Failed and crashed runs by error type, with the latest message, "
            "its suggestions and its trace.",
            q.node_error_types(f),
            7,
        )
        .table(
            "Run history",
            "Every run of the node in the time range, newest first; trace_id "
            "opens the run's trace.",
            q.node_history(f),
            12,
        )
        .built()
    )


def reconciliation() -> BuiltDashboard:
    kind = RECONCILE_METRICS.discrepancies.labels
    sink = SIDECAR_METRICS.spool_backlog.labels
    return (
        _Board(
            Uid.RECONCILIATION,
            "odibi-observe / Catalog completeness & reconciliation",
            "The nightly proof that every traced node run is in the catalog, identically: "
            "completeness, discrepancies by kind, the runs of the last report, and the "
            "backlog and sink errors that usually explain a gap.",
            time_from="now-30d",
        )
        .row("Last reconciliation (Prometheus)")
        .panel(
            stat_panel(
                "Catalog completeness",
                "Share of traced runs the catalog holds, in the last "
                "reconciliation. Anything below 100% is a run recorded in traces only.",
                _instant(q.completeness()),
                unit="percentunit",
                thresholds=ALL_OR_RED,
            )
        )
        .panel(
            stat_panel(
                "Discrepancies",
                "Discrepancies the last reconciliation found, all kinds.",
                _instant(q.discrepancies_total()),
                thresholds=ANY_IS_RED,
            )
        )
        .panel(
            _since_nightly(
                "Since last reconciliation",
                "Time since the last reconciliation finished; it "
                "runs nightly, so more than a day means it is not running.",
                q.seconds_since_reconciliation(),
            )
        )
        .panel(
            series_panel(
                "Discrepancies by kind (metrics)",
                "The last reconciliation's counts, as Prometheus sampled them.",
                prom(q.discrepancies_by_kind(), legend(*kind)),
                span=6,
                stacked=True,
            )
        )
        .row("Reports (catalog)")
        .sql_series(
            "Discrepancies by kind, per report",
            "Each report's discrepancy counts by kind (meta_reconciliation).",
            q.discrepancies_per_report(),
            bars=True,
            stacked=True,
        )
        .sql_series(
            "Completeness, per report",
            "Each report's completeness ratio.",
            q.completeness_per_report(),
            unit="percentunit",
        )
        .table(
            "Last report",
            "The newest reconciliation report: its window, what each side "
            "held, what matched and what was repaired.",
            q.last_report(),
            4,
        )
        .table(
            "Last report's runs",
            "Every discrepancy of the newest report, by kind; trace_id opens the run's trace.",
            q.last_report_items(),
            12,
        )
        .row("Delivery (Prometheus)")
        .panel(
            series_panel(
                "Spool backlog by sink",
                "Spooled events each sink has not acknowledged: runs "
                "that will reach the catalog or traces late.",
                prom(q.spool_backlog_by_sink(), legend(*sink)),
            )
        )
        .panel(
            series_panel(
                "Sink errors by sink",
                "Failed export attempts per second (the batch is kept and retried).",
                prom(q.sink_errors_by_sink(), legend(*SELF_METRICS.sink_errors.labels)),
                unit="ops",
            )
        )
        .built()
    )


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
    by_instance = q.INSTANCE_LABEL

    def per_instance(metric: Metric) -> PromQuery:
        """A gauge summed per sidecar instance, as a stat panel shows it."""
        return _instant(q.gauge_by(metric, by_instance, matchers=[inst]), by_instance)

    return (
        _Board(
            Uid.SIDECAR,
            "odibi-observe / Sidecar health",
            "The sidecar: what it ingests, what it holds in its spool, what its sinks fail "
            "to deliver and which dead runs its sweeper closed.",
            time_from="now-6h",
            variables=[_instance_variable()],
        )
        .row("Liveness")
        .panel(
            stat_panel(
                "Up",
                "Prometheus' last scrape of the sidecar's /metrics (1 = up).",
                _instant(q.sidecar_up(), by_instance),
                thresholds=ALL_OR_RED,
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .panel(
            stat_panel(
                "Since last work loop",
                "Seconds since the sidecar last completed its work loop; "
                "growing means it is stuck even if /metrics answers.",
                _instant(q.seconds_since_last_loop(), by_instance),
                unit="s",
                thresholds=((None, "green"), (60.0, "orange"), (120.0, "red")),
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .panel(
            stat_panel(
                "Spool size",
                "Bytes held in the write-ahead spool.",
                per_instance(s.spool_bytes),
                unit="bytes",
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .panel(
            stat_panel(
                "Queued events",
                "Events waiting for delivery, all sinks (queue plus retry buffer).",
                per_instance(SELF_METRICS.queue_size),
                text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            )
        )
        .row("Work")
        .panel(
            series_panel(
                "Ingest rate by event kind",
                "Run events read from pipeline processes per second.",
                _own_labels(s.ingested, inst),
                unit="ops",
            )
        )
        .panel(
            series_panel(
                "Spans received by outcome",
                "Spans on /v1/traces: stored in the ledger, ignored "
                "(not a node span) or rejected (malformed).",
                _own_labels(s.ledger_spans, inst),
                unit="ops",
            )
        )
        .panel(
            series_panel(
                "Spool size and backlog",
                "Spool bytes (left) and the events each sink has not acknowledged yet.",
                prom(
                    q.gauge_by(s.spool_bytes, by_instance, matchers=[inst]),
                    "bytes " + legend(by_instance),
                    ref="A",
                ),
                _own_labels(s.spool_backlog, inst, gauge=True, prefix="backlog ", ref="B"),
            )
        )
        .panel(
            series_panel(
                "Sweeper actions",
                "RUNNING runs the sweeper closed as CRASHED, by how it knew the process was gone.",
                _own_labels(s.sweeper_closed, inst),
                unit="ops",
                bars=True,
            )
        )
        .row("Failures")
        .panel(
            series_panel(
                "Sink errors by sink",
                "Failed export attempts per second, per sink.",
                _own_labels(SELF_METRICS.sink_errors, inst),
                unit="ops",
            )
        )
        .panel(
            series_panel(
                "Events dropped",
                "Events a sink will never receive (a bound was hit). Any value "
                "here is a run missing from a backend until reconciliation repairs it.",
                _own_labels(SELF_METRICS.events_dropped, inst),
                unit="ops",
            )
        )
        .panel(
            series_panel(
                "Spool rejected and corrupt frames",
                "Events the spool refused (size limit, disk "
                "full) and torn frames skipped on replay.",
                _own_labels(s.spool_rejected, inst, prefix="rejected ", ref="A"),
                prom(
                    q.rate_by(s.spool_corrupt, by_instance, matchers=[inst]),
                    "corrupt " + legend(by_instance),
                    ref="B",
                ),
                unit="ops",
            )
        )
        .panel(
            series_panel(
                "Queue size by sink",
                "Events waiting per sink inside the sidecar.",
                _own_labels(SELF_METRICS.queue_size, inst, gauge=True),
            )
        )
        .built()
    )


def data_health() -> BuiltDashboard:
    f = q.HEALTH_FILTERS
    return (
        _Board(
            Uid.DATA_HEALTH,
            "odibi-observe / Data health",
            "Whether the data is right, not only whether the runs succeeded: rows and "
            "duration of every run against its node's band, freshness, the open findings "
            "of the nightly health pass and peak memory against the memory limit.",
            time_from="now-7d",
            variables=_variables(f),
        )
        .row("Findings (the last health pass)")
        .panel(
            stat_panel(
                "Open findings",
                "Findings the last `odibi-observe health` pass saw for the "
                "selected pipelines and nodes (one series per finding).",
                _instant(q.open_findings_total(f)),
                thresholds=ANY_IS_RED,
            )
        )
        .panel(
            _since_nightly(
                "Since last health pass",
                "Time since the last health pass finished; it runs "
                "nightly, so more than a day means the findings are out of date.",
                q.seconds_since_health_pass(),
            )
        )
        .panel(
            series_panel(
                "Findings by kind",
                "Findings of each health pass by kind, as Prometheus sampled the gauges.",
                prom(q.findings_by_kind(), legend(*HEALTH_METRICS.findings.labels)),
                stacked=True,
            )
        )
        .table(
            "Open findings (catalog)",
            "Findings recorded in meta_health_findings that are "
            "still open, newest first: since when, how many passes saw them, and the evidence "
            "in one line. node opens its drill-down.",
            q.open_findings(f),
            9,
        )
        .row("Volume and duration against their bands (catalog)")
        .sql_series(
            "Rows per run against its band",
            "rows_processed of every SUCCESS run and its "
            "node's band: the mean ± 3 standard deviations of the node's runs in the 14 days "
            "before it (the health pass's defaults; drawn once it has 7 runs). A point "
            "outside the band is a volume_anomaly.",
            q.rows_band(f),
        )
        .sql_series(
            "Duration per run against its band",
            "duration_ms of every SUCCESS run and its "
            "node's band (mean ± 3 standard deviations of the 14 days before it). A point "
            "above it is a duration_anomaly.",
            q.duration_band(f),
            unit="ms",
        )
        .table(
            "Freshness",
            "Per node: its last SUCCESS, its age, the learned cadence (the mean "
            "interval between successes) and the allowed age (3 x the cadence, at least 1 h); "
            "age_of_allowed above 1 is a stale node. The stalest first.",
            q.freshness(f),
            9,
        )
        .row("Memory")
        .panel(
            series_panel(
                "Peak memory per node against its limit",
                "Mean peak resident memory per run "
                "(from the peak-memory histogram) and the memory limit (cgroup memory.max) the "
                "node runs under. A node without a limit shows no limit line.",
                prom(
                    q.mean_peak_rss(f, "$__rate_interval", *q.NODE_GROUP),
                    "peak " + legend(*q.NODE_GROUP),
                    ref="A",
                ),
                prom(q.memory_limit(f, *q.NODE_GROUP), "limit " + legend(*q.NODE_GROUP), ref="B"),
                unit="bytes",
            )
        )
        .sql_series(
            "Peak memory per run against the limit (catalog)",
            "peak_rss_bytes of every "
            "SUCCESS run and the memory_limit_bytes it ran under, per node; a line climbing "
            "toward the limit is a memory_growth finding before it is an OOM kill.",
            q.memory_per_run(f),
            unit="bytes",
        )
        .table(
            "Crashed runs by cause",
            "CRASHED runs in the time range by node and cause "
            "(error_type: OOMKilled, SIGKILL, SIGTERM, HeartbeatLost, ProcessExit), with the "
            "largest peak memory recorded and the limit; trace_id opens the newest one.",
            q.crash_causes(f),
            7,
        )
        .built()
    )


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
