"""The Odibi integration, against the real Odibi: projects built in a temp dir, run by Odibi.

Each scenario builds an Odibi project (YAML + the CSV and custom steps in
``tests/odibi_projects/shop``, pandas engine, Odibi's system catalog in Delta) and runs it
through Odibi's own runner — ``PipelineManager`` in this process, or ``odibi-observe run`` /
``odibi run`` in a subprocess — then compares what odibi-observe recorded with Odibi's own
``NodeResult`` and Delta ``meta_runs``. Importing Odibi takes about a second, so the runs are
module-scoped where a scenario is asserted on by several tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe import _runtime as runtime
from odibi_observe._otlp_json import SpanView, read_spans
from odibi_observe.catalog import CatalogStore
from odibi_observe.config import ConfigurationError
from odibi_observe.conventions import (
    CICD_PIPELINE_NAME,
    CICD_PIPELINE_RESULT,
    CICD_TASK_RUN_RESULT,
    CRASH_HEARTBEAT_LOST,
    ERROR_TYPE_ATTRIBUTE,
    FIELDS,
    METRICS,
    PIPELINE_SPAN_NAME_FORMAT,
    SKIP_ABORTED,
    SKIP_DEPENDENCY_FAILED,
    RunStatus,
)
from odibi_observe.record import RunRecord

pytest.importorskip("odibi", reason="the Odibi integration needs the 'odibi' extra")
pytest.importorskip("deltalake", reason="reading Odibi's meta_runs needs the 'odibi' extra")

from odibi_observe.integrations import odibi as observe_odibi
from odibi_observe.integrations.commands import absolute_sqlite_url
from tests.helpers import Configure, reconcile_argv

TEMPLATE = Path(__file__).parent / "odibi_projects" / "shop"
RUN_ID = FIELDS.run_id.attribute or ""
STATUS = FIELDS.status.attribute or ""
ROWS = FIELDS.rows.attribute or ""
PIPELINE_RUN_ID = FIELDS.pipeline_run_id.attribute or ""


# -- building and running projects ------------------------------------------------------------


def make_project(
    root: Path,
    nodes: list[dict[str, Any]],
    *,
    retry: dict[str, Any] | None = None,
    odibi_defaults: bool = False,
) -> Path:
    """An Odibi project in ``root``: one pipeline ``sales`` of ``nodes``; returns its YAML.

    ``odibi_defaults`` keeps Odibi's defaults for the system catalog and stories (background
    derived-table updates, a story per run) instead of the quieter settings tests use.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    shutil.copy(TEMPLATE / "orders.csv", root / "data" / "orders.csv")
    shutil.copy(TEMPLATE / "transforms.py", root / "transforms.py")
    config = {
        "project": "shop",
        "engine": "pandas",
        "connections": {
            "raw": {"type": "local", "base_path": str(root / "data")},
            "lake": {"type": "local", "base_path": str(root / "lake")},
        },
        "story": {"connection": "lake", "path": "stories", "auto_generate": False},
        # Odibi's own system catalog (Delta), including meta_runs. Derived tables are updated
        # synchronously: Odibi's background thread for them can outlive a short process.
        "system": {"connection": "lake", "path": "_system", "async_derived_updates": False},
        "retry": retry or {"enabled": False},
        "pipelines": [{"pipeline": "sales", "nodes": nodes}],
    }
    if odibi_defaults:
        config["story"] = {"connection": "lake", "path": "stories"}
        config["system"] = {"connection": "lake", "path": "_system"}
    path = root / "odibi.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


INGEST: dict[str, Any] = {
    "name": "ingest_orders",
    "read": {"connection": "raw", "format": "csv", "path": "orders.csv"},
    "write": {"connection": "lake", "format": "parquet", "path": "orders", "mode": "overwrite"},
}


def sql_node(name: str, sql: str, after: str = "ingest_orders") -> dict[str, Any]:
    return {"name": name, "depends_on": [after], "transform": {"steps": [{"sql": sql}]}}


def step_node(
    name: str, function: str, after: str = "ingest_orders", **params: Any
) -> dict[str, Any]:
    step: dict[str, Any] = {"function": function}
    if params:
        step["params"] = params
    return {"name": name, "depends_on": [after], "transform": {"steps": [step]}}


@contextmanager
def chdir(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@dataclass
class Outcome:
    """One pipeline run: Odibi's results and where odibi-observe recorded it."""

    project: Path
    results: Any  # Odibi's PipelineResults
    pipeline_run_id: str
    catalog_url: str
    traces: Path
    registry: CollectorRegistry

    def records(self) -> dict[str, RunRecord]:
        store = CatalogStore(self.catalog_url)
        try:
            records = store.recent_runs(limit=100)
        finally:
            store.dispose()
        by_node = {r.node: r for r in records}
        assert len(by_node) == len(records), "more than one record for a node"
        return by_node

    def spans(self) -> list[SpanView]:
        return read_spans(self.traces, strict=True)


def run_in_process(project: Path, **run_kwargs: Any) -> Outcome:
    """Run the project with PipelineManager, instrumented, into SQLite + OTLP-JSON."""
    from odibi.pipeline import PipelineManager

    registry = CollectorRegistry()
    catalog_url = f"sqlite:///{project / 'catalog.db'}"
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
    try:
        with chdir(project):
            manager = PipelineManager.from_yaml(str(project / "odibi.yaml"))
            results = manager.run(**run_kwargs)
        assert oo.flush(timeout=30)
    finally:
        observe_odibi.uninstrument()
        oo.shutdown()
    return Outcome(
        project,
        results,
        manager.get_pipeline("sales")._current_run_id,
        catalog_url,
        traces,
        registry,
    )


def odibi_meta_runs(project: Path) -> dict[str, dict[str, Any]]:
    """Odibi's own meta_runs rows (its Delta system catalog), by node."""
    from deltalake import DeltaTable

    frame = DeltaTable(str(project / "lake" / "_system" / "meta_runs")).to_pandas()
    rows = frame.to_dict("records")
    by_node = {row["node_name"]: row for row in rows}
    assert len(by_node) == len(rows)
    return by_node


def _cli_command(name: str) -> list[str]:
    exe = shutil.which(name, path=os.path.dirname(sys.executable))
    assert exe, f"{name} is not installed next to {sys.executable}"
    return [exe]


def run_subprocess(
    command: list[str], project: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ODIBI_OBSERVE_", "OTEL_"))}
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=project,
        env={**clean, **(env or {})},
    )


# -- a successful pipeline -----------------------------------------------------------------------

SUCCESS_NODES = [
    INGEST,
    sql_node("big_orders", "SELECT * FROM df WHERE amount > 50"),
    {
        **step_node("tag_orders", "add_tag", after="big_orders", tag="vip"),
        "write": {"connection": "lake", "format": "csv", "path": "tagged.csv", "mode": "overwrite"},
    },
    sql_node(
        "revenue_by_customer",
        "SELECT customer_id, SUM(amount) AS revenue FROM df GROUP BY customer_id",
    ),
]


@pytest.fixture(scope="module")
def success(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    project = make_project(tmp_path_factory.mktemp("odibi-success"), SUCCESS_NODES).parent
    outcome = run_in_process(project)
    assert not outcome.results.failed
    return outcome


def test_every_node_run_is_one_catalog_row_with_odibis_rows(success: Outcome) -> None:
    records = success.records()
    node_results = success.results.node_results
    assert set(records) == set(node_results) == {n["name"] for n in SUCCESS_NODES}
    for name, rec in records.items():
        result = node_results[name]
        assert rec.status is RunStatus.SUCCESS
        assert rec.rows_processed == result.rows_processed is not None
        assert rec.attributes.get("rows_read") == result.rows_read
        assert rec.attributes.get("rows_written") == result.rows_written
        assert (rec.project, rec.pipeline, rec.attempt) == ("shop", "sales", 1)
        assert rec.pipeline_run_id == success.pipeline_run_id  # Odibi's pipeline run id
    # The rows really are what the nodes did: 40 orders in, 14 above 50, 8 customers.
    assert [
        records[n].rows_processed
        for n in ("ingest_orders", "big_orders", "tag_orders", "revenue_by_customer")
    ] == [40, 14, 14, 8]
    assert records["ingest_orders"].attributes["rows_written"] == 40


def test_every_node_run_is_one_span_nested_in_odibis_node_execution_span(success: Outcome) -> None:
    records = success.records()
    spans = success.spans()
    ours = [s for s in spans if s.scope_name == "odibi_observe" and RUN_ID in s.attributes]
    odibis = {s.span_id: s for s in spans if s.name == "node_execution"}
    (pipeline,) = [s for s in spans if s.name == PIPELINE_SPAN_NAME_FORMAT.format(pipeline="sales")]
    assert sorted(s.name for s in ours) == sorted(f"node {name}" for name in records)
    assert len(odibis) == len(records)
    for span in ours:
        rec = records[span.attributes[FIELDS.node.attribute or ""]]
        assert (span.trace_id, span.span_id) == (rec.trace_id, rec.span_id)
        assert span.attributes[RUN_ID] == rec.run_id
        assert span.attributes[STATUS] == "SUCCESS"
        assert span.attributes[ROWS] == rec.rows_processed
        # Odibi's span is the parent: the row's (trace_id, parent_span_id) is Odibi's span.
        parent = odibis[span.parent_span_id or ""]
        assert (rec.trace_id, rec.parent_span_id) == (parent.trace_id, parent.span_id)
        assert parent.attributes["node.name"] == rec.node
        assert parent.parent_span_id == pipeline.span_id
        # ... and is left as Odibi made it: one span per run carries odibi.run_id.
        assert RUN_ID not in parent.attributes
    assert pipeline.attributes[PIPELINE_RUN_ID] == success.pipeline_run_id
    assert len({s.trace_id for s in spans}) == 1  # one trace per pipeline run


def test_odibis_own_meta_runs_agrees_with_ours(success: Outcome) -> None:
    records = success.records()
    theirs = odibi_meta_runs(success.project)
    assert set(theirs) == set(records)
    for name, rec in records.items():
        row = theirs[name]
        assert row["run_id"] == rec.run_id  # shared: Odibi's row carries our run id
        assert (row["status"], row["rows_processed"]) == (rec.status.value, rec.rows_processed)
        assert (row["project"], row["pipeline_name"]) == (rec.project, rec.pipeline)
        assert json.loads(row["metrics_json"])["attempts"] == rec.attempt
        # Both are Odibi's own measurement: to the microsecond the catalog keeps, and to the
        # millisecond in duration_ms (Odibi truncates it, the record rounds it).
        seconds = success.results.node_results[name].duration
        assert rec.duration_ns is not None and rec.duration_ms is not None
        assert abs(rec.duration_ns - seconds * 1e9) < 1_000
        assert row["duration_ms"] == int(seconds * 1000)
        assert rec.duration_ms - row["duration_ms"] in (0, 1)


def test_metrics_count_the_same_runs(success: Outcome) -> None:
    for rec in success.records().values():
        labels = dict(zip(METRICS.runs.labels, rec.label_values(METRICS.runs.labels), strict=True))
        assert success.registry.get_sample_value(METRICS.runs.prometheus, labels) == 1
        rows_labels = dict(
            zip(METRICS.rows.labels, rec.label_values(METRICS.rows.labels), strict=True)
        )
        assert (
            success.registry.get_sample_value(METRICS.rows.prometheus, rows_labels)
            == rec.rows_processed
        )


def test_a_parallel_run_nests_its_worker_threads_nodes_under_the_pipeline_span(
    tmp_path: Path,
) -> None:
    nodes = [INGEST, *(step_node(f"tag_{tag}", "add_tag", tag=tag) for tag in ("a", "b", "c"))]
    outcome = run_in_process(make_project(tmp_path, nodes).parent, parallel=True, max_workers=3)
    records = outcome.records()
    # (Not asserted: that every node succeeds. Odibi 3.15.1's parallel mode can fail a node on
    # its own — concurrent nodes share one context — and then the record says FAILURE.)
    assert set(records) == {n["name"] for n in nodes}
    assert {n: r.status.value for n, r in records.items()} == {
        n: "SUCCESS" if r.success else "FAILURE" for n, r in outcome.results.node_results.items()
    }
    spans = outcome.spans()
    (pipeline,) = [s for s in spans if s.name == PIPELINE_SPAN_NAME_FORMAT.format(pipeline="sales")]
    odibis = [s for s in spans if s.name == "node_execution"]
    assert len(odibis) == len(records)
    assert {s.parent_span_id for s in odibis} == {pipeline.span_id}
    assert {r.trace_id for r in records.values()} == {pipeline.trace_id}


# -- a node failing in its transform ---------------------------------------------------------------


@pytest.fixture(scope="module")
def failure(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    nodes = [
        INGEST,
        sql_node(
            "revenue", "SELECT customer_id, SUM(amount_usd) AS revenue FROM df GROUP BY customer_id"
        ),
        sql_node(
            "top_customers", "SELECT * FROM df ORDER BY revenue DESC LIMIT 3", after="revenue"
        ),
    ]
    return run_in_process(make_project(tmp_path_factory.mktemp("odibi-failure"), nodes).parent)


def test_a_failing_transform_is_a_failure_with_odibis_suggestions(failure: Outcome) -> None:
    records = failure.records()
    error = failure.results.node_results["revenue"].error
    assert type(error).__name__ == "NodeExecutionError" and error.suggestions
    # top_customers never ran: Odibi skipped it, and it is recorded as such.
    assert set(records) == {"ingest_orders", "revenue", "top_customers"}
    assert records["top_customers"].status is RunStatus.SKIPPED
    assert records["top_customers"].skip_reason == SKIP_DEPENDENCY_FAILED
    assert records["ingest_orders"].status is RunStatus.SUCCESS
    rec = records["revenue"]
    assert rec.status is RunStatus.FAILURE
    assert rec.rows_processed is None
    assert rec.error_type == "odibi.exceptions.NodeExecutionError"
    assert rec.suggestions == tuple(error.suggestions)
    assert rec.error_message is not None
    headline, _, report = rec.error_message.partition("\n")
    assert headline.startswith(f"{type(error.original_error).__name__}: ")
    assert "amount_usd" in headline
    assert report.startswith("[X] Node execution failed: revenue")  # Odibi's own report
    theirs = odibi_meta_runs(failure.project)
    assert set(theirs) == set(records) - {"top_customers"}  # Odibi has no row for a skip
    assert theirs["revenue"]["status"] == "FAILURE"
    assert theirs["revenue"]["run_id"] == rec.run_id
    assert theirs["revenue"]["rows_processed"] == 0  # Odibi writes 0 for unknown; we keep NULL


def test_runs_prints_the_failure_with_its_suggestions(
    failure: Outcome, capsys: pytest.CaptureFixture[str]
) -> None:
    from odibi_observe.cli import main

    assert main(["runs", "--catalog", failure.catalog_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    rec = failure.records()["revenue"]
    (row,) = [i for i, line in enumerate(lines) if rec.run_id[:8] in line]  # the short id
    assert " FAILURE " in lines[row]
    headline = (rec.error_message or "").splitlines()[0]
    assert lines[row + 1] == f"    error: odibi.exceptions.NodeExecutionError: {headline}"
    assert lines[row + 2 : row + 2 + len(rec.suggestions)] == [
        f"    suggestion: {text}" for text in rec.suggestions
    ]


# -- a catastrophic failure: KeyboardInterrupt from a custom step --------------------------------


@pytest.fixture(scope="module")
def interrupted(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, str, subprocess.CompletedProcess[str]]:
    nodes = [
        INGEST,
        sql_node("big_orders", "SELECT * FROM df WHERE amount > 50"),
        step_node("publish", "interrupt", after="big_orders"),
        sql_node("after_publish", "SELECT COUNT(*) AS n FROM df", after="publish"),
    ]
    project = make_project(tmp_path_factory.mktemp("odibi-interrupt"), nodes).parent
    result = run_subprocess(
        [
            *_cli_command("odibi-observe"),
            "run",
            "--catalog",
            "sqlite:///catalog.db",
            "--traces-file",
            "traces.jsonl",
            "odibi.yaml",
            "--pipeline",
            "sales",
        ],
        project,
    )
    return project, f"sqlite:///{project / 'catalog.db'}", result


def test_keyboard_interrupt_in_a_step_still_records_every_node_run(
    interrupted: tuple[Path, str, subprocess.CompletedProcess[str]],
) -> None:
    project, catalog_url, result = interrupted
    assert result.returncode == 130, result.stdout[-2000:] + result.stderr[-2000:]
    assert (
        "odibi-observe: recorded 4 node runs (1 CANCELLED, 1 SKIPPED, 2 SUCCESS)" in result.stderr
    )
    store = CatalogStore(catalog_url)  # relative to the directory the command ran in
    try:
        records = {r.node: r for r in store.recent_runs(limit=10)}
    finally:
        store.dispose()
    assert {n: r.status for n, r in records.items()} == {
        "ingest_orders": RunStatus.SUCCESS,
        "big_orders": RunStatus.SUCCESS,
        "publish": RunStatus.CANCELLED,
        "after_publish": RunStatus.SKIPPED,  # planned, never started: the run was aborted
    }
    assert records["after_publish"].skip_reason == SKIP_ABORTED
    assert records["publish"].error_type == "KeyboardInterrupt"
    assert records["publish"].error_message == "operator pressed Ctrl-C while publishing"
    assert records["big_orders"].rows_processed == 14
    # Odibi itself wrote no meta_runs row for any node of the pipeline.
    assert odibi_meta_runs(project) == {}
    spans = {
        s.attributes.get(RUN_ID): s
        for s in read_spans(project / "traces.jsonl")
        if s.scope_name == "odibi_observe" and RUN_ID in s.attributes
    }
    assert set(spans) == {r.run_id for r in records.values()}
    # A cancellation: the exception event and error.type, but not an ERROR status.
    publish = spans[records["publish"].run_id]
    assert publish.status_code == 0  # UNSET
    assert publish.attributes[ERROR_TYPE_ATTRIBUTE] == "KeyboardInterrupt"
    assert publish.attributes[CICD_TASK_RUN_RESULT] == "cancellation"
    (pipeline,) = [
        s
        for s in read_spans(project / "traces.jsonl")
        if s.name == PIPELINE_SPAN_NAME_FORMAT.format(pipeline="sales")
    ]
    assert pipeline.kind == 2  # SERVER
    assert pipeline.attributes[CICD_PIPELINE_RESULT] == "cancellation"
    assert pipeline.attributes[CICD_PIPELINE_NAME] == "sales"
    assert pipeline.attributes[ERROR_TYPE_ATTRIBUTE] == "KeyboardInterrupt"


def test_runs_shows_the_interrupted_node(
    interrupted: tuple[Path, str, subprocess.CompletedProcess[str]],
) -> None:
    project, catalog_url, _ = interrupted
    result = run_subprocess(
        [*_cli_command("odibi-observe"), "runs", "--catalog", catalog_url, "--status", "CANCELLED"],
        project,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    (row,) = [i for i, line in enumerate(lines) if " CANCELLED " in line]
    assert " publish " in lines[row]
    assert (
        lines[row + 1] == "    error: KeyboardInterrupt: operator pressed Ctrl-C while publishing"
    )
    assert lines[-1] == "1 run"


def test_odibi_observe_run_exits_with_odibis_status_after_odibis_background_work(
    tmp_path: Path,
) -> None:
    """With Odibi's defaults a daemon thread is still updating Odibi's catalog when the run
    returns; exiting under it aborts the interpreter. ``odibi-observe run`` waits for it."""
    project = make_project(
        tmp_path, [INGEST, step_node("tag_orders", "add_tag", tag="x")], odibi_defaults=True
    ).parent
    result = run_subprocess(
        [*_cli_command("odibi-observe"), "run", "--catalog", "sqlite:///catalog.db", "odibi.yaml"],
        project,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "odibi-observe: recorded 2 node runs (2 SUCCESS)" in result.stderr
    assert set(odibi_meta_runs(project)) == {"ingest_orders", "tag_orders"}


# -- retries --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retried(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    root = tmp_path_factory.mktemp("odibi-retry")
    nodes = [
        INGEST,
        step_node("load_warehouse", "flaky_once", marker=str(root / "failed-once")),
        step_node("call_api", "always_times_out"),
    ]
    retry = {"enabled": True, "max_attempts": 2, "backoff": "constant"}  # 1 s between tries
    return run_in_process(make_project(root, nodes, retry=retry).parent)


def test_a_retried_node_is_one_run_with_its_attempts(retried: Outcome) -> None:
    records = retried.records()
    theirs = odibi_meta_runs(retried.project)
    assert set(records) == set(theirs) == {"ingest_orders", "load_warehouse", "call_api"}

    flaky = records["load_warehouse"]  # failed once, then succeeded
    assert (flaky.status, flaky.attempt, flaky.rows_processed) == (RunStatus.SUCCESS, 2, 40)
    retry_errors = flaky.attributes["retry_errors"]
    assert isinstance(retry_errors, tuple)
    (earlier,) = retry_errors
    assert earlier == (
        "attempt 1: NodeExecutionError: ConnectionError: warehouse connection reset by peer"
    )

    doomed = records["call_api"]  # failed on both attempts
    assert (doomed.status, doomed.attempt) == (RunStatus.FAILURE, 2)
    assert (doomed.error_message or "").startswith(
        "TimeoutError: upstream API did not answer within 30 s\n"
    )
    assert doomed.attributes["retry_errors"] == (
        "attempt 1: NodeExecutionError: TimeoutError: upstream API did not answer within 30 s",
    )

    assert records["ingest_orders"].attempt == 1
    for name, rec in records.items():
        row = theirs[name]
        assert row["run_id"] == rec.run_id
        assert row["status"] == rec.status.value
        assert json.loads(row["metrics_json"])["attempts"] == rec.attempt


# -- reconciliation against Odibi's own catalog ----------------------------------------------------


def reconcile_with_odibi(project: Path, traces: Path, out: Path) -> tuple[int, dict[str, Any]]:
    """``odibi-observe reconcile`` of Odibi's Delta meta_runs against our trace file."""
    result = run_subprocess(
        [
            *_cli_command("odibi-observe"),
            *reconcile_argv(
                f"odibi-delta:{project / 'lake' / '_system' / 'meta_runs'}", traces, out
            ),
        ],
        project,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads((out / "report.json").read_text())["summary"]


def test_odibis_meta_runs_reconciles_cleanly_with_our_traces(
    success: Outcome, tmp_path: Path
) -> None:
    code, summary = reconcile_with_odibi(success.project, success.traces, tmp_path)
    assert code == 0
    assert summary["catalog_runs"] == summary["trace_runs"] == summary["matched"] == 4
    assert summary["discrepancies_total"] == 0  # same run_id, status, rows and duration


def test_reconciliation_shows_what_odibi_lost_to_the_interrupt(
    interrupted: tuple[Path, str, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    project, _, _ = interrupted
    code, summary = reconcile_with_odibi(project, project / "traces.jsonl", tmp_path)
    assert code == 1
    # The SKIPPED run of the node the interrupt kept from running has a span only, as it
    # should with Odibi's catalog (which records no skips): it is no discrepancy.
    assert (summary["catalog_runs"], summary["trace_runs"], summary["matched"]) == (0, 3, 0)
    assert summary["discrepancies"]["missing_in_catalog"] == 3
    assert summary["discrepancies_total"] == 3


# -- activation -----------------------------------------------------------------------------------


def test_odibi_run_is_instrumented_through_odibis_plugin_discovery(tmp_path: Path) -> None:
    """``ODIBI_OBSERVE_INSTRUMENT=1 odibi run`` — plain Odibi, found through its entry points."""
    project = make_project(
        tmp_path / "project", [INGEST, sql_node("big_orders", "SELECT * FROM df WHERE amount > 50")]
    ).parent
    # The entry point odibi-observe declares, in a distribution of its own on PYTHONPATH.
    dist = tmp_path / "site" / "odibi_observe_entry_point-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: odibi-observe-entry-point\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[odibi.connections]\n"
        "odibi_observe = odibi_observe.integrations.odibi_plugin:connection_factory\n"
    )
    env = {
        # The entry point's distribution first, then this checkout (as for every child).
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")])
        ),
        "ODIBI_OBSERVE_INSTRUMENT": "1",
        "ODIBI_OBSERVE_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
    }
    result = run_subprocess([*_cli_command("odibi"), "run", "odibi.yaml"], project, env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    store = CatalogStore(env["ODIBI_OBSERVE_CATALOG_URL"])
    try:
        records = {r.node: r for r in store.recent_runs(limit=10)}
    finally:
        store.dispose()
    assert {n: (r.status, r.rows_processed) for n, r in records.items()} == {
        "ingest_orders": (RunStatus.SUCCESS, 40),
        "big_orders": (RunStatus.SUCCESS, 14),
    }
    theirs = odibi_meta_runs(project)
    assert {n: r["run_id"] for n, r in theirs.items()} == {n: r.run_id for n, r in records.items()}


def test_the_plugin_is_not_a_connection_type() -> None:
    from odibi_observe.integrations.odibi_plugin import connection_factory

    with pytest.raises(ConfigurationError, match="not a connection type"):
        connection_factory("warehouse", {"type": "odibi_observe"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", False), ("0", False), ("off", False), ("maybe", False), ("1", True), ("TRUE", True)],
)
def test_the_environment_variable_decides(
    value: str, expected: bool, fresh_observer: Configure
) -> None:
    try:
        assert (
            observe_odibi.instrument_from_environment({observe_odibi.ENV_INSTRUMENT: value})
            is expected
        )
        assert observe_odibi.is_instrumented() is expected
        # Instrumented from the environment, it is configured from it too, at once.
        assert (runtime.current_observer() is not None) is expected
    finally:
        observe_odibi.uninstrument()


def test_instrument_is_idempotent_and_uninstrument_restores_odibi() -> None:
    from odibi.engine.pandas_engine import PandasEngine
    from odibi.engine.polars_engine import PolarsEngine
    from odibi.node import Node, NodeExecutor
    from odibi.pipeline import Pipeline
    from odibi.state import StateManager

    methods: list[tuple[Any, str]] = [
        (Node, "execute"),
        (Node, "_execute_with_retries"),
        (NodeExecutor, "execute"),
        (Pipeline, "run"),
        (StateManager, "set_hwm"),
        (PandasEngine, "write"),
        (PolarsEngine, "write"),
    ]
    before = [vars(owner)[name] for owner, name in methods]
    observe_odibi.instrument()
    wrapped = [vars(owner)[name] for owner, name in methods]
    observe_odibi.instrument()
    try:
        assert [vars(owner)[name] for owner, name in methods] == wrapped
        assert all(w is not b and w.__wrapped__ is b for w, b in zip(wrapped, before, strict=True))
    finally:
        observe_odibi.uninstrument()
    assert [vars(owner)[name] for owner, name in methods] == before
    assert not observe_odibi.is_instrumented()


@pytest.mark.parametrize("version", ["3.16.0", "3.14.9", "4.0.0", "dev"])
def test_unsupported_odibi_versions_are_refused_before_anything_changes(
    version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from odibi.node import Node

    before = vars(Node)["execute"]
    monkeypatch.setattr(observe_odibi, "odibi_version", lambda: version)
    with pytest.raises(observe_odibi.UnsupportedOdibiVersion) as info:
        observe_odibi.instrument()
    assert f"Odibi {version} is installed" in str(info.value)
    assert "odibi>=3.15,<3.16" in str(info.value)
    assert vars(Node)["execute"] is before
    assert observe_odibi.check_version("3.15.1") == "3.15.1"


def test_odibi_observe_run_refuses_an_unsupported_odibi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from odibi_observe.cli import main

    config = tmp_path / "odibi.yaml"
    config.write_text("project: x\n")
    monkeypatch.setattr(observe_odibi, "odibi_version", lambda: "3.16.2")
    assert main(["run", str(config)]) == 2
    assert "Odibi 3.16.2 is installed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "absolute"),
    [
        ("sqlite:///catalog.db", True),
        ("sqlite:////var/catalog.db", False),
        ("sqlite://", False),
        ("sqlite:///:memory:", False),
        ("postgresql://etl:pw@db/catalog", False),
    ],
)
def test_relative_sqlite_paths_are_fixed_before_odibi_changes_directory(
    url: str, absolute: bool, tmp_path: Path
) -> None:
    with chdir(tmp_path):
        expected = f"sqlite:///{tmp_path / 'catalog.db'}" if absolute else url
        assert absolute_sqlite_url(url) == expected


def test_a_frameworks_own_duration_replaces_the_measured_one() -> None:
    """``NodeRun.set_duration``, which carries Odibi's ``NodeResult.duration`` into the run."""
    from odibi_observe.testing import capture_runs

    with capture_runs() as runs:
        with oo.node_run("p", "timed") as run:
            run.set_duration(0.25)
        for bad in (float("nan"), -1, "soon"):
            with oo.node_run("p", f"bad {bad}") as run:
                run.set_duration(bad)
    (timed,) = runs.by_node("timed")
    assert timed.duration_ns == 250_000_000
    assert timed.ended_ns == timed.started_ns + 250_000_000
    for rec in runs.finished:
        if rec.node != "timed":
            assert rec.duration_ns is not None and rec.duration_ns < 250_000_000  # measured


# -- SIGKILL mid-node, with the sidecar's spool and sweep -----------------------------------------


def test_an_odibi_pipeline_killed_mid_node_ends_crashed_in_catalog_and_traces(
    tmp_path: Path,
) -> None:
    """The OOM killer's view of an Odibi run: SIGKILL while a node runs, no handler runs.

    The pipeline runs in ``mode="sidecar"``: every event is in the spool before Odibi moves
    on, so the finished nodes are delivered and the killed one is closed as CRASHED, with a
    back-dated span, by ``odibi-observe sweep`` (one pass of what the sidecar does).
    """
    marker = tmp_path / "hang-started"
    nodes = [
        INGEST,
        sql_node("big_orders", "SELECT * FROM df WHERE amount > 50"),
        step_node("publish", "hang", after="big_orders", marker=str(marker)),
    ]
    project = make_project(tmp_path / "project", nodes).parent
    spool, catalog, traces = (
        tmp_path / "spool",
        f"sqlite:///{tmp_path / 'catalog.db'}",
        tmp_path / "traces.jsonl",
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ODIBI_OBSERVE_", "OTEL_"))}
    pipeline = subprocess.Popen(
        [*_cli_command("odibi-observe"), "run", "odibi.yaml", "--pipeline", "sales"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**clean, "ODIBI_OBSERVE_MODE": "sidecar", "ODIBI_OBSERVE_SPOOL_DIR": str(spool)},
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert pipeline.poll() is None, pipeline.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the hanging step never started"
            time.sleep(0.05)
        pipeline.send_signal(signal.SIGKILL)
    finally:
        pipeline.wait(30)
        pipeline.stderr.close()  # type: ignore[union-attr]
    assert pipeline.returncode == -signal.SIGKILL

    sweep = run_subprocess(
        [*_cli_command("odibi-observe"), "sweep", "--catalog", catalog, "--spool-dir", str(spool)],
        tmp_path,
        env={"ODIBI_OBSERVE_TRACES_FILE": str(traces)},
    )
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    store = CatalogStore(catalog)
    try:
        records = {r.node: r for r in store.recent_runs(limit=10)}
    finally:
        store.dispose()
    assert {n: r.status for n, r in records.items()} == {
        "ingest_orders": RunStatus.SUCCESS,
        "big_orders": RunStatus.SUCCESS,
        "publish": RunStatus.CRASHED,
    }
    assert records["big_orders"].rows_processed == 14
    crashed = records["publish"]
    # Reaped before the sweep: its SIGKILL status is no longer visible.
    assert crashed.error_type == CRASH_HEARTBEAT_LOST and crashed.pid == pipeline.pid
    (span,) = [s for s in read_spans(traces) if s.attributes.get(RUN_ID) == crashed.run_id]
    assert (span.trace_id, span.span_id) == (crashed.trace_id, crashed.span_id)
    assert span.start_ns // 1000 == crashed.started_ns // 1000  # back-dated to the real start
    assert span.attributes[STATUS] == "CRASHED" and span.status_code == 2
