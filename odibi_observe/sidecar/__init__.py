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
* :mod:`~odibi_observe.sidecar.commands` — ``odibi-observe sidecar`` and ``sweep``;
* :mod:`~odibi_observe.sidecar.options` — :class:`SidecarOptions` and the defaults.

This module defines nothing: it re-exports the options, which are all the command line needs
to build its parser, and imports the rest on first use through a module ``__getattr__``
(``from odibi_observe.sidecar import Sidecar`` works as usual), so that
``odibi-observe --help`` does not import SQLAlchemy and protobuf.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from odibi_observe.sidecar.options import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PORT,
    TRACES_PATH,
    SidecarOptions,
    parse_listen,
)

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
