"""Prometheus alerting rules, generated from the conventions like the dashboards' queries.

Each rule says what it protects in its annotations; ``docs/dashboards.md`` lists them with the
reasoning behind each threshold, and ``dashboards/prometheus/rules_test.yml`` exercises every
one with ``promtool test rules``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from odibi_observe.conventions import (
    HEALTH_FINDING_KINDS,
    HEALTH_METRICS,
    METRICS,
    RECONCILE_METRICS,
    SELF_METRICS,
    SIDECAR_METRICS,
    Metric,
    RunStatus,
)
from odibi_observe.grafana import queries as q
from odibi_observe.grafana.datasources import DEPLOYMENT
from odibi_observe.grafana.yamltext import Yaml

#: Failure ratio of a node over the last hour above which it pages.
NODE_FAILURE_RATIO: Final = 0.25
#: The sidecar completes a work loop every few seconds; two minutes without one is stuck.
SIDECAR_STALE_SECONDS: Final = 120
#: Reconciliation runs nightly: more than 26 hours since the last one means a night was missed.
RECONCILE_STALE_SECONDS: Final = 26 * 3600
#: Share of the memory limit a node's peak memory may reach before it pages (as the health
#: pass's memory_growth threshold).
MEMORY_NEAR_LIMIT: Final = 0.9
#: Window of the mean peak memory per run: a day, so that a daily node has a run in it.
MEMORY_WINDOW: Final = "1d"
#: Window in which a crash counts for the probable-OOM rule.
CRASH_WINDOW: Final = "1h"

#: Open health findings that page: a node that keeps failing, returns nothing, is stale or is
#: about to be OOM-killed. The other kinds (an anomaly, a flaky node) are warnings.
PAGING_FINDINGS: Final = frozenset({"zero_rows", "freshness", "failure_streak", "memory_growth"})
WARNING_FINDINGS: Final = frozenset({"volume_anomaly", "duration_anomaly", "flaky"})
#: Every kind in exactly one of the two (a kind in both, or in neither, fails the import).
_CLASSIFIED: Final = sorted([*PAGING_FINDINGS, *WARNING_FINDINGS])
if sorted(HEALTH_FINDING_KINDS) != _CLASSIFIED:  # pragma: no cover - guards edits
    raise RuntimeError("alerts' finding severities and conventions.HEALTH_FINDING_KINDS disagree")
#: Severity of an open health finding, by kind.
FINDING_SEVERITY: Final = {
    kind: "critical" if kind in PAGING_FINDINGS else "warning" for kind in HEALTH_FINDING_KINDS
}


@dataclass(frozen=True)
class Rule:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    def to_yaml(self) -> dict[str, Yaml]:
        out: dict[str, Yaml] = {"alert": self.alert, "expr": self.expr}
        if self.for_ != "0m":
            out["for"] = self.for_
        out["labels"] = {"severity": self.severity}
        out["annotations"] = {"summary": self.summary, "description": self.description}
        return out


# --- expressions more than a line long ------------------------------------------------------

_ALL_NODES: Final = q.Filters(())


def _sidecar_scrapes() -> str:
    """Prometheus' scrape health of every sidecar target (``up`` of the sidecar's job)."""
    return q.series(q.UP, q.eq(q.JOB_LABEL, DEPLOYMENT.sidecar_job))


def _backlog_growing() -> str:
    backlog = q.series(SIDECAR_METRICS.spool_backlog)
    return f"min_over_time({backlog}[15m]) > 0\nand\nderiv({backlog}[15m]) > 0"


def _any_per_sink(metric: Metric, func: str, window: str) -> str:
    """``func`` (``rate``, ``increase``) of a self-metric per instance and sink, above zero."""
    series = q.series(metric)
    return f"{q.agg('sum', f'{func}({series}[{window}])', q.INSTANCE_LABEL, *metric.labels)} > 0"


def _memory_near_limit() -> str:
    return f"(\n{q.memory_share(_ALL_NODES, MEMORY_WINDOW)}\n) > {MEMORY_NEAR_LIMIT}"


def _crashed_near_limit() -> str:
    crashed = q.series(METRICS.runs, q.eq(q.STATUS_LABEL, RunStatus.CRASHED.value))
    per_node = q.agg("sum", f"increase({crashed}[{CRASH_WINDOW}])", *q.NODE_IDENTITY)
    return f"{per_node} > 0\nand on ({', '.join(q.NODE_IDENTITY)})\n{_memory_near_limit()}"


def _camel(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_"))


def health_finding(kind: str) -> Rule:
    """The rule of one finding kind: fires while the last health pass sees such a finding
    (one alert per node; it resolves when a pass no longer sees it)."""
    kind_label = HEALTH_METRICS.open_finding.labels[0]
    finding = q.series(HEALTH_METRICS.open_finding, q.eq(kind_label, kind))
    return Rule(
        f"OdibiHealth{_camel(kind)}",
        f"{finding} > 0",
        "0m",
        FINDING_SEVERITY[kind],
        f"{kind} on {{{{ $labels.pipeline }}}}/{{{{ $labels.node }}}}",
        f"The last odibi-observe health pass found {kind} on this node; health.html "
        "(and the Data health dashboard's open findings) has the evidence and what to do.",
    )


# --- the rules ---------------------------------------------------------------------------------

#: Every rule, in the order rules.yml lists them.
RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "OdibiNodeFailureRate",
        f"(\n{q.failure_ratio(_ALL_NODES, '1h', *q.NODE_IDENTITY)}\n) > {NODE_FAILURE_RATIO}",
        "5m",
        "warning",
        "Node {{ $labels.pipeline }}/{{ $labels.node }} fails "
        "{{ $value | humanizePercentage }} of its runs",
        "More than a quarter of the node's runs in the last hour failed or crashed; the "
        "Pipeline overview lists the errors with their suggestions.",
    ),
    Rule(
        "OdibiCatalogIncomplete",
        f"{q.series(RECONCILE_METRICS.completeness)} < 1",
        "0m",
        "critical",
        "Catalog completeness is {{ $value | humanizePercentage }}",
        "The last reconciliation found traced node runs missing from meta_runs; the "
        "reconciliation dashboard lists them.",
    ),
    Rule(
        "OdibiReconciliationStale",
        f"time() - {q.series(RECONCILE_METRICS.last_run)} > {RECONCILE_STALE_SECONDS}",
        "0m",
        "warning",
        "No reconciliation for more than 26 hours",
        "The nightly reconciliation did not finish; completeness is unproven since.",
    ),
    Rule(
        "OdibiReconciliationCheckedNothing",
        f"{q.series(RECONCILE_METRICS.checked)} == 0",
        "0m",
        "warning",
        "The last reconciliation checked 0 runs",
        "It proved nothing: no run started in its window, or all were too recent (within "
        f"the grace period; see {RECONCILE_METRICS.deferred.prometheus}). Check the schedule, "
        "--last "
        "and --grace, and whether the pipelines ran.",
    ),
    Rule(
        "OdibiSidecarStale",
        f"time() - {q.series(SIDECAR_METRICS.last_loop)} > {SIDECAR_STALE_SECONDS}",
        "2m",
        "critical",
        "Sidecar {{ $labels.instance }} has not completed a work loop for "
        "{{ $value | humanizeDuration }}",
        "The sidecar answers /metrics but its work loop is stuck: spooled runs are not "
        "delivered and dead runs are not swept.",
    ),
    Rule(
        "OdibiSidecarDown",
        f"{_sidecar_scrapes()} == 0",
        "2m",
        "critical",
        "Sidecar {{ $labels.instance }} is down",
        "Prometheus cannot scrape the sidecar: nothing delivers spooled runs, fills the span "
        "ledger or sweeps dead runs.",
    ),
    Rule(
        "OdibiSidecarAbsent",
        f"absent({_sidecar_scrapes()})",
        "5m",
        "critical",
        "No sidecar is scraped",
        f"Prometheus has no target in job {DEPLOYMENT.sidecar_job}.",
    ),
    Rule(
        "OdibiSpoolBacklogGrowing",
        _backlog_growing(),
        "15m",
        "warning",
        "Spool backlog of sink {{ $labels.sink }} keeps growing",
        "For 30 minutes the backlog has not drained and still grows: the backend is down or "
        "slower than the pipelines, and the spool is bounded.",
    ),
    Rule(
        "OdibiSinkErrors",
        _any_per_sink(SELF_METRICS.sink_errors, "rate", "5m"),
        "10m",
        "warning",
        "Sink {{ $labels.sink }} fails its exports",
        "Exports have failed for 10 minutes; batches are retried, but a long outage fills "
        "the queue and then drops events.",
    ),
    Rule(
        "OdibiEventsDropped",
        _any_per_sink(SELF_METRICS.events_dropped, "increase", "10m"),
        "0m",
        "critical",
        "Sink {{ $labels.sink }} dropped events ({{ $labels.reason }})",
        "A bound was hit: these runs are missing from this backend until reconciliation "
        "repairs them.",
    ),
    *(health_finding(kind) for kind in HEALTH_FINDING_KINDS),
    Rule(
        "OdibiNodeMemoryNearLimit",
        _memory_near_limit(),
        "0m",
        "warning",
        "Node {{ $labels.pipeline }}/{{ $labels.node }} peaks at "
        "{{ $value | humanizePercentage }} of its memory limit",
        "The node's mean peak memory per run over the last day is above 90% of the memory "
        "limit it runs under: the next larger input gets it OOM-killed.",
    ),
    Rule(
        "OdibiNodeProbablyOOMKilled",
        _crashed_near_limit(),
        "0m",
        "critical",
        "Node {{ $labels.pipeline }}/{{ $labels.node }} crashed near its memory limit",
        "A run of the node crashed in the last hour, and its peak memory is above 90% of its "
        "limit: probably OOM-killed. The catalog's error_type says it for sure (OOMKilled; "
        "odibi-observe runs --failures).",
    ),
)


def rules_document() -> dict[str, Yaml]:
    return {
        "groups": [
            {
                "name": "odibi-observe",
                "interval": DEPLOYMENT.scrape_interval,
                "rules": [rule.to_yaml() for rule in RULES],
            }
        ]
    }
