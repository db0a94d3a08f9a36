"""Every SQL panel query, run by PostgreSQL against a catalog a demo run filled.

The catalog is real: ``catalog upgrade`` creates it, the demo pipeline (a subprocess running
``odibi_observe.demo.run_pipeline`` with ``catalog_url`` pointing at the test database) writes
its runs, and the catalog sink writes two more runs the demo does not produce (one still
RUNNING, one CRASHED on its second attempt). The reconciler's output is stood in for by two
reports written with the schema's own tables, since this test does not run the reconciler.

Each query is the dashboard's ``rawSql`` with Grafana's macros and variables expanded the way
Grafana's PostgreSQL data source expands them (:mod:`odibi_observe.grafana.expand`); it must
run, return exactly the columns the panel declares (the trace-link overrides name them), and
show what the demo recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

# The SDK comes with the dev extra; without it these tests skip, except in CI.
if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("grafana_foundation_sdk")

from odibi_observe.catalog import schema, upgrade
from odibi_observe.conventions import DISCREPANCY_KINDS, RunStatus
from odibi_observe.grafana import expand
from odibi_observe.grafana.dashboards import build_dashboards
from odibi_observe.grafana.queries import SqlPanelQuery
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sinks.catalog import CatalogSink
from tests.helpers import make_record

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent

DEMO = r"""
import sys
import odibi_observe as oo
from prometheus_client import CollectorRegistry
from odibi_observe.demo import run_pipeline

oo.configure(project="demo", environment="local", catalog_url=sys.argv[1],
             registry=CollectorRegistry(), handle_sigterm=False, strict=True)
for _ in range(2):
    run_pipeline()
assert oo.flush(timeout=60)
oo.shutdown()
"""

#: The variables as a user would pick them: All on the overview, one node on the drill-down.
OVERVIEW_VARIABLES: dict[str, expand.Value] = {
    "project": ["demo"], "environment": ["local"], "pipeline": ["daily_sales"]}
NODE_VARIABLES: dict[str, expand.Value] = {
    "project": "demo", "environment": "local", "pipeline": "daily_sales",
    "node": "publish_report"}
VARIABLES: dict[str, dict[str, expand.Value]] = {
    "odibi-pipeline-overview": OVERVIEW_VARIABLES,
    "odibi-node-drilldown": NODE_VARIABLES,
    "odibi-reconciliation": {},
}


def fill_catalog(url: str) -> None:
    """A catalog holding two demo runs, a RUNNING run, a CRASHED retry and two reports."""
    upgrade(url)
    subprocess.run([sys.executable, "-c", DEMO, url], check=True, cwd=ROOT,
                   timeout=120, capture_output=True)
    identity: dict[str, Any] = dict(project="demo", environment="local", pipeline="daily_sales")
    running = make_record(status=RunStatus.RUNNING, node="ingest_orders", **identity)
    crashed = make_record(status=RunStatus.CRASHED, node="publish_report", attempt=2,
                          error_type="SIGTERM", error_message="terminated by signal 15",
                          rows=None, **identity)
    sink = CatalogSink(url)
    try:
        sink.export([RunEvent(EventKind.STARTED, running),
                     RunEvent(EventKind.FINISHED, crashed)])
    finally:
        sink.shutdown()
    engine = sa.create_engine(url)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        for age, missing in ((timedelta(hours=2), 0), (timedelta(minutes=5), 2)):
            report_id = str(uuid.uuid4())
            counts = dict.fromkeys(DISCREPANCY_KINDS, 0) | {"missing_in_catalog": missing}
            conn.execute(schema.reconciliation.insert().values(
                report_id=report_id, created_at=now - age, window_start=now - age - timedelta(
                    days=1), window_end=now - age, grace_seconds=300.0,
                catalog_source="postgresql://catalog", trace_sources="ledger",
                catalog_runs=12 - missing, trace_runs=12, matched=12 - missing,
                discrepancies=missing, discrepancies_json=json.dumps(counts),
                completeness_ratio=(12 - missing) / 12, repaired=0, errors=0))
            for item in range(missing):
                conn.execute(schema.reconciliation_items.insert().values(
                    report_id=report_id, item=item, kind="missing_in_catalog",
                    run_id=str(uuid.uuid4()), pipeline_name="daily_sales",
                    node_name="clean_orders", started_at=now - age,
                    trace_id=f"{item + 1:032x}", detail="span without a catalog row"))
    engine.dispose()


def sql_queries() -> Iterator[tuple[str, SqlPanelQuery]]:
    for built in build_dashboards():
        for query in built.sql:
            yield built.uid, query


def run_panel_query(conn: sa.Connection, uid: str, query: SqlPanelQuery,
                    variables: dict[str, Any] | None = None) -> tuple[list[str], list[Any]]:
    now = datetime.now(timezone.utc)
    text = expand.sql(query.sql, VARIABLES[uid] if variables is None else variables,
                      time_from=now - timedelta(hours=6), time_to=now + timedelta(minutes=1),
                      interval="1m")
    # The driver reads % as a placeholder even without parameters: %% is a literal %.
    result = conn.exec_driver_sql(text.replace("%", "%%"))
    return list(result.keys()), [tuple(row) for row in result]


@pytest.fixture(scope="module")
def filled_catalog(pg_server_url: str) -> Iterator[str]:
    """One demo-filled database for the module (the queries only read it)."""
    # Not "oo_test_*": a pytest run starting meanwhile drops those as leftovers.
    name = f"oo_grafana_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(pg_server_url).set(database=name).render_as_string(
        hide_password=False)
    try:
        fill_catalog(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def results(filled_catalog: str) -> dict[str, tuple[list[str], list[Any]]]:
    engine = sa.create_engine(filled_catalog)
    out = {}
    try:
        with engine.connect() as conn:
            for uid, query in sql_queries():
                out[query.key] = run_panel_query(conn, uid, query)
    finally:
        engine.dispose()
    return out


def test_every_sql_panel_runs_and_returns_its_declared_columns(
        results: dict[str, tuple[list[str], list[Any]]]) -> None:
    declared = {query.key: query for _, query in sql_queries()}
    assert set(results) == set(declared)
    assert len(results) >= 11
    for key, (columns, rows) in results.items():
        assert columns == list(declared[key].columns), key
        assert rows, f"{key} returned no rows"
        if declared[key].time_series:
            times = [row[0] for row in rows]
            assert times == sorted(times), f"{key} is not ordered by time"


def _rows(results: dict[str, tuple[list[str], list[Any]]], key: str) -> list[dict[str, Any]]:
    columns, rows = results[key]
    return [dict(zip(columns, row, strict=True)) for row in rows]


def test_overview_shows_failures_with_suggestions_and_what_runs(
        results: dict[str, tuple[list[str], list[Any]]]) -> None:
    failures = _rows(results, "recent_failures")
    by_node = {row["node"]: row for row in failures}
    assert set(by_node) == {"enrich_customers", "publish_report"}
    assert "customers.csv changed shape" in by_node["enrich_customers"]["suggestions"]
    assert "re-run with --node enrich_customers" in by_node["enrich_customers"]["suggestions"]
    assert all(len(row["trace_id"]) == 32 for row in failures)
    # The CRASHED retry is a failure too, newest first.
    assert failures[0]["status"] == "CRASHED" and failures[0]["attempt"] == 2
    running = _rows(results, "currently_running")
    assert [r["node"] for r in running] == ["ingest_orders"]
    assert running[0]["running_s"] >= 0
    slowest = _rows(results, "slowest_nodes")
    assert len(slowest) == 6
    assert all(r["runs"] >= 2 and r["max_ms"] >= r["p95_ms"] >= r["p50_ms"] for r in slowest)
    assert all(len(r["trace_id"]) == 32 for r in slowest)


def test_drilldown_shows_history_attempts_rows_and_errors(
        results: dict[str, tuple[list[str], list[Any]]]) -> None:
    history = _rows(results, "node_history")
    assert len(history) == 3  # two demo runs and the crashed retry
    assert {r["status"] for r in history} == {"FAILURE", "CRASHED"}
    attempts = {row["metric"] for row in _rows(results, "node_attempts")}
    assert attempts == {"attempt 1", "attempt 2"}
    assert sum(r["rows_total"] for r in _rows(results, "node_rows_trend")) == 80
    errors = {r["error_type"]: r for r in _rows(results, "node_error_types")}
    assert set(errors) == {"KeyboardInterrupt", "SIGTERM"}
    assert errors["KeyboardInterrupt"]["runs"] == 2


def test_reconciliation_panels_read_the_latest_report(
        results: dict[str, tuple[list[str], list[Any]]]) -> None:
    (last,) = _rows(results, "last_report")
    assert last["discrepancies"] == 2 and last["completeness_ratio"] == pytest.approx(10 / 12)
    items = _rows(results, "last_report_items")
    assert [i["kind"] for i in items] == ["missing_in_catalog"] * 2
    per_report = _rows(results, "discrepancies_per_report")
    assert [r["missing_in_catalog"] for r in per_report] == [0, 2]
    assert list(per_report[0])[1:] == list(DISCREPANCY_KINDS)


def test_drilldown_variable_values_are_escaped(filled_catalog: str) -> None:
    """A quote in a variable value stays a value (Grafana doubles it for SQL)."""
    engine = sa.create_engine(filled_catalog)
    hostile: dict[str, Sequence[str] | str] = dict(
        NODE_VARIABLES, node="x'; DROP TABLE meta_runs; --")
    try:
        with engine.connect() as conn:
            for uid, query in sql_queries():
                if uid == "odibi-node-drilldown":
                    _, rows = run_panel_query(conn, uid, query, hostile)
                    assert rows == []
            assert conn.exec_driver_sql("SELECT count(*) FROM meta_runs").scalar() == 14
    finally:
        engine.dispose()
