"""The plan of an Odibi pipeline run, against the real Odibi 3.15: the planned nodes that
never started are SKIPPED runs with their reason, and the pipeline run is a row of
``meta_pipeline_runs`` — in-process (SQLite) and through a real sidecar (PostgreSQL).

Projects are built in temp dirs from ``tests/odibi_projects/shop`` (see
``tests/test_odibi_integration.py``, whose builders this module reuses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe._otlp_json import SpanView, read_spans
from odibi_observe.catalog import CatalogStore
from odibi_observe.conventions import (
    CICD_TASK_RUN_RESULT,
    FIELDS,
    METRICS,
    PIPELINE_COUNTS,
    SKIP_ABORTED,
    SKIP_DEPENDENCY_FAILED,
    SKIP_FAIL_FAST,
    SKIP_NOT_SELECTED,
    SKIP_REASON_FIELD,
    RunStatus,
)
from odibi_observe.record import RunRecord

pytest.importorskip("odibi", reason="the Odibi integration needs the 'odibi' extra")
pytest.importorskip("deltalake", reason="reading Odibi's tables needs the 'odibi' extra")

from odibi_observe.integrations import odibi as observe_odibi
from tests.fault_helpers import Sidecar, parse_metrics
from tests.helpers import reconcile_argv, wait_until
from tests.test_odibi_integration import (
    INGEST,
    _cli_command,
    chdir,
    make_project,
    run_subprocess,
    sql_node,
    step_node,
)

NODE = FIELDS.node.attribute or ""
SKIP_REASON = SKIP_REASON_FIELD.attribute or ""

#: ingest → {bad, big} → {after_bad, after_big}: ``bad`` fails on every attempt.
FAIL_FAST_NODES = [
    INGEST,
    step_node("bad", "always_times_out"),
    sql_node("big", "SELECT * FROM df WHERE amount > 50"),
    sql_node("after_bad", "SELECT * FROM df", after="bad"),
    sql_node("after_big", "SELECT * FROM df", after="big"),
]


@dataclass
class PlanOutcome:
    project: Path
    results: Any  # Odibi's PipelineResults, or None when Pipeline.run raised
    error: BaseException | None
    pipeline_run_id: str
    catalog_url: str
    traces: Path
    registry: CollectorRegistry

    def records(self) -> dict[str, RunRecord]:
        store = CatalogStore(self.catalog_url)
        try:
            return {r.node: r for r in store.recent_runs(limit=100)}
        finally:
            store.dispose()

    def pipeline_row(self) -> dict[str, Any]:
        store = CatalogStore(self.catalog_url)
        try:
            row = store.pipeline_run(self.pipeline_run_id)
        finally:
            store.dispose()
        assert row is not None, f"no meta_pipeline_runs row for {self.pipeline_run_id}"
        return row

    def spans(self) -> list[SpanView]:
        return read_spans(self.traces, strict=True)

    def runs_counted(self, node: str, status: RunStatus) -> float | None:
        labels = {"project": "shop", "pipeline": "sales", "node": node, "environment": "test"}
        return self.registry.get_sample_value(
            METRICS.runs.prometheus, {**labels, "status": status.value}
        )


def run_project(project: Path, catalog_url: str | None = None, **run_kwargs: Any) -> PlanOutcome:
    """Run the project with PipelineManager, instrumented, into ``catalog_url`` (SQLite in
    the project by default) + OTLP-JSON; an exception out of the run is kept, not raised."""
    from odibi.pipeline import PipelineManager

    registry = CollectorRegistry()
    catalog_url = catalog_url or f"sqlite:///{project / 'catalog.db'}"
    traces = project / "traces.jsonl"
    oo.configure(
        catalog_url=catalog_url,
        traces_file=str(traces),
        registry=registry,
        environment="test",
        handle_sigterm=False,
        strict=True,
    )
    observe_odibi.instrument()
    results, error = None, None
    try:
        with chdir(project):
            manager = PipelineManager.from_yaml(str(project / "odibi.yaml"))
            try:
                results = manager.run(**run_kwargs)
            except BaseException as exc:  # KeyboardInterrupt included: the test asserts it
                error = exc
        assert oo.flush(timeout=30)
    finally:
        observe_odibi.uninstrument()
        oo.shutdown()
    pipeline_run_id = manager.get_pipeline("sales")._current_run_id
    return PlanOutcome(project, results, error, pipeline_run_id, catalog_url, traces, registry)


def statuses(records: dict[str, RunRecord]) -> dict[str, tuple[str, str | None]]:
    return {n: (r.status.value, r.skip_reason) for n, r in records.items()}


def counts_of(row: dict[str, Any]) -> dict[str, int]:
    return {f.key: row[f.column] for f in PIPELINE_COUNTS}


@pytest.fixture(scope="module")
def fail_fast(tmp_path_factory: pytest.TempPathFactory) -> PlanOutcome:
    project = make_project(tmp_path_factory.mktemp("odibi-fail-fast"), FAIL_FAST_NODES).parent
    return run_project(project, parallel=True, on_error="fail_fast")


def test_a_parallel_fail_fast_run_skips_the_nodes_that_never_started(
    fail_fast: PlanOutcome,
) -> None:
    # Odibi 3.15's parallel runner stops the executor at the failure, then cannot submit the
    # next layer: the RuntimeError leaves Pipeline.run unchanged.
    assert isinstance(fail_fast.error, RuntimeError)
    records = fail_fast.records()
    assert statuses(records) == {
        "ingest_orders": ("SUCCESS", None),
        "bad": ("FAILURE", None),
        "big": ("SUCCESS", None),
        "after_bad": ("SKIPPED", SKIP_DEPENDENCY_FAILED),
        "after_big": ("SKIPPED", SKIP_FAIL_FAST),
    }
    for name in ("after_bad", "after_big"):
        rec = records[name]
        assert rec.pipeline_run_id == fail_fast.pipeline_run_id  # Odibi's pipeline run id
        assert rec.duration_ms == 0 and rec.rows_processed is None and rec.error_type is None


def test_the_skipped_runs_have_spans_under_the_pipeline_span_and_are_counted(
    fail_fast: PlanOutcome,
) -> None:
    spans = fail_fast.spans()
    (pipeline,) = [s for s in spans if s.name == "RUN sales"]
    skipped = {s.attributes[NODE]: s for s in spans if SKIP_REASON in s.attributes}
    assert {n: s.attributes[SKIP_REASON] for n, s in skipped.items()} == {
        "after_bad": SKIP_DEPENDENCY_FAILED,
        "after_big": SKIP_FAIL_FAST,
    }
    for span in skipped.values():
        assert span.attributes[CICD_TASK_RUN_RESULT] == "skip"
        assert (span.trace_id, span.parent_span_id) == (pipeline.trace_id, pipeline.span_id)
    assert pipeline.attributes[PIPELINE_COUNTS.skipped.attribute or ""] == 2
    assert fail_fast.runs_counted("after_big", RunStatus.SKIPPED) == 1.0
    assert fail_fast.runs_counted("bad", RunStatus.FAILURE) == 1.0
    assert fail_fast.runs_counted("bad", RunStatus.SKIPPED) == 0.0


def test_the_pipeline_run_is_a_row_with_its_counts(fail_fast: PlanOutcome) -> None:
    row = fail_fast.pipeline_row()
    assert (row["status"], row["project"], row["pipeline_name"]) == ("FAILURE", "shop", "sales")
    assert counts_of(row) == {"planned": 5, "ran": 3, "skipped": 2, "failed": 1}
    assert row["error_type"] == "RuntimeError" and row["finished_at"] is not None
    (pipeline,) = [s for s in fail_fast.spans() if s.name == "RUN sales"]
    assert (row["trace_id"], row["span_id"]) == (pipeline.trace_id, pipeline.span_id)


def test_a_keyboard_interrupt_aborts_the_nodes_after_it(tmp_path: Path) -> None:
    nodes = [
        INGEST,
        step_node("publish", "interrupt"),
        sql_node("archive", "SELECT * FROM df", after="publish"),
        sql_node("summary", "SELECT COUNT(*) AS n FROM df"),
    ]
    outcome = run_project(make_project(tmp_path, nodes).parent)
    assert isinstance(outcome.error, KeyboardInterrupt)
    records = outcome.records()
    assert statuses(records)["publish"] == ("CANCELLED", None)
    assert statuses(records)["archive"] == (
        "SKIPPED",
        SKIP_ABORTED,
    )  # a cancellation, not a failure
    # summary is either run before the interrupt (serial order) or aborted with the rest.
    assert statuses(records)["summary"] in {("SUCCESS", None), ("SKIPPED", SKIP_ABORTED)}
    skipped_spans = {s.attributes[NODE]: s for s in outcome.spans() if SKIP_REASON in s.attributes}
    assert skipped_spans["archive"].attributes[SKIP_REASON] == SKIP_ABORTED
    assert outcome.runs_counted("archive", RunStatus.SKIPPED) == 1.0
    row = outcome.pipeline_row()
    assert row["status"] == "CANCELLED" and row["error_type"] == "KeyboardInterrupt"
    assert counts_of(row)["planned"] == 4 == counts_of(row)["ran"] + counts_of(row)["skipped"]


def test_an_exception_out_of_pipeline_run_aborts_every_planned_node(tmp_path: Path) -> None:
    outcome = run_project(make_project(tmp_path, FAIL_FAST_NODES).parent, node="no_such_node")
    assert isinstance(outcome.error, ValueError) and "no_such_node" in str(outcome.error)
    assert statuses(outcome.records()) == dict.fromkeys(
        [n["name"] for n in FAIL_FAST_NODES], ("SKIPPED", SKIP_ABORTED)
    )
    row = outcome.pipeline_row()
    assert row["status"] == "FAILURE" and row["error_type"] == "ValueError"
    assert counts_of(row) == {"planned": 5, "ran": 0, "skipped": 5, "failed": 0}


def test_nodes_left_out_by_a_node_selection_are_not_selected(tmp_path: Path) -> None:
    outcome = run_project(make_project(tmp_path, FAIL_FAST_NODES).parent, node="after_big")
    assert outcome.error is None and not outcome.results.failed
    assert statuses(outcome.records()) == {
        "ingest_orders": ("SUCCESS", None),
        "big": ("SUCCESS", None),
        "after_big": ("SUCCESS", None),
        "bad": ("SKIPPED", SKIP_NOT_SELECTED),
        "after_bad": ("SKIPPED", SKIP_NOT_SELECTED),
    }
    row = outcome.pipeline_row()
    assert row["status"] == "SUCCESS"
    assert counts_of(row) == {"planned": 5, "ran": 3, "skipped": 2, "failed": 0}
    assert {
        s.attributes[NODE]: s.attributes[SKIP_REASON]
        for s in outcome.spans()
        if SKIP_REASON in s.attributes
    } == dict.fromkeys(["bad", "after_bad"], SKIP_NOT_SELECTED)
    assert outcome.runs_counted("bad", RunStatus.SKIPPED) == 1.0


def test_a_good_run_shares_its_pipeline_run_id_with_odibis_own_table(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    nodes = [n for n in FAIL_FAST_NODES if n["name"] not in ("bad", "after_bad")]
    outcome = run_project(make_project(tmp_path, nodes).parent)
    assert outcome.error is None and not outcome.results.failed
    assert {r.status for r in outcome.records().values()} == {RunStatus.SUCCESS}
    row = outcome.pipeline_row()
    assert row["status"] == "SUCCESS"
    assert counts_of(row) == {"planned": 3, "ran": 3, "skipped": 0, "failed": 0}
    odibi = DeltaTable(str(tmp_path / "lake" / "_system" / "meta_pipeline_runs")).to_pandas()
    (theirs,) = odibi.to_dict("records")
    assert theirs["run_id"] == outcome.pipeline_run_id == row["pipeline_run_id"]
    assert theirs["nodes_succeeded"] == row["nodes_ran"]


def test_a_fail_fast_run_through_a_real_sidecar_into_postgresql(
    tmp_path: Path, pg_url: str
) -> None:
    """Sidecar mode: the SKIPPED runs and the pipeline run travel through the spool."""
    project = make_project(tmp_path / "project", FAIL_FAST_NODES).parent
    spool, traces = tmp_path / "spool", tmp_path / "traces.jsonl"
    sidecar = Sidecar(pg_url, spool, log=tmp_path / "sidecar.log", traces_file=traces).start()
    try:
        result = run_subprocess(
            [
                *_cli_command("odibi-observe"),
                "run",
                "odibi.yaml",
                "--parallel",
                "--on-error",
                "fail_fast",
            ],
            project,
            env={
                "ODIBI_OBSERVE_MODE": "sidecar",
                "ODIBI_OBSERVE_SPOOL_DIR": str(spool),
                "ODIBI_OBSERVE_ENVIRONMENT": "test",
            },
        )
        assert result.returncode != 0, result.stdout + result.stderr
        engine = sa.create_engine(pg_url)

        def rows() -> list[Any]:
            with engine.connect() as conn:
                return list(conn.execute(sa.text("SELECT * FROM meta_pipeline_runs")).mappings())

        def delivered() -> bool:
            try:
                found = rows()
            except sa.exc.ProgrammingError:  # the sidecar has not created the table yet
                return False
            return bool(found) and found[0]["status"] != "RUNNING"

        assert wait_until(delivered, timeout=60), (tmp_path / "sidecar.log").read_text()[-3000:]
        (row,) = rows()
        store = CatalogStore(pg_url)
        try:
            records = {r.node: r for r in store.recent_runs(limit=10)}
        finally:
            store.dispose()
            engine.dispose()
        assert statuses(records) == {
            "ingest_orders": ("SUCCESS", None),
            "bad": ("FAILURE", None),
            "big": ("SUCCESS", None),
            "after_bad": ("SKIPPED", SKIP_DEPENDENCY_FAILED),
            "after_big": ("SKIPPED", SKIP_FAIL_FAST),
        }
        assert row["status"] == "FAILURE"
        assert counts_of(dict(row)) == {"planned": 5, "ran": 3, "skipped": 2, "failed": 1}
        assert {r.pipeline_run_id for r in records.values()} == {row["pipeline_run_id"]}

        def counted() -> bool:
            key = (
                METRICS.runs.prometheus,
                tuple(
                    sorted(
                        {
                            "project": "shop",
                            "pipeline": "sales",
                            "node": "after_big",
                            "environment": "test",
                            "status": "SKIPPED",
                        }.items()
                    )
                ),
            )
            return parse_metrics(sidecar.get("/metrics")).get(key) == 1.0

        assert wait_until(counted, timeout=30)
        assert wait_until(
            lambda: (
                traces.exists()
                and any(s.attributes.get(SKIP_REASON) == SKIP_FAIL_FAST for s in read_spans(traces))
            ),
            timeout=30,
        )
    finally:
        sidecar.stop()


# -- reconciliation: the pipeline run against its RUN span ----------------------------------------


def reconcile(catalog_url: str, traces: Path, out: Path) -> tuple[int, dict[str, Any]]:
    """``odibi-observe reconcile`` of our catalog against a trace file; (exit code, report)."""
    result = run_subprocess(
        [
            *_cli_command("odibi-observe"),
            *reconcile_argv(catalog_url, traces, out),
        ],
        out.parent,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads((out / "report.json").read_text())


def test_reconciliation_of_a_fail_fast_run_is_clean(fail_fast: PlanOutcome, tmp_path: Path) -> None:
    code, report = reconcile(fail_fast.catalog_url, fail_fast.traces, tmp_path / "report")
    assert code == 0, report["summary"]
    assert report["summary"]["discrepancies_total"] == 0
    assert report["summary"]["matched"] == 5  # the SKIPPED runs too: a row and a span each


def test_reconciliation_reports_a_pipeline_run_whose_span_was_removed(
    fail_fast: PlanOutcome, tmp_path: Path
) -> None:
    from odibi_observe._otlp_json import decode_request_json, encode_request_json

    tampered = tmp_path / "traces.jsonl"
    with open(fail_fast.traces) as source, open(tampered, "w") as out:
        for line in source:
            request = decode_request_json(line)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    kept = [s for s in scope.spans if s.name != "RUN sales"]
                    del scope.spans[:]
                    scope.spans.extend(kept)
            out.write(encode_request_json(request) + "\n")
    code, report = reconcile(fail_fast.catalog_url, tampered, tmp_path / "report")
    assert code == 1
    assert report["summary"]["discrepancies"]["missing_in_traces"] == 1
    assert report["summary"]["discrepancies_total"] == 1
    (item,) = report["discrepancies"]
    assert item["run_id"] == fail_fast.pipeline_run_id and item["kind"] == "missing_in_traces"
    assert item["detail"] == "pipeline run: meta_pipeline_runs row has no RUN span"
    assert item["catalog"]["skipped"] == 2 and item["trace"] is None


def test_reconciliation_reports_counts_that_disagree(
    fail_fast: PlanOutcome, tmp_path: Path
) -> None:
    store = CatalogStore(fail_fast.catalog_url)
    copy = tmp_path / "catalog.db"
    copy.write_bytes((fail_fast.project / "catalog.db").read_bytes())
    store.dispose()
    url = f"sqlite:///{copy}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE meta_pipeline_runs SET nodes_skipped = 1, status = 'SUCCESS'"))
    engine.dispose()
    code, report = reconcile(url, fail_fast.traces, tmp_path / "report")
    assert code == 1
    kinds = {d["kind"]: d["detail"] for d in report["discrepancies"]}
    assert kinds == {
        "status_mismatch": "pipeline run: catalog SUCCESS, span FAILURE",
        "count_mismatch": "pipeline run: catalog vs span: skipped 1 vs 2",
    }


# -- the node's own on_error, a --tag selection, both catalogs ------------------------------------

#: ingest → {bad (on_error: fail_fast), big} → {after_bad, after_big}, run serially.
SERIAL_FAIL_FAST_NODES = [
    {**node, "on_error": "fail_fast"} if node["name"] == "bad" else node for node in FAIL_FAST_NODES
]


def test_a_nodes_own_fail_fast_stops_a_serial_run_in_either_catalog(
    tmp_path: Path, catalog_url: str
) -> None:
    outcome = run_project(make_project(tmp_path, SERIAL_FAIL_FAST_NODES).parent, catalog_url)
    # Odibi's serial runner breaks out of its loop: no exception, the failure in the results.
    assert outcome.error is None and outcome.results.failed == ["bad"]
    records = outcome.records()
    # Odibi's order is ingest_orders, bad, big, ...: the failure of bad stops the rest.
    assert statuses(records) == {
        "ingest_orders": ("SUCCESS", None),
        "bad": ("FAILURE", None),
        "big": ("SKIPPED", SKIP_FAIL_FAST),
        "after_bad": ("SKIPPED", SKIP_DEPENDENCY_FAILED),
        "after_big": ("SKIPPED", SKIP_FAIL_FAST),
    }
    row = outcome.pipeline_row()
    assert row["status"] == "FAILURE" and row["error_type"] is None
    assert row["pipeline_run_id"] == outcome.pipeline_run_id
    assert counts_of(row) == {"planned": 5, "ran": 2, "skipped": 3, "failed": 1}
    assert {r.pipeline_run_id for r in records.values()} == {outcome.pipeline_run_id}
    spans = {s.attributes.get(NODE): s for s in outcome.spans() if SKIP_REASON in s.attributes}
    assert {n: s.attributes[SKIP_REASON] for n, s in spans.items()} == {
        n: r.skip_reason for n, r in records.items() if r.skip_reason
    }
    for name in ("big", "after_bad", "after_big"):
        assert outcome.runs_counted(name, RunStatus.SKIPPED) == 1.0
    assert outcome.runs_counted("big", RunStatus.SUCCESS) == 0.0

    # Reconciled against its spans: clean; a count changed in the table is count_mismatch.
    code, report = reconcile(outcome.catalog_url, outcome.traces, tmp_path / "clean")
    assert (code, report["summary"]["discrepancies_total"]) == (0, 0), report["summary"]
    engine = sa.create_engine(outcome.catalog_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE meta_pipeline_runs SET nodes_planned = 9"))
    finally:
        engine.dispose()
    code, report = reconcile(outcome.catalog_url, outcome.traces, tmp_path / "changed")
    assert code == 1
    assert [(d["kind"], d["run_id"], d["detail"]) for d in report["discrepancies"]] == [
        ("count_mismatch", outcome.pipeline_run_id, "pipeline run: catalog vs span: planned 9 vs 5")
    ]


def test_nodes_left_out_by_a_tag_selection_are_not_selected(tmp_path: Path) -> None:
    tagged = {"ingest_orders", "big"}  # a tag selects no dependencies: Odibi runs only these
    nodes = [{**n, "tags": ["daily"]} if n["name"] in tagged else n for n in FAIL_FAST_NODES]
    outcome = run_project(make_project(tmp_path, nodes).parent, tag="daily")
    assert outcome.error is None and not outcome.results.failed
    assert statuses(outcome.records()) == {
        "ingest_orders": ("SUCCESS", None),
        "big": ("SUCCESS", None),
        "bad": ("SKIPPED", SKIP_NOT_SELECTED),
        "after_bad": ("SKIPPED", SKIP_NOT_SELECTED),
        "after_big": ("SKIPPED", SKIP_NOT_SELECTED),
    }
    row = outcome.pipeline_row()
    assert row["status"] == "SUCCESS"
    assert counts_of(row) == {"planned": 5, "ran": 2, "skipped": 3, "failed": 0}
    assert outcome.runs_counted("after_big", RunStatus.SKIPPED) == 1.0


# -- odibi-observe runs ---------------------------------------------------------------------------


def test_runs_shows_the_skipped_runs_with_their_reason(fail_fast: PlanOutcome) -> None:
    records = fail_fast.records()
    result = run_subprocess(
        [
            *_cli_command("odibi-observe"),
            "runs",
            "--catalog",
            fail_fast.catalog_url,
            "--status",
            "SKIPPED",
        ],
        fail_fast.project,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name, reason in (("after_bad", SKIP_DEPENDENCY_FAILED), ("after_big", SKIP_FAIL_FAST)):
        (row,) = [i for i, line in enumerate(lines) if records[name].run_id[:8] in line]
        assert f" {name} " in lines[row] and " SKIPPED " in lines[row]
        assert lines[row + 1] == f"    skipped: {reason}"
    assert lines[-1] == "2 runs"
    as_json = run_subprocess(
        [*_cli_command("odibi-observe"), "runs", "--catalog", fail_fast.catalog_url, "--json"],
        fail_fast.project,
    )
    assert as_json.returncode == 0, as_json.stderr
    reasons = {
        line[FIELDS.node.column]: (line[FIELDS.status.column], line[SKIP_REASON_FIELD.column])
        for line in map(json.loads, as_json.stdout.splitlines())
    }
    assert reasons == statuses(records)


def test_an_interrupted_selection_through_a_real_sidecar_reconciles_in_postgresql(
    tmp_path: Path, pg_url: str
) -> None:
    """Sidecar mode, ``--node archive`` and a Ctrl-C in ``publish``: what the selection left
    out is not_selected, what the interrupt kept from running aborted; the PostgreSQL
    catalog reconciles cleanly with the sidecar's spans until a count is changed."""
    nodes = [
        INGEST,
        sql_node("big", "SELECT * FROM df WHERE amount > 50"),
        step_node("publish", "interrupt", after="big"),
        sql_node("archive", "SELECT * FROM df", after="publish"),
        sql_node("summary", "SELECT COUNT(*) AS n FROM df"),
    ]
    project = make_project(tmp_path / "project", nodes).parent
    spool, traces = tmp_path / "spool", tmp_path / "traces.jsonl"
    sidecar = Sidecar(pg_url, spool, log=tmp_path / "sidecar.log", traces_file=traces).start()
    try:
        result = run_subprocess(
            [*_cli_command("odibi-observe"), "run", "odibi.yaml", "--node", "archive"],
            project,
            env={
                "ODIBI_OBSERVE_MODE": "sidecar",
                "ODIBI_OBSERVE_SPOOL_DIR": str(spool),
                "ODIBI_OBSERVE_ENVIRONMENT": "test",
            },
        )
        assert result.returncode == 130, result.stdout + result.stderr
        store = CatalogStore(pg_url)

        def pipeline_runs() -> list[dict[str, Any]]:
            try:
                with store.engine.connect() as conn:
                    found = conn.execute(sa.text("SELECT * FROM meta_pipeline_runs"))
                    return [dict(r) for r in found.mappings()]
            except sa.exc.ProgrammingError:  # the sidecar has not created the table yet
                return []

        def spans_of_the_run() -> int:
            if not traces.exists():
                return 0
            return sum(
                1 for s in read_spans(traces) if s.attributes.get(NODE) or s.name == "RUN sales"
            )

        try:
            assert wait_until(
                lambda: [r["status"] for r in pipeline_runs()] == ["CANCELLED"], timeout=60
            ), (tmp_path / "sidecar.log").read_text()[-3000:]
            assert wait_until(lambda: spans_of_the_run() >= 6, timeout=30)
            records = {r.node: r for r in store.recent_runs(limit=10)}
            (row,) = pipeline_runs()
        finally:
            store.dispose()
    finally:
        sidecar.stop()
    assert statuses(records) == {
        "ingest_orders": ("SUCCESS", None),
        "big": ("SUCCESS", None),
        "publish": ("CANCELLED", None),
        "archive": ("SKIPPED", SKIP_ABORTED),
        "summary": ("SKIPPED", SKIP_NOT_SELECTED),
    }
    assert row["error_type"] == "KeyboardInterrupt"
    assert counts_of(row) == {"planned": 5, "ran": 3, "skipped": 2, "failed": 0}
    assert {r.pipeline_run_id for r in records.values()} == {row["pipeline_run_id"]}

    code, report = reconcile(pg_url, traces, tmp_path / "clean")
    assert (code, report["summary"]["discrepancies_total"]) == (0, 0), report["summary"]
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE meta_pipeline_runs SET nodes_ran = 2"))
    finally:
        engine.dispose()
    code, report = reconcile(pg_url, traces, tmp_path / "changed")
    assert code == 1
    assert [(d["kind"], d["detail"]) for d in report["discrepancies"]] == [
        ("count_mismatch", "pipeline run: catalog vs span: ran 2 vs 3")
    ]
