"""The sidecar's OTLP/HTTP trace receiver: ``POST /v1/traces`` into the span ledger.

This is the receiving half of the OTLP/HTTP protocol, written to the specification so that any
OTLP exporter — the OpenTelemetry SDKs' ``OTLPSpanExporter``, a Collector's ``otlphttp``
exporter — can deliver to it unchanged:

* bodies are binary protobuf (``application/x-protobuf``) or OTLP/JSON (``application/json``,
  decoded by :func:`odibi_observe._otlp_json.decode_request_json`, which handles OTLP/JSON's hex
  ids), optionally ``Content-Encoding: gzip`` (or ``deflate``); another media type or encoding
  is ``415``;
* success is ``200`` with an ``ExportTraceServiceResponse`` in the request's own encoding; spans
  the ledger could not store are reported in ``partial_success`` (``rejected_spans`` and an
  ``error_message``), as the specification asks, rather than failing the request: resending
  the same spans would be rejected again;
* a body that does not decode is ``400`` with a ``google.rpc.Status`` message — not retryable,
  the sender must not loop on it;
* when the ledger's database is unavailable the answer is ``503`` with ``Retry-After``: a
  retryable status, so the exporter (or the Collector's sending queue) keeps the spans and
  tries again. Spans are never acknowledged before they are committed.

Bounds and access: the body is limited (``413`` before reading it when ``Content-Length``
says so, and while decompressing, so a small gzip bomb cannot expand into memory). An optional
bearer token is compared in constant time (``hmac.compare_digest``); without it the receiver
relies on its listen address (127.0.0.1 by default).

The spans' run fields are decoded by :func:`odibi_observe._spandecode.decode_view` (inside
:meth:`~odibi_observe.sidecar.ledger.SpanLedger.store`), the decoder reconciliation reads
OTLP-JSON files and Tempo with, so a span means the same run here and there whatever the
body's encoding.

Every span is counted once in ``odibi_observe_ledger_spans_total{outcome}`` —
``stored``, ``duplicate``, ``ignored`` (not an odibi node span) or ``rejected``.
"""

from __future__ import annotations

import hmac
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Final, Protocol

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.exc import SQLAlchemyError

from odibi_observe._otlp_json import SpanView, decode_request_json, iter_spans
from odibi_observe._redact import error_text, safe_text
from odibi_observe._selfmetrics import SelfMonitor, log
from odibi_observe.conventions import SIDECAR_METRICS
from odibi_observe.sidecar.ledger import LedgerResult, SpanLedger
from odibi_observe.sidecar.options import DEFAULT_MAX_BODY_BYTES, TRACES_PATH

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "TRACES_PATH",
    "Headers",
    "ReceiverResponse",
    "TraceReceiver",
]

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"

#: gRPC status codes carried in ``google.rpc.Status`` (the OTLP/HTTP error body).
_INVALID_ARGUMENT: Final = 3
_RESOURCE_EXHAUSTED: Final = 8
_INTERNAL: Final = 13
_UNAVAILABLE: Final = 14
_UNAUTHENTICATED: Final = 16

_OUTCOMES: Final = ("stored", "duplicate", "ignored", "rejected")

#: Spans turned into Python objects and stored per ledger transaction. The decoded request
#: (protobuf's compact C representation, ~2.7x the wire size) is held for the whole export;
#: the Python view of a span and its row (~1 KiB each) only for one chunk. Without chunking
#: a 14 MiB export of 135 000 small spans took 470 MiB; with it, see docs/operations.md.
SPANS_PER_STORE: Final = 5_000
#: Concatenated gzip members accepted in one body (exporters send exactly one).
MAX_GZIP_MEMBERS: Final = 16
#: Rejection reasons kept for one answer's ``partial_success.error_message``.
_MAX_ERRORS: Final = 5


@dataclass(frozen=True)
class ReceiverResponse:
    """An HTTP answer: status, body, its media type and any extra headers.

    ``close`` asks the server to close the connection after answering: set when the request
    body was not read (401, 413), since what is left of it would be parsed as the next
    request on a kept-alive connection.
    """

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


class Headers(Protocol):
    """Request headers looked up case-insensitively (``http.client.HTTPMessage`` is)."""

    def get(self, name: str, /) -> str | None: ...


class BodyTooLarge(ValueError):
    """The body (or what it decompresses to) is larger than the receiver accepts."""


class TraceReceiver:
    """Decodes OTLP/HTTP trace exports and stores their odibi node spans in ``ledger``.

    Transport-neutral: :class:`~odibi_observe.sidecar.server.SidecarServer` reads the request
    and calls :meth:`check_headers` (before reading the body) and :meth:`export`. Counters go
    to ``registry``; database failures are also counted as ``odibi_observe_sink_errors_total
    {sink="ledger"}`` through ``monitor`` when one is given.
    """

    def __init__(
        self,
        ledger: SpanLedger,
        *,
        registry: CollectorRegistry | None = None,
        monitor: SelfMonitor | None = None,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        retry_after: int = 5,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self.ledger = ledger
        self.monitor = monitor
        self.max_body_bytes = max_body_bytes
        self.retry_after = retry_after
        self._token = token.encode("utf-8") if token else None
        metric = SIDECAR_METRICS.ledger_spans
        self.spans = Counter(
            metric.prometheus_base,
            metric.description,
            metric.labels,
            registry=registry if registry is not None else CollectorRegistry(),
        )
        # Children created up front: every outcome is exposed (at 0) from the first scrape,
        # so a rate() over it has no gap when the first rejection happens.
        self._counts = {outcome: self.spans.labels(outcome=outcome) for outcome in _OUTCOMES}

    @property
    def requires_token(self) -> bool:
        return self._token is not None

    # -- before the body -----------------------------------------------------------------

    def check_headers(self, headers: Headers) -> ReceiverResponse | None:
        """An early answer (401, 411, 413, 415) from the headers alone, or None to go on.

        Authentication comes first, so an unauthenticated client learns nothing else.
        """
        if not self.authorized(headers.get("Authorization")):
            return _status(
                401,
                _UNAUTHENTICATED,
                "missing or wrong bearer token",
                JSON,
                headers=(("WWW-Authenticate", 'Bearer realm="odibi-observe"'),),
                close=True,
            )
        media = _media_type(headers.get("Content-Type"))
        if media not in (PROTOBUF, JSON):
            return _status(
                415,
                _INVALID_ARGUMENT,
                f"unsupported Content-Type {media or '(none)'!r}: use {PROTOBUF} or {JSON}",
                JSON,
                close=True,
            )
        encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            return _status(
                415,
                _INVALID_ARGUMENT,
                f"unsupported Content-Encoding {encoding!r}: use gzip",
                media,
                close=True,
            )
        length = headers.get("Content-Length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return _status(
                    400, _INVALID_ARGUMENT, "Content-Length is not a number", media, close=True
                )
            if size < 0:
                return _status(
                    400, _INVALID_ARGUMENT, "Content-Length is negative", media, close=True
                )
            if size > self.max_body_bytes:
                return self.too_large(media)
        return None

    def authorized(self, authorization: str | None) -> bool:
        """Whether ``authorization`` (the header's value) carries the configured token."""
        if self._token is None:
            return True
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        # compare_digest takes as long whatever the first differing byte: no timing oracle.
        return hmac.compare_digest(credentials.strip().encode("utf-8"), self._token)

    def too_large(self, media: str) -> ReceiverResponse:
        return _status(
            413,
            _RESOURCE_EXHAUSTED,
            f"request body larger than {self.max_body_bytes} bytes; send smaller batches",
            media,
            close=True,
        )

    # -- the export ----------------------------------------------------------------------

    def export(self, headers: Headers, body: bytes) -> ReceiverResponse:
        """Decode ``body`` and store its odibi node spans; the OTLP/HTTP answer."""
        media = _media_type(headers.get("Content-Type"))
        encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
        try:
            raw = _decompress(body, encoding, self.max_body_bytes)
        except BodyTooLarge:
            return self.too_large(media)
        except (ValueError, zlib.error) as exc:
            return _status(400, _INVALID_ARGUMENT, f"body is not valid {encoding}: {exc}", media)
        try:
            request = _decode(raw, media)
        except RecursionError:
            return _status(
                400,
                _INVALID_ARGUMENT,
                f"body is not an OTLP ExportTraceServiceRequest ({media}): nested too deeply",
                media,
            )
        except (ValueError, DecodeError) as exc:
            return _status(
                400,
                _INVALID_ARGUMENT,
                f"body is not an OTLP ExportTraceServiceRequest ({media}): {error_text(exc, 300)}",
                media,
            )
        del raw
        result = LedgerResult()
        try:
            for chunk in _chunks(iter_spans(request), SPANS_PER_STORE):
                result = _merge(result, self.ledger.store(chunk))
        except SQLAlchemyError as exc:
            # The database is down, locked, read-only or out of space. The chunks committed
            # so far are kept; 503 is retryable under OTLP/HTTP, so the sender resends the
            # whole request and those spans count as duplicates (the ledger is idempotent).
            self._count(result)
            self._ledger_failed(exc)
            return _status(
                503,
                _UNAVAILABLE,
                "span ledger unavailable, retry later",
                media,
                headers=(("Retry-After", str(self.retry_after)),),
            )
        except Exception as exc:  # a bug here must answer, not kill the connection thread
            log.exception("odibi-observe sidecar: storing spans failed after %d", result.received)
            if self.monitor is not None:
                self.monitor.sink_error("ledger")
            return _status(500, _INTERNAL, f"internal error: {type(exc).__name__}", media)
        self._count(result)
        return _success(result, media)

    def _count(self, result: LedgerResult) -> None:
        for outcome, n in (
            ("stored", result.stored),
            ("duplicate", result.duplicates),
            ("ignored", result.ignored),
            ("rejected", result.rejected),
        ):
            if n:
                self._counts[outcome].inc(n)
        if self.monitor is None:
            return
        for attribute, n in result.invalid_attributes.items():
            self.monitor.invalid_input.labels(field=attribute).inc(n)
            self.monitor.warn_once_per_minute(
                f"ledger:invalid:{attribute}",
                "odibi-observe sidecar: span attribute %s had "
                "the wrong type in %d span(s); stored as NULL in the span ledger",
                attribute,
                n,
            )
        if result.rejected:
            self.monitor.warn_once_per_minute(
                "ledger:rejected",
                "odibi-observe sidecar rejected %d span(s): %s",
                result.rejected,
                "; ".join(result.errors),
            )

    def _ledger_failed(self, exc: Exception) -> None:
        if self.monitor is not None:
            self.monitor.sink_error("ledger")
            self.monitor.warn_once_per_minute(
                "ledger:down",
                "odibi-observe sidecar: span ledger unavailable (%s: %s); "
                "answering 503 so senders retry",
                type(exc).__name__,
                (error_text(exc, 300).splitlines() or [""])[0],
            )
        else:
            log.warning("odibi-observe sidecar: span ledger unavailable (%s)", type(exc).__name__)


# -- encoding helpers ------------------------------------------------------------------------


def _chunks(spans: Iterator[SpanView], size: int) -> Iterator[list[SpanView]]:
    """``spans`` in lists of at most ``size``: only one list is ever built at a time."""
    while chunk := list(islice(spans, size)):
        yield chunk


def _merge(a: LedgerResult, b: LedgerResult) -> LedgerResult:
    invalid = dict(a.invalid_attributes)
    for name, n in b.invalid_attributes.items():
        invalid[name] = invalid.get(name, 0) + n
    return LedgerResult(
        stored=a.stored + b.stored,
        duplicates=a.duplicates + b.duplicates,
        ignored=a.ignored + b.ignored,
        rejected=a.rejected + b.rejected,
        invalid_attributes=invalid,
        errors=(a.errors + b.errors)[:_MAX_ERRORS],
    )


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _decode(raw: bytes, media: str) -> ExportTraceServiceRequest:
    if media == JSON:
        return decode_request_json(raw)
    request = ExportTraceServiceRequest()
    request.ParseFromString(raw)
    return request


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded from ``encoding``, never more than ``limit`` bytes of output.

    Decompression is bounded by ``max_length`` rather than checked afterwards: a 16 KiB gzip
    body can expand to gigabytes. Concatenated gzip members (valid gzip) are read, at most
    :data:`MAX_GZIP_MEMBERS` of them: exporters send one, and each member costs a fresh
    inflater, so a body of 200 000 empty members would otherwise cost seconds of CPU.
    """
    if encoding == "identity":
        if len(body) > limit:
            raise BodyTooLarge
        return body
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    out = bytearray()
    data = body
    for _member in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(data, limit + 1 - len(out))
        if len(out) > limit or inflater.unconsumed_tail:
            raise BodyTooLarge
        if not inflater.eof:
            raise ValueError("compressed body is truncated")
        data = inflater.unused_data
        if not data or encoding != "gzip":
            return bytes(out)
    raise ValueError(f"more than {MAX_GZIP_MEMBERS} gzip members")


def _encode(message: Message, media: str) -> bytes:
    if media == JSON:
        return str(json_format.MessageToJson(message, indent=None)).encode("utf-8")
    return bytes(message.SerializeToString())


def _status(
    http_status: int,
    code: int,
    message: str,
    media: str,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    close: bool = False,
) -> ReceiverResponse:
    """An OTLP/HTTP failure: a ``google.rpc.Status`` in the request's encoding."""
    media = media if media in (PROTOBUF, JSON) else JSON
    body = _encode(status_pb2.Status(code=code, message=message), media)
    return ReceiverResponse(http_status, body, media, headers, close)


def _success(result: LedgerResult, media: str) -> ReceiverResponse:
    response = ExportTraceServiceResponse()
    notes = []
    if result.rejected:
        response.partial_success.rejected_spans = result.rejected
        notes.append("rejected: " + "; ".join(result.errors))
    if result.invalid_attributes:
        # A warning with rejected_spans = 0 is how OTLP reports accepted-with-problems.
        wrong = ", ".join(f"{k} ({n})" for k, n in sorted(result.invalid_attributes.items()))
        notes.append(f"attributes of the wrong type stored as null: {wrong}")
    if notes:
        response.partial_success.error_message = safe_text("; ".join(notes), 2_000)
    return ReceiverResponse(200, _encode(response, media), media)
