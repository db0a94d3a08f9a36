"""Conformance suites for the three extension points, for your own tests (needs pytest).

Every built-in sink, trace source and catalog source passes these; a third-party one should
too. Subclass the suite in a ``test_*.py`` file, name the class ``Test...``, provide the one
thing the suite cannot know — how to make your implementation, and how to read back what it
recorded — and set the capability flags that differ from the defaults::

    import pytest
    from odibi_observe.testing.contracts import SinkContract, Summary

    class TestMySink(SinkContract):
        idempotent = True          # a replayed batch records each run once

        @pytest.fixture
        def sink(self, tmp_path):
            sink = MySink(tmp_path / "out")
            yield sink
            sink.shutdown()

        def summary(self, sink):
            return Summary.of(read_back_records(sink))

    class TestMyTraceSource(TraceSourceContract):
        def make_source(self, tmp_path, records, foreign):
            write_my_spans(tmp_path, records, foreign_spans=foreign)
            return open_trace_source(f"myscheme:{tmp_path}")

The suites are plain pytest classes (no base fixtures besides pytest's ``tmp_path``); pytest
is imported only inside the tests that skip, so importing this module does not need pytest,
but running the suites does. See ``docs/extending.md``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from odibi_observe.conventions import RunStatus
from odibi_observe.record import EventKind, RunEvent, RunRecord

if TYPE_CHECKING:
    from odibi_observe.reconcile.model import CatalogRun, ReadLog, ReadRange, TraceRun
    from odibi_observe.reconcile.sources import CatalogSource, TraceSource
    from odibi_observe.sinks.base import Sink

SECOND = 1_000_000_000
HOUR = 3_600 * SECOND
#: Where the suites place runs: two days back, on a whole second.
BASE_NS = (time.time_ns() // SECOND - 2 * 24 * 3_600) * SECOND
#: A file name as Python decodes latin-1 bytes on a UTF-8 system: a lone surrogate.
POISON_TEXT = os.fsdecode(b"load_r\xe9sum\xe9.csv")
#: Run ids whose byte order differs from a case-insensitive or locale order.
AWKWARD_IDS = ("b-1", "B_1", "a_1", "a-1", "Z", "\u00e9-1", "a1", "_")


# --- records --------------------------------------------------------------------------------


def make_record(
    *,
    status: RunStatus = RunStatus.SUCCESS,
    pipeline: str = "sales",
    node: str = "clean",
    rows: int | None = 10,
    duration_ns: int = 12_345_678,
    **changes: Any,
) -> RunRecord:
    """A run record with fresh ids; ``changes`` override any field."""
    started = changes.pop("started_ns", time.time_ns())
    terminal = status is not RunStatus.RUNNING
    values: dict[str, Any] = {
        "run_id": str(uuid.uuid4()),
        "project": "proj",
        "pipeline": pipeline,
        "node": node,
        "environment": "test",
        "status": status,
        "started_ns": started,
        "trace_id": f"{random.getrandbits(128) or 1:032x}",
        "span_id": f"{random.getrandbits(64) or 1:016x}",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "ended_ns": started + duration_ns if terminal else None,
        "rows_processed": rows if terminal else None,
    }
    values.update(changes)
    return RunRecord(**values)


def runs(
    n: int, *, start_ns: int = BASE_NS + HOUR, step_ns: int = 60 * SECOND, **changes: Any
) -> list[RunRecord]:
    """``n`` finished runs, one every ``step_ns``, at whole microseconds (what every store
    keeps), across two pipelines."""
    out = []
    for i in range(n):
        values = {
            "pipeline": ("sales", "fx")[i % 2],
            "node": f"node_{i % 3}",
            "duration_ns": 40_000_000 + i * 1_000,
            "rows": 10 + i,
            "started_ns": start_ns + i * step_ns,
            "host": "etl-host",
            "pid": 4242,
            "pipeline_run_id": "pr-1",
            **changes,
        }
        out.append(make_record(**values))
    return out


def failed(record: RunRecord) -> RunRecord:
    """``record`` as a failure with an error message and suggestions."""
    return record.finished(
        status=RunStatus.FAILURE,
        error_type="ValueError",
        error_message="column 'amount' not found",
        suggestions=("check the export", "re-run the node"),
    )


def read_range(start_ns: int = BASE_NS, hours: int = 24) -> ReadRange:
    """The suites' read range: a day from :data:`BASE_NS`."""
    from odibi_observe.reconcile.model import ReadRange

    return ReadRange(start_ns, start_ns + hours * HOUR, time.time_ns())


def _started(record: RunRecord) -> RunEvent:
    return RunEvent(
        EventKind.STARTED,
        record.finished(status=RunStatus.RUNNING, ended_ns=None, rows_processed=None),
    )


def _finished(record: RunRecord) -> RunEvent:
    return RunEvent(EventKind.FINISHED, record)


# --- sinks ----------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a backend holds, reduced to what every backend can say: terminal runs per status,
    total rows, total duration."""

    runs: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    duration_ms: int = 0

    @classmethod
    def of(cls, records: list[RunRecord]) -> Summary:
        out = cls()
        for r in records:
            out.runs[r.status.value] += 1
            out.rows += r.rows_processed or 0
            out.duration_ms += r.duration_ms or 0
        return out


class SinkContract:
    """The :class:`~odibi_observe.sinks.base.Sink` contract. Subclasses provide a ``sink``
    fixture and :meth:`summary` (what the sink recorded, read back from its backend)."""

    #: A replayed batch records each run once (the bus delivers at least once). False for a
    #: transport that keeps every copy for the next hop to de-duplicate (the spool).
    idempotent: ClassVar[bool] = True
    #: Tolerance on the total duration: Prometheus keeps seconds as floats.
    duration_tolerance_ms: ClassVar[int] = 0
    #: The sink takes the application's finished spans too (``export_spans``): the sidecar's
    #: pump hands it the spans a pipeline process spooled (the OTel sink).
    supports_spans: ClassVar[bool] = False

    def summary(self, sink: Sink) -> Summary:
        raise NotImplementedError

    def _records(self, n: int = 6) -> list[RunRecord]:
        statuses = [RunStatus.SUCCESS, RunStatus.FAILURE, RunStatus.CRASHED]
        return [
            make_record(
                status=statuses[i % 3],
                node=f"node{i % 2}",
                rows=i * 10 or None,
                duration_ns=(i + 1) * 7_000_000,
            )
            for i in range(n)
        ]

    def _assert(self, sink: Sink, expected: list[RunRecord]) -> None:
        got, want = self.summary(sink), Summary.of(expected)
        assert +got.runs == +want.runs
        assert got.rows == want.rows
        assert abs(got.duration_ms - want.duration_ms) <= self.duration_tolerance_ms

    def test_name_and_kinds(self, sink: Sink) -> None:
        assert isinstance(sink.name, str)
        assert sink.name
        assert EventKind.FINISHED in sink.kinds

    def test_finished_runs_are_recorded(self, sink: Sink) -> None:
        records = self._records()
        sink.export([_started(r) for r in records])
        sink.export([_finished(r) for r in records])
        assert sink.force_flush(10) is True
        self._assert(sink, records)

    def test_replayed_batches_record_each_run_once(self, sink: Sink) -> None:
        """Replays record each run once; a sink that is not idempotent keeps every copy."""
        records = self._records()
        batch = [_finished(r) for r in records]
        sink.export(batch)
        sink.export(batch)
        sink.export(batch[:2])
        sink.force_flush(10)
        self._assert(sink, records if self.idempotent else records * 2 + records[:2])

    def test_replayed_batches_are_kept(self, sink: Sink) -> None:
        """A sink that is not idempotent loses nothing either: every copy is recorded."""
        records = self._records(3)
        batch = [_finished(r) for r in records]
        sink.export(batch)
        sink.export(batch)
        sink.force_flush(10)
        self._assert(sink, records if self.idempotent else records * 2)

    def test_running_after_terminal_changes_nothing(self, sink: Sink) -> None:
        records = self._records(3)
        sink.export([_finished(r) for r in records])
        sink.export([_started(r) for r in records])
        sink.force_flush(10)
        self._assert(sink, records)

    def test_empty_batch_and_heartbeats_are_accepted(self, sink: Sink) -> None:
        rec = make_record(status=RunStatus.RUNNING)
        sink.export([])
        sink.export([RunEvent(EventKind.HEARTBEAT, rec.finished(heartbeat_ns=rec.started_ns))])
        sink.force_flush(10)
        assert sum(self.summary(sink).runs.values()) == 0

    def test_hostile_names_are_recorded(self, sink: Sink) -> None:
        rec = make_record(pipeline="p'; DROP TABLE meta_runs; --", node='n"\n\\x')
        sink.export([_finished(rec)])
        sink.force_flush(10)
        self._assert(sink, [rec])

    def test_unencodable_text_is_recorded_not_fatal(self, sink: Sink) -> None:
        """A lone surrogate (a latin-1 file name as Python decodes it) in names, the error
        and an attribute is recorded — escaped at the backend's boundary — and never makes
        ``export`` raise, which would retry the batch forever."""
        rec = make_record(
            node=POISON_TEXT,
            pipeline=POISON_TEXT,
            status=RunStatus.FAILURE,
            error_type="OSError",
            error_message=f"cannot open {POISON_TEXT}",
            attributes={"file": POISON_TEXT},
        )
        sink.export([_started(rec)])
        sink.export([_finished(rec)])
        sink.force_flush(10)
        self._assert(sink, [rec])

    def test_takes_application_spans_as_declared(self, sink: Sink) -> None:
        """The pump's rule (:func:`~odibi_observe.sinks.spool.takes_spans`) agrees with the
        flag; a sink that takes spans accepts an ended SDK span, twice, and counts no run."""
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

        from odibi_observe.sinks.spool import takes_spans

        assert takes_spans(sink) is self.supports_spans
        if not self.supports_spans:
            return
        span = TracerProvider().get_tracer("contract").start_span("pipeline sales")
        span.end()
        assert isinstance(span, ReadableSpan)
        export_spans = sink.export_spans  # type: ignore[attr-defined]
        export_spans([span])
        export_spans([span])
        sink.force_flush(10)
        assert sum(self.summary(sink).runs.values()) == 0

    def test_export_from_another_thread(self, sink: Sink) -> None:
        records = self._records(4)
        t = threading.Thread(target=sink.export, args=([_finished(r) for r in records],))
        t.start()
        t.join()
        sink.force_flush(10)
        self._assert(sink, records)


# --- trace sources --------------------------------------------------------------------------


def sample_runs() -> list[RunRecord]:
    """Runs that exercise every field: a failure with suggestions, unknown rows, a user
    attribute, a child span (parent id), a later attempt."""
    records = runs(6)
    records[1] = failed(records[1])
    records[2] = records[2].finished(rows_processed=None)
    records[3] = records[3].finished(attributes={"region": "eu", "batch": 7})
    records[4] = records[4].finished(parent_span_id="00f067aa0ba902b7", attempt=2)
    return records


class TraceSourceContract:
    """The :class:`~odibi_observe.reconcile.sources.TraceSource` contract. Subclasses provide
    :meth:`make_source`: the runs' node spans written where the source reads them (plus
    ``foreign`` spans that are not odibi node spans), and the source."""

    #: Whether the source sees spans that are not odibi node spans (and so counts them).
    sees_foreign_spans: ClassVar[bool] = True
    #: Whether the source keeps the error message (the ledger keeps only the error type).
    keeps_error_message: ClassVar[bool] = True
    #: Whether the source keeps suggestions and user attributes.
    keeps_details: ClassVar[bool] = True
    #: Whether the source keeps where the run ran (host, pid) and its parent span id; lineage
    #: events (``openlineage-file:``) carry neither.
    keeps_process: ClassVar[bool] = True

    def make_source(self, tmp_path: Path, records: list[RunRecord], foreign: int) -> TraceSource:
        raise NotImplementedError

    def read(
        self, source: TraceSource, rng: ReadRange | None = None
    ) -> tuple[list[TraceRun], ReadLog]:
        from odibi_observe.reconcile.model import ReadLog, TraceRun

        log = ReadLog()
        return [TraceRun._make(r) for r in source.read(rng or read_range(), log)], log

    def test_yields_every_node_span_in_the_range_with_its_fields(self, tmp_path: Path) -> None:
        records = sample_runs()
        got, log = self.read(self.make_source(tmp_path, records, foreign=0))
        assert not log.errors
        by_id = {r.run_id: r for r in got}
        assert set(by_id) == {r.run_id for r in records}
        for record in records:
            run = by_id[record.run_id]
            assert (run.trace_id, run.span_id) == (record.trace_id, record.span_id)
            assert (run.start_ns, run.end_ns) == (record.started_ns, record.ended_ns)
            assert run.status == record.status.value
            assert run.rows == record.rows_processed
            assert (run.pipeline, run.node, run.project, run.environment) == (
                record.pipeline,
                record.node,
                record.project,
                record.environment,
            )
            assert run.attempt == record.attempt
            assert run.pipeline_run_id == record.pipeline_run_id
            assert run.error_type == record.error_type
            if self.keeps_process:
                assert run.parent_span_id == record.parent_span_id
                assert (run.host, run.pid) == (record.host, record.pid)
            assert run.unchecked == ""
            assert run.origin
            if self.keeps_error_message:
                assert run.error_message == record.error_message
            if self.keeps_details:
                assert run.suggestions == record.suggestions
                attributes = json.loads(run.attributes_json) if run.attributes_json else {}
                assert attributes == dict(record.attributes)

    def test_leaves_out_spans_that_start_outside_the_range(self, tmp_path: Path) -> None:
        inside = runs(2)
        outside = runs(2, start_ns=BASE_NS + 30 * HOUR)
        got, _ = self.read(self.make_source(tmp_path, inside + outside, foreign=0))
        assert {r.run_id for r in got} == {r.run_id for r in inside}

    def test_ignores_and_counts_spans_that_are_not_node_spans(self, tmp_path: Path) -> None:
        records = runs(3)
        got, log = self.read(self.make_source(tmp_path, records, foreign=4))
        assert {r.run_id for r in got} == {r.run_id for r in records}
        assert log.ignored_spans == (4 if self.sees_foreign_spans else 0)
        assert not log.errors

    def test_describe_names_the_scheme(self, tmp_path: Path) -> None:
        source = self.make_source(tmp_path, runs(1), foreign=0)
        assert source.describe().startswith(source.scheme + ":")

    def test_a_sorted_source_yields_in_run_id_byte_order(self, tmp_path: Path) -> None:
        records = runs(8)
        records = [r.finished(run_id=i) for r, i in zip(records, AWKWARD_IDS, strict=True)]
        source = self.make_source(tmp_path, records, foreign=0)
        got, _ = self.read(source)
        if source.sorted_by_run_id:
            assert [r.run_id for r in got] == sorted(AWKWARD_IDS)
        assert sorted(r.run_id for r in got) == sorted(AWKWARD_IDS)


# --- catalog sources ------------------------------------------------------------------------


class CatalogSourceContract:
    """The :class:`~odibi_observe.reconcile.sources.CatalogSource` contract. Subclasses
    provide :meth:`make_source`: the runs written where the catalog reads them, each placed in
    time at its start, and the source; optionally :meth:`make_unreadable`."""

    #: Rows carry the trace and span ids and the exact start (rows odibi-observe wrote from the
    #: same record as the span); False for a catalog that only logs runs (Odibi's own).
    exact: ClassVar[bool] = True
    #: :meth:`~odibi_observe.reconcile.sources.CatalogSource.store` returns a writable store.
    writable: ClassVar[bool] = True

    def make_source(self, tmp_path: Path, records: list[RunRecord]) -> CatalogSource:
        raise NotImplementedError

    def make_unreadable(self, tmp_path: Path) -> CatalogSource | None:
        """A source of this kind that cannot be read at all; None to skip that test."""
        return None

    def read(
        self, source: CatalogSource, rng: ReadRange | None = None
    ) -> tuple[list[CatalogRun], ReadLog]:
        from odibi_observe.reconcile.model import CatalogRun, ReadLog

        log = ReadLog()
        source.margin()  # asked first, as the engine does
        return [CatalogRun._make(r) for r in source.read(rng or read_range(), log)], log

    def test_yields_every_row_in_the_range_with_its_fields(self, tmp_path: Path) -> None:
        records = sample_runs()
        got, log = self.read(self.make_source(tmp_path, records))
        assert not log.errors
        by_id = {r.run_id: r for r in got}
        assert set(by_id) == {r.run_id for r in records}
        assert len(got) == len(records)
        for record in records:
            run = by_id[record.run_id]
            assert run.status == record.status.value
            assert run.rows == record.rows_processed
            assert run.duration_ms == record.duration_ms
            assert (run.pipeline, run.node) == (record.pipeline, record.node)
            assert run.exact is self.exact
            assert run.unchecked == ""
            assert run.origin
            assert not run.not_run
            if self.exact:
                assert (run.trace_id, run.span_id) == (record.trace_id, record.span_id)
                assert run.started_ns == record.started_ns == run.window_ns
            else:
                assert abs(run.window_ns - record.started_ns) <= SECOND

    def test_leaves_out_rows_outside_the_range(self, tmp_path: Path) -> None:
        inside = runs(2)
        outside = runs(2, start_ns=BASE_NS + 30 * HOUR)
        got, _ = self.read(self.make_source(tmp_path, inside + outside))
        assert {r.run_id for r in got} == {r.run_id for r in inside}

    def test_yields_in_run_id_byte_order(self, tmp_path: Path) -> None:
        records = [r.finished(run_id=i) for r, i in zip(runs(8), AWKWARD_IDS, strict=True)]
        got, _ = self.read(self.make_source(tmp_path, records))
        assert [r.run_id for r in got] == sorted(AWKWARD_IDS)

    def test_an_empty_range_yields_nothing(self, tmp_path: Path) -> None:
        source = self.make_source(tmp_path, runs(3))
        got, log = self.read(source, read_range(BASE_NS - 48 * HOUR, hours=1))
        assert got == []
        assert not log.errors

    def test_margin_describe_and_store(self, tmp_path: Path) -> None:
        source = self.make_source(tmp_path, runs(1))
        assert source.margin().total_seconds() >= 0
        assert isinstance(source.describe(), str)
        assert source.describe()
        assert (source.store() is not None) is self.writable
        source.close()

    def test_a_catalog_that_cannot_be_read_raises_source_error(self, tmp_path: Path) -> None:
        import pytest

        from odibi_observe.reconcile.sources import SourceError

        source = self.make_unreadable(tmp_path)
        if source is None:
            pytest.skip("make_unreadable() not provided")
        with pytest.raises(SourceError):
            _read_all(source)


def _read_all(source: CatalogSource) -> list[CatalogRun]:
    """What the engine does with a catalog: ask the margin first, then read the window."""
    from odibi_observe.reconcile.model import ReadLog

    source.margin()
    return list(source.read(read_range(), ReadLog()))
