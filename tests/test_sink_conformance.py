"""The Sink contract, one suite for every sink (see ``odibi_observe/sinks/base.py``).

Each backend observes runs differently (rows, spans, counters), so each subclass says how to
read back a :class:`Summary` — runs per terminal status, total rows, total duration — from
what its sink recorded. The contract is then checked the same way for all of them: every
finished run is recorded once, replays and out-of-order ``RUNNING`` events change nothing,
and the small API behaves.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from odibi_observe.conventions import CATALOG_TABLE, FIELDS, METRICS, RunStatus
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.base import Sink
from odibi_observe.sinks.catalog import CatalogSink
from odibi_observe.sinks.otel import OtelSink
from odibi_observe.sinks.prometheus import PrometheusSink
from odibi_observe.testing import InMemorySink
from tests.helpers import POISON_NODE, finished, make_record, started


@dataclass
class Summary:
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
    """Subclasses provide ``sink`` (a fixture) and ``summary(sink)``."""

    #: Tolerance on total duration: Prometheus keeps seconds as floats.
    duration_tolerance_ms: ClassVar[int] = 0

    def summary(self, sink: Sink) -> Summary:
        raise NotImplementedError

    def _records(self, n: int = 6) -> list[RunRecord]:
        statuses = [RunStatus.SUCCESS, RunStatus.FAILURE, RunStatus.CRASHED]
        return [make_record(status=statuses[i % 3], node=f"node{i % 2}", rows=i * 10 or None,
                            duration_ns=(i + 1) * 7_000_000) for i in range(n)]

    def _assert(self, sink: Sink, expected: list[RunRecord]) -> None:
        got, want = self.summary(sink), Summary.of(expected)
        assert +got.runs == +want.runs
        assert got.rows == want.rows
        assert abs(got.duration_ms - want.duration_ms) <= self.duration_tolerance_ms

    def test_name_and_kinds(self, sink: Sink) -> None:
        assert isinstance(sink.name, str) and sink.name
        assert EventKind.FINISHED in sink.kinds

    def test_finished_runs_are_recorded(self, sink: Sink) -> None:
        records = self._records()
        sink.export([started(r.finished(status=RunStatus.RUNNING, ended_ns=None,
                                         rows_processed=None)) for r in records])
        sink.export([finished(r) for r in records])
        assert sink.force_flush(10) is True
        self._assert(sink, records)

    def test_replayed_batches_record_each_run_once(self, sink: Sink) -> None:
        records = self._records()
        batch = [finished(r) for r in records]
        sink.export(batch)
        sink.export(batch)
        sink.export(batch[:2])
        sink.force_flush(10)
        self._assert(sink, records)

    def test_running_after_terminal_changes_nothing(self, sink: Sink) -> None:
        records = self._records(3)
        sink.export([finished(r) for r in records])
        sink.export([started(r.finished(status=RunStatus.RUNNING, ended_ns=None,
                                        rows_processed=None)) for r in records])
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
        sink.export([finished(rec)])
        sink.force_flush(10)
        self._assert(sink, [rec])

    def test_unencodable_text_is_recorded_not_fatal(self, sink: Sink) -> None:
        """A lone surrogate (a latin-1 file name as Python decodes it) in names, the error
        and an attribute is recorded — escaped at the backend's boundary — and never makes
        ``export`` raise, which would retry the batch forever."""
        rec = make_record(node=POISON_NODE, pipeline=POISON_NODE, status=RunStatus.FAILURE,
                          error_type="OSError", error_message=f"cannot open {POISON_NODE}",
                          attributes={"file": POISON_NODE})
        sink.export([started(rec.finished(status=RunStatus.RUNNING, ended_ns=None,
                                          rows_processed=None))])
        sink.export([finished(rec)])
        sink.force_flush(10)
        self._assert(sink, [rec])

    def test_export_from_another_thread(self, sink: Sink) -> None:
        records = self._records(4)
        t = threading.Thread(target=sink.export, args=([finished(r) for r in records],))
        t.start()
        t.join()
        sink.force_flush(10)
        self._assert(sink, records)


class TestInMemorySink(SinkContract):
    @pytest.fixture
    def sink(self) -> InMemorySink:
        return InMemorySink()

    def summary(self, sink: Sink) -> Summary:
        assert isinstance(sink, InMemorySink)
        return Summary.of(sink.finished)


class TestPrometheusSink(SinkContract):
    duration_tolerance_ms = 1

    @pytest.fixture
    def sink(self) -> PrometheusSink:
        return PrometheusSink(CollectorRegistry())

    def summary(self, sink: Sink) -> Summary:
        assert isinstance(sink, PrometheusSink)
        generate_latest(sink.registry)  # what /metrics serves must always encode
        out = Summary()
        seconds = 0.0
        for family in sink.registry.collect():
            for s in family.samples:
                if s.name == METRICS.runs.prometheus and s.value:
                    out.runs[s.labels["status"]] += int(s.value)
                elif s.name == METRICS.rows.prometheus:
                    out.rows += int(s.value)
                elif s.name == METRICS.duration.prometheus + "_sum":
                    seconds += s.value
        out.duration_ms = round(seconds * 1000)
        return out


class TestOtelSink(SinkContract):
    @pytest.fixture
    def sink(self) -> Iterator[OtelSink]:
        self.exporter = InMemorySpanExporter()
        sink = OtelSink(span_exporters=[self.exporter], install_global=False, metrics=False)
        yield sink
        sink.shutdown()

    def summary(self, sink: Sink) -> Summary:
        spans = {s.attributes[FIELDS.run_id.attribute]: s  # type: ignore[index]
                 for s in self.exporter.get_finished_spans()}
        out = Summary()
        if len(spans) != len(self.exporter.get_finished_spans()):
            out.runs["DUPLICATE SPAN"] += 1
        for s in spans.values():
            attrs = s.attributes or {}
            out.runs[str(attrs[FIELDS.status.attribute])] += 1  # type: ignore[index]
            out.rows += int(attrs.get(FIELDS.rows.attribute, 0))  # type: ignore[arg-type]
            out.duration_ms += int(attrs[FIELDS.duration.attribute])  # type: ignore[index, arg-type]
        return out


class _CatalogContract(SinkContract):
    url: str

    def summary(self, sink: Sink) -> Summary:
        engine = sa.create_engine(self.url)
        out = Summary()
        with engine.connect() as conn:
            for row in conn.execute(sa.text(f"SELECT * FROM {CATALOG_TABLE}")):
                m = row._mapping
                if m[FIELDS.status.column] != RunStatus.RUNNING.value:
                    out.runs[m[FIELDS.status.column]] += 1
                out.rows += m[FIELDS.rows.column] or 0
                out.duration_ms += m[FIELDS.duration.column] or 0
        engine.dispose()
        return out


class TestSQLiteCatalogSink(_CatalogContract):
    @pytest.fixture
    def sink(self, sqlite_url: str) -> Iterator[CatalogSink]:
        self.url = sqlite_url
        sink = CatalogSink(sqlite_url)
        yield sink
        sink.shutdown()


@pytest.mark.postgres
class TestPostgresCatalogSink(_CatalogContract):
    @pytest.fixture
    def sink(self, pg_url: str) -> Iterator[CatalogSink]:
        self.url = pg_url
        sink = CatalogSink(pg_url)
        yield sink
        sink.shutdown()
