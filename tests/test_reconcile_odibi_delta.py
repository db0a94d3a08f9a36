"""Odibi's own Delta ``meta_runs``, written by Odibi 3.15's ``CatalogManager`` itself, audited
as it is: matched by ``run_id``, compared on what Odibi records (status, rows, duration)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from odibi_observe.conventions import RunStatus
from odibi_observe.reconcile import (
    ReconcileError,
    Window,
    open_catalog_source,
    open_trace_source,
    reconcile,
    repair,
)
from odibi_observe.reconcile.odibi_delta import (
    iter_meta_runs,
    odibi_row_to_record,
    resolve_meta_runs_path,
    write_meta_runs,
)
from odibi_observe.record import RunRecord
from tests.test_reconcile_support import HOUR, runs, write_spans

pytest.importorskip("deltalake")


def _odibi_catalog(base: Path) -> Any:
    from odibi.catalog import CatalogManager
    from odibi.config import SystemConfig
    from odibi.engine.pandas_engine import PandasEngine

    logging.getLogger("odibi").setLevel(logging.WARNING)
    manager = CatalogManager(
        spark=None,
        config=SystemConfig(connection="local", path="_odibi_system", environment="prod"),
        base_path=str(base / "_odibi_system"),
        engine=PandasEngine(),
    )
    manager.bootstrap()
    return manager


def _odibi_row(record: RunRecord, **changes: Any) -> dict[str, Any]:
    row = {
        "run_id": record.run_id,
        "pipeline_name": record.pipeline,
        "node_name": record.node,
        "status": record.status.value,
        "rows_processed": record.rows_processed,
        "duration_ms": record.duration_ms,
        "metrics_json": "{}",
    }
    row.update(changes)
    return row


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An Odibi project whose run ids are stamped on the spans (odibi-observe's integration),
    with one fault of each kind Odibi's table can have."""
    base = tmp_path_factory.mktemp("odibi")
    start = int((datetime.now(timezone.utc) - timedelta(hours=1)).timestamp()) * 10**9
    records = runs(8, start_ns=start, step_ns=10**9)
    records[0] = records[0].finished(status=RunStatus.FAILURE, error_type="E")
    not_logged, rows_changed, status_changed, twice, no_span, unknown_rows = records[1:7]
    manager = _odibi_catalog(base)
    logged = [
        _odibi_row(
            r,
            **(
                {"rows_processed": 1}
                if r is rows_changed
                else {"status": "FAILURE"}
                if r is status_changed
                else {"rows_processed": None}
                if r is unknown_rows
                else {}
            ),
        )
        for r in records
        if r is not not_logged
    ]
    manager.log_runs_batch(logged)
    manager.log_runs_batch([_odibi_row(twice)])  # Odibi appends: the run is there twice
    write_spans(base / "traces.jsonl", [r for r in records if r is not no_span])
    return {
        "base": base,
        "records": records,
        "expected": {
            ("missing_in_catalog", not_logged.run_id),
            ("rows_mismatch", rows_changed.run_id),
            ("status_mismatch", status_changed.run_id),
            ("duplicate_in_catalog", twice.run_id),
            ("missing_in_traces", no_span.run_id),
        },
    }


def _reconcile(base: Path) -> Any:
    return reconcile(
        open_catalog_source(f"odibi-delta:{base / '_odibi_system'}"),
        [open_trace_source(f"otlp-json:{base / 'traces.jsonl'}")],
        Window.last(timedelta(hours=3), grace=timedelta(0)),
    )


def test_odibis_own_table_is_reconciled_by_run_id(deployment: dict[str, Any]) -> None:
    with _reconcile(deployment["base"]) as result:
        assert {(d.kind, d.run_id) for d in result.discrepancies()} == deployment["expected"]
        assert result.catalog_runs == 7 and result.trace_runs == 7
        assert not result.errors
        # A row without rows_processed is "not recorded": not a rows_mismatch.
        assert result.matched == 6


def test_repairs_leave_odibis_table_alone(deployment: dict[str, Any]) -> None:
    catalog = open_catalog_source(f"odibi-delta:{deployment['base']}")
    with _reconcile(deployment["base"]) as result:
        summary = repair(result, catalog, apply=True, repair_traces=None)
        annotations = [d.repair or {} for d in result.discrepancies()]
    assert summary.catalog_writable is False
    assert {a["status"] for a in annotations} <= {"not_repairable", "skipped"}
    assert any("read-only" in a["note"] for a in annotations)


def test_reader_filters_by_time_and_maps_rows_to_records(deployment: dict[str, Any]) -> None:
    path = deployment["base"] / "_odibi_system" / "meta_runs"
    assert resolve_meta_runs_path(deployment["base"]) == str(path)
    now = datetime.now(timezone.utc)
    rows = list(iter_meta_runs(deployment["base"], since=now - timedelta(hours=1)))
    assert len(rows) == 8
    assert list(iter_meta_runs(path, until=now - timedelta(hours=2))) == []
    record = odibi_row_to_record(rows[0])
    assert record.ended_at == rows[0]["timestamp"]
    assert record.duration_ms == rows[0]["duration_ms"]
    assert (record.trace_id, record.pid) == ("", 0)


def test_rows_written_here_read_back_through_odibi(tmp_path: Path) -> None:
    manager = _odibi_catalog(tmp_path)
    path = manager.tables["meta_runs"]
    run_id = str(uuid.uuid4())
    write_meta_runs(
        path,
        [
            {
                "run_id": run_id,
                "project": "shop",
                "pipeline_name": "sales",
                "node_name": "clean",
                "status": "SUCCESS",
                "rows_processed": 5,
                "duration_ms": 12,
                "metrics_json": "{}",
                "environment": "prod",
            }
        ],
    )
    frame = manager._read_local_table(path)
    assert list(frame["run_id"]) == [run_id]
    assert list(frame.columns) == [
        "run_id",
        "project",
        "pipeline_name",
        "node_name",
        "status",
        "rows_processed",
        "duration_ms",
        "metrics_json",
        "environment",
        "timestamp",
        "date",
    ]


def test_a_path_that_is_not_a_delta_table(tmp_path: Path) -> None:
    write_spans(tmp_path / "t.jsonl", runs(1))
    with pytest.raises(ReconcileError, match="not a Delta table"):
        reconcile(
            open_catalog_source(f"odibi-delta:{tmp_path / 'nothing'}"),
            [open_trace_source(f"otlp-json:{tmp_path / 't.jsonl'}")],
            Window.last(timedelta(hours=3), grace=timedelta(0)),
        )
    assert HOUR  # the support module's units are the ones used above
