"""Reports of a reconciliation: JSON, Markdown, the CLI summary, the catalog's
``meta_reconciliation`` tables and the Prometheus text file. (HTML is :mod:`.html`.)

The JSON report is the complete record: every discrepancy, both sides as they were read, the
repair annotation, every read error kept. It is *written* incrementally — header, then one
discrepancy at a time from the result's spill file — so its size is bounded by the disk, not
by memory. Its shape::

    {"report_id": ..., "generated_at": ..., "window": {...}, "sources": {...},
     "summary": {"catalog_runs": n, "trace_runs": n, "matched": n,
                 "discrepancies": {kind: count}, "runs_checked": n, "deferred": n,
                 "deferred_reason": "...", "not_run": {"dry_run": n}, ...},
     "pipelines": [...], "timeline": [...], "repair": {...}, "notes": [...],
     "discrepancies": [{"kind", "run_id", "pipeline", "node", "catalog", "trace", "detail",
                        "repair", ...}],
     "errors": [{"source", "where", "message"}], "errors_total": n}

Markdown is for pasting into a chat or a ticket: the summary, the kinds found with what to do,
the first affected runs and the errors.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from odibi_observe.catalog.schema import (
    NODE,
    PIPELINE,
    REPORT_ID,
    RUN_ID,
    STARTED_AT,
    TRACE_ID,
    reconciliation,
    reconciliation_items,
)
from odibi_observe.catalog.store import create_catalog_engine
from odibi_observe.conventions import DISCREPANCY_KINDS, RECONCILE_METRICS
from odibi_observe.reconcile.engine import ReconcileResult
from odibi_observe.reconcile.model import (
    KINDS,
    NOT_RUN_REASONS,
    Discrepancy,
    iso,
    iso_ns,
    todo_table,
)
from odibi_observe.record import ns_to_datetime

#: Discrepancies listed in the Markdown report (the JSON report has them all).
MARKDOWN_ROWS: Final = 50
_ITEM_BATCH: Final = 1_000
#: Repair actions listed on the terminal (the reports list more).
CLI_REPAIR_LINES: Final = 20


def trace_url(template: str | None, item: Discrepancy) -> str | None:
    """``template`` with ``{trace_id}``, ``{span_id}`` and ``{run_id}`` filled in, or None.

    Plain substitution, not ``str.format``: a template is configuration, and braces it does
    not name (``{"datasource":...}`` in a Grafana explore URL) must survive as they are.
    """
    trace_id = item.trace_id
    if not template or not trace_id:
        return None
    span_id = ""
    for side in (item.trace, item.catalog):
        if side and side.get("span_id"):
            span_id = str(side["span_id"])
            break
    return (
        template.replace("{trace_id}", trace_id)
        .replace("{span_id}", span_id)
        .replace("{run_id}", item.run_id)
    )


def top_items(result: ReconcileResult, limit: int) -> list[Discrepancy]:
    """The ``limit`` discrepancies a reader should see first: by kind (in the order of
    :data:`~odibi_observe.conventions.DISCREPANCY_KINDS`), then by start. Streams the spill
    file, holding ``limit`` items."""
    order = {kind: i for i, kind in enumerate(DISCREPANCY_KINDS)}
    return heapq.nsmallest(
        limit,
        result.discrepancies(),
        key=lambda d: (order.get(d.kind, len(order)), d.started_ns or 0, d.run_id),
    )


def pipelines(result: ReconcileResult) -> list[dict[str, Any]]:
    """Per-pipeline completeness, least complete first."""
    rows = [
        {
            "pipeline": name,
            "trace_runs": s.trace_runs,
            "catalog_runs": s.catalog_runs,
            "matched": s.matched,
            "completeness_ratio": round(s.completeness, 6),
            "discrepancies": s.discrepancies,
        }
        for name, s in result.pipelines.items()
    ]
    return sorted(rows, key=lambda r: (r["completeness_ratio"], -r["discrepancies"], r["pipeline"]))


def timeline(result: ReconcileResult) -> list[dict[str, Any]]:
    """Discrepancies per time bucket (an hour, or a day for long windows) and kind."""
    buckets: dict[int, dict[str, int]] = {}
    for (bucket, kind), count in result.timeline.items():
        buckets.setdefault(bucket, {})[kind] = count
    return [
        {"start": iso_ns(bucket), "counts": counts} for bucket, counts in sorted(buckets.items())
    ]


def header(result: ReconcileResult) -> dict[str, Any]:
    """Everything of the JSON report but the discrepancies and the errors."""
    return {
        "report_id": result.report_id,
        "generated_at": iso(datetime.now(timezone.utc)),
        "window": result.window.to_dict(),
        "sources": {
            "catalog": result.catalog_source,
            "traces": result.trace_sources,
            "unreadable": result.unreadable,
        },
        "options": {
            "crash_after_seconds": result.options.crash_after.total_seconds(),
            "duration_tolerance_ratio": result.options.duration_tolerance_ratio,
            "duration_tolerance_ms": result.options.duration_tolerance_ms,
        },
        "summary": result.summary(),
        "pipelines": pipelines(result),
        "timeline_bucket_seconds": result.bucket_ns // 1_000_000_000,
        "timeline": timeline(result),
        "repair": result.repair or None,
        "notes": result.notes,
        "seconds": round(result.seconds, 3),
    }


def write_json(
    result: ReconcileResult, path: str | Path, *, trace_url_template: str | None = None
) -> None:
    """Write the JSON report (streaming the discrepancies; see the module docstring)."""
    head = header(result)
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps(head, indent=2, ensure_ascii=False)[:-2])
        out.write(',\n  "discrepancies": [')
        for number, item in enumerate(result.discrepancies()):
            data = item.to_dict()
            link = trace_url(trace_url_template, item)
            if link:
                data["trace_url"] = link
            out.write(
                ("\n    " if number == 0 else ",\n    ")
                + json.dumps(data, ensure_ascii=False, default=str)
            )
        out.write('\n  ],\n  "errors": ')
        out.write(json.dumps([e.to_dict() for e in result.errors], ensure_ascii=False))
        out.write(f',\n  "errors_total": {result.errors_total}\n}}\n')


# --- Markdown -------------------------------------------------------------------------------------


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.2f}%"


def render_markdown(
    result: ReconcileResult, *, trace_url_template: str | None = None, max_rows: int = MARKDOWN_ROWS
) -> str:
    """The report as Markdown (see the module docstring)."""
    window = result.window
    total = result.discrepancies_total
    state = (
        ("nothing checked" if not result.checked else "clean")
        if result.clean
        else (f"{total:,} discrepancies" if total else f"{result.errors_total:,} read errors")
    )
    lines = [
        f"## odibi-observe reconciliation: {state}",
        "",
        f"Window {iso(window.since)} → {iso(window.end)} (grace {_duration(window.grace)}), "
        f"report `{result.report_id}`.",
        "",
        "| catalog runs | trace runs | matched | completeness | discrepancies | errors |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {result.catalog_runs:,} | {result.trace_runs:,} | {result.matched:,} | "
        f"{_pct(result.completeness)} | {total:,} | {result.errors_total:,} |",
        "",
        f"Catalog: `{_md(result.catalog_source)}`; traces: "
        + ", ".join(f"`{_md(t)}`" for t in result.trace_sources)
        + ".",
    ]
    lines += ["", checked_line(result)]
    if result.not_run:
        lines += ["", not_run_line(result)]
    if result.notes:
        lines += [""] + [f"Note: {_md(note)}" for note in result.notes]
    if result.in_flight or result.unchecked or result.ignored_spans:
        lines += [
            "",
            f"In flight (RUNNING, alive): {result.in_flight:,}; unchecked (trace "
            f"source could not be read for their time): {result.unchecked:,}; "
            f"spans ignored (not odibi node spans): {result.ignored_spans:,}.",
        ]
    if total:
        counts = {kind: result.by_kind.get(kind, 0) for kind in DISCREPANCY_KINDS}
        lines += todo_table(counts, KINDS, "runs")
        if result.repair:
            lines += ["", _repair_line(result.repair)]
        lines += [
            "",
            "| kind | pipeline | node | run_id | started | catalog | trace | detail | repair |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for item in top_items(result, max_rows):
            link = trace_url(trace_url_template, item)
            run = f"[`{item.run_id}`]({link})" if link else f"`{item.run_id}`"
            lines.append(
                f"| `{item.kind}` | {_md(item.pipeline)} | {_md(item.node)} | {run} | "
                f"{iso_ns(item.started_ns) or ''} | {_side(item.catalog)} | "
                f"{_side(item.trace)} | {_md(item.detail)} | {_repair_cell(item.repair)} |"
            )
        if total > max_rows:
            lines.append(f"| … | | | {total - max_rows:,} more in report.json | | | | | |")
        actions = repair_actions(result, max_rows)
        if actions:
            lines += ["", "**Repair actions** (kind, run, what was done, where):", ""]
            lines += [f"- {_md(text)}" for text in actions]
    if result.errors_total:
        lines += ["", f"**Read errors: {result.errors_total:,}** (first ones):", ""]
        lines += [
            f"- `{_md(e.where)}` ({_md(e.source)}): {_md(e.message)}" for e in result.errors[:20]
        ]
    return "\n".join(lines) + "\n"


def checked_line(result: ReconcileResult) -> str:
    """How many runs were checked, and how many were left for the next pass and why: a pass
    that checked nothing must say so, not read as "100 % complete"."""
    window = result.window
    text = f"Checked {result.checked:,} runs in the window"
    if not result.checked:
        text = "Checked 0 runs: this pass proves nothing"
    if result.deferred:
        text += (
            f"; {result.deferred:,} left for the next pass (too recent: started within "
            f"the grace period of {_duration(window.grace)}, after {iso(window.end)})"
        )
    elif not result.checked:
        text += " (no run started in the window)"
    return text + "."


def not_run_line(result: ReconcileResult) -> str:
    """The Odibi rows of nodes that did not execute: counted, explained, not discrepancies."""
    parts = "; ".join(
        f"{n:,} {NOT_RUN_REASONS.get(reason, reason)}"
        for reason, n in sorted(result.not_run.items())
    )
    total = sum(result.not_run.values())
    return (
        f"Odibi logged {total:,} rows for nodes that did not execute (not discrepancies): {parts}."
    )


def repair_actions(result: ReconcileResult, limit: int) -> list[str]:
    """One sentence per repair action (planned, applied or failed): kind, run, what was done,
    and on which backend. Runs with nothing to do are left out."""
    out: list[str] = []
    for item in top_items(result, limit):
        repair = item.repair or {}
        if not repair.get("action"):
            continue
        backends = repair.get("backends") or {}
        destination = (result.repair or {}).get("span_destination")
        where = "; ".join(
            f"{name}{f' {destination}' if name == 'traces' and destination else ''}: {state}"
            for name, state in backends.items()
        )
        out.append(
            f"{repair.get('status')} {repair['action']} for {item.kind} run "
            f"{item.run_id} ({item.pipeline}/{item.node}): {repair.get('note') or ''}"
            + (f" [{where}]" if where else "")
        )
    return out


def _repair_cell(repair: dict[str, Any] | None) -> str:
    if not repair:
        return ""
    action = f" `{repair['action']}`" if repair.get("action") else ""
    return _md(f"{repair.get('status')}") + action


def side_facts(side: dict[str, Any]) -> list[str]:
    """One side of a discrepancy (its catalog row or its span), as every report shows it:
    the status, the rows and, where known, the duration."""
    rows = side.get("rows_processed")
    duration = side.get("duration_ms")
    facts = [
        str(side.get("status") or "?"),
        f"{rows:,} rows" if isinstance(rows, int) else "rows ?",
    ]
    if duration is not None:
        facts.append(f"{float(duration):,.0f} ms")
    return facts


def _side(side: dict[str, Any] | None) -> str:
    return _md(", ".join(side_facts(side))) if side else "—"


def _repair_line(repair: dict[str, Any]) -> str:
    # Sorted: the counts fill in the order the repairs ran, which need not be the same twice.
    actions = ", ".join(
        f"{n} x {a.replace('_', ' ')}" for a, n in sorted(repair.get("actions", {}).items())
    )
    left = repair.get("skipped", 0) + repair.get("not_repairable", 0)
    rest = f"; {left} not repaired (see each run's repair note)" if left else ""
    if repair.get("mode") == "dry-run":
        return (
            f"Repair (dry run — pass `--repair` to apply): would do {actions or 'nothing'}{rest}."
        )
    backends = repair.get("backends") or {}
    per_backend = ", ".join(
        f"{name} {counts.get('applied', 0)} applied"
        + (f" / {counts['failed']} failed" if counts.get("failed") else "")
        + (f" / {counts['not_sent']} not sent" if counts.get("not_sent") else "")
        for name, counts in sorted(backends.items())
    )
    partial = (
        f", {repair['partial']} partly (not on every backend)" if repair.get("partial") else ""
    )
    return (
        f"Repair applied: {repair.get('applied', 0)} done{partial}, "
        f"{repair.get('failed', 0)} failed ({actions or 'nothing'}){rest}"
        + (f"; by backend: {per_backend}" if per_backend else "")
        + "."
    )


def _duration(delta: Any) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- CLI summary ----------------------------------------------------------------------------------


def cli_summary(result: ReconcileResult, written: Iterable[str] = ()) -> str:
    """The few lines ``odibi-observe reconcile`` prints."""
    window = result.window
    total = result.discrepancies_total
    kinds = ", ".join(
        f"{k} {result.by_kind[k]:,}" for k in DISCREPANCY_KINDS if result.by_kind.get(k)
    )
    lines = [
        f"reconciled {iso(window.since)} .. {iso(window.end)} (grace {_duration(window.grace)})"
        f" in {result.seconds:.1f} s",
        f"catalog        {result.catalog_source}: {result.catalog_runs:,} runs",
        f"traces         {', '.join(result.trace_sources)}: {result.trace_runs:,} runs"
        + (f" ({result.ignored_spans:,} other spans ignored)" if result.ignored_spans else ""),
        f"matched        {result.matched:,}  completeness "
        + (_pct(result.completeness) if result.checked else "- (nothing checked)")
        + (f"  in flight {result.in_flight:,}" if result.in_flight else "")
        + (f"  unchecked {result.unchecked:,}" if result.unchecked else ""),
        f"discrepancies  {total:,}" + (f": {kinds}" if kinds else ""),
        "checked        " + checked_line(result)[len("Checked ") :],
    ]
    if result.not_run:
        lines.append("not run        " + not_run_line(result))
    for note in result.notes:
        lines.append(f"note           {note}")
    if result.errors_total:
        first = result.errors[0] if result.errors else None
        lines.append(
            f"errors         {result.errors_total:,}"
            + (f" (first: {first.where}: {first.message})" if first else "")
        )
    if result.repair and total:
        lines.append("repair         " + _repair_line(result.repair).replace("`", ""))
        for text in repair_actions(result, CLI_REPAIR_LINES):
            lines.append(f"  {text}")
        listed = sum(1 for item in result.discrepancies() if (item.repair or {}).get("action"))
        if listed > CLI_REPAIR_LINES:
            lines.append(f"  ... {listed - CLI_REPAIR_LINES:,} more in the reports")
    for path in written:
        lines.append(f"wrote          {path}")
    return "\n".join(lines)


# --- meta_reconciliation ------------------------------------------------------------------------


def reconciliation_row(result: ReconcileResult) -> dict[str, Any]:
    """The ``meta_reconciliation`` row of ``result``, but the time it is written: what
    :func:`record` writes, and what the status page shows of a reconciliation it just ran
    (so a live one reads exactly like a recorded one)."""
    repair = result.repair or {}
    return {
        REPORT_ID: result.report_id,
        "window_start": result.window.since,
        "window_end": result.window.end,
        "grace_seconds": result.window.grace.total_seconds(),
        "catalog_source": result.catalog_source,
        "trace_sources": json.dumps(result.trace_sources),
        "catalog_runs": result.catalog_runs,
        "trace_runs": result.trace_runs,
        "matched": result.matched,
        "discrepancies": result.discrepancies_total,
        "discrepancies_json": json.dumps({k: result.by_kind.get(k, 0) for k in DISCREPANCY_KINDS}),
        "completeness_ratio": result.completeness,
        "repaired": int(repair.get("applied", 0)) + int(repair.get("partial", 0)),
        "errors": result.errors_total,
    }


def record(result: ReconcileResult, url: str) -> bool:
    """One ``meta_reconciliation`` row for the report and one ``meta_reconciliation_items`` row
    per discrepancy, in the catalog at ``url``; False (and nothing written) when the catalog
    has no such tables.

    Never creates or migrates anything: auditing a catalog must not change it (its schema
    belongs to whoever runs ``odibi-observe catalog upgrade``), so the tables are used only
    where they already exist.
    """
    engine = create_catalog_engine(url)
    try:
        if not recording_tables_exist(engine):
            return False
        with engine.begin() as conn:
            conn.execute(
                reconciliation.insert().values(
                    created_at=datetime.now(timezone.utc), **reconciliation_row(result)
                )
            )
            batch: list[dict[str, Any]] = []
            for number, item in enumerate(result.discrepancies(), start=1):
                batch.append(
                    {
                        REPORT_ID: result.report_id,
                        "item": number,
                        "kind": item.kind,
                        RUN_ID: item.run_id,
                        PIPELINE: item.pipeline[:255] or None,
                        NODE: item.node[:255] or None,
                        STARTED_AT: None
                        if item.started_ns is None
                        else ns_to_datetime(item.started_ns),
                        TRACE_ID: (item.trace_id or None),
                        "detail": item.detail,
                        "repaired": bool(
                            item.repair and item.repair.get("status") in ("applied", "partial")
                        ),
                    }
                )
                if len(batch) >= _ITEM_BATCH:
                    conn.execute(reconciliation_items.insert(), batch)
                    batch = []
            if batch:
                conn.execute(reconciliation_items.insert(), batch)
        return True
    finally:
        engine.dispose()


def recording_tables_exist(engine: sa.Engine) -> bool:
    """Whether the catalog has both ``meta_reconciliation`` tables (only read, never made)."""
    inspector = sa.inspect(engine)
    return all(inspector.has_table(t.name) for t in (reconciliation, reconciliation_items))


def recorded_reports(url: str, limit: int = 10) -> list[dict[str, Any]]:
    """The newest recorded reports (for tests and dashboards' sanity checks)."""
    engine = create_catalog_engine(url)
    try:
        with engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(reconciliation)
                    .order_by(reconciliation.c.created_at.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]
    finally:
        engine.dispose()


# --- Prometheus -----------------------------------------------------------------------------------


def write_metrics(result: ReconcileResult, path: str | Path) -> CollectorRegistry:
    """Write :data:`~odibi_observe.conventions.RECONCILE_METRICS` to a Prometheus text file
    (for node_exporter's textfile collector), from a registry of its own."""
    registry = CollectorRegistry()
    metrics = RECONCILE_METRICS
    discrepancies = Gauge(
        metrics.discrepancies.prometheus,
        metrics.discrepancies.description,
        metrics.discrepancies.labels,
        registry=registry,
    )
    for kind in DISCREPANCY_KINDS:
        discrepancies.labels(kind).set(result.by_kind.get(kind, 0))
    Gauge(metrics.completeness.prometheus, metrics.completeness.description, registry=registry).set(
        result.completeness
    )
    Gauge(metrics.last_run.prometheus, metrics.last_run.description, registry=registry).set(
        datetime.now(timezone.utc).timestamp()
    )
    Gauge(metrics.checked.prometheus, metrics.checked.description, registry=registry).set(
        result.checked
    )
    Gauge(metrics.deferred.prometheus, metrics.deferred.description, registry=registry).set(
        result.deferred
    )
    write_to_textfile(str(path), registry)
    return registry
