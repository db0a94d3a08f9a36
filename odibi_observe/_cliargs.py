"""The flag language every ``odibi-observe`` command shares.

One module, imported *downward* by :mod:`odibi_observe.cli`, the ``*/commands.py`` modules and
the demo, so that an option means the same thing, is spelled the same way and fails the same
way in every command: ``--catalog URL`` (a bare SQLite path accepted), ``--since``/``--until``/
``--last`` as a duration or an ISO time, ``--format md`` or ``markdown``, durations as
durations, ``--log-level``, ``--out DIR`` checked before any work, and one error prefix.

The plumbing around those options lives here too, for the same reason: the time window's
rules, opening a catalog that is only read, the reports a command writes and the lines it
ends with. A command module keeps only what is its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from odibi_observe._redact import redact
from odibi_observe.config import (
    ConfigurationError,
    hide_password,
    parse_duration,
    parse_positive_int,
    setting,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from sqlalchemy.engine import Engine

PROG: Final = "odibi-observe"
#: The one prefix of every error line the command line prints.
ERROR_PREFIX: Final = f"{PROG}: error: "
CATALOG_ENV: Final = str(setting("catalog_url").env)
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: Report formats of the commands that write reports (reconcile, health).
REPORT_FORMATS: Final = ("json", "md", "html")
#: Help text is laid out for this many columns at most (an 80-column terminal).
HELP_WIDTH: Final = 80

_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")


def error_line(message: str) -> str:
    """``message`` with the one error prefix."""
    return f"{ERROR_PREFIX}{message}"


def print_error(message: str) -> None:
    print(error_line(message), file=sys.stderr)


def _hidden(message: str) -> str:
    """``message`` with the password of any database URL in it hidden."""
    return hide_password(message) if "://" in message else message


def fail(message: str) -> int:
    """Print ``message`` as the one error line (passwords hidden) and return exit status 2:
    bad configuration, or nothing could be read or written."""
    print_error(_hidden(message))
    return 2


def print_notes(notes: Iterable[str], warnings: Iterable[str]) -> None:
    """The notes, then the warnings, a command ends with: on stderr, so that stdout stays
    the summary (or the JSON) alone."""
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    for warning in warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)


class HelpFormatter(argparse.HelpFormatter):
    """Help within 80 columns (fewer on a narrower terminal), whose descriptions and
    epilogs may hold tables and examples.

    A paragraph of prose (blank-line separated; a heading line with its continuation lines
    indented by two counts too) is re-flowed to the width; any other line — a table row, an
    example command — is kept, and wrapped only if too long, under its second column.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 28,
        width: int | None = None,
    ) -> None:
        columns = width or _terminal_columns()
        super().__init__(
            prog, indent_increment, max_help_position, width=min(columns, HELP_WIDTH) - 2
        )

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = re.split(r"\n[ \t]*\n", text.strip("\n"))
        return "\n\n".join(_fill_paragraph(p, max(width, 40), indent) for p in paragraphs)


_TABLE_GAP: Final = re.compile(r"\S {2,}\S")


def _fill_paragraph(paragraph: str, width: int, indent: str) -> str:
    import textwrap

    lines = paragraph.splitlines()
    first, rest = lines[0], lines[1:]
    prose = (
        not first.startswith(" ")
        and not any(_TABLE_GAP.search(x) for x in lines)
        and (
            all(not x.startswith(" ") for x in rest)
            or all(x.startswith("  ") and not x.startswith("   ") for x in rest)
        )
    )
    if prose:
        hanging = "  " if rest and rest[0].startswith(" ") else ""
        return textwrap.fill(
            " ".join(x.strip() for x in lines),
            width,
            initial_indent=indent,
            subsequent_indent=indent + hanging,
            break_long_words=False,
            break_on_hyphens=False,
        )
    out = []
    for line in lines:
        if len(indent + line) <= width:
            out.append(indent + line)
            continue
        column = _TABLE_GAP.search(line)
        lead = len(line) - len(line.lstrip())
        under = column.end() - 1 if column and column.end() - 1 < width // 2 else lead + 2
        out.append(
            textwrap.fill(
                line,
                width,
                initial_indent=indent,
                subsequent_indent=indent + " " * under,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)


def _terminal_columns() -> int:
    import shutil

    return shutil.get_terminal_size((HELP_WIDTH, 24)).columns


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors carry the one prefix and point at ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{error_line(message)}\n(run '{self.prog} --help' for the options)\n")


# -- values -----------------------------------------------------------------------------------


def catalog_url(spec: str) -> str:
    """``spec`` as a URL: a bare filesystem path becomes ``sqlite:///PATH``.

    Anything with a scheme (``postgresql://…``, ``sqlite:///…``, ``odibi-delta:/…``) is kept.
    Two letters at least make a scheme, so ``C:\\x`` stays a path.
    """
    spec = spec.strip()
    if not spec or "://" in spec or _SCHEME.match(spec):
        return spec
    return "sqlite:///" + spec


def _positive_int(text: str) -> int:
    try:
        return parse_positive_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


positive_int_arg = _positive_int


def duration_arg(text: str) -> timedelta:
    """A duration: ``30m``, ``6h``, ``7d``, ``250ms``; a bare number is seconds."""
    try:
        return timedelta(seconds=parse_duration(text.strip()))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds_arg(text: str) -> float:
    """A duration in seconds (``30s``, ``2m``, ``45``): for timeouts."""
    return duration_arg(text).total_seconds()


def _iso(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def time_arg(text: str) -> datetime:
    """A point in time: ISO 8601 (UTC when it names no zone), or a duration meaning that
    long ago (``--since 6h`` is six hours before now)."""
    value = _iso(text)
    if value is not None:
        return value
    try:
        ago = timedelta(seconds=parse_duration(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration like 30m, 6h, 7d nor an ISO 8601 time like "
            "2024-05-01 or 2024-05-01T06:00:00Z"
        ) from None
    return datetime.now(timezone.utc) - ago


def span_arg(text: str) -> timedelta:
    """``--last``: a duration, or an ISO time meaning "from then until now"."""
    value = _iso(text)
    if value is not None:
        span = datetime.now(timezone.utc) - value
        if span <= timedelta(0):
            raise argparse.ArgumentTypeError(f"{text!r} is in the future")
        return span
    try:
        return duration_arg(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration like 30m, 6h, 7d nor an ISO 8601 time like "
            "2024-05-01T06:00:00Z"
        ) from None


def percent_arg(text: str) -> float:
    """``1%`` or ``1`` → 0.01; never negative."""
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage like 1%") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a tolerance cannot be negative")
    return value / 100


def format_name(text: str, choices: tuple[str, ...]) -> str:
    """One format, any case, with its aliases (``markdown`` is ``md``)."""
    name = text.strip().lower()
    if name in ("md", "markdown"):
        name = "markdown" if "markdown" in choices else "md"
    if name not in choices:
        raise argparse.ArgumentTypeError(
            f"unknown format {text.strip() or '(none)'}: choose from {', '.join(choices)}"
            + (
                " (md and markdown are the same)"
                if "md" in choices or "markdown" in choices
                else ""
            )
        )
    return name


def formats_arg(text: str) -> tuple[str, ...]:
    """``json,md,html`` (any subset, any case, ``markdown`` for ``md``) → formats to write."""
    names = [f for f in text.split(",") if f.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"unknown format (none): choose from {', '.join(REPORT_FORMATS)}"
        )
    return tuple(dict.fromkeys(format_name(f, REPORT_FORMATS) for f in names))


# -- options ------------------------------------------------------------------------------------


def action_parsers(parser: argparse.ArgumentParser, command: str) -> Any:
    """The ``ACTION`` sub-commands of ``command`` (``catalog upgrade``, ``dashboards build``):
    add each with ``add_parser``; the command alone is a usage error."""
    return parser.add_subparsers(
        dest=f"{command}_command", metavar="ACTION", required=True, parser_class=Parser
    )


def catalog_arg(
    parser: argparse.ArgumentParser | Any,
    *,
    read_only: bool = False,
    extra: str = "",
    required: bool = True,
    help: str | None = None,
) -> None:
    """``--catalog URL`` (default ``$ODIBI_OBSERVE_CATALOG_URL``); a bare path is a SQLite
    file. A read-only command never creates that file. ``help`` replaces the standard text
    where a command reads more than SQL catalogs, or reads only part of one."""
    missing = "; a missing file is an error, never created" if read_only else ""
    parser.add_argument(
        "--catalog",
        metavar="URL",
        default=None,
        type=catalog_url,
        help=help
        or f"SQLAlchemy URL of the catalog, e.g. sqlite:///catalog.db or "
        f"postgresql://user@host/db{extra}, or a path to a SQLite file (catalog.db means "
        f"sqlite:///catalog.db{missing}) "
        f"({'required; ' if required else ''}default: ${CATALOG_ENV})",
    )


def resolve_catalog(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """``--catalog``, else ``$ODIBI_OBSERVE_CATALOG_URL`` (a bare path there too), else a
    usage error."""
    url = getattr(args, "catalog", None) or catalog_url(os.environ.get(CATALOG_ENV, ""))
    if not url:
        parser.error(f"--catalog URL is required (or set {CATALOG_ENV})")
    return str(url)


def open_catalog(url: str) -> Engine:
    """An engine that only reads the catalog at ``url`` (a SQLite file opened ``mode=ro``,
    never created); :class:`~odibi_observe.config.ConfigurationError` with the one line to
    print (password hidden) when it cannot be read."""
    from odibi_observe.catalog.readonly import CatalogUnreadable, open_readonly_engine

    try:
        return open_readonly_engine(url)
    except CatalogUnreadable as exc:
        raise ConfigurationError(str(exc)) from None


def traces_arg(parser: argparse.ArgumentParser | Any, help: str) -> None:
    """``--traces SOURCE``, repeatable: ``otlp-json:PATH``, ``ledger:URL``, ``tempo:URL``."""
    parser.add_argument("--traces", metavar="SOURCE", action="append", default=[], help=help)


#: The window of the commands that judge recent runs, when none is given.
DEFAULT_LAST: Final = timedelta(hours=24)
SINCE_HELP: Final = (
    "window start: ISO 8601 (2024-05-01 or 2024-05-01T06:00:00Z) or a duration ago (6h)"
)
UNTIL_HELP: Final = "window end, ISO 8601 or a duration ago (default: now)"


def window_args(
    group: argparse.ArgumentParser | Any,
    *,
    last: str,
    since: str = SINCE_HELP,
    until: str = UNTIL_HELP,
    last_type: Callable[[str], timedelta] = span_arg,
) -> None:
    """``--since TIME``, ``--until TIME`` and ``--last DURATION`` in ``group``, with the
    command's own words for each; :func:`check_window` applies their rules."""
    group.add_argument("--since", metavar="TIME", type=time_arg, help=since)
    group.add_argument("--until", metavar="TIME", type=time_arg, help=until)
    group.add_argument("--last", metavar="DURATION", type=last_type, help=last)


def check_window(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A usage error unless the window is either ``--last`` or ``--since`` (with or without
    ``--until``)."""
    if args.last is not None and (args.since is not None or args.until is not None):
        parser.error("give either --last or --since/--until, not both")
    if args.until is not None and args.since is None:
        parser.error("--until needs --since")


def window_bounds(args: argparse.Namespace, now: datetime) -> tuple[datetime, datetime]:
    """``(since, until)``: ``--since`` to ``--until`` (or ``now``), else the ``--last``
    (:data:`DEFAULT_LAST`) before ``now``."""
    if args.since is not None:
        return args.since, args.until or now
    return now - (args.last or DEFAULT_LAST), now


def log_level_arg(parser: argparse.ArgumentParser | Any, default: str = "warning") -> None:
    """``--log-level``: what odibi-observe's own log says on stderr."""
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        type=str.lower,
        choices=LOG_LEVELS,
        help=f"debug, info, warning or error, to stderr (default: {default}; "
        f"env {setting('log_level').env})",
    )
    parser.set_defaults(log_default=default)


def setup_logging(args: argparse.Namespace) -> None:
    """odibi-observe's own log to stderr at ``--log-level`` (else the variable, else the
    command's default). A process whose logging is set up already keeps its handlers."""
    raw = getattr(args, "log_level", None) or os.environ.get(str(setting("log_level").env))
    level = str(raw or getattr(args, "log_default", "warning")).strip().lower()
    if level not in LOG_LEVELS:
        raise ConfigurationError(
            f"{setting('log_level').env}={level!r}: choose from {', '.join(LOG_LEVELS)}"
        )
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level.upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    logging.getLogger("odibi_observe").setLevel(level.upper())
    if level != "debug":
        # Alembic narrates every migration check at INFO.
        logging.getLogger("alembic").setLevel(logging.WARNING)


def json_arg(
    parser: argparse.ArgumentParser | Any, what: str = "the summary", *, help: str | None = None
) -> None:
    """``--json``: what the command prints, as JSON on stdout instead of text."""
    parser.add_argument(
        "--json", action="store_true", help=help or f"print {what} as JSON on stdout, for scripts"
    )


def check_out_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` if it is, or can be created as, a writable directory; else
    :class:`~odibi_observe.config.ConfigurationError` naming the problem. Creates nothing,
    so that a command that fails later leaves no empty directory behind."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"{option} {str(out)!r} is a file, not a directory")
    probe = out
    while not probe.exists():
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        raise ConfigurationError(
            f"{option} {str(out)!r}: {str(probe)!r} is a file, so the directory cannot be created"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == out else f"cannot be created in {str(probe)!r}"
        raise ConfigurationError(f"{option} {str(out)!r} {what} (permission denied)")
    return out


def make_out_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """:func:`check_out_dir`, then create it; a failure is a ConfigurationError too."""
    out = check_out_dir(path, option)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"{option} {str(out)!r} cannot be created: {exc.strerror or exc}"
        ) from None
    return out


def out_arg(parser: argparse.ArgumentParser | Any, default: str, help: str) -> None:
    """``--out DIR``: where the command writes (checked before any work, see
    :func:`check_out_dir`)."""
    parser.add_argument(
        "--out", metavar="DIR", default=default, help=f"{help} (default: %(default)s)"
    )


def report_args(parser: argparse.ArgumentParser | Any, *, stem: str, out: str) -> None:
    """``--format FORMATS`` and ``--out DIR`` of a command that writes ``STEM.json``,
    ``STEM.md`` and ``STEM.html`` (see :func:`write_reports`)."""
    parser.add_argument(
        "--format",
        default=",".join(REPORT_FORMATS),
        type=formats_arg,
        metavar="FORMATS",
        help="reports to write, comma-separated: json, md (or markdown), html (default: all three)",
    )
    files = ", ".join(f"{stem}.{f}" for f in REPORT_FORMATS)
    out_arg(parser, out, f"directory for {files}")


def metrics_textfile_arg(parser: argparse.ArgumentParser | Any, gauges: str) -> None:
    """``--metrics-textfile PATH``: the command's gauges for node_exporter."""
    parser.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help=f"write {gauges} gauges to this Prometheus text file "
        "(node_exporter's textfile collector)",
    )


def check_report_outputs(args: argparse.Namespace) -> None:
    """``--out`` and ``--metrics-textfile``'s directory, checked before any work (see
    :func:`check_out_dir`)."""
    check_out_dir(args.out)
    if args.metrics_textfile:
        check_out_dir(Path(args.metrics_textfile).parent, "--metrics-textfile")


def write_reports(
    args: argparse.Namespace,
    stem: str,
    writers: Mapping[str, Callable[[Path], object]],
    metrics: Callable[[str], object],
) -> list[str]:
    """Write ``STEM.FORMAT`` under ``--out`` for each ``--format`` (``writers[FORMAT](path)``
    writes one), then ``--metrics-textfile``; the paths written, in that order.

    :class:`~odibi_observe.config.ConfigurationError` with the line to print when one cannot
    be written: the result stands, and exit status 2 says the reports do not.
    """
    out = make_out_dir(args.out)
    written = []
    try:
        for name in REPORT_FORMATS:
            if name in args.format:
                path = out / f"{stem}.{name}"
                writers[name](path)
                written.append(str(path))
        if args.metrics_textfile:
            metrics(args.metrics_textfile)
            written.append(args.metrics_textfile)
    except OSError as exc:
        raise ConfigurationError(_hidden(f"cannot write the reports: {exc}")) from None
    return written


# -- text ---------------------------------------------------------------------------------------


def first_line(value: object) -> str:
    """The first line of ``value``'s text, redacted: what an error line shows of an error."""
    text = str(value).strip()
    return redact(text.splitlines()[0] if text else "")
