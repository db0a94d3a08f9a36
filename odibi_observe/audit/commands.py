"""``odibi-observe audit``: the command line of :mod:`odibi_observe.audit`.

Exit codes: 0 clean; 1 the audit ran and found something (see the report); 2 bad usage, a
project that cannot be read, or input the audit could not read (the reports are still
written, and say what) — an audit that could not read everything is not a clean one.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odibi_observe import _cliargs as flags
from odibi_observe.config import ConfigurationError, hide_password
from odibi_observe.conventions import AUDIT_FINDING_KINDS, AUDIT_KEYS, AUDIT_REPORT_STEM

if TYPE_CHECKING:
    from odibi_observe.audit.model import AuditResult

DESCRIPTION = """\
Audit an Odibi project's incremental nodes from Odibi's own records, without odibi-observe's
catalog: for every node that reads with a stateful high-water mark (HWM) into a Delta table,
compare the target's Delta history with the HWM updates in Odibi's meta_state and the run rows
in Odibi's meta_runs. Finds commits no run claims (a run killed after its write), commits the
HWM was not saved after before the next one (the next run re-reads the same window and appends
duplicates) and HWMs that went backwards. Reads everything, changes nothing. Writes audit.json,
audit.md and audit.html.
"""

EPILOG = f"""\
{
    textwrap.fill(
        "finding kinds: " + ", ".join(AUDIT_FINDING_KINDS), width=78, subsequent_indent="  "
    )
}
  unclaimed_commit  a Delta version of the target that no meta_runs row
                    names: the run ended before its pipeline logged (SIGKILL,
                    OOM kill) or the write came from outside Odibi
  hwm_not_saved     rows written, HWM not saved before the node's next commit:
                    the next run appends the same rows again
  hwm_regressed     a saved HWM older than the one before it
  (docs/audit.md: how each is found and what to do)

what is read: the project YAML (Odibi's own loader, --env applies), each
  stateful node's Delta target (history: version, time, operation, rows),
  meta_state's Delta history (every saved HWM value) and meta_runs, both in the
  project's system catalog. Only local paths are read.

--catalog URL (optional): odibi-observe's catalog, read-only; each finding then
  says which run it recorded for the commit (e.g. CRASHED), or that it has none.

window: all of the history by default; --since/--until/--last keep commits
  made then. Commits newer than --grace (15m) may belong to a run still going
  and are counted as in flight, not judged: give --grace 0s right after a run.

exit status: 0 clean, 1 findings, 2 bad usage or input that could not be read
(a missing project, an unreadable Delta table, a missing meta_state).

examples:
  odibi-observe audit odibi.yaml
  odibi-observe audit /srv/shop/odibi.yaml --env prod --last 7d \\
      --catalog postgresql://etl@db/catalog --out /srv/audit/$(date +%F)
  odibi-observe audit odibi.yaml --grace 0s --format md --out audit
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``audit`` to the odibi-observe parser."""
    parser = sub.add_parser(
        "audit",
        help="check an Odibi project's Delta commits against its HWM state and run log "
        "(unclaimed commits, HWMs not saved, HWM regressions)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument(
        "project", metavar="PROJECT", help="the project's YAML (odibi.yaml), or its directory"
    )
    sources = parser.add_argument_group("sources")
    sources.add_argument(
        "--env", metavar="NAME", help="the Odibi environment whose overrides apply (odibi --env)"
    )
    flags.catalog_arg(
        sources,
        read_only=True,
        required=False,
        help="odibi-observe's catalog, to say which run it recorded for each finding: a "
        "SQLAlchemy URL or a SQLite file (read-only, never created; optional, and not taken "
        f"from ${flags.CATALOG_ENV}: the audit needs no catalog)",
    )
    window = parser.add_argument_group("window")
    flags.window_args(
        window,
        since="judge commits made since TIME: ISO 8601 or a duration ago (7d)",
        until="judge commits made before TIME (default: now)",
        last="judge the commits of the last DURATION (default: the whole history)",
    )
    window.add_argument(
        "--grace",
        metavar="DURATION",
        type=flags.duration_arg,
        default=timedelta(minutes=15),
        help="commits this recent may be a run still going: counted, not judged (default: 15m)",
    )
    output = parser.add_argument_group("output")
    flags.report_args(output, stem=AUDIT_REPORT_STEM, out="audit-report")
    output.add_argument("--quiet", action="store_true", help="no summary on the terminal")
    flags.json_arg(output, "the result (as audit.json has it) and the files written")
    flags.log_level_arg(parser)
    # The audit writes no gauges (the reports' helpers ask whether it does).
    parser.set_defaults(handler=run, subparser=parser, metrics_textfile=None)


def run(args: argparse.Namespace) -> int:
    """The ``audit`` command; returns the exit status."""
    from odibi_observe.audit.detect import audit
    from odibi_observe.audit.model import AuditInputError, AuditOptions
    from odibi_observe.audit.project import load_project

    parser: argparse.ArgumentParser = args.subparser
    flags.check_window(args, parser)
    since = args.since
    if args.last is not None:
        since, _ = flags.window_bounds(args, datetime.now(timezone.utc))
    options = AuditOptions(since=since, until=args.until, grace=args.grace)
    try:
        flags.check_report_outputs(args)
        project = load_project(args.project, env=args.env)
        engine = flags.open_catalog(args.catalog) if args.catalog else None
    except (ConfigurationError, AuditInputError) as exc:
        return flags.fail(str(exc))
    try:
        result = audit(project, options)
        if engine is not None:
            from odibi_observe.audit.observed import annotate

            result.catalog = hide_password(args.catalog)
            annotate(result, engine)
    except Exception as exc:  # never a traceback: the line says what failed
        return flags.fail(f"the audit failed: {type(exc).__name__}: {exc}")
    finally:
        if engine is not None:
            engine.dispose()
    try:
        written = _write_reports(result, args)
    except ConfigurationError as exc:
        return flags.fail(str(exc))
    _print(result, written, args)
    for error in result.errors:
        flags.print_error(error[AUDIT_KEYS.message])
    return result.exit_status


def _write_reports(result: AuditResult, args: argparse.Namespace) -> list[str]:
    from odibi_observe.audit.html import render_html
    from odibi_observe.audit.report import render_json, render_markdown

    def writer(render: Callable[[AuditResult], str]) -> Callable[[Path], object]:
        return lambda path: path.write_text(render(result), encoding="utf-8")

    return flags.write_reports(
        args,
        AUDIT_REPORT_STEM,
        {"json": writer(render_json), "md": writer(render_markdown), "html": writer(render_html)},
        lambda path: None,
    )


def _print(result: AuditResult, written: list[str], args: argparse.Namespace) -> None:
    if args.json:
        import json

        from odibi_observe.audit.report import to_dict

        print(
            json.dumps(
                {**to_dict(result), AUDIT_KEYS.written: written}, ensure_ascii=False, default=str
            )
        )
    elif not args.quiet:
        from odibi_observe._termfit import fit
        from odibi_observe.audit.report import cli_summary

        print(fit(cli_summary(result, written), sys.stdout))
