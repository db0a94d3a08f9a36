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
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import Meter, MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from odibi_observe.config import (
    OTLP_PROTOCOLS,
    ConfigurationError,
    Settings,
    parse_resource_attributes,
)
from odibi_observe.conventions import (
    DURATION_BUCKETS_SECONDS,
    FIELDS,
    INSTRUMENTATION_SCOPE,
    METRICS,
    RESOURCE_HOST,
    RESOURCE_PID,
    SPAN_NAME_FORMAT,
    USER_ATTRIBUTE_PREFIX,
    Field,
    Metric,
    RunStatus,
)
from odibi_observe.otlp_json import OtlpJsonFileSpanExporter, OtlpJsonHttpSpanExporter
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.redact import safe_text
from odibi_observe.selfmetrics import warn_once_per_minute
from odibi_observe.sinks.base import RecentKeys, RecordRejected, Sink, SinkExportError
from odibi_observe.textsafe import encodable_record

__all__ = ["OtelSink", "application_tracer_provider", "record_resource", "record_to_span",
           "span_attributes"]

log = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return metadata.version("odibi-observe")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


#: Instrumentation scope of node spans and OTel metrics: the package name and its version.
SCOPE: Final = InstrumentationScope(INSTRUMENTATION_SCOPE, _package_version())

#: Bound of the span status description. The error message is already redacted and bounded by
#: the instrumentation layer; this keeps "type: message" within the same order of size.
MAX_STATUS_DESCRIPTION: Final = 8_192

#: How many run ids the metric de-duplication remembers (the bus delivers at least once).
METRIC_DEDUP_SIZE: Final = 100_000

#: How many delivered spans each destination remembers, so that re-trying a batch after a
#: partial failure only re-sends to the destinations that failed. It needs to cover the bus's
#: retry window only; beyond it a retry may duplicate a span, which at-least-once allows.
SPAN_DEDUP_SIZE: Final = 16_384

def _attribute(field: Field) -> str:
    if field.attribute is None:  # pragma: no cover - the conventions table is static
        raise LookupError(f"field {field.key!r} has no span attribute")
    return field.attribute


_A_RUN_ID: Final = _attribute(FIELDS.run_id)
_A_PROJECT: Final = _attribute(FIELDS.project)
_A_PIPELINE: Final = _attribute(FIELDS.pipeline)
_A_PIPELINE_RUN_ID: Final = _attribute(FIELDS.pipeline_run_id)
_A_NODE: Final = _attribute(FIELDS.node)
_A_ATTEMPT: Final = _attribute(FIELDS.attempt)
_A_STATUS: Final = _attribute(FIELDS.status)
_A_ROWS: Final = _attribute(FIELDS.rows)
_A_DURATION_MS: Final = _attribute(FIELDS.duration)
_A_ENVIRONMENT: Final = _attribute(FIELDS.environment)
_A_SUGGESTIONS: Final = _attribute(FIELDS.suggestions)
_A_ERROR_TYPE: Final = _attribute(FIELDS.error)


# ------------------------------------------------------------------------ record → span


def record_resource(record: RunRecord, base: Resource) -> Resource:
    """The resource of ``record``'s span: ``base`` with the record's process identity over it.

    ``service.name``, ``host.name`` and ``process.pid`` come from the record, not from the
    exporting process, because a sidecar or sweeper emits spans for runs of other processes.
    Resources are cached by (base, service, host, pid): a process emits thousands of spans
    for a handful of distinct resources.
    """
    # Keyed by the base object's identity, not the Resource itself: hashing a Resource
    # serialises its attributes to JSON, which cost more than building the span. The cached
    # entry holds the base, so a key is only trusted while it is the very same object.
    key = (id(base), record.service_name, record.host, record.pid)
    cached = _resources.get(key)
    if cached is not None and cached[0] is base:
        return cached[1]
    resource = base.merge(Resource({SERVICE_NAME: record.service_name,
                                    RESOURCE_HOST: record.host, RESOURCE_PID: record.pid}))
    if len(_resources) >= 1024:
        _resources.clear()
    _resources[key] = (base, resource)
    return resource


_resources: dict[tuple[int, str, str, int], tuple[Resource, Resource]] = {}


def record_to_span(record: RunRecord, resource: Resource) -> ReadableSpan:
    """Build the finished span of a terminal ``record``; the same record gives the same span.

    ``resource`` is the configured base resource; the record's ``service.name``, ``host.name``
    and ``process.pid`` are merged over it (:func:`record_resource`). Raises ``ValueError`` for
    a record that cannot be a finished span (not terminal, no end time, malformed ids).
    """
    if not record.status.is_terminal or record.ended_ns is None:
        raise ValueError(f"run {record.run_id}: a span needs a terminal record with ended_ns")
    trace_id = _parse_id(record.trace_id, 32, "trace_id")
    span_id = _parse_id(record.span_id, 16, "span_id")
    flags = TraceFlags(TraceFlags.SAMPLED)
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)
    parent = None
    if record.parent_span_id:
        parent = SpanContext(trace_id, _parse_id(record.parent_span_id, 16, "parent_span_id"),
                             is_remote=False, trace_flags=flags)

    status = Status(StatusCode.UNSET)
    events: list[Event] = []
    if record.status in (RunStatus.FAILURE, RunStatus.CRASHED):
        description = _error_description(record)
        status = Status(StatusCode.ERROR, description)
        exception: dict[str, AttributeValue] = {}
        if record.error_type:
            exception[EXCEPTION_TYPE] = record.error_type
        if record.error_message:
            exception[EXCEPTION_MESSAGE] = record.error_message
        if not exception:  # semantic conventions require a type or a message
            exception[EXCEPTION_MESSAGE] = description
        events.append(Event("exception", exception, timestamp=record.ended_ns))

    return ReadableSpan(
        name=SPAN_NAME_FORMAT.format(node=record.node),
        context=context,
        parent=parent,
        resource=record_resource(record, resource),
        attributes=span_attributes(record),
        events=events,
        kind=SpanKind.INTERNAL,
        status=status,
        start_time=record.started_ns,
        end_time=record.ended_ns,
        instrumentation_scope=SCOPE,
    )


def span_attributes(record: RunRecord) -> dict[str, AttributeValue]:
    """The span attributes of ``record``, every key taken from the conventions table."""
    attrs: dict[str, AttributeValue] = {
        _A_RUN_ID: record.run_id,
        _A_PROJECT: record.project,
        _A_PIPELINE: record.pipeline,
    }
    if record.pipeline_run_id:
        attrs[_A_PIPELINE_RUN_ID] = record.pipeline_run_id
    attrs[_A_NODE] = record.node
    attrs[_A_ATTEMPT] = record.attempt
    attrs[_A_STATUS] = record.status.value
    if record.rows_processed is not None:
        attrs[_A_ROWS] = record.rows_processed
    if record.duration_ms is not None:
        attrs[_A_DURATION_MS] = record.duration_ms
    attrs[_A_ENVIRONMENT] = record.environment
    if record.suggestions:
        attrs[_A_SUGGESTIONS] = tuple(str(s) for s in record.suggestions)
    if record.error_type:
        attrs[_A_ERROR_TYPE] = record.error_type
    for key, value in record.attributes.items():
        attrs[USER_ATTRIBUTE_PREFIX + key] = value
    return attrs


def _error_description(record: RunRecord) -> str:
    if record.error_type and record.error_message:
        text = f"{record.error_type}: {record.error_message}"
    else:
        text = record.error_type or record.error_message or f"node run {record.status.value}"
    if len(text) > MAX_STATUS_DESCRIPTION:
        text = text[: MAX_STATUS_DESCRIPTION - 1] + "…"
    return text


def _parse_id(value: str, width: int, name: str) -> int:
    try:
        number = int(value, 16)
    except ValueError:
        number = 0
    if len(value) != width or number == 0:
        raise ValueError(f"{name} {value!r} is not {width} hex digits (and non-zero)")
    return number


# ----------------------------------------------------------------------- small utilities


def app_span_processor(provider: SdkTracerProvider) -> SpanProcessor:
    """The span processor of an SDK ``TracerProvider``, to hand it already-finished spans.

    The SDK offers no public way to submit a span that was not started by one of its tracers,
    and node spans are built after the fact (see the module docstring). ``_active_span_processor``
    is the multi-processor every tracer of the provider ends its spans into, so calling its
    ``on_end`` is exactly what ending a live span does. This is the only private SDK access in
    the package; ``tests/test_otel_sink.py`` pins it.
    """
    processor: SpanProcessor = provider._active_span_processor
    return processor


@contextmanager
def _instrumentation_suppressed() -> Iterator[None]:
    """Keep HTTP/gRPC client instrumentations from tracing our own exports.

    This is what the SDK's span processors do around ``export``; without it an instrumented
    ``requests`` would create a span per OTLP export, which would be exported, and so on.
    ``_SUPPRESS_INSTRUMENTATION_KEY`` is the key every OTel instrumentation checks.
    """
    token = otel_context.attach(
        otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        yield
    finally:
        otel_context.detach(token)


def _signal_url(endpoint: str, signal: str) -> str:
    """``endpoint`` with ``/v1/<signal>`` as its path, as the OTLP/HTTP base-URL rule says.

    An endpoint that already names a signal path (an ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
    is kept for traces and re-pointed for metrics, so one setting serves both.
    """
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    for known in ("/v1/traces", "/v1/metrics"):
        if path.endswith(known):
            path = path[: -len(known)]
            break
    return urlunsplit(parts._replace(path=f"{path}/v1/{signal}"))


class _AttemptLog:
    """Stands in for the logger of an SDK OTLP/HTTP client: its lines go to DEBUG.

    The client logs each failed attempt (``Transient error ... retrying``, ``Failed to export
    ... batch``). Its caller reports the failure instead — the bus once a minute with what it
    kept, the global processor's exporter once a minute with what it dropped — so at WARNING
    these lines were only noise, one per attempt. The reason is kept in :attr:`last_error`.
    """

    def __init__(self) -> None:
        self.last_error: str | None = None

    def _debug(self, message: str, *args: object) -> None:
        log.debug("OTLP exporter: " + message, *args)

    debug = info = warning = error = exception = _debug


#: ``[Errno 111] Connection refused`` out of a urllib3 error that wraps it three times.
_ERRNO_TEXT: Final = re.compile(r"\[Errno -?\d+\] [^'\"()\]]+")


def _describe_attempt(result: Any) -> str:
    """One line for a failed SDK export result: ``HTTP 503 Service Unavailable`` or the errno."""
    status, reason, error = (getattr(result, "status_code", None),
                             getattr(result, "reason", None), getattr(result, "error", None))
    if status is not None:
        return f"HTTP {status}" + (f" {reason}" if reason else "")
    if error is None:
        return "export failed"
    match = _ERRNO_TEXT.search(str(error))
    if match:
        return match.group(0).strip()
    return f"{type(error).__name__}: {safe_text(str(error), 200)}"


def _one_attempt(exporter: object) -> _AttemptLog | None:
    """Make an SDK OTLP/HTTP exporter send each export once, quietly; retries are ours.

    ``opentelemetry-exporter-otlp-proto-http`` retries a failed request itself, up to six
    times with exponential backoff within its timeout, and logs a WARNING per retry. The bus
    already retries with backoff, and without a bound at exit the exporter's loop made a
    one-node script take 22 s to end with 18 lines of retries on stderr when the collector
    was down. There is no public switch, so this sets the client's backoff to infinity (the
    client then gives up after its first attempt: "backoff > remaining time") and hands it
    an :class:`_AttemptLog` as logger. (A ``Retry-After`` answer still makes the client wait
    and retry within its timeout: the server asked for it, and the exit deadline bounds that
    too.) Feature-detected: with a client that looks different
    nothing changes, the exit deadline still bounds it, and ``tests/test_exit_bounds.py``
    fails to say so.
    """
    client = getattr(exporter, "_client", None)
    if client is None or not all(hasattr(client, a) for a in
                                 ("_compute_backoff", "_logger", "export")):
        return None
    attempt = _AttemptLog()
    original = client.export

    def export(data: bytes) -> Any:
        result = original(data)
        attempt.last_error = None if getattr(result, "success", False) \
            else _describe_attempt(result)
        return result

    client._compute_backoff = lambda retry: math.inf
    client._logger = attempt
    client.export = export
    return attempt


class _BoundedOtlpExporter(SpanExporter):
    """An OTLP span exporter that tries once per export and knows why it last failed.

    ``report=True`` is for the global provider's ``BatchSpanProcessor``, which drops a batch
    that fails and tells nobody: the failure is then logged here, once a minute per endpoint.
    In the sink the bus keeps the batch and reports it, with :attr:`last_error` as reason.
    """

    def __init__(self, inner: SpanExporter, url: str, *, report: bool = False) -> None:
        self.inner = inner
        self.url = url
        self.report = report
        self._attempt = _one_attempt(inner)

    @property
    def last_error(self) -> str | None:
        if self._attempt is not None:
            return self._attempt.last_error
        inner_error: str | None = getattr(self.inner, "last_error", None)
        return inner_error

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is not SpanExportResult.SUCCESS and self.report:
            warn_once_per_minute(
                f"app-spans:{self.url}",
                "odibi-observe: %d span(s) of the application's own tracers could not be "
                "exported to %s (%s) and were dropped (the OpenTelemetry batch processor does "
                "not retry; node spans are retried by odibi-observe)",
                len(spans), self.url, self.last_error or "export failed")
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _otlp_span_exporter(endpoint: str, protocol: str, timeout: float, *,
                        report: bool = False) -> SpanExporter:
    url = _signal_url(endpoint, "traces")
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return _BoundedOtlpExporter(OTLPSpanExporter(endpoint=url, timeout=timeout), url,
                                    report=report)
    if protocol == "http/json":
        # The SDK's OTLP exporters read their headers (authentication, tenant) from these
        # variables; the JSON exporter honours them the same way.
        headers = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") \
            or os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")
        return _BoundedOtlpExporter(
            OtlpJsonHttpSpanExporter(url, timeout=timeout,
                                     headers=parse_resource_attributes(headers)),
            url, report=report)
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError as exc:
            raise ConfigurationError(
                "otlp_protocol='grpc' needs opentelemetry-exporter-otlp-proto-grpc "
                "(pip install 'odibi-observe[grpc]')") from exc
        grpc_exporter: SpanExporter = GrpcSpanExporter(
            endpoint=endpoint, insecure=endpoint.startswith("http://"), timeout=timeout)
        return grpc_exporter
    raise ConfigurationError(
        f"otlp_protocol={protocol!r}: choose one of {', '.join(OTLP_PROTOCOLS)}")


def _otlp_metric_reader(endpoint: str, protocol: str, timeout: float) -> Any:
    """A periodic reader over the OTLP metric exporter for ``protocol``.

    There is no JSON metric exporter in the SDK; for ``http/json`` the protobuf encoding is
    sent to the same URL, which every OTLP/HTTP receiver must accept as well.
    """
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    exporter: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        exporter = GrpcMetricExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"),
                                      timeout=timeout)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        url = _signal_url(endpoint, "metrics")
        exporter = OTLPMetricExporter(endpoint=url, timeout=timeout)
        attempt = _one_attempt(exporter)
        if attempt is not None:
            _report_metric_failures(exporter, attempt, url)
    return PeriodicExportingMetricReader(exporter)


def _report_metric_failures(exporter: Any, attempt: _AttemptLog, url: str) -> None:
    """One warning a minute when OTel metrics cannot be exported: nothing retries them
    (the reader sends cumulative values again next period), and Prometheus has them."""
    original = exporter.export

    def export(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if attempt.last_error is not None:
            warn_once_per_minute(
                f"metrics:{url}", "odibi-observe: OTel metrics could not be exported to %s "
                "(%s); the next export sends the cumulative values again, and the Prometheus "
                "sink has them", url, attempt.last_error)
        return result

    exporter.export = export


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
_logged_once: set[str] = set()


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


# ------------------------------------------------------------------------------ the sink


class _Destination:
    """One place spans go, with the spans it already has (for partial-failure retries)."""

    def __init__(self, name: str, exporter: SpanExporter | None = None,
                 processor: SpanProcessor | None = None, lock: threading.Lock | None = None
                 ) -> None:
        self.name = name
        self.exporter = exporter
        self.processor = processor
        self.lock = lock or threading.Lock()
        self.delivered = RecentKeys(SPAN_DEDUP_SIZE)

    def deliver(self, spans: Sequence[ReadableSpan]) -> None:
        if self.processor is not None:
            for span in spans:
                self.processor.on_end(span)
            return
        assert self.exporter is not None
        with self.lock:
            result = self.exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            # export() names the destination; this says why (the exporter's last error).
            reason = getattr(self.exporter, "last_error", None)
            url = getattr(self.exporter, "url", None)
            raise SinkExportError(f"{url}: {reason}" if url and reason
                                  else reason or f"export returned {result.name}")


class _Instruments:
    """The node-run instruments, named and unit-ed by the conventions table."""

    def __init__(self, meter: Meter) -> None:
        self.runs = meter.create_counter(
            _otel_name(METRICS.runs), unit=METRICS.runs.otel_unit,
            description=METRICS.runs.description)
        self.rows = meter.create_counter(
            _otel_name(METRICS.rows), unit=METRICS.rows.otel_unit,
            description=METRICS.rows.description)
        self.duration = meter.create_histogram(
            _otel_name(METRICS.duration), unit=METRICS.duration.otel_unit,
            description=METRICS.duration.description,
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_SECONDS)

    def record(self, record: RunRecord) -> None:
        self.runs.add(1, _labels(METRICS.runs, record))
        if record.rows_processed is not None:
            self.rows.add(record.rows_processed, _labels(METRICS.rows, record))
        if record.duration_seconds is not None:
            self.duration.record(record.duration_seconds, _labels(METRICS.duration, record))


def _otel_name(metric: Metric) -> str:
    if metric.otel is None:  # pragma: no cover - the conventions table is static
        raise LookupError(f"metric {metric.key!r} has no OpenTelemetry instrument")
    return metric.otel


def _labels(metric: Metric, record: RunRecord) -> dict[str, AttributeValue]:
    return dict(zip(metric.labels, record.label_values(metric.labels), strict=True))


class OtelSink(Sink):
    """Exports one span per finished node run, and the node-run OTel metrics.

    Only ``FINISHED`` events make spans; ``STARTED`` and ``HEARTBEAT`` events are ignored here
    (the span is built from the terminal record, see the module docstring).

    Where spans go — decided once, in the constructor:

    (a) **The application configured OpenTelemetry.** If ``tracer_provider`` is given, or the
        global tracer provider is an SDK ``TracerProvider`` (Odibi's ``setup_telemetry``, or
        any other setup), node spans are handed to *that* provider's span processors, exactly
        as if one of its tracers had ended them, and its resource is the base resource. Node
        spans then land wherever the application's own spans land, in the same traces.
        ``otlp_endpoint`` is ignored (logged once at INFO): the application owns that choice.
        Delivery from there on is the application's pipeline (usually a
        ``BatchSpanProcessor``, which drops on overflow and does not retry). Processors get
        ``on_end`` only, not ``on_start``: the span never was a live span.
    (b) **Otherwise the sink owns its exporters**: OTLP (``http/protobuf``, ``http/json`` or
        ``grpc``) to ``otlp_endpoint``, the OTLP/JSON ``traces_file``. ``export()`` calls
        each exporter *directly* and raises :class:`SinkExportError` when one fails, so the
        bus keeps the batch and retries it: an OTLP outage loses no span, and a retried span
        carries its original ids and timestamps. Each destination remembers what it already
        received, so a retry re-sends only to the destinations that failed.

    In both cases ``traces_file`` and ``span_exporters`` are exported directly, with the same
    raise-to-retry rule.

    **Global provider.** In case (b), with ``install_global`` and no SDK provider installed yet,
    the sink installs a global SDK ``TracerProvider`` (same resource; a ``BatchSpanProcessor``
    over separate exporter instances for the same destinations) so the application's own spans
    — for example a pipeline span that is the parent of the node spans — land in the same
    place. It is :attr:`tracer_provider`. OpenTelemetry lets a process set it once, so it stays
    for the life of the process (with the resource of the first sink that installed it) and
    sends to the destinations of whichever ``OtelSink`` was configured last.

    **Metrics** (``METRICS.runs``/``rows``/``duration`` from the conventions, with their
    labels as attributes) are recorded on ``FINISHED`` through ``meter_provider``; else the
    global provider if it is an SDK ``MeterProvider``; else, only in case (b) with an
    ``otlp_endpoint``, an own SDK ``MeterProvider`` exporting OTLP to the same endpoint
    (installed globally if none is). Otherwise there are no OTel metrics: the Prometheus sink
    covers them. Recording is de-duplicated by ``run_id`` (the last 100 000), because the bus
    delivers at least once.

    ``force_flush`` flushes everything spans were handed to (including the application's
    provider); ``shutdown`` shuts down only what the sink created or was given as
    ``span_exporters`` — never the application's providers.
    """

    name = "otel"
    scheme = "otel"  # its key in odibi_observe.extensions
    kinds = frozenset({EventKind.FINISHED})  # a span exists only once the run has ended

    def __init__(
        self,
        *,
        service_name: str = "odibi-pipeline",
        resource_attributes: Mapping[str, str] | None = None,
        otlp_endpoint: str | None = None,
        otlp_protocol: str = "http/protobuf",
        otlp_timeout: float = 10.0,
        traces_file: str | os.PathLike[str] | None = None,
        span_exporters: Sequence[SpanExporter] = (),
        tracer_provider: SdkTracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        metrics: bool = True,
        install_global: bool = True,
    ) -> None:
        if tracer_provider is not None and not isinstance(tracer_provider, SdkTracerProvider):
            raise TypeError("tracer_provider must be an opentelemetry.sdk.trace.TracerProvider "
                            "(only an SDK provider has span processors to deliver to)")
        if otlp_protocol not in OTLP_PROTOCOLS:
            raise ConfigurationError(
                f"otlp_protocol={otlp_protocol!r}: choose one of {', '.join(OTLP_PROTOCOLS)}")
        self._otlp_endpoint = otlp_endpoint
        self._otlp_protocol = otlp_protocol
        self._otlp_timeout = otlp_timeout
        self._shut_down = False

        self.app_provider = tracer_provider or application_tracer_provider()
        if self.app_provider is not None:
            self.resource = self.app_provider.resource
            if otlp_endpoint and "ignored_endpoint" not in _logged_once:
                _logged_once.add("ignored_endpoint")
                log.info("odibi-observe: the application configured an OpenTelemetry tracer "
                         "provider; node spans go through it and otlp_endpoint=%s is ignored",
                         otlp_endpoint)
        else:
            self.resource = Resource.create({
                RESOURCE_HOST: socket.gethostname(), RESOURCE_PID: os.getpid(),
                **dict(resource_attributes or {}), SERVICE_NAME: service_name,
            })

        self._destinations: list[_Destination] = []
        self._owned_otlp: _Destination | None = None
        self._closable: list[SpanExporter] = []
        if self.app_provider is not None:
            self._destinations.append(
                _Destination("tracer_provider", processor=app_span_processor(self.app_provider)))
        elif otlp_endpoint:
            otlp = _otlp_span_exporter(otlp_endpoint, otlp_protocol, otlp_timeout)
            self._owned_otlp = _Destination(f"otlp {otlp_protocol}", otlp)
            self._destinations.append(self._owned_otlp)
            self._closable.append(otlp)
        self._traces_file = os.fspath(traces_file) if traces_file is not None else None
        if self._traces_file:
            file_exporter = OtlpJsonFileSpanExporter(self._traces_file)
            self._destinations.append(_Destination(f"traces_file {self._traces_file}",
                                                   file_exporter))
            self._closable.append(file_exporter)
        shared: list[tuple[SpanExporter, threading.Lock]] = []
        for exporter in span_exporters:
            destination = _Destination(type(exporter).__name__, exporter)
            shared.append((exporter, destination.lock))
            self._destinations.append(destination)
            self._closable.append(exporter)

        self.tracer_provider: SdkTracerProvider | None = self.app_provider
        self._global_processor: SpanProcessor | None = None
        self._router: _GlobalRouter | None = None
        if self.app_provider is None and install_global and self._destinations:
            installed = _install_global_provider(self.resource)
            if installed is not None:
                self.tracer_provider, self._router = installed
                exporters: list[SpanExporter] = []
                if otlp_endpoint:
                    exporters.append(_otlp_span_exporter(otlp_endpoint, otlp_protocol,
                                                         otlp_timeout, report=True))
                if self._traces_file:
                    exporters.append(OtlpJsonFileSpanExporter(self._traces_file))
                exporters += [_SharedExporter(e, lock) for e, lock in shared]
                self._global_processor = BatchSpanProcessor(_FanOutExporter(exporters))
                self._router.attach(self._global_processor)

        self._instruments: _Instruments | None = None
        self._own_meter_provider: SdkMeterProvider | None = None
        self._counted = RecentKeys(METRIC_DEDUP_SIZE)
        if metrics:
            provider = meter_provider or _usable_global_meter_provider()
            if provider is None and otlp_endpoint and self.app_provider is None:
                provider = self._own_metrics(otlp_endpoint, install_global)
            if provider is not None:
                self._instruments = _Instruments(
                    provider.get_meter(SCOPE.name, SCOPE.version))

    def _own_metrics(self, endpoint: str, install_global: bool) -> SdkMeterProvider:
        reader = _otlp_metric_reader(endpoint, self._otlp_protocol, self._otlp_timeout)
        # shutdown_on_exit=False: the sink shuts it down within the bus's exit deadline; the
        # SDK's own atexit hook would wait (30 s) for a final export to a collector that hangs.
        provider = SdkMeterProvider(metric_readers=[reader], resource=self.resource,
                                    shutdown_on_exit=False)
        self._own_meter_provider = provider
        if install_global:
            with _global_lock:
                if not isinstance(otel_metrics.get_meter_provider(), SdkMeterProvider):
                    otel_metrics.set_meter_provider(provider)
        return provider

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> OtelSink:
        """An ``OtelSink`` configured from resolved :class:`Settings`; ``overrides`` win."""
        kwargs: dict[str, Any] = {
            "service_name": settings.service_name,
            "resource_attributes": dict(settings.resource_attributes),
            "otlp_endpoint": settings.otlp_endpoint,
            "otlp_protocol": settings.otlp_protocol,
            "otlp_timeout": settings.otlp_timeout,
            "traces_file": settings.traces_file,
            "metrics": settings.otel_metrics,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- the Sink contract -----------------------------------------------------------------

    def export(self, events: Sequence[RunEvent]) -> None:
        if self._shut_down:
            raise SinkExportError("the OTel sink is shut down")
        # The application's provider may update its resource (it does after a fork).
        base = self.app_provider.resource if self.app_provider is not None else self.resource
        spans: dict[Hashable, ReadableSpan] = {}
        rejected: list[RunEvent] = []
        reasons: dict[str, None] = {}
        for event in events:
            if event.kind is not EventKind.FINISHED:
                continue
            # Text OTLP cannot encode (a lone surrogate from a file name) is escaped, so the
            # span keeps the name instead of failing the export forever (odibi_observe.textsafe).
            record = encodable_record(event.record)
            try:
                span = record_to_span(record, base)
            except (ValueError, TypeError) as exc:
                # Retrying cannot fix a malformed record and would block every later event:
                # the rest is exported, this one goes to the dead letter (sinks/base.py).
                rejected.append(event)
                reasons[f"no span for run {record.run_id}: {type(exc).__name__}: {exc}"] = None
                continue
            self._record_metrics(record)
            spans[(record.trace_id, record.span_id, record.status.value, record.ended_ns)] = span

        self._deliver(spans)
        if rejected:
            raise RecordRejected(rejected, "; ".join(reasons))

    def export_spans(self, spans: Sequence[ReadableSpan]) -> None:
        """Export finished application spans as they are (ids, times, resource and all).

        These are the spans a pipeline process in sidecar mode spooled — its pipeline spans
        and Odibi's ``node_execution`` spans, the parents of its node spans (see
        :mod:`odibi_observe.sinks.spool`) — delivered here by the sidecar's pump. Same
        raise-to-retry rule and per-destination de-duplication as :meth:`export`.
        """
        if self._shut_down:
            raise SinkExportError("the OTel sink is shut down")
        keyed: dict[Hashable, ReadableSpan] = {}
        for span in spans:
            context = span.context
            if context is not None:
                keyed[(context.trace_id, context.span_id, "span", span.end_time)] = span
        self._deliver(keyed)

    def _deliver(self, spans: Mapping[Hashable, ReadableSpan]) -> None:
        """Hand ``spans`` to every destination that has not taken them yet; raise if one
        failed (the others keep what they took: each remembers its own deliveries)."""
        failures: list[str] = []
        for destination in self._destinations:
            pending = [(k, s) for k, s in spans.items() if k not in destination.delivered]
            if not pending:
                continue
            try:
                with _instrumentation_suppressed():
                    destination.deliver([s for _, s in pending])
            except Exception as exc:
                failures.append(f"{destination.name}: {exc}")
                continue
            for key, _ in pending:
                destination.delivered.add(key)
        if failures:
            raise SinkExportError("; ".join(failures))

    def _record_metrics(self, record: RunRecord) -> None:
        if self._instruments is None or record.run_id in self._counted:
            return
        self._counted.add(record.run_id)
        try:
            self._instruments.record(record)
        except Exception:
            log.exception("odibi-observe: recording OTel metrics for run %s failed",
                          record.run_id)

    def force_flush(self, timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (30.0 if timeout is None else timeout)

        def remaining_ms() -> int:
            return max(0, int((deadline - time.monotonic()) * 1000))

        ok = True
        if self._global_processor is not None:
            ok = self._global_processor.force_flush(remaining_ms()) and ok
        if self.app_provider is not None:
            ok = self.app_provider.force_flush(remaining_ms()) and ok
        for exporter in self._closable:
            ok = exporter.force_flush(remaining_ms()) and ok
        if self._own_meter_provider is not None:
            try:
                ok = self._own_meter_provider.force_flush(remaining_ms()) and ok
            except Exception as exc:
                # The SDK raises when a reader times out (a collector that does not answer).
                # Metrics are cumulative and re-sent next period: not a reason to retry spans.
                log.debug("odibi-observe: OTel metrics flush failed: %s", exc)
                ok = False
        return ok

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        if self._global_processor is not None:
            assert self._router is not None
            self._router.detach(self._global_processor)
            self._global_processor.shutdown()
        for exporter in self._closable:
            try:
                exporter.shutdown()
            except Exception:
                log.exception("odibi-observe: shutting down %s failed", type(exporter).__name__)
        if self._own_meter_provider is not None:
            self._own_meter_provider.shutdown()
            _shut_down_meter_providers.append(self._own_meter_provider)

    def after_fork(self) -> None:
        """Give the child its own OTLP connection (HTTP pools and gRPC channels are not
        fork-safe). The parent's exporter is dropped, not shut down: it is the parent's."""
        if self._owned_otlp is not None and self._otlp_endpoint:
            old = self._owned_otlp.exporter
            new = _otlp_span_exporter(self._otlp_endpoint, self._otlp_protocol,
                                      self._otlp_timeout)
            self._owned_otlp.exporter = new
            self._owned_otlp.lock = threading.Lock()
            self._closable = [new if e is old else e for e in self._closable]
