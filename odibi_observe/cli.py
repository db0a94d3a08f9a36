"""The ``odibi-observe`` command line.

Exit codes: 0 success, 1 the command ran and found a problem (the demo's sinks disagree),
2 bad input or configuration (an unreadable catalog URL, an unknown option).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from odibi_observe._redact import terminal_safe
from odibi_observe.config import (
    ConfigurationError,
    hide_password,
    parse_duration,
    parse_positive_int,
    setting,
)
from odibi_observe.conventions import CATALOG_TABLE, RunStatus, render_table
from odibi_observe.record import RunRecord

CATALOG_ENV = str(setting("catalog_url").env)

#: Modules that add their own commands: each has ``register(subparsers)``, which adds its
#: parsers and sets ``handler`` (a ``Callable[[argparse.Namespace], int]``) as their default.
#: Kept beside the feature it drives, so this module stays the small core of the CLI.
COMMAND_MODULES = (
    "odibi_observe.sidecar.commands",
    "odibi_observe.reconcile.commands",
    "odibi_observe.health.commands",
    "odibi_observe.grafana.commands",
    "odibi_observe.integrations.commands",
    "odibi_observe.statuspage.commands",
)


def catalog_arg(parser: argparse.ArgumentParser, *, read_only: bool = False) -> None:
    """``--catalog``; a read-only command also takes a bare path and never creates a file."""
    extra = (" or a path to a SQLite file (catalog.db means sqlite:///catalog.db; a "
             "missing file is an error, never created)") if read_only else ""
    parser.add_argument(
        "--catalog", metavar="URL", default=os.environ.get(CATALOG_ENV),
        help=f"SQLAlchemy URL of the catalog, e.g. sqlite:///catalog.db or "
             f"postgresql://user@host/db{extra} (default: ${CATALOG_ENV})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odibi-observe",
        description="Every pipeline node run recorded once, identically, in OpenTelemetry "
                    "traces, the meta_runs catalog and Prometheus metrics.",
        epilog="Run 'odibi-observe COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo", help="run an example pipeline into all three sinks (no services needed)",
        description="Run a six-node example pipeline — successes, an async node, a failure "
                    "with suggestions, a KeyboardInterrupt inside a node — into a SQLite "
                    "catalog, an OTLP-JSON trace file and a Prometheus text file, then read "
                    "all three back and check that they agree.",
    )
    demo.add_argument("--out", default="odibi-observe-demo", metavar="DIR",
                      help="directory for catalog.db, traces.jsonl, metrics.prom "
                           "(default: %(default)s)")

    conv = sub.add_parser(
        "conventions", help="print the conventions table (every name every sink uses)",
        description="Print the single table of names: catalog columns, span attributes, "
                    "OpenTelemetry instruments, Prometheus metrics and labels.",
    )
    conv.add_argument("--format", choices=("text", "markdown", "json"), default="text")

    catalog = sub.add_parser("catalog", help="manage the meta_runs catalog schema")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    upgrade = catalog_sub.add_parser(
        "upgrade", help="create or migrate meta_runs to the current schema (Alembic)",
        description="Create meta_runs, or migrate it (including a table Odibi created, whose "
                    "rows are kept), to the current schema. Safe to run repeatedly and "
                    "concurrently.",
    )
    catalog_arg(upgrade)
    upgrade.set_defaults(subparser=upgrade)

    runs = sub.add_parser(
        "runs", help="recent node runs, with failures' errors and suggestions",
        description="List recent node runs from the catalog, newest first. Failed and "
                    "crashed runs show their error and the suggestions recorded with them.",
    )
    catalog_arg(runs, read_only=True)
    runs.set_defaults(subparser=runs)
    runs.add_argument("--limit", type=_positive_int, default=20,
                      help="rows to show (default: 20)")
    runs.add_argument("--pipeline", help="only this pipeline")
    runs.add_argument("--node", help="only this node")
    runs.add_argument("--status", type=str.upper, choices=[s.value for s in RunStatus],
                      help="only runs with this status")
    runs.add_argument("--failures", action="store_true",
                      help="only FAILURE and CRASHED runs")
    runs.add_argument("--since", metavar="DURATION", type=duration_arg,
                      help="only runs started in the last DURATION (30m, 6h, 7d)")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from odibi_observe import __version__

    return __version__


def _positive_int(text: str) -> int:
    try:
        return parse_positive_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_arg(text: str) -> timedelta:
    """A ``--since``/``--last`` style option: ``30m``, ``6h``, ``7d`` (see ``parse_duration``)."""
    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: Report formats of the commands that write reports (reconcile, health).
REPORT_FORMATS = ("json", "md", "html")


def time_arg(text: str) -> datetime:
    """A ``--since``/``--until`` time: ISO 8601, UTC when it names no zone."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time like 2024-05-01 or 2024-05-01T06:00:00Z"
        ) from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def percent_arg(text: str) -> float:
    """``1%`` or ``1`` → 0.01; never negative."""
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage like 1%") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a tolerance cannot be negative")
    return value / 100


def formats_arg(text: str) -> tuple[str, ...]:
    """``json,md,html`` (any subset, any case) → the report formats to write."""
    formats = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in REPORT_FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(unknown) or '(none)'}: "
            f"choose from {', '.join(REPORT_FORMATS)}")
    return formats


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from odibi_observe.demo import main as demo_main

            return demo_main(args.out)
        if args.command == "conventions":
            sys.stdout.write(render_table(args.format))
            return 0
        if args.command == "catalog":
            return _catalog_upgrade(require_catalog(args.subparser, args.catalog))
        if args.command == "runs":
            return _runs(require_catalog(args.subparser, args.catalog), args)
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
    except ConfigurationError as exc:
        print(f"odibi-observe: error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover - parser.error exits


def require_catalog(parser: argparse.ArgumentParser, url: str | None) -> str:
    if not url:
        parser.error(f"--catalog URL is required (or set {CATALOG_ENV})")
    assert url is not None
    return url


def _catalog_upgrade(url: str) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from odibi_observe.catalog import upgrade

    try:
        revision = upgrade(url)
    except SQLAlchemyError as exc:
        print(f"odibi-observe: error: cannot upgrade {hide_password(url)}: "
              f"{type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return 2
    print(f"{hide_password(url)}: meta_runs is at revision {revision}")
    return 0


def _runs(url: str, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from odibi_observe.catalog import CatalogStore
    from odibi_observe.catalog.readonly import (
        CatalogUnreadable,
        catalog_url,
        open_readonly_engine,
    )

    since = datetime.now(timezone.utc) - args.since if args.since else None
    statuses = ([RunStatus.FAILURE, RunStatus.CRASHED] if args.failures
                else [RunStatus(args.status)] if args.status else None)
    try:
        engine = open_readonly_engine(url)
    except CatalogUnreadable as exc:
        print(f"odibi-observe: {exc}", file=sys.stderr)
        return 2
    store = CatalogStore(engine)
    url = catalog_url(url)
    try:
        if not _has_table(engine, CATALOG_TABLE):
            print(f"odibi-observe: cannot read catalog {hide_password(url)}: it has no "
                  f"{CATALOG_TABLE} table (not a run catalog, or nothing recorded yet)",
                  file=sys.stderr)
            return 2
        records = store.recent_runs(limit=args.limit, pipeline=args.pipeline, node=args.node,
                                    statuses=statuses, since=since)
    except SQLAlchemyError as exc:
        print(f"odibi-observe: cannot read catalog {hide_password(url)}: "
              f"{type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    if not records:
        print("no runs match")
        return 0
    header = f"{'STARTED (UTC)':<19}  {'PIPELINE':<16} {'NODE':<20} {'STATUS':<8} " \
             f"{'ROWS':>8} {'DURATION':>9}  RUN ID"
    print(header)
    for rec in records:
        rows = "" if rec.rows_processed is None else str(rec.rows_processed)
        duration = "" if rec.duration_ms is None else _human_ms(rec.duration_ms)
        print(f"{rec.started_at:%Y-%m-%d %H:%M:%S}  {_cut(rec.pipeline, 16):<16} "
              f"{_cut(rec.node, 20):<20} {rec.status.value:<8} {rows:>8} {duration:>9}  "
              f"{terminal_safe(rec.run_id)}")
        for line in failure_lines(rec):
            print(line)
    return 0


def _has_table(engine: Any, table: str) -> bool:
    import sqlalchemy as sa

    return bool(sa.inspect(engine).has_table(table))


def failure_lines(rec: RunRecord) -> list[str]:
    """A run's error and suggestions, indented under its row (``runs`` and the demo).

    Text from the catalog is printed without terminal control sequences (see
    :func:`~odibi_observe._redact.terminal_safe`): a node's error message is data, and must
    not be able to recolour, retitle or overwrite the terminal.
    """
    lines = []
    if rec.error_type:
        lines.append(f"    error: {_one_line(rec.error_type)}: "
                     f"{terminal_safe(first_line(rec.error_message or ''))}")
    lines.extend(f"    suggestion: {_one_line(text)}" for text in rec.suggestions)
    return lines


def _one_line(text: str) -> str:
    return terminal_safe(text).replace("\n", " ").replace("\t", " ")


def _human_ms(ms: int) -> str:
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def _cut(text: str, width: int) -> str:
    text = _one_line(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def first_line(value: object) -> str:
    from odibi_observe._redact import redact

    return redact(str(value).strip().splitlines()[0] if str(value).strip() else "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
