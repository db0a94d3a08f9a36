"""OTLP exporters: one bounded attempt per export, the reason of the last failure, the
metric reader, and the URL rule of OTLP/HTTP.

The SDK's OTLP/HTTP clients retry and log on their own; the sink (and the bus behind it)
retries instead, so these exporters try once and keep why they failed. Imports nothing of the
OTel sink package.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from odibi_observe._otlp_json import OtlpJsonHttpSpanExporter
from odibi_observe._redact import error_text
from odibi_observe._selfmetrics import warn_once_per_minute
from odibi_observe.config import (
    OTLP_PROTOCOLS,
    ConfigurationError,
    parse_resource_attributes,
)

log = logging.getLogger(__name__)


@contextmanager
def _instrumentation_suppressed() -> Iterator[None]:
    """Keep HTTP/gRPC client instrumentations from tracing our own exports.

    This is what the SDK's span processors do around ``export``; without it an instrumented
    ``requests`` would create a span per OTLP export, which would be exported, and so on.
    ``_SUPPRESS_INSTRUMENTATION_KEY`` is the key every OTel instrumentation checks.
    """
    token = otel_context.attach(
        otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
    )
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
    status, reason, error = (
        getattr(result, "status_code", None),
        getattr(result, "reason", None),
        getattr(result, "error", None),
    )
    if status is not None:
        return f"HTTP {status}" + (f" {reason}" if reason else "")
    if error is None:
        return "export failed"
    match = _ERRNO_TEXT.search(str(error))
    if match:
        return match.group(0).strip()
    return f"{type(error).__name__}: {error_text(error, 200)}"


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
    if client is None or not all(
        hasattr(client, a) for a in ("_compute_backoff", "_logger", "export")
    ):
        return None
    attempt = _AttemptLog()
    original = client.export

    def export(data: bytes) -> Any:
        result = original(data)
        attempt.last_error = (
            None if getattr(result, "success", False) else _describe_attempt(result)
        )
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
                len(spans),
                self.url,
                self.last_error or "export failed",
            )
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _otlp_span_exporter(
    endpoint: str, protocol: str, timeout: float, *, report: bool = False
) -> SpanExporter:
    url = _signal_url(endpoint, "traces")
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return _BoundedOtlpExporter(
            OTLPSpanExporter(endpoint=url, timeout=timeout), url, report=report
        )
    if protocol == "http/json":
        # The SDK's OTLP exporters read their headers (authentication, tenant) from these
        # variables; the JSON exporter honours them the same way.
        headers = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or os.environ.get(
            "OTEL_EXPORTER_OTLP_HEADERS", ""
        )
        return _BoundedOtlpExporter(
            OtlpJsonHttpSpanExporter(
                url, timeout=timeout, headers=parse_resource_attributes(headers)
            ),
            url,
            report=report,
        )
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError as exc:
            raise ConfigurationError(
                "otlp_protocol='grpc' needs opentelemetry-exporter-otlp-proto-grpc "
                "(pip install 'odibi-observe[grpc]')"
            ) from exc
        grpc_exporter: SpanExporter = GrpcSpanExporter(
            endpoint=endpoint, insecure=endpoint.startswith("http://"), timeout=timeout
        )
        return grpc_exporter
    raise ConfigurationError(
        f"otlp_protocol={protocol!r}: choose one of {', '.join(OTLP_PROTOCOLS)}"
    )


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

        exporter = GrpcMetricExporter(
            endpoint=endpoint, insecure=endpoint.startswith("http://"), timeout=timeout
        )
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
                f"metrics:{url}",
                "odibi-observe: OTel metrics could not be exported to %s "
                "(%s); the next export sends the cumulative values again, and the Prometheus "
                "sink has them",
                url,
                attempt.last_error,
            )
        return result

    exporter.export = export
