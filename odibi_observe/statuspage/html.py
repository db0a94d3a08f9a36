"""The status page: one self-contained HTML file, the overview dashboard without Grafana.

Same rules as the reconciliation and health reports: no script, no external resource (no
CDN, font, image or link to fetch), inline CSS and inline SVG charts, every value through
:func:`html.escape`. It can be served from a bucket, attached to a ticket or refreshed by
cron, and looks the same everywhere. The layout has no fixed width above 800 px: the cards and
panels wrap (grid ``auto-fit``), charts scale (``viewBox``, ``width=100%``) and long
identifiers break, so the page reads on a laptop half-screen as on a wall display.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from html import escape
from typing import Final

from odibi_observe._htmlpage import Col, badge, cards, document, num, table, verdict
from odibi_observe._runview import human_ms
from odibi_observe._svgchart import Bar, Frame, stacked_bars
from odibi_observe.conventions import DISCREPANCY_KINDS, RunStatus
from odibi_observe.record import RunRecord
from odibi_observe.statuspage.model import (
    STATUS_ORDER,
    Completeness,
    NodeTiming,
    OpenFinding,
    StatusPage,
)

STATUS_COLOURS: Final = {
    RunStatus.SUCCESS.value: "#2e9e44",
    RunStatus.FAILURE.value: "#d0342c",
    RunStatus.CRASHED.value: "#8e44ad",
    RunStatus.RUNNING.value: "#1f77b4",
    RunStatus.CANCELLED.value: "#e69f00",
    RunStatus.SKIPPED.value: "#b0b0b0",
}
OTHER_COLOUR: Final = "#7f7f7f"

#: The success rate's thresholds, as the overview dashboard's "Success rate" stat.
RATE_GOOD: Final = 0.99
RATE_FAIR: Final = 0.95

_CSS: Final = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",
Arial,sans-serif;color:#1d2330;background:#f4f6f9}
main{max-width:1320px;margin:0 auto;padding:22px 24px 40px}
h1{font-size:22px;margin:0}
h2{font-size:15px;margin:0 0 10px;color:#2b3445}
.top{display:flex;align-items:center;gap:14px;flex-wrap:wrap}
.verdict{padding:5px 14px;border-radius:16px;font-weight:700;font-size:14px;color:#fff}
.ok{background:#2e9e44}.bad{background:#d0342c}.warn{background:#d98b00}.none{background:#7f7f7f}
.meta{color:#5b6578;font-size:13px;margin-top:6px;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px;
margin-top:16px}
.card{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08);
border-top:4px solid #dfe3ea}
.card .n{font-size:26px;font-weight:700;font-variant-numeric:tabular-nums}
.card .l{color:#5b6578;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card.good{border-top-color:#2e9e44}.card.good .n{color:#23803a}
.card.fair{border-top-color:#d98b00}.card.fair .n{color:#b87400}
.card.bad{border-top-color:#d0342c}.card.bad .n{color:#c0392b}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,560px),1fr));gap:16px;
margin-top:16px}
.panel{background:#fff;border-radius:8px;padding:14px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08);
min-width:0}
.wide{margin-top:16px}
table{width:100%;border-collapse:collapse}
th,td{padding:6px 8px;text-align:left;border-bottom:1px solid #e8ebf0;vertical-align:top;
overflow-wrap:break-word}
td.id{min-width:9em}
th{white-space:nowrap;background:#eef1f6;font-size:11px;text-transform:uppercase;letter-spacing:.03em;color:#4a5468}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:last-child td{border-bottom:none}
code,.mono{font-family:SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;
white-space:nowrap}
.bar{background:#e8ebf0;border-radius:4px;height:8px;display:block;margin-top:4px}
.bar i{display:block;height:8px;border-radius:4px}
.sub{color:#5b6578;font-size:12px}
.err{color:#a4261f;font-size:12px}
.tip{font-size:12px;color:#1d5f2a;margin-top:2px}
.tip:before{content:"\\2192  "}
.empty{color:#5b6578;padding:14px 2px}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin-top:4px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
.kinds{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}
.big{font-size:30px;font-weight:700;font-variant-numeric:tabular-nums}
.notes{margin:16px 0 0;padding-left:18px;color:#5b6578;font-size:12px}
footer{margin-top:24px;color:#5b6578;font-size:12px;overflow-wrap:anywhere}
"""


def render_html(page: StatusPage) -> str:
    """The page of ``page`` (see the module docstring)."""
    body = [
        f'<div class="meta">Runs started {escape(_stamp(page.since))} → '
        f"{escape(_stamp(page.until))} · catalog <code>{escape(page.catalog)}</code> · "
        f"generated {escape(_stamp(page.generated_at))}</div>",
        _cards(page),
        f'<div class="panel wide"><h2>Runs by status (per {escape(_span(page.step))}, by '
        f"start)</h2>{_status_chart(page)}</div>",
        _panel(
            "Recent failures, with suggestions",
            _failures(page.failures, page.failures_total),
            wide=True,
        ),
        '<div class="grid">',
        _panel("Completeness", _completeness(page.completeness)),
        _panel("Open health findings", _findings(page)),
        _panel("Running now", _running(page)),
        _panel("Crashed runs", _crashed(page)),
        "</div>",
        _panel("Slowest nodes (finished runs, exact quantiles)", _slowest(page.slowest), wide=True),
        _notes(page.notes),
        "<footer>odibi-observe report · from the catalog alone · the panels of the Grafana "
        '"Pipeline overview" dashboard</footer>',
    ]
    return document(
        title=f"odibi-observe status · {_stamp(page.generated_at)}",
        css=_CSS,
        heading="odibi-observe status",
        verdict=_verdict(page),
        body=body,
    )


def _stamp(value: datetime | None) -> str:
    if value is None:
        return ""
    return f"{value.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def _span(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    for unit, size in (("day", 86_400), ("h", 3_600), ("min", 60)):
        if seconds % size == 0:
            n = seconds // size
            return (
                f"{n} {unit}s"
                if unit == "day" and n > 1
                else "day"
                if unit == "day"
                else f"{n} {unit}"
                if n > 1
                else "hour"
                if unit == "h"
                else "minute"
            )
    return f"{seconds} s"


def _ms(ms: float | None) -> str:
    return human_ms(ms, "—")


def _ago(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "—"
    return _ms(max((now - then).total_seconds() * 1000, 0)) + " ago"


def _verdict(page: StatusPage) -> str:
    failed = page.failures_total
    if page.totals.total() == 0 and not page.running_total:
        return verdict("none", "NO RUNS IN THIS WINDOW")
    if failed:
        noun = "failed run" if failed == 1 else "failed runs"
        return verdict("bad", f"{failed:,} {noun}")
    rate = page.success_rate
    if page.findings_total or (page.completeness and page.completeness.discrepancies):
        return verdict("warn", "RUNS OK · SEE BELOW")
    if rate is None:
        return verdict("warn", "RUNNING")
    return verdict("ok", "ALL RUNS SUCCEEDED")


def _cards(page: StatusPage) -> str:
    rate = page.success_rate
    rate_class = (
        ""
        if rate is None
        else "good"
        if rate >= RATE_GOOD
        else "fair"
        if rate >= RATE_FAIR
        else "bad"
    )
    comp = page.completeness
    comp_text, comp_class = "—", ""
    if comp is not None and comp.ratio is not None:
        comp_text = f"{comp.ratio * 100:.2f}%"
        comp_class = "good" if comp.ratio >= 0.999 else "fair" if comp.ratio >= 0.95 else "bad"
    findings = "—" if page.findings is None else f"{page.findings_total:,}"
    numbers = [
        ("Runs", f"{page.totals.total():,}", ""),
        ("Success rate", "—" if rate is None else f"{rate * 100:.1f}%", rate_class),
        ("Failed", f"{page.failures_total:,}", "bad" if page.failures_total else "good"),
        ("Crashed", f"{page.crashed_total:,}", "bad" if page.crashed_total else "good"),
        ("Running now", f"{page.running_total:,}", ""),
        ("Completeness", comp_text, comp_class),
        (
            "Open findings",
            findings,
            "fair" if page.findings_total else ("good" if page.findings is not None else ""),
        ),
    ]
    return cards((label, value, f"card {css}") for label, value, css in numbers)


def _panel(title: str, body: str, *, wide: bool = False) -> str:
    css = "panel wide" if wide else "panel"
    return f'<div class="{css}"><h2>{escape(title)}</h2>{body}</div>'


def _status_chart(page: StatusPage) -> str:
    buckets = page.buckets
    if not any(b.total for b in buckets):
        return '<div class="empty">No runs started in this window.</div>'
    statuses = [s.value for s in STATUS_ORDER]
    statuses += sorted({k for b in buckets for k in b.counts} - set(statuses))
    bars = [Bar(b.counts, _tick(b.start, page.step), _stamp(b.start)) for b in buckets]
    svg = stacked_bars(
        bars,
        statuses,
        lambda s: STATUS_COLOURS.get(s, OTHER_COLOUR),
        Frame(960, 190, 24, 12, 182),
        "runs by status over time",
    )
    legend = "".join(
        f'<span><i style="background:{STATUS_COLOURS.get(s, OTHER_COLOUR)}"></i>'
        f"{escape(s)} {page.totals.get(s, 0):,}</span>"
        for s in statuses
        if page.totals.get(s)
    )
    return f'{svg}<div class="legend">{legend}</div>'


def _tick(start: datetime, step: timedelta) -> str:
    return f"{start:%H:%M}" if step < timedelta(days=1) else f"{start:%m-%d}"


def _badge(status: str) -> str:
    return badge(status, STATUS_COLOURS.get(status, OTHER_COLOUR))


def _breakable(name: str) -> str:
    return escape(name).replace("_", "_<wbr>").replace("-", "-<wbr>")


def _node(pipeline: str, node: str) -> str:
    return f'{_breakable(pipeline)}<div class="sub">{_breakable(node)}</div>'


def _more(shown: int, total: int, command: str = "runs", lists: str = "lists") -> str:
    """What a panel left out, and the ``odibi-observe`` command that ``lists`` it all."""
    if total <= shown:
        return ""
    return (
        f'<div class="sub">showing {shown:,} of {total:,}: '
        f"<code>odibi-observe {command}</code> {lists} them all</div>"
    )


def _error(rec: RunRecord, *, suggestions: bool = True) -> str:
    if not rec.error_type and not rec.error_message:
        return ""
    message = (rec.error_message or "").strip().splitlines()
    first = message[0] if message else ""
    text = f'<div class="err">{escape(rec.error_type or "")}: {escape(first[:300])}</div>'
    if suggestions:
        text += "".join(f'<div class="tip">{escape(s)}</div>' for s in rec.suggestions)
    return text


def _failures(records: Sequence[RunRecord], total: int) -> str:
    if not records:
        return '<div class="empty">No failed or crashed runs in this window.</div>'
    rows = (
        [
            _started(r),
            _node(r.pipeline, r.node),
            _badge(r.status.value) + _attempt(r),
            f'{_error(r)}<div class="sub mono">{escape(r.run_id)}</div>',
        ]
        for r in records
    )
    columns: list[str | Col] = [
        num("started"),
        Col("pipeline / node", "id"),
        "status",
        "error and what to do",
    ]
    return table(columns, rows) + _more(len(records), total)


def _started(rec: RunRecord) -> str:
    return escape(f"{rec.started_at:%m-%d %H:%M}")


def _attempt(rec: RunRecord) -> str:
    return f'<div class="sub">attempt {rec.attempt}</div>' if rec.attempt > 1 else ""


def _slowest(timings: Sequence[NodeTiming]) -> str:
    if not timings:
        return '<div class="empty">No finished runs with a duration in this window.</div>'
    top = max(t.max_ms for t in timings) or 1.0
    rows = []
    for t in timings:
        p50 = 100 * t.p50_ms / top
        p95 = 100 * t.p95_ms / top
        rows.append(
            [
                f'{_node(t.pipeline, t.node)}<span class="bar" title="p50 and p95 against '
                f'the slowest max"><i style="width:{max(p95, 0.5):.1f}%;background:linear-gradient('
                f'90deg,#1f77b4 {p50 / max(p95, 0.5) * 100:.0f}%,#9cc3e6 0)"></i></span>',
                f"{t.runs:,}",
                *(_ms(ms) for ms in (t.p50_ms, t.p95_ms, t.max_ms)),
            ]
        )
    return table(["pipeline / node", *map(num, ("runs", "p50", "p95", "max"))], rows)


def _running(page: StatusPage) -> str:
    if not page.running:
        return '<div class="empty">Nothing is running.</div>'
    now = page.generated_at
    rows = (
        [
            _node(r.pipeline, r.node),
            escape(_ms((now - r.started_at).total_seconds() * 1000)),
            escape(_ago(now, _heartbeat(r))),
            f'{escape(r.host or "")}<div class="sub">pid {r.pid}</div>',
        ]
        for r in page.running
    )
    return (
        table(["pipeline / node", num("running for"), num("heartbeat"), "host"], rows)
        + _more(len(page.running), page.running_total)
        + '<div class="sub">A run far older than its usual duration with an old heartbeat '
        "is probably a dead process: <code>odibi-observe sweep</code> closes it as "
        "CRASHED.</div>"
    )


def _heartbeat(rec: RunRecord) -> datetime | None:
    if rec.heartbeat_ns is None:
        return None
    return datetime.fromtimestamp(rec.heartbeat_ns / 1e9, tz=timezone.utc)


def _crashed(page: StatusPage) -> str:
    if not page.crashed:
        return '<div class="empty">No crashed runs in this window.</div>'
    rows = (
        [
            _started(r),
            _node(r.pipeline, r.node),
            f"{_error(r, suggestions=False)}"
            f'<div class="sub">{escape(r.host or "")} pid {r.pid}</div>',
        ]
        for r in page.crashed
    )
    return table([num("started"), "pipeline / node", "cause"], rows) + _more(
        len(page.crashed), page.crashed_total
    )


def _completeness(comp: Completeness | None) -> str:
    if comp is None:
        return (
            '<div class="empty">No reconciliation recorded: <code>odibi-observe reconcile'
            "</code> records one (see the notes below), or pass <code>--traces</code> to "
            "reconcile now.</div>"
        )
    ratio = comp.ratio
    colour = (
        "#7f7f7f"
        if ratio is None
        else "#2e9e44"
        if ratio >= 0.999
        else "#d98b00"
        if ratio >= 0.95
        else "#d0342c"
    )
    what = (
        "reconciled now (--traces)" if comp.live else f"last reconcile, {_stamp(comp.created_at)}"
    )
    kinds = "".join(
        badge(f"{k} {comp.by_kind[k]:,}", "#5b6578")
        for k in DISCREPANCY_KINDS
        if comp.by_kind.get(k)
    )
    verdict = (
        f'<div class="kinds">{kinds}</div>'
        if kinds
        else '<div class="sub">no discrepancies: every traced run is in the catalog, '
        "identically</div>"
        if not comp.discrepancies
        else ""
    )
    return (
        f'<div class="big" style="color:{colour}">'
        f"{'—' if ratio is None else f'{ratio * 100:.2f}%'}</div>"
        f'<span class="bar"><i style="width:{(ratio or 0) * 100:.1f}%;background:{colour}">'
        f'</i></span><div class="sub" style="margin-top:6px">{escape(what)}: runs started '
        f"{escape(_stamp(comp.window_start))} → {escape(_stamp(comp.window_end))}</div>"
        f'<table style="margin-top:8px"><tbody>'
        f'<tr><td>trace runs</td><td class="num">{comp.trace_runs:,}</td>'
        f'<td>catalog runs</td><td class="num">{comp.catalog_runs:,}</td></tr>'
        f'<tr><td>matched</td><td class="num">{comp.matched:,}</td>'
        f'<td>discrepancies</td><td class="num">{comp.discrepancies:,}</td></tr>'
        f"</tbody></table>{verdict}"
        f'<div class="sub mono" style="margin-top:6px">report {escape(comp.report_id)}</div>'
    )


def _findings(page: StatusPage) -> str:
    if page.findings is None:
        return (
            '<div class="empty">The catalog has no findings table: '
            "<code>odibi-observe catalog upgrade</code> creates it, "
            "<code>odibi-observe health</code> fills it.</div>"
        )
    if not page.findings:
        return '<div class="empty">No open findings: every node judged behaves like itself.</div>'
    rows = (_finding(f, page.generated_at) for f in page.findings)
    return table(["kind", "pipeline / node", "detail", num("open since")], rows) + _more(
        len(page.findings), page.findings_total, "health", "reports"
    )


def _finding(f: OpenFinding, now: datetime) -> list[str]:
    return [
        f"<code>{_breakable(f.kind)}</code>",
        _node(f.pipeline, f.node),
        escape(f.detail[:400]),
        f'{escape(_ago(now, f.opened_at))}<div class="sub">{f.passes:,} '
        f"pass{'es' if f.passes != 1 else ''}</div>",
    ]


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"
