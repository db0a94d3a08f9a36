"""Every built-in sink through the shipped Sink suite (:class:`SinkContract` in
``odibi_observe.testing.contracts``; the contract is in ``odibi_observe/sinks/base.py``).

Each backend observes runs differently (rows, spans, counters, spool frames), so each subclass
says how to read back a :class:`Summary` — runs per terminal status, total rows, total
duration — from what its sink recorded. The contract is then checked the same way for all of
them: every finished run is recorded once (each copy, for the spool, which is not idempotent),
replays and out-of-order ``RUNNING`` events change nothing, and the small API behaves.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from odibi_observe.conventions import CATALOG_TABLE, FIELDS, METRICS, RunStatus
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sinks.base import Sink
from odibi_observe.sinks.catalog import CatalogSink
from odibi_observe.sinks.otel import OtelSink
from odibi_observe.sinks.prometheus import PrometheusSink
from odibi_observe.sinks.spool import SPAN_FRAME_PREFIX, SpoolSink
from odibi_observe.spool import Spool
from odibi_observe.testing import InMemorySink
from odibi_observe.testing.contracts import SinkContract, Summary


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
    supports_spans = True

    @pytest.fixture
    def sink(self) -> Iterator[OtelSink]:
        self.exporter = InMemorySpanExporter()
        sink = OtelSink(span_exporters=[self.exporter], install_global=False, metrics=False)
        yield sink
        sink.shutdown()

    def summary(self, sink: Sink) -> Summary:
        # Node spans only: application spans (export_spans) are not runs.
        node_spans = [
            s
            for s in self.exporter.get_finished_spans()
            if FIELDS.run_id.attribute in (s.attributes or {})
        ]
        spans = {
            s.attributes[FIELDS.run_id.attribute]: s  # type: ignore[index]
            for s in node_spans
        }
        out = Summary()
        if len(spans) != len(node_spans):
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


class TestSpoolSink(SinkContract):
    """The spool is a transport: it keeps every copy it is given (so it is not idempotent),
    and the sidecar's idempotent sinks record each run once. Read back from the spool files
    with a fresh cursor, as the sidecar's pump reads them."""

    idempotent = False
    #: It carries application spans by a span processor of its own, not ``export_spans``.
    supports_spans = False
    _cursors = itertools.count()

    @pytest.fixture
    def sink(self, tmp_path: Path) -> Iterator[SpoolSink]:
        self.spool = Spool(
            tmp_path / "spool", writer_id="w", fsync="never", registry=CollectorRegistry()
        )
        sink = SpoolSink(self.spool)
        yield sink
        sink.shutdown()
        self.spool.close()

    def summary(self, sink: Sink) -> Summary:
        cursor = self.spool.cursor(f"contract{next(self._cursors)}")
        finished = []
        while entries := cursor.read():
            for entry in entries:
                if entry.payload.startswith(SPAN_FRAME_PREFIX):
                    continue
                event = RunEvent.from_json(entry.payload)
                if event.kind is EventKind.FINISHED:
                    finished.append(event.record)
        return Summary.of(finished)
