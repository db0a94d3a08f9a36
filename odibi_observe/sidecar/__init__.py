"""The per-host (or per-pod) sidecar: spool delivery, the sweeper, the span ledger, ``/metrics``.

Pipelines in ``mode="sidecar"`` append their run events to a spool directory and do nothing
else; the sidecar delivers them to the catalog, the OTLP exporter and Prometheus, closes the
runs whose process died, receives OTLP spans into the span ledger and serves ``/metrics`` and
``/healthz`` on one port. Modules:

* :mod:`~odibi_observe.sidecar.service` — :class:`Sidecar`, the process (pump, loops, shutdown);
* :mod:`~odibi_observe.sidecar.server` — the HTTP listener;
* :mod:`~odibi_observe.sidecar.receiver` — OTLP/HTTP ``/v1/traces``;
* :mod:`~odibi_observe.sidecar.ledger` — ``odibi_span_ledger`` writes and reads;
* :mod:`~odibi_observe.sidecar.sweeper` — closing crashed runs;
* :mod:`~odibi_observe.sidecar.commands` — ``odibi-observe sidecar`` and ``sweep``.

This module holds only what the command line needs to build its parser — the options and their
defaults — so that ``odibi-observe --help`` does not import SQLAlchemy and protobuf; the rest
is imported on first use (``from odibi_observe.sidecar import Sidecar`` works as usual).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from odibi_observe.config import FSYNC_POLICIES, ConfigurationError

if TYPE_CHECKING:
    from odibi_observe.sidecar.ledger import LedgerResult, SpanLedger
    from odibi_observe.sidecar.receiver import TraceReceiver
    from odibi_observe.sidecar.server import SidecarServer
    from odibi_observe.sidecar.service import Sidecar

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "TRACES_PATH",
    "LedgerResult",
    "Sidecar",
    "SidecarOptions",
    "SidecarServer",
    "SpanLedger",
    "TraceReceiver",
    "parse_listen",
]

DEFAULT_HOST: Final = "127.0.0.1"
#: The port OpenTelemetry's Prometheus exporter conventionally uses.
DEFAULT_PORT: Final = 9464
#: The OTLP/HTTP path of the traces signal.
TRACES_PATH: Final = "/v1/traces"
#: Largest accepted OTLP body, compressed or not. An SDK batch of 512 node spans is well
#: under 1 MiB and a Collector batch of 8 192 spans a few MiB. Each export being decoded
#: takes about 7x its body in memory (docs/operations.md, "Sizing the sidecar"), so with two
#: at a time the default keeps a sidecar well inside a 256 MiB container limit.
DEFAULT_MAX_BODY_BYTES: Final = 8 * 2**20
DEFAULT_SWEEP_INTERVAL: Final = 30.0
DEFAULT_HEARTBEAT_TIMEOUT: Final = 300.0
DEFAULT_FSYNC: Final = "interval"
DEFAULT_SPOOL_MAX_BYTES: Final = 512 * 2**20
DEFAULT_GC_INTERVAL: Final = 60.0
#: Below Kubernetes' default 30 s termination grace period, with room for the rest of stop().
DEFAULT_DRAIN_TIMEOUT: Final = 10.0
DEFAULT_STUCK_AFTER: Final = 120.0
#: Spooled events per export. Twice the SDK's span batch: a batch holds a STARTED and a
#: FINISHED event per run, so the OTel sink still exports at most ~512 spans per request,
#: while the catalog commits (and the cursor acknowledges) half as often as with 512.
DEFAULT_MAX_BATCH: Final = 1024


@dataclass(frozen=True)
class SidecarOptions:
    """Everything a sidecar is told; the CLI's options map one to one onto these fields.

    Durations are seconds, sizes bytes. ``sweep_interval=0`` turns the sweeper off (another
    sidecar sweeps, or ``odibi-observe sweep`` runs from cron). ``pid_check=False`` makes the
    sweeper judge runs by heartbeats only — required when the sidecar cannot see the pipeline
    processes (a container without a shared pid namespace), where every pid looks dead.
    ``ledger=False`` answers ``/v1/traces`` with 404. ``stuck_after`` is how late a loop, or
    how long an export, may be before ``/healthz`` says 503. ``max_batch`` is the number of
    spooled events per export; ``poll_interval`` how long an idle pump waits before looking
    at the spool again.
    """

    catalog_url: str
    spool_dir: str
    listen_host: str = DEFAULT_HOST
    listen_port: int = DEFAULT_PORT
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ledger: bool = True
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    all_hosts: bool = False
    pid_check: bool = True
    fsync: str = DEFAULT_FSYNC
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    gc_interval: float = DEFAULT_GC_INTERVAL
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    stuck_after: float = DEFAULT_STUCK_AFTER
    max_batch: int = DEFAULT_MAX_BATCH
    poll_interval: float = 0.2

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigurationError(
                f"fsync={self.fsync!r}: choose one of {', '.join(FSYNC_POLICIES)}")
        for name in ("sweep_interval", "gc_interval", "drain_timeout"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must be >= 0")
        for name in ("heartbeat_timeout", "stuck_after", "poll_interval"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be > 0")
        for name in ("spool_max_bytes", "max_body_bytes", "max_batch"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigurationError(f"listen port {self.listen_port} is not a TCP port")


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
    return host or DEFAULT_HOST, number


_LAZY: Final = {
    "LedgerResult": "odibi_observe.sidecar.ledger",
    "SpanLedger": "odibi_observe.sidecar.ledger",
    "TraceReceiver": "odibi_observe.sidecar.receiver",
    "SidecarServer": "odibi_observe.sidecar.server",
    "Sidecar": "odibi_observe.sidecar.service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
