"""The built-in sinks' factories, registered by import path in :mod:`odibi_observe.extensions`.

Each takes a :class:`~odibi_observe.sinks.base.SinkContext` and returns its sink, or None when
the settings do not ask for it. The sink modules are imported inside the factories, so a
process that records no spans never imports the OpenTelemetry exporters, and this module can be
imported from anywhere without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from odibi_observe.sinks.base import SinkContext

if TYPE_CHECKING:
    from odibi_observe.sinks.base import Sink
    from odibi_observe.sinks.spool import SpoolSink

#: The sink scheme of ``mode="sidecar"``: the transport to the sidecar, not a backend.
SPOOL_SINK = "spool"


def prometheus(context: SinkContext) -> Sink:
    """Always on: the metrics are served or written from the process's registry."""
    from odibi_observe.sinks.prometheus import PrometheusSink

    return PrometheusSink(
        context.registry, monitor=context.monitor, max_series=context.settings.max_label_series
    )


def catalog(context: SinkContext) -> Sink | None:
    """``meta_runs`` when a catalog URL is set."""
    if not context.settings.catalog_url:
        return None
    from odibi_observe.sinks.catalog import CatalogSink

    return CatalogSink(context.settings.catalog_url)


def otel(context: SinkContext) -> Sink | None:
    """Spans when they have somewhere to go: an OTLP endpoint, a traces file, a tracer
    provider passed to ``configure`` or installed by the application."""
    from odibi_observe.sinks.otel import OtelSink, application_tracer_provider

    s = context.settings
    if not (
        s.otlp_endpoint
        or s.traces_file
        or context.tracer_provider is not None
        or application_tracer_provider() is not None
    ):
        return None
    return OtelSink.from_settings(
        s, tracer_provider=context.tracer_provider, meter_provider=context.meter_provider
    )


def spool(context: SinkContext) -> SpoolSink:
    """The only sink of ``mode="sidecar"``: the write-ahead spool, which also carries the
    application's spans (the parents the node spans nest under) to the sidecar."""
    from odibi_observe.sinks.spool import SpoolSink
    from odibi_observe.spool import Spool

    s = context.settings
    sink = SpoolSink(
        Spool(
            s.spool_dir or "",
            fsync=s.spool_fsync,  # type: ignore[arg-type]
            max_bytes=s.spool_max_bytes,
            registry=context.registry,
        )
    )
    sink.carry_application_spans(s, context.monitor)
    return sink


def openlineage(context: SinkContext) -> Sink | None:
    """OpenLineage run events, when the ``openlineage`` setting or the OpenLineage client's
    own configuration asks for them (:func:`odibi_observe.sinks.openlineage.from_context`)."""
    from odibi_observe.sinks.openlineage import from_context

    return from_context(context)
