"""A catalog worth looking at: the demo's real run on top of 15 days of history.

Used by ``scripts/screenshots.py`` (the pictures in docs/) and ``scripts/regen_docs.py`` (the
status page's output in docs/status-page.md). What it does, in order, all through the real
commands and the real catalog (:class:`~odibi_observe.catalog.CatalogStore`):

1. ``odibi-observe demo --out DIR``: the six-node example into a SQLite catalog and traces;
2. history written through the catalog: two pipelines run hourly for 15 days (ending 20
   minutes ago, so the last reconcile's window holds only the demo), with a few failures and
   their suggestions, retried runs, a crashed run, a node that processed 0 rows and a slow
   publish (for health to find), and one run still RUNNING;
3. ``catalog upgrade``; one demo row deleted (a run the traces hold and the catalog lost);
4. ``reconcile --last 15m`` (records ``missing_in_catalog`` 1) and ``health`` (records findings).

Deterministic apart from "now" (a fixed seed); the whole build takes a few seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import random
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from odibi_observe.catalog import CatalogStore
from odibi_observe.cli import main as cli_main
from odibi_observe.conventions import CATALOG_TABLE, CRASHED_ERROR_TYPE, RunStatus
from odibi_observe.record import EventKind, RunEvent, RunRecord

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAYS = 15
#: The newest history run starts this long before "now": outside the reconcile window.
GAP = 20 * MINUTE

#: (pipeline, node, rows, duration ms) of the hourly history.
NODES = (
    ("daily_sales", "ingest_orders", 1_200, 900),
    ("daily_sales", "clean_orders", 1_185, 400),
    ("daily_sales", "fetch_fx_rates", 3, 1_500),
    ("daily_sales", "enrich_customers", 1_185, 2_100),
    ("daily_sales", "aggregate_revenue", 40, 700),
    ("daily_sales", "publish_report", 40, 3_200),
    ("inventory", "load_stock", 52_000, 6_500),
    ("inventory", "reconcile_stock", 51_800, 4_200),
    ("inventory", "export_snapshot", 51_800, 9_800),
)

SUGGESTIONS = (
    "customers.csv changed shape: compare its header with the schema in pipelines/daily_sales.yaml",
    "re-run with --node enrich_customers once fixed",
)


def build(out: Path) -> Path:
    """Build the sample into ``out`` (created; must not exist); its catalog file."""
    out.mkdir(parents=True)
    _quiet(["demo", "--out", str(out / "demo")])
    catalog = out / "demo" / "catalog.db"
    url = f"sqlite:///{catalog}"
    store = CatalogStore(url)
    try:
        store.ensure_schema()
        now = _demo_start(catalog)
        store.upsert(
            [
                RunEvent(
                    EventKind.FINISHED if r.status is not RunStatus.RUNNING else EventKind.STARTED,
                    r,
                )
                for r in history(now)
            ]
        )
    finally:
        store.dispose()
    _quiet(["catalog", "upgrade", "--catalog", url])
    with contextlib.closing(sqlite3.connect(catalog)) as db, db:
        db.execute(
            f"DELETE FROM {CATALOG_TABLE} WHERE node_name = 'clean_orders' "  # noqa: S608
            "AND source = 'decorator' AND started_at >= ?",
            (_iso(now - GAP // 2),),
        )
    _quiet(
        [
            "reconcile",
            "--catalog",
            url,
            "--traces",
            f"otlp-json:{out / 'demo/traces.jsonl'}",
            "--last",
            "15m",
            "--grace",
            "0s",
            "--out",
            str(out / "reconcile"),
            "--quiet",
        ]
    )
    _quiet(["health", "--catalog", url, "--out", str(out / "health"), "--quiet"])
    return catalog


def _quiet(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli_main(argv)


def _demo_start(catalog: Path) -> int:
    """ "Now" of the sample: when the demo ran (its first run's start), in ns."""
    from datetime import datetime, timezone

    with contextlib.closing(sqlite3.connect(catalog)) as db:
        (text,) = db.execute(f"SELECT min(started_at) FROM {CATALOG_TABLE}").fetchone()  # noqa: S608
    moment = datetime.fromisoformat(str(text)).replace(tzinfo=timezone.utc)
    return int(moment.timestamp()) * SECOND


def _iso(ns: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ns / SECOND, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def history(now_ns: int, *, seed: int = 11) -> Iterator[RunRecord]:
    """Hourly runs of :data:`NODES` for :data:`DAYS` days before ``now_ns - GAP``."""
    rng = random.Random(seed)
    host = socket.gethostname()
    newest = now_ns - GAP
    for hour in range(DAYS * 24):
        base = newest - hour * HOUR
        pipeline_run = str(uuid.UUID(int=rng.getrandbits(128)))
        offset = 0
        for pipeline, node, rows, ms in NODES:
            started = base + offset
            duration = int(ms * rng.uniform(0.85, 1.15)) * 1_000_000
            offset += duration + 50_000_000
            record = RunRecord(
                run_id=str(uuid.UUID(int=rng.getrandbits(128))),
                project="demo",
                pipeline=pipeline,
                node=node,
                environment="local",
                status=RunStatus.SUCCESS,
                started_ns=started,
                trace_id=f"{rng.getrandbits(128):032x}",
                span_id=f"{rng.getrandbits(64):016x}",
                host=host,
                pid=40_000 + hour,
                pipeline_run_id=pipeline_run,
                ended_ns=started + duration,
                rows_processed=int(rows * rng.uniform(0.97, 1.03)),
            )
            changes = _plant(hour, node)
            scale = changes.pop("scale", 1)
            if isinstance(scale, int) and scale != 1:
                changes["ended_ns"] = started + scale * duration
            yield dataclasses.replace(record, **changes)
    yield RunRecord(
        run_id=str(uuid.UUID(int=rng.getrandbits(128))),
        project="demo",
        pipeline="inventory",
        node="export_snapshot",
        environment="local",
        status=RunStatus.RUNNING,
        started_ns=now_ns - 4 * MINUTE,
        trace_id=f"{rng.getrandbits(128):032x}",
        span_id=f"{rng.getrandbits(64):016x}",
        host=host,
        pid=os.getpid(),
        heartbeat_ns=now_ns - 20 * SECOND,
    )


def _plant(hour: int, node: str) -> dict[str, Any]:
    """The problems of the last days (``hour`` 0 is the newest): changes to the run."""
    values: dict[str, Any] = {}
    if node == "enrich_customers" and hour in (1, 2, 9):
        values.update(
            status=RunStatus.FAILURE,
            rows_processed=None,
            error_type="odibi.NodeExecutionError",
            error_message="column 'segment' not found in customers.csv",
            suggestions=SUGGESTIONS,
        )
    elif node == "fetch_fx_rates" and hour in (3, 7, 15, 30, 55):
        values.update(attempt=2)
    elif node == "load_stock" and hour == 13:
        values.update(
            status=RunStatus.CRASHED,
            rows_processed=None,
            error_type=CRASHED_ERROR_TYPE,
            error_message="process 40013 on host etl-2 was not alive; last sign of "
            "life its heartbeat; closed as CRASHED by odibi-observe "
            "sweep",
        )
    elif node == "aggregate_revenue" and hour == 4:
        values.update(rows_processed=0)
    elif node == "publish_report" and hour == 0:
        values.update(scale=9)
    elif node == "reconcile_stock" and hour == 20:
        values.update(
            status=RunStatus.FAILURE,
            rows_processed=None,
            error_type="TimeoutError",
            error_message="warehouse API did not answer within 30 s",
            suggestions=(
                "the warehouse API is rate limited at night: retry "
                "after 02:00 or raise timeout_s in inventory.yaml",
            ),
        )
    return values
