"""The :class:`OtelSink`: one span and the OTel metrics per finished node run.

Builds spans with :mod:`.spans`, sends them through :mod:`.exporters` or the providers of
:mod:`.routing`, and is the only module of the package that imports the others.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Final

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import Meter, MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.util.types import AttributeValue

from odibi_observe._otlp_json import OtlpJsonFileSpanExporter
from odibi_observe._textsafe import encodable_record
from odibi_observe.config import (
    OTLP_PROTOCOLS,
    ConfigurationError,
    Settings,
)
from odibi_observe.conventions import (
    DURATION_BUCKETS_SECONDS,
    METRICS,
    PIPELINE_METRICS,
    RESOURCE_HOST,
    RESOURCE_PID,
    RESOURCE_SERVICE_NAME,
    Metric,
    RunStatus,
    pipeline_run_attributes,
)
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.base import RecentKeys, RecordRejected, Sink, SinkExportError
from odibi_observe.sinks.otel.exporters import (
    _instrumentation_suppressed,
    _otlp_metric_reader,
    _otlp_span_exporter,
)
from odibi_observe.sinks.otel.routing import (
    _FanOutExporter,
    _global_lock,
    _GlobalRouter,
    _install_global_provider,
    _SharedExporter,
    _shut_down_meter_providers,
    _usable_global_meter_provider,
    app_span_processor,
    application_tracer_provider,
)
from odibi_observe.sinks.otel.spans import SCOPE, TaskRunUrl, record_to_span

log = logging.getLogger(__name__)

#: How many run ids the metric de-duplication remembers (the bus delivers at least once).
METRIC_DEDUP_SIZE: Final = 100_000

#: How many delivered spans each destination remembers, so that re-trying a batch after a
#: partial failure only re-sends to the destinations that failed. It needs to cover the bus's
#: retry window only; beyond it a retry may duplicate a span, which at-least-once allows.
SPAN_DEDUP_SIZE: Final = 16_384

_logged_once: set[str] = set()

#: What the sink takes when it records metrics: node runs' ends (spans and node metrics) and
#: pipeline runs' records (the ``cicd.pipeline.run.*`` instruments).
_METRIC_KINDS: Final = frozenset({EventKind.FINISHED, EventKind.PIPELINE})


class _Destination:
    """One place spans go, with the spans it already has (for partial-failure retries)."""

    def __init__(
        self,
        name: str,
        exporter: SpanExporter | None = None,
        processor: SpanProcessor | None = None,
        lock: threading.Lock | None = None,
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
            raise SinkExportError(
                f"{url}: {reason}" if url and reason else reason or f"export returned {result.name}"
            )


class _Instruments:
    """The node-run instruments, and the CI/CD pipeline-run ones (``cicd.pipeline.run.*``),
    named and unit-ed by the conventions table."""

    def __init__(self, meter: Meter) -> None:
        self.runs = meter.create_counter(
            _otel_name(METRICS.runs),
            unit=METRICS.runs.otel_unit,
            description=METRICS.runs.description,
        )
        self.rows = meter.create_counter(
            _otel_name(METRICS.rows),
            unit=METRICS.rows.otel_unit,
            description=METRICS.rows.description,
        )
        self.duration = meter.create_histogram(
            _otel_name(METRICS.duration),
            unit=METRICS.duration.otel_unit,
            description=METRICS.duration.description,
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_SECONDS,
        )
        pipeline = PIPELINE_METRICS
        self.pipeline_duration = meter.create_histogram(
            _otel_name(pipeline.run_duration),
            unit=pipeline.run_duration.otel_unit,
            description=pipeline.run_duration.description,
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_SECONDS,
        )
        self.pipeline_active = meter.create_up_down_counter(
            _otel_name(pipeline.run_active),
            unit=pipeline.run_active.otel_unit,
            description=pipeline.run_active.description,
        )
        # Pipeline run ids seen starting and ending (kept apart from node runs' ids).
        self.pipelines_started = RecentKeys(METRIC_DEDUP_SIZE)
        self.pipelines_finished = RecentKeys(METRIC_DEDUP_SIZE)

    def record_pipeline(self, record: RunRecord) -> None:
        """A pipeline run's start (active +1) or end (active -1, its duration recorded under
        its result), each once per pipeline run id; a start after its end is ignored."""
        run_id = record.run_id
        attributes: dict[str, AttributeValue] = dict(
            pipeline_run_attributes(
                project=record.project,
                pipeline=record.pipeline,
                environment=record.environment,
                status=record.status,
                error_type=record.error_type,
            )
        )
        active = {k: attributes[k] for k in PIPELINE_METRICS.run_active.attributes}
        if record.status is RunStatus.RUNNING:
            if run_id not in self.pipelines_finished and self.pipelines_started.add(run_id):
                self.pipeline_active.add(1, active)
            return
        if not self.pipelines_finished.add(run_id):
            return
        if self.pipelines_started.discard(run_id):
            self.pipeline_active.add(-1, active)
        seconds = record.duration_seconds
        if seconds is not None and record.status is not RunStatus.SKIPPED:
            self.pipeline_duration.record(seconds, attributes)

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
    (the span is built from the terminal record, see the package docstring).

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
    delivers at least once. With metrics, the sink also takes pipeline runs' records
    (``EventKind.PIPELINE``) for the CI/CD instruments ``cicd.pipeline.run.duration`` and
    ``cicd.pipeline.run.active`` (``PIPELINE_METRICS``), de-duplicated by pipeline run id.

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
        task_run_url_template: str | None = None,
    ) -> None:
        if tracer_provider is not None and not isinstance(tracer_provider, SdkTracerProvider):
            raise TypeError(
                "tracer_provider must be an opentelemetry.sdk.trace.TracerProvider "
                "(only an SDK provider has span processors to deliver to)"
            )
        if otlp_protocol not in OTLP_PROTOCOLS:
            raise ConfigurationError(
                f"otlp_protocol={otlp_protocol!r}: choose one of {', '.join(OTLP_PROTOCOLS)}"
            )
        self._otlp_endpoint = otlp_endpoint
        self._otlp_protocol = otlp_protocol
        self._otlp_timeout = otlp_timeout
        self._shut_down = False
        self._task_run_url = TaskRunUrl(task_run_url_template)

        self.app_provider = tracer_provider or application_tracer_provider()
        if self.app_provider is not None:
            self.resource = self.app_provider.resource
            if otlp_endpoint and "ignored_endpoint" not in _logged_once:
                _logged_once.add("ignored_endpoint")
                log.info(
                    "odibi-observe: the application configured an OpenTelemetry tracer "
                    "provider; node spans go through it and otlp_endpoint=%s is ignored",
                    otlp_endpoint,
                )
        else:
            self.resource = Resource.create(
                {
                    RESOURCE_HOST: socket.gethostname(),
                    RESOURCE_PID: os.getpid(),
                    **dict(resource_attributes or {}),
                    RESOURCE_SERVICE_NAME: service_name,
                }
            )

        self._destinations: list[_Destination] = []
        self._owned_otlp: _Destination | None = None
        self._closable: list[SpanExporter] = []
        if self.app_provider is not None:
            self._destinations.append(
                _Destination("tracer_provider", processor=app_span_processor(self.app_provider))
            )
        elif otlp_endpoint:
            otlp = _otlp_span_exporter(otlp_endpoint, otlp_protocol, otlp_timeout)
            self._owned_otlp = _Destination(f"otlp {otlp_protocol}", otlp)
            self._destinations.append(self._owned_otlp)
            self._closable.append(otlp)
        self._traces_file = os.fspath(traces_file) if traces_file is not None else None
        if self._traces_file:
            file_exporter = OtlpJsonFileSpanExporter(self._traces_file)
            self._destinations.append(
                _Destination(f"traces_file {self._traces_file}", file_exporter)
            )
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
                    exporters.append(
                        _otlp_span_exporter(otlp_endpoint, otlp_protocol, otlp_timeout, report=True)
                    )
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
                self._instruments = _Instruments(provider.get_meter(SCOPE.name, SCOPE.version))
                # With metrics, pipeline runs' records too (cicd.pipeline.run.*; no span).
                self.kinds = _METRIC_KINDS

    def _own_metrics(self, endpoint: str, install_global: bool) -> SdkMeterProvider:
        reader = _otlp_metric_reader(endpoint, self._otlp_protocol, self._otlp_timeout)
        # shutdown_on_exit=False: the sink shuts it down within the bus's exit deadline; the
        # SDK's own atexit hook would wait (30 s) for a final export to a collector that hangs.
        provider = SdkMeterProvider(
            metric_readers=[reader], resource=self.resource, shutdown_on_exit=False
        )
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
            "task_run_url_template": settings.task_run_url_template,
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
                if event.kind is EventKind.PIPELINE:
                    self._record_pipeline(encodable_record(event.record))
                continue
            # Text OTLP cannot encode (a lone surrogate from a file name) is escaped, so the
            # span keeps the name instead of failing the export forever (odibi_observe._textsafe).
            record = encodable_record(event.record)
            try:
                span = record_to_span(record, base, self._task_run_url)
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
            log.exception("odibi-observe: recording OTel metrics for run %s failed", record.run_id)

    def _record_pipeline(self, record: RunRecord) -> None:
        if self._instruments is None:
            return
        try:
            self._instruments.record_pipeline(record)
        except Exception:
            log.exception(
                "odibi-observe: recording OTel metrics for pipeline run %s failed", record.run_id
            )

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
            new = _otlp_span_exporter(self._otlp_endpoint, self._otlp_protocol, self._otlp_timeout)
            self._owned_otlp.exporter = new
            self._owned_otlp.lock = threading.Lock()
            self._closable = [new if e is old else e for e in self._closable]
