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
import statistics
import subprocess
import sys
import time
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
OVERVIEW_VARIABLES = {"project": ["demo"], "environment": ["local"], "pipeline": ["daily_sales"]}
NODE_VARIABLES = {
    "project": "demo",
    "environment": "local",
    "pipeline": "daily_sales",
    "node": "publish_report",
}
#: The data-health dashboard with All nodes of the demo pipeline (as Grafana expands All).
HEALTH_VARIABLES = {
    **OVERVIEW_VARIABLES,
    "node": [
        "ingest_orders",
        "clean_orders",
        "fetch_fx_rates",
        "enrich_customers",
        "aggregate_revenue",
        "publish_report",
    ],
}
VARIABLES: dict[str, dict[str, Any]] = {
    "odibi-pipeline-overview": OVERVIEW_VARIABLES,
    "odibi-data-health": HEALTH_VARIABLES,
    "odibi-node-drilldown": NODE_VARIABLES,
    "odibi-reconciliation": {},
}


HISTORY_RUNS = 8
HISTORY_PEAK = 512 * 1024 * 1024
HISTORY_LIMIT = 1024 * 1024 * 1024


def fill_catalog(url: str) -> None:
    """A catalog holding two demo runs, a RUNNING run, a CRASHED retry and two reports."""
    upgrade(url)
    subprocess.run(
        [sys.executable, "-c", DEMO, url], check=True, cwd=ROOT, timeout=120, capture_output=True
    )
    identity: dict[str, Any] = dict(project="demo", environment="local", pipeline="daily_sales")
    running = make_record(status=RunStatus.RUNNING, node="ingest_orders", **identity)
    crashed = make_record(
        status=RunStatus.CRASHED,
        node="publish_report",
        attempt=2,
        error_type="SIGTERM",
        error_message="terminated by signal 15",
        rows=None,
        # Killed after its write, before its checkpoint: an uncommitted write.
        writes=(
            {
                "target": "/lake/report",
                "rows": 12,
                "version": 3,
                "at": time.time_ns(),
                "awaits_checkpoint": True,
            },
        ),
        **identity,
    )
    # History for the data-health bands: 8 earlier SUCCESS runs of clean_orders (rows 90/110,
    # so the band is mean 100 ± 3 sd), each peaking at 512 MiB under a 1 GiB limit.
    start = datetime.now(timezone.utc) - timedelta(hours=5)
    history = [
        make_record(
            node="clean_orders",
            rows=90 if i % 2 else 110,
            started_ns=int((start + timedelta(minutes=5 * i)).timestamp() * 1e9),
            peak_rss_bytes=HISTORY_PEAK,
            memory_limit_bytes=HISTORY_LIMIT,
            project="demo",
            environment="local",
            pipeline="daily_sales",
        )
        for i in range(HISTORY_RUNS)
    ]
    sink = CatalogSink(url)
    try:
        sink.export(
            [
                RunEvent(EventKind.STARTED, running),
                RunEvent(EventKind.FINISHED, crashed),
                *(RunEvent(EventKind.FINISHED, r) for r in history),
            ]
        )
    finally:
        sink.shutdown()
    engine = sa.create_engine(url)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        for age, missing in ((timedelta(hours=2), 0), (timedelta(minutes=5), 2)):
            report_id = str(uuid.uuid4())
            counts = dict.fromkeys(DISCREPANCY_KINDS, 0) | {"missing_in_catalog": missing}
            conn.execute(
                schema.reconciliation.insert().values(
                    report_id=report_id,
                    created_at=now - age,
                    window_start=now - age - timedelta(days=1),
                    window_end=now - age,
                    grace_seconds=300.0,
                    catalog_source="postgresql://catalog",
                    trace_sources="ledger",
                    catalog_runs=12 - missing,
                    trace_runs=12,
                    matched=12 - missing,
                    discrepancies=missing,
                    discrepancies_json=json.dumps(counts),
                    completeness_ratio=(12 - missing) / 12,
                    repaired=0,
                    errors=0,
                )
            )
            for item in range(missing):
                conn.execute(
                    schema.reconciliation_items.insert().values(
                        report_id=report_id,
                        item=item,
                        kind="missing_in_catalog",
                        run_id=str(uuid.uuid4()),
                        pipeline_name="daily_sales",
                        node_name="clean_orders",
                        started_at=now - age,
                        trace_id=f"{item + 1:032x}",
                        detail="span without a catalog row",
                    )
                )
        # What a health pass recorded: one finding still open, one resolved.
        for state, kind in (("open", "volume_anomaly"), ("resolved", "freshness")):
            conn.execute(
                schema.health_findings.insert().values(
                    finding_id=str(uuid.uuid4()),
                    kind=kind,
                    pipeline_name="daily_sales",
                    node_name="clean_orders",
                    state=state,
                    opened_at=now - timedelta(days=1),
                    last_seen_at=now,
                    passes=2,
                    score=5.0,
                    baseline=100.0,
                    value=20.0,
                    detail=f"{kind} planted",
                )
            )
    engine.dispose()


def sql_queries() -> Iterator[tuple[str, SqlPanelQuery]]:
    for built in build_dashboards():
        for query in built.sql:
            yield built.uid, query


def run_panel_query(
    conn: sa.Connection, uid: str, query: SqlPanelQuery, variables: dict[str, Any] | None = None
) -> tuple[list[str], list[Any]]:
    now = datetime.now(timezone.utc)
    text = expand.sql(
        query.sql,
        VARIABLES[uid] if variables is None else variables,
        time_from=now - timedelta(hours=6),
        time_to=now + timedelta(minutes=1),
        interval="1m",
    )
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
    url = sa.engine.make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
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
    results: dict[str, tuple[list[str], list[Any]]],
) -> None:
    declared = {query.key: query for _, query in sql_queries()}
    assert set(results) == set(declared)
    assert len(results) >= 16
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
    results: dict[str, tuple[list[str], list[Any]]],
) -> None:
    failures = _rows(results, "recent_failures")
    by_node = {row["node"]: row for row in failures}
    assert set(by_node) == {"enrich_customers", "publish_report"}
    assert "customers.csv changed shape" in by_node["enrich_customers"]["suggestions"]
    assert "re-run with --node enrich_customers" in by_node["enrich_customers"]["suggestions"]
    assert all(len(row["trace_id"]) == 32 for row in failures)
    # The CRASHED retry is a failure too, newest first.
    assert failures[0]["status"] == "CRASHED" and failures[0]["attempt"] == 2
    uncommitted = _rows(results, "uncommitted_write_runs")
    assert [(r["node"], r["status"]) for r in uncommitted] == [("publish_report", "CRASHED")]
    assert json.loads(uncommitted[0]["writes_json"])[0]["rows"] == 12
    running = _rows(results, "currently_running")
    assert [r["node"] for r in running] == ["ingest_orders"]
    assert running[0]["running_s"] >= 0
    slowest = _rows(results, "slowest_nodes")
    assert len(slowest) == 6
    assert all(r["runs"] >= 2 and r["max_ms"] >= r["p95_ms"] >= r["p50_ms"] for r in slowest)
    assert all(len(r["trace_id"]) == 32 for r in slowest)


def test_drilldown_shows_history_attempts_rows_and_errors(
    results: dict[str, tuple[list[str], list[Any]]],
) -> None:
    history = _rows(results, "node_history")
    assert len(history) == 3  # two demo runs and the crashed retry
    assert {r["status"] for r in history} == {"CANCELLED", "CRASHED"}
    attempts = {row["metric"] for row in _rows(results, "node_attempts")}
    assert attempts == {"attempt 1", "attempt 2"}
    assert sum(r["rows_total"] for r in _rows(results, "node_rows_trend")) == 80
    errors = {r["error_type"]: r for r in _rows(results, "node_error_types")}
    # Error types of failures: the two cancellations (KeyboardInterrupt) are not failures.
    assert set(errors) == {"SIGTERM"}


def test_reconciliation_panels_read_the_latest_report(
    results: dict[str, tuple[list[str], list[Any]]],
) -> None:
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
        NODE_VARIABLES, node="x'; DROP TABLE meta_runs; --"
    )
    try:
        with engine.connect() as conn:
            for uid, query in sql_queries():
                if uid == "odibi-node-drilldown":
                    _, rows = run_panel_query(conn, uid, query, hostile)
                    assert rows == []
            assert (
                conn.exec_driver_sql("SELECT count(*) FROM meta_runs").scalar() == 14 + HISTORY_RUNS
            )
    finally:
        engine.dispose()


def test_data_health_panels_show_bands_findings_memory_and_crashes(
    results: dict[str, tuple[list[str], list[Any]]],
) -> None:
    (finding,) = _rows(results, "open_findings")
    assert finding["kind"] == "volume_anomaly" and finding["node"] == "clean_orders"
    band = _rows(results, "rows_band")
    lines: dict[str, list[Any]] = {}
    for row in band:
        lines.setdefault(row["metric"], []).append(row["reading"])
    key = "daily_sales/clean_orders"
    assert len(lines[f"{key} rows_processed"]) == HISTORY_RUNS + 2  # and the two demo runs
    # No band before 7 runs of history; after the 8 planted runs, mean 100 ± 3 x sd.
    highs = [v for v in lines[f"{key} band high"] if v is not None]
    lows = [v for v in lines[f"{key} band low"] if v is not None]
    assert len(highs) == len(lows) == 3  # the 8th planted run and the two demo runs
    sd = statistics.stdev([110, 90] * 3 + [110])  # the 7 runs before the 8th
    assert highs[0] == pytest.approx(statistics.mean([110, 90] * 3 + [110]) + 3 * sd)
    assert {m.rsplit(" ", 1)[0] for m in lines} >= {"daily_sales/ingest_orders", key}
    assert any(r["reading"] is not None for r in _rows(results, "duration_band"))
    fresh = {r["node"]: r for r in _rows(results, "freshness")}
    assert fresh["clean_orders"]["successes"] == HISTORY_RUNS + 2
    assert fresh["clean_orders"]["age_of_allowed"] < 1
    memory = {(r["metric"], r["reading"]) for r in _rows(results, "memory_per_run")}
    assert (f"{key} peak_rss_bytes", HISTORY_PEAK) in memory
    assert (f"{key} memory_limit_bytes", HISTORY_LIMIT) in memory
    (crash,) = _rows(results, "crash_causes")
    assert crash["node"] == "publish_report" and crash["error_type"] == "SIGTERM"
    assert crash["runs"] == 1 and len(crash["trace_id"]) == 32
