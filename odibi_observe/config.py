"""Settings: one table, their precedence, and what happens to a bad one.

:data:`SETTINGS` is the one table of every setting of the library and of the sidecar: its
name, environment variable, parser, default and meaning. :class:`Settings` (the pipeline's
``configure()`` keywords), :func:`resolve_settings`, :class:`~odibi_observe.sidecar.SidecarOptions`,
the ``odibi-observe sidecar``/``sweep`` options and the table in ``docs/configuration.md``
(:func:`settings_markdown`) are all derived from it, so a name or a default is written once.

Every pipeline setting can come from several places. The first that is set wins:

1. an argument to :func:`odibi_observe.configure` (``None`` means "not set");
2. an ``ODIBI_OBSERVE_<NAME>`` environment variable (``ODIBI_OBSERVE_CATALOG_URL``, ...);
3. the standard OpenTelemetry variable, where one exists: ``OTEL_SERVICE_NAME``,
   ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
   ``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` and
   ``deployment.environment`` in it are honoured too);
4. the default in the table.

An ``ODIBI_OBSERVE_*`` variable beats its ``OTEL_*`` counterpart because it is the more
specific statement: a deployment may point the whole process's OTel SDK at one collector and
odibi-observe's node spans at another.

Invalid values never raise into the pipeline at run time. :func:`resolve` sets a bad value
aside — that setting alone takes its default, every other setting is kept — and says why in
:attr:`Resolution.problems` (the variable or keyword, the value, what is expected), which
:func:`~odibi_observe.configure` logs once. :func:`resolve_settings` raises
:class:`ConfigurationError` on the first problem instead (``strict=True``, tests, CLIs).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from odibi_observe.conventions import RESOURCE_SERVICE_NAME

ENV_PREFIX: Final = "ODIBI_OBSERVE_"

MODES: Final = ("inline", "background", "sidecar")
FSYNC_POLICIES: Final = ("always", "interval", "never")
OTLP_PROTOCOLS: Final = ("http/protobuf", "http/json", "grpc")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

#: Where a setting is read: by pipelines (``configure()``), by the sidecar, or by both.
PIPELINE: Final = "pipeline"
SIDECAR: Final = "sidecar"
BOTH: Final = "pipeline, sidecar"


class ConfigurationError(ValueError):
    """A setting has a value odibi-observe cannot use; the message names the setting."""


# -- value parsers shared by the settings and the command line ----------------------------------

_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off"}
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS: Final = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_bool(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case)."""
    low = text.strip().lower()
    if low in _TRUE | _FALSE:
        return low in _TRUE
    raise ValueError(f"{text!r} is not true or false")


def parse_positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{text!r} is not a positive whole number")
    return value


def parse_duration(text: str) -> float:
    """``"30s"``, ``"5m"``, ``"1.5h"``, ``"250ms"``, ``"2d"`` or ``"45"`` → seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m or 1h")
    return float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]


def parse_size(text: str) -> int:
    """``"512MiB"`` (binary), ``"100MB"`` (decimal), ``"64k"``/``"1G"`` (binary) or bytes.

    The one size parser: pipelines (``ODIBI_OBSERVE_SPOOL_MAX_BYTES``) and the sidecar
    (``--spool-max-bytes``, ``--max-body``) accept the same text.
    """
    match = _SIZE.match(text)
    if match is None or (match.group(3) and not match.group(2)):
        raise ValueError(f"{text!r} is not a size like 512MiB, 1GiB or 100MB")
    number, prefix, binary, byte = match.groups()
    power = _POWERS[prefix.lower()]
    # "MB" is decimal (SI); "MiB", and a bare "M" as in most tools' flags, are binary.
    base = 1000 if (byte and not binary) else 1024
    value = int(float(number) * base**power)
    if value < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return value


def format_size(n: int) -> str:
    """Bytes as the shortest exact ``GiB``/``MiB``/``KiB``/``B`` text (parse_size reads it)."""
    for unit, power in (("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if n >= 1024**power and n % 1024**power == 0:
            return f"{n // 1024**power}{unit}"
    return f"{n}B"


def format_duration(seconds: float) -> str:
    """Seconds as ``1h``, ``5m`` or ``30s`` text (parsed back by parse_duration)."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT`` → ``(host, port)``.

    An address without a host means 127.0.0.1, never "all interfaces": listening on every
    interface must be asked for explicitly (``0.0.0.0:9464``). Raises ``ValueError``.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    else:
        host, port = "", text
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number (HOST:PORT)") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{text!r}: port {number} is not a TCP port")
    return host or setting("sidecar_listen").default[0], number


# -- coercers: a text (variable, option) or a keyword's typed value → the setting's value ------
# Each raises ValueError("expected ...") so that the message says what would have worked.

Coerce = Callable[[Any], Any]


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if not _is_text(value) or not value.strip():
        raise ValueError("expected a non-empty string")
    return str(value)


def _path(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not _is_text(value) or not value:
        raise ValueError("expected a path")
    return str(value)


def _choice(*options: str, fold: bool = False) -> Coerce:
    def coerce(value: Any) -> str:
        text = value.strip().lower() if fold and _is_text(value) else value
        if not _is_text(text) or text.strip() not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return str(text).strip()

    return coerce


def _port(value: Any) -> int:
    try:
        number = int(value) if _is_text(value) or isinstance(value, int) else -1
    except ValueError:
        number = -1
    if isinstance(value, bool) or not 0 <= number <= 65535:
        raise ValueError("expected a TCP port number, 0 to 65535 (0: any free port)")
    return number


def _at_least_one(parse: Callable[[str], int], expected: str) -> Callable[[Any], int]:
    """A whole number of at least 1, given as an ``int`` or as text that ``parse`` reads
    (which raises ``ValueError`` on anything else); ``bool`` is not a number here."""

    def coerce(value: Any) -> int:
        try:
            if _is_text(value):
                return parse(value)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                return value
        except ValueError:
            pass
        raise ValueError(f"expected {expected}")

    return coerce


_count: Final = _at_least_one(parse_positive_int, "a whole number of at least 1")
_size: Final = _at_least_one(
    parse_size, "a size like 512MiB, 1GiB or 100MB (a bare number is bytes)"
)


def _seconds(*, zero: bool) -> Coerce:
    what = "a duration like 250ms, 30s, 5m or 1h (a bare number is seconds)"
    what += ", 0 or more" if zero else ", more than 0"

    def coerce(value: Any) -> float:
        try:
            seconds = (
                parse_duration(value)
                if _is_text(value)
                else (float(value) if _number(value) else -1.0)
            )
        except ValueError:
            seconds = -1.0
        if not (seconds >= 0 if zero else seconds > 0) or seconds == float("inf"):
            raise ValueError(f"expected {what}")
        return seconds

    return coerce


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if _is_text(value):
        try:
            return parse_bool(value)
        except ValueError:
            pass
    raise ValueError("expected true or false (also 1/0, yes/no, on/off)")


def _listen(value: Any) -> tuple[str, int]:
    if isinstance(value, tuple):
        return value
    if not _is_text(value):
        raise ValueError("expected HOST:PORT")
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise ValueError(f"expected HOST:PORT, [IPv6]:PORT or PORT ({exc})") from None


def _attributes(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of attribute names to values")
    return {str(k): str(v) for k, v in value.items()}


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ":".join(str(v) for v in value)
    return str(value)


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting, declared once.

    ``name`` is the ``configure()`` keyword (pipeline settings) and the table's key; the
    environment variable is ``ODIBI_OBSERVE_`` + ``NAME`` (none when ``env=False``).
    ``parser`` turns a variable's or option's text, or a keyword's typed value, into the value,
    or raises ``ValueError("expected ...")``. ``otel`` lists the OpenTelemetry fallbacks, in
    order (``resource:KEY`` is a key of ``OTEL_RESOURCE_ATTRIBUTES``). ``flag`` is the option
    of ``odibi-observe sidecar``/``sweep``; ``option`` the :class:`SidecarOptions` field when
    it is not ``name``. ``factory`` computes a default at start-up (the host name).
    """

    name: str
    parser: Coerce
    default: Any
    doc: str
    scope: str = PIPELINE
    otel: tuple[str, ...] = ()
    flag: str | None = None
    option: str | None = None
    env_var: bool = True
    factory: Callable[[], Any] | None = None
    show: Callable[[Any], str] = _show
    default_text: str = ""

    @property
    def env(self) -> str | None:
        """The ``ODIBI_OBSERVE_*`` variable, or None for a setting with no variable."""
        return ENV_PREFIX + self.name.upper() if self.env_var else None

    @property
    def pipeline(self) -> bool:
        return PIPELINE in self.scope

    @property
    def sidecar(self) -> bool:
        return SIDECAR in self.scope

    @property
    def dest(self) -> str:
        """The argparse destination of :attr:`flag` (``--max-body`` → ``max_body``)."""
        return (self.flag or self.name).lstrip("-").replace("-", "_")

    def shown_default(self) -> str:
        """The default as the docs and ``--help`` print it."""
        return self.default_text or self.show(self.default)


_SIZE_SHOW: Final = format_size
_SECONDS_SHOW: Final = format_duration

SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("project", _text, "default", "`project` column, `odibi.project`, label `project`"),
    Setting(
        "environment",
        _text,
        "dev",
        "`environment` column / attribute / label",
        otel=("resource:deployment.environment.name", "resource:deployment.environment"),
    ),
    Setting(
        "service_name",
        _text,
        "odibi-pipeline",
        "resource `service.name` of node spans",
        otel=("OTEL_SERVICE_NAME", f"resource:{RESOURCE_SERVICE_NAME}"),
    ),
    Setting(
        "catalog_url",
        _text,
        None,
        "SQLAlchemy URL of `meta_runs`: `sqlite:///catalog.db`, `postgresql://user:pw@host/db` "
        "(psycopg 3 is used for `postgresql://`); none: no catalog sink. The sidecar's "
        "`--catalog` (required there)",
        scope=BOTH,
        flag="--catalog",
    ),
    Setting(
        "otlp_endpoint",
        _text,
        None,
        "OTLP receiver; `/v1/traces` is appended for HTTP when missing",
        otel=("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ),
    Setting(
        "otlp_protocol",
        _choice(*OTLP_PROTOCOLS),
        "http/protobuf",
        "`http/protobuf`, `http/json` or `grpc` (`pip install 'odibi-observe[grpc]'`)",
        otel=("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ),
    Setting(
        "otlp_timeout", _seconds(zero=False), 10.0, "time per export attempt", show=_SECONDS_SHOW
    ),
    Setting(
        "traces_file",
        _path,
        None,
        "append spans as OTLP-JSON lines (one `ExportTraceServiceRequest` per line, the "
        "Collector `file` exporter format)",
    ),
    Setting(
        "prometheus_port",
        _port,
        None,
        "serve `/metrics` on this port (0 = any free port); none: not served",
    ),
    Setting(
        "prometheus_host",
        _text,
        "127.0.0.1",
        "bind address of `/metrics`; loopback unless you say otherwise",
    ),
    Setting(
        "prometheus_textfile",
        _path,
        None,
        "write the registry in text format here on every flush (node_exporter textfile "
        "collector, batch jobs)",
    ),
    Setting(
        "mode",
        _choice(*MODES),
        "background",
        "`background`: worker threads deliver; `inline`: sinks are called before the node "
        "returns; `sidecar`: each event is appended to the spool and the sidecar delivers "
        "it. Unset with `spool_dir` set: `sidecar`",
    ),
    Setting(
        "resource_attributes",
        _attributes,
        None,
        "extra resource attributes (argument values merge over the environment's)",
        otel=("OTEL_RESOURCE_ATTRIBUTES",),
        env_var=False,
        factory=dict,
        default_text="{}",
    ),
    Setting(
        "max_queue", _count, 10_000, "events queued per sink before the oldest is dropped (counted)"
    ),
    Setting("max_batch", _count, 512, "events per export call"),
    Setting(
        "flush_interval",
        _seconds(zero=True),
        0.1,
        "how long a batch may wait to fill",
        show=_SECONDS_SHOW,
    ),
    Setting(
        "max_label_series",
        _count,
        2_000,
        "distinct (project, pipeline, node, environment) series before folding into "
        '`node="__overflow__"`',
    ),
    Setting("max_attribute_length", _count, 4_096, "characters per string attribute"),
    Setting("max_error_message_length", _count, 8_192, "characters of a stored error message"),
    Setting(
        "max_error_stack_length",
        _count,
        16_384,
        "characters of a stored traceback (`error_stack`, `exception.stacktrace`; the "
        "innermost frames kept)",
    ),
    Setting(
        "task_run_url_template",
        _text,
        None,
        "link of a node run on its span (`cicd.pipeline.task.run.url.full`), e.g. to the "
        "Grafana drill-down; placeholders `{run_id}`, `{pipeline}`, `{node}`, `{project}`, "
        "`{pipeline_run_id}`, `{environment}`; an unusable one is warned about once and "
        "left out",
    ),
    Setting("max_name_length", _count, 255, "characters of project / pipeline / node names"),
    Setting(
        "handle_sigterm",
        _bool,
        True,
        "close running nodes as `CRASHED` on SIGTERM (only when no other handler is installed)",
    ),
    Setting("otel_metrics", _bool, True, "record the `odibi.node.*` OpenTelemetry metrics"),
    Setting(
        "openlineage",
        _bool,
        None,
        "OpenLineage run events (`pip install 'odibi-observe[openlineage]'`), sent where "
        "the OpenLineage client's own configuration says (`OPENLINEAGE_URL`, "
        "`openlineage.yml`, `OPENLINEAGE__TRANSPORT__*`); none: on when that configuration "
        "is present; false: off",
        default_text="on when OpenLineage is configured",
    ),
    Setting(
        "host",
        _text,
        None,
        "the `host` column and `host.name`: this host's runs are "
        "the ones its sidecar may judge by pid",
        factory=socket.gethostname,
        default_text="this host's name",
    ),
    Setting(
        "spool_dir",
        _path,
        None,
        "the spool directory shared by the pipelines and the sidecar; giving it without "
        '`mode` means `mode="sidecar"`. The sidecar\'s `--spool-dir` (required there)',
        scope=BOTH,
        flag="--spool-dir",
    ),
    Setting(
        "spool_fsync",
        _choice(*FSYNC_POLICIES),
        "interval",
        "`always` (fsync per event), `interval` (at most once a second), `never` (the OS "
        "decides); the sidecar's `--fsync` for its own writes",
        scope=BOTH,
        flag="--fsync",
        option="fsync",
    ),
    Setting(
        "spool_max_bytes",
        _size,
        512 * 2**20,
        "size limit of the whole spool directory; past it new events are refused and "
        "counted (each writer checks its own appends)",
        scope=BOTH,
        flag="--spool-max-bytes",
        show=_SIZE_SHOW,
    ),
    Setting(
        "heartbeat_interval",
        _seconds(zero=True),
        30.0,
        "time between heartbeats of a running node (`heartbeat_at`); 0 turns them off",
        show=_SECONDS_SHOW,
    ),
    Setting(
        "exit_timeout",
        _seconds(zero=True),
        3.0,
        "time the process may spend delivering at exit (`atexit`, SIGTERM), shared by all "
        "sinks; what is not delivered by then is appended to `spool_dir`, else "
        "`~/.local/state/odibi-observe/spool`, for `odibi-observe sweep --spool-dir` or a "
        "sidecar",
        show=_SECONDS_SHOW,
    ),
    # -- the sidecar's (odibi-observe sidecar / sweep) --
    Setting(
        "sidecar_listen",
        _listen,
        ("127.0.0.1", 9464),
        "address of `/metrics`, `/healthz` and `/v1/traces`; `PORT` alone means "
        "127.0.0.1 (9464: the port OpenTelemetry's Prometheus exporter uses)",
        scope=SIDECAR,
        flag="--listen",
    ),
    Setting(
        "sidecar_token_file",
        _path,
        None,
        "require `Authorization: Bearer TOKEN` on `POST /v1/traces`, TOKEN read from this file",
        scope=SIDECAR,
        flag="--token-file",
    ),
    Setting(
        "sidecar_token",
        _text,
        None,
        "the token itself (never on the command line, where `ps` shows it)",
        scope=SIDECAR,
        option="token",
    ),
    # The Collector's own default is 20 MiB; an SDK batch of 512 node spans is under 1 MiB.
    # An SDK batch of 512 node spans is well under 1 MiB, a Collector batch of 8 192 spans a
    # few MiB. Each export being decoded takes about 7x its body in memory, two at a time
    # (docs/operations.md, "Sizing the sidecar"): 8 MiB keeps a sidecar inside 256 MiB.
    Setting(
        "sidecar_max_body",
        _size,
        8 * 2**20,
        "largest OTLP request body, compressed or not; larger is `413`; each export "
        "being decoded takes about 7x this in memory",
        scope=SIDECAR,
        flag="--max-body",
        option="max_body_bytes",
        show=_SIZE_SHOW,
    ),
    Setting(
        "sidecar_ledger",
        _bool,
        True,
        "store node spans received on `/v1/traces` in the span ledger; off: `404`",
        scope=SIDECAR,
        flag="--ledger",
        option="ledger",
    ),
    Setting(
        "sweep_interval",
        _seconds(zero=True),
        30.0,
        "how often RUNNING runs whose process is gone are closed; 0 turns the sweeper off",
        scope=SIDECAR,
        flag="--sweep-interval",
        show=_SECONDS_SHOW,
    ),
    Setting(
        "heartbeat_timeout",
        _seconds(zero=False),
        300.0,
        "a run not checkable by pid is crashed after no heartbeat for this long",
        scope=SIDECAR,
        flag="--heartbeat-timeout",
        show=_SECONDS_SHOW,
    ),
    Setting(
        "sweep_all_hosts",
        _bool,
        False,
        "also sweep other hosts' runs, by heartbeat",
        scope=SIDECAR,
        flag="--all-hosts",
        option="all_hosts",
    ),
    Setting(
        "sweep_pid_check",
        _bool,
        True,
        "judge this host's runs by their pid; off in another pid namespace",
        scope=SIDECAR,
        flag="--pid-check",
        option="pid_check",
    ),
    Setting(
        "spool_gc_interval",
        _seconds(zero=True),
        60.0,
        "how often spool segments every sink has passed are deleted; 0: never",
        scope=SIDECAR,
        flag="--gc-interval",
        option="gc_interval",
        show=_SECONDS_SHOW,
    ),
    # Below Kubernetes' default 30 s termination grace period, with room for the rest of stop().
    Setting(
        "sidecar_drain_timeout",
        _seconds(zero=True),
        10.0,
        "on SIGTERM, how long to keep delivering spooled events to the sinks that work",
        scope=SIDECAR,
        flag="--drain-timeout",
        option="drain_timeout",
        show=_SECONDS_SHOW,
    ),
    Setting(
        "sidecar_stuck_after",
        _seconds(zero=False),
        120.0,
        "`/healthz` answers 503 when a loop is this late or an export runs this long",
        scope=SIDECAR,
        flag="--stuck-after",
        option="stuck_after",
        show=_SECONDS_SHOW,
    ),
    # Twice the SDK's span batch: a batch holds a STARTED and a FINISHED event per run, so the
    # OTel sink still exports at most ~512 spans per request, while the catalog commits (and
    # the cursor acknowledges) half as often as with 512.
    Setting(
        "sidecar_max_batch",
        _count,
        1024,
        "spooled events per export: one catalog transaction, one OTLP request",
        scope=SIDECAR,
        flag="--max-batch",
        option="max_batch",
    ),
    Setting(
        "log_level",
        _choice(*LOG_LEVELS, fold=True),
        "info",
        "`debug`, `info`, `warning` or `error`, to stderr (`sweep`: `error`)",
        scope=SIDECAR,
        flag="--log-level",
    ),
)

_BY_NAME: Final = {s.name: s for s in SETTINGS}


def setting(name: str) -> Setting:
    """The table entry ``name`` (``KeyError`` for a name that is not in the table)."""
    return _BY_NAME[name]


def sidecar_setting(option: str) -> Setting:
    """The table entry behind the :class:`SidecarOptions` field ``option``."""
    for s in SETTINGS:
        if s.sidecar and (s.option or s.name) == option:
            return s
    raise KeyError(option)


def _field(name: str) -> Any:
    """A dataclass field whose default is the table's (``Settings`` declares only types)."""
    s = _BY_NAME[name]
    if s.factory is not None:
        return field(default_factory=s.factory)
    return field(default=s.default)


def option_field(option: str) -> Any:
    """The :class:`SidecarOptions` field ``option``, its default from the table."""
    return field(default=sidecar_setting(option).default)


@dataclass(frozen=True)
class Settings:
    """Resolved pipeline configuration. Field names are the ``configure()`` keywords; each
    field's default comes from :data:`SETTINGS` (a test holds the two in step)."""

    project: str = _field("project")
    environment: str = _field("environment")
    service_name: str = _field("service_name")
    catalog_url: str | None = _field("catalog_url")
    otlp_endpoint: str | None = _field("otlp_endpoint")
    otlp_protocol: str = _field("otlp_protocol")
    otlp_timeout: float = _field("otlp_timeout")
    traces_file: str | None = _field("traces_file")
    prometheus_port: int | None = _field("prometheus_port")
    prometheus_host: str = _field("prometheus_host")
    prometheus_textfile: str | None = _field("prometheus_textfile")
    mode: str = _field("mode")
    resource_attributes: Mapping[str, str] = _field("resource_attributes")
    max_queue: int = _field("max_queue")
    max_batch: int = _field("max_batch")
    flush_interval: float = _field("flush_interval")
    max_label_series: int = _field("max_label_series")
    max_attribute_length: int = _field("max_attribute_length")
    max_error_message_length: int = _field("max_error_message_length")
    max_error_stack_length: int = _field("max_error_stack_length")
    task_run_url_template: str | None = _field("task_run_url_template")
    max_name_length: int = _field("max_name_length")
    handle_sigterm: bool = _field("handle_sigterm")
    otel_metrics: bool = _field("otel_metrics")
    openlineage: bool | None = _field("openlineage")
    host: str = _field("host")
    spool_dir: str | None = _field("spool_dir")
    spool_fsync: str = _field("spool_fsync")
    spool_max_bytes: int = _field("spool_max_bytes")
    heartbeat_interval: float = _field("heartbeat_interval")
    exit_timeout: float = _field("exit_timeout")

    def describe(self) -> dict[str, Any]:
        """Settings as a dict safe to print: the catalog URL's password is hidden."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.catalog_url:
            out["catalog_url"] = hide_password(self.catalog_url)
        out["resource_attributes"] = dict(self.resource_attributes)
        return out


PIPELINE_SETTINGS: Final = tuple(s for s in SETTINGS if s.pipeline)

# -- resolution --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A value set aside: what was wrong (``message``) and what is used instead."""

    message: str
    instead: str

    def __str__(self) -> str:
        return f"{self.message}; {self.instead}"


@dataclass(frozen=True)
class Resolution:
    """The outcome of :func:`resolve`: the settings, and what was set aside or inferred.

    ``problems`` are values that could not be used (each set aside alone, its default taken);
    ``notes`` are decisions the user should hear about once (``spool_dir`` without ``mode``).
    ``sources`` says where each set value came from: ``"keyword"``, the variable's name, or
    absent for a default.
    """

    settings: Settings
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)


def resolve(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Resolution:
    """Apply the precedence above; set aside each unusable value and say why."""
    env = os.environ if environ is None else environ
    args = {k: v for k, v in (overrides or {}).items() if v is not None}
    problems = [
        Problem(f"unknown setting {name}={args.pop(name)!r}: not a configure() keyword", "ignored")
        for name in sorted(set(args) - {s.name for s in PIPELINE_SETTINGS})
    ]
    resource = parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in PIPELINE_SETTINGS:
        for source, raw in _candidates(s, args, env, resource):
            try:
                values[s.name] = s.parser(raw)
            except ValueError as exc:
                # The variable's name, or the keyword's; an OTel fallback names both.
                label = source if source == s.env else s.name
                other = "" if source in ("keyword", s.env) else f" from {source}"
                problems.append(
                    Problem(
                        f"{label}={raw!r}{other}: {exc}",
                        f"ignored, using the default {s.name}={s.shown_default()}",
                    )
                )
            else:
                sources[s.name] = source
            break  # the first place that is set decides, usable or not
    values["resource_attributes"] = {**resource, **values.get("resource_attributes", {})}
    notes: list[str] = []
    _resolve_mode(values, sources, problems, notes)
    return Resolution(Settings(**values), tuple(problems), tuple(notes), sources)


def _candidates(
    s: Setting, args: Mapping[str, Any], env: Mapping[str, str], resource: Mapping[str, str]
) -> list[tuple[str, Any]]:
    """Where ``s`` is set, in precedence order, as (source, raw value) pairs."""
    found: list[tuple[str, Any]] = []
    if s.name in args:
        found.append(("keyword", args[s.name]))
    if s.env and env.get(s.env):
        found.append((s.env, env[s.env]))
    if s.name == "resource_attributes":
        return found
    for fallback in s.otel:
        if fallback.startswith("resource:"):
            raw = resource.get(fallback.removeprefix("resource:"))
            if raw:
                found.append(("OTEL_RESOURCE_ATTRIBUTES", raw))
        elif env.get(fallback):
            found.append((fallback, env[fallback]))
    return found


def _resolve_mode(
    values: dict[str, Any], sources: dict[str, str], problems: list[Problem], notes: list[str]
) -> None:
    """``spool_dir`` alone means sidecar mode; sidecar mode without a spool is set aside."""
    mode, spool_dir = values.get("mode"), values.get("spool_dir")
    if mode is None and spool_dir:
        values["mode"] = "sidecar"
        notes.append(
            f"spool_dir={spool_dir!r} is set ({_source(sources, 'spool_dir')}) and mode is "
            f"not: recording in mode='sidecar' (each event appended to the spool, the sidecar "
            f"delivers it); set mode (ODIBI_OBSERVE_MODE) to say so explicitly"
        )
    elif mode == "sidecar" and not spool_dir:
        del values["mode"]
        problems.append(
            Problem(
                f"{_label(sources, 'mode')}='sidecar' needs spool_dir (ODIBI_OBSERVE_SPOOL_DIR), "
                f"the directory shared with the sidecar",
                f"ignored, recording in-process in mode='{setting('mode').default}'",
            )
        )


def _source(sources: Mapping[str, str], name: str) -> str:
    source = sources.get(name, "default")
    return f"configure({name}=...)" if source == "keyword" else source


def _label(sources: Mapping[str, str], name: str) -> str:
    source = sources.get(name, name)
    return name if source == "keyword" else source


def resolve_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Apply the precedence above; raise :class:`ConfigurationError` on an unusable value."""
    result = resolve(overrides, environ)
    if result.problems:
        raise ConfigurationError(result.problems[0].message)
    return result.settings


# -- the docs' table ---------------------------------------------------------------------------


def settings_markdown() -> str:
    """The settings table of ``docs/configuration.md`` (a test keeps the two identical)."""
    lines = [
        "| setting | environment | OTel fallback | sidecar option | read by | default "
        "| what it does |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        fallback = (
            ", ".join(
                f"`{f.removeprefix('resource:')}` in `OTEL_RESOURCE_ATTRIBUTES`"
                if f.startswith("resource:")
                else f"`{f}`"
                for f in s.otel
            )
            or "—"
        )
        lines.append(
            f"| `{s.name}` | {f'`{s.env}`' if s.env else '—'} | {fallback} | "
            f"{f'`{s.flag}`' if s.flag else '—'} | {s.scope} | `{s.shown_default()}` | "
            f"{s.doc} |"
        )
    return "\n".join(lines) + "\n"


def parse_resource_attributes(raw: str) -> dict[str, str]:
    """Parse ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, values percent-decoded)."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for part in raw.split(","):
        if "=" not in part:
            continue
        key, _, value = part.partition("=")
        if key.strip():
            out[key.strip()] = unquote(value.strip())
    return out


def hide_password(url: str) -> str:
    """Render a database URL with its password replaced by ``***``.

    Uses SQLAlchemy's parser when the URL is one; falls back to the text redactor otherwise,
    so even a malformed URL is never printed with its secret.
    """
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        from odibi_observe._redact import redact

        return redact(url)
