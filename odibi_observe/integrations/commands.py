"""``odibi-observe run``: Odibi's own runner with every node run recorded."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from odibi_observe.config import Settings, hide_password, setting
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sinks.base import Sink

TRACES_ENV = str(setting("traces_file").env)
CATALOG_ENV = str(setting("catalog_url").env)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's commands to the odibi-observe parser."""
    from odibi_observe._cliargs import catalog_arg, log_level_arg

    run = sub.add_parser(
        "run",
        help="run an Odibi project ('odibi run') with every node run recorded",
        description="Run Odibi's own runner, exactly as 'odibi run CONFIG [OPTION ...]' does, "
        "with odibi-observe instrumentation on: every node run — succeeded, "
        "failed, or interrupted by KeyboardInterrupt — is recorded in the catalog, "
        "the trace and the metrics. Options after CONFIG go to 'odibi run' "
        "unchanged; odibi-observe's own options come before CONFIG. Other "
        "settings come from ODIBI_OBSERVE_* and OTEL_* variables. Exit code: "
        "Odibi's, or 130 after a KeyboardInterrupt.",
        epilog="example: odibi-observe run --catalog sqlite:///catalog.db odibi.yaml "
        "--env prod --pipeline sales",
    )
    where = run.add_argument_group("recording (options before CONFIG)")
    catalog_arg(where, required=False)
    where.add_argument(
        "--traces-file",
        metavar="PATH",
        default=os.environ.get(TRACES_ENV),
        help=f"append node spans to this OTLP-JSON lines file (default: ${TRACES_ENV})",
    )
    log_level_arg(run)
    run.add_argument("config", metavar="CONFIG", help="the Odibi project file (odibi.yaml)")
    run.add_argument(
        "odibi_args",
        nargs=argparse.REMAINDER,
        metavar="OPTION",
        help="options for 'odibi run' (--env, --pipeline, --node, --tag, "
        "--parallel, --workers, --on-error, --resume, --dry-run)",
    )
    run.set_defaults(handler=_run, subparser=run)


class _RunCounter(Sink):
    """Counts finished runs by status, for the summary line."""

    name = "odibi-run-summary"
    kinds = frozenset({EventKind.FINISHED})

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, str] = {}

    def export(self, events: Sequence[RunEvent]) -> None:
        with self.lock:
            for event in events:
                self.seen[event.run_id] = event.record.status.value

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(self.seen.values())


def _run(args: argparse.Namespace) -> int:
    import odibi_observe as oo
    from odibi_observe.integrations.odibi import (
        UnsupportedOdibiVersion,
        check_version,
        run_odibi_cli,
    )

    if not os.path.isfile(args.config):
        args.subparser.error(f"{args.config}: no such file")
    try:
        check_version()
    except UnsupportedOdibiVersion as exc:
        print(f"odibi-observe: error: {exc}", file=sys.stderr)
        return 2
    # 'odibi run' changes into the project directory: relative paths are fixed here, first.
    from odibi_observe._cliargs import catalog_url

    catalog = args.catalog or catalog_url(os.environ.get(CATALOG_ENV, "")) or None
    catalog = absolute_sqlite_url(catalog) if catalog else None
    traces = os.path.abspath(args.traces_file) if args.traces_file else None
    counter = _RunCounter()
    oo.configure(catalog_url=catalog, traces_file=traces, extra_sinks=[counter], strict=True)
    interrupted = False
    try:
        code = run_odibi_cli(["run", args.config, *args.odibi_args])
    except KeyboardInterrupt:
        interrupted, code = True, 130
    finally:
        settings = oo.get_observer().settings
        # Odibi sets up logging its own way (its handlers may not show ours): the lines that
        # say what was kept at exit go to the terminal whatever it did.
        with _own_warnings_to_stderr():
            # The process ends right after: one deadline for every sink, and what a backend
            # that is down did not take is kept on disk (the lines above say where).
            delivered = oo.shutdown(timeout=settings.exit_timeout, spill=True)
    print(_summary(counter.counts(), settings, delivered=delivered), file=sys.stderr)
    if interrupted:
        print(
            "odibi-observe: the pipeline was interrupted (KeyboardInterrupt); the "
            "interrupted node run is recorded as CANCELLED",
            file=sys.stderr,
        )
    if delivered and settings.catalog_url and settings.mode != "sidecar":
        print(
            f"odibi-observe: see them with: odibi-observe runs --catalog "
            f"{hide_password(settings.catalog_url)}",
            file=sys.stderr,
        )
    if interrupted:
        exit_now(code)
    return code


@contextlib.contextmanager
def _own_warnings_to_stderr() -> Iterator[None]:
    """While inside: odibi-observe's warnings go to stderr, once, whatever the root logger."""
    logger = logging.getLogger("odibi_observe")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s"))
    propagate, level = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    if not logger.isEnabledFor(logging.WARNING):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = propagate, level


def _summary(counts: Counter[str], settings: Settings, *, delivered: bool = True) -> str:
    """The "recorded N node runs ... in WHERE" line: where this process really wrote them.

    In sidecar mode this process wrote only the spool; the sidecar delivers from there to
    its own catalog and traces, so naming ``--catalog`` here would point at a place this
    run may never have reached. When a sink did not confirm every record (``delivered`` is
    False) the line says so instead of claiming the destinations: the lines before it say
    what was kept, and where.
    """
    detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    total = sum(counts.values())
    line = (
        f"odibi-observe: recorded {total} node run{'s' if total != 1 else ''}"
        f"{f' ({detail})' if detail else ''}"
    )
    if settings.mode == "sidecar":
        return (
            f"{line} in the spool {settings.spool_dir}; the sidecar (odibi-observe "
            f"sidecar) delivers them to its catalog and traces"
        )
    where = [hide_password(settings.catalog_url)] if settings.catalog_url else []
    where += [settings.traces_file] if settings.traces_file else []
    if where and not delivered:
        return (
            f"{line}; not all of them reached {', '.join(where)} before the exit "
            f"deadline: what was kept, and where, is said above"
        )
    if where:
        return f"{line} in {', '.join(where)}"
    return (
        f"{line} (metrics only: no catalog or trace destination is configured; pass "
        f"--catalog URL or set {setting('catalog_url').env})"
    )


#: How long :func:`exit_now` lets the final flush of logs and output take.
EXIT_FLUSH_TIMEOUT = 5.0


def exit_now(code: int, flush_timeout: float = EXIT_FLUSH_TIMEOUT) -> NoReturn:
    """End the process with ``code`` now: flush logs and output (bounded), then ``os._exit``.

    After a Ctrl-C the records are already delivered and the summary printed, but threads
    the interrupted pipeline left behind may still be running — Odibi's background catalog
    work, a library's thread inside pyarrow. A normal interpreter exit under them ends in
    SIGABRT (exit status 134: pyarrow's "FATAL: exception not rethrown" when such a thread is
    stopped inside C++ code, or CPython's fatal error on a stream a daemon thread holds
    locked) or hangs. ``os._exit`` skips that finalisation, so the status is always
    ``code``. The flush runs on a thread of its own: a lock held forever by one of those
    threads delays the exit by ``flush_timeout`` at most.
    """

    def flush() -> None:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            # A closed or broken stream: nothing more can be said there.
            with contextlib.suppress(OSError, ValueError):
                stream.flush()

    flusher = threading.Thread(target=flush, name="odibi-observe-exit-flush", daemon=True)
    flusher.start()
    flusher.join(flush_timeout)
    os._exit(code)


def absolute_sqlite_url(url: str) -> str:
    """``url`` with a relative SQLite file path made absolute (other URLs unchanged)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # configure() reports the malformed URL
    database = parsed.database
    if (
        parsed.get_backend_name() != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file:")
        or os.path.isabs(database)
    ):
        return url
    return parsed.set(database=os.path.abspath(database)).render_as_string(hide_password=False)
