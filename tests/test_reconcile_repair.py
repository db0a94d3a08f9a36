"""``--repair``: what it would do (dry run), what it does, and that doing it twice does nothing.

Spans are re-emitted through the real OtelSink: into an OTLP-JSON file that the next
reconciliation reads, or over OTLP/HTTP to a real receiver (``tests/otlp_receiver.py``)
configured by the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` variable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from odibi_observe._otlp_json import read_spans
from odibi_observe.catalog import CatalogStore, create_catalog_engine
from odibi_observe.conventions import CRASH_HEARTBEAT_LOST, RunStatus, Source
from odibi_observe.reconcile import (
    ReconcileResult,
    RepairError,
    open_catalog_source,
    open_trace_source,
    reconcile,
    repair,
)
from odibi_observe.reconcile.repair import derived_ids
from odibi_observe.record import EventKind
from tests.otlp_receiver import OtlpReceiver
from tests.test_reconcile_support import (
    BASE_NS,
    HOUR,
    execute,
    failed,
    runs,
    window,
    write_catalog,
    write_spans,
)


def _reconcile(url: str, folder: Path) -> ReconcileResult:
    return reconcile(open_catalog_source(url), [open_trace_source(f"otlp-json:{folder}")], window())


def _plant(url: str, folder: Path) -> dict[str, Any]:
    """One run of each repairable kind (and a duplicate, which is not repairable)."""
    records = runs(10)
    records[1] = failed(records[1].finished(attributes={"region": "eu"}))
    no_row, no_span, status, rows, duration, dup = records[1:7]
    stale = runs(1, status=RunStatus.RUNNING, started_ns=BASE_NS + 2 * HOUR)[0]
    write_catalog(url, [r for r in records if r is not no_row])
    write_catalog(url, [stale], kind=EventKind.STARTED)
    execute(
        url,
        "UPDATE meta_runs SET status = 'RUNNING', ended_at = NULL WHERE run_id = :r",
        r=status.run_id,
    )
    execute(url, "UPDATE meta_runs SET rows_processed = 1 WHERE run_id = :r", r=rows.run_id)
    execute(url, "UPDATE meta_runs SET duration_ms = 99999 WHERE run_id = :r", r=duration.run_id)
    spans = [r for r in records if r is not no_span] + [dup.finished(span_id="0" * 15 + "d")]
    write_spans(folder / "traces.jsonl", spans)
    return {
        "records": records,
        "no_row": no_row,
        "no_span": no_span,
        "status": status,
        "rows": rows,
        "duration": duration,
        "dup": dup,
        "stale": stale,
    }


def _rows(url: str) -> dict[str, dict[str, Any]]:
    engine = create_catalog_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM meta_runs")).mappings().all()
    engine.dispose()
    return {r["run_id"]: dict(r) for r in rows}


def test_dry_run_says_what_it_would_do_and_changes_nothing(sqlite_url: str, tmp_path: Path) -> None:
    plan = _plant(sqlite_url, tmp_path / "t")
    before = _rows(sqlite_url)
    with _reconcile(sqlite_url, tmp_path / "t") as result:
        summary = repair(
            result,
            open_catalog_source(sqlite_url),
            apply=False,
            repair_traces=f"otlp-json:{tmp_path / 't' / 'repaired.jsonl'}",
        )
        actions = {d.kind: (d.repair or {}) for d in result.discrepancies()}
    assert _rows(sqlite_url) == before
    assert not (tmp_path / "t" / "repaired.jsonl").exists()
    assert summary.mode == "dry-run"
    assert {k: (a["action"], a["status"]) for k, a in actions.items()} == {
        "missing_in_catalog": ("backfill_catalog", "planned"),
        "missing_in_traces": ("emit_span", "planned"),
        "status_mismatch": ("update_catalog_from_trace", "planned"),
        "rows_mismatch": ("update_catalog_from_trace", "planned"),
        "duration_mismatch": ("update_catalog_from_trace", "planned"),
        "duplicate_in_traces": (None, "not_repairable"),
        "stale_running": ("close_crashed", "planned"),
    }
    assert plan["stale"].run_id in before


def test_repair_fixes_what_it_can_and_the_next_reconciliation_is_clean(
    catalog_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "t"
    plan = _plant(catalog_url, folder)
    target = f"otlp-json:{folder / 'repaired.jsonl'}"
    with _reconcile(catalog_url, folder) as result:
        summary = repair(result, open_catalog_source(catalog_url), apply=True, repair_traces=target)
    assert (summary.statuses["applied"], summary.statuses["failed"]) == (6, 0)
    rows = _rows(catalog_url)
    store = CatalogStore(catalog_url)

    backfilled = store.get(plan["no_row"].run_id)
    original = plan["no_row"]
    assert backfilled is not None and backfilled.source is Source.RECONCILER
    for name in (
        "status",
        "rows_processed",
        "started_ns",
        "ended_ns",
        "trace_id",
        "span_id",
        "pipeline",
        "node",
        "project",
        "environment",
        "error_type",
        "error_message",
        "suggestions",
        "host",
        "pid",
        "pipeline_run_id",
    ):
        assert getattr(backfilled, name) == getattr(original, name), name
    assert dict(backfilled.attributes) == {"region": "eu"}

    assert rows[plan["status"].run_id]["status"] == "SUCCESS"
    assert rows[plan["rows"].run_id]["rows_processed"] == plan["rows"].rows_processed
    assert rows[plan["duration"].run_id]["duration_ms"] == plan["duration"].duration_ms
    stale = store.get(plan["stale"].run_id)
    assert stale is not None and stale.status is RunStatus.CRASHED
    assert stale.error_type == CRASH_HEARTBEAT_LOST and stale.ended_ns == stale.started_ns
    store.dispose()

    emitted = {s.attributes["odibi.run_id"]: s for s in read_spans(folder / "repaired.jsonl")}
    assert set(emitted) == {plan["no_span"].run_id, plan["stale"].run_id}
    span = emitted[plan["no_span"].run_id]
    assert (span.trace_id, span.span_id) == (plan["no_span"].trace_id, plan["no_span"].span_id)
    crashed = emitted[plan["stale"].run_id]
    assert crashed.attributes["odibi.status"] == "CRASHED" and crashed.status_code == 2
    assert crashed.start_ns == plan["stale"].started_ns

    with _reconcile(catalog_url, folder) as second:
        assert {d.kind for d in second.discrepancies()} == {"duplicate_in_traces"}
        again = repair(second, open_catalog_source(catalog_url), apply=True, repair_traces=target)
    assert again.statuses["applied"] == 0
    assert len(read_spans(folder / "repaired.jsonl")) == 2  # nothing emitted twice
    assert _rows(catalog_url) == rows


def test_rows_without_trace_ids_get_ids_derived_from_the_run_id(
    sqlite_url: str, tmp_path: Path
) -> None:
    record = runs(1)[0]
    write_catalog(sqlite_url, [record])
    execute(sqlite_url, "UPDATE meta_runs SET trace_id = NULL, span_id = NULL")
    write_spans(tmp_path / "t" / "other.jsonl", runs(1, start_ns=BASE_NS + 30 * HOUR))
    target = f"otlp-json:{tmp_path / 't' / 'repaired.jsonl'}"
    for _ in range(2):
        with _reconcile(sqlite_url, tmp_path / "t") as result:
            repair(result, open_catalog_source(sqlite_url), apply=True, repair_traces=target)
    (span,) = read_spans(tmp_path / "t" / "repaired.jsonl")
    assert (span.trace_id, span.span_id) == tuple(derived_ids(record.run_id).values())
    assert _rows(sqlite_url)[record.run_id]["trace_id"] == span.trace_id


def test_without_a_trace_destination_span_repairs_wait(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "ODIBI_OBSERVE_OTLP_ENDPOINT",
        "ODIBI_OBSERVE_TRACES_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    plan = _plant(sqlite_url, tmp_path / "t")
    with _reconcile(sqlite_url, tmp_path / "t") as result:
        repair(result, open_catalog_source(sqlite_url), apply=True)
        notes = {d.kind: d.repair or {} for d in result.discrepancies()}
    assert notes["missing_in_traces"]["status"] == "skipped"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in notes["missing_in_traces"]["note"]
    assert "no span" in notes["stale_running"]["note"]
    with _reconcile(sqlite_url, tmp_path / "t") as after:
        left = {(d.kind, d.run_id) for d in after.discrepancies()}
    assert ("missing_in_traces", plan["stale"].run_id) in left  # CRASHED now, still no span


def test_spans_go_where_the_otel_variables_point(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = runs(1)[0]
    write_catalog(sqlite_url, [record])
    write_spans(tmp_path / "t" / "none.jsonl", [])
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        with _reconcile(sqlite_url, tmp_path / "t") as result:
            summary = repair(result, open_catalog_source(sqlite_url), apply=True)
        (span,) = receiver.wait_for_spans(1)
    assert summary.span_destination == receiver.endpoint
    assert (span.trace_id, span.span_id, span.start_ns) == (
        record.trace_id,
        record.span_id,
        record.started_ns,
    )


def test_a_failed_export_is_reported_per_run(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ODIBI_OBSERVE_OTLP_TIMEOUT", "0.5")  # the exporter's own retry budget
    write_catalog(sqlite_url, runs(1))
    write_spans(tmp_path / "t" / "none.jsonl", [])
    with _reconcile(sqlite_url, tmp_path / "t") as result:
        summary = repair(
            result,
            open_catalog_source(sqlite_url),
            apply=True,
            repair_traces="http://127.0.0.1:9/v1/traces",
        )
        (item,) = list(result.discrepancies())
    assert summary.statuses["failed"] == 1
    assert item.repair and "span export failed" in item.repair["note"]
    with pytest.raises(RepairError, match="expected otlp-json:PATH"):
        repair(result, open_catalog_source(sqlite_url), apply=True, repair_traces="ftp://x")


def test_a_backfill_never_overwrites_a_row_outside_the_window(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The run's span is in the window, its row is not (a clock step between them): the
    row is left as it is."""
    record = runs(1)[0]
    write_catalog(sqlite_url, [record.finished(started_ns=BASE_NS - 3 * HOUR)])
    write_spans(tmp_path / "t" / "a.jsonl", [record])
    with _reconcile(sqlite_url, tmp_path / "t") as result:
        repair(
            result,
            open_catalog_source(sqlite_url),
            apply=True,
            repair_traces=f"otlp-json:{tmp_path / 'r.jsonl'}",
        )
        (item,) = list(result.discrepancies())
    assert item.repair and item.repair["status"] == "skipped"
    assert json.dumps(item.to_dict())  # still a JSON-ready record
