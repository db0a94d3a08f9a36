"""The HTML report: one self-contained file an on-call engineer can read at a glance.

No CDN, no script, no external font or image: CSS is inline, the two charts are inline SVG
drawn here, and every value goes through :func:`html.escape`. So the file can be attached to a
ticket, opened from a mail or served from a bucket and looks the same everywhere. Built with
the standard library only (f-strings and ``html.escape``; no template engine dependency).

Top to bottom: the verdict and the numbers; discrepancies by kind and over time; completeness
per pipeline; what to do about each kind found; the affected runs, each linked to its trace
(``--trace-url-template``) with the error and suggestions of failed runs; the read errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any, Final

from odibi_observe._htmlpage import Col, alert_cards, badge, document, num, table, verdict
from odibi_observe._svgchart import Bar, Frame, stacked_bars
from odibi_observe.conventions import DISCREPANCY_KINDS
from odibi_observe.reconcile.engine import ReconcileResult
from odibi_observe.reconcile.model import KINDS, Discrepancy, Window, iso, iso_ns
from odibi_observe.reconcile.report import (
    checked_line,
    not_run_line,
    pipelines,
    side_facts,
    timeline,
    top_items,
    trace_url,
)

#: Affected runs listed in the HTML (the JSON report has them all).
HTML_ROWS: Final = 500

#: One colour per kind, in DISCREPANCY_KINDS order (distinguishable, print-safe).
KIND_COLOURS: Final = dict(
    zip(
        DISCREPANCY_KINDS,
        (
            "#d62728",
            "#ff7f0e",
            "#9467bd",
            "#1f77b4",
            "#17becf",
            "#8c564b",
            "#e377c2",
            "#7f7f7f",
            "#bcbd22",
            "#aec7e8",
            "#ffbb78",
            "#98df8a",
            "#c5b0d5",
        ),
        strict=True,
    )
)

_CSS: Final = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",
Arial,sans-serif;color:#1d2330;background:#f4f6f9}
main{max-width:1320px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:22px;margin:0}
h2{font-size:16px;margin:28px 0 10px;color:#2b3445}
.top{display:flex;align-items:center;gap:16px;flex-wrap:wrap}
.verdict{padding:6px 14px;border-radius:16px;font-weight:700;font-size:14px;color:#fff}
.ok{background:#2e9e44}.bad{background:#d0342c}.warn{background:#d98b00}
.meta{color:#5b6578;font-size:13px;margin-top:6px}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin-top:18px}
.card{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card .n{font-size:24px;font-weight:700}
.card .l{color:#5b6578;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card.alert .n{color:#d0342c}
.charts{display:grid;grid-template-columns:1fr 1.3fr;gap:16px;margin-top:16px}
.panel{background:#fff;border-radius:8px;padding:14px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.panel h2{margin-top:0}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
th,td{padding:7px 10px;text-align:left;border-bottom:1px solid #e8ebf0;vertical-align:top}
th{background:#eef1f6;font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#4a5468}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{border-bottom:none}
code,.mono{font-family:SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;
white-space:nowrap}
.bar{background:#e8ebf0;border-radius:4px;height:10px;width:140px;display:inline-block;
vertical-align:middle;margin-right:8px}
.bar i{display:block;height:10px;border-radius:4px}
.sub{color:#5b6578;font-size:12px}
.err{color:#a4261f;font-size:12px}
.kinds{display:grid;grid-template-columns:repeat(2,1fr);gap:12px}
.kind{background:#fff;border-radius:8px;padding:12px 14px;border-left:5px solid #999;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.kind b{font-size:14px}
.empty{color:#5b6578;padding:18px 4px}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin-top:4px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
.nowrap{white-space:nowrap}
a{color:#1f5fbf;text-decoration:none}a:hover{text-decoration:underline}
footer{margin-top:28px;color:#5b6578;font-size:12px}
"""


def render_html(
    result: ReconcileResult, *, trace_url_template: str | None = None, max_rows: int = HTML_ROWS
) -> str:
    """The HTML report of ``result`` (see the module docstring)."""
    total = result.discrepancies_total
    window = result.window
    if total:
        noun = "discrepancy" if total == 1 else "discrepancies"
        pill = verdict("bad", f"{total:,} {noun}")
    elif result.errors_total:
        pill = verdict("warn", f"{result.errors_total:,} read errors")
    elif not result.checked:
        pill = verdict("warn", "NOTHING CHECKED")
    else:
        pill = verdict("ok", "CLEAN")
    items = top_items(result, max_rows)
    body = [
        f'<div class="meta">Runs started {escape(iso(window.since) or "")} → '
        f"{escape(iso(window.end) or '')} (grace {escape(_human(window.grace.total_seconds()))})"
        f" · generated {escape(iso(datetime.now(timezone.utc)) or '')} · report "
        f"<code>{escape(result.report_id)}</code></div>",
        _cards(result),
        '<div class="charts">',
        f'<div class="panel"><h2>Discrepancies by kind</h2>{_kind_chart(result)}</div>',
        f'<div class="panel"><h2>Discrepancies over time (per '
        f"{'hour' if result.bucket_ns <= 3_600_000_000_000 else 'day'}, by start)</h2>"
        f"{_time_chart(result)}</div>",
        "</div>",
        _pipelines(result),
        _kinds(result),
        _runs(items, total, trace_url_template),
        _errors(result),
        _footer(result),
    ]
    return window_document("Reconciliation", window, pill, body)


def window_document(
    name: str, window: Window, verdict: str, body: Iterable[str], css: str = _CSS
) -> str:
    """The page of a report on ``window`` (this one, and data health's on this style sheet):
    titled with its name and window, headed with its name."""
    return document(
        title=f"{name} {iso(window.since) or ''} to {iso(window.end) or ''}",
        css=css,
        heading=f"odibi-observe {name.lower()}",
        verdict=verdict,
        body=body,
    )


def _human(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cards(result: ReconcileResult) -> str:
    completeness = result.completeness
    numbers = [
        ("Catalog runs", f"{result.catalog_runs:,}", False),
        ("Trace runs", f"{result.trace_runs:,}", False),
        ("Matched", f"{result.matched:,}", False),
        ("Runs checked", f"{result.checked:,}", not result.checked),
        ("Left for next pass", f"{result.deferred:,}", False),
        ("Catalog completeness", f"{completeness * 100:.2f}%", completeness < 1),
        ("Discrepancies", f"{result.discrepancies_total:,}", bool(result.discrepancies_total)),
        ("Read errors", f"{result.errors_total:,}", bool(result.errors_total)),
    ]
    notes = [checked_line(result)]
    if result.not_run:
        notes.append(not_run_line(result))
    notes.extend(f"Note: {text}" for text in result.notes)
    if result.in_flight:
        notes.append(f"{result.in_flight:,} runs still in flight (RUNNING, alive)")
    if result.unchecked:
        notes.append(
            f"{result.unchecked:,} catalog runs unchecked (their trace source could "
            "not be read for that time)"
        )
    if result.ignored_spans:
        notes.append(f"{result.ignored_spans:,} spans ignored (not odibi node spans)")
    note = f'<div class="meta">{escape("; ".join(notes))}</div>' if notes else ""
    return alert_cards(numbers) + note


def _kind_chart(result: ReconcileResult) -> str:
    counts = [(k, result.by_kind.get(k, 0)) for k in DISCREPANCY_KINDS]
    top = max((n for _, n in counts), default=0)
    if not top:
        return '<div class="empty">No discrepancies in this window.</div>'
    label_w, bar_w, row_h = 170, 300, 26
    height = row_h * len(counts) + 6
    rows = []
    for i, (kind, count) in enumerate(counts):
        y = 4 + i * row_h
        width = 0 if not count else max(2, round(bar_w * count / top))
        colour = KIND_COLOURS[kind] if count else "#c9ced8"
        rows.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" font-size="12" '
            f'fill="{"#1d2330" if count else "#8a93a3"}">{escape(kind)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{width}" height="16" rx="3" '
            f'fill="{colour}"><title>{escape(kind)}: {count:,}</title></rect>'
            f'<text x="{label_w + width + 6}" y="{y + 15}" font-size="12" '
            f'fill="#1d2330">{count:,}</text>'
        )
    return (
        f'<svg width="100%" viewBox="0 0 {label_w + bar_w + 60} {height}" role="img" '
        f'aria-label="discrepancies by kind">{"".join(rows)}</svg>'
    )


def _time_chart(result: ReconcileResult) -> str:
    buckets = timeline(result)
    if not buckets:
        return '<div class="empty">No discrepancies in this window.</div>'
    step = result.bucket_ns
    first = result.window.since_ns - result.window.since_ns % step
    last = max(result.window.end_ns, int(_bucket_ns(buckets[-1])) + step)
    slots = max(1, -(-(last - first) // step))
    if slots > 400:  # a very long window: show only the buckets that have discrepancies
        starts = [int(_bucket_ns(b)) for b in buckets]
    else:
        starts = [first + i * step for i in range(slots)]
    by_start = {int(_bucket_ns(b)): b["counts"] for b in buckets}
    bars = [
        Bar(by_start.get(start, {}), _tick(start, step), iso_ns(start) or "") for start in starts
    ]
    svg = stacked_bars(
        bars,
        DISCREPANCY_KINDS,
        KIND_COLOURS.__getitem__,
        Frame(640, 220, 30, 8, 206),
        "discrepancies over time",
    )
    legend = "".join(
        f'<span><i style="background:{KIND_COLOURS[kind]}"></i>{escape(kind)}</span>'
        for kind in DISCREPANCY_KINDS
        if result.by_kind.get(kind)
    )
    return f'{svg}<div class="legend">{legend}</div>'


def _bucket_ns(bucket: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(bucket["start"]).replace("Z", "+00:00")).timestamp() * 1e9


def _tick(start_ns: int, step: int) -> str:
    moment = datetime.fromtimestamp(start_ns / 1e9, tz=timezone.utc)
    return f"{moment:%m-%d %H:00}" if step <= 3_600_000_000_000 else f"{moment:%Y-%m-%d}"


def _pipelines(result: ReconcileResult) -> str:
    rows = pipelines(result)
    if not rows:
        return '<h2>Completeness per pipeline</h2><div class="empty">No runs in this window.</div>'
    counts = ("trace_runs", "catalog_runs", "matched", "discrepancies")
    body = []
    for row in rows:
        ratio = row["completeness_ratio"]
        colour = "#2e9e44" if ratio >= 0.999 else "#d98b00" if ratio >= 0.95 else "#d0342c"
        body.append(
            [
                escape(row["pipeline"] or "(none)"),
                f'<span class="bar"><i style="width:{ratio * 100:.1f}%;background:{colour}"></i>'
                f"</span>{ratio * 100:.2f}%",
                *(f"{row[k]:,}" for k in counts),
            ]
        )
    columns: list[str | Col] = ["pipeline", "catalog holds of traced runs"]
    columns += [num(k.replace("_", " ")) for k in counts]
    return "<h2>Completeness per pipeline</h2>" + table(columns, body)


def _kinds(result: ReconcileResult) -> str:
    found = [k for k in DISCREPANCY_KINDS if result.by_kind.get(k)]
    if not found:
        return ""
    cards = []
    for kind in found:
        info = KINDS[kind]
        repair = (
            f'<div class="sub">--repair: {escape(info.repair)}</div>'
            if info.repair
            else '<div class="sub">--repair: nothing (report only)</div>'
        )
        cards.append(
            f'<div class="kind" style="border-left-color:{KIND_COLOURS[kind]}">'
            f"<b>{escape(info.title)}</b> · {result.by_kind[kind]:,} · <code>{escape(kind)}"
            f"</code><div>{escape(info.meaning)}</div><div><b>What to do:</b> "
            f"{escape(info.todo)}</div>{repair}</div>"
        )
    repair_note = ""
    if result.repair:
        r = result.repair
        if r.get("mode") == "dry-run":
            repair_note = (
                '<div class="meta">Repair dry run: nothing was changed; the last '
                "column says what <code>--repair</code> would do.</div>"
            )
        else:
            repair_note = (
                f'<div class="meta">Repair applied: {r.get("applied", 0):,} done, '
                f"{r.get('failed', 0):,} failed, {r.get('skipped', 0):,} skipped."
                "</div>"
            )
    return f'<h2>What to do</h2><div class="kinds">{"".join(cards)}</div>{repair_note}'


def _side(side: dict[str, Any] | None) -> str:
    if not side:
        return '<span class="sub">—</span>'
    status, *rest = side_facts(side)
    text = [f"<b>{escape(status)}</b>", *map(escape, rest)]
    return f'<span class="nowrap">{"<br>".join(text)}</span>'


def _breakable(name: str) -> str:
    """An identifier that may wrap after its underscores (``update_catalog_from_trace``)."""
    return escape(name).replace("_", "_<wbr>")


def _when(ns: int | None) -> str:
    if ns is None:
        return ""
    return f"{datetime.fromtimestamp(ns / 1e9, tz=timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def _runs(items: Sequence[Discrepancy], total: int, template: str | None) -> str:
    if not items:
        return ""
    body = []
    for item in items:  # by kind (the order of the chart), then by start: see top_items
        colour = KIND_COLOURS.get(item.kind, "#7f7f7f")
        link = trace_url(template, item)
        run = escape(item.run_id)
        run_html = (
            f'<a class="mono" href="{escape(link)}">{run}</a>'
            if link
            else f'<span class="mono">{run}</span>'
        )
        failure = ""
        for side in (item.trace, item.catalog):
            if side and side.get("error_type"):
                failure = (
                    f'<div class="err">{escape(str(side.get("error_type")))}: '
                    f"{escape(str(side.get('error_message') or ''))[:300]}</div>"
                )
                failure += "".join(
                    f'<div class="sub">suggestion: {escape(str(s))}</div>'
                    for s in side.get("suggestions") or ()
                )
                break
        repair = ""
        if item.repair:
            repair = (
                f'<span title="{escape(str(item.repair.get("note") or ""))}">'
                f"{escape(str(item.repair.get('status')))}</span>"
                f'<div class="sub">{_breakable(str(item.repair.get("action") or ""))}'
                "</div>"
            )
        body.append(
            [
                badge(item.kind, colour),
                f'{escape(item.pipeline)}<div class="sub">{escape(item.node)}</div>',
                f'{run_html}<div class="sub">{escape(_when(item.started_ns))}</div>',
                _side(item.catalog),
                _side(item.trace),
                f"{escape(item.detail)}{failure}",
                repair,
            ]
        )
    more = (
        f'<div class="meta">Showing {len(items):,} of {total:,}; report.json has them all.</div>'
        if total > len(items)
        else ""
    )
    columns: list[str | Col] = [
        "kind",
        "pipeline / node",
        Col("run (trace link) / started", "nowrap"),
        "catalog",
        "trace",
        "detail",
        "repair",
    ]
    return "<h2>Affected runs</h2>" + table(columns, body) + more


def _errors(result: ReconcileResult) -> str:
    if not result.errors_total:
        return ""
    body = ([escape(e.where), escape(e.message), escape(e.source)] for e in result.errors[:200])
    more = (
        f'<div class="meta">{result.errors_total - min(len(result.errors), 200):,} more '
        "in report.json (which keeps the first 1,000).</div>"
        if result.errors_total > 200
        else ""
    )
    return (
        f"<h2>Read errors ({result.errors_total:,}) — input that could not be read; the "
        "rest of the window was reconciled</h2>"
        + table([Col("where", "mono"), "problem", Col("source", "sub")], body)
        + more
    )


def _footer(result: ReconcileResult) -> str:
    traces = ", ".join(result.trace_sources)
    return (
        f"<footer>Catalog: <code>{escape(result.catalog_source)}</code> · traces: "
        f"<code>{escape(traces)}</code> · crash threshold "
        f"{escape(_human(result.options.crash_after.total_seconds()))} · duration "
        f"tolerance {result.options.duration_tolerance_ratio:.0%} or "
        f"{result.options.duration_tolerance_ms:g} ms · reconciled in "
        f"{result.seconds:.1f} s</footer>"
    )
