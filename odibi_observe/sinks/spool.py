"""The sink of ``mode="sidecar"``: append each event to the write-ahead spool, nothing else.

In sidecar mode the pipeline process does the least work that still makes the record durable:
one framed ``os.write`` per event on the caller's thread (the bus runs inline), so the
``RUNNING`` marker is in the spool before the node's body starts and the terminal record is
there before the decorator returns. A ``SIGKILL`` a microsecond later loses neither; the
sidecar reads them and does the rest (catalog, spans, metrics, and the sweeper for runs that
never finished).

A full spool (its size limit or the disk) makes :meth:`SpoolSink.export` raise, so the bus
keeps the events in its bounded retry buffer and counts what it finally has to drop — never a
silent loss. Recovery is piecewise: when room returns, a batch stores the oldest events that
fit and raises for the rest; the stored ones are remembered (by identity, for one re-send) and
skipped when the bus delivers the batch again, so a backlog larger than the room drains in
order without writing any event twice.

The trace tree
--------------
A node span nests under whatever span is current when the node starts (a pipeline span,
Odibi's ``node_execution`` span): the record carries its ``trace_id`` and ``parent_span_id``.
Those parents are the application's own, live spans. In-process, the OTel sink installs the
tracer provider that records them; in sidecar mode there is no such sink in the pipeline
process, so :meth:`SpoolSink.carry_application_spans` installs one whose only processor,
:class:`SpoolSpanProcessor`, spools every ended span as a *span frame* —
``{"kind":"span","span":{...}}`` (:func:`encode_span`), next to the run events. The sidecar's
pump hands span frames to the sinks that take spans (:func:`takes_spans`: the OTel sink's
``export_spans``) and skips them for the others, so the sidecar exports the very tree the
pipeline process would have exported itself: the same ids, names, times, attributes and
resource.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from odibi_observe._selfmetrics import SelfMonitor, log
from odibi_observe.conventions import RESOURCE_HOST, RESOURCE_PID, RESOURCE_SERVICE_NAME
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sinks.base import Sink, SinkUnavailable

if TYPE_CHECKING:
    from odibi_observe.config import Settings
    from odibi_observe.spool import Spool

#: How a span frame's payload begins (a run event's begins with ``{"kind":"started"`` etc.).
SPAN_FRAME_PREFIX: Final = b'{"kind":"span",'
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)


class SpoolSink(Sink):
    """Writes run events (``RunEvent.to_json``) to a :class:`~odibi_observe.spool.Spool`."""

    name = "spool"
    scheme = "spool"  # its key in odibi_observe.extensions
    #: Every kind, pipeline runs included: the sidecar hands each to the sinks that take it.
    kinds = frozenset(EventKind)
    #: A retry costs a size check on local disk, so the bus retries at most this long after a
    #: refusal: a long-lived process is back as soon as the sidecar has freed room.
    max_retry_delay: float = 0.05

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        # Events of batches that raised although they were stored (a prefix that fitted), by
        # id(). The bus keeps a failed batch whole and sends it again, oldest first, so these
        # come back at its head until a call succeeds; holding them keeps their ids unique.
        # They are at most the bus's retry buffer, which holds them anyway.
        self._stored: dict[int, RunEvent] = {}
        self._span_processor: SpoolSpanProcessor | None = None
        self._router: Any = None  # otel._GlobalRouter, once carry_application_spans() ran

    def export(self, events: Sequence[RunEvent]) -> None:
        from odibi_observe.spool import SpoolFullError

        already = self._stored
        kept = {id(e): e for e in events if already.get(id(e)) is e} if already else {}
        todo = [e for e in events if id(e) not in kept] if kept else events
        self._stored = {}
        if not todo:
            return
        try:
            if len(todo) == 1:
                self.spool.append(todo[0].to_json().encode())
            else:
                self.spool.append_many([e.to_json().encode() for e in todo], partial=True)
        except SpoolFullError as exc:
            kept.update((id(e), e) for e in todo[: exc.stored])
            self._stored = kept
            raise SinkUnavailable(
                f"spool full ({exc.reason}; {exc.stored} of {len(todo)} "
                f"event(s) stored): {self.spool_dir}"
            ) from exc

    @property
    def spool_dir(self) -> str:
        return str(self.spool.directory)

    def force_flush(self, timeout: float | None = None) -> bool:
        self.spool.sync()
        return True

    def carry_application_spans(self, settings: Settings, monitor: SelfMonitor) -> bool:
        """Record the application's spans (pipeline spans, Odibi's) into the spool.

        Installs the process's global SDK tracer provider (the one the OTel sink would
        install in-process; see :mod:`odibi_observe.sinks.otel`) and routes its ended spans
        to this spool. Without it those spans are non-recording and invalid, and every node
        run becomes a trace of its own. An SDK provider the application installed is left
        alone (its spans go where it sends them; node spans still nest under them). Returns
        whether the spans are carried. Never raises.
        """
        from odibi_observe.sinks import otel

        try:
            if otel.application_tracer_provider() is not None:
                return False
            installed = otel._install_global_provider(_resource(settings))
            if installed is None:
                return False
            self._span_processor = SpoolSpanProcessor(self.spool, monitor)
            self._router = installed[1]
            self._router.attach(self._span_processor)
            return True
        except Exception:
            log.exception(
                "odibi-observe: cannot record application spans into the spool; "
                "node spans will not nest under the pipeline span"
            )
            return False

    def shutdown(self) -> None:
        if self._router is not None and self._span_processor is not None:
            self._router.detach(self._span_processor)
        self.spool.close()

    def after_fork(self) -> None:
        self.spool.after_fork()


def _resource(settings: Settings) -> Resource:
    """The resource of the application's spans: what the OTel sink gives them in-process."""
    return Resource.create(
        {
            RESOURCE_HOST: socket.gethostname(),
            RESOURCE_PID: os.getpid(),
            **dict(settings.resource_attributes),
            RESOURCE_SERVICE_NAME: settings.service_name,
        }
    )


class SpoolSpanProcessor(SpanProcessor):
    """Appends every ended span to the spool as a span frame, on the thread that ends it.

    A span that cannot be spooled (spool full, disk error) is counted in
    ``odibi_observe_events_dropped_total{sink="spool",reason="span_<why>"}`` and warned about
    once a minute; it never raises into the code that ended the span.
    """

    def __init__(self, spool: Spool, monitor: SelfMonitor) -> None:
        self.spool = spool
        self.monitor = monitor

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        """Nothing: a span is spooled once, when it has ended."""

    def on_end(self, span: ReadableSpan) -> None:
        from odibi_observe.spool import SpoolFullError

        try:
            self.spool.append(encode_span(span))
        except SpoolFullError as exc:
            self.monitor.dropped("spool", f"span_{exc.reason}")
        except Exception as exc:
            log.debug("odibi-observe: span %r not spooled", span.name, exc_info=True)
            self.monitor.dropped("spool", f"span_{type(exc).__name__}")

    def shutdown(self) -> None:
        """Nothing: the spool belongs to the sink."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


# -- span frames ---------------------------------------------------------------------------


def is_span_frame(payload: bytes) -> bool:
    """Whether a spool payload is a span frame (not a run event)."""
    return payload.startswith(SPAN_FRAME_PREFIX)


def takes_spans(sink: object) -> bool:
    """Whether ``sink`` accepts finished application spans (``export_spans(spans)``)."""
    return bool(getattr(sink, "takes_spans", callable(getattr(sink, "export_spans", None))))


def encode_span(span: ReadableSpan) -> bytes:
    """A span frame's payload: the ended span, complete enough to export it unchanged."""
    context = span.context
    if context is None or not context.is_valid or span.end_time is None:
        raise ValueError(f"span {span.name!r} has no valid context or has not ended")
    parent = span.parent
    scope = span.instrumentation_scope
    body: dict[str, Any] = {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "flags": int(context.trace_flags),
        "kind": span.kind.value,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": [span.status.status_code.value, span.status.description],
        "attributes": _plain(span.attributes),
        "resource": _plain(span.resource.attributes),
    }
    if parent is not None and parent.is_valid:
        body["parent_span_id"] = f"{parent.span_id:016x}"
        body["parent_flags"] = int(parent.trace_flags)
    if scope is not None:
        body["scope"] = [scope.name, scope.version]
    if span.events:
        body["events"] = [[e.name, e.timestamp, _plain(e.attributes)] for e in span.events]
    text = json.dumps({"kind": "span", "span": body}, separators=(",", ":"), default=str)
    return text.encode()


def decode_span(payload: str | bytes) -> ReadableSpan:
    """Inverse of :func:`encode_span`; ``ValueError``/``KeyError``/``TypeError`` if malformed."""
    data = json.loads(payload)
    if data.get("kind") != "span":
        raise ValueError("not a span frame")
    body = data["span"]
    trace_id = int(body["trace_id"], 16)
    parent_hex = body.get("parent_span_id")
    parent = (
        None
        if not parent_hex
        else SpanContext(
            trace_id,
            int(parent_hex, 16),
            is_remote=False,
            trace_flags=TraceFlags(int(body.get("parent_flags", _SAMPLED))),
        )
    )
    code, description = body["status"]
    scope = body.get("scope")
    return ReadableSpan(
        name=str(body["name"]),
        context=SpanContext(
            trace_id,
            int(body["span_id"], 16),
            is_remote=False,
            trace_flags=TraceFlags(int(body.get("flags", _SAMPLED))),
        ),
        parent=parent,
        resource=Resource(_attributes(body.get("resource"))),
        attributes=_attributes(body.get("attributes")),
        events=[
            Event(str(name), _attributes(attrs), timestamp=int(ts))
            for name, ts, attrs in body.get("events") or ()
        ],
        kind=SpanKind(int(body["kind"])),
        status=Status(StatusCode(int(code)), description),
        start_time=int(body["start_ns"]),
        end_time=int(body["end_ns"]),
        instrumentation_scope=None if scope is None else InstrumentationScope(*scope),
    )


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {str(k): list(v) if isinstance(v, tuple) else v for k, v in (attributes or {}).items()}


def _attributes(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {}
    return {str(k): tuple(v) if isinstance(v, list) else v for k, v in data.items()}
