"""Reports of a data-health pass: JSON, Markdown, the terminal summary and the Prometheus text
file. (HTML is :mod:`.html`.)

The JSON report is the complete record. Its shape::

    {"generated_at": ..., "catalog": ..., "window": {...}, "training": {...},
     "options": {...}, "summary": {"nodes_seen": n, "nodes_judged": n, "recent_runs": n,
                 "findings": {kind: n}, "opened": {kind: n}, "resolved": {kind: n},
                 "recorded": bool},
     "findings": [{"kind", "pipeline", "node", "state", "opened_at", "passes", "score",
                   "baseline", "value", "detail", "evidence": {...}, "runs_total", "runs"}],
     "resolved": [{"kind", "pipeline", "node", "opened_at", "last_seen_at", ...}],
     "notes": [...], "seconds": s}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from odibi_observe.conventions import HEALTH_FINDING_KINDS, HEALTH_METRICS
from odibi_observe.health.model import KINDS, HealthResult
from odibi_observe.reconcile.model import iso, todo_table

#: Findings listed in the Markdown report (the JSON report has them all).
MARKDOWN_ROWS: Final = 50


def to_dict(result: HealthResult) -> dict[str, Any]:
    """The JSON report (see the module docstring)."""
    window = result.window
    return {
        "generated_at": iso(datetime.now(timezone.utc).replace(microsecond=0)),
        "catalog": result.catalog,
        "window": window.to_dict(),
        "training": {"start": iso(result.training_start), "end": iso(window.since)},
        "options": result.options.to_dict(),
        "summary": {
            "nodes_seen": result.nodes_seen,
            "nodes_judged": result.nodes_judged,
            "recent_runs": result.recent_runs,
            "findings": result.by_kind(),
            "findings_total": len(result.findings),
            "opened": result.opened_by_kind(),
            "resolved": result.resolved_by_kind(),
            "recorded": result.recorded,
        },
        "findings": [f.to_dict() for f in result.sorted_findings()],
        "resolved": result.resolved,
        "notes": result.notes,
        "seconds": round(result.seconds, 3),
    }


def write_json(result: HealthResult, path: str | Path) -> None:
    Path(path).write_text(
        json.dumps(to_dict(result), indent=2, ensure_ascii=False, default=str) + "\n",
        encoding="utf-8",
    )


def verdict(result: HealthResult) -> str:
    total = len(result.findings)
    if total:
        new = sum(result.opened_by_kind().values())
        return f"{total} finding{'s' if total != 1 else ''}" + (
            f" ({new} new)" if result.recorded else ""
        )
    return "healthy" if result.nodes_judged else "nothing judged"


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _state(finding: Any) -> str:
    if finding.state == "new":
        return "**new**"
    if finding.state == "open":
        return f"open since {iso(finding.opened_at)} ({finding.passes} passes)"
    return "not recorded"


def render_markdown(result: HealthResult, *, max_rows: int = MARKDOWN_ROWS) -> str:
    """The report as Markdown, for a chat or a ticket."""
    window = result.window
    by_kind = result.by_kind()
    lines = [
        f"## odibi-observe data health: {verdict(result)}",
        "",
        f"Recent runs {iso(window.since)} → {iso(window.end)}, judged against their node's "
        f"own history since {iso(result.training_start)}. Catalog `{_md(result.catalog)}`.",
        "",
        "| nodes seen | nodes with enough history | recent successes | findings | new | resolved |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {result.nodes_seen:,} | {result.nodes_judged:,} | {result.recent_runs:,} | "
        f"{len(result.findings):,} | "
        + (
            f"{sum(result.opened_by_kind().values()):,} | {len(result.resolved):,} |"
            if result.recorded
            else "— | — |"
        ),
    ]
    if result.notes:
        lines += [""] + [f"Note: {_md(n)}" for n in result.notes]
    if result.findings:
        lines += todo_table(by_kind, KINDS, "findings")
        lines += [
            "",
            "| kind | pipeline | node | state | score | detail |",
            "|---|---|---|---|---:|---|",
        ]
        ordered = result.sorted_findings()
        for f in ordered[:max_rows]:
            score = "∞" if f.score == float("inf") else f"{f.score:,.1f}"
            lines.append(
                f"| `{f.kind}` | {_md(f.pipeline)} | {_md(f.node)} | {_state(f)} | "
                f"{score} | {_md(f.detail)} |"
            )
        if len(ordered) > max_rows:
            lines.append(f"| … | | | | | {len(ordered) - max_rows} more in health.json |")
    if result.resolved:
        lines += ["", "**Resolved by this pass** (seen before, not any more):", ""]
        lines += [
            f"- `{r['kind']}` {_md(r['pipeline'])}/{_md(r['node'])}, open since "
            f"{r['opened_at']} ({r['passes']} passes)"
            for r in result.resolved[:max_rows]
        ]
    return "\n".join(lines) + "\n"


def cli_summary(result: HealthResult, written: Iterable[str] = ()) -> str:
    """The few lines ``odibi-observe health`` prints."""
    window = result.window
    kinds = ", ".join(f"{k} {n}" for k, n in result.by_kind().items() if n)
    lines = [
        f"health of runs {iso(window.since)} .. {iso(window.end)} against history since "
        f"{iso(result.training_start)} in {result.seconds:.1f} s",
        f"catalog        {result.catalog}: {result.nodes_seen:,} nodes, "
        f"{result.nodes_judged:,} with enough history, {result.recent_runs:,} recent successes",
        f"findings       {len(result.findings):,}" + (f": {kinds}" if kinds else ""),
    ]
    if result.recorded:
        lines.append(
            f"recorded       {sum(result.opened_by_kind().values()):,} new, "
            f"{sum(1 for f in result.findings if f.state == 'open'):,} still open, "
            f"{len(result.resolved):,} resolved"
        )
    for f in result.sorted_findings()[:20]:
        lines.append(
            f"  {f.kind:<17} {f.pipeline}/{f.node}"
            + (" [new]" if f.state == "new" else "")
            + f": {f.detail}"
        )
    if len(result.findings) > 20:
        lines.append(f"  ... {len(result.findings) - 20} more in the reports")
    for note in result.notes:
        lines.append(f"note           {note}")
    for path in written:
        lines.append(f"wrote          {path}")
    return "\n".join(lines)


def write_metrics(result: HealthResult, path: str | Path) -> CollectorRegistry:
    """Write :data:`~odibi_observe.conventions.HEALTH_METRICS` to a Prometheus text file (for
    node_exporter's textfile collector), from a registry of its own."""
    registry = CollectorRegistry()
    m = HEALTH_METRICS
    gauges = {
        metric.key: Gauge(metric.prometheus, metric.description, metric.labels, registry=registry)
        for metric in (m.findings, m.opened, m.resolved)
    }
    for key, counts in (
        ("findings", result.by_kind()),
        ("opened", result.opened_by_kind()),
        ("resolved", result.resolved_by_kind()),
    ):
        for kind in HEALTH_FINDING_KINDS:
            gauges[key].labels(kind).set(counts.get(kind, 0))
    per_finding = Gauge(
        m.open_finding.prometheus,
        m.open_finding.description,
        m.open_finding.labels,
        registry=registry,
    )
    for f in result.findings:
        per_finding.labels(f.kind, f.pipeline, f.node).set(1)
    Gauge(m.nodes.prometheus, m.nodes.description, registry=registry).set(result.nodes_judged)
    Gauge(m.last_run.prometheus, m.last_run.description, registry=registry).set(
        datetime.now(timezone.utc).timestamp()
    )
    write_to_textfile(str(path), registry)
    return registry
