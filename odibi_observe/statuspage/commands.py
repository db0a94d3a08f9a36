"""``odibi-observe report``: the status page, written from the catalog alone.

Exit codes, as ``reconcile`` and ``health``: 0 the page was written and no run failed in the
window; 1 the page was written and shows failed or crashed runs; 2 bad configuration, the
catalog (or every ``--traces`` source) could not be read, or the page could not be written.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from odibi_observe._cliargs import (
    CATALOG_ENV,
    check_window,
    duration_arg,
    fail,
    first_line,
    log_level_arg,
    open_catalog,
    out_arg,
    traces_arg,
    window_args,
    window_bounds,
)
from odibi_observe.config import hide_password
from odibi_observe.conventions import (
    HEALTH_FINDINGS_TABLE,
    RECONCILIATION_TABLE,
    STATUS_PAGE_FILE,
)

HELP = "a self-contained HTML status page from the catalog (no Grafana)"

DESCRIPTION = f"""\
Write {STATUS_PAGE_FILE}: one self-contained HTML page (no script, nothing fetched) with the
panels of the Grafana overview dashboard, read from the run catalog alone: runs by status over
time, success rate, slowest nodes, recent failures with their suggestions, running now,
crashed runs, completeness from the last reconcile ({RECONCILIATION_TABLE}) and open health
findings ({HEALTH_FINDINGS_TABLE}) where the catalog has those tables. Reads the catalog only.
"""

EPILOG = """\
window: runs that STARTED in it. --last 24h (the default) is the 24 hours before now;
  --since/--until give it exactly. "Running now" lists every RUNNING row, whenever it started.

completeness: the last reconcile recorded in the catalog; with --traces SOURCE (otlp-json:PATH,
  ledger:URL or tempo:URL, repeatable) the window is reconciled now instead (read-only:
  nothing is repaired or recorded).

exit status: 0 page written, no failed run in the window; 1 page written, failed or crashed
runs in the window; 2 bad configuration, unreadable catalog or unwritable --out.

examples:
    odibi-observe report --catalog sqlite:///catalog.db --out status/
    odibi-observe report --catalog postgresql://etl@db/catalog --last 7d \\
        --out /srv/www/status
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``report`` to the odibi-observe parser."""
    parser = sub.add_parser("report", help=HELP, description=DESCRIPTION, epilog=EPILOG)
    sources = parser.add_argument_group("sources")
    sources.add_argument(
        "--catalog",
        metavar="URL",
        default=os.environ.get(CATALOG_ENV),
        help="SQLAlchemy URL of meta_runs, or a path to a SQLite file (never created) "
        f"(default: ${CATALOG_ENV})",
    )
    traces_arg(
        sources,
        "reconcile the window against this trace source now (repeatable); without it "
        "completeness is the last recorded reconcile",
    )

    window_args(
        parser.add_argument_group("window"),
        since="window start, ISO 8601 (2024-05-01 or 2024-05-01T06:00:00Z)",
        until="window end, ISO 8601 (default: now)",
        last="the window is the last DURATION (30m, 24h, 7d; default 24h)",
        last_type=duration_arg,
    )

    output = parser.add_argument_group("output")
    out_arg(output, "status-report", f"directory for {STATUS_PAGE_FILE}")
    output.add_argument("--quiet", action="store_true", help="no summary on the terminal")
    log_level_arg(parser)
    parser.set_defaults(handler=run, subparser=parser)


def run(args: argparse.Namespace) -> int:
    """The ``report`` command; returns the exit status."""
    parser: argparse.ArgumentParser = args.subparser
    if not args.catalog:
        parser.error(f"--catalog is required (or set {CATALOG_ENV})")
    check_window(args, parser)
    # Not rounded: a run that started within this second belongs to the window.
    now = datetime.now(timezone.utc)
    since, until = window_bounds(args, now)
    if until <= since:
        parser.error("the window is empty: --until must be after --since")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a directory")
    return _write(args, since, until, now, out)


def _write(
    args: argparse.Namespace, since: datetime, until: datetime, now: datetime, out: Path
) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from odibi_observe.catalog.readonly import catalog_url
    from odibi_observe.statuspage.html import render_html
    from odibi_observe.statuspage.model import StatusPageError, collect, live_completeness

    url = catalog_url(args.catalog)
    shown = hide_password(url)
    engine = open_catalog(url)
    try:
        page = collect(engine, since, until, catalog=shown, now=now)
    except StatusPageError as exc:
        return fail(f"cannot read catalog {shown}: {exc}")
    except SQLAlchemyError as exc:
        return fail(f"cannot read catalog {shown}: {type(exc).__name__}: {first_line(exc)}")
    finally:
        engine.dispose()
    if args.traces:
        result = _reconcile_now(url, args.traces, since, until, now)
        if isinstance(result, str):
            return fail(result)
        page.completeness = live_completeness(result)
    path = out / STATUS_PAGE_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(page), encoding="utf-8")
    except OSError as exc:
        return fail(f"cannot write {path}: {exc.strerror or exc}")
    if not args.quiet:
        from odibi_observe._termfit import fit

        print(fit(_summary(page, path), sys.stdout))
    return 1 if page.failures_total else 0


def _reconcile_now(
    url: str, traces: list[str], since: datetime, until: datetime, now: datetime
) -> Any:
    """The window reconciled against ``traces`` (nothing repaired, nothing recorded), or the
    line to print when it cannot be."""
    from odibi_observe.reconcile.catalog_sources import open_catalog_source
    from odibi_observe.reconcile.engine import ReconcileError, ReconcileOptions, reconcile
    from odibi_observe.reconcile.model import Window
    from odibi_observe.reconcile.sources import SourceError, open_trace_source

    window = Window.between(since, until, grace=timedelta(0), now=now)
    opened = []
    try:
        catalog = open_catalog_source(url)
    except SourceError as exc:
        return str(exc)
    try:
        for spec in traces:
            opened.append(open_trace_source(spec))
        with reconcile(catalog, opened, window, ReconcileOptions()) as result:
            return result
    except SourceError as exc:
        return str(exc)
    except ReconcileError as exc:
        return f"nothing to reconcile: {exc}"
    finally:
        catalog.close()
        for source in opened:
            source.close()


def _summary(page: Any, path: Path) -> str:
    rate = page.success_rate
    comp = page.completeness
    lines = [
        f"status of runs {page.since:%Y-%m-%d %H:%M:%S} .. {page.until:%Y-%m-%d %H:%M:%S} UTC",
        f"catalog        {page.catalog}",
        f"runs           {page.totals.total():,}, success rate "
        f"{'—' if rate is None else f'{rate * 100:.1f}%'}",
        f"failed         {page.failures_total:,} ({page.crashed_total:,} crashed)",
        f"running now    {page.running_total:,}",
        "completeness   "
        + (
            "— (no reconcile recorded)"
            if comp is None or comp.ratio is None
            else f"{comp.ratio * 100:.2f}%"
            + (" (reconciled now)" if comp.live else " (last reconcile)")
        ),
        "open findings  "
        + ("— (no findings table)" if page.findings is None else f"{page.findings_total:,}"),
        f"wrote          {path}",
    ]
    return "\n".join(lines)
