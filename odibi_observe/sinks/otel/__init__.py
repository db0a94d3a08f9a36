"""The OpenTelemetry sink: one span (and the OTel metrics) per finished node run.

The span of a node run is a pure function of its terminal :class:`RunRecord`
(:func:`record_to_span`). The instrumentation layer chose the trace and span ids when the node
started and made a non-recording span with those ids current, so the spans user code opened
inside the node already point at it as their parent. When the run finishes this module *builds*
the span with exactly those ids and the record's start/end nanoseconds, rather than starting
and ending a live span. That has three consequences the rest of the product relies on:

* the span, the catalog row and the metrics come from one snapshot, so they cannot disagree;
* a span that failed to export can be re-exported later, unchanged, by the event bus;
* a crashed run can be closed after the fact (by the sweeper, in another process) with a
  back-dated span that has the very ids its child spans and the catalog row already carry.

Span status follows the OpenTelemetry guidance for instrumentation libraries: ``ERROR`` with
an ``exception`` event for ``FAILURE``/``CRASHED``, ``UNSET`` (not ``OK``) for ``SUCCESS``.

Modules, each importing only those listed before it:

* :mod:`~odibi_observe.sinks.otel.spans` — record → span, its resource and attributes;
* :mod:`~odibi_observe.sinks.otel.exporters` — OTLP exporters that try once per export and
  keep why they failed, the metric reader;
* :mod:`~odibi_observe.sinks.otel.routing` — the application's tracer provider, the global
  provider installed once per process and its router, the exporters it shares with the sink;
* :mod:`~odibi_observe.sinks.otel.sink` — :class:`OtelSink`.

This module only re-exports what the rest of the package imports from it.
"""

from odibi_observe.sinks.otel.exporters import _otlp_span_exporter as _otlp_span_exporter
from odibi_observe.sinks.otel.exporters import _signal_url as _signal_url
from odibi_observe.sinks.otel.routing import _install_global_provider as _install_global_provider
from odibi_observe.sinks.otel.routing import app_span_processor, application_tracer_provider
from odibi_observe.sinks.otel.sink import METRIC_DEDUP_SIZE, SPAN_DEDUP_SIZE, OtelSink
from odibi_observe.sinks.otel.spans import (
    MAX_STATUS_DESCRIPTION,
    SCOPE,
    record_resource,
    record_to_span,
    span_attributes,
)

__all__ = [
    "MAX_STATUS_DESCRIPTION",
    "METRIC_DEDUP_SIZE",
    "SCOPE",
    "SPAN_DEDUP_SIZE",
    "OtelSink",
    "app_span_processor",
    "application_tracer_provider",
    "record_resource",
    "record_to_span",
    "span_attributes",
]
