"""``odibi-observe health``: the command line of :mod:`odibi_observe.health`.

Exit codes, as ``reconcile``: 0 nothing found; 1 the pass ran and found problems (see the
report); 2 bad configuration, or the catalog could not be read.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from odibi_observe._cliargs import (
    catalog_arg,
    check_out_dir,
    duration_arg,
    formats_arg,
    json_arg,
    log_level_arg,
    make_out_dir,
    percent_arg,
    print_error,
    resolve_catalog,
    span_arg,
    time_arg,
)
from odibi_observe.config import ConfigurationError, hide_password
from odibi_observe.conventions import HEALTH_FINDING_KINDS, HEALTH_FINDINGS_TABLE

DESCRIPTION = f"""\
Judge every node's recent runs against its own history in the run catalog (meta_runs): row
counts and durations far from normal (z-scores), nodes that returned 0 rows, nodes with no
success for longer than their cadence allows, failure streaks, nodes that succeed only after
retries, and peak memory trending toward the memory limit. Writes health.json, health.md and
health.html, and records findings in {HEALTH_FINDINGS_TABLE} (where that table exists),
open until a pass no longer sees them. Reads the catalog only.
"""

EPILOG = f"""\
window: the recent runs judged. --last 24h (the default) is the 24 hours
  before now; --since/--until give it exactly (each an ISO time or a duration
  ago). Each node's history (training) is the --training-days before the
  window (x7 with --seasonality day_of_week).

{
    textwrap.fill(
        "finding kinds: " + ", ".join(HEALTH_FINDING_KINDS), width=78, subsequent_indent="  "
    )
}
  (docs/health.md: the method and defaults of each, and what to do)

config (--config FILE, TOML): per-node freshness SLAs and kinds to skip,
first match wins:

  [[node]]
  pipeline = "daily_sales"     # glob
  node = "ingest_*"            # glob
  freshness_sla = "26h"        # or "off"
  skip = ["duration_anomaly"]

exit status: 0 nothing found, 1 findings, 2 bad configuration or unreadable
catalog.

examples:
  odibi-observe health --catalog catalog.db
  odibi-observe health --catalog postgresql://etl@db/catalog \\
      --out /srv/health/$(date +%F) --config health.toml \\
      --metrics-textfile /var/lib/node_exporter/textfile/health.prom
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``health`` to the odibi-observe parser."""
    parser = sub.add_parser(
        "health",
        help="volume, duration, freshness, failure-streak, flakiness and memory "
        "findings from the run history",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    sources = parser.add_argument_group("sources")
    catalog_arg(sources, read_only=True)
    sources.add_argument(
        "--config", metavar="FILE", help="TOML file of per-node freshness SLAs and skipped kinds"
    )

    window = parser.add_argument_group("window")
    window.add_argument(
        "--since",
        metavar="TIME",
        type=time_arg,
        help="window start: ISO 8601 (2024-05-01 or 2024-05-01T06:00:00Z) or a duration ago (6h)",
    )
    window.add_argument(
        "--until",
        metavar="TIME",
        type=time_arg,
        help="window end, ISO 8601 or a duration ago (default: now)",
    )
    window.add_argument(
        "--last",
        metavar="DURATION",
        type=span_arg,
        help="the window is the last DURATION (30m, 24h, 7d, or an ISO time "
        "to start at; default 24h)",
    )

    judge = parser.add_argument_group("judging (docs/health.md: each method and its defaults)")
    judge.add_argument(
        "--sensitivity",
        type=float,
        default=3.0,
        metavar="Z",
        help="standard deviations from the mean that make an anomaly (default: 3)",
    )
    judge.add_argument(
        "--training-days",
        type=float,
        default=14.0,
        metavar="DAYS",
        help="history each node is judged against (default: 14)",
    )
    judge.add_argument(
        "--min-points",
        type=int,
        default=7,
        metavar="N",
        help="training runs a node needs before it is judged (default: 7)",
    )
    judge.add_argument(
        "--volume-direction",
        choices=("both", "spike", "drop"),
        default="both",
        help="which row-count changes count (default: both)",
    )
    judge.add_argument(
        "--duration-direction",
        choices=("both", "spike", "drop"),
        default="spike",
        help="which duration changes count (default: spike)",
    )
    judge.add_argument(
        "--min-change",
        type=percent_arg,
        default=0.10,
        metavar="PERCENT",
        help="ignore changes smaller than this share of the mean (default: 10%%)",
    )
    judge.add_argument(
        "--duration-min-ms",
        type=float,
        default=1000.0,
        metavar="MS",
        help="ignore duration changes smaller than this (default: 1000)",
    )
    judge.add_argument(
        "--seasonality",
        choices=("none", "day_of_week", "hour_of_day"),
        default="none",
        help="compare each run with the same weekday or hour only (default: none)",
    )
    judge.add_argument(
        "--freshness-factor",
        type=float,
        default=3.0,
        metavar="X",
        help="stale after X times the node's mean interval between successes (default: 3)",
    )
    judge.add_argument(
        "--freshness-min",
        type=duration_arg,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="never stale sooner than this (default: 1h)",
    )
    judge.add_argument(
        "--failure-streak",
        type=int,
        default=3,
        metavar="N",
        help="consecutive failed runs that make a streak (default: 3)",
    )
    judge.add_argument(
        "--flaky-min",
        type=int,
        default=2,
        metavar="N",
        help="retried successes that make a node flaky (default: 2)",
    )
    judge.add_argument(
        "--memory-runs",
        type=int,
        default=20,
        metavar="N",
        help="newest SUCCESS runs per node the peak-memory trend is fitted to (default: 20)",
    )
    judge.add_argument(
        "--memory-horizon",
        type=int,
        default=10,
        metavar="N",
        help="memory_growth when the trend reaches the threshold within N runs (default: 10)",
    )
    judge.add_argument(
        "--memory-threshold",
        type=percent_arg,
        default=0.90,
        metavar="PERCENT",
        help="share of the memory limit that counts as reached (default: 90%%)",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--format",
        default="json,md,html",
        type=formats_arg,
        metavar="FORMATS",
        help="reports to write, comma-separated: json, md (or markdown), html (default: all three)",
    )
    output.add_argument(
        "--out",
        metavar="DIR",
        default="health-report",
        help="directory for health.json, health.md, health.html (default: %(default)s)",
    )
    output.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help="write odibi_health_* gauges to this Prometheus text file "
        "(node_exporter's textfile collector)",
    )
    output.add_argument(
        "--no-record",
        action="store_true",
        help=f"do not record findings in {HEALTH_FINDINGS_TABLE} (recorded "
        "by default where the table exists; health never creates it: "
        "'odibi-observe catalog upgrade' does)",
    )
    output.add_argument(
        "--quiet", action="store_true", help="no progress and no summary on the terminal"
    )
    json_arg(output, "the result (as health.json has it) and the files written")
    log_level_arg(parser)
    parser.set_defaults(handler=run, subparser=parser)


def run(args: argparse.Namespace) -> int:
    """The ``health`` command; returns the exit status."""
    from odibi_observe.health.detect import HealthError, detect
    from odibi_observe.health.model import HealthOptions, load_rules
    from odibi_observe.reconcile.model import Window

    parser: argparse.ArgumentParser = args.subparser
    args.catalog = resolve_catalog(args, parser)
    if args.last is not None and (args.since is not None or args.until is not None):
        parser.error("give either --last or --since/--until, not both")
    if args.until is not None and args.since is None:
        parser.error("--until needs --since")
    try:
        # Whole seconds: the reports' times are read by people.
        now = datetime.now(timezone.utc).replace(microsecond=0)
        if args.since is not None:
            window = Window.between(args.since, args.until or now, grace=timedelta(0), now=now)
        else:
            window = Window.last(args.last or timedelta(hours=24), grace=timedelta(0), now=now)
        options = HealthOptions(
            sensitivity=args.sensitivity,
            training=timedelta(days=args.training_days),
            min_points=args.min_points,
            volume_direction=args.volume_direction,
            duration_direction=args.duration_direction,
            min_change=args.min_change,
            duration_min_ms=args.duration_min_ms,
            seasonality=args.seasonality,
            freshness_factor=args.freshness_factor,
            freshness_min=args.freshness_min,
            failure_streak=args.failure_streak,
            flaky_min=args.flaky_min,
            memory_runs=args.memory_runs,
            memory_horizon=args.memory_horizon,
            memory_threshold=args.memory_threshold,
            rules=load_rules(args.config) if args.config else (),
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        check_out_dir(args.out)
        if args.metrics_textfile:
            check_out_dir(Path(args.metrics_textfile).parent, "--metrics-textfile")
        engine = _open(args.catalog)
    except ConfigurationError as exc:
        return _fail(str(exc))
    try:
        try:
            from odibi_observe._progress import working

            with working("judging the run history", enabled=not (args.quiet or args.json)):
                result = detect(engine, window, options, catalog=hide_password(args.catalog))
        except HealthError as exc:
            return _fail(str(exc))
        warnings, notes = _record(engine, result, args)
        try:
            written = _write_reports(result, args)
            if args.metrics_textfile:
                from odibi_observe.health.report import write_metrics

                write_metrics(result, args.metrics_textfile)
                written.append(args.metrics_textfile)
        except OSError as exc:
            return _fail(f"cannot write the reports: {exc}")
        if args.json:
            import json

            from odibi_observe.health.report import to_dict

            print(
                json.dumps({**to_dict(result), "written": written}, ensure_ascii=False, default=str)
            )
        elif not args.quiet:
            from odibi_observe.health.report import cli_summary

            print(cli_summary(result, written))
        for note in notes:
            print(f"odibi-observe: note: {note}", file=sys.stderr)
        for warning in warnings:
            print(f"odibi-observe: warning: {warning}", file=sys.stderr)
        return 1 if result.findings else 0
    finally:
        engine.dispose()


def _open(url: str) -> Any:
    """The catalog's engine; a SQLite file that does not exist is an error, not created."""
    import sqlalchemy as sa

    from odibi_observe.catalog.store import create_catalog_engine

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigurationError(
            f"--catalog {hide_password(url)!r}: not a database URL (health reads SQL catalogs)"
        ) from None
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database
        and parsed.database != ":memory:"
        and not parsed.database.startswith("file:")
        and not Path(parsed.database).exists()
    ):
        raise ConfigurationError(
            f"catalog {hide_password(url)}: no such file "
            f"{parsed.database} (health never creates one)"
        )
    return create_catalog_engine(url)


def _record(engine: Any, result: Any, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Record the findings where the table exists; ``(warnings, notes)`` for the terminal."""
    if args.no_record:
        return [], []
    from odibi_observe.health.store import record

    try:
        if record(engine, result):
            return [], []
    except Exception as exc:  # recording is a courtesy; the reports are still written
        first = str(exc).splitlines()[0] if str(exc) else ""
        return [
            f"findings not recorded in {HEALTH_FINDINGS_TABLE}: {type(exc).__name__}: "
            f"{hide_password(first)}"
        ], []
    return [], [
        f"not recorded: the catalog has no {HEALTH_FINDINGS_TABLE} table, and health "
        "changes nothing in it, so findings have no open/new state and every pass "
        "reports each again. To record them, create the table once with: "
        f"odibi-observe catalog upgrade --catalog "
        f"{shlex.quote(hide_password(args.catalog))}"
    ]


def _write_reports(result: Any, args: argparse.Namespace) -> list[str]:
    from odibi_observe.health.html import render_html
    from odibi_observe.health.report import render_markdown, write_json

    out = make_out_dir(args.out)
    written = []
    if "json" in args.format:
        write_json(result, out / "health.json")
        written.append(str(out / "health.json"))
    if "md" in args.format:
        (out / "health.md").write_text(render_markdown(result), encoding="utf-8")
        written.append(str(out / "health.md"))
    if "html" in args.format:
        (out / "health.html").write_text(render_html(result), encoding="utf-8")
        written.append(str(out / "health.html"))
    return written


def _fail(message: str) -> int:
    print_error(hide_password(message) if "://" in message else message)
    return 2
