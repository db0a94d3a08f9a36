"""Reconciliation: prove that every run is recorded identically in the catalog and the traces.

``odibi-observe reconcile`` (:mod:`.commands`) is this package on the command line. As a
library::

    from odibi_observe.reconcile import (
        Window, open_catalog_source, open_trace_source, reconcile, repair, write_json)

    catalog = open_catalog_source("sqlite:///catalog.db")
    traces = [open_trace_source("otlp-json:/var/log/otel")]
    with reconcile(catalog, traces, Window.last(timedelta(hours=24), grace=timedelta(
            minutes=15))) as result:
        repair(result, catalog, apply=False)       # annotate what --repair would do
        write_json(result, "report.json")
        print(result.summary())

Modules, one concept each: :mod:`.model` (runs, window, discrepancies), :mod:`.sources` (the
source contracts) with :mod:`.otlp_files`, :mod:`.ledger` and :mod:`.tempo`,
:mod:`.catalog_sources` with :mod:`.odibi_delta`, :mod:`.spill` (external sort),
:mod:`.engine` (the merge), :mod:`.repair`, :mod:`.report` (JSON, Markdown, recording,
metrics) and :mod:`.html`.
"""

from odibi_observe.reconcile.catalog_sources import (
    CatalogSource,
    OdibiDeltaCatalog,
    SqlCatalog,
    open_catalog_source,
)
from odibi_observe.reconcile.engine import (
    ReconcileError,
    ReconcileOptions,
    ReconcileResult,
    reconcile,
)
from odibi_observe.reconcile.html import render_html
from odibi_observe.reconcile.model import (
    KINDS,
    CatalogRun,
    Discrepancy,
    ReadLog,
    ReadRange,
    TraceRun,
    Window,
)
from odibi_observe.reconcile.repair import RepairError, RepairSummary, repair
from odibi_observe.reconcile.report import (
    cli_summary,
    record,
    render_markdown,
    write_json,
    write_metrics,
)
from odibi_observe.reconcile.sources import (
    SourceError,
    SourceOptions,
    TraceSource,
    open_trace_source,
    register_trace_source,
)

__all__ = [
    "KINDS",
    "CatalogRun",
    "CatalogSource",
    "Discrepancy",
    "OdibiDeltaCatalog",
    "ReadLog",
    "ReadRange",
    "ReconcileError",
    "ReconcileOptions",
    "ReconcileResult",
    "RepairError",
    "RepairSummary",
    "SourceError",
    "SourceOptions",
    "SqlCatalog",
    "TraceRun",
    "TraceSource",
    "Window",
    "cli_summary",
    "open_catalog_source",
    "open_trace_source",
    "reconcile",
    "record",
    "register_trace_source",
    "render_html",
    "render_markdown",
    "repair",
    "write_json",
    "write_metrics",
]
