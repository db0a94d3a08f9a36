"""OTel sink and OTLP/JSON: what crosses the wire is the run record, exactly.

Spans are checked where they arrive — a real OTLP receiver over TCP, an OTLP/JSON file, an
application's own span pipeline — never by inspecting the sink. Everything that needs the
process-global OpenTelemetry providers (which can be set once per process) runs in a
subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from odibi_observe._bus import EventBus
from odibi_observe._otlp_json import (
    OtlpJsonFileSpanExporter,
    OtlpJsonHttpSpanExporter,
    SpanView,
    decode_request_json,
    encode_request_json,
    encode_spans_json,
    iter_spans,
    read_spans,
)
from odibi_observe.config import Settings
from odibi_observe.conventions import (
    CICD_PIPELINE_NAME,
    CICD_PIPELINE_RUN_ID,
    CICD_TASK_NAME,
    CICD_TASK_RUN_ID,
    CICD_TASK_RUN_RESULT,
    EXCEPTION_STACKTRACE,
    FIELDS,
    INSTRUMENTATION_SCOPE,
    METRICS,
    RESOURCE_FIELDS,
    RESOURCE_HOST,
    RESOURCE_PID,
    SPAN_NAME_FORMAT,
    TASK_RUN_RESULTS,
    USER_ATTRIBUTE_PREFIX,
    RunStatus,
)
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.base import RecordRejected, SinkExportError
from odibi_observe.sinks.otel import OtelSink, _signal_url, app_span_processor, record_to_span
from tests.helpers import POISON_NODE, POISON_NODE_ESCAPED, finished, make_record, started
from tests.otlp_receiver import OtlpGrpcReceiver, OtlpReceiver

ROOT = Path(__file__).resolve().parents[1]
STATUS_UNSET, STATUS_ERROR = 0, 2
SPAN_KIND_INTERNAL = 1


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_global_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every test start as in a fresh process: no application-configured OTel.

    Other test modules may configure global providers; the sink decides its delivery mode from
    them, so each test here sees the unset state unless it passes providers explicitly.
    """
    import opentelemetry.metrics._internal as metrics_internal

    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    monkeypatch.delenv("OTEL_PYTHON_METER_PROVIDER", raising=False)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def failed_record(**changes: Any) -> RunRecord:
    """A failed run carrying every optional fact, so every attribute is exercised."""
    values: dict[str, Any] = dict(
        status=RunStatus.FAILURE,
        rows=7,
        duration_ns=2_500_000_000,
        parent_span_id="00f067aa0ba902b7",
        pipeline_run_id="prun-1",
        attempt=2,
        error_type="ValueError",
        error_message="column 'id' has nulls",
        suggestions=("check the source extract", "add a not-null filter"),
        attributes={"region": "eu", "batch": 3, "tags": ("a", "b")},
        host="worker-7",
        pid=4242,
        service_name="sales-etl",
        peak_rss_bytes=300 * 1024 * 1024,
        cpu_seconds=1.25,
        memory_limit_bytes=512 * 1024 * 1024,
    )
    values.update(changes)
    return make_record(**values)


def expected_attributes(rec: RunRecord) -> dict[str | None, Any]:
    """The span attributes the conventions table promises for ``rec``."""
    out: dict[str | None, Any] = {
        FIELDS.run_id.attribute: rec.run_id,
        FIELDS.project.attribute: rec.project,
        FIELDS.pipeline.attribute: rec.pipeline,
        FIELDS.node.attribute: rec.node,
        FIELDS.attempt.attribute: rec.attempt,
        FIELDS.status.attribute: rec.status.value,
        FIELDS.duration.attribute: rec.duration_ms,
        FIELDS.environment.attribute: rec.environment,
    }
    if rec.pipeline_run_id:
        out[FIELDS.pipeline_run_id.attribute] = rec.pipeline_run_id
    if rec.rows_processed is not None:
        out[FIELDS.rows.attribute] = rec.rows_processed
    if rec.suggestions:
        out[FIELDS.suggestions.attribute] = tuple(rec.suggestions)
    if rec.error_type:
        out[FIELDS.error.attribute] = rec.error_type
    if rec.peak_rss_bytes is not None:
        out[RESOURCE_FIELDS.peak_rss.attribute] = rec.peak_rss_bytes
    if rec.cpu_seconds is not None:
        out[RESOURCE_FIELDS.cpu.attribute] = rec.cpu_seconds
    if rec.memory_limit_bytes is not None:
        out[RESOURCE_FIELDS.memory_limit.attribute] = rec.memory_limit_bytes
    for key, value in rec.attributes.items():
        out[USER_ATTRIBUTE_PREFIX + key] = value
    out[CICD_PIPELINE_NAME] = rec.pipeline
    if rec.pipeline_run_id:
        out[CICD_PIPELINE_RUN_ID] = rec.pipeline_run_id
    out[CICD_TASK_NAME] = rec.node
    out[CICD_TASK_RUN_ID] = rec.run_id
    out[CICD_TASK_RUN_RESULT] = TASK_RUN_RESULTS[rec.status]
    return out


def assert_span_is_record(span: SpanView, rec: RunRecord) -> None:
    """The decoded span carries exactly the record's ids, times, attributes and status."""
    assert span.trace_id == rec.trace_id
    assert span.span_id == rec.span_id
    assert span.parent_span_id == rec.parent_span_id
    assert span.start_ns == rec.started_ns
    assert span.end_ns == rec.ended_ns
    assert span.name == SPAN_NAME_FORMAT.format(node=rec.node)
    assert span.kind == SPAN_KIND_INTERNAL
    assert span.attributes == expected_attributes(rec)
    assert span.scope_name == INSTRUMENTATION_SCOPE
    assert span.resource["service.name"] == rec.service_name
    assert span.resource[RESOURCE_HOST] == rec.host
    assert span.resource[RESOURCE_PID] == rec.pid
    if rec.status is RunStatus.SUCCESS:
        assert span.status_code == STATUS_UNSET
        assert span.events == []
    else:
        assert span.status_code == STATUS_ERROR
        assert span.status_message == f"{rec.error_type}: {rec.error_message}"
        assert span.events == [
            (
                "exception",
                {"exception.type": rec.error_type, "exception.message": rec.error_message},
            )
        ]
        assert span.event_times_ns == (rec.ended_ns,)


def otlp_sink(endpoint: str, **kwargs: Any) -> OtelSink:
    kwargs.setdefault("install_global", False)
    kwargs.setdefault("metrics", False)
    return OtelSink(otlp_endpoint=endpoint, **kwargs)


# --------------------------------------------------------------- (a) over the OTLP wire


def test_failed_run_arrives_over_otlp_http_as_the_record(receiver: OtlpReceiver) -> None:
    sink = otlp_sink(receiver.endpoint)
    rec = failed_record()
    running = rec.finished(status=RunStatus.RUNNING, ended_ns=None)
    sink.export([started(running), RunEvent(EventKind.HEARTBEAT, running), finished(rec)])
    sink.shutdown()

    [span] = receiver.wait_for_spans(1)
    assert_span_is_record(span, rec)
    assert receiver.content_types == ["application/x-protobuf"]
    assert span.scope_version  # the package version, so backends can tell releases apart


def test_successful_run_leaves_status_unset(receiver: OtlpReceiver) -> None:
    sink = otlp_sink(receiver.endpoint)
    rec = make_record(status=RunStatus.SUCCESS, rows=None, parent_span_id=None)
    sink.export([finished(rec)])

    [span] = receiver.wait_for_spans(1)
    assert_span_is_record(span, rec)
    assert span.parent_span_id is None
    assert FIELDS.rows.attribute not in span.attributes  # unknown rows are not 0 rows
    for f in RESOURCE_FIELDS:  # unmeasured resources are absent, not 0
        assert f.attribute not in span.attributes


def test_resource_fields_arrive_as_span_attributes(receiver: OtlpReceiver) -> None:
    """Peak memory, CPU time and the memory limit cross the OTLP wire with their types."""
    sink = otlp_sink(receiver.endpoint)
    rec = make_record(peak_rss_bytes=209_715_200, cpu_seconds=0.75, memory_limit_bytes=268_435_456)
    sink.export([finished(rec)])
    sink.shutdown()

    [span] = receiver.wait_for_spans(1)
    got = {f.key: span.attributes.get(str(f.attribute)) for f in RESOURCE_FIELDS}
    assert got == {"peak_rss": 209_715_200, "cpu": 0.75, "memory_limit": 268_435_456}
    assert_span_is_record(span, rec)


def test_crashed_run_without_error_details_is_still_an_error_span(receiver: OtlpReceiver) -> None:
    sink = otlp_sink(receiver.endpoint)
    rec = make_record(status=RunStatus.CRASHED, error_type=None, error_message=None)
    sink.export([finished(rec)])

    [span] = receiver.wait_for_spans(1)
    assert span.status_code == STATUS_ERROR
    assert span.status_message
    [(name, attrs)] = span.events
    assert name == "exception" and attrs["exception.message"] == span.status_message


def test_http_json_protocol_posts_otlp_json(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,authorization=Bearer%20t")
    sink = otlp_sink(receiver.endpoint, otlp_protocol="http/json")
    rec = failed_record()
    sink.export([finished(rec)])

    [span] = receiver.wait_for_spans(1)
    assert receiver.content_types == ["application/json"]
    assert_span_is_record(span, rec)
    # The same header variables the SDK's OTLP exporters honour (auth, tenant).
    assert receiver.request_headers[0]["x-tenant"] == "acme"
    assert receiver.request_headers[0]["authorization"] == "Bearer t"


def test_after_fork_gets_a_new_connection_and_keeps_exporting(receiver: OtlpReceiver) -> None:
    sink = otlp_sink(receiver.endpoint)
    sink.export([finished(make_record())])
    sink.after_fork()  # what the bus calls in a forked child
    rec = make_record()
    sink.export([finished(rec)])
    assert receiver.wait_for_spans(2)[1].span_id == rec.span_id


def test_json_exporter_gzip_and_failures(receiver: OtlpReceiver) -> None:
    rec = failed_record()
    span = record_to_span(rec, Resource.create({}))
    exporter = OtlpJsonHttpSpanExporter(
        _signal_url(receiver.endpoint, "traces"), compression="gzip", timeout=2
    )
    assert exporter.export([span]) is SpanExportResult.SUCCESS
    assert_span_is_record(receiver.wait_for_spans(1)[0], rec)

    receiver.down = True
    assert exporter.export([span]) is SpanExportResult.FAILURE
    refused = OtlpJsonHttpSpanExporter("http://127.0.0.1:9/v1/traces", timeout=1)
    assert refused.export([span]) is SpanExportResult.FAILURE
    with pytest.raises(ValueError):
        OtlpJsonHttpSpanExporter("ftp://collector/v1/traces")


def test_signal_url_follows_the_otlp_http_base_url_rule() -> None:
    assert _signal_url("http://c:4318", "traces") == "http://c:4318/v1/traces"
    assert _signal_url("http://c:4318/", "traces") == "http://c:4318/v1/traces"
    assert _signal_url("http://c:4318/v1/traces", "traces") == "http://c:4318/v1/traces"
    assert _signal_url("http://c:4318/v1/traces", "metrics") == "http://c:4318/v1/metrics"
    assert _signal_url("https://gw/otlp", "traces") == "https://gw/otlp/v1/traces"


# --------------------------------------------------------------------------- (b) outage


def test_outage_raises_for_retry_and_the_retry_carries_the_original_span(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    traces_file = tmp_path / "traces.jsonl"
    sink = otlp_sink(receiver.endpoint, otlp_timeout=1.0, traces_file=str(traces_file))
    rec = failed_record()
    batch = [finished(rec)]

    receiver.down = True
    with pytest.raises(SinkExportError):
        sink.export(batch)
    assert receiver.refused >= 1 and receiver.spans == []

    receiver.down = False
    sink.export(batch)  # what the bus does with the batch it kept
    [span] = receiver.wait_for_spans(1)
    assert_span_is_record(span, rec)
    # The file had the span after the first attempt; the retry did not write it twice.
    assert len(traces_file.read_text().splitlines()) == 1


def test_bus_retries_the_otel_sink_through_an_outage(receiver: OtlpReceiver) -> None:
    sink = otlp_sink(receiver.endpoint, otlp_timeout=1.0)
    bus = EventBus([sink], mode="inline", retry_initial=0.01, retry_max=0.01)
    rec = failed_record()

    receiver.down = True
    bus.emit(finished(rec))  # never raises; the batch stays in the retry buffer
    assert bus.pending() == {"otel": 1}

    receiver.down = False
    assert bus.shutdown(timeout=10)
    [span] = receiver.wait_for_spans(1)
    assert_span_is_record(span, rec)


def test_unusable_record_is_rejected_not_retried_forever(receiver: OtlpReceiver) -> None:
    """The rest of the batch is exported; the record that can never be a span is rejected
    (RecordRejected, the sink contract's "never retry these") with the reason."""
    sink = otlp_sink(receiver.endpoint)
    bad = make_record(trace_id="not-hex")
    good = make_record()
    with pytest.raises(RecordRejected) as info:
        sink.export([finished(bad), finished(good)])
    [span] = receiver.wait_for_spans(1)
    assert span.span_id == good.span_id
    assert [e.run_id for e in info.value.events] == [bad.run_id]
    assert bad.run_id in info.value.reason
    assert "trace_id 'not-hex'" in info.value.reason


def test_unencodable_text_reaches_otlp_escaped_with_the_rest_of_its_batch(
    receiver: OtlpReceiver,
) -> None:
    """protobuf refuses lone surrogates: a node named like a latin-1 file name used to fail
    the whole OTLP batch on every retry. Escaped at the boundary, the batch is exported and
    the name kept (``\\udce9`` for the byte 0xe9), in the span name and attributes."""
    sink = otlp_sink(receiver.endpoint)
    poison = make_record(node=POISON_NODE, attributes={"file": POISON_NODE})
    good = make_record()
    sink.export([finished(poison), finished(good)])
    spans = {s.span_id: s for s in receiver.wait_for_spans(2)}
    span = spans[poison.span_id]
    assert span.attributes[FIELDS.node.attribute or ""] == POISON_NODE_ESCAPED
    assert span.attributes[USER_ATTRIBUTE_PREFIX + "file"] == POISON_NODE_ESCAPED
    assert POISON_NODE_ESCAPED in span.name
    assert good.span_id in spans


def test_a_stack_with_a_lone_surrogate_reaches_otlp_escaped(receiver: OtlpReceiver) -> None:
    """A stack decoded in the sidecar from a spool frame is not one this process made through
    ``safe_text``: a lone surrogate in it must be escaped like any other text, or protobuf
    refuses the whole batch on every retry."""
    sink = otlp_sink(receiver.endpoint)
    stack = f"Traceback (most recent call last):\n  File '{POISON_NODE}'\nValueError: x\n"
    poison = failed_record(error_stack=stack)
    sink.export([finished(poison)])
    [span] = receiver.wait_for_spans(1)
    ((name, event),) = span.events
    assert name == "exception"
    assert event[EXCEPTION_STACKTRACE] == stack.replace(POISON_NODE, POISON_NODE_ESCAPED)


# ------------------------------------------------------------------------ (c) traces file


def test_traces_file_is_collector_file_exporter_format(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "traces.jsonl"  # parent dirs are created
    sink = OtelSink(traces_file=str(path), install_global=False, metrics=False)
    fail, ok = failed_record(), make_record(status=RunStatus.SUCCESS)
    sink.export([finished(fail)])
    sink.export([finished(ok)])
    sink.shutdown()

    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 3  # one request per line, newline-terminated
    for line, rec in zip(lines[:2], (fail, ok), strict=True):
        data = json.loads(line)
        assert list(data) == ["resourceSpans"]
        [resource_spans] = data["resourceSpans"]
        assert {"resource", "scopeSpans"} <= set(resource_spans)
        [scope_spans] = resource_spans["scopeSpans"]
        assert scope_spans["scope"]["name"] == INSTRUMENTATION_SCOPE
        [raw] = scope_spans["spans"]
        # hex ids (not base64), int64 as strings, enums as integers — the OTLP/JSON rules
        assert raw["traceId"] == rec.trace_id and raw["spanId"] == rec.span_id
        assert raw["parentSpanId"] == (rec.parent_span_id or "")
        assert raw["startTimeUnixNano"] == str(rec.started_ns)
        assert raw["endTimeUnixNano"] == str(rec.ended_ns)
        assert raw["kind"] == SPAN_KIND_INTERNAL
        attempt = next(a for a in raw["attributes"] if a["key"] == FIELDS.attempt.attribute)
        assert attempt["value"] == {"intValue": str(rec.attempt)}

        request = decode_request_json(line)
        [span] = iter_spans(request)
        assert_span_is_record(span, rec)
        assert encode_request_json(request) == line  # lossless round trip

    assert json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["status"] == {
        "message": f"{fail.error_type}: {fail.error_message}",
        "code": STATUS_ERROR,
    }


def test_collector_written_line_decodes() -> None:
    """A line shaped the way the Collector's file exporter writes one (root span, status
    message before code, schemaUrl, a field this decoder does not know) decodes."""
    line = (
        '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":'
        '{"stringValue":"billing"}}]},"scopeSpans":[{"scope":{"name":"billing.lib",'
        '"version":"2.0.0"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",'
        '"spanId":"eee19b7ec3c1b174","parentSpanId":"","name":"charge","kind":3,'
        '"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000500000000",'
        '"attributes":[{"key":"amount","value":{"doubleValue":12.5}},{"key":"retries",'
        '"value":{"intValue":"2"}},{"key":"ok","value":{"boolValue":true}}],'
        '"futureField":{"x":1},"status":{"message":"declined","code":2}}]}],'
        '"schemaUrl":"https://opentelemetry.io/schemas/1.21.0"}]}'
    )
    [span] = iter_spans(decode_request_json(line))
    assert span == SpanView(
        trace_id="5b8efff798038103d269b633813fc60c",
        span_id="eee19b7ec3c1b174",
        parent_span_id=None,
        name="charge",
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_500_000_000,
        attributes={"amount": 12.5, "retries": 2, "ok": True},
        status_code=2,
        status_message="declined",
        events=[],
        resource={"service.name": "billing"},
        scope_name="billing.lib",
        scope_version="2.0.0",
        kind=3,
    )
    with pytest.raises(ValueError):
        decode_request_json(line.replace("5b8efff798038103d269b633813fc60c", "zz"))


def test_read_spans_reads_a_file_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    first, second = failed_record(), make_record()
    exporter = OtlpJsonFileSpanExporter(path)
    assert exporter.export([record_to_span(first, Resource({}))]) is SpanExportResult.SUCCESS
    with path.open("a") as handle:
        handle.write('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"ab\n\n')
    assert exporter.export([record_to_span(second, Resource({}))]) is SpanExportResult.SUCCESS

    assert [s.span_id for s in read_spans(path)] == [first.span_id, second.span_id]
    with pytest.raises(ValueError, match=r"traces\.jsonl:2"):
        read_spans(path, strict=True)
    with pytest.raises(ValueError):
        decode_request_json('{"resourceSpans": 5}')


def test_one_request_is_one_line_for_every_line_splitter() -> None:
    rec = failed_record(error_message="line\nbreak\r\u2028\u2029 and ünïcode")
    line = encode_spans_json([record_to_span(rec, Resource.create({}))])
    assert len(line.splitlines()) == 1
    [span] = iter_spans(decode_request_json(line.encode("utf-8")))
    assert span.status_message.endswith("line\nbreak\r\u2028\u2029 and ünïcode")


def test_same_record_gives_the_same_span() -> None:
    rec = failed_record()
    base = Resource({"service.name": "x", "deployment.environment": "prod"})
    assert encode_spans_json([record_to_span(rec, base)]) == encode_spans_json(
        [record_to_span(rec, base)]
    )
    with pytest.raises(ValueError):
        record_to_span(rec.finished(status=RunStatus.RUNNING, ended_ns=None), base)


def test_unwritable_traces_file_raises_for_retry(tmp_path: Path) -> None:
    blocked = tmp_path / "a-directory"
    blocked.mkdir()
    assert (
        OtlpJsonFileSpanExporter(blocked).export([record_to_span(make_record(), Resource({}))])
        is SpanExportResult.FAILURE
    )
    sink = OtelSink(traces_file=str(blocked), install_global=False, metrics=False)
    with pytest.raises(SinkExportError):
        sink.export([finished(make_record())])


# ------------------------------------------------------------- (d) application's provider


def test_application_provider_receives_node_span_nested_in_its_trace(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    memory = InMemorySpanExporter()
    app = TracerProvider(resource=Resource({"service.name": "app", "team": "data"}))
    app.add_span_processor(SimpleSpanProcessor(memory))
    traces_file = tmp_path / "traces.jsonl"
    sink = OtelSink(
        tracer_provider=app,
        otlp_endpoint=receiver.endpoint,
        traces_file=str(traces_file),
        install_global=False,
        metrics=False,
    )
    tracer = app.get_tracer("pipeline")

    with tracer.start_as_current_span("pipeline sales") as pipeline_span:
        ctx = pipeline_span.get_span_context()
        rec = failed_record(trace_id=f"{ctx.trace_id:032x}", parent_span_id=f"{ctx.span_id:016x}")
        # What the instrumentation layer does while the node runs: the node's ids are current.
        node_ctx = trace.SpanContext(
            int(rec.trace_id, 16),
            int(rec.span_id, 16),
            is_remote=False,
            trace_flags=trace.TraceFlags(1),
        )
        with (
            trace.use_span(trace.NonRecordingSpan(node_ctx)),
            tracer.start_as_current_span("user query"),
        ):
            pass
        sink.export([finished(rec)])

    spans = {s.name: s for s in memory.get_finished_spans()}
    node = spans[SPAN_NAME_FORMAT.format(node=rec.node)]
    assert node.context is not None and node.parent is not None
    assert f"{node.context.trace_id:032x}" == rec.trace_id
    assert f"{node.context.span_id:016x}" == rec.span_id
    assert node.parent.span_id == ctx.span_id
    assert spans["user query"].parent.span_id == node.context.span_id  # type: ignore[union-attr]
    assert node.resource.attributes["team"] == "data"  # the application's resource...
    assert node.resource.attributes["service.name"] == rec.service_name  # ...plus the run's
    assert node.resource.attributes[RESOURCE_PID] == rec.pid
    assert receiver.spans == []  # otlp_endpoint is ignored: the application owns OTel
    [line] = traces_file.read_text().splitlines()  # the traces file is still written
    assert [s.span_id for s in iter_spans(decode_request_json(line))] == [rec.span_id]

    sink.shutdown()  # never shuts down the application's provider
    with tracer.start_as_current_span("after"):
        pass
    assert "after" in {s.name for s in memory.get_finished_spans()}


def test_app_span_processor_is_the_providers_active_processor() -> None:
    """Pins the one private SDK attribute the sink relies on (see ``app_span_processor``)."""
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    processor = app_span_processor(provider)
    assert processor is provider._active_span_processor
    processor.on_end(record_to_span(make_record(), provider.resource))
    assert len(memory.get_finished_spans()) == 1


def test_non_sdk_tracer_provider_is_refused() -> None:
    with pytest.raises(TypeError):
        OtelSink(tracer_provider=trace.NoOpTracerProvider())  # type: ignore[arg-type]


def test_span_exporters_get_spans_once_and_are_shut_down() -> None:
    memory = InMemorySpanExporter()
    sink = OtelSink(span_exporters=[memory], install_global=False, metrics=False)
    rec = make_record()
    sink.export([finished(rec), finished(rec)])
    sink.export([finished(rec)])  # an at-least-once redelivery
    assert [f"{s.context.span_id:016x}" for s in memory.get_finished_spans()] == [rec.span_id]
    sink.shutdown()
    assert memory._stopped  # the sink owns the exporters it was given


# ------------------------------------------------------- (e) global providers (subprocess)


def run_script(script: str, **env: str) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


def test_install_global_routes_application_spans_to_the_same_place(receiver: OtlpReceiver) -> None:
    out = run_script(
        """
        import json, os
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from odibi_observe.sinks.otel import OtelSink
        from tests.helpers import finished, make_record

        sink = OtelSink(otlp_endpoint=os.environ["ENDPOINT"], metrics=False)
        installed = trace.get_tracer_provider()
        tracer = trace.get_tracer("app")
        with tracer.start_as_current_span("pipeline sales") as span:
            ctx = span.get_span_context()
            rec = make_record(trace_id=f"{ctx.trace_id:032x}",
                              parent_span_id=f"{ctx.span_id:016x}")
            sink.export([finished(rec)])
        assert sink.force_flush(10)
        sink.shutdown()

        # Configured again in the same process: the global provider stays and follows the
        # new sink (OpenTelemetry refuses a second set_tracer_provider).
        sink2 = OtelSink(otlp_endpoint=os.environ["ENDPOINT"], metrics=False)
        with tracer.start_as_current_span("pipeline again"):
            pass
        sink2.force_flush(10)
        sink2.shutdown()
        print(json.dumps({
            "sdk": isinstance(installed, TracerProvider),
            "exposed": sink.tracer_provider is installed,
            "same_again": sink2.tracer_provider is installed and sink2.app_provider is None,
            "pipeline_span": f"{ctx.span_id:016x}", "node_span": rec.span_id,
            "trace_id": rec.trace_id,
        }))
    """,
        ENDPOINT=receiver.endpoint,
    )
    assert out["sdk"] and out["exposed"] and out["same_again"]
    spans = {s.name: s for s in receiver.wait_for_spans(3)}
    node = spans[SPAN_NAME_FORMAT.format(node="clean")]
    assert node.span_id == out["node_span"]
    assert node.parent_span_id == out["pipeline_span"] == spans["pipeline sales"].span_id
    assert spans["pipeline sales"].trace_id == node.trace_id == out["trace_id"]
    assert "pipeline again" in spans


def test_application_configured_provider_is_used_and_endpoint_ignored(
    receiver: OtlpReceiver,
) -> None:
    out = run_script(
        """
        import json, logging, os
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from odibi_observe.sinks.otel import OtelSink
        from tests.helpers import finished, make_record

        logging.basicConfig(level=logging.INFO)
        app = TracerProvider(resource=Resource.create({"service.name": "odibi-app"}))
        app.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=os.environ["ENDPOINT"] + "/v1/traces")))
        trace.set_tracer_provider(app)

        # An endpoint nobody listens on: spans must go the application's way instead.
        sink = OtelSink(otlp_endpoint="http://127.0.0.1:9", metrics=False)
        rec = make_record()
        sink.export([finished(rec)])
        sink.force_flush(10)
        sink.shutdown()
        print(json.dumps({"app_used": sink.app_provider is app and sink.tracer_provider is app,
                          "span_id": rec.span_id}))
    """,
        ENDPOINT=receiver.endpoint,
    )
    assert out["app_used"]
    [span] = receiver.wait_for_spans(1)
    assert span.span_id == out["span_id"]
    assert "otlp_endpoint=http://127.0.0.1:9 is ignored" in out["stderr"]


def test_own_meter_provider_exports_conventions_metrics_over_otlp(receiver: OtlpReceiver) -> None:
    out = run_script(
        """
        import json, os
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from odibi_observe.sinks.otel import OtelSink
        from tests.helpers import finished, make_record

        sink = OtelSink(otlp_endpoint=os.environ["ENDPOINT"])
        sink.export([finished(make_record())])
        ok = sink.force_flush(10)
        print(json.dumps({"flushed": ok,
                          "global": isinstance(metrics.get_meter_provider(), MeterProvider)}))
        sink.shutdown()
    """,
        ENDPOINT=receiver.endpoint,
    )
    assert out["flushed"] and out["global"]
    names = {
        metric.name
        for request in receiver.wait_for_metrics(1)
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        if sm.scope.name == INSTRUMENTATION_SCOPE
        for metric in sm.metrics
    }
    assert names == {METRICS.runs.otel, METRICS.rows.otel, METRICS.duration.otel}


# --------------------------------------------------- (f) OTel → Prometheus naming, (g) dedup


def prometheus_meter() -> tuple[MeterProvider, CollectorRegistry]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    return MeterProvider(metric_readers=[reader]), registry


def test_otel_metrics_translate_to_the_conventions_prometheus_names() -> None:
    provider, registry = prometheus_meter()
    sink = OtelSink(meter_provider=provider, install_global=False)
    ok = make_record(status=RunStatus.SUCCESS, rows=40, duration_ns=2_000_000_000)
    bad = failed_record(rows=None, duration_ns=500_000_000)
    sink.export([started(ok), finished(ok), finished(bad)])

    text = generate_latest(registry).decode()
    samples = [
        s
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name != "target_info"
    ]
    expected = {
        METRICS.runs.prometheus: METRICS.runs,
        METRICS.rows.prometheus: METRICS.rows,
        METRICS.duration.prometheus + "_bucket": METRICS.duration,
        METRICS.duration.prometheus + "_count": METRICS.duration,
        METRICS.duration.prometheus + "_sum": METRICS.duration,
    }
    assert {s.name for s in samples} == set(expected)
    for sample in samples:
        labels = {k for k in sample.labels if not k.startswith("otel_scope_") and k != "le"}
        assert labels == set(expected[sample.name].labels), sample

    def value(metric_name: str, metric: Any, rec: RunRecord) -> float:
        want = dict(zip(metric.labels, rec.label_values(metric.labels), strict=True))
        [match] = [
            s.value
            for s in samples
            if s.name == metric_name and {k: v for k, v in s.labels.items() if k in want} == want
        ]
        return float(match)

    assert value(METRICS.runs.prometheus, METRICS.runs, ok) == 1
    assert value(METRICS.runs.prometheus, METRICS.runs, bad) == 1
    rows = [s for s in samples if s.name == METRICS.rows.prometheus]
    assert [s.value for s in rows] == [40]  # a run with unknown rows adds nothing
    assert value(METRICS.duration.prometheus + "_sum", METRICS.duration, ok) == pytest.approx(2.5)
    assert value(METRICS.duration.prometheus + "_count", METRICS.duration, ok) == 2


def test_redelivered_finished_event_counts_once() -> None:
    provider, registry = prometheus_meter()
    sink = OtelSink(meter_provider=provider, install_global=False)
    rec = make_record(rows=5)
    sink.export([finished(rec), finished(rec)])
    sink.export([finished(rec)])

    labels = dict(zip(METRICS.runs.labels, rec.label_values(METRICS.runs.labels), strict=True))
    scope = {"otel_scope_name": INSTRUMENTATION_SCOPE}
    text = generate_latest(registry).decode()
    values = {
        (s.name, s.labels.get("status")): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.labels.items()
        >= {**scope, **{k: v for k, v in labels.items() if k != "status"}}.items()
    }
    assert values[(METRICS.runs.prometheus, labels["status"])] == 1
    assert values[(METRICS.rows.prometheus, None)] == 5
    assert values[(METRICS.duration.prometheus + "_count", None)] == 1


def test_from_settings_reads_the_resolved_settings(tmp_path: Path) -> None:
    settings = Settings(
        service_name="nightly",
        resource_attributes={"team": "data"},
        traces_file=str(tmp_path / "t.jsonl"),
        otel_metrics=False,
    )
    sink = OtelSink.from_settings(settings, install_global=False)
    assert sink.resource.attributes["service.name"] == "nightly"
    assert sink.resource.attributes["team"] == "data"
    rec = make_record(service_name="nightly")
    sink.export([finished(rec)])
    [span] = iter_spans(decode_request_json((tmp_path / "t.jsonl").read_text()))
    assert span.resource["team"] == "data" and span.span_id == rec.span_id


# --------------------------------------------------------------------------------- (h) gRPC


def test_grpc_protocol_delivers_and_fails_for_retry() -> None:
    pytest.importorskip(
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        reason="the grpc extra (opentelemetry-exporter-otlp-proto-grpc)",
    )
    with OtlpGrpcReceiver() as grpc_receiver:
        sink = otlp_sink(grpc_receiver.endpoint, otlp_protocol="grpc", otlp_timeout=1.0)
        rec = failed_record()
        grpc_receiver.down = True
        with pytest.raises(SinkExportError):
            sink.export([finished(rec)])
        grpc_receiver.down = False
        sink.export([finished(rec)])
        [span] = grpc_receiver.wait_for_spans(1)
        sink.shutdown()
    assert_span_is_record(span, rec)
