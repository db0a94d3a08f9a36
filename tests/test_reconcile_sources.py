"""Trace sources: one conformance class every source subclasses, then each source's own cases.

:class:`~odibi_observe.testing.contracts.TraceSourceContract` (shipped to users) states
the contract of :class:`~odibi_observe.reconcile.sources.TraceSource` as tests;
``TestOtlpJsonSource``, ``TestLedgerSqlite``, ``TestLedgerPostgres`` and ``TestTempoSource``
run it against real files, real SQLite and PostgreSQL ledgers, and a Tempo stand-in (Tempo
cannot run here: see :class:`tests.test_reconcile_support.TempoServer`, an ``http.server`` on
127.0.0.1 answering in Tempo's documented response shapes, with the hand-written answers in
``tests/fixtures/tempo/``).
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from odibi_observe._otlp_json import decode_request_json, encode_request_json
from odibi_observe.conventions import RunStatus
from odibi_observe.reconcile import otlp_files
from odibi_observe.reconcile.ledger import LedgerSource
from odibi_observe.reconcile.model import ReadLog, ReadRange, TraceRun
from odibi_observe.reconcile.otlp_files import OtlpJsonFileSource, decode_line, scan_line
from odibi_observe.reconcile.sources import (
    SourceError,
    SourceOptions,
    TraceSource,
    open_trace_source,
)
from odibi_observe.reconcile.tempo import TempoSource
from odibi_observe.record import RunRecord
from odibi_observe.testing.contracts import TraceSourceContract, sample_runs
from tests.test_reconcile_support import (
    BASE_NS,
    FIXTURES,
    HOUR,
    SECOND,
    TempoServer,
    foreign_span_line,
    read_range,
    runs,
    span_lines,
    tempo_trace,
    write_ledger,
    write_spans,
)

# ---------------------------------------------------------------------------------- contract


# ------------------------------------------------------------------------------ OTLP-JSON files


class TestOtlpJsonSource(TraceSourceContract):
    def make_source(self, tmp_path: Path, records: list[RunRecord], foreign: int) -> TraceSource:
        extra = [foreign_span_line(foreign)] if foreign else []
        write_spans(tmp_path / "traces" / "traces.jsonl", records, per_line=4, extra_lines=extra)
        return open_trace_source(f"otlp-json:{tmp_path / 'traces'}")


def test_scanning_and_full_decoding_give_identical_runs() -> None:
    """The fast scanner is an optimisation only: on every shape odibi-observe writes, it
    produces exactly what the full OTLP-JSON decoder does (and hands it the lines it cannot
    vouch for)."""
    records = [
        *sample_runs(),
        runs(1, node='quote " and \\ back')[0],  # escaped text
        runs(1, pipeline="süß ☃")[0],  # non-ASCII
        runs(1, status=RunStatus.CRASHED, error_type="SIGTERM")[0],
        runs(1, attributes={"ratio": 0.5, "ok": True, "tags": ("a", "b")})[0],
    ]
    for line in [*span_lines(records, per_line=3), foreign_span_line(2)]:
        fast_log, full_log = ReadLog(), ReadLog()
        fast = scan_line(line, origin="f:1", source="s", read_range=read_range(), log=fast_log)
        full = decode_line(line, origin="f:1", source="s", read_range=read_range(), log=full_log)
        assert sorted(fast) == sorted(full)
        assert (fast_log.ignored_spans, fast_log.errors) == (
            full_log.ignored_spans,
            full_log.errors,
        )


def _collector_shape(line: str) -> str:
    """The line as the Collector's JSON marshaller orders a span: ``flags`` right after
    ``parentSpanId`` (its place in the .proto), and ``parentSpanId`` omitted for roots."""
    request = json.loads(line)
    for group in request["resourceSpans"]:
        for scope in group["scopeSpans"]:
            spans = []
            for span in scope["spans"]:
                flags = span.pop("flags", None)
                ordered: dict[str, Any] = {}
                for key, value in span.items():
                    if key == "parentSpanId" and not value:
                        continue
                    ordered[key] = value
                    if key == "parentSpanId" and flags is not None:
                        ordered["flags"] = flags
                spans.append(ordered)
            scope["spans"] = spans
    return json.dumps(request, separators=(",", ":"), ensure_ascii=False)


def test_the_scanner_reads_the_collectors_field_order(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [*(r.finished(parent_span_id="00f067aa0ba902b7") for r in runs(3)), *runs(2)]
    line = _collector_shape(span_lines(records)[0])
    assert '"parentSpanId":"00f067aa0ba902b7","flags":256,"name"' in line
    full = decode_line(line, origin="c:1", source="s", read_range=read_range(), log=ReadLog())

    def no_full_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the scanner fell back to the full decoder")

    monkeypatch.setattr(otlp_files, "decode_line", no_full_decoding)
    log = ReadLog()
    fast = scan_line(line, origin="c:1", source="s", read_range=read_range(), log=log)
    assert sorted(fast) == sorted(full)
    assert len(fast) == 5 and not log.errors


def test_reads_collector_output_gzip_and_rotated_files(tmp_path: Path) -> None:
    """A directory as the Collector's ``file`` exporter leaves it: the live file, rotated
    backups (one gzip-compressed, named as lumberjack names them) and an unrelated file."""
    records = runs(9)
    folder = tmp_path / "otel"
    write_spans(folder / "traces.jsonl", records[:3])
    write_spans(folder / "traces-2025-03-04T02-00-00.000.jsonl.gz", records[3:6], gz=True)
    # The Collector's own marshaller (protobuf JSON, flags before the name): same spans.
    collector = [encode_request_json(decode_request_json(line)) for line in span_lines(records[6:])]
    (folder / "traces.jsonl.1").write_text("".join(line + "\n" for line in collector))
    (folder / "README").write_text("not traces")
    got = list(OtlpJsonFileSource(folder).read(read_range(), log := ReadLog()))
    assert sorted(r[0] for r in got) == sorted(r.run_id for r in records)
    assert not log.errors
    assert any(".gz:" in r[-1] for r in got)


def test_bad_input_is_reported_with_file_and_line_and_the_rest_is_read(tmp_path: Path) -> None:
    good = runs(4)
    future = runs(1, start_ns=time.time_ns() + 48 * HOUR)
    wrong_types = json.loads(span_lines(runs(1))[0])
    attributes = wrong_types["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
    for pair in attributes:
        if pair["key"] == "odibi.rows_processed":
            pair["value"] = {"stringValue": "ten"}
    bad_id = json.loads(span_lines(runs(1))[0])
    bad_id["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"][0]["value"] = {
        "intValue": "5"
    }
    path = tmp_path / "t.jsonl"
    lines = [
        span_lines(good[:2])[0],
        '{"resourceSpans":[{"resource":{}, "scope',
        "not json",
        json.dumps(wrong_types),
        json.dumps(bad_id),
        span_lines(future)[0],
        span_lines(good[2:])[0],
    ]
    path.write_text("\n".join(lines) + "\n")
    log = ReadLog()
    rng = ReadRange(BASE_NS, time.time_ns() + 96 * HOUR, time.time_ns())
    got = [TraceRun._make(r) for r in OtlpJsonFileSource(path).read(rng, log)]
    by_where = {e.where: e.message for e in log.errors}
    assert set(by_where) == {f"{path}:{n}" for n in (2, 3, 4, 5, 6)}
    assert "not an OTLP-JSON request" in by_where[f"{path}:2"]
    assert "odibi.rows_processed is stringValue 'ten'" in by_where[f"{path}:4"]
    assert "odibi.run_id is intValue" in by_where[f"{path}:5"]
    assert "future" in by_where[f"{path}:6"]
    assert log.errors_total == 5
    # The span with the wrong rows type is kept, its rows left out of the comparison.
    kept = [r for r in got if r.unchecked]
    assert [r.unchecked for r in kept] == ["rows"]
    assert {r.run_id for r in got} == {r.run_id for r in good} | {kept[0].run_id}


def test_a_truncated_gzip_file_yields_what_precedes_the_cut(tmp_path: Path) -> None:
    records = runs(40)
    data = gzip.compress("".join(line + "\n" for line in span_lines(records, per_line=1)).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) * 2 // 3])
    log = ReadLog()
    got = list(OtlpJsonFileSource(tmp_path / "cut.jsonl.gz").read(read_range(), log))
    assert 0 < len(got) < 40
    assert any("compressed data ends" in e.message for e in log.errors)
    assert all(e.where.startswith(str(tmp_path / "cut.jsonl.gz:")) for e in log.errors)


def test_zstd_files_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 20)
    log = ReadLog()
    assert list(OtlpJsonFileSource(tmp_path / "t.jsonl.zst").read(read_range(), log)) == []
    assert "zstd" in log.errors[0].message
    with pytest.raises(SourceError, match="no such file"):
        list(OtlpJsonFileSource(tmp_path / "nope").read(read_range(), ReadLog()))
    with pytest.raises(SourceError, match="expected one of"):
        open_trace_source("jaeger:http://x")


def test_files_written_before_the_range_are_not_opened(tmp_path: Path) -> None:
    """A span is written after it ends, so a file last modified before the range begins
    cannot hold a span of the range (a month of rotated files is not read every night)."""
    old = write_spans(tmp_path / "old.jsonl", runs(2))
    old.write_text("this would be an error if it were read\n")
    stamp = (BASE_NS - HOUR) / SECOND
    os.utime(old, (stamp, stamp))
    write_spans(tmp_path / "new.jsonl", runs(2))
    log = ReadLog()
    assert len(list(OtlpJsonFileSource(tmp_path).read(read_range(), log))) == 2
    assert not log.errors


# ---------------------------------------------------------------------------------- the ledger


class LedgerContract(TraceSourceContract):
    sees_foreign_spans = False  # the sidecar stores only node spans
    keeps_error_message = False
    keeps_details = False
    url: str

    def make_source(self, tmp_path: Path, records: list[RunRecord], foreign: int) -> TraceSource:
        write_ledger(self.url, records)
        return open_trace_source(f"ledger:{self.url}")


class TestLedgerSqlite(LedgerContract):
    @pytest.fixture(autouse=True)
    def _url(self, sqlite_url: str) -> None:
        self.url = sqlite_url


@pytest.mark.postgres
class TestLedgerPostgres(LedgerContract):
    @pytest.fixture(autouse=True)
    def _url(self, pg_url: str) -> None:
        self.url = pg_url

    def test_describe_hides_the_password(self) -> None:
        source = LedgerSource(self.url)
        assert "devpass" not in source.describe() or "***" in source.describe()


def test_a_missing_ledger_table_is_a_source_error(sqlite_url: str) -> None:
    with pytest.raises(SourceError, match="odibi_span_ledger"):
        list(LedgerSource(sqlite_url).read(read_range(), ReadLog()))


# ---------------------------------------------------------------------------------------- Tempo


class TestTempoSource(TraceSourceContract):
    """Tempo's API served by :class:`TempoServer` (Tempo itself cannot run here)."""

    @pytest.fixture(autouse=True)
    def _server(self) -> Any:
        with TempoServer() as server:
            self.server = server
            yield

    def make_source(self, tmp_path: Path, records: list[RunRecord], foreign: int) -> TraceSource:
        for i, record in enumerate(records):  # one trace per run, some with foreign spans
            self.server.add(tempo_trace([record], extra_spans=foreign if i == 0 else 0))
        return TempoSource(self.server.url)


def test_tempo_fixture_answers_decode_as_recorded() -> None:
    """The hand-written answers in tests/fixtures/tempo (v1 ``batches`` and v2 ``trace``, base64
    ids, enum names) decode to the runs they describe; their other spans are ignored."""
    with TempoServer() as server:
        for name in ("trace_daily_sales.json", "trace_v2_fx_rates.json"):
            server.add(json.loads((FIXTURES / name).read_text()))
        rng = ReadRange(1_741_046_400 * SECOND, 1_741_046_400 * SECOND + 24 * HOUR, time.time_ns())
        log = ReadLog()
        got = {r[0]: TraceRun._make(r) for r in TempoSource(server.url).read(rng, log)}
    assert log.ignored_spans == 2 and not log.errors
    ingest = got["0b7e0a4e-7a55-4a83-9d0e-5b8f2f0c1a01"]
    assert (ingest.trace_id, ingest.span_id) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "53995c3f42cd8ad8",
    )
    assert (ingest.status, ingest.rows, ingest.host, ingest.pid) == (
        "SUCCESS",
        1200,
        "etl-worker-2",
        31337,
    )
    assert json.loads(ingest.attributes_json or "{}") == {
        "source": "s3://shop-raw/orders/2025-03-04/"
    }
    clean = got["0b7e0a4e-7a55-4a83-9d0e-5b8f2f0c1a02"]
    assert (clean.status, clean.rows, clean.error_type) == (
        "FAILURE",
        None,
        "odibi.exceptions.NodeExecutionError",
    )
    assert clean.error_message == "column 'amount' not found in orders.csv"
    assert clean.suggestions == (
        "orders.csv changed shape: compare its header with pipelines/daily_sales.yaml",
    )
    assert got["5f0e6a1c-2b1d-4e0f-8c3a-9a7b6c5d4e01"].service_name == "etl-fx"


def test_tempo_search_is_sliced_so_the_limit_never_truncates() -> None:
    """30 traces in one hour, a search limit of 4: a full answer splits its slice until every
    slice comes back with fewer than ``limit`` traces, so all 30 are found."""
    records = runs(30, step_ns=90 * SECOND)
    with TempoServer() as server:
        for record in records:
            server.add(tempo_trace([record]))
        source = TempoSource(server.url, SourceOptions(tempo_limit=4, tempo_slice_seconds=3600))
        log = ReadLog()
        got = list(source.read(read_range(), log))
        searches = [p for p in server.requests if p.startswith("/api/search")]
    assert sorted(r[0] for r in got) == sorted(r.run_id for r in records)
    assert not log.errors
    assert len(searches) > 24  # the 24 hourly slices, and the splits of the full ones


def test_tempo_timeouts_cost_their_slice_only_and_are_recorded_as_gaps() -> None:
    early = runs(3)
    late = runs(3, start_ns=BASE_NS + 5 * HOUR)
    with TempoServer() as server:
        for record in early + late:
            server.add(tempo_trace([record]))
        server.slow[(BASE_NS + 5 * HOUR) // SECOND] = 2.0
        server.fail_traces.add(early[0].trace_id)
        source = TempoSource(server.url, SourceOptions(tempo_timeout=0.5))
        log = ReadLog()
        got = {r[0] for r in source.read(read_range(), log)}
    assert got == {r.run_id for r in early[1:]}
    messages = " | ".join(f"{e.where}: {e.message}" for e in log.errors)
    assert "timed out after 0.5 s" in messages and "HTTP 500" in messages
    assert log.in_gap(late[0].started_ns) and log.in_gap(early[0].started_ns)
    assert not log.in_gap(early[1].started_ns)


def test_tempo_that_never_answers_is_unreadable() -> None:
    source = TempoSource("http://127.0.0.1:9", SourceOptions(tempo_timeout=0.5))
    with pytest.raises(SourceError, match="no search succeeded"):
        list(source.read(ReadRange(BASE_NS, BASE_NS + HOUR, time.time_ns()), ReadLog()))
    with pytest.raises(SourceError, match="http"):
        TempoSource("tempo-without-scheme:3200")
