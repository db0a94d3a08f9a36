"""Auditing Odibi's own catalog tells the truth: it changes nothing, and it raises no false alarm.

The rows are Odibi 3.15's own: a real Odibi project (``tests/odibi_projects/shop``) is run,
instrumented by odibi-observe, once for real — one node fails, one is skipped because it
depends on the failed one — and once with ``dry_run=True``. Odibi's ``meta_runs`` (its Delta
table) is then audited as it is, and copied row for row into a SQL table of Odibi's own
eleven-column shape (``CREATE TABLE meta_runs`` of Odibi's ``catalog_sync``) in SQLite and in
PostgreSQL, which ``odibi-observe reconcile`` audits from the command line.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from odibi_observe.conventions import CATALOG_TABLE, RunStatus
from odibi_observe.reconcile import Window, open_catalog_source, open_trace_source, reconcile
from tests.test_reconcile_support import cli, execute, runs, write_spans

pytest.importorskip("odibi", reason="these tests run a real Odibi project")
pytest.importorskip("deltalake", reason="Odibi's meta_runs is a Delta table")

from tests.test_odibi_integration import (
    INGEST,
    make_project,
    run_in_process,
    sql_node,
    step_node,
)

NODES = [
    INGEST,
    step_node("broken", "always_times_out"),
    sql_node("after_broken", "SELECT * FROM df", after="broken"),
    sql_node("fine", "SELECT customer_id FROM df"),
]
EXECUTED = ("ingest_orders", "broken", "fine")


def odibi_table() -> sa.Table:
    """``meta_runs`` as Odibi creates it in SQL (``odibi.catalog_sync``): eleven columns, no
    primary key, naive UTC times (``DATETIME2``)."""
    return sa.Table(
        CATALOG_TABLE,
        sa.MetaData(),
        sa.Column("run_id", sa.String(100)),
        sa.Column("project", sa.String(255)),
        sa.Column("pipeline_name", sa.String(255)),
        sa.Column("node_name", sa.String(255)),
        sa.Column("status", sa.String(50)),
        sa.Column("rows_processed", sa.BigInteger),
        sa.Column("duration_ms", sa.BigInteger),
        sa.Column("metrics_json", sa.Text),
        sa.Column("environment", sa.String(50)),
        sa.Column("timestamp", sa.DateTime),
        sa.Column("date", sa.Date),
        sa.Index("IX_meta_runs_project_pipeline", "project", "pipeline_name", "date"),
    )


@pytest.fixture(scope="module")
def odibi_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real run (one failure, one dependency skip) and a dry run of one Odibi project."""
    project = make_project(tmp_path_factory.mktemp("odibi-audit"), NODES).parent
    real = run_in_process(project)
    assert set(real.results.failed) == {"broken"}
    assert "after_broken" in real.results.skipped
    run_in_process(project, dry_run=True)
    logging.getLogger("odibi").setLevel(logging.WARNING)
    from deltalake import DeltaTable

    rows = DeltaTable(str(project / "lake" / "_system" / "meta_runs")).to_pandas()
    return {
        "project": project,
        "traces": real.traces,
        "records": real.records(),
        "rows": rows.to_dict("records"),
    }


def load_into_sql(url: str, rows: list[dict[str, Any]]) -> None:
    """Odibi's rows, as they are, in a SQL table of Odibi's shape."""
    table = odibi_table()
    engine = sa.create_engine(url)
    try:
        table.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {
                        **{
                            k: (None if v != v else v)
                            for k, v in row.items()  # NaN -> NULL
                            if k not in ("timestamp", "date")
                        },
                        "rows_processed": int(row["rows_processed"]),
                        "duration_ms": int(row["duration_ms"]),
                        "timestamp": row["timestamp"]
                        .to_pydatetime()
                        .astimezone(timezone.utc)
                        .replace(tzinfo=None),
                        "date": row["date"],
                    }
                    for row in rows
                ],
            )
    finally:
        engine.dispose()


def dump(url: str) -> dict[str, Any]:
    """Everything in the database that reconcile could change: every table, column, index and
    constraint, and every row."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        schema: dict[str, Any] = {}
        rows: dict[str, list[str]] = {}
        with engine.connect() as conn:
            for name in sorted(inspector.get_table_names()):
                schema[name] = {
                    "columns": [
                        (c["name"], str(c["type"]), c["nullable"], str(c["default"]))
                        for c in inspector.get_columns(name)
                    ],
                    "indexes": sorted(str(sorted(i.items())) for i in inspector.get_indexes(name)),
                    "pk": str(inspector.get_pk_constraint(name)),
                }
                rows[name] = sorted(
                    repr(tuple(r)) for r in conn.execute(sa.text(f'SELECT * FROM "{name}"'))
                )
            if engine.dialect.name == "sqlite":
                schema["sqlite_master"] = sorted(
                    repr(tuple(r))
                    for r in conn.execute(
                        sa.text("SELECT type, name, tbl_name, sql FROM sqlite_master")
                    )
                )
        return {"schema": schema, "rows": rows}
    finally:
        engine.dispose()


@pytest.fixture
def odibi_sql(catalog_url: str, odibi_runs: dict[str, Any]) -> str:
    load_into_sql(catalog_url, odibi_runs["rows"])
    return catalog_url


def _cli_reconcile(url: str, traces: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli(
        "reconcile",
        "--catalog",
        url,
        "--traces",
        f"otlp-json:{traces}",
        "--last",
        "3h",
        "--grace",
        "0s",
        "--out",
        str(out),
        *extra,
    )


# --- item: without --repair, reconcile is read-only --------------------------------------------


def test_reconcile_without_repair_changes_nothing_in_odibis_catalog(
    odibi_sql: str, odibi_runs: dict[str, Any], tmp_path: Path
) -> None:
    """Against Odibi's eleven-column table, nothing in the database changes — no column added,
    no table or index created, no row written — and the terminal says how to record reports."""
    before = dump(odibi_sql)
    assert [c[0] for c in before["schema"][CATALOG_TABLE]["columns"]][-2:] == [
        "timestamp",
        "date",
    ] and len(before["schema"][CATALOG_TABLE]["columns"]) == 11
    code, out, err = _cli_reconcile(
        odibi_sql,
        odibi_runs["traces"],
        tmp_path / "r",
        "--metrics-textfile",
        str(tmp_path / "r.prom"),
    )
    assert dump(odibi_sql) == before
    assert code == 0, out + err
    assert "odibi-observe catalog upgrade --catalog" in err
    assert "not recorded: the catalog has no meta_reconciliation tables" in err
    assert "warning" not in err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["summary"]["discrepancies_total"] == 0
    assert any("no column started_at" in note for note in report["notes"])


def test_reconcile_records_only_where_the_tables_exist(
    odibi_sql: str, odibi_runs: dict[str, Any], tmp_path: Path
) -> None:
    """Once ``catalog upgrade`` created them, each report is one more row there, and nothing
    else changes."""
    code, _, err = cli("catalog", "upgrade", "--catalog", odibi_sql)
    assert code == 0, err
    before = dump(odibi_sql)
    code, out, err = _cli_reconcile(odibi_sql, odibi_runs["traces"], tmp_path / "r")
    assert code == 0, out + err
    after = dump(odibi_sql)
    assert after["schema"] == before["schema"]
    changed = {t for t in after["rows"] if after["rows"][t] != before["rows"][t]}
    assert changed == {"meta_reconciliation"}
    assert len(after["rows"]["meta_reconciliation"]) == 1
    assert "not recorded" not in err


def test_a_dry_run_on_a_migrated_catalog_changes_only_its_report_rows(
    sqlite_url: str, tmp_path: Path
) -> None:
    """odibi-observe's own catalog: the dry run of repairs writes no run row."""
    records = runs(3)
    from tests.test_reconcile_support import write_catalog

    write_catalog(sqlite_url, records)
    execute(
        sqlite_url, "UPDATE meta_runs SET rows_processed = 1 WHERE run_id = :r", r=records[0].run_id
    )
    write_spans(tmp_path / "t.jsonl", records)
    before = dump(sqlite_url)
    code, out, err = cli(
        "reconcile",
        "--catalog",
        sqlite_url,
        "--traces",
        f"otlp-json:{tmp_path / 't.jsonl'}",
        "--since",
        (datetime.now(timezone.utc) - timedelta(days=3)).isoformat(),
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 1, out + err  # the rows_mismatch
    after = dump(sqlite_url)
    assert after["rows"][CATALOG_TABLE] == before["rows"][CATALOG_TABLE]
    assert after["schema"] == before["schema"]


# --- item: no false alarms on Odibi's catalog --------------------------------------------------


def test_what_odibi_3_15_writes(odibi_runs: dict[str, Any]) -> None:
    """The shapes the audit must understand, as Odibi really writes them."""
    rows = odibi_runs["rows"]
    dry = [r for r in rows if json.loads(r["metrics_json"]).get("dry_run") is True]
    real = [r for r in rows if r not in dry]
    assert sorted(r["node_name"] for r in dry) == sorted(n["name"] for n in NODES)
    assert all(
        (r["status"], r["rows_processed"], r["duration_ms"]) == ("SUCCESS", 0, 0) for r in dry
    )
    by_node = {r["node_name"]: r for r in real}
    assert sorted(by_node) == sorted(EXECUTED)  # no row for the dependency-skipped node
    assert (by_node["broken"]["status"], by_node["broken"]["rows_processed"]) == ("FAILURE", 0)
    records = odibi_runs["records"]
    assert records["broken"].status is RunStatus.FAILURE
    assert records["broken"].rows_processed is None  # Odibi's 0 means it never counted
    # Odibi skipped it: no row of Odibi's, a SKIPPED run of ours (and a span only, below).
    assert records["after_broken"].status is RunStatus.SKIPPED
    assert records["after_broken"].skip_reason == "dependency_failed"


def _expect_no_false_alarm(result: Any) -> None:
    assert list(result.discrepancies()) == []
    assert result.matched == len(EXECUTED)
    assert dict(result.not_run) == {"dry_run": len(NODES)}
    assert result.catalog_runs == len(EXECUTED) + len(NODES)
    assert result.errors_total == 0
    assert result.clean


def test_odibis_delta_table_raises_no_false_alarm(odibi_runs: dict[str, Any]) -> None:
    catalog = open_catalog_source(f"odibi-delta:{odibi_runs['project'] / 'lake' / '_system'}")
    traces = [open_trace_source(f"otlp-json:{odibi_runs['traces']}")]
    with reconcile(catalog, traces, Window.last(timedelta(hours=3), grace=timedelta(0))) as result:
        _expect_no_false_alarm(result)


def test_odibis_sql_table_raises_no_false_alarm(
    odibi_sql: str, odibi_runs: dict[str, Any], tmp_path: Path
) -> None:
    traces = [open_trace_source(f"otlp-json:{odibi_runs['traces']}")]
    with reconcile(
        open_catalog_source(odibi_sql), traces, Window.last(timedelta(hours=3), grace=timedelta(0))
    ) as result:
        _expect_no_false_alarm(result)
    code, out, err = _cli_reconcile(odibi_sql, odibi_runs["traces"], tmp_path / "r", "--no-record")
    assert code == 0, out + err
    assert "discrepancies  0" in out
    assert (
        f"not run        Odibi logged {len(NODES)} rows for nodes that did not execute "
        "(not discrepancies)"
    ) in out
    assert "dry run (metrics_json.dry_run)" in out
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "did not execute" in markdown
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["summary"]["not_run"] == {"dry_run": len(NODES)}


def _odibi_row(
    url: str,
    run_id: str,
    status: str,
    rows: int,
    metrics: dict[str, Any],
    when: datetime,
    duration_ms: int | None = 0,
) -> None:
    execute(
        url,
        "INSERT INTO meta_runs VALUES (:r, 'shop', 'sales', 'n', :s, :rows, :d, :m, "
        "'prod', :ts, :day)",
        r=run_id,
        s=status,
        rows=rows,
        d=duration_ms,
        m=json.dumps(metrics),
        ts=when.replace(tzinfo=None),
        day=when.date(),
    )


def test_skipped_rows_are_counted_and_real_differences_still_found(
    catalog_url: str, tmp_path: Path
) -> None:
    """A row flagged ``skipped`` (the metadata Odibi gives a skipped node's result) is counted,
    not missing from the traces; a failed row's 0 is "unknown" only when it is 0, and only on
    rows Odibi wrote — a count that disagrees is still a rows_mismatch."""
    engine = sa.create_engine(catalog_url)
    odibi_table().metadata.create_all(engine)
    engine.dispose()
    now = datetime.now(timezone.utc) - timedelta(minutes=30)
    zero, seven = runs(
        2,
        start_ns=int(now.timestamp()) * 10**9 - 10**9,
        step_ns=10**8,
        status=RunStatus.FAILURE,
        rows=None,
    )
    seven = seven.finished(rows_processed=5)
    _odibi_row(catalog_url, zero.run_id, "FAILURE", 0, {"attempts": 1}, now, zero.duration_ms)
    _odibi_row(catalog_url, seven.run_id, "FAILURE", 7, {"attempts": 1}, now, seven.duration_ms)
    _odibi_row(
        catalog_url,
        "skipped-1",
        "FAILURE",
        0,
        {"skipped": True, "reason": "dependency_failed"},
        now,
    )
    _odibi_row(catalog_url, "plain-1", "SUCCESS", 3, {"note": "skipped nothing"}, now)
    write_spans(tmp_path / "t.jsonl", [zero, seven])
    with reconcile(
        open_catalog_source(catalog_url),
        [open_trace_source(f"otlp-json:{tmp_path / 't.jsonl'}")],
        Window.last(timedelta(hours=3), grace=timedelta(0)),
    ) as result:
        assert {(d.kind, d.run_id) for d in result.discrepancies()} == {
            ("rows_mismatch", seven.run_id),
            ("missing_in_traces", "plain-1"),
        }
        assert dict(result.not_run) == {"skipped": 1}
