"""The plan of a pipeline run: SKIPPED runs for planned nodes that never started, and the
pipeline run's own record (``meta_pipeline_runs``, the ``RUN {pipeline}`` span's counts).

Plain API tests: ``pipeline_run(plan=...)`` with decorated nodes, recorded into an in-memory
sink, a real SQLite / PostgreSQL catalog, a real OTLP-JSON file and a Prometheus registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe._otlp_json import read_spans
from odibi_observe.catalog import CatalogStore
from odibi_observe.catalog.migrate import alembic_config
from odibi_observe.conventions import (
    CATALOG_TABLE,
    CICD_PIPELINE_RESULT,
    CICD_TASK_RUN_RESULT,
    FIELDS,
    METRICS,
    PIPELINE_COUNTS,
    PIPELINE_RUNS_TABLE,
    SKIP_ABORTED,
    SKIP_DEPENDENCY_FAILED,
    SKIP_FAIL_FAST,
    SKIP_NOT_SELECTED,
    SKIP_REASON_FIELD,
    TASK_RUN_RESULTS,
    RunStatus,
)
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.base import Sink
from odibi_observe.testing import InMemorySink, capture_runs
from tests.helpers import Configure, reconcile_argv

PLAN = ["extract", "clean", "enrich", "load", "report"]
DEPENDS = {"clean": ["extract"], "enrich": ["clean"], "load": ["enrich"], "report": ["extract"]}


@oo.observe_node
def extract() -> list[int]:
    return [1, 2, 3]


@oo.observe_node
def clean() -> list[int]:
    raise ValueError("bad rows")


def run_until_failure() -> str:
    """extract succeeds, clean fails and the exception stops the pipeline run."""
    with oo.pipeline_run("sales", plan=PLAN, depends_on=DEPENDS) as pipeline_run_id:
        extract()
        clean()
    return pipeline_run_id  # pragma: no cover - clean raises


def counts(record: RunRecord) -> dict[str, object]:
    return {f.key: record.attributes.get(f.key) for f in PIPELINE_COUNTS}


def test_planned_nodes_that_never_started_are_skipped_with_their_reason() -> None:
    with capture_runs() as sink, pytest.raises(ValueError, match="bad rows"):
        run_until_failure()
    by_node = {r.node: r for r in sink.finished}
    assert {n: r.status for n, r in by_node.items()} == {
        "extract": RunStatus.SUCCESS,
        "clean": RunStatus.FAILURE,
        "enrich": RunStatus.SKIPPED,
        "load": RunStatus.SKIPPED,
        "report": RunStatus.SKIPPED,
    }
    # enrich needs clean (failed), load needs enrich (skipped for that); report needs only
    # extract, which succeeded: the failure stopping the run is why it never started.
    assert {r.node: r.skip_reason for r in sink.skipped} == {
        "enrich": SKIP_DEPENDENCY_FAILED,
        "load": SKIP_DEPENDENCY_FAILED,
        "report": SKIP_FAIL_FAST,
    }
    run_ids = {r.pipeline_run_id for r in sink.finished}
    assert len(run_ids) == 1
    for rec in sink.skipped:
        assert rec.started_ns == rec.ended_ns and rec.duration_ms == 0
        assert rec.rows_processed is None and rec.error_type is None
    # A skipped run has no start: nothing said it was running.
    assert {r.node for r in sink.started} == {"extract", "clean"}
    (pipeline,) = sink.pipeline_runs
    assert pipeline.run_id == pipeline.pipeline_run_id == run_ids.pop()
    assert pipeline.status is RunStatus.FAILURE and pipeline.error_type == "ValueError"
    assert counts(pipeline) == {"planned": 5, "ran": 2, "skipped": 3, "failed": 1}


def test_an_interrupted_pipeline_run_skips_the_rest_as_aborted() -> None:
    with capture_runs() as sink, pytest.raises(KeyboardInterrupt):
        with oo.pipeline_run("sales", plan=PLAN, depends_on=DEPENDS):
            extract()
            raise KeyboardInterrupt
    assert {r.node: r.skip_reason for r in sink.skipped} == dict.fromkeys(
        ["clean", "enrich", "load", "report"], SKIP_ABORTED
    )
    (pipeline,) = sink.pipeline_runs
    assert pipeline.status is RunStatus.CANCELLED
    assert counts(pipeline) == {"planned": 5, "ran": 1, "skipped": 4, "failed": 0}


def test_explicit_skips_stops_and_unplanned_nodes() -> None:
    with capture_runs() as sink:
        run = oo.pipeline_run("sales", plan=["extract", "report"])
        with run:
            run.skip("archive", SKIP_NOT_SELECTED)
            run.skip("extract", "tired")  # not a reason: counted as invalid, ignored
            run.plan(["load"])
            run.stop(SKIP_FAIL_FAST)
            extract()
            with oo.node_run(node="unplanned"):
                pass
    assert {r.node: r.skip_reason for r in sink.skipped} == {
        "archive": SKIP_NOT_SELECTED,
        "report": SKIP_FAIL_FAST,
        "load": SKIP_FAIL_FAST,
    }
    (pipeline,) = sink.pipeline_runs
    assert pipeline.status is RunStatus.SUCCESS
    # Every node that ran counts as planned: planned = ran + skipped.
    assert counts(pipeline) == {"planned": 5, "ran": 2, "skipped": 3, "failed": 0}


def test_a_pipeline_run_without_a_plan_is_still_recorded() -> None:
    with capture_runs() as sink:
        with oo.pipeline_run("sales") as pipeline_run_id:
            extract()
    assert sink.skipped == []
    (pipeline,) = sink.pipeline_runs
    assert pipeline.run_id == pipeline_run_id and pipeline.status is RunStatus.SUCCESS
    assert counts(pipeline) == {"planned": 1, "ran": 1, "skipped": 0, "failed": 0}
    kinds = [e.kind for e in sink.events if e.kind is EventKind.PIPELINE]
    assert [e.record.status for e in sink.events if e.kind is EventKind.PIPELINE] == [
        RunStatus.RUNNING,
        RunStatus.SUCCESS,
    ]
    assert len(kinds) == 2


class NodeOnlySink(Sink):
    """A sink written for node runs: it declares no kinds."""

    name = "node-only"

    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    def export(self, events: list[RunEvent]) -> None:  # type: ignore[override]
        self.events.extend(events)


def test_a_sink_that_asks_for_no_kinds_never_sees_a_pipeline_runs_record(
    fresh_observer: Configure,
) -> None:
    sink = NodeOnlySink()
    memory = InMemorySink()
    fresh_observer(mode="inline", sinks=[sink, memory])
    with pytest.raises(ValueError):
        run_until_failure()
    assert {e.kind for e in sink.events} == {EventKind.STARTED, EventKind.FINISHED}
    assert len({e.record.node for e in sink.events}) == 5  # the skipped ones included
    assert len(memory.pipeline_runs) == 1


def test_skipped_runs_and_the_pipeline_run_reach_every_backend(
    fresh_observer: Configure, catalog_url: str, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    traces = tmp_path / "traces.jsonl"
    fresh_observer(
        mode="inline", catalog_url=catalog_url, traces_file=str(traces), registry=registry
    )
    with pytest.raises(ValueError):
        run_until_failure()
    assert oo.flush(timeout=30)
    store = CatalogStore(catalog_url)
    try:
        rows = {r.node: r for r in store.recent_runs(limit=10)}
        row = store.pipeline_run(rows["extract"].pipeline_run_id or "")
    finally:
        store.dispose()
    assert {n: (r.status, r.skip_reason) for n, r in rows.items()} == {
        "extract": (RunStatus.SUCCESS, None),
        "clean": (RunStatus.FAILURE, None),
        "enrich": (RunStatus.SKIPPED, SKIP_DEPENDENCY_FAILED),
        "load": (RunStatus.SKIPPED, SKIP_DEPENDENCY_FAILED),
        "report": (RunStatus.SKIPPED, SKIP_FAIL_FAST),
    }
    assert row is not None
    assert (row["status"], row["nodes_planned"], row["nodes_ran"]) == ("FAILURE", 5, 2)
    assert (row["nodes_skipped"], row["nodes_failed"]) == (3, 1)
    assert row["finished_at"] is not None and row["error_type"] == "ValueError"
    spans = read_spans(traces, strict=True)
    (pipeline_span,) = [s for s in spans if s.name == "RUN sales"]
    assert row["trace_id"] == pipeline_span.trace_id and row["span_id"] == pipeline_span.span_id
    assert pipeline_span.attributes[PIPELINE_COUNTS.skipped.attribute or ""] == 3
    assert pipeline_span.attributes[CICD_PIPELINE_RESULT] == "failure"
    node_spans = {s.attributes.get(FIELDS.node.attribute or ""): s for s in spans}
    report = node_spans["report"]
    assert report.attributes[SKIP_REASON_FIELD.attribute or ""] == SKIP_FAIL_FAST
    assert report.attributes[CICD_TASK_RUN_RESULT] == TASK_RUN_RESULTS[RunStatus.SKIPPED]
    assert report.attributes[CICD_TASK_RUN_RESULT] == "skip"
    assert report.parent_span_id == pipeline_span.span_id and report.events == []
    assert report.trace_id == node_spans["extract"].trace_id == pipeline_span.trace_id
    assert report.status_code == 0  # UNSET: neither an error nor a success

    def runs(status: RunStatus, node: str) -> float | None:
        return registry.get_sample_value(
            METRICS.runs.prometheus,
            {
                "project": "default",
                "pipeline": "sales",
                "node": node,
                "environment": "dev",
                "status": status.value,
            },
        )

    assert runs(RunStatus.SKIPPED, "report") == 1.0
    assert runs(RunStatus.SKIPPED, "extract") == 0.0
    # A run that never started observes no duration.
    assert registry.get_sample_value(
        METRICS.duration.prometheus + "_count",
        {"project": "default", "pipeline": "sales", "node": "report", "environment": "dev"},
    ) in (None, 0.0)


def test_migration_0007_adds_the_table_and_the_column_to_a_0005_catalog(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)

    def tables() -> set[str]:
        return set(sa.inspect(engine).get_table_names())

    def columns() -> set[str]:
        return {c["name"] for c in sa.inspect(engine).get_columns(CATALOG_TABLE)}

    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0005_error_stack")
        assert PIPELINE_RUNS_TABLE not in tables() and "skip_reason" not in columns()
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0007_pipeline_runs")
        assert PIPELINE_RUNS_TABLE in tables() and "skip_reason" in columns()
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0005_error_stack")
        assert PIPELINE_RUNS_TABLE not in tables() and "skip_reason" not in columns()
    finally:
        engine.dispose()


def test_a_skipped_record_survives_the_spool_encoding() -> None:
    record = RunRecord(
        run_id="r1",
        project="p",
        pipeline="sales",
        node="load",
        environment="dev",
        status=RunStatus.SKIPPED,
        started_ns=5,
        ended_ns=5,
        trace_id="0" * 31 + "1",
        span_id="0" * 15 + "1",
        host="h",
        pid=1,
        skip_reason=SKIP_FAIL_FAST,
    )
    event = RunEvent(EventKind.FINISHED, record)
    assert RunEvent.from_json(event.to_json()) == event
    pipeline = RunEvent(EventKind.PIPELINE, record.replace(node="", attributes={"planned": 3}))
    assert RunEvent.from_json(pipeline.to_json()) == pipeline


def test_skipped_runs_trip_no_data_health_finding(catalog_url: str) -> None:
    """Nodes that were skipped five times since their last success: neither a failure streak
    nor zero rows nor a duration outlier. The same runs as failures are a streak."""
    from odibi_observe.catalog import create_catalog_engine
    from odibi_observe.health import HealthOptions, detect
    from tests.health_history import HOUR, NOW_NS, Node, last_day, write

    def after_last_success(status: RunStatus) -> list[dict[str, object]]:
        return [
            {
                "started_ns": NOW_NS - HOUR + i * 60 * 1_000_000_000,
                "rows": 0,
                "duration_ms": 0.0,
                "status": status,
                "attempt": 1,
            }
            for i in range(5)
        ]

    write(
        catalog_url,
        [
            Node("ops", "skipped", extra=after_last_success(RunStatus.SKIPPED)),
            Node("ops", "failing", extra=after_last_success(RunStatus.FAILURE)),
        ],
    )
    engine = create_catalog_engine(catalog_url)
    try:
        result = detect(engine, last_day(), HealthOptions())
    finally:
        engine.dispose()
    assert {(f.kind, f.node) for f in result.findings} == {("failure_streak", "failing")}


def test_skipped_runs_neither_lower_the_status_pages_success_rate_nor_time_a_node(
    sqlite_url: str,
) -> None:
    from datetime import datetime, timedelta, timezone

    from odibi_observe.catalog import create_catalog_engine
    from odibi_observe.statuspage.model import collect
    from odibi_observe.testing.contracts import make_record
    from tests.test_reconcile_support import write_catalog

    skipped = [
        make_record(node="load", status=RunStatus.SKIPPED, rows=None, duration_ns=0)
        for _ in range(3)
    ]
    write_catalog(sqlite_url, [make_record(node="load"), *skipped]).dispose()
    engine = create_catalog_engine(sqlite_url)
    now = datetime.now(timezone.utc)
    try:
        page = collect(engine, now - timedelta(hours=1), now + timedelta(minutes=1), catalog="c")
    finally:
        engine.dispose()
    assert page.totals[RunStatus.SKIPPED.value] == 3
    assert page.success_rate == 1.0


def reconcile_report(catalog_url: str, traces: Path, out: Path, *extra: str) -> dict[str, Any]:
    """``odibi-observe reconcile`` of ``catalog_url`` against a trace file, its JSON report."""
    from odibi_observe.cli import main

    code = main(
        [
            *reconcile_argv(catalog_url, traces, out, *extra),
        ]
    )
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert code == (1 if report["summary"]["discrepancies_total"] else 0)
    return report


def test_a_pipeline_run_in_flight_is_no_discrepancy_until_it_goes_stale(
    fresh_observer: Configure, catalog_url: str, tmp_path: Path
) -> None:
    """A pipeline run still going has a ``RUNNING`` row and no ``RUN`` span yet (the span is
    exported when it ends): in flight, like a node run's ``RUNNING`` row; with no end after
    ``--crash-after`` (the process died) it is ``stale_running``, never ``missing_in_traces``."""
    traces = tmp_path / "traces.jsonl"
    fresh_observer(mode="inline", catalog_url=catalog_url, traces_file=str(traces))
    with oo.pipeline_run("sales", plan=["extract", "report"]) as pipeline_run_id:
        extract()
        assert oo.flush(timeout=30)
        in_flight = reconcile_report(catalog_url, traces, tmp_path / "in-flight")
        stale = reconcile_report(
            catalog_url, traces, tmp_path / "stale", "--crash-after", "0s", "--repair"
        )
    assert in_flight["summary"]["discrepancies_total"] == 0, in_flight["discrepancies"]
    (item,) = stale["discrepancies"]
    assert (item["kind"], item["run_id"]) == ("stale_running", pipeline_run_id)
    assert item["detail"].startswith("pipeline run: RUNNING with no RUN span since ")
    assert item["catalog"]["status"] == "RUNNING" and item["trace"] is None
    assert oo.flush(timeout=30)
    # Ended, and the repair above touched nothing: the row and its span agree.
    ended = reconcile_report(catalog_url, traces, tmp_path / "ended")
    assert ended["summary"]["discrepancies_total"] == 0, ended["discrepancies"]
