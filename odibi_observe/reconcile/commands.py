"""``odibi-observe reconcile``: the command line of :mod:`odibi_observe.reconcile`.

Exit codes: 0 clean (no discrepancy, no read error); 1 the reconciliation ran and found
discrepancies or input it could not read (see the report); 2 bad configuration, or nothing
could be read (the catalog, or every trace source).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from odibi_observe._cliargs import (
    CATALOG_ENV,
    DEFAULT_LAST,
    catalog_arg,
    check_report_outputs,
    check_window,
    duration_arg,
    fail,
    json_arg,
    log_level_arg,
    metrics_textfile_arg,
    percent_arg,
    print_error,
    print_notes,
    report_args,
    resolve_catalog,
    seconds_arg,
    traces_arg,
    window_args,
    write_reports,
)
from odibi_observe._redact import safe_text
from odibi_observe.config import ConfigurationError, hide_password
from odibi_observe.conventions import DISCREPANCY_KINDS, TEMPO_DEFAULT_QUERY

if TYPE_CHECKING:
    from odibi_observe.reconcile.model import Window


HELP = "compare the catalog with the traces; report and repair differences"

DESCRIPTION = """\
Compare the run catalog (meta_runs) with the traces, run by run, over a time window, and
report every run the two do not record identically: missing on one side, different status,
rows or duration, duplicated, or left RUNNING by a process that died. Writes report.json,
report.md and report.html, records the result in meta_reconciliation (SQL catalogs that have
it), and with --repair fixes what one side evidently knows better. Without --repair nothing in
the catalog changes.
"""

EPILOG = f"""\
catalog (--catalog, or ${CATALOG_ENV}):
  sqlite:///catalog.db      meta_runs in any SQLAlchemy database
  postgresql://user@host/db
  catalog.db                a SQLite file (never created)
  odibi-delta:/data/proj/_odibi_system/meta_runs
                            Odibi's own Delta table, as it is

traces (--traces, repeat for several; the same span in two sources counts once):
  otlp-json:PATH    Collector 'file' exporter output: a file, a directory
                    (rotated and .gz files included) or a glob
  ledger:URL        the sidecar's span ledger table in a SQLAlchemy database
  tempo:URL         Grafana Tempo (TraceQL search per time slice, then trace
                    by id)
  openlineage-file:PATH
                    the OpenLineage file transport's events (START and one
                    terminal event per run); lineage is reconciled on its
                    own, not in one run with span sources

window: runs that STARTED in it. --last 24h (the default) covers the 24 hours
  that end --grace ago, so nightly runs cover consecutive stretches;
  --since/--until give it exactly (each an ISO time or a duration ago). Runs
  that started within --grace of now are left for the next run (in flight, or
  spans still on their way).

{
    textwrap.fill(
        "discrepancy kinds: " + ", ".join(DISCREPANCY_KINDS), width=78, subsequent_indent="  "
    )
}
  (docs/reconciliation.md: what each means and what to do)

repair (--repair; without it the report says what it WOULD do):
  missing_in_catalog -> catalog row from the span; missing_in_traces -> span
  re-emitted with the stored ids and times; stale_running -> CRASHED row and
  back-dated error span; status, rows or duration mismatch -> the row takes the
  span's values. Duplicates are reported only. Spans go to --repair-traces,
  else where OTEL_EXPORTER_OTLP_ENDPOINT points.

exit status: 0 clean, 1 discrepancies or unreadable input found, 2 bad
configuration or nothing could be read.

examples:
  odibi-observe reconcile --catalog catalog.db --traces otlp-json:/srv/otel
  odibi-observe reconcile --catalog postgresql://etl@db/catalog \\
      --traces tempo:http://tempo:3200 --last 24h \\
      --out /srv/reports/$(date +%F) \\
      --metrics-textfile /var/lib/node_exporter/textfile/reconcile.prom \\
      --trace-url-template 'https://grafana/explore?traceId={{trace_id}}'
  odibi-observe reconcile --catalog catalog.db --traces otlp-json:traces/ \\
      --repair --repair-traces otlp-json:traces/repaired.jsonl
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``reconcile`` to the odibi-observe parser."""
    parser = sub.add_parser("reconcile", help=HELP, description=DESCRIPTION, epilog=EPILOG)
    sources = parser.add_argument_group("sources")
    catalog_arg(
        sources,
        help="SQLAlchemy URL of meta_runs, a path to a SQLite file (never created), or "
        f"odibi-delta:PATH (default: ${CATALOG_ENV})",
    )
    traces_arg(
        sources, "otlp-json:PATH, ledger:URL, tempo:URL or openlineage-file:PATH (repeatable)"
    )
    sources.add_argument(
        "--spool-dir",
        metavar="DIR",
        action="append",
        default=[],
        dest="spool_dirs",
        help="a sidecar's spool directory: damage its readers found there (frames lost, "
        "segments missing, the runs affected) within the window is reported (repeatable)",
    )

    window = parser.add_argument_group("window")
    window_args(
        window,
        last="the window is the last DURATION before now minus the grace "
        "(30m, 24h, 7d, or an ISO time to start at; default 24h)",
    )
    window.add_argument(
        "--grace",
        metavar="DURATION",
        type=duration_arg,
        default=timedelta(minutes=15),
        help="leave runs that started this recently for the next run (default: 15m)",
    )

    judge = parser.add_argument_group("judging")
    judge.add_argument(
        "--crash-after",
        metavar="DURATION",
        type=duration_arg,
        default=timedelta(minutes=15),
        help="a RUNNING row with no sign of life (start, heartbeat) for this "
        "long and no span is stale_running (default: 15m)",
    )
    judge.add_argument(
        "--duration-tolerance",
        metavar="PERCENT",
        type=percent_arg,
        default=0.01,
        help="durations agree within this share (default: 1%%) "
        "or --duration-tolerance-ms, whichever is larger",
    )
    judge.add_argument(
        "--duration-tolerance-ms",
        metavar="MS",
        type=float,
        default=5.0,
        help="durations agree within this many ms (default: 5)",
    )

    output = parser.add_argument_group("output")
    report_args(output, stem="report", out="reconcile-report")
    output.add_argument(
        "--trace-url-template",
        metavar="URL",
        help="link each affected run to its trace, e.g. "
        "'http://grafana/explore?traceId={trace_id}' ({trace_id}, "
        "{span_id} and {run_id} are filled in)",
    )
    metrics_textfile_arg(output, "odibi_reconcile_*")
    output.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the report in meta_reconciliation (recorded by "
        "default when the catalog is SQL and has that table; reconcile "
        "never creates it: 'odibi-observe catalog upgrade' does)",
    )
    output.add_argument(
        "--quiet", action="store_true", help="no progress bar and no summary on the terminal"
    )
    json_arg(output, "the summary (the report's header and the files written)")

    repair = parser.add_argument_group("repair")
    repair.add_argument(
        "--repair",
        action="store_true",
        help="apply the repairs (default: only report what they would be)",
    )
    repair.add_argument(
        "--repair-traces",
        metavar="DEST",
        help="where re-emitted spans go: otlp-json:PATH or an OTLP http(s) "
        "endpoint (default: OTEL_EXPORTER_OTLP_ENDPOINT / "
        "ODIBI_OBSERVE_TRACES_FILE)",
    )

    tempo = parser.add_argument_group("Tempo source")
    tempo.add_argument(
        "--tempo-limit",
        type=int,
        default=500,
        metavar="N",
        help="traces per search (a full answer splits the slice; default: 500)",
    )
    tempo.add_argument(
        "--tempo-slice",
        type=duration_arg,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="initial search slice (default: 1h)",
    )
    tempo.add_argument(
        "--tempo-timeout",
        type=seconds_arg,
        default=30.0,
        metavar="DURATION",
        help="per request (30s, 2m; default: 30s)",
    )
    tempo.add_argument(
        "--tempo-header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra request header, e.g. X-Scope-OrgID=team-a (repeatable)",
    )
    tempo.add_argument(
        "--tempo-query",
        metavar="TRACEQL",
        default=TEMPO_DEFAULT_QUERY,
        help="the search (default: %(default)s)",
    )

    resources = parser.add_argument_group("resources")
    resources.add_argument(
        "--spill-dir",
        metavar="DIR",
        help="directory for temporary sort files (default: system temp dir)",
    )
    resources.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="processes that read trace files at once (default: one per core, "
        "at most 2; 1 reads everything in this process)",
    )
    log_level_arg(parser)
    parser.set_defaults(handler=run, subparser=parser)


def _header_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--tempo-header {text!r}: expected NAME=VALUE")
    return name.strip(), value.strip()


def run(args: argparse.Namespace) -> int:
    """The ``reconcile`` command; returns the exit status."""
    from odibi_observe.catalog.readonly import CatalogUnreadable, readable_catalog_url
    from odibi_observe.reconcile.catalog_sources import open_catalog_source
    from odibi_observe.reconcile.engine import ReconcileError, ReconcileOptions, reconcile
    from odibi_observe.reconcile.model import Window
    from odibi_observe.reconcile.progress import Progress
    from odibi_observe.reconcile.repair import RepairError, repair
    from odibi_observe.reconcile.sources import SourceError, SourceOptions, open_trace_source

    parser: argparse.ArgumentParser = args.subparser
    args.catalog = resolve_catalog(args, parser)
    if not args.traces:
        parser.error(
            "--traces is required (otlp-json:PATH, ledger:URL, tempo:URL or openlineage-file:PATH)"
        )
    check_window(args, parser)
    try:
        if args.since is not None:
            window = Window.between(
                args.since, args.until or datetime.now(timezone.utc), grace=args.grace
            )
        else:
            window = Window.last(args.last or DEFAULT_LAST, grace=args.grace)
        headers = tuple(_header_arg(h) for h in args.tempo_header)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        check_report_outputs(args)
    except ConfigurationError as exc:
        return fail(str(exc))

    progress = Progress(enabled=False if args.quiet or args.json else None)
    options = ReconcileOptions(
        crash_after=args.crash_after,
        duration_tolerance_ratio=args.duration_tolerance,
        duration_tolerance_ms=args.duration_tolerance_ms,
        spill_dir=args.spill_dir,
        progress=progress,
        workers=max(0, args.workers),
    )
    source_options = SourceOptions(
        tempo_limit=args.tempo_limit,
        tempo_timeout=args.tempo_timeout,
        tempo_slice_seconds=max(1, int(args.tempo_slice.total_seconds())),
        tempo_query=args.tempo_query,
        tempo_headers=headers,
    )
    try:
        # Checked first, so a mistyped SQLite path is refused, not created (a bare path means
        # sqlite:///PATH); odibi-delta: specs are returned unchanged.
        spec = readable_catalog_url(args.catalog)
    except CatalogUnreadable as exc:
        print_error(str(exc))
        return 2
    try:
        catalog = open_catalog_source(spec, spill_dir=args.spill_dir)
        traces = [open_trace_source(spec, source_options) for spec in args.traces]
    except SourceError as exc:
        return fail(str(exc))
    try:
        try:
            result = reconcile(catalog, traces, window, options)
        except ReconcileError as exc:
            return fail(f"nothing to reconcile: {exc}")
        finally:
            progress.finish()
        with result:
            result.notes.extend(spool_damage_notes(args.spool_dirs, window))
            try:
                repair(result, catalog, apply=args.repair, repair_traces=args.repair_traces)
            except RepairError as exc:
                return fail(str(exc))
            written = _write_reports(result, args)
            warnings, notes = _record(result, catalog.sql_url(), args)
            if args.json:
                print(_json_summary(result, written))
            elif not args.quiet:
                from odibi_observe._termfit import fit
                from odibi_observe.reconcile.report import cli_summary

                print(fit(cli_summary(result, written), sys.stdout))
            print_notes(notes, warnings)
            return 0 if result.clean else 1
    finally:
        catalog.close()
        for source in traces:
            source.close()


def spool_damage_notes(directories: Sequence[str], window: Window) -> list[str]:
    """One note per damage finding logged in each spool directory within ``window``.

    The sidecar's readers log what they found lost (``damage.jsonl``, see
    :func:`odibi_observe.spool.read_damage_log`); the runs named there are the ones whose
    terminal event may be gone — the sweeper closes them as CRASHED — so the report says why.
    """
    from odibi_observe.spool import read_damage_log

    notes = []
    for directory in directories:
        for entry in read_damage_log(directory):
            try:
                at = datetime.fromisoformat(str(entry.get("time", "")).replace("Z", "+00:00"))
            except ValueError:
                continue
            if not window.since <= at <= window.until:
                continue
            affected = entry.get("runs_affected")
            runs = [str(r) for r in affected] if isinstance(affected, list) else []
            lost = [
                f"{n} {label}"
                for label, n in (
                    ("frame(s) lost", entry.get("frames_lost")),
                    ("segment(s) missing", entry.get("missing_segments")),
                )
                if n
            ]
            named = (
                f"; runs affected: {', '.join(runs[:10])}"
                f"{f' and {len(runs) - 10} more' if len(runs) > 10 else ''}"
                if runs
                else "; no run could be named"
            )
            notes.append(
                safe_text(
                    f"spool damage in {directory} at {entry.get('time')}: {entry.get('what')}"
                    f"{' (' + ', '.join(lost) + ')' if lost else ''}{named}",
                    2_000,
                )
            )
    return notes


def _record(result: Any, url: str | None, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Record the report in ``meta_reconciliation`` where those tables exist; returns
    ``(warnings, notes)`` for the terminal. Never creates them: see :func:`.report.record`."""
    if not url or args.no_record:
        return [], []
    from odibi_observe.reconcile.report import record

    try:
        if record(result, url):
            return [], []
    except Exception as exc:  # recording is a courtesy; the reports are written
        return [
            f"not recorded in meta_reconciliation: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ], []
    return [], [
        f"not recorded: the catalog has no meta_reconciliation tables, and reconcile "
        f"changes nothing in it{'' if args.repair else ' without --repair'}. To record "
        f"reports, create them once with: odibi-observe catalog upgrade --catalog "
        f"{_quoted(hide_password(url))} (this also brings meta_runs to odibi-observe's "
        "schema)"
    ]


def _quoted(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _write_reports(result: Any, args: argparse.Namespace) -> list[str]:
    from odibi_observe.reconcile.html import render_html
    from odibi_observe.reconcile.report import render_markdown, write_json, write_metrics

    template = args.trace_url_template
    return write_reports(
        args,
        "report",
        {
            "json": lambda path: write_json(result, path, trace_url_template=template),
            "md": lambda path: path.write_text(
                render_markdown(result, trace_url_template=template), encoding="utf-8"
            ),
            "html": lambda path: path.write_text(
                render_html(result, trace_url_template=template), encoding="utf-8"
            ),
        },
        lambda path: write_metrics(result, path),
    )


def _json_summary(result: Any, written: Sequence[str]) -> str:
    """The report's header (what ``report.json`` starts with) and the files written."""
    import json

    from odibi_observe.reconcile.report import header

    return json.dumps(
        {**header(result), "clean": bool(result.clean), "written": list(written)},
        ensure_ascii=False,
        default=str,
    )
