"""The HTML report of an audit: one self-contained file, with the reconciliation report's style
sheet and rules (no script, no external resource, every value through :func:`html.escape`).

Top to bottom: the verdict and the numbers; what could not be read; each finding with its
versions, rows and what odibi-observe's catalog recorded; what to do per kind; the nodes
audited.
"""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Final

from odibi_observe.audit.model import KINDS, AuditResult
from odibi_observe.audit.report import observed_text, rows_text, verdict, versions_text
from odibi_observe.conventions import AUDIT_FINDING_KINDS
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
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>Audit of {escape(result.odibi_project or result.project)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f'<div class="top"><h1>odibi-observe audit</h1>'
        f'<span class="verdict {css}">{escape(text if result.findings else text.upper())}'
        "</span></div>",
        f'<div class="meta">project <code>{escape(result.project)}</code> · meta_runs '
        f"<code>{escape(str(result.meta_runs))}</code> · HWM state "
        f"<code>{escape(str(result.state))}</code>"
        + (f" · catalog <code>{escape(result.catalog)}</code>" if result.catalog else "")
        + f" · generated {escape(iso(generated) or '')}</div>",
        _cards(result),
        _errors(result),
        _findings(result, max_rows),
        _todo(result),
        _nodes(result),
        f"<footer>{escape(' · '.join([*result.notes, f'{result.seconds:.2f} s']))}</footer>",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _cards(result: AuditResult) -> str:
    cards = [
        ("Nodes audited", f"{len(result.nodes):,}", not result.nodes),
        ("Commits audited", f"{result.commits_audited:,}", False),
        ("In flight", f"{result.in_flight:,}", False),
        ("Findings", f"{len(result.findings):,}", bool(result.findings)),
        ("Unreadable inputs", f"{len(result.errors):,}", bool(result.errors)),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card{" alert" if alert else ""}"><div class="n">{escape(value)}</div>'
            f'<div class="l">{escape(label)}</div></div>'
            for label, value, alert in cards
        )
        + "</div>"
    )


def _errors(result: AuditResult) -> str:
    if not result.errors:
        return ""
    items = "".join(f'<li class="err">{escape(e["message"])}</li>' for e in result.errors)
    return f"<h2>Could not be read</h2><ul>{items}</ul>"


def _findings(result: AuditResult, max_rows: int) -> str:
    ordered = result.sorted_findings()
    if not ordered:
        return (
            '<div class="empty">No findings: every commit audited is claimed and '
            "checkpointed.</div>"
        )
    body = []
    for f in ordered[:max_rows]:
        body.append(
            f'<tr><td><span class="badge" style="background:{KIND_COLOURS[f.kind]}">'
            f"{escape(f.kind)}</span></td><td>{escape(f.writer.pipeline)}</td>"
            f'<td>{escape(f.writer.node)}<div class="sub">{escape(f.writer.target)}</div></td>'
            f"<td>{escape(versions_text(f))}</td>"
            f'<td class="nowrap">{escape(iso(f.at) or "")}</td><td class="num">{rows_text(f)}</td>'
            f"<td>{escape(observed_text(f))}</td><td>{escape(f.detail)}</td></tr>"
        )
    if len(ordered) > max_rows:
        body.append(
            f'<tr><td colspan="8" class="sub">{len(ordered) - max_rows:,} more in '
            "audit.json</td></tr>"
        )
    return (
        "<h2>Findings</h2><table><thead><tr><th>kind</th><th>pipeline</th><th>node</th>"
        '<th>versions</th><th>at</th><th class="num">rows</th><th>our catalog</th>'
        f"<th>detail</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _todo(result: AuditResult) -> str:
    found = [k for k, n in result.by_kind().items() if n]
    if not found:
        return ""
    cards = "".join(
        f'<div class="kind" style="border-left-color:{KIND_COLOURS[k]}"><b>'
        f'{escape(KINDS[k].title)}</b> <code>{escape(k)}</code><div class="sub">'
        f"{escape(KINDS[k].method)}</div><div>{escape(KINDS[k].todo)}</div></div>"
        for k in found
    )
    return f'<h2>What to do</h2><div class="kinds">{cards}</div>'


def _nodes(result: AuditResult) -> str:
    if not result.nodes:
        return ""
    rows = "".join(
        f"<tr><td>{escape(n.writer.pipeline)}</td><td>{escape(n.writer.node)}</td>"
        f"<td><code>{escape(n.writer.target)}</code></td><td><code>"
        f'{escape(n.writer.state_key)}</code></td><td class="num">{n.commits:,}</td>'
        f'<td class="num">{n.runs:,}</td><td class="num">{n.hwm_updates:,}</td></tr>'
        for n in result.nodes
    )
    return (
        "<h2>Nodes audited</h2><table><thead><tr><th>pipeline</th><th>node</th><th>target</th>"
        '<th>HWM key</th><th class="num">commits</th><th class="num">Odibi runs</th>'
        f'<th class="num">HWM updates</th></tr></thead><tbody>{rows}</tbody></table>'
    )
