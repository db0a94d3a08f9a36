"""The span ledger on SQLite and PostgreSQL: what it stores, what it refuses, how it reads back.

Spans are built the way they travel: the OTel sink's ``record_to_span`` turns a record into an
SDK span, the SDK's own OTLP encoder turns that into an ``ExportTraceServiceRequest``, and
``iter_spans`` decodes it — so the ledger is tested on exactly what a receiver sees.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, TraceFlags

from odibi_observe._otlp_json import SpanView, iter_spans
from odibi_observe.catalog.schema import span_ledger, utc
from odibi_observe.conventions import FIELDS, Field, RunStatus
from odibi_observe.reconcile.ledger import LedgerSource
from odibi_observe.reconcile.model import ReadLog, ReadRange
from odibi_observe.record import RunRecord
from odibi_observe.sidecar.ledger import SpanLedger, span_to_row
from odibi_observe.sinks.otel import record_to_span
from tests.helpers import make_record

BASE = Resource.create({"deployment.environment": "test"})


def node_spans(records: Sequence[RunRecord]) -> list[ReadableSpan]:
    return [record_to_span(r, BASE) for r in records]


def other_span(name: str = "SELECT orders") -> ReadableSpan:
    """A span that is not an odibi node span (a database client span, say)."""
    ctx = SpanContext(
        uuid.uuid4().int,
        uuid.uuid4().int >> 64 or 1,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return ReadableSpan(
        name=name,
        context=ctx,
        resource=BASE,
        attributes={"db.system": "pg"},
        start_time=1_700_000_000_000_000_000,
        end_time=1_700_000_000_100_000_000,
    )


def export_request(
    records: Sequence[RunRecord], extra: Sequence[ReadableSpan] = ()
) -> ExportTraceServiceRequest:
    """The OTLP request the SDK's exporter would send for these runs (and other spans)."""
    return encode_spans([*node_spans(records), *extra])


def views(records: Sequence[RunRecord], extra: Sequence[ReadableSpan] = ()) -> list[SpanView]:
    return list(iter_spans(export_request(records, extra)))


def terminal(**changes: Any) -> RunRecord:
    return make_record(pipeline_run_id=str(uuid.uuid4()), attempt=2, **changes)


def attribute(field: Field) -> str:
    """The span attribute key of ``field`` (every field these tests change has one)."""
    assert field.attribute is not None
    return field.attribute


def ledger_rows(ledger: SpanLedger) -> list[dict[str, Any]]:
    """Every ledger row, by run id then start, times as aware UTC datetimes."""
    c = span_ledger.c
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(span_ledger).order_by(c.run_id, c.started_at)).mappings()
        return [
            {k: utc(v) if isinstance(v, datetime) else v for k, v in row.items()} for row in rows
        ]


@pytest.fixture
def ledger(catalog_url: str) -> Iterator[SpanLedger]:
    led = SpanLedger(catalog_url)
    yield led
    led.dispose()


def test_stores_every_fact_of_a_node_span_as_the_catalog_names_it(ledger: SpanLedger) -> None:
    ok = terminal(rows=1185, parent_span_id="ab" * 8)
    failed = terminal(
        status=RunStatus.FAILURE, rows=None, error_type="KeyError", error_message="column 'segment'"
    )
    result = ledger.store(views([ok, failed]))
    assert (result.stored, result.duplicates, result.ignored, result.rejected) == (2, 0, 0, 0)

    rows = {r["run_id"]: r for r in ledger_rows(ledger)}
    for record in (ok, failed):
        row = rows[record.run_id]
        assert row["trace_id"] == record.trace_id and row["span_id"] == record.span_id
        assert row["status"] == record.status.value
        assert row["rows_processed"] == record.rows_processed
        assert row["duration_ms"] == record.duration_ms
        assert row["started_at"] == record.started_at and row["ended_at"] == record.ended_at
        assert (row["project"], row["pipeline_name"], row["node_name"], row["environment"]) == (
            record.project,
            record.pipeline,
            record.node,
            record.environment,
        )
        assert row["pipeline_run_id"] == record.pipeline_run_id and row["attempt"] == 2
        assert row["service_name"] == record.service_name
        assert '"host.name"' in str(row["resource_json"])
        assert '"deployment.environment":"test"' in str(row["resource_json"])
        assert isinstance(row["received_at"], datetime)
    assert rows[ok.run_id]["parent_span_id"] == "ab" * 8
    assert rows[failed.run_id]["error_type"] == "KeyError"
    assert rows[ok.run_id]["error_type"] is None


def test_a_resent_span_is_stored_once(ledger: SpanLedger) -> None:
    records = [terminal() for _ in range(5)]
    first = ledger.store(views(records))
    again = ledger.store(views(records))  # an exporter retrying after a lost 200
    assert (first.stored, first.duplicates) == (5, 0)
    assert (again.stored, again.duplicates) == (0, 5)
    # Half old, half new, and one span twice in the same request.
    more = [terminal() for _ in range(3)]
    mixed = ledger.store([*views(records[:2]), *views(more), *views(more[:1])])
    assert (mixed.stored, mixed.duplicates) == (3, 3)
    assert ledger.count() == 8


def test_two_spans_claiming_one_run_id_are_both_kept(ledger: SpanLedger) -> None:
    """A duplicate *by run_id* is a finding for reconciliation, not something to fold away."""
    record = terminal()
    twin = dataclasses.replace(
        record, span_id="12" * 8, status=RunStatus.FAILURE, error_type="Boom"
    )
    assert ledger.store(views([record, twin])).stored == 2
    rows = [r for r in ledger_rows(ledger) if r["run_id"] == record.run_id]
    assert sorted(r["span_id"] for r in rows) == sorted([record.span_id, "12" * 8])


def test_spans_that_are_not_node_spans_are_ignored(ledger: SpanLedger) -> None:
    result = ledger.store(views([terminal()], extra=[other_span(), other_span("GET /")]))
    assert (result.stored, result.ignored) == (1, 2)
    assert ledger.count() == 1


def test_attributes_of_the_wrong_type_are_stored_as_null_and_counted(ledger: SpanLedger) -> None:
    good = views([terminal(rows=7)])[0]
    attrs = dict(good.attributes)
    attrs[attribute(FIELDS.rows)] = "7"  # a string, not an int
    attrs[attribute(FIELDS.attempt)] = True  # a bool is not an attempt number
    attrs[attribute(FIELDS.duration)] = 2**70  # beyond BIGINT (JSON allows it)
    attrs[attribute(FIELDS.status)] = 3  # an int, not a status
    bad = dataclasses.replace(good, attributes=attrs)
    result = ledger.store([bad])
    assert result.stored == 1
    assert result.invalid_attributes == {
        FIELDS.rows.attribute: 1,
        FIELDS.attempt.attribute: 1,
        FIELDS.duration.attribute: 1,
        FIELDS.status.attribute: 1,
    }
    (row,) = ledger_rows(ledger)
    assert row["rows_processed"] is None and row["attempt"] is None
    assert row["duration_ms"] is None and row["status"] is None
    assert row["pipeline_name"] == good.attributes[attribute(FIELDS.pipeline)]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"attributes": {FIELDS.run_id.attribute: 42}}, "non-empty string"),
        ({"attributes": {FIELDS.run_id.attribute: ""}}, "non-empty string"),
        ({"attributes": {FIELDS.run_id.attribute: "r" * 101}}, "longer than 100"),
        ({"trace_id": "0" * 32}, "traceId"),
        ({"span_id": "abc"}, "spanId"),
        ({"start_ns": 0}, "no start time"),
    ],
)
def test_spans_that_cannot_be_keyed_are_rejected_with_a_reason(
    ledger: SpanLedger, change: dict[str, Any], reason: str
) -> None:
    span = dataclasses.replace(views([terminal()])[0], **change)
    ok = views([terminal()])[0]
    result = ledger.store([span, ok])
    assert (result.stored, result.rejected) == (1, 1)
    assert reason in result.errors[0]


def test_values_are_bound_parameters_and_made_storable(ledger: SpanLedger) -> None:
    hostile = "x'); DROP TABLE meta_runs; --"
    record = terminal(pipeline=hostile, node="n\x00ul" + "é" * 300)
    ledger.store(views([record]))
    (row,) = ledger_rows(ledger)
    assert row["pipeline_name"] == hostile
    node = str(row["node_name"])
    assert node.startswith("n\ufffdul") and len(node) == 255  # NUL replaced, cut to the column
    with ledger.engine.connect() as conn:  # the table the payload names is untouched
        assert sa.inspect(conn).has_table(span_ledger.name)


def test_reconciliation_reads_a_half_open_window_ordered_by_run_id(
    ledger: SpanLedger, catalog_url: str
) -> None:
    """The ledger's reader is reconciliation's ``ledger:`` source."""
    t0 = 1_700_000_000_000_000_000
    hour = 3_600 * 10**9
    records = [terminal(run_id=f"run-{i}", started_ns=t0 + i * hour) for i in (3, 1, 2, 0, 4)]
    ledger.store(views(records))
    source = LedgerSource(catalog_url)
    try:
        got = [
            r.run_id
            for r in source.read(ReadRange(t0 + hour, t0 + 4 * hour, t0 + 9 * hour), ReadLog())
        ]
    finally:
        source.close()
    assert got == ["run-1", "run-2", "run-3"]  # since inclusive, until exclusive


def test_the_ledger_does_not_connect_until_used() -> None:
    """A sidecar must start while its database is down; the receiver answers 503 meanwhile."""
    ledger = SpanLedger("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    with pytest.raises(sa.exc.OperationalError):
        ledger.store(views([terminal()]))
    assert ledger.store([]).stored == 0  # nothing to write: no connection needed


def test_span_to_row_ignores_a_malformed_parent_and_an_end_before_the_start() -> None:
    span = dataclasses.replace(views([terminal()])[0], parent_span_id="zz", end_ns=1)
    row, problem = span_to_row(span, datetime.now(timezone.utc))
    assert problem is None and row is not None
    assert row["parent_span_id"] is None and row["ended_at"] is None


def test_a_crash_span_is_replaced_by_the_real_ending_with_the_same_ids(ledger: SpanLedger) -> None:
    """A run the sweeper judged dead by heartbeats (its CRASHED span, with the run's ids) that
    then really ended: the real ending replaces the crash, as in meta_runs. Nothing else is
    replaced: a crash arriving after the real ending, or a second real ending, is a
    duplicate and the stored row stays."""
    real = terminal(status=RunStatus.SUCCESS, rows_processed=7)
    crash = real.finished(
        status=RunStatus.CRASHED,
        ended_ns=real.started_ns + 1_000,
        rows_processed=None,
        error_type="ProcessCrashed",
    )
    assert ledger.store(views([crash])).stored == 1
    replaced = ledger.store(views([real]))
    assert (replaced.stored, replaced.duplicates) == (1, 0)
    late_crash = ledger.store(views([crash]))
    other_ending = ledger.store(views([real.finished(status=RunStatus.FAILURE)]))
    assert (late_crash.stored, other_ending.stored) == (0, 0)
    (row,) = ledger_rows(ledger)
    assert (row["status"], row["rows_processed"], row["error_type"]) == ("SUCCESS", 7, None)
