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

Everything else is reachable through its module (``odibi_observe.sinks.catalog``, ...).
"""

from odibi_observe._instrument import (
    NodeRun,
    current_run,
    node_run,
    observe_node,
    pipeline_run,
)
from odibi_observe._runtime import Observer, configure, flush, get_observer, shutdown
from odibi_observe.config import ConfigurationError, Settings
from odibi_observe.conventions import FIELDS, METRICS, RunStatus
from odibi_observe.record import EventKind, RunEvent, RunHandle, RunRecord
from odibi_observe.sinks.base import Sink, SinkExportError

__version__ = "0.1.0"

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
