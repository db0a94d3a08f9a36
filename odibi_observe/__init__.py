"""odibi-observe: every node run recorded once, identically, in traces, catalog and metrics.

The public API::

    import odibi_observe as oo

    oo.configure(catalog_url="sqlite:///catalog.db", traces_file="traces.jsonl")

    @oo.observe_node(pipeline="sales")
    def clean(df):
        oo.current_run().suggest("check the upstream export if rows drop to zero")
        return df.dropna()

    with oo.node_run("sales", "publish") as run:
        run.rows_processed = publish()

    oo.flush(timeout=10)

This module's ``__all__`` is the contract for pipelines. Extensions have theirs in their own
public modules: ``odibi_observe.sinks.base`` (the sink contract), ``odibi_observe.extensions``
(registering sinks and sources), ``odibi_observe.testing`` and ``odibi_observe.testing.contracts``
(tests and conformance suites), ``odibi_observe.config`` and ``odibi_observe.conventions`` (the
settings and the names), and the command packages (``catalog``, ``reconcile``, ``health``,
``sidecar``, ``grafana``, ``statuspage``, ``integrations``). A module whose name starts with an
underscore (``odibi_observe._bus``, ``odibi_observe._runtime``, ...) is internal: it may change in
any release.
"""

from odibi_observe._instrument import (
    NodeRun,
    current_run,
    node_run,
    observe_node,
    pipeline_run,
)
from odibi_observe._runtime import Observer, configure, flush, get_observer, shutdown
from odibi_observe._version import __version__
from odibi_observe.config import ConfigurationError, Settings
from odibi_observe.conventions import FIELDS, METRICS, RunStatus
from odibi_observe.record import EventKind, RunEvent, RunHandle, RunRecord
from odibi_observe.sinks.base import Sink, SinkExportError

__all__ = [
    "FIELDS",
    "METRICS",
    "ConfigurationError",
    "EventKind",
    "NodeRun",
    "Observer",
    "RunEvent",
    "RunHandle",
    "RunRecord",
    "RunStatus",
    "Settings",
    "Sink",
    "SinkExportError",
    "__version__",
    "configure",
    "current_run",
    "flush",
    "get_observer",
    "node_run",
    "observe_node",
    "pipeline_run",
    "shutdown",
]
