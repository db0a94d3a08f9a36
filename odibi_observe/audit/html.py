"""The HTML report of an audit: one self-contained file, with the reconciliation report's style
sheet and the reports' shared furniture (:mod:`odibi_observe._htmlpage`: no script, no
external resource, every value through :func:`html.escape`).

Top to bottom: the verdict and the numbers; what could not be read; each finding with its
versions, rows and what odibi-observe's catalog recorded; what to do per kind; the nodes
audited.
"""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Final

from odibi_observe._htmlpage import Col, alert_cards, badge, document, num, table, todo_section
from odibi_observe._htmlpage import verdict as verdict_pill
from odibi_observe.audit.model import KINDS, AuditResult
from odibi_observe.audit.report import observed_text, rows_text, verdict, versions_text
from odibi_observe.conventions import AUDIT_FINDING_KINDS, AUDIT_KEYS, AUDIT_REPORT_STEM
from odibi_observe.reconcile.html import _CSS as BASE_CSS
from odibi_observe.reconcile.model import iso

#: Findings listed in the HTML (the JSON report has them all).
HTML_ROWS: Final = 500
KIND_COLOURS: Final = dict(zip(AUDIT_FINDING_KINDS, ("#ff7f0e", "#d62728", "#9467bd"), strict=True))
_CSS: Final = BASE_CSS + ".cards{grid-template-columns:repeat(5,1fr)}\n"


def render_html(result: AuditResult, *, max_rows: int = HTML_ROWS) -> str:
    """The HTML report of ``result`` (see the module docstring)."""
    css = "bad" if result.findings else "warn" if result.errors or not result.nodes else "ok"
    text = verdict(result)
    generated = datetime.now(timezone.utc).replace(microsecond=0)
    catalog = f" · catalog <code>{escape(result.catalog)}</code>" if result.catalog else ""
    body = [
        f'<div class="meta">project <code>{escape(result.project)}</code> · meta_runs '
        f"<code>{escape(str(result.meta_runs))}</code> · HWM state "
        f"<code>{escape(str(result.state))}</code>{catalog} · generated "
        f"{escape(iso(generated) or '')}</div>",
        _cards(result),
        _errors(result),
        _findings(result, max_rows),
        _todo(result),
        _nodes(result),
        f"<footer>{escape(' · '.join([*result.notes, f'{result.seconds:.2f} s']))}</footer>",
    ]
    return document(
        title=f"Audit of {result.odibi_project or result.project}",
        css=_CSS,
        heading="odibi-observe audit",
        verdict=verdict_pill(css, text if result.findings else text.upper()),
        body=[part for part in body if part],
    )


def _cards(result: AuditResult) -> str:
    return alert_cards(
        [
            ("Nodes audited", f"{len(result.nodes):,}", not result.nodes),
            ("Commits audited", f"{result.commits_audited:,}", False),
            ("In flight", f"{result.in_flight:,}", False),
            ("Findings", f"{len(result.findings):,}", bool(result.findings)),
            ("Unreadable inputs", f"{len(result.errors):,}", bool(result.errors)),
        ]
    )


def _errors(result: AuditResult) -> str:
    if not result.errors:
        return ""
    items = "".join(f'<li class="err">{escape(e[AUDIT_KEYS.message])}</li>' for e in result.errors)
    return f"<h2>Could not be read</h2><ul>{items}</ul>"


def _findings(result: AuditResult, max_rows: int) -> str:
    ordered = result.sorted_findings()
    if not ordered:
        return (
            '<div class="empty">No findings: every commit audited is claimed and '
            "checkpointed.</div>"
        )
    rows = [
        [
            badge(f.kind, KIND_COLOURS[f.kind]),
            escape(f.writer.pipeline),
            f'{escape(f.writer.node)}<div class="sub">{escape(f.writer.target)}</div>',
            escape(versions_text(f)),
            escape(iso(f.at) or ""),
            rows_text(f),
            escape(observed_text(f)),
            escape(f.detail),
        ]
        for f in ordered[:max_rows]
    ]
    left = (
        f'<tr><td colspan="8" class="sub">{len(ordered) - max_rows:,} more in '
        f"{AUDIT_REPORT_STEM}.json</td></tr>"
        if len(ordered) > max_rows
        else ""
    )
    columns: list[str | Col] = [
        "kind",
        "pipeline",
        "node",
        "versions",
        Col("at", "nowrap"),
        num("rows"),
        "our catalog",
        "detail",
    ]
    return "<h2>Findings</h2>" + table(columns, rows, last=left)


def _todo(result: AuditResult) -> str:
    return todo_section(result.by_kind(), KINDS, KIND_COLOURS)


def _nodes(result: AuditResult) -> str:
    if not result.nodes:
        return ""
    rows = [
        [
            escape(n.writer.pipeline),
            escape(n.writer.node),
            f"<code>{escape(n.writer.target)}</code>",
            f"<code>{escape(n.writer.state_key)}</code>",
            f"{n.commits:,}",
            f"{n.runs:,}",
            f"{n.hwm_updates:,}",
        ]
        for n in result.nodes
    ]
    columns: list[str | Col] = [
        "pipeline",
        "node",
        "target",
        "HWM key",
        num("commits"),
        num("Odibi runs"),
        num("HWM updates"),
    ]
    return "<h2>Nodes audited</h2>" + table(columns, rows)
