"""Reports of an audit: JSON (the complete record), Markdown and the terminal summary. (HTML is
:mod:`.html`.)

``audit.json``, keys from :data:`~odibi_observe.conventions.AUDIT_KEYS`::

    {"generated_at", "project", "odibi_project", "meta_runs", "state", "catalog",
     "window": {"since", "until", "grace_seconds"},
     "summary": {"nodes_audited", "commits_audited", "commits_in_flight",
                 "findings": {kind: n}, "findings_total", "errors"},
     "nodes": [{"pipeline", "node", "target", "state_key", "commits", "odibi_runs", "hwm",
                "commits_in_flight"}],
     "findings": [{"kind", "pipeline", "node", "target", "state_key", "versions", "timestamp",
                   "rows", "commits": [{"version", "timestamp", "operation", "rows"}],
                   "hwm": [{"state_key", "state_version", "timestamp", "value", "previous"}],
                   "odibi_runs": [{"run_id", "status", "rows", "logged_at", "version",
                                   "hwm_pending", "hwm_error"}],
                   "our_catalog": null | [null | {"run_id", "status", "started_at",
                                                   "ended_at", "error_type", "covers"}],
                   "detail", "todo"}],
     "errors": [{"source", "message"}], "notes": [...], "seconds"}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Final

from odibi_observe.audit.model import KINDS, AuditResult, Finding, ObservedRun
from odibi_observe.conventions import AUDIT_KEYS, AUDIT_REPORT_STEM
from odibi_observe.reconcile.model import iso, md_cell, todo_table

K: Final = AUDIT_KEYS
#: Findings listed in the Markdown report and on the terminal (the JSON report has them all).
MARKDOWN_ROWS: Final = 50
CLI_ROWS: Final = 20


def to_dict(result: AuditResult) -> dict[str, Any]:
    """The JSON report (see the module docstring)."""
    return {
        K.generated_at: iso(datetime.now(timezone.utc).replace(microsecond=0)),
        K.project: result.project,
        K.odibi_project: result.odibi_project,
        K.meta_runs: result.meta_runs,
        K.state: result.state,
        K.catalog: result.catalog,
        K.window: result.options.to_dict(),
        K.summary: {
            K.nodes_audited: len(result.nodes),
            K.commits_audited: result.commits_audited,
            K.commits_in_flight: result.in_flight,
            K.findings: result.by_kind(),
            K.findings_total: len(result.findings),
            K.errors: len(result.errors),
        },
        K.nodes: [n.to_dict() for n in result.nodes],
        K.findings: [f.to_dict() for f in result.sorted_findings()],
        K.errors: result.errors,
        K.notes: result.notes,
        K.seconds: round(result.seconds, 3),
    }


def render_json(result: AuditResult) -> str:
    return json.dumps(to_dict(result), indent=2, ensure_ascii=False, default=str) + "\n"


def verdict(result: AuditResult) -> str:
    """``2 findings``, ``clean``, ``nothing audited`` (and the read errors, if any)."""
    total = len(result.findings)
    if total:
        text = f"{total} finding{'s' if total != 1 else ''}"
    elif result.commits_audited:
        text = "clean"
    else:
        text = "nothing audited"
    if result.errors:
        text += f", {len(result.errors)} unreadable input{'s' if len(result.errors) != 1 else ''}"
    return text


def observed_text(finding: Finding) -> str:
    """What our catalog says of the finding's commits: ``—`` when it was not asked."""
    if finding.observed is None:
        return "—"
    parts = [_observed_one(o) for o in finding.observed]
    return "; ".join(dict.fromkeys(parts)) if parts else "—"


def _observed_one(observed: ObservedRun | None) -> str:
    if observed is None:
        return "no run recorded"
    cause = f" ({observed.error_type})" if observed.error_type else ""
    return f"run {observed.run_id} {observed.status}{cause}"


def versions_text(finding: Finding) -> str:
    return ", ".join(str(c.version) for c in finding.commits) or "—"


def rows_text(finding: Finding) -> str:
    return "?" if finding.rows is None else f"{finding.rows:,}"


def render_markdown(result: AuditResult, *, max_rows: int = MARKDOWN_ROWS) -> str:
    """The report as Markdown, for a chat or a ticket."""
    lines = [
        f"## odibi-observe audit of {md_cell(result.odibi_project or result.project)}: "
        f"{verdict(result)}",
        "",
        f"Project `{md_cell(result.project)}`; Odibi's meta_runs `{md_cell(result.meta_runs)}`, "
        f"HWM state `{md_cell(result.state)}`"
        + (f"; odibi-observe catalog `{md_cell(result.catalog)}`" if result.catalog else "")
        + ".",
        "",
        "| nodes audited | commits audited | in flight (grace) | findings | unreadable inputs |",
        "|---:|---:|---:|---:|---:|",
        f"| {len(result.nodes):,} | {result.commits_audited:,} | {result.in_flight:,} | "
        f"{len(result.findings):,} | {len(result.errors):,} |",
    ]
    for error in result.errors:
        lines += ["", f"**Unreadable:** {md_cell(error[K.message])}"]
    if result.notes:
        lines += [""] + [f"Note: {md_cell(n)}" for n in result.notes]
    if result.findings:
        lines += todo_table(result.by_kind(), KINDS, "findings")
        lines += [
            "",
            "| kind | pipeline | node | versions | at | rows | our catalog | detail |",
            "|---|---|---|---|---|---:|---|---|",
        ]
        ordered = result.sorted_findings()
        for f in ordered[:max_rows]:
            lines.append(
                f"| `{f.kind}` | {md_cell(f.writer.pipeline)} | {md_cell(f.writer.node)} | "
                f"{versions_text(f)} | {iso(f.at)} | {rows_text(f)} | "
                f"{md_cell(observed_text(f))} | {md_cell(f.detail)} |"
            )
        if len(ordered) > max_rows:
            lines.append(
                f"| … | | | | | | | {len(ordered) - max_rows} more in {AUDIT_REPORT_STEM}.json |"
            )
    return "\n".join(lines) + "\n"


def cli_summary(result: AuditResult, written: Iterable[str] = ()) -> str:
    """The lines ``odibi-observe audit`` prints."""
    kinds = ", ".join(f"{k} {n}" for k, n in result.by_kind().items() if n)
    lines = [
        f"audited        {result.project} ({result.odibi_project or 'unnamed'}) in "
        f"{result.seconds:.1f} s",
        f"nodes          {len(result.nodes):,} incremental with a Delta target: "
        f"{result.commits_audited:,} commits audited"
        + (f", {result.in_flight:,} left in flight (grace)" if result.in_flight else ""),
        f"findings       {len(result.findings):,}" + (f": {kinds}" if kinds else ""),
    ]
    ordered = result.sorted_findings()
    for f in ordered[:CLI_ROWS]:
        lines.append(f"  {f.kind:<16} {f.writer.pipeline}/{f.writer.node}: {f.detail}")
        if f.observed is not None:
            lines.append(f"  {'':<16} our catalog: {observed_text(f)}")
    if len(ordered) > CLI_ROWS:
        lines.append(f"  ... {len(ordered) - CLI_ROWS} more in the reports")
    for error in result.errors:
        lines.append(f"unreadable     {error[K.message]}")
    for note in result.notes:
        lines.append(f"note           {note}")
    for path in written:
        lines.append(f"wrote          {path}")
    return "\n".join(lines)
