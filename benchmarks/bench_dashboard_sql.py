"""Every SQL panel query of the dashboards against a 10-million-run ``meta_runs``.

Creates a PostgreSQL database with the catalog schema (``catalog upgrade``: the same tables
and indexes a deployment has), fills ``meta_runs`` with ``INSERT ... SELECT generate_series``
(default: 10 000 000 runs spread over 60 days, 1 000 nodes in 50 pipelines of 5 projects and
2 environments; 2 % FAILURE, 0.5 % CRASHED, 1 % retries, 20 runs still RUNNING) plus 60 nightly
reconciliation reports, then runs every SQL panel query with Grafana's macros and variables
expanded for the dashboard's default time range (and wider ones), the overview with "All"
selected (every project, environment and pipeline in the IN lists, as Grafana sends them).

Each query is timed with ``EXPLAIN (ANALYZE, BUFFERS)``: the median of 5 runs after one
warm-up, and the indexes the plan uses; the connection has the settings the deployment gives
Grafana's read-only role (``work_mem``, from deploy/postgres/initdb.d/sql/grafana-readonly.sql)
and no parallel workers. It fails (exit 1) when a query at the dashboard's
default range takes more than the budget or reads ``meta_runs`` without an index.

    python benchmarks/bench_dashboard_sql.py [--pg URL] [--rows 10000000] [--keep] [--reuse]

``--pg`` defaults to ``$ODIBI_OBSERVE_TEST_PG_URL``; the database is ``oo_bench_dashboards``
on that server, dropped at the end unless ``--keep`` (``--reuse`` then skips the load).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from odibi_observe.catalog import schema, upgrade
from odibi_observe.conventions import CATALOG_TABLE, DISCREPANCY_KINDS
from odibi_observe.grafana import expand
from odibi_observe.grafana.dashboards import build_dashboards

DATABASE = "oo_bench_dashboards"
READONLY_SQL = (
    Path(__file__).resolve().parent.parent
    / "deploy"
    / "postgres"
    / "initdb.d"
    / "sql"
    / "grafana-readonly.sql"
)
BUDGET_MS = 200.0
PIPELINES, NODES_PER_PIPELINE, PROJECTS = 50, 20, 5
NODES = PIPELINES * NODES_PER_PIPELINE
CHUNK = 1_000_000
REPEAT = 5

#: The dashboards' default time ranges (what a user sees first) and a wider one each.
RANGES = {
    "odibi-pipeline-overview": [timedelta(hours=6), timedelta(hours=24)],
    "odibi-node-drilldown": [timedelta(days=7), timedelta(days=30)],
    "odibi-reconciliation": [timedelta(days=30)],
}


def _insert_sql(first: int, last: int, total: int, days: int) -> str:
    """Rows ``first..last`` of ``total``: started_at grows with i, so the newest rows are the
    ones the dashboards' time ranges select, as in a real catalog."""
    k = f"(i % {NODES})"
    pipeline = f"({k} / {NODES_PER_PIPELINE})"
    status = (
        f"CASE WHEN i > {total - 20} THEN 'RUNNING' "
        "WHEN (i * 7919) % 1000 < 20 THEN 'FAILURE' "
        "WHEN (i * 7919) % 1000 < 25 THEN 'CRASHED' ELSE 'SUCCESS' END"
    )
    columns = ", ".join(schema.COLUMNS)
    return f"""
INSERT INTO {CATALOG_TABLE} ({columns})
SELECT
  run_id, project, pipeline, node, status,
  CASE WHEN status = 'SUCCESS' THEN rows END,
  CASE WHEN status <> 'RUNNING' THEN duration END,
  '{{}}', environment,
  CASE WHEN status = 'RUNNING' THEN started ELSE started + duration * interval '1 ms' END,
  (CASE WHEN status = 'RUNNING' THEN started
        ELSE started + duration * interval '1 ms' END)::date,
  pipeline_run_id, attempt, started,
  CASE WHEN status <> 'RUNNING' THEN started + duration * interval '1 ms' END,
  CASE WHEN status = 'FAILURE' THEN 'NodeExecutionError'
       WHEN status = 'CRASHED' THEN 'SIGTERM' END,
  CASE WHEN status IN ('FAILURE', 'CRASHED') THEN 'column ''segment'' not found' END,
  CASE WHEN status = 'FAILURE'
       THEN '["compare the header with the schema","re-run with --node once fixed"]' END,
  trace_id, substr(md5('s' || i), 1, 16), NULL,
  'worker-' || ({k} % 8), 1000 + {k},
  CASE WHEN status = 'RUNNING' THEN now() END,
  'decorator', started
FROM (
  SELECT
    i,
    md5('r' || i) AS run_id,
    'project_' || ({pipeline} % {PROJECTS}) AS project,
    'pipeline_' || {pipeline} AS pipeline,
    'node_' || {k} AS node,
    CASE WHEN {pipeline} % 4 = 0 THEN 'dev' ELSE 'prod' END AS environment,
    {status} AS status,
    ({k} % 13) * 1000 + ((i / {NODES}) * 13) % 500 AS rows,
    ({k} % 97) * 100 + ((i / {NODES}) * 37) % 1000 AS duration,
    md5('p' || (i / {NODES})) AS pipeline_run_id,
    CASE WHEN i % 100 = 0 THEN 2 ELSE 1 END AS attempt,
    now() - interval '{days} days' * (1 - i::float8 / {total}) AS started,
    md5(i::text) AS trace_id
  FROM generate_series({first}::bigint, {last}::bigint) AS i
) AS g
"""


def load(engine: sa.Engine, total: int, days: int) -> None:
    table = schema.meta_runs
    with engine.begin() as conn:
        # Indexes are built once after the load, not maintained row by row during it.
        for index in table.indexes:
            index.drop(conn)
    with engine.connect() as conn:
        conn.exec_driver_sql("SET synchronous_commit = off")
        for first in range(1, total + 1, CHUNK):
            last = min(first + CHUNK - 1, total)
            start = time.perf_counter()
            conn.execute(sa.text(_insert_sql(first, last, total, days)))
            conn.commit()
            print(
                f"  rows {first:>10,}..{last:>10,}  {time.perf_counter() - start:6.1f} s",
                flush=True,
            )
        conn.exec_driver_sql("SET maintenance_work_mem = '512MB'")
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            start = time.perf_counter()
            index.create(conn)
            conn.commit()
            print(f"  index {index.name}  {time.perf_counter() - start:6.1f} s", flush=True)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        for night in range(60):
            created = now - timedelta(days=night, hours=3)
            report_id = str(uuid.uuid4())
            missing = night % 3
            counts = dict.fromkeys(DISCREPANCY_KINDS, 0) | {"missing_in_catalog": missing}
            conn.execute(
                schema.reconciliation.insert().values(
                    report_id=report_id,
                    created_at=created,
                    window_start=created - timedelta(days=1),
                    window_end=created,
                    grace_seconds=300.0,
                    catalog_runs=166_000,
                    trace_runs=166_000 + missing,
                    matched=166_000,
                    discrepancies=missing,
                    discrepancies_json=json.dumps(counts),
                    completeness_ratio=166_000 / (166_000 + missing),
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
                        run_id=f"bench-{night}-{item}",
                        pipeline_name="pipeline_1",
                        node_name="node_21",
                        started_at=created,
                        trace_id=f"{item + 1:032x}",
                    )
                )
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE"))
        conn.commit()


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def explain(conn: sa.Connection, sql: str) -> tuple[float, set[str], bool]:
    """Execution + planning ms, the indexes used, whether meta_runs was scanned whole."""
    # The driver reads % as a placeholder even without parameters: %% is a literal %.
    row = conn.exec_driver_sql(
        f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}".replace("%", "%%")
    ).scalar()
    assert row is not None
    result = (json.loads(row) if isinstance(row, str) else row)[0]
    nodes = list(_plan_nodes(result["Plan"]))
    indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
    seq = any(
        n["Node Type"] == "Seq Scan" and n.get("Relation Name") == CATALOG_TABLE for n in nodes
    )
    return result["Execution Time"] + result["Planning Time"], indexes, seq


def variables(uid: str, conn: sa.Connection) -> dict[str, Any]:
    if uid == "odibi-pipeline-overview":
        # "All": Grafana sends every value it found.
        return {
            "project": [f"project_{p}" for p in range(PROJECTS)],
            "environment": ["dev", "prod"],
            "pipeline": [f"pipeline_{p}" for p in range(PIPELINES)],
        }
    if uid == "odibi-node-drilldown":
        return {
            "project": "project_1",
            "environment": "prod",
            "pipeline": "pipeline_1",
            "node": "node_21",
        }
    return {}


def grafana_role_settings() -> dict[str, str]:
    """The connection settings the deployment gives Grafana's role (``ALTER ROLE ... SET``)."""
    text = READONLY_SQL.read_text()
    return dict(re.findall(r"ALTER ROLE \S+ SET (work_mem) = '([^']+)'", text))


def measure(engine: sa.Engine) -> bool:
    ok = True
    now = datetime.now(timezone.utc)
    settings = grafana_role_settings()
    print(f"connection settings as Grafana's role has them: {settings}, no parallel workers")
    print(f"\n{'dashboard / query':<44} {'range':>6} {'median':>9} {'max':>9}  indexes")
    with engine.connect() as conn:
        conn.exec_driver_sql("SET max_parallel_workers_per_gather = 0")  # 2 shared cores
        for name, value in settings.items():
            conn.exec_driver_sql(f"SET {name} = '{value}'")
        for built in build_dashboards():
            for query in built.sql:
                for i, span in enumerate(RANGES[built.uid]):
                    sql = expand.sql(
                        query.sql,
                        variables(built.uid, conn),
                        time_from=now - span,
                        time_to=now,
                        interval="1m" if span <= timedelta(days=1) else "1h",
                    )
                    explain(conn, sql)  # warm-up
                    runs = [explain(conn, sql) for _ in range(REPEAT)]
                    times = [r[0] for r in runs]
                    median = statistics.median(times)
                    indexes, seq = runs[0][1], runs[0][2]
                    default = i == 0
                    slow = default and median > BUDGET_MS
                    whole = default and seq
                    ok = ok and not slow and not whole
                    flag = " SLOW" if slow else " SEQ SCAN" if whole else ""
                    label = f"{built.uid.removeprefix('odibi-')} / {query.key}"
                    print(
                        f"{label:<44} {_human(span):>6} {median:7.1f}ms {max(times):7.1f}ms  "
                        f"{', '.join(sorted(indexes)) or '-'}{flag}",
                        flush=True,
                    )
    return ok


def _human(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:g}h" if hours < 48 else f"{hours / 24:g}d"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default=os.environ.get("ODIBI_OBSERVE_TEST_PG_URL"))
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--reuse", action="store_true", help="use the database of an earlier --keep run as it is"
    )
    args = parser.parse_args()
    if not args.pg:
        parser.error("--pg URL is required (or set ODIBI_OBSERVE_TEST_PG_URL)")
    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    url = sa.engine.make_url(args.pg).set(database=DATABASE)
    with admin.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": DATABASE}
        ).scalar()
        if exists and not args.reuse:
            conn.execute(sa.text(f'DROP DATABASE "{DATABASE}" WITH (FORCE)'))
        if not exists or not args.reuse:
            conn.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
    engine = sa.create_engine(url)
    try:
        if not (exists and args.reuse):
            upgrade(engine)
            print(f"loading {args.rows:,} runs over {args.days} days into {DATABASE} ...")
            start = time.perf_counter()
            load(engine, args.rows, args.days)
            print(f"loaded in {time.perf_counter() - start:.0f} s")
        with engine.connect() as conn:
            count = conn.exec_driver_sql(f"SELECT count(*) FROM {CATALOG_TABLE}").scalar()
            size = conn.exec_driver_sql(
                f"SELECT pg_size_pretty(pg_total_relation_size('{CATALOG_TABLE}'))"
            ).scalar()
            version = conn.exec_driver_sql("SHOW server_version").scalar()
        print(f"{CATALOG_TABLE}: {count:,} rows, {size} with indexes; PostgreSQL {version}")
        ok = measure(engine)
    finally:
        engine.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        admin.dispose()
    print(
        f"\nevery query at its dashboard's default range within {BUDGET_MS:.0f} ms, "
        f"with an index: {'yes' if ok else 'NO'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
