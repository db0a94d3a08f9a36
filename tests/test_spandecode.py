"""One span, every reader: the same node span decodes to the same run fields everywhere.

A span is exported once, by the SDK's own OTLP encoder, as protobuf; its OTLP/JSON rendering
is what a file exporter writes, and protobuf's JSON mapping (base64 ids, enum names) is what
Tempo answers. The same span then goes through

* the **receiver**: both bodies posted over real HTTP to the sidecar, into a real SQLite
  ledger each, read back by reconciliation's ``ledger:`` source;
* the **ledger**: :meth:`SpanLedger.store` on the decoded request, the row it wrote;
* **reconciliation**: the OTLP-JSON line (scanner and full decoder) and the Tempo document;

and every path must report the same run id, ids, times, status, rows, names and resource.
This is what the single decoder (:mod:`odibi_observe._spandecode`) guarantees; the last two
cases are spans the readers decoded differently before it existed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from odibi_observe._otlp_json import encode_request_json, iter_spans
from odibi_observe._spandecode import (
    SpanProblem,
    decode_json,
    decode_view,
    iter_request_spans,
)
from odibi_observe.catalog import schema as col
from odibi_observe.conventions import FIELDS, RunStatus
from odibi_observe.reconcile.ledger import LedgerSource
from odibi_observe.reconcile.model import ReadLog, ReadRange, TraceRun
from odibi_observe.reconcile.otlp_files import decode_line, scan_line
from odibi_observe.reconcile.span_decode import span_to_run
from odibi_observe.reconcile.sqlutil import to_ns
from odibi_observe.sidecar.ledger import SpanLedger
from odibi_observe.sinks.otel import record_to_span
from tests.helpers import make_record
from tests.test_reconcile_support import BASE_NS, HOUR, RESOURCE
from tests.test_sidecar_receiver import Sidecar

#: The run fields every reader keeps (the ledger stores no error message or suggestions).
COMPARED = (
    "run_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "start_ns",
    "end_ns",
    "status",
    "rows",
    "pipeline",
    "node",
    "project",
    "environment",
    "pipeline_run_id",
    "attempt",
    "error_type",
    "host",
    "pid",
    "service_name",
)


def _attribute(request: ExportTraceServiceRequest, key: str) -> Any:
    (span,) = request.resource_spans[0].scope_spans[0].spans
    return next(kv for kv in span.attributes if kv.key == key)


def plain(request: ExportTraceServiceRequest) -> None:
    """The span as odibi-observe writes it."""


def rows_as_text(request: ExportTraceServiceRequest) -> None:
    """Rows sent as a string by some other writer: no reader may guess a number."""
    _attribute(request, FIELDS.rows.attribute or "").value.string_value = "7"


def no_status_attribute(request: ExportTraceServiceRequest) -> None:
    """A writer that sets only the OTLP status (ERROR), not ``odibi.status``."""
    (span,) = request.resource_spans[0].scope_spans[0].spans
    keep = [kv for kv in span.attributes if kv.key != FIELDS.status.attribute]
    del span.attributes[:]
    span.attributes.extend(keep)


CASES: dict[str, tuple[RunStatus, Callable[[ExportTraceServiceRequest], None], dict[str, Any]]] = {
    "success": (RunStatus.SUCCESS, plain, {}),
    "failure": (RunStatus.FAILURE, plain, {}),
    "rows as text": (RunStatus.SUCCESS, rows_as_text, {"rows": None}),
    "no status attribute": (RunStatus.FAILURE, no_status_attribute, {}),
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[dict[str, Any], bytes, str]:
    """``(expected fields, protobuf body, OTLP/JSON line)`` of one span."""
    status, change, overrides = CASES[request.param]
    record = make_record(
        status=status,
        rows=None if status is RunStatus.FAILURE else 1185,
        started_ns=BASE_NS + HOUR + 123_456_000,
        duration_ns=2_345_678_000,
        parent_span_id="ab" * 8,
        pipeline_run_id="pr-1",
        attempt=2,
        error_type="KeyError" if status is RunStatus.FAILURE else None,
        error_message="column 'segment'" if status is RunStatus.FAILURE else None,
    )
    request_pb = encode_spans([record_to_span(record, RESOURCE)])
    change(request_pb)
    expected = {
        "run_id": record.run_id,
        "trace_id": record.trace_id,
        "span_id": record.span_id,
        "parent_span_id": record.parent_span_id,
        "start_ns": record.started_ns,
        "end_ns": record.ended_ns,
        "status": record.status.value,
        "rows": record.rows_processed,
        "pipeline": record.pipeline,
        "node": record.node,
        "project": record.project,
        "environment": record.environment,
        "pipeline_run_id": record.pipeline_run_id,
        "attempt": record.attempt,
        "error_type": record.error_type,
        "host": record.host,
        "pid": record.pid,
        "service_name": record.service_name,
        **overrides,
    }
    return expected, request_pb.SerializeToString(), encode_request_json(request_pb)


def fields(run: Any) -> dict[str, Any]:
    return {name: getattr(run, name) for name in COMPARED}


def row_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger row in the reader's terms (the row stores times as datetimes)."""
    resource = json.loads(row[col.RESOURCE_JSON])
    return {
        "run_id": row[col.RUN_ID],
        "trace_id": row[col.TRACE_ID],
        "span_id": row[col.SPAN_ID],
        "parent_span_id": row[col.PARENT_SPAN_ID],
        "start_ns": to_ns(row[col.STARTED_AT]),
        "end_ns": to_ns(row[col.ENDED_AT]),
        "status": row[col.STATUS],
        "rows": row[col.ROWS],
        "pipeline": row[col.PIPELINE],
        "node": row[col.NODE],
        "project": row[col.PROJECT],
        "environment": row[col.ENVIRONMENT],
        "pipeline_run_id": row[col.PIPELINE_RUN_ID],
        "attempt": row[col.ATTEMPT],
        "error_type": row[col.ERROR_TYPE],
        "host": resource["host.name"],
        "pid": resource["process.pid"],
        "service_name": row[col.SERVICE_NAME],
    }


def window() -> ReadRange:
    return ReadRange(BASE_NS, BASE_NS + 24 * HOUR, time.time_ns())


def through_receiver(
    tmp_path: Path, name: str, body: bytes | str, content_type: str
) -> tuple[TraceRun, SpanLedger]:
    """Post ``body`` to a sidecar over HTTP; the run its ledger holds, as reconciliation
    reads it back."""
    url = f"sqlite:///{tmp_path}/{name}.db"
    sidecar = Sidecar(url)
    try:
        status, _headers, _body = sidecar.post(body, content_type=content_type)
        assert status == 200
    finally:
        sidecar.close()
    source = LedgerSource(url)
    try:
        (run,) = [TraceRun._make(r) for r in source.read(window(), ReadLog())]
    finally:
        source.close()
    return run, SpanLedger(url)


def test_one_span_decodes_to_the_same_fields_in_every_reader(
    case: tuple[dict[str, Any], bytes, str], tmp_path: Path
) -> None:
    expected, body, line = case
    request = ExportTraceServiceRequest.FromString(body)

    # The decoder itself, on both input forms.
    (view,) = iter_spans(request)
    from_protobuf = decode_view(view)
    ((resource, span_object),) = iter_request_spans(json.loads(line))
    from_json = decode_json(span_object, resource)
    assert from_protobuf is not None and from_json is not None
    assert from_protobuf == from_json

    # The receiver: protobuf and OTLP/JSON bodies, over HTTP, into the ledger, read back.
    received_pb, ledger_pb = through_receiver(tmp_path, "pb", body, "application/x-protobuf")
    received_json, _ = through_receiver(tmp_path, "json", line, "application/json")

    # The ledger: the row SpanLedger.store wrote for the decoded request.
    with ledger_pb.engine.connect() as conn:
        (row,) = conn.execute(sa.select(col.span_ledger)).mappings()
    ledger_pb.dispose()

    # Reconciliation: the OTLP-JSON line (scanned and decoded in full) and Tempo's JSON.
    def runs(read: Callable[..., list[TraceRun]], text: str) -> TraceRun:
        (run,) = [
            TraceRun._make(r)
            for r in read(text, origin="o", source="s", read_range=window(), log=ReadLog())
        ]
        return run

    scanned = runs(scan_line, line)
    decoded = runs(decode_line, line)
    tempo = json_format.MessageToDict(request)  # protobuf's JSON mapping, as Tempo answers
    ((tempo_resource, tempo_span),) = iter_request_spans({"batches": tempo["resourceSpans"]})
    from_tempo = span_to_run(
        tempo_span, tempo_resource, origin="t", source="tempo", read_range=window(), log=ReadLog()
    )

    readers = {
        "decoder, protobuf": fields(from_protobuf),
        "decoder, OTLP/JSON": fields(from_json),
        "receiver, protobuf body": fields(received_pb),
        "receiver, OTLP/JSON body": fields(received_json),
        "ledger row": row_fields(dict(row)),
        "reconcile, scanned line": fields(scanned),
        "reconcile, decoded line": fields(decoded),
        "reconcile, Tempo": fields(from_tempo),
    }
    assert {name: got for name, got in readers.items() if got != expected} == {}
    # What only the span carries agrees wherever it is kept.
    assert from_tempo is not None
    assert (
        scanned.error_message
        == decoded.error_message
        == from_tempo.error_message
        == from_json.error_message
    )
    assert decoded.suggestions == from_tempo.suggestions == from_json.suggestions


def test_a_wrong_attribute_is_reported_by_every_reader(tmp_path: Path) -> None:
    """Rows sent as text: the ledger counts the attribute, reconciliation reports it and
    leaves rows out of the comparison; neither guesses 7."""
    record = make_record(rows=7, started_ns=BASE_NS + HOUR)
    request = encode_spans([record_to_span(record, RESOURCE)])
    rows_as_text(request)
    ledger = SpanLedger(f"sqlite:///{tmp_path}/l.db")
    try:
        result = ledger.store(iter_spans(request))
    finally:
        ledger.dispose()
    assert result.stored == 1
    assert result.invalid_attributes == {FIELDS.rows.attribute: 1}
    log = ReadLog()
    (run,) = [
        TraceRun._make(r)
        for r in decode_line(
            encode_request_json(request), origin="o", source="s", read_range=window(), log=log
        )
    ]
    assert run.rows is None and run.unchecked == "rows"
    assert [e.message for e in log.errors] == [
        f"run {record.run_id}: {FIELDS.rows.attribute} is stringValue '7', expected "
        "intValue; rows not compared"
    ]


@pytest.mark.parametrize(
    ("trace_id", "reason"),
    [
        ("00" * 16, "traceId must be 16 non-zero bytes"),
        ("abc", "traceId 'abc' is"),
    ],
)
def test_an_unusable_id_is_refused_by_both_forms_alike(trace_id: str, reason: str) -> None:
    record = make_record(started_ns=BASE_NS + HOUR)
    line = encode_request_json(encode_spans([record_to_span(record, RESOURCE)]))
    ((resource, span),) = iter_request_spans(json.loads(line))
    (view,) = iter_spans(encode_spans([record_to_span(record, RESOURCE)]))
    with pytest.raises(SpanProblem, match=reason):
        decode_json({**span, "traceId": trace_id}, resource)
    with pytest.raises(SpanProblem, match=reason):
        decode_view(dataclasses.replace(view, trace_id=trace_id))
