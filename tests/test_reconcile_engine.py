"""The engine: which runs are in the window, and which discrepancy each difference is.

Catalogs are real (SQLite, and PostgreSQL where the backend matters); traces are real OTLP-JSON
files, or a list of runs where the test is about judging rather than reading.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from odibi_observe.catalog import create_catalog_engine
from odibi_observe.conventions import DISCREPANCY_KINDS, RunStatus
from odibi_observe.reconcile import (
    ReconcileError,
    ReconcileOptions,
    ReconcileResult,
    Window,
    open_catalog_source,
    open_trace_source,
    reconcile,
)
from odibi_observe.reconcile.model import ReadLog, ReadRange, TraceRun
from odibi_observe.reconcile.otlp_files import OtlpJsonFileSource
from odibi_observe.reconcile.sources import SourceError, TraceSource
from odibi_observe.record import EventKind, ns_to_datetime
from tests.test_reconcile_support import (
    BASE_NS,
    HOUR,
    SECOND,
    ListSource,
    execute,
    failed,
    runs,
    trace_run,
    window,
    write_catalog,
    write_ledger,
    write_spans,
)


def found(result: ReconcileResult) -> set[tuple[str, str]]:
    return {(d.kind, d.run_id) for d in result.discrepancies()}


def run_files(url: str, folder: Path, win: Window | None = None, **options: Any) -> ReconcileResult:
    return reconcile(
        open_catalog_source(url),
        [open_trace_source(f"otlp-json:{folder}")],
        win or window(),
        ReconcileOptions(**options),
    )


def test_every_kind_is_found_and_nothing_else(catalog_url: str, tmp_path: Path) -> None:
    """One window with each kind planted once, on SQLite and on PostgreSQL."""
    records = runs(12)
    records[5] = failed(records[5])
    ok = records[:5]
    missing_catalog, missing_traces, status, rows, duration, dup = records[5:11]
    stale = runs(1, status=RunStatus.RUNNING, started_ns=BASE_NS + 3 * HOUR)[0]
    catalog_side = [r for r in records if r is not missing_catalog]
    write_catalog(catalog_url, catalog_side)
    write_catalog(catalog_url, [stale], kind=EventKind.STARTED)
    execute(
        catalog_url, "UPDATE meta_runs SET status = 'SUCCESS' WHERE run_id = :r", r=status.run_id
    )
    execute(
        catalog_url, "UPDATE meta_runs SET rows_processed = 999 WHERE run_id = :r", r=rows.run_id
    )
    execute(
        catalog_url, "UPDATE meta_runs SET duration_ms = 900 WHERE run_id = :r", r=duration.run_id
    )
    status_span = status.finished(status=RunStatus.FAILURE, error_type="E")
    spans = [r for r in records if r not in (missing_traces, status)] + [status_span]
    spans.append(dup.finished(span_id="00000000000000ab"))  # a second span for one run
    spans.append(ok[0])  # the same span delivered twice: not a discrepancy
    write_spans(tmp_path / "t" / "a.jsonl", spans, per_line=5)
    with run_files(catalog_url, tmp_path / "t") as result:
        assert found(result) == {
            ("missing_in_catalog", missing_catalog.run_id),
            ("missing_in_traces", missing_traces.run_id),
            ("status_mismatch", status.run_id),
            ("rows_mismatch", rows.run_id),
            ("duration_mismatch", duration.run_id),
            ("duplicate_in_traces", dup.run_id),
            ("stale_running", stale.run_id),
        }
        assert (result.catalog_runs, result.trace_runs, result.matched) == (12, 11, 10)
        assert result.completeness == pytest.approx(10 / 11)
        assert set(result.summary()["discrepancies"]) == set(DISCREPANCY_KINDS)
        details = {d.kind: d for d in result.discrepancies()}
        assert details["rows_mismatch"].catalog["rows_processed"] == 999  # type: ignore[index]
        assert details["rows_mismatch"].trace["rows_processed"] == rows.rows_processed  # type: ignore[index]
        assert details["missing_in_catalog"].trace["error_type"] == "ValueError"  # type: ignore[index]
        assert "2 different spans" in details["duplicate_in_traces"].detail


def test_duplicate_catalog_rows_in_a_table_without_primary_key(tmp_path: Path) -> None:
    """Odibi's own tables may lack a primary key; a run logged twice is reported."""
    url = f"sqlite:///{tmp_path}/odibi.db"
    execute(
        url,
        "CREATE TABLE meta_runs (run_id TEXT, project TEXT, pipeline_name TEXT, "
        "node_name TEXT, status TEXT, rows_processed BIGINT, duration_ms BIGINT, "
        "metrics_json TEXT, environment TEXT, timestamp DATETIME, date DATE)",
    )
    records = runs(3)
    for r in [*records, records[1]]:
        execute(
            url,
            "INSERT INTO meta_runs VALUES (:r, 'p', :pl, :n, 'SUCCESS', :rows, :d, "
            "'{}', 'test', :ts, :day)",
            r=r.run_id,
            pl=r.pipeline,
            n=r.node,
            rows=r.rows_processed,
            d=r.duration_ms,
            ts=r.ended_at.isoformat(" ")[:26],  # type: ignore[union-attr]
            day=r.ended_at.date(),  # type: ignore[union-attr]
        )
    write_spans(tmp_path / "t.jsonl", records)
    with run_files(url, tmp_path / "t.jsonl") as result:
        assert found(result) == {("duplicate_in_catalog", records[1].run_id)}
        assert result.matched == 3
        # Odibi's table as Odibi made it is a fact about the input, not a read error.
        assert not result.errors_total
        assert "no column started_at" in result.notes[0]


@pytest.mark.parametrize(
    ("span_ms", "catalog_ms", "agrees"),
    [
        (40, 45, True),
        (40, 46, False),  # short runs: 5 ms
        (10_000, 10_100, True),
        (10_000, 10_101, False),  # long runs: 1 %
    ],
)
def test_duration_tolerance_is_one_percent_or_five_ms(
    sqlite_url: str, span_ms: int, catalog_ms: int, agrees: bool
) -> None:
    record = runs(1, duration_ns=span_ms * 1_000_000)[0]
    write_catalog(sqlite_url, [record])
    execute(sqlite_url, "UPDATE meta_runs SET duration_ms = :d", d=catalog_ms)
    source = ListSource([trace_run(record)])
    with reconcile(open_catalog_source(sqlite_url), [source], window()) as result:
        assert found(result) == (set() if agrees else {("duration_mismatch", record.run_id)})
    with reconcile(
        open_catalog_source(sqlite_url),
        [source],
        window(),
        ReconcileOptions(duration_tolerance_ms=10),
    ) as relaxed:
        assert (span_ms, found(relaxed)) != (40, {("duration_mismatch", record.run_id)})


def test_running_rows_stale_in_flight_and_alive_by_heartbeat(sqlite_url: str) -> None:
    now = time.time_ns()
    old = runs(1, status=RunStatus.RUNNING, started_ns=now - 2 * HOUR)[0]
    beating = runs(
        1, status=RunStatus.RUNNING, started_ns=now - 2 * HOUR, heartbeat_ns=now - 60 * SECOND
    )[0]
    recent = runs(1, status=RunStatus.RUNNING, started_ns=now - 5 * 60 * SECOND)[0]
    finished_later = runs(1, status=RunStatus.RUNNING, started_ns=now - HOUR)[0]
    write_catalog(sqlite_url, [old, beating, recent, finished_later], kind=EventKind.STARTED)
    span = trace_run(finished_later, status="SUCCESS", end_ns=finished_later.started_ns + SECOND)
    win = Window.last(timedelta(hours=6), grace=timedelta(0))
    with reconcile(open_catalog_source(sqlite_url), [ListSource([span])], win) as result:
        assert found(result) == {
            ("stale_running", old.run_id),
            ("status_mismatch", finished_later.run_id),
        }
        assert result.in_flight == 2
        detail = {d.kind: d.detail for d in result.discrepancies()}
        assert "terminal catalog write was lost" in detail["status_mismatch"]
    with reconcile(
        open_catalog_source(sqlite_url),
        [ListSource([span])],
        win,
        ReconcileOptions(crash_after=timedelta(hours=3)),
    ) as patient:
        assert found(patient) == {("status_mismatch", finished_later.run_id)}


def test_runs_within_the_grace_period_wait_for_the_next_run(sqlite_url: str) -> None:
    now = time.time_ns()
    settled = runs(2, started_ns=now - 2 * HOUR)
    fresh = runs(2, started_ns=now - 5 * 60 * SECOND)
    write_catalog(sqlite_url, [settled[0], fresh[0]])
    spans = ListSource([trace_run(r) for r in (settled[1], fresh[1])])
    win = Window.last(timedelta(hours=6), grace=timedelta(minutes=15))
    assert win.end == win.now - timedelta(minutes=15)
    assert win.since == win.now - timedelta(hours=6, minutes=15)
    with reconcile(open_catalog_source(sqlite_url), [spans], win) as result:
        assert found(result) == {
            ("missing_in_traces", settled[0].run_id),
            ("missing_in_catalog", settled[1].run_id),
        }


def test_runs_outside_the_window_are_not_reported(sqlite_url: str) -> None:
    inside = runs(1)[0]
    before = runs(2, start_ns=BASE_NS - 5 * SECOND, step_ns=SECOND)  # in the read margin
    write_catalog(sqlite_url, [inside, before[0]])
    spans = ListSource([trace_run(inside), trace_run(before[1])])
    with reconcile(open_catalog_source(sqlite_url), [spans], window()) as result:
        assert found(result) == set()
        assert result.outside_window == 2
        assert (result.catalog_runs, result.trace_runs) == (1, 1)


def test_runs_in_a_range_a_source_could_not_read_are_unchecked(sqlite_url: str) -> None:
    class Gappy(ListSource):
        def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[TraceRun]:
            log.gap(BASE_NS + 5 * HOUR, BASE_NS + 6 * HOUR, "gappy")
            log.add_error("gappy", "search", "timed out")
            return super().read(read_range, log)

    lost = runs(1, started_ns=BASE_NS + 5 * HOUR + SECOND)[0]
    missing = runs(1, started_ns=BASE_NS + 7 * HOUR)[0]
    write_catalog(sqlite_url, [lost, missing])
    with reconcile(open_catalog_source(sqlite_url), [Gappy([])], window()) as result:
        assert found(result) == {("missing_in_traces", missing.run_id)}
        assert result.unchecked == 1
        assert result.errors_total == 1 and not result.clean


def test_spilled_sorted_and_merged_sources_agree(tmp_path: Path, sqlite_url: str) -> None:
    """Three sources at once — files (spilled through the external sort, in runs of 7), the
    ledger (sorted by the database) and a list — give the same answer as one source; a span
    present in two sources counts once."""
    records = runs(60)
    write_catalog(sqlite_url, records[:-2])
    write_spans(tmp_path / "a.jsonl", records[:25])
    write_ledger(sqlite_url, records[20:45])  # overlaps the files by 5 spans
    lists = ListSource([trace_run(r) for r in records[45:]], sorted_by_run_id=True)
    sources: list[TraceSource] = [
        open_trace_source(f"otlp-json:{tmp_path / 'a.jsonl'}"),
        open_trace_source(f"ledger:{sqlite_url}"),
        lists,
    ]
    with reconcile(
        open_catalog_source(sqlite_url), sources, window(), ReconcileOptions(chunk_size=7)
    ) as result:
        assert found(result) == {("missing_in_catalog", r.run_id) for r in records[-2:]}
        assert (result.trace_runs, result.matched) == (60, 58)


def test_unreadable_sources(tmp_path: Path, sqlite_url: str) -> None:
    write_catalog(sqlite_url, runs(2))
    write_spans(tmp_path / "t.jsonl", runs(1))
    files = open_trace_source(f"otlp-json:{tmp_path / 't.jsonl'}")
    gone = open_trace_source(f"otlp-json:{tmp_path / 'gone'}")
    with pytest.raises(ReconcileError, match="no trace source could be read"):
        reconcile(open_catalog_source(sqlite_url), [gone], window())
    with reconcile(open_catalog_source(sqlite_url), [files, gone], window()) as result:
        assert result.unreadable and "no such file" in result.unreadable[0]
    with pytest.raises(ReconcileError, match="no table meta_runs"):
        reconcile(open_catalog_source(f"sqlite:///{tmp_path}/empty.db"), [files], window())
    execute(
        f"sqlite:///{tmp_path}/odd.db", "CREATE TABLE meta_runs (run_id TEXT, started_at DATETIME)"
    )
    with pytest.raises(ReconcileError, match="no column status"):
        reconcile(open_catalog_source(f"sqlite:///{tmp_path}/odd.db"), [files], window())
    with pytest.raises(SourceError, match="unsupported database URL"):
        open_catalog_source("nonsense://")


def test_a_stream_out_of_order_stops_the_merge(sqlite_url: str) -> None:
    class Liar(ListSource):
        def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[TraceRun]:
            return iter(sorted(self.items, reverse=True))

    write_catalog(sqlite_url, [])
    with pytest.raises(ReconcileError, match="not sorted by run_id"):
        reconcile(
            open_catalog_source(sqlite_url),
            [Liar([trace_run(r) for r in runs(3)], sorted_by_run_id=True)],
            window(),
        )


def test_bad_catalog_values_are_reported_and_not_compared(sqlite_url: str) -> None:
    records = runs(2)
    write_catalog(sqlite_url, records)
    execute(
        sqlite_url,
        "UPDATE meta_runs SET rows_processed = 'lots' WHERE run_id = :r",
        r=records[0].run_id,
    )
    future = runs(1, started_ns=time.time_ns() + 48 * HOUR)[0]
    write_catalog(sqlite_url, [future])
    with reconcile(
        open_catalog_source(sqlite_url), [ListSource([trace_run(r) for r in records])], window()
    ) as result:
        assert found(result) == set()
        messages = [e.message for e in result.errors]
        assert any("rows_processed: 'lots' is not a whole number" in m for m in messages)
        assert any("dated in the future" in m for m in messages)


@pytest.mark.postgres
def test_postgres_with_a_locale_collation_merges_in_byte_order(pg_url: str) -> None:
    """A production database sorts text by its locale (here ICU's en), in which 'a-1' sorts
    after 'a_1'; the catalog query sorts COLLATE "C", as the merge needs."""
    records = [
        r.finished(run_id=i)
        for r, i in zip(runs(6), ["a-1", "a_1", "A1", "a1", "b", "é"], strict=True)
    ]
    write_catalog(pg_url, records)
    engine = create_catalog_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            'ALTER TABLE meta_runs ALTER COLUMN run_id TYPE varchar(100) COLLATE "en-x-icu"'
        )
    engine.dispose()
    with reconcile(
        open_catalog_source(pg_url), [ListSource([trace_run(r) for r in records])], window()
    ) as result:
        assert found(result) == set()
        assert result.matched == 6


def test_window_arguments_are_checked() -> None:
    now = ns_to_datetime(BASE_NS)
    with pytest.raises(ValueError, match="before it starts"):
        Window.between(now, now - timedelta(hours=1), grace=timedelta(0))
    win = Window.between(
        now - timedelta(days=2), now - timedelta(days=1), grace=timedelta(minutes=15), now=now
    )
    assert win.end == win.until  # a window well in the past is not shortened by the grace


def test_run_record_of_a_failure_survives_the_round_trip(sqlite_url: str, tmp_path: Path) -> None:
    """A run missing from the catalog keeps everything its span says, for the backfill."""
    record = failed(runs(1, attributes={"region": "eu"})[0])
    write_catalog(sqlite_url, [])
    write_spans(tmp_path / "t.jsonl", [record])
    with run_files(sqlite_url, tmp_path / "t.jsonl") as result:
        (item,) = list(result.discrepancies())
    trace = item.trace or {}
    assert (trace["error_type"], trace["error_message"]) == (
        "ValueError",
        "column 'amount' not found",
    )
    assert trace["suggestions"] == list(record.suggestions)
    assert trace["attributes"] == {"region": "eu"}
    assert (trace["started_ns"], trace["ended_ns"]) == (record.started_ns, record.ended_ns)


class FailsInAChild(TraceSource):
    """Trace files that cannot be read in any process but the one that made them: the second
    half of the split is read by a child, which fails, and the parent must read it again."""

    scheme: ClassVar[str] = "flaky"

    def __init__(self, folder: Path, files: list[Path] | None = None) -> None:
        self.folder = folder
        self.parent = os.getpid()
        self.files = files

    def describe(self) -> str:
        return f"flaky:{self.folder}"

    def split(self, parts: int, read_range: ReadRange, *, min_bytes: int = 0) -> list[TraceSource]:
        files = sorted(self.folder.iterdir())
        return [FailsInAChild(self.folder, files[:2]), FailsInAChild(self.folder, files[2:])]

    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[TraceRun]:
        if os.getpid() != self.parent:
            raise RuntimeError("this disk is only mounted in the parent")
        for file in self.files or sorted(self.folder.iterdir()):
            yield from OtlpJsonFileSource(file).read(read_range, log)


def test_reading_in_two_processes_gives_the_same_answer(tmp_path: Path, sqlite_url: str) -> None:
    """The files are split between this process and a child (in sorted runs of 7); the answer,
    the counts and the read errors are those of one process."""
    records = runs(80)
    write_catalog(sqlite_url, records[:-3])
    for i in range(4):
        write_spans(
            tmp_path / "t" / f"part-{i}.jsonl",
            records[i * 20 : (i + 1) * 20],
            extra_lines=["not json"] if i == 2 else [],
        )

    def run(**options: Any) -> tuple[Any, ...]:
        with run_files(sqlite_url, tmp_path / "t", chunk_size=7, **options) as result:
            return (
                found(result),
                result.trace_runs,
                result.matched,
                result.errors_total,
                sorted(e.where for e in result.errors),
            )

    single = run(workers=1)
    assert single[0] == {("missing_in_catalog", r.run_id) for r in records[-3:]}
    assert run(workers=2, parallel_min_bytes=0) == single
    flaky = reconcile(
        open_catalog_source(sqlite_url),
        [FailsInAChild(tmp_path / "t")],
        window(),
        ReconcileOptions(workers=2, parallel_min_bytes=0),
    )
    with flaky:
        assert found(flaky) == single[0]
        assert any("a reading process failed" in e.message for e in flaky.errors)


def test_cancelled_runs_are_compared_like_any_status(tmp_path: Path) -> None:
    """A CANCELLED run agrees with its CANCELLED span; against a FAILURE span it is a
    status_mismatch (through the real catalog and real OTLP-JSON span files)."""
    url = f"sqlite:///{tmp_path}/c.db"
    agree, differ = (
        r.finished(status=RunStatus.CANCELLED, error_type="KeyboardInterrupt") for r in runs(2)
    )
    write_catalog(url, [agree, differ])
    spans = [agree, differ.finished(status=RunStatus.FAILURE, error_type="KeyboardInterrupt")]
    write_spans(tmp_path / "t" / "a.jsonl", spans)
    with run_files(url, tmp_path / "t") as result:
        assert found(result) == {("status_mismatch", differ.run_id)}
        (mismatch,) = result.discrepancies()
        assert mismatch.catalog["status"] == "CANCELLED"  # type: ignore[index]
        assert mismatch.trace["status"] == "FAILURE"  # type: ignore[index]
        assert result.matched == 2
