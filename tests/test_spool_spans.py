"""Application spans through the spool (sidecar mode): the parents node spans nest under.

A real SDK tracer provider ends real spans into :class:`SpoolSpanProcessor`, a real spool
keeps them next to run events, and the pump delivers them to a real OTel sink writing an
OTLP-JSON file — the path a pipeline span takes from a pipeline process to the sidecar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from odibi_observe._otlp_json import read_spans
from odibi_observe._pump import SpoolPump
from odibi_observe._selfmetrics import SelfMonitor
from odibi_observe.sinks.otel import OtelSink
from odibi_observe.sinks.spool import (
    SPAN_FRAME_PREFIX,
    SpoolSpanProcessor,
    decode_span,
    encode_span,
    takes_spans,
)
from odibi_observe.spool import Spool
from odibi_observe.testing import InMemorySink
from tests.helpers import finished, make_record


def _provider(spool: Spool, monitor: SelfMonitor) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SpoolSpanProcessor(spool, monitor))
    return provider


def test_spooled_spans_are_exported_unchanged_and_other_sinks_skip_them(tmp_path: Path) -> None:
    monitor = SelfMonitor(CollectorRegistry())
    spool = Spool(tmp_path / "spool", fsync="never")
    tracer = _provider(spool, monitor).get_tracer("app", "1.2")
    with tracer.start_as_current_span(
        "pipeline sales", attributes={"odibi.pipeline": "sales"}
    ) as parent:
        with tracer.start_as_current_span(
            "node_execution", attributes={"node.name": "a", "tags": ("x", "y")}
        ) as child:
            child.add_event("retry", {"attempt": 2})
            child.set_status(StatusCode.ERROR, "boom")
        record = make_record(
            trace_id=f"{child.get_span_context().trace_id:032x}",
            parent_span_id=f"{child.get_span_context().span_id:016x}",
        )
        spool.append(finished(record).to_json().encode())

    traces = tmp_path / "traces.jsonl"
    otel = OtelSink(traces_file=traces, install_global=False, metrics=False)
    catalog_like = InMemorySink()
    assert takes_spans(otel) and not takes_spans(catalog_like)
    pump = SpoolPump(spool, [otel, catalog_like], monitor=monitor)
    assert pump.pump_once() == 2 * 3
    assert pump.backlog() == {"otel": 0, catalog_like.name: 0}
    assert [e.run_id for e in catalog_like.events] == [record.run_id]  # no span frames

    spans = {s.name: s for s in read_spans(traces, strict=True)}
    assert set(spans) == {"pipeline sales", "node_execution", "node clean"}
    root, mid, node = spans["pipeline sales"], spans["node_execution"], spans["node clean"]
    assert (root.span_id, root.parent_span_id) == (
        f"{parent.get_span_context().span_id:016x}",
        None,
    )
    assert mid.parent_span_id == root.span_id and node.parent_span_id == mid.span_id
    assert {root.trace_id, mid.trace_id} == {node.trace_id}
    assert mid.attributes == {"node.name": "a", "tags": ("x", "y")}
    assert (mid.status_code, mid.status_message) == (2, "boom")
    assert mid.events == [("retry", {"attempt": 2})]
    assert (mid.scope_name, mid.scope_version) == ("app", "1.2")
    assert mid.start_ns == child.start_time and mid.end_ns == child.end_time  # type: ignore[attr-defined]


def test_a_span_round_trips_through_its_frame() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner") as span:
        pass
    payload = encode_span(span)  # type: ignore[arg-type]
    assert payload.startswith(SPAN_FRAME_PREFIX)
    back = decode_span(payload)
    # The SDK's ``Span`` is a ReadableSpan at run time; the API type it is declared as is not.
    readable: Any = span
    assert (back.name, back.context, back.parent, back.start_time, back.end_time) == (
        readable.name,
        readable.context,
        readable.parent,
        readable.start_time,
        readable.end_time,
    )


def test_an_unreadable_span_frame_is_counted_and_skipped(tmp_path: Path) -> None:
    monitor = SelfMonitor(CollectorRegistry())
    spool = Spool(tmp_path / "spool", fsync="never")
    spool.append(SPAN_FRAME_PREFIX + b'"span":{"name":"x"}}')  # no ids: cannot be a span
    record = make_record()
    spool.append(finished(record).to_json().encode())
    traces = tmp_path / "traces.jsonl"
    pump = SpoolPump(
        spool, [OtelSink(traces_file=traces, install_global=False, metrics=False)], monitor=monitor
    )
    assert pump.pump_once() == 2  # acknowledged: retrying could never succeed
    assert [s.name for s in read_spans(traces)] == ["node clean"]
    assert (
        monitor.registry.get_sample_value(
            "odibi_observe_invalid_input_total", {"field": "spool_payload"}
        )
        == 1
    )


def test_a_span_the_spool_cannot_take_is_counted_and_never_raises(tmp_path: Path) -> None:
    monitor = SelfMonitor(CollectorRegistry())
    spool = Spool(tmp_path / "spool", fsync="never", max_bytes=1)
    tracer = _provider(spool, monitor).get_tracer("t")
    with tracer.start_as_current_span("pipeline sales"):
        pass  # ending it must not raise into the application
    assert (
        monitor.registry.get_sample_value(
            "odibi_observe_events_dropped_total", {"sink": "spool", "reason": "span_size_limit"}
        )
        == 1
    )
