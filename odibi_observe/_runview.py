"""How node runs look on a terminal: ``odibi-observe runs`` and the demo.

A table that fits 80 columns (rich), coloured on a terminal and plain when piped or when
``NO_COLOR`` is set; a run's error and suggestions indented under its row; ``--details`` for
everything one run recorded; JSON lines for scripts. Every text that came from the catalog is
printed without terminal control sequences (:func:`~odibi_observe._redact.terminal_safe`): a
node's error message is data, and must not be able to recolour, retitle or overwrite the
terminal.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

from odibi_observe._cliargs import first_line
from odibi_observe._redact import redact, terminal_safe
from odibi_observe.conventions import PHASE_KEYS, UNCOMMITTED_WRITE, RunStatus
from odibi_observe.record import RunRecord, ns_to_datetime

#: The keys of a write and of the checkpoint (``writes_json``, ``checkpoint_json``).
_K: Final = PHASE_KEYS

#: Run ids are shown by their first characters, as git shows commits; ``--details`` takes
#: such a prefix.
SHORT_ID: Final = 8
STATUS_STYLES: Final = {
    RunStatus.SUCCESS: "green",
    RunStatus.FAILURE: "bold red",
    RunStatus.CRASHED: "bold magenta",
    RunStatus.RUNNING: "yellow",
    RunStatus.SKIPPED: "dim",
}


def console(stream: TextIO | None = None) -> Any:
    """A rich console on ``stream``: colour only on a terminal, never with ``NO_COLOR``;
    80 columns when the output is not a terminal (a file, a pipe, a CI log)."""
    from rich.console import Console

    out = stream or sys.stdout
    tty = out.isatty()
    no_color = bool(os.environ.get("NO_COLOR")) or not tty
    return Console(
        file=out,
        force_terminal=tty,
        no_color=no_color,
        highlight=False,
        emoji=False,
        markup=False,
        width=None if tty else 80,
        color_system=None if no_color else "auto",
        soft_wrap=not tty,
    )


def one_line(text: str) -> str:
    return terminal_safe(text).replace("\n", " ").replace("\t", " ")


def failure_lines(rec: RunRecord) -> list[str]:
    """A run's error (or crash cause) and suggestions, to indent under its row."""
    lines = []
    if rec.error_type:
        label = "cause" if rec.status is RunStatus.CRASHED else "error"
        lines.append(
            f"    {label}: {one_line(rec.error_type)}: "
            f"{terminal_safe(first_line(rec.error_message or ''))}"
        )
    summary = rec.uncommitted_summary() if rec.writes else None
    if summary is not None:
        lines.append(f"    {one_line(summary)}")
    lines.extend(f"    suggestion: {one_line(text)}" for text in rec.suggestions)
    if rec.skip_reason:
        lines.append(f"    skipped: {one_line(rec.skip_reason)}")
    return lines


def human_ms(ms: float | None, missing: str = "") -> str:
    """A duration in the largest unit that keeps it readable (``850 ms``, ``2.5 min``)."""
    if ms is None:
        return missing
    if ms < 1000:
        return f"{ms:,.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:,.1f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:,.1f} min"
    return f"{ms / 3_600_000:,.1f} h"


def rows_text(rows: int | None) -> str:
    return "" if rows is None else f"{rows:,}"


def short(run_id: str | None) -> str:
    return one_line(run_id or "")[:SHORT_ID]


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Widths:
    node: int
    rows: int
    duration: int


#: STARTED, STATUS, TRY and RUN ID, and the two spaces after each of the seven columns.
_FIXED: Final = 14 + 9 + 3 + SHORT_ID + 7 * 2


def _widths(records: Sequence[RunRecord], columns: int) -> _Widths:
    """One set of column widths for every row, so that the rows under each pipeline-run
    heading line up; the node column takes what is left of ``columns`` (ellipsis beyond)."""
    rows = max([4, *(len(rows_text(r.rows_processed)) for r in records)])
    duration = max([8, *(len(human_ms(r.duration_ms)) for r in records)])
    room = columns - _FIXED - rows - duration
    longest = max([4, *(len(one_line(r.node)) for r in records)])
    return _Widths(node=max(8, min(longest, room)), rows=rows, duration=duration)


def _table(header: bool, widths: _Widths) -> Any:
    from rich.table import Table

    table = Table(
        box=None,
        show_header=header,
        header_style="bold",
        pad_edge=False,
        padding=(0, 2, 0, 0),
        show_edge=False,
        expand=False,
    )
    table.add_column("STARTED (UTC)", width=14, no_wrap=True)
    table.add_column("NODE", width=widths.node, no_wrap=True, overflow="ellipsis")
    table.add_column("STATUS", width=9, no_wrap=True)  # CANCELLED
    table.add_column("TRY", width=3, justify="right", no_wrap=True)
    table.add_column("ROWS", width=widths.rows, justify="right", no_wrap=True)
    table.add_column("DURATION", width=widths.duration, justify="right", no_wrap=True)
    table.add_column("RUN ID", width=SHORT_ID, no_wrap=True)
    return table


def _group_line(rec: RunRecord) -> Any:
    from rich.text import Text

    text = Text()
    text.append(one_line(rec.pipeline), style="bold cyan")
    text.append(f"  pipeline run {short(rec.pipeline_run_id) or '-'}", style="dim")
    where = "/".join(one_line(p) for p in (rec.project, rec.environment) if p)
    if where:
        text.append(f"  {where}", style="dim")
    return text


def _row(table: Any, rec: RunRecord) -> None:
    from rich.text import Text

    attempt = Text(str(rec.attempt), style="bold yellow" if rec.attempt > 1 else "")
    table.add_row(
        f"{rec.started_at:%m-%d %H:%M:%S}",
        one_line(rec.node),
        Text(rec.status.value, style=STATUS_STYLES.get(rec.status, "")),
        attempt,
        rows_text(rec.rows_processed),
        human_ms(rec.duration_ms),
        Text(short(rec.run_id), style="dim"),
    )


def _failure_text(rec: RunRecord, wrap: bool) -> list[Any]:
    """The error and suggestion lines; on a terminal wrapped under their indent (within the
    width), else one line each (whole, for grep)."""
    from rich.padding import Padding
    from rich.text import Text

    out: list[Any] = []
    for line in failure_lines(rec):
        head = line.lstrip()
        style = (
            "yellow"
            if head.startswith("suggestion:")
            else "dim"
            if head.startswith("skipped:")
            else "red"
        )
        text = Text(line.lstrip() if wrap else line, style=style)
        out.append(Padding(text, (0, 0, 0, 4)) if wrap else text)
    return out


def print_runs(
    records: Sequence[RunRecord], total: int | None = None, *, stream: TextIO | None = None
) -> None:
    """Runs, newest first, grouped by pipeline run, failures with their errors; then
    "showing N of M"."""
    con = console(stream)
    widths = _widths(records, min(con.width, 120))
    con.print(_table(True, widths))
    table = _table(False, widths)
    group: tuple[str, str | None] | None = None
    pending = False
    for rec in records:
        key = (rec.pipeline, rec.pipeline_run_id)
        if key != group:
            if pending:
                con.print(table)
                table = _table(False, widths)
                pending = False
            con.print(_group_line(rec))
            group = key
        _row(table, rec)
        pending = True
        lines = _failure_text(rec, wrap=con.is_terminal)
        if lines:
            con.print(table)
            table = _table(False, widths)
            pending = False
            for line in lines:
                con.print(line)
    if pending:
        con.print(table)
    shown = len(records)
    if total is not None and total > shown:
        con.print(f"showing {shown:,} of {total:,} runs (--limit N shows more)", style="dim")
    else:
        con.print(f"{shown:,} run{'s' if shown != 1 else ''}", style="dim")


# -- one run ------------------------------------------------------------------------------------


def trace_link(template: str | None, rec: RunRecord) -> str | None:
    """``template`` with ``{trace_id}``, ``{span_id}``, ``{run_id}`` filled in (plain
    substitution: other braces, as in a Grafana explore URL, are kept)."""
    if not template or not rec.trace_id:
        return None
    return (
        template.replace("{trace_id}", rec.trace_id)
        .replace("{span_id}", rec.span_id)
        .replace("{run_id}", rec.run_id)
    )


def detail_fields(rec: RunRecord, trace_url_template: str | None = None) -> list[tuple[str, str]]:
    """``(label, value)`` for everything the catalog has of one run."""
    fields = [
        ("run id", rec.run_id),
        ("status", rec.status.value),
        ("pipeline", rec.pipeline),
        ("pipeline run", rec.pipeline_run_id or "-"),
        ("node", rec.node),
        ("project", rec.project),
        ("environment", rec.environment),
        (
            "attempt",
            str(rec.attempt)
            + (
                f" ({rec.attempt - 1} retr{'y' if rec.attempt == 2 else 'ies'} before)"
                if rec.attempt > 1
                else ""
            ),
        ),
        ("started", f"{rec.started_at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"),
        ("ended", f"{rec.ended_at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC" if rec.ended_at else "-"),
        ("duration", human_ms(rec.duration_ms) or "-"),
        ("rows", rows_text(rec.rows_processed) or "-"),
        ("host", f"{rec.host} pid {rec.pid}"),
        *phase_fields(rec),
        ("trace id", rec.trace_id),
        ("span id", rec.span_id),
    ]
    if rec.skip_reason:
        fields.insert(2, ("skipped", rec.skip_reason))
    link = trace_link(trace_url_template, rec)
    if link:
        fields.append(("trace", link))
    return [(label, one_line(value)) for label, value in fields]


def phase_fields(rec: RunRecord) -> list[tuple[str, str]]:
    """``--details`` lines of a run's writes and checkpoint (none for a run without)."""
    fields = []
    for write in rec.writes:
        version = write.get(_K.version)
        fields.append(
            (
                "write",
                f"{write.get('target')}  rows {rows_text(write.get('rows')) or '?'}"
                + ("" if version is None else f"  version {version}")
                + ("  (awaits checkpoint)" if write.get(_K.awaits_checkpoint) else ""),
            )
        )
    checkpoint = rec.checkpoint
    if checkpoint is not None:
        fields.append(
            (
                "checkpoint",
                f"{checkpoint.get('key')} = {checkpoint.get('value')}"
                f"  (was {checkpoint.get('previous')})",
            )
        )
    elif rec.writes:
        fields.append(("checkpoint", "none committed"))
    return fields


#: Width of the label column of ``--details``.
_LABEL: Final = 12


def print_details(
    rec: RunRecord, trace_url_template: str | None = None, *, stream: TextIO | None = None
) -> None:
    from rich.table import Table
    from rich.text import Text

    con = console(stream)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    link = None
    for label, value in detail_fields(rec, trace_url_template):
        if label == "trace":
            link = value
            continue
        style = STATUS_STYLES.get(rec.status, "") if label == "status" else ""
        grid.add_row(label, Text(value, style=style))
    con.print(grid)
    if link:
        # Whole, never folded: a link cut in two is no longer one.
        shown = Text(f"{'trace':<{_LABEL}}  ", style="bold")
        shown.append(link)
        con.print(shown, soft_wrap=True)
    if rec.error_type:
        con.print()
        label = "crash cause" if rec.status is RunStatus.CRASHED else "error"
        con.print(Text(f"{label}: {one_line(rec.error_type)}", style="bold red"))
        for line in terminal_safe(redact(rec.error_message or "")).splitlines():
            con.print(Text(f"  {line}"))
    if rec.error_stack:
        # Stored redacted and bounded (max_error_stack_length); shown as it is, every line.
        con.print()
        con.print(Text("stack trace:", style="bold"))
        for line in terminal_safe(redact(rec.error_stack)).splitlines():
            con.print(Text(f"  {line}"))
    if rec.suggestions:
        con.print()
        con.print(Text("suggestions:", style="bold yellow"))
        for text in rec.suggestions:
            con.print(Text(f"  - {one_line(text)}"))
    if rec.attributes:
        con.print()
        con.print(Text("attributes:", style="bold"))
        for key in sorted(rec.attributes):
            con.print(Text(f"  {one_line(key)} = {one_line(_attr_text(rec.attributes[key]))}"))


def _attr_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), ensure_ascii=False, default=str)
    return str(value)


# -- JSON ---------------------------------------------------------------------------------------


def run_json(rec: RunRecord) -> dict[str, Any]:
    """One run under the catalog's column names (the names SQL users know), times in ISO
    8601 UTC, suggestions a list and attributes an object."""
    from odibi_observe.catalog import schema as c

    def iso(ns: int | None) -> str | None:
        return None if ns is None else ns_to_datetime(ns).isoformat().replace("+00:00", "Z")

    return {
        c.RUN_ID: rec.run_id,
        c.PROJECT: rec.project,
        c.PIPELINE: rec.pipeline,
        c.PIPELINE_RUN_ID: rec.pipeline_run_id,
        c.NODE: rec.node,
        c.ENVIRONMENT: rec.environment,
        c.STATUS: rec.status.value,
        c.ATTEMPT: rec.attempt,
        c.STARTED_AT: iso(rec.started_ns),
        c.ENDED_AT: iso(rec.ended_ns),
        c.DURATION_MS: rec.duration_ms,
        c.ROWS: rec.rows_processed,
        c.ERROR_TYPE: rec.error_type,
        c.ERROR_MESSAGE: rec.error_message,
        c.ERROR_STACK: rec.error_stack,
        c.SUGGESTIONS_JSON.removesuffix("_json"): list(rec.suggestions),
        "attributes": dict(rec.attributes),
        c.TRACE_ID: rec.trace_id,
        c.SPAN_ID: rec.span_id,
        c.PARENT_SPAN_ID: rec.parent_span_id,
        c.HOST: rec.host,
        c.PID: rec.pid,
        c.HEARTBEAT_AT: iso(rec.heartbeat_ns),
        c.SOURCE: rec.source.value,
        # As the catalog's JSON columns hold them (times in ISO 8601 UTC).
        c.WRITES_JSON.removesuffix("_json"): json.loads(c.phases_json(rec.writes)),
        c.CHECKPOINT_JSON.removesuffix("_json"): None
        if rec.checkpoint is None
        else json.loads(c.phases_json(rec.checkpoint)),
        UNCOMMITTED_WRITE: rec.uncommitted_write,
        c.SKIP_REASON: rec.skip_reason,
    }


def json_lines(records: Iterable[RunRecord]) -> Iterable[str]:
    for rec in records:
        yield json.dumps(run_json(rec), ensure_ascii=False, default=str, sort_keys=False)
