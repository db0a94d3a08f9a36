"""``odibi-observe health`` on a catalog of millions of runs: time, and the indexes it uses.

Creates a scratch catalog with the real schema (``catalog upgrade``: the tables and indexes a
deployment has), fills ``meta_runs`` in SQL (PostgreSQL ``generate_series``, SQLite a recursive
CTE) with ``--rows`` runs (default 10 000 000) over 60 days: 1 000 nodes in 50 pipelines, each
with its own steady row count and duration (±2 % noise, below the 10 % small-change rule, so a
steady node must produce nothing), 1 % random failures, and planted problems on 10 nodes each:

* ``volume``: rows x 0.01 in the last 6 hours                  -> volume_anomaly
* ``slow``: duration x 10 in the last 6 hours                   -> duration_anomaly
* ``zero``: 0 rows in the last 3 runs (at least 2 hours)        -> zero_rows
* ``stale``: no run in the last 12 runs' time (at least 4 h)    -> freshness
* ``failing``: the last 5 runs' time fails (at least 2 h)       -> failure_streak, freshness
* ``flaky``: 20 % of successes needed a retry                   -> flaky

(A node runs every 60 days x 1 000 / ``--rows``: 8.6 minutes at 10 M, 86 at 1 M.)

Then it runs the pass (``detect`` with the CLI's defaults; the median of ``--repeat`` runs
after one warm-up), checks that exactly the planted findings came out (70), and prints each
query's time with ``EXPLAIN ANALYZE`` and the indexes it used (PostgreSQL), or SQLite's
``EXPLAIN QUERY PLAN``. A benchmark, not a test.

    python benchmarks/bench_health.py [--pg URL] [--rows 10000000] [--keep] [--reuse]
    python benchmarks/bench_health.py --sqlite /tmp/health.db --rows 1000000

``--pg`` defaults to ``$ODIBI_OBSERVE_TEST_PG_URL``; the database is ``oo_bench_health`` on
that server, dropped at the end unless ``--keep`` (``--reuse`` then skips the load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from odibi_observe.catalog import create_catalog_engine, schema, upgrade
from odibi_observe.conventions import CATALOG_TABLE, HEALTH_FINDING_KINDS
from odibi_observe.health import HealthOptions, detect
from odibi_observe.reconcile.model import Window

DATABASE = "oo_bench_health"
NODES, PER_PIPELINE, DAYS = 1_000, 20, 60
CHUNK = 1_000_000
PLANTS = {"volume": 0, "slow": 1, "zero": 2, "stale": 3, "failing": 4, "flaky": 7}
EXPECTED = {
    "volume_anomaly": 10,
    "duration_anomaly": 10,
    "zero_rows": 10,
    "freshness": 20,
    "failure_streak": 10,
    "flaky": 10,
}


def _hash(expr: str, prime: int) -> str:
    """A pseudo-random number in [0, 1) from a row number, in SQL both dialects run."""
    return f"((({expr}) * {prime}) % 4294967296) / 4294967296.0"


def _select(total: int, span_s: int, now: str, age: str, cat: Callable[[str, str], str]) -> str:
    """The generated columns for row ``i`` (``age`` = seconds before ``now``, as SQL)."""
    k = f"(i % {NODES})"
    plant = f"({k} % 100)"
    u1, u2, u3 = _hash("i", 2654435761), _hash("i", 2246822519), _hash("i", 3266489917)
    base_rows = f"(1000 + ({k} * 7919) % 10000 * 10)"
    base_dur = f"(1000 + ({k} * 37) % 500 * 100)"
    cadence = span_s * NODES / total
    failing, zero = max(5 * cadence, 7200), max(3 * cadence, 7200)
    fail = f"({u1} < 0.01 OR ({plant} = {PLANTS['failing']} AND {age} < {failing}))"
    rows = (
        f"CASE WHEN {plant} = {PLANTS['zero']} AND {age} < {zero} THEN 0 "
        f"WHEN {plant} = {PLANTS['volume']} AND {age} < 21600 "
        f"THEN CAST({base_rows} * 0.01 AS INTEGER) "
        f"ELSE CAST({base_rows} * (0.98 + 0.04 * {u2}) AS INTEGER) END"
    )
    dur = (
        f"CAST({base_dur} * (0.98 + 0.04 * {u3}) * CASE WHEN {plant} = {PLANTS['slow']} "
        f"AND {age} < 21600 THEN 10 ELSE 1 END AS INTEGER)"
    )
    return f"""
  {cat("r", "i")} AS run_id, 'bench' AS project,
  {cat("pipeline_", f"({k} / {PER_PIPELINE})")} AS pipeline_name,
  {cat("node_", k)} AS node_name,
  CASE WHEN {fail} THEN 'FAILURE' ELSE 'SUCCESS' END AS status,
  CASE WHEN {fail} THEN NULL ELSE {rows} END AS rows_processed,
  {dur} AS duration_ms,
  CASE WHEN {plant} = {PLANTS["flaky"]} AND {u3} < 0.2 THEN 2 ELSE 1 END AS attempt,
  {age} AS age_s,
  {plant} AS plant
"""


def _stale(total: int) -> float:
    """Seconds without any run for the ``stale`` nodes: 12 runs' time, at least 4 hours."""
    return max(12 * DAYS * 86_400 * NODES / total, 14_400)


def _pg_insert(first: int, last: int, total: int) -> str:
    def cat(prefix: str, expr: str) -> str:
        return f"'{prefix}' || {expr}"

    span_s = DAYS * 86_400
    age = f"({span_s}.0 * ({total} - i) / {total})"
    columns = ", ".join(schema.COLUMNS)
    return f"""
INSERT INTO {CATALOG_TABLE} ({columns})
SELECT run_id, project, pipeline_name, node_name, status, rows_processed, duration_ms, '{{}}',
  'prod', started + duration_ms * interval '1 ms', (started + duration_ms * interval '1 ms')::date,
  NULL, attempt, started, started + duration_ms * interval '1 ms',
  CASE WHEN status = 'FAILURE' THEN 'ValueError' END, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, 'decorator', started
FROM (SELECT *, now() - age_s * interval '1 second' AS started FROM (SELECT
{_select(total, span_s, "now()", age, cat)}
FROM generate_series({first}::bigint, {last}::bigint) AS i) AS g
WHERE NOT (plant = {PLANTS["stale"]} AND age_s < {_stale(total)})) AS r
"""


def _sqlite_insert(first: int, last: int, total: int, now_julian: float) -> str:
    def cat(prefix: str, expr: str) -> str:
        return f"'{prefix}' || {expr}"

    span_s = DAYS * 86_400
    age = f"({span_s}.0 * ({total} - i) / {total})"

    def at(seconds: str) -> str:
        return f"strftime('%Y-%m-%d %H:%M:%f', {now_julian} - ({seconds}) / 86400.0) || '000'"

    return f"""
WITH RECURSIVE c(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM c WHERE i < {last})
INSERT INTO {CATALOG_TABLE} (run_id, project, pipeline_name, node_name, status,
  rows_processed, duration_ms, metrics_json, environment, timestamp, date, attempt, started_at,
  ended_at, error_type, source, updated_at)
SELECT run_id, project, pipeline_name, node_name, status, rows_processed, duration_ms, '{{}}',
  'prod', {at("age_s - duration_ms / 1000.0")}, substr({at("age_s")}, 1, 10), attempt,
  {at("age_s")}, {at("age_s - duration_ms / 1000.0")},
  CASE WHEN status = 'FAILURE' THEN 'ValueError' END, 'decorator', {at("age_s")}
FROM (SELECT {_select(total, span_s, "", age, cat)} FROM c)
WHERE NOT (plant = {PLANTS["stale"]} AND age_s < {_stale(total)})
"""


def load(engine: sa.Engine, total: int) -> None:
    table = schema.meta_runs
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as conn:
        for index in table.indexes:  # built once after the load
            index.drop(conn)
    with engine.connect() as conn:
        if sqlite:
            julian = conn.exec_driver_sql("SELECT julianday('now')").scalar()
            assert julian is not None
            now_julian = float(julian)
        else:
            conn.exec_driver_sql("SET synchronous_commit = off")
        for first in range(1, total + 1, CHUNK):
            last = min(first + CHUNK - 1, total)
            start = time.perf_counter()
            sql = (
                _sqlite_insert(first, last, total, now_julian)
                if sqlite
                else _pg_insert(first, last, total)
            )
            conn.exec_driver_sql(sql.replace("%", "%%") if not sqlite else sql)
            conn.commit()
            print(
                f"  rows {first:>10,}..{last:>10,}  {time.perf_counter() - start:6.1f} s",
                flush=True,
            )
        if not sqlite:
            conn.exec_driver_sql("SET maintenance_work_mem = '512MB'")
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            start = time.perf_counter()
            index.create(conn)
            conn.commit()
            print(f"  index {index.name}  {time.perf_counter() - start:6.1f} s", flush=True)
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


def measure(engine: sa.Engine, repeat: int) -> bool:
    options = HealthOptions()
    captured: list[tuple[str, Any]] = []

    def capture(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        captured.append((statement, parameters))

    times = []
    result = None
    for attempt in range(repeat + 1):
        window = Window.last(timedelta(hours=24), grace=timedelta(0))
        if attempt == repeat:
            sa.event.listen(engine, "before_cursor_execute", capture)
        start = time.perf_counter()
        result = detect(engine, window, options)
        elapsed = time.perf_counter() - start
        if attempt:
            times.append(elapsed)
        print(
            f"  pass {attempt}: {elapsed:6.2f} s  ({len(result.findings)} findings)"
            + ("  warm-up" if not attempt else ""),
            flush=True,
        )
    sa.event.remove(engine, "before_cursor_execute", capture)
    assert result is not None
    found = {k: n for k, n in result.by_kind().items() if n}
    print(
        f"\nhealth pass: median {statistics.median(times):.2f} s of {repeat} "
        f"(min {min(times):.2f}, max {max(times):.2f}); nodes {result.nodes_seen}, judged "
        f"{result.nodes_judged}, recent successes {result.recent_runs:,}"
    )
    print(f"findings: {json.dumps(found)}")
    ok = found == EXPECTED
    print("planted findings found, nothing else" if ok else f"MISMATCH: expected {EXPECTED}")
    print("\nqueries (the last pass):")
    seen: dict[str, int] = {}
    with engine.connect() as conn:
        for statement, parameters in captured:
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            if "sqlite_master" in statement or "pg_catalog" in statement:
                continue
            seen[statement] = seen.get(statement, 0) + 1
            if seen[statement] == 1:  # the per-node evidence query: explained once
                _explain(conn, statement, parameters)
    repeated = {s: n for s, n in seen.items() if n > 1}
    for statement, n in repeated.items():
        print(f"  (ran {n} times, once per flagged node: {' '.join(statement.split())[:60]})")
    return ok


def _explain(conn: sa.Connection, statement: str, parameters: Any) -> None:
    head = " ".join(statement.split())[:70]
    driver = conn.connection.dbapi_connection
    assert driver is not None
    cursor = driver.cursor()
    if conn.dialect.name == "postgresql":
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters)
        fetched = cursor.fetchone()
        assert fetched is not None
        row = fetched[0]
        plan = (json.loads(row) if isinstance(row, str) else row)[0]
        nodes = list(_nodes(plan["Plan"]))
        indexes = sorted({n["Index Name"] for n in nodes if "Index Name" in n})
        seq = any(
            n["Node Type"] == "Seq Scan" and n.get("Relation Name") == CATALOG_TABLE for n in nodes
        )
        print(
            f"  {plan['Execution Time'] + plan['Planning Time']:9.1f} ms  "
            f"{', '.join(indexes) or '-'}{'  SEQ SCAN' if seq else ''}  | {head}"
        )
    else:
        cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
        steps = "; ".join(
            str(r[3]) for r in cursor.fetchall() if "meta_runs" in str(r[3]) or "INDEX" in str(r[3])
        )
        print(f"  {steps}  | {head}")
    cursor.close()


def _nodes(plan: dict[str, Any]) -> Any:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default=os.environ.get("ODIBI_OBSERVE_TEST_PG_URL"))
    parser.add_argument("--sqlite", metavar="PATH", help="use a SQLite file instead")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    admin = None
    if args.sqlite:
        path = Path(args.sqlite)
        if not args.reuse and path.exists():
            path.unlink()
        url = f"sqlite:///{path}"
    else:
        if not args.pg:
            parser.error("--pg URL (or $ODIBI_OBSERVE_TEST_PG_URL) or --sqlite PATH")
        admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": DATABASE}
            ).scalar()
            if exists and not args.reuse:
                conn.execute(sa.text(f'DROP DATABASE "{DATABASE}" WITH (FORCE)'))
            if not exists or not args.reuse:
                conn.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
        url = (
            sa.engine.make_url(args.pg).set(database=DATABASE).render_as_string(hide_password=False)
        )
    engine = create_catalog_engine(url)
    try:
        if not args.reuse:
            upgrade(engine)
            print(
                f"loading {args.rows:,} runs over {DAYS} days into {engine.dialect.name} ...",
                flush=True,
            )
            start = time.perf_counter()
            load(engine, args.rows)
            print(f"loaded in {time.perf_counter() - start:.0f} s", flush=True)
        with engine.connect() as conn:
            count = conn.execute(sa.text(f"SELECT count(*) FROM {CATALOG_TABLE}")).scalar()
        print(f"{count:,} runs in {CATALOG_TABLE}; finding kinds {', '.join(HEALTH_FINDING_KINDS)}")
        ok = measure(engine, args.repeat)
    finally:
        engine.dispose()
        if admin is not None:
            if not args.keep:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
            admin.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
