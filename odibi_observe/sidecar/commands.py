"""``odibi-observe sidecar`` and ``odibi-observe sweep``.

Every option also reads an environment variable (named in ``--help``), because a sidecar is
usually configured by its container spec or systemd unit, and the command line wins over the
environment. Durations are ``30s``, ``5m``, ``1h`` (a bare number is seconds); sizes are
``512MiB``, ``1GiB``, ``100MB`` (a bare number is bytes).

Bad input is reported on one line, with any database password hidden, and exit status 2;
that includes a port already in use and a spool directory that cannot be written, because
those are what an operator gets wrong, and a traceback would bury the one line that matters.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from odibi_observe._cliargs import (
    catalog_arg,
    first_line,
    json_arg,
    log_level_arg,
    resolve_catalog,
)
from odibi_observe.config import (
    FSYNC_POLICIES,
    SETTINGS,
    ConfigurationError,
    format_duration,
    format_size,
    hide_password,
    parse_size,
    resolve_settings,
    setting,
)
from odibi_observe.sidecar import DEFAULT_HOST, SidecarOptions

if TYPE_CHECKING:
    from odibi_observe._selfmetrics import SelfMonitor
    from odibi_observe.catalog.store import CatalogStore
    from odibi_observe.record import RunRecord
    from odibi_observe.sidecar.sweeper import SweepResult
    from odibi_observe.sinks.base import Sink
    from odibi_observe.spool import Spool

__all__ = ["format_size", "parse_size", "register"]

#: The SidecarOptions fields read by ``_setting`` from their table entries (the others —
#: catalog, spool directory, listen address, token — have their own rules below).
_OPTIONS: Final = tuple(
    s
    for s in SETTINGS
    if s.sidecar
    and s.name
    not in (
        "catalog_url",
        "spool_dir",
        "sidecar_listen",
        "sidecar_token",
        "sidecar_token_file",
        "log_level",
    )
)

#: How long ``odibi-observe sweep --spool-dir`` delivers the spool before giving up.
SWEEP_DRAIN_TIMEOUT: Final = 30.0

_OTEL_EPILOG: Final = """\
traces and metrics destinations (the standard OpenTelemetry variables, as for pipelines):
  OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
                        where node spans (and crash spans) are exported (unset: no OTLP)
  OTEL_EXPORTER_OTLP_PROTOCOL
                        http/protobuf (default), http/json or grpc
  OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
                        resource of the spans (each span keeps its pipeline's own
                        service.name, host.name and process.pid)
  ODIBI_OBSERVE_TRACES_FILE
                        also append spans as OTLP-JSON lines to this file
"""

# -- values ------------------------------------------------------------------------------------

#: The table's own parsers and formats, re-exported for the modules and tests that import them.
_format_duration = format_duration
_TABLE_DEFAULT: Final = object()


def _setting(args: argparse.Namespace, name: str, default: Any = _TABLE_DEFAULT) -> Any:
    """The setting ``name``: its command-line option, else its variable, else its default.

    Parsed by the setting's own parser from the table (the one pipelines use too) rather than
    by argparse, so that a bad environment variable is reported with the variable's name.
    """
    entry = setting(name)
    value = getattr(args, entry.dest, None)
    where = entry.flag or entry.name
    if value is None:
        raw = os.environ.get(entry.env) if entry.env else None
        if raw is None or raw == "":
            return entry.default if default is _TABLE_DEFAULT else default
        value, where = raw, str(entry.env)
    try:
        return entry.parser(value)
    except ValueError as exc:
        raise ConfigurationError(f"{where}={value!r}: {exc}") from None


# -- parsers -----------------------------------------------------------------------------------


def _wrap(*paragraphs: str) -> str:
    # The raw formatter keeps the epilog's table; descriptions are wrapped here instead.
    return "\n\n".join(textwrap.fill(p, 78) for p in paragraphs)


def _env(name: str) -> str:
    return f"env {setting(name).env}"


def _default(name: str) -> str:
    return setting(name).shown_default()


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``sidecar`` and ``sweep`` to the odibi-observe parser."""
    sidecar = sub.add_parser(
        "sidecar",
        help="run the sidecar: spool → catalog/traces/metrics, sweeper, /metrics",
        description=_wrap(
            "Deliver the run events that pipelines in mode=sidecar append to the spool "
            "directory to the catalog, the OTLP exporter and Prometheus; close crashed runs "
            "(sweeper); serve GET /metrics, GET /healthz and POST /v1/traces (OTLP/HTTP into "
            "the span ledger) on one port. Stops gracefully on SIGTERM or SIGINT, exit "
            "status 0; bad input is exit status 2."
        ),
        epilog=_OTEL_EPILOG,
    )
    where = sidecar.add_argument_group("catalog and spool")
    catalog_arg(
        where,
        help=f"SQLAlchemy URL of the catalog (meta_runs and the span ledger), e.g. "
        f"sqlite:///catalog.db or postgresql://user@host/db (required; {_env('catalog_url')})",
    )
    where.add_argument(
        "--spool-dir",
        metavar="DIR",
        help=f"spool directory shared with the pipelines, created if missing (required; "
        f"{_env('spool_dir')})",
    )
    http = sidecar.add_argument_group("HTTP endpoints (/metrics, /healthz, /v1/traces)")
    _option(
        http,
        "sidecar_listen",
        "HOST:PORT",
        f"address of the HTTP endpoints; PORT alone means {DEFAULT_HOST}; use 0.0.0.0:PORT "
        "to accept other hosts",
    )
    http.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"require 'Authorization: Bearer TOKEN' on POST /v1/traces, TOKEN read from FILE "
        f"(default: no token; {_env('sidecar_token_file')}, or the token itself in "
        f"{setting('sidecar_token').env} — never on the command line, where ps shows it)",
    )
    _option(
        http,
        "sidecar_max_body",
        "SIZE",
        "largest OTLP request body, compressed or not; larger is 413",
    )
    http.add_argument(
        "--ledger",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"store odibi node spans received on /v1/traces in the span ledger; "
        f"--no-ledger answers it with 404 (default: on; {_env('sidecar_ledger')})",
    )
    sweeper = sidecar.add_argument_group("sweeper (crashed runs)")
    _option(
        sweeper,
        "sweep_interval",
        "DURATION",
        "how often to close RUNNING runs whose process is gone; 0 turns the sweeper off",
    )
    _sweep_options(sweeper)
    spool = sidecar.add_argument_group("spool")
    _option(
        spool,
        "spool_fsync",
        "POLICY",
        "when the sidecar's own spool writes (crash events, cursor positions) reach the "
        f"disk: {', '.join(FSYNC_POLICIES)}",
        choices=FSYNC_POLICIES,
    )
    _option(
        spool,
        "spool_max_bytes",
        "SIZE",
        "spool size limit for the sidecar's own appends (crash events; pipelines apply "
        "their own spool_max_bytes); beyond it appends are refused and counted",
    )
    _option(
        spool,
        "spool_gc_interval",
        "DURATION",
        "how often spool segments every sink has passed are deleted; 0: never",
    )
    delivery = sidecar.add_argument_group("delivery and health")
    _option(
        delivery,
        "sidecar_drain_timeout",
        "DURATION",
        "on SIGTERM, how long to keep delivering spooled events to the sinks that work; "
        "keep it below the stop grace period",
    )
    _option(
        delivery,
        "sidecar_stuck_after",
        "DURATION",
        "/healthz answers 503 when a loop is this late or a sink export runs this long",
    )
    _option(
        delivery,
        "sidecar_max_batch",
        "N",
        "spooled events handed to a sink per export (one catalog transaction, one OTLP request)",
    )
    log_level_arg(sidecar, "info")
    sidecar.set_defaults(handler=_run_sidecar, subparser=sidecar)

    sweep = sub.add_parser(
        "sweep",
        help="close crashed runs once (RUNNING runs whose process is gone)",
        description=_wrap(
            "One sweeper pass: close as CRASHED every RUNNING run of this host whose process "
            "is gone (or, for other hosts with --all-hosts, that stopped heartbeating), in the "
            "catalog and as a back-dated error span with the run's own ids through the OTLP "
            "exporter of the OTEL_* variables. With --spool-dir the spool is first delivered "
            "to the sinks, so a terminal event still spooled is not mistaken for a crash.",
            "Exit status: 0 done; 1 the spool could not be delivered to the catalog, or a "
            "closed run could not be sent to every sink; 2 bad input or an unreachable "
            "catalog.",
        ),
        epilog=_OTEL_EPILOG,
    )
    sweep_where = sweep.add_argument_group("catalog and spool")
    catalog_arg(
        sweep_where, help=f"SQLAlchemy URL of the catalog (required; {_env('catalog_url')})"
    )
    sweep_where.add_argument(
        "--spool-dir",
        metavar="DIR",
        help=f"deliver this spool to the sinks before sweeping; not while a sidecar serves "
        f"it (default: none; {_env('spool_dir')})",
    )
    sweep_where.add_argument(
        "--drain-timeout",
        metavar="DURATION",
        help=f"how long to deliver the spool before giving up "
        f"(default: {_format_duration(SWEEP_DRAIN_TIMEOUT)}; "
        f"{_env('sidecar_drain_timeout')})",
    )
    sweep_judge = sweep.add_argument_group("sweeper (crashed runs)")
    _sweep_options(sweep_judge)
    sweep_judge.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be closed and close nothing (--spool-dir is still delivered: "
        "that is the sidecar's normal work)",
    )
    json_arg(sweep, "the summary (the runs closed, by reason)")
    log_level_arg(sweep, "error")
    sweep.set_defaults(handler=_run_sweep, subparser=sweep)


def _option(group: Any, name: str, metavar: str, text: str, **kwargs: Any) -> None:
    """The option of setting ``name``: its flag, default and variable from the settings
    table (stated there once), ``text`` saying what it does."""
    group.add_argument(
        str(setting(name).flag),
        metavar=metavar,
        help=f"{text} (default: {_default(name)}; {_env(name)})",
        **kwargs,
    )


def _sweep_options(parser: Any) -> None:
    _option(
        parser,
        "heartbeat_timeout",
        "DURATION",
        "a run not checkable by pid (another host, --no-pid-check) is crashed after no "
        "heartbeat for this long; keep it several heartbeat intervals",
    )
    parser.add_argument(
        "--all-hosts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"also sweep runs of other hosts, by heartbeat (default: this host only; "
        f"{_env('sweep_all_hosts')})",
    )
    parser.add_argument(
        "--pid-check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"judge runs of this host by their pid; --no-pid-check when the pipelines run in "
        f"another pid namespace (a container without a shared process namespace), where "
        f"every pid looks dead (default: on; {_env('sweep_pid_check')})",
    )


def _setup_logging(args: argparse.Namespace) -> None:
    level = str(_setting(args, "log_level", args.log_default)).upper()
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level != "DEBUG":
        # Alembic narrates every migration check at INFO; the sidecar's own INFO lines say
        # what matters (and a migration failure is raised, not logged).
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _spool_dir(args: argparse.Namespace, *, required: bool) -> str | None:
    env = str(setting("spool_dir").env)
    value = args.spool_dir or os.environ.get(env) or None
    if required and not value:
        args.subparser.error(f"--spool-dir DIR is required (or set {env})")
    return value


def _token(args: argparse.Namespace) -> str | None:
    path = args.token_file or os.environ.get(str(setting("sidecar_token_file").env)) or None
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"--token-file {path!r} cannot be read: {exc.strerror or exc}"
            ) from None
        if not token:
            raise ConfigurationError(f"--token-file {path!r} is empty")
        return token
    return os.environ.get(str(setting("sidecar_token").env)) or None


# -- odibi-observe sidecar ---------------------------------------------------------------------


def sidecar_options(args: argparse.Namespace) -> SidecarOptions:
    """The :class:`~odibi_observe.sidecar.SidecarOptions` of parsed ``sidecar`` arguments."""
    host, port = _setting(args, "sidecar_listen")
    return SidecarOptions(
        catalog_url=resolve_catalog(args, args.subparser),
        spool_dir=str(_spool_dir(args, required=True)),
        listen_host=host,
        listen_port=port,
        token=_token(args),
        **{entry.option or entry.name: _setting(args, entry.name) for entry in _OPTIONS},
    )


def _run_sidecar(args: argparse.Namespace) -> int:
    from odibi_observe.sidecar.service import Sidecar

    _setup_logging(args)
    options = sidecar_options(args)
    sidecar = Sidecar(options)

    def ready(running: Sidecar) -> None:
        endpoints = "GET /metrics, GET /healthz" + (
            ", POST /v1/traces" if running.receiver is not None else ""
        )
        sweeping = (
            f"every {_format_duration(options.sweep_interval)}" if options.sweep_interval else "off"
        )
        print(
            f"odibi-observe sidecar listening on {running.url} ({endpoints})\n"
            f"  spool    {os.path.abspath(options.spool_dir)}\n"
            f"  catalog  {hide_password(options.catalog_url)}\n"
            f"  sinks    {', '.join(s.name for s in running.sinks)}\n"
            f"  sweeper  {sweeping}",
            flush=True,
        )

    status = sidecar.run_forever(on_ready=ready)
    print("odibi-observe sidecar stopped", flush=True)
    return status


# -- odibi-observe sweep -----------------------------------------------------------------------


@dataclass(frozen=True)
class _SweepPlan:
    """One ``odibi-observe sweep`` invocation, resolved."""

    store: CatalogStore
    sinks: list[Sink]
    monitor: SelfMonitor
    host: str
    heartbeat_timeout: float
    all_hosts: bool
    pid_check: bool
    dry_run: bool
    drain_timeout: float


def _run_sweep(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry
    from sqlalchemy.exc import SQLAlchemyError

    from odibi_observe._runtime import Observer
    from odibi_observe.sidecar.service import _catalog_store

    _setup_logging(args)
    url = resolve_catalog(args, args.subparser)
    spool_dir = _spool_dir(args, required=False)
    heartbeat_timeout = _setting(args, "heartbeat_timeout")
    all_hosts = _setting(args, "sweep_all_hosts")
    pid_check = _setting(args, "sweep_pid_check")
    drain_timeout = _setting(args, "sidecar_drain_timeout", SWEEP_DRAIN_TIMEOUT)
    settings = resolve_settings({"catalog_url": url, "mode": "background"})
    settings = replace(settings, prometheus_port=None, prometheus_textfile=None)
    observer = Observer(settings, registry=CollectorRegistry(), strict=True)
    # Not the Prometheus sink: counters in a process that exits a second later are seen by
    # nobody, and consuming the spool's "prometheus" cursor here would take those runs away
    # from the sidecar's /metrics.
    plan = _SweepPlan(
        store=_catalog_store(observer, url),
        sinks=[s for s in observer.sinks if s.name != "prometheus"],
        monitor=observer.monitor,
        host=settings.host,
        heartbeat_timeout=heartbeat_timeout,
        all_hosts=all_hosts,
        pid_check=pid_check,
        dry_run=args.dry_run,
        drain_timeout=drain_timeout,
    )
    try:
        if spool_dir:
            result, failed = _sweep_with_spool(plan, spool_dir)
        else:
            result = _sweep(plan, None)
            failed = list(result.failed)
    except _NotDrained as exc:
        print(f"odibi-observe: error: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(
            f"odibi-observe: error: cannot sweep {hide_password(url)}: "
            f"{type(exc).__name__}: {first_line(exc)}",
            file=sys.stderr,
        )
        return 2
    finally:
        observer.shutdown(timeout=15.0)  # pushes the crash spans out before exiting
    scope = "all hosts" if all_hosts else f"host {settings.host!r}"
    if args.json:
        import json

        print(
            json.dumps(
                {
                    "scope": "all hosts" if all_hosts else settings.host,
                    "dry_run": args.dry_run,
                    "checked": result.checked,
                    "reasons": dict(result.reasons),
                    "closed": [
                        {
                            "run_id": r.run_id,
                            "pipeline": r.pipeline,
                            "node": r.node,
                            "host": r.host,
                            "pid": r.pid,
                        }
                        for r in result.closed
                    ],
                    "failed_sinks": list(failed),
                }
            )
        )
        return 1 if failed else 0
    verb = "would close" if args.dry_run else "closed"
    for record in result.closed:
        print(
            f"{verb} {record.run_id}  {record.pipeline}/{record.node}  started "
            f"{record.started_at:%Y-%m-%d %H:%M:%S} UTC  host={record.host} pid={record.pid}"
        )
        print(f"    {first_line(record.error_message or '')}")
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(result.reasons.items()))
    print(
        f"swept {scope} at {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC: "
        f"{result.checked} RUNNING run(s) checked, {len(result.closed)} "
        f"{'to close' if args.dry_run else 'closed'} as CRASHED"
        + (f" ({reasons})" if reasons else "")
    )
    if failed:
        later = (
            "they stay spooled for the sidecar"
            if spool_dir
            else "reconciliation can repair the traces"
        )
        print(
            f"odibi-observe: error: the closed runs could not be sent to: "
            f"{', '.join(failed)} (the catalog has them; {later})",
            file=sys.stderr,
        )
        return 1
    return 0


class _NotDrained(Exception):
    """The spool could not be delivered to the catalog: sweeping now would be wrong."""


def _sweep(
    plan: _SweepPlan,
    spool: Spool | None,
    settle: Callable[[Sequence[RunRecord]], bool] | None = None,
) -> SweepResult:
    from odibi_observe.sidecar.sweeper import Sweeper

    plan.store.ensure_schema()
    return Sweeper(
        plan.store,
        plan.sinks,
        spool=spool,
        settle=settle,
        closed_by="odibi-observe sweep",
        host=plan.host,
        heartbeat_timeout=plan.heartbeat_timeout,
        all_hosts=plan.all_hosts,
        pid_check=plan.pid_check,
        dry_run=plan.dry_run,
    ).sweep()


def _sweep_with_spool(plan: _SweepPlan, spool_dir: str) -> tuple[SweepResult, list[str]]:
    """Deliver the spool, sweep with the crash events appended to it, deliver them too.

    Through the spool rather than straight to the sinks: a crash event that cannot be
    exported now stays spooled, and a sidecar on this spool delivers it later. Returns the
    result and the sinks that still have spooled events.
    """
    from odibi_observe._pump import SpoolPump
    from odibi_observe.sidecar.service import CATALOG_SINK, _WatchedSink
    from odibi_observe.sidecar.sweeper import spooled_so_far_ingested
    from odibi_observe.spool import Spool

    if not os.path.isdir(spool_dir):
        raise ConfigurationError(f"--spool-dir {spool_dir!r} is not a directory")
    try:
        spool = Spool(spool_dir)
    except OSError as exc:
        raise ConfigurationError(
            f"--spool-dir {spool_dir!r} cannot be opened: {exc.strerror or exc}"
        ) from None
    try:
        # Wrapped as the sidecar wraps them: the catalog must not take the sweeper's own
        # crash events back from the spool (see service.without_sweeper_echo).
        pump = SpoolPump(
            spool, [_WatchedSink(s, time.monotonic) for s in plan.sinks], monitor=plan.monitor
        )
        pump.drain(plan.drain_timeout)
        behind = pump.backlog()
        if behind.get(CATALOG_SINK):
            raise _NotDrained(
                f"{behind[CATALOG_SINK]} spooled event(s) could not be written to the catalog "
                f"within {_format_duration(plan.drain_timeout)}; not sweeping (a run whose end "
                f"is still spooled would look crashed)"
            )
        for sink, n in behind.items():
            if n:
                print(f"warning: sink {sink!r} still has {n} spooled event(s)", file=sys.stderr)

        # Deliver once more after the verdicts: a process may have spooled its ending and
        # exited since the drain above; judged dead, it can write nothing more. Only the dead
        # runs' writers are waited for (live ones may write on for ever).
        def settle(records: Sequence[RunRecord]) -> bool:
            caught_up = spooled_so_far_ingested(spool, CATALOG_SINK, records)
            deadline = time.monotonic() + plan.drain_timeout
            while not caught_up():
                if time.monotonic() >= deadline:
                    return False
                if not pump.pump_once():
                    time.sleep(0.05)
            return True

        result = _sweep(plan, None if plan.dry_run else spool, settle)
        if not result.closed or plan.dry_run:
            return result, []
        pump.drain(plan.drain_timeout)
        return result, [name for name, n in pump.backlog().items() if n]
    finally:
        # What every sink took is deleted: pipelines spill here at exit, again and again.
        with contextlib.suppress(OSError):
            spool.gc()
        spool.close()
