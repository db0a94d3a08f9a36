"""``odibi-observe health``: the command line of :mod:`odibi_observe.health`.

Exit codes, as ``reconcile``: 0 nothing found; 1 the pass ran and found problems (see the
report); 2 bad configuration, or the catalog could not be read.
"""

from __future__ import annotations

import argparse
import shlex
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

from odibi_observe import _cliargs as flags
from odibi_observe.config import ConfigurationError, format_duration, hide_password
from odibi_observe.conventions import HEALTH_FINDING_KINDS, HEALTH_FINDINGS_TABLE
from odibi_observe.health.model import DIRECTIONS, SEASONALITIES, HealthOptions, load_rules

HELP = (
    "volume, duration, freshness, failure-streak, flakiness and memory findings from the run "
    "history"
)

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


#: The judging options, in --help order: (flag, type or choices, metavar, what it sets). Each
#: sets the :class:`~odibi_observe.health.model.HealthOptions` field of its name
#: (``--training-days`` sets ``training``), whose default is the option's: one default each.
_JUDGING: Final[tuple[tuple[str, Any, str | None, str], ...]] = (
    ("--sensitivity", float, "Z", "standard deviations from the mean that make an anomaly"),
    ("--training-days", float, "DAYS", "history each node is judged against"),
    ("--min-points", int, "N", "training runs a node needs before it is judged"),
    ("--volume-direction", DIRECTIONS, None, "which row-count changes count"),
    ("--duration-direction", DIRECTIONS, None, "which duration changes count"),
    (
        "--min-change",
        flags.percent_arg,
        "PERCENT",
        "ignore changes smaller than this share of the mean",
    ),
    ("--duration-min-ms", float, "MS", "ignore duration changes smaller than this"),
    ("--seasonality", SEASONALITIES, None, "compare each run with the same weekday or hour only"),
    (
        "--freshness-factor",
        float,
        "X",
        "stale after X times the node's mean interval between successes",
    ),
    ("--freshness-min", flags.duration_arg, "DURATION", "never stale sooner than this"),
    ("--failure-streak", int, "N", "consecutive failed runs that make a streak"),
    ("--flaky-min", int, "N", "retried successes that make a node flaky"),
    (
        "--memory-runs",
        int,
        "N",
        "newest SUCCESS runs per node the peak-memory trend is fitted to",
    ),
    (
        "--memory-horizon",
        int,
        "N",
        "memory_growth when the trend reaches the threshold within N runs",
    ),
    (
        "--memory-threshold",
        flags.percent_arg,
        "PERCENT",
        "share of the memory limit that counts as reached",
    ),
)


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _judging_default(flag: str) -> Any:
    """The default of a judging option: its HealthOptions field's (in days for training)."""
    if flag == "--training-days":
        return HealthOptions().training / timedelta(days=1)
    return getattr(HealthOptions(), _dest(flag))


def _shown(default: Any, kind: Any) -> str:
    """A default as --help shows it: 3, 10%, 1h."""
    if kind is flags.percent_arg:
        return f"{default * 100:g}%%"
    if isinstance(default, timedelta):
        return format_duration(default.total_seconds())
    return f"{default:g}" if isinstance(default, float) else str(default)


def _options(args: argparse.Namespace) -> HealthOptions:
    """The HealthOptions of the judging options (``ValueError`` if they do not fit)."""
    chosen = {_dest(flag): getattr(args, _dest(flag)) for flag, *_ in _JUDGING}
    chosen["training"] = timedelta(days=chosen.pop("training_days"))
    return HealthOptions(**chosen, rules=load_rules(args.config) if args.config else ())


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``health`` to the odibi-observe parser."""
    parser = sub.add_parser("health", help=HELP, description=DESCRIPTION, epilog=EPILOG)
    sources = parser.add_argument_group("sources")
    flags.catalog_arg(sources, read_only=True)
    sources.add_argument(
        "--config", metavar="FILE", help="TOML file of per-node freshness SLAs and skipped kinds"
    )

    flags.window_args(
        parser.add_argument_group("window"),
        last="the window is the last DURATION (30m, 24h, 7d, or an ISO time to start at; "
        "default 24h)",
    )

    judge = parser.add_argument_group("judging (docs/health.md: each method and its defaults)")
    for flag, kind, metavar, text in _JUDGING:
        default = _judging_default(flag)
        shown = f"{text} (default: {_shown(default, kind)})"
        if isinstance(kind, tuple):
            judge.add_argument(flag, choices=kind, default=default, help=shown)
        else:
            judge.add_argument(flag, type=kind, default=default, metavar=metavar, help=shown)

    output = parser.add_argument_group("output")
    flags.report_args(output, stem="health", out="health-report")
    flags.metrics_textfile_arg(output, "odibi_health_*")
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
    flags.json_arg(output, "the result (as health.json has it) and the files written")
    flags.log_level_arg(parser)
    parser.set_defaults(handler=run, subparser=parser)


def run(args: argparse.Namespace) -> int:
    """The ``health`` command; returns the exit status."""
    from odibi_observe.health.detect import HealthError, detect
    from odibi_observe.reconcile.model import Window

    parser: argparse.ArgumentParser = args.subparser
    args.catalog = flags.resolve_catalog(args, parser)
    flags.check_window(args, parser)
    try:
        # Whole seconds: the reports' times are read by people.
        now = datetime.now(timezone.utc).replace(microsecond=0)
        since, until = flags.window_bounds(args, now)
        window = Window.between(since, until, grace=timedelta(0), now=now)
        options = _options(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        flags.check_report_outputs(args)
        engine = _open(args.catalog)
    except ConfigurationError as exc:
        return flags.fail(str(exc))
    try:
        try:
            from odibi_observe._progress import working

            with working("judging the run history", enabled=not (args.quiet or args.json)):
                result = detect(engine, window, options, catalog=hide_password(args.catalog))
        except HealthError as exc:
            return flags.fail(str(exc))
        warnings, notes = _record(engine, result, args)
        written = _write_reports(result, args)
        if args.json:
            import json

            from odibi_observe.health.report import to_dict

            print(
                json.dumps({**to_dict(result), "written": written}, ensure_ascii=False, default=str)
            )
        elif not args.quiet:
            from odibi_observe.health.report import cli_summary

            print(cli_summary(result, written))
        flags.print_notes(notes, warnings)
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
    from odibi_observe.health.report import render_markdown, write_json, write_metrics

    return flags.write_reports(
        args,
        "health",
        {
            "json": lambda path: write_json(result, path),
            "md": lambda path: path.write_text(render_markdown(result), encoding="utf-8"),
            "html": lambda path: path.write_text(render_html(result), encoding="utf-8"),
        },
        lambda path: write_metrics(result, path),
    )
