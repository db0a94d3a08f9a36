"""The HTML report of a data-health pass: one self-contained file, read at a glance.

Same rules as the reconciliation report (:mod:`odibi_observe.reconcile.html`, whose style sheet
it shares): no script, no external resource, inline SVG, every value through
:func:`html.escape`. Top to bottom: the verdict and the numbers; findings by kind; each finding
with its evidence drawn (where the value fell against the node's normal band, or how stale
the node is against what it is allowed); what to do per kind; what this pass resolved.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from html import escape
from typing import Any, Final

from odibi_observe._htmlpage import Col, alert_cards, badge, num, table, todo_section, verdict
from odibi_observe.conventions import HEALTH_FINDING_KINDS
from odibi_observe.health.model import KINDS, Finding, HealthResult
from odibi_observe.health.report import verdict as verdict_text
from odibi_observe.reconcile.html import _CSS as BASE_CSS
from odibi_observe.reconcile.html import window_document
from odibi_observe.reconcile.model import iso

#: Findings listed in the HTML (the JSON report has them all).
HTML_ROWS: Final = 500

KIND_COLOURS: Final = dict(
    zip(
        HEALTH_FINDING_KINDS,
        (
            "#1f77b4",
            "#d62728",
            "#9467bd",
            "#ff7f0e",
            "#8c564b",
            "#17becf",
            "#e377c2",
        ),
        strict=True,
    )
)

_CSS: Final = (
    BASE_CSS
    + """
.cards{grid-template-columns:repeat(6,1fr)}
td.ev{width:230px}
.state-new{background:#d0342c}.state-open{background:#d98b00}.state-unrecorded{background:#7f7f7f}
"""
)


def render_html(result: HealthResult, *, max_rows: int = HTML_ROWS) -> str:
    """The HTML report of ``result`` (see the module docstring)."""
    window = result.window
    total = len(result.findings)
    css = "bad" if total else ("ok" if result.nodes_judged else "warn")
    text = verdict_text(result).upper() if not total else verdict_text(result)
    generated = datetime.now(timezone.utc).replace(microsecond=0)
    body = [
        f'<div class="meta">Recent runs {escape(iso(window.since) or "")} → '
        f"{escape(iso(window.end) or '')}, each node against its own history since "
        f"{escape(iso(result.training_start) or '')} · catalog <code>{escape(result.catalog)}"
        f"</code> · generated {escape(iso(generated) or '')}</div>",
        _cards(result),
        f'<div class="panel" style="margin-top:16px"><h2>Findings by kind</h2>'
        f"{_kind_chart(result)}</div>",
        _findings(result, max_rows),
        _todo(result),
        _resolved(result),
        _footer(result),
    ]
    return window_document("Data health", window, verdict(css, text), body, _CSS)


def _cards(result: HealthResult) -> str:
    recorded = result.recorded
    new = sum(result.opened_by_kind().values())
    numbers = [
        ("Nodes seen", f"{result.nodes_seen:,}", False),
        ("Nodes with history", f"{result.nodes_judged:,}", not result.nodes_judged),
        ("Recent successes", f"{result.recent_runs:,}", False),
        ("Findings", f"{len(result.findings):,}", bool(result.findings)),
        ("New", f"{new:,}" if recorded else "—", bool(new)),
        ("Resolved", f"{len(result.resolved):,}" if recorded else "—", False),
    ]
    notes = list(result.notes)
    if not recorded:
        notes.append(
            "findings not recorded (no meta_health_findings table, or --no-record): "
            "every finding is shown without its open/new state"
        )
    note = f'<div class="meta">{escape("; ".join(notes))}</div>' if notes else ""
    return alert_cards(numbers) + note


def _kind_chart(result: HealthResult) -> str:
    counts = list(result.by_kind().items())
    top = max((n for _, n in counts), default=0)
    if not top:
        return '<div class="empty">No findings: every node judged behaved like itself.</div>'
    label_w, bar_w, row_h = 150, 320, 26
    rows = []
    for i, (kind, count) in enumerate(counts):
        y = 4 + i * row_h
        width = 0 if not count else max(2, round(bar_w * count / top))
        rows.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" font-size="12" '
            f'fill="{"#1d2330" if count else "#8a93a3"}">{escape(kind)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{width}" height="16" rx="3" '
            f'fill="{KIND_COLOURS[kind]}"><title>{escape(kind)}: {count}</title></rect>'
            f'<text x="{label_w + width + 6}" y="{y + 15}" font-size="12">{count}</text>'
        )
    width, height = label_w + bar_w + 60, row_h * len(counts) + 6
    return (
        f'<svg width="{width}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="findings by kind">{"".join(rows)}</svg>'
    )


def _band(finding: Finding) -> str:
    """Where the value fell: the normal band (mean ± sensitivity x stddev) and the value."""
    ev = finding.evidence
    mean, sd, value = ev.get("mean"), ev.get("stddev"), finding.value
    if finding.kind == "freshness":
        allowed, age = finding.baseline or 0.0, finding.value or 0.0
        top = max(allowed, age) or 1.0
        return (
            f'<svg width="220" height="34" role="img" aria-label="age against allowed">'
            f'<rect x="0" y="8" width="{200 * allowed / top:.1f}" height="10" rx="3" '
            f'fill="#cfe3cf"><title>allowed</title></rect>'
            f'<rect x="0" y="11" width="{200 * age / top:.1f}" height="4" fill="#d0342c">'
            f'<title>age</title></rect><line x1="{200 * allowed / top:.1f}" '
            f'x2="{200 * allowed / top:.1f}" y1="4" y2="22" stroke="#2e9e44"/>'
            f'<text x="0" y="31" font-size="10" fill="#5b6578">'
            f"age {escape(_seconds(age))} / allowed {escape(_seconds(allowed))}</text></svg>"
        )
    if finding.kind == "memory_growth":
        return _memory(finding)
    if mean is None or value is None:
        return ""
    mean, value = float(mean), float(value)
    k = float(ev.get("sensitivity") or 3)
    half = k * float(sd or 0)
    low, high = mean - half, mean + half
    lo, hi = min(low, value, 0.0 if finding.kind == "zero_rows" else low), max(high, value)
    span = (hi - lo) or max(abs(mean), 1.0)
    lo, hi = lo - span * 0.08, hi + span * 0.08

    def x(v: float) -> float:
        return 200 * (v - lo) / (hi - lo)

    return (
        f'<svg width="220" height="34" role="img" aria-label="value against normal band">'
        f'<line x1="0" x2="200" y1="13" y2="13" stroke="#e3e7ee"/>'
        f'<rect x="{x(low):.1f}" y="7" width="{max(x(high) - x(low), 1.5):.1f}" height="12" '
        f'rx="3" fill="#cfe3cf"><title>normal: {low:,.0f} .. {high:,.0f}</title></rect>'
        f'<line x1="{x(mean):.1f}" x2="{x(mean):.1f}" y1="5" y2="21" stroke="#2e9e44"/>'
        f'<circle cx="{x(value):.1f}" cy="13" r="5" fill="#d0342c"><title>value '
        f'{value:,.0f}</title></circle><text x="0" y="31" font-size="10" fill="#5b6578">'
        f"mean {mean:,.0f} · value {value:,.0f}</text></svg>"
    )


def _memory(finding: Finding) -> str:
    """Peak memory against the limit: the bar is the limit, the line the threshold, the
    green tick the trend's start and the red dot the last run."""
    ev = finding.evidence
    limit = float(ev.get("limit_bytes") or 0)
    if limit <= 0:
        return ""
    start, last = float(ev.get("baseline_bytes") or 0), float(ev.get("last_bytes") or 0)
    threshold = float(ev.get("threshold") or 0.9)

    def x(v: float) -> float:
        return 200 * min(max(v / limit, 0.0), 1.0)

    mib = 1024 * 1024
    return (
        f'<svg width="220" height="34" role="img" aria-label="peak memory against limit">'
        f'<rect x="0" y="7" width="200" height="12" rx="3" fill="#e3e7ee"><title>limit '
        f"{limit / mib:,.0f} MiB</title></rect>"
        f'<line x1="{200 * threshold:.1f}" x2="{200 * threshold:.1f}" y1="3" y2="23" '
        f'stroke="#d98b00"><title>{threshold:.0%} of the limit</title></line>'
        f'<line x1="{x(start):.1f}" x2="{x(start):.1f}" y1="5" y2="21" stroke="#2e9e44">'
        f"<title>trend start {start / mib:,.0f} MiB</title></line>"
        f'<circle cx="{x(last):.1f}" cy="13" r="5" fill="#d0342c"><title>last '
        f'{last / mib:,.0f} MiB</title></circle><text x="0" y="31" font-size="10" '
        f'fill="#5b6578">last {last / mib:,.0f} MiB · limit {limit / mib:,.0f} MiB</text>'
        f"</svg>"
    )


def _seconds(value: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} s"


def _findings(result: HealthResult, max_rows: int) -> str:
    ordered = result.sorted_findings()
    if not ordered:
        return ""
    rows = []
    for f in ordered[:max_rows]:
        state = {
            "new": "new",
            "open": f"open · {f.passes} passes",
            "unrecorded": "not recorded",
        }.get(f.state, f.state)
        since = (
            f'<div class="sub">since {escape(iso(f.opened_at) or "")}</div>'
            if f.state == "open"
            else ""
        )
        score = "∞" if math.isinf(f.score) else f"{f.score:,.1f}"
        runs = ", ".join(f"<code>{escape(str(r.get('run_id')))}</code>" for r in f.runs[:3])
        more = f" +{f.runs_total - 3} more" if f.runs_total > 3 else ""
        rows.append(
            [
                badge(f.kind, KIND_COLOURS[f.kind]),
                escape(f.pipeline),
                escape(f.node),
                f'<span class="badge state-{escape(f.state)}">{escape(state)}</span>{since}',
                escape(score),
                _band(f),
                f'{escape(f.detail)}<div class="sub">{runs}{escape(more)}</div>',
            ]
        )
    left = (
        f'<tr><td colspan="7" class="sub">{len(ordered) - max_rows:,} more in health.json</td></tr>'
        if len(ordered) > max_rows
        else ""
    )
    columns: list[str | Col] = [
        "kind",
        "pipeline",
        "node",
        "state",
        num("score"),
        Col("evidence", "ev"),
        "detail and runs",
    ]
    return "<h2>Findings</h2>" + table(columns, rows, last=left)


def _todo(result: HealthResult) -> str:
    return todo_section(result.by_kind(), KINDS, KIND_COLOURS)


def _resolved(result: HealthResult) -> str:
    if not result.resolved:
        return ""
    columns: list[str | Col] = ["kind", "pipeline", "node", "opened", "last seen", num("passes")]
    rows = (
        [f"<code>{escape(str(r['kind']))}</code>"]
        + [escape(str(r[k])) for k in ("pipeline", "node", "opened_at", "last_seen_at")]
        + [f"{r['passes']}"]
        for r in result.resolved[:HTML_ROWS]
    )
    return "<h2>Resolved by this pass</h2>" + table(columns, rows)


def _footer(result: HealthResult) -> str:
    o: dict[str, Any] = result.options.to_dict()
    text = (
        f"sensitivity {o['sensitivity']:g} · training {o['training_span_days']:g} d · "
        f"min points {o['min_points']} · volume {o['volume_direction']} · duration "
        f"{o['duration_direction']} · min change {o['min_change']:.0%} · seasonality "
        f"{o['seasonality']} · freshness {o['freshness_factor']:g}x cadence · streak "
        f"{o['failure_streak']} · flaky {o['flaky_min']} · memory "
        f"{o['memory_threshold']:.0%} of the limit within {o['memory_horizon']} runs, "
        f"fitted to {o['memory_runs']} · {result.seconds:.2f} s"
    )
    return f"<footer>{escape(text)}</footer>"
