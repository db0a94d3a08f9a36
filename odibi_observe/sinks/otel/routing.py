"""Where spans go besides the sink's own exporters: the application's SDK tracer provider, and
the global provider odibi-observe installs once per process (its router, and the exporters its
batch processor shares with the sink).

The process-wide state (the installed provider, its router, meter providers already shut down)
lives here only. Imports nothing of the OTel sink package.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger(__name__)


def app_span_processor(provider: SdkTracerProvider) -> SpanProcessor:
    """The span processor of an SDK ``TracerProvider``, to hand it already-finished spans.

    The SDK offers no public way to submit a span that was not started by one of its tracers,
    and node spans are built after the fact (see the package docstring). ``_active_span_processor``
    is the multi-processor every tracer of the provider ends its spans into, so calling its
    ``on_end`` is exactly what ending a live span does. This is the only private SDK access in
    the package; ``tests/test_otel_sink.py`` pins it.
    """
    processor: SpanProcessor = provider._active_span_processor
    return processor


class _FanOutExporter(SpanExporter):
    """Exports to several exporters; behind one BatchSpanProcessor for the global provider."""

    def __init__(self, exporters: Sequence[SpanExporter]) -> None:
        self.exporters = tuple(exporters)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = SpanExportResult.SUCCESS
        for exporter in self.exporters:
            try:
                if exporter.export(spans) is not SpanExportResult.SUCCESS:
                    result = SpanExportResult.FAILURE
            except Exception:
                log.exception("span export failed")
                result = SpanExportResult.FAILURE
        return result

    def shutdown(self) -> None:
        for exporter in self.exporters:
            exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all([e.force_flush(timeout_millis) for e in self.exporters])  # noqa: C419 - flush all


class _SharedExporter(SpanExporter):
    """A caller's exporter used both by the sink and by the global provider's processor.

    ``SpanExporter.export`` must not be called concurrently, so both paths take one lock; the
    sink shuts the exporter down itself, so the processor's shutdown leaves it alone.
    """

    def __init__(self, exporter: SpanExporter, lock: threading.Lock) -> None:
        self.exporter = exporter
        self.lock = lock

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.lock:
            return self.exporter.export(spans)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class _GlobalRouter(SpanProcessor):
    """The one processor of the global provider odibi-observe installs.

    OpenTelemetry allows setting the global tracer provider once per process, but a process
    may configure odibi-observe several times (tests, notebooks, re-configuration). The
    provider therefore stays installed for the life of the process and this router forwards to
    the processor of the sink that is configured *now*; a shut-down sink detaches its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.target: SpanProcessor | None = None

    def attach(self, processor: SpanProcessor) -> None:
        with self._lock:
            self.target = processor

    def detach(self, processor: SpanProcessor) -> None:
        with self._lock:
            if self.target is processor:
                self.target = None

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        target = self.target
        if target is not None:
            target.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        target = self.target
        if target is not None:
            target.on_end(span)

    def shutdown(self) -> None:
        target = self.target
        if target is not None:
            target.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        target = self.target
        return True if target is None else target.force_flush(timeout_millis)


_global_lock = threading.Lock()
_global_router: _GlobalRouter | None = None
_global_provider: SdkTracerProvider | None = None
_shut_down_meter_providers: list[SdkMeterProvider] = []


def _install_global_provider(resource: Resource) -> tuple[SdkTracerProvider, _GlobalRouter] | None:
    """Install (once per process) the router provider; ``None`` if someone else's is global."""
    global _global_router, _global_provider
    with _global_lock:
        current = otel_trace.get_tracer_provider()
        if _global_provider is not None and current is _global_provider:
            assert _global_router is not None
            return _global_provider, _global_router
        if not isinstance(current, otel_trace.ProxyTracerProvider):
            return None
        router = _GlobalRouter()
        provider = SdkTracerProvider(resource=resource)
        provider.add_span_processor(router)
        otel_trace.set_tracer_provider(provider)
        if otel_trace.get_tracer_provider() is not provider:  # lost a race with the application
            provider.shutdown()
            return None
        _global_router, _global_provider = router, provider
        return provider, router


def application_tracer_provider() -> SdkTracerProvider | None:
    """The global tracer provider if the application configured an SDK one.

    ``None`` when OpenTelemetry is unconfigured, or when the global provider is the one an
    ``OtelSink`` installed itself (that one is ours, not the application's).
    """
    current = otel_trace.get_tracer_provider()
    if isinstance(current, SdkTracerProvider) and current is not _global_provider:
        return current
    return None


def _usable_global_meter_provider() -> MeterProvider | None:
    current = otel_metrics.get_meter_provider()
    if not isinstance(current, SdkMeterProvider):
        return None
    if any(current is p for p in _shut_down_meter_providers):
        return None  # installed by an earlier sink that has shut it down
    return current
