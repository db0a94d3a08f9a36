"""The ``odibi-observe`` command line.

Exit codes: 0 success, 1 the command ran and found a problem (the demo's sinks disagree),
2 bad input or configuration (an unreadable catalog URL, an unknown option, no command).

Every command speaks the flag language of :mod:`odibi_observe._cliargs`; the shared names are
re-exported here for the code that imported them from this module.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from odibi_observe._cliargs import (
    CATALOG_ENV,
    PROG,
    REPORT_FORMATS,
    Parser,
    action_parsers,
    catalog_arg,
    catalog_url,
    duration_arg,
    first_line,
    format_name,
    formats_arg,
    json_arg,
    log_level_arg,
    open_catalog,
    out_arg,
    percent_arg,
    positive_int_arg,
    print_error,
    resolve_catalog,
    setup_logging,
    span_arg,
    time_arg,
    window_args,
)
from odibi_observe._runview import failure_lines
from odibi_observe.config import ConfigurationError, hide_password
from odibi_observe.conventions import CATALOG_TABLE, RunStatus, render_table
from odibi_observe.record import RunRecord

__all__ = [
    "CATALOG_ENV",
    "REPORT_FORMATS",
    "build_parser",
    "catalog_arg",
    "duration_arg",
    "failure_lines",
    "first_line",
    "formats_arg",
    "main",
    "percent_arg",
    "require_catalog",
    "span_arg",
    "time_arg",
]

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
#: Commands that set up logging themselves (the sidecar's log is its main output; ``run``
#: leaves logging to Odibi unless --log-level is given).
_OWN_LOGGING = ("sidecar", "sweep", "run")
CONVENTION_FORMATS = ("text", "markdown", "json")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Every pipeline node run recorded once, identically, in OpenTelemetry "
        "traces, the meta_runs catalog and Prometheus metrics.",
        epilog="Run 'odibi-observe COMMAND --help' for a command's options. Without a "
        "command, this help is printed and the exit status is 2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    demo = sub.add_parser(
        "demo",
        help="run an example pipeline into all three sinks (no services needed)",
        description="Run a six-node example pipeline — successes, an async node, a failure "
        "with suggestions, a KeyboardInterrupt inside a node — into a SQLite "
        "catalog, an OTLP-JSON trace file and a Prometheus text file, then read "
        "all three back and check that they agree. Files in DIR that an earlier "
        "demo did not write are never overwritten (unless --force).",
    )
    out = demo.add_argument_group("output")
    out_arg(out, "odibi-observe-demo", "directory for catalog.db, traces.jsonl, metrics.prom")
    out.add_argument(
        "--force",
        action="store_true",
        help="replace those files even if an earlier demo did not write them",
    )
    log_level_arg(demo)

    conv = sub.add_parser(
        "conventions",
        help="print the conventions table (every name every sink uses)",
        description="Print the single table of names: catalog columns, span attributes, "
        "OpenTelemetry instruments, Prometheus metrics and labels.",
    )
    conv.add_argument(
        "--format",
        default="text",
        metavar="FORMAT",
        type=lambda t: format_name(t, CONVENTION_FORMATS),
        help="text, markdown (or md) or json (default: text)",
    )
    log_level_arg(conv)

    catalog = sub.add_parser(
        "catalog",
        help="manage the meta_runs catalog schema",
        description="Manage the meta_runs catalog schema.",
    )
    upgrade = action_parsers(catalog, "catalog").add_parser(
        "upgrade",
        help="create or migrate meta_runs to the current schema (Alembic)",
        description="Create meta_runs, or migrate it (including a table Odibi created, whose "
        "rows are kept), to the current schema. Safe to run repeatedly and "
        "concurrently.",
    )
    catalog_arg(upgrade.add_argument_group("catalog"))
    json_arg(upgrade.add_argument_group("output"), "the catalog and its revision")
    log_level_arg(upgrade)
    upgrade.set_defaults(subparser=upgrade)

    _runs_parser(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _runs_parser(sub: Any) -> None:
    runs = sub.add_parser(
        "runs",
        help="recent node runs, with failures' errors and suggestions",
        description="List recent node runs from the catalog, newest first, grouped by "
        "pipeline run. Failed runs show their error and the suggestions "
        "recorded with them, crashed runs their cause. --details RUN_ID shows "
        "everything one run recorded.",
    )
    source = runs.add_argument_group("catalog")
    catalog_arg(source, read_only=True)
    which = runs.add_argument_group("filters")
    which.add_argument("--project", metavar="NAME", help="only this project")
    which.add_argument("--environment", metavar="NAME", help="only this environment")
    which.add_argument("--pipeline", metavar="NAME", help="only this pipeline")
    which.add_argument("--node", metavar="NAME", help="only this node")
    which.add_argument(
        "--status",
        type=str.upper,
        metavar="STATUS",
        choices=[s.value for s in RunStatus],
        help=f"only this status: {', '.join(s.value for s in RunStatus)}",
    )
    which.add_argument("--failures", action="store_true", help="only FAILURE and CRASHED runs")
    window_args(
        which,
        since="only runs started since TIME: a duration ago (30m, 6h, 7d) or "
        "an ISO 8601 time (2024-05-01T06:00:00Z)",
        until="only runs started before TIME (a duration ago or ISO 8601)",
        last="the same as --since DURATION",
    )
    show = runs.add_argument_group("output")
    show.add_argument(
        "--limit", type=positive_int_arg, default=20, metavar="N", help="runs to show (default: 20)"
    )
    show.add_argument(
        "--details",
        metavar="RUN_ID",
        help="everything one run recorded: error, suggestions, attributes, "
        "trace; a unique prefix of the id is enough",
    )
    show.add_argument(
        "--trace-url-template",
        metavar="URL",
        help="link --details to the trace, e.g. 'http://grafana/explore?traceId={trace_id}'",
    )
    json_arg(
        show,
        help="print one JSON object per run, one per line (with --details: that run), for scripts",
    )
    log_level_arg(runs)
    runs.set_defaults(subparser=runs)


def _version() -> str:
    from odibi_observe import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.print_help()
        return 2
    args = parser.parse_args(argv)
    try:
        if args.command not in _OWN_LOGGING or getattr(args, "log_level", None):
            setup_logging(args)
        if args.command == "demo":
            from odibi_observe.demo import main as demo_main

            return demo_main(args.out, force=args.force)
        if args.command == "conventions":
            sys.stdout.write(render_table(args.format))
            return 0
        if args.command == "catalog":
            return _catalog_upgrade(resolve_catalog(args, args.subparser), args)
        if args.command == "runs":
            return _runs(resolve_catalog(args, args.subparser), args)
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
    except ConfigurationError as exc:
        print_error(str(exc))
        return 2
    parser.print_help()
    return 2


def require_catalog(parser: argparse.ArgumentParser, url: str | None) -> str:
    """``url`` (a bare path made a SQLite URL), else a usage error."""
    return resolve_catalog(argparse.Namespace(catalog=url and catalog_url(url)), parser)


def _catalog_upgrade(url: str, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from odibi_observe.catalog import upgrade

    try:
        revision = upgrade(url)
    except SQLAlchemyError as exc:
        print_error(f"cannot upgrade {hide_password(url)}: {type(exc).__name__}: {first_line(exc)}")
        return 2
    if args.json:
        print(json.dumps({"catalog": hide_password(url), "revision": revision}))
    else:
        print(f"{hide_password(url)}: meta_runs is at revision {revision}")
    return 0


def _runs(url: str, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    if args.last is not None and args.since is not None:
        args.subparser.error("give either --last or --since, not both")
    engine = open_catalog(url)
    try:
        if not _has_table(engine, CATALOG_TABLE):
            print_error(
                f"cannot read catalog {hide_password(url)}: it has no {CATALOG_TABLE} "
                "table (not a run catalog, or nothing recorded yet)"
            )
            return 2
        if args.details:
            return _details(engine, args)
        records, total = _query_runs(engine, args)
    except SQLAlchemyError as exc:
        print_error(
            f"cannot read catalog {hide_password(url)}: {type(exc).__name__}: {first_line(exc)}"
        )
        return 2
    finally:
        engine.dispose()
    if args.json:
        from odibi_observe._runview import json_lines

        for line in json_lines(records):
            print(line)
        return 0
    if not records:
        print("no runs match")
        return 0
    from odibi_observe._runview import print_runs

    print_runs(records, total)
    return 0


def _filters(args: argparse.Namespace) -> list[Any]:
    from datetime import datetime, timezone

    from odibi_observe.catalog.schema import (
        ENVIRONMENT,
        NODE,
        PIPELINE,
        PROJECT,
        STARTED_AT,
        STATUS,
        meta_runs,
        utc,
    )

    c = meta_runs.c
    where: list[Any] = []
    for column, value in (
        (PROJECT, args.project),
        (ENVIRONMENT, args.environment),
        (PIPELINE, args.pipeline),
        (NODE, args.node),
    ):
        if value is not None:
            where.append(c[column] == value)
    statuses = (
        [RunStatus.FAILURE, RunStatus.CRASHED]
        if args.failures
        else [RunStatus(args.status)]
        if args.status
        else None
    )
    if statuses:
        where.append(c[STATUS].in_([s.value for s in statuses]))
    since: datetime | None = args.since
    if args.last is not None:
        since = datetime.now(timezone.utc) - args.last
    if since is not None:
        where.append(c[STARTED_AT] >= utc(since))
    if args.until is not None:
        where.append(c[STARTED_AT] < utc(args.until))
    return where


def _query_runs(engine: Any, args: argparse.Namespace) -> tuple[list[RunRecord], int]:
    """The newest ``--limit`` runs that match, and how many match in all."""
    import sqlalchemy as sa

    from odibi_observe.catalog.schema import RUN_ID, STARTED_AT, meta_runs, row_to_record

    c = meta_runs.c
    where = _filters(args)
    query = (
        sa.select(meta_runs)
        .where(*where)
        .order_by(c[STARTED_AT].desc(), c[RUN_ID].desc())
        .limit(args.limit)
    )
    counting = sa.select(sa.func.count()).select_from(meta_runs).where(*where)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
        total = int(conn.execute(counting).scalar_one())
    return [row_to_record(row) for row in rows], total


def _details(engine: Any, args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from odibi_observe._runview import print_details, run_json
    from odibi_observe.catalog.schema import RUN_ID, meta_runs, row_to_record

    wanted = str(args.details).strip()
    column = meta_runs.c[RUN_ID]
    escaped = wanted.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = (
        sa.select(meta_runs)
        .where(sa.or_(column == wanted, column.like(f"{escaped}%", escape="\\")))
        .limit(2)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    exact = [r for r in rows if r[RUN_ID] == wanted]
    if exact:
        rows = exact
    if not rows:
        print_error(f"no run {wanted!r} in the catalog")
        return 2
    if len(rows) > 1:
        print_error(f"more than one run starts with {wanted!r}: give more of the id")
        return 2
    rec = row_to_record(rows[0])
    if args.json:
        print(json.dumps(run_json(rec), ensure_ascii=False, default=str))
    else:
        print_details(rec, args.trace_url_template)
    return 0


def _has_table(engine: Any, table: str) -> bool:
    import sqlalchemy as sa

    return bool(sa.inspect(engine).has_table(table))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
