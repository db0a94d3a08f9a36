"""``reconcile --traces openlineage-file:PATH``: the lineage held to the catalog, run by run.

Every file here is written by the real ``openlineage-python`` client's file transport through
our OpenLineage sink: by the conformance suite's records, by a configured pipeline process
(in-process), and by a real sidecar whose sweeper sends the ``FAIL`` of a SIGKILLed run.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from openlineage.client import OpenLineageClient
from openlineage.client import event_v2 as ol

import odibi_observe as oo
from odibi_observe.conventions import (
    DISCREPANCY_KINDS,
    ODIBI_RUN_FACET_KEYS,
    OPENLINEAGE_FILE_SCHEME,
    OPENLINEAGE_RUN_FACET,
    RunStatus,
)
from odibi_observe.reconcile.engine import (
    ReconcileError,
    ReconcileOptions,
    ReconcileResult,
    reconcile,
)
from odibi_observe.reconcile.model import Window
from odibi_observe.reconcile.openlineage_file import MAX_LINE_BYTES, OpenLineageFileSource
from odibi_observe.reconcile.repair import repair
from odibi_observe.reconcile.sources import (
    TraceSource,
    open_catalog_source,
    open_trace_source,
)
from odibi_observe.record import RunRecord
from odibi_observe.sinks.openlineage import OpenLineageSink
from odibi_observe.testing.contracts import TraceSourceContract, make_record
from tests.helpers import wait_until
from tests.test_openlineage_sink import finished, ol_env, started
from tests.test_sidecar_service import catalog_rows, options, settings, start_hanging_pipeline

__all__ = ["ol_env"]  # the fixture, used by name

Configure = Callable[..., oo.Observer]
CLI = [sys.executable, "-m", "odibi_observe.cli"]


def file_client(path: Path) -> OpenLineageClient:
    return OpenLineageClient(
        config={"transport": {"type": "file", "log_file_path": str(path), "append": True}}
    )


def write_lineage(path: Path, records: list[RunRecord], foreign: int = 0) -> None:
    """``records`` as the sink sends them (START, then the terminal event), through the real
    client's file transport; plus ``foreign`` run events of another producer."""
    client = file_client(path)
    sink = OpenLineageSink(client)
    sink.export([started(r) for r in records])
    sink.export([finished(r) for r in records])
    for i in range(foreign):
        client.emit(
            ol.RunEvent(
                eventType=ol.RunState.COMPLETE,
                eventTime=datetime.now(timezone.utc).isoformat(),
                run=ol.Run(runId="01934b2e-8f3a-7c4d-9e5f-0a1b2c3d4e5" + str(i)),
                job=ol.Job(namespace="airflow", name=f"dag.task_{i}"),
                producer="https://github.com/apache/airflow",
            )
        )
    client.close(5.0)


class TestOpenLineageFileSource(TraceSourceContract):
    """The shipped conformance suite, like every other trace source."""

    keeps_details = False  # suggestions and user attributes are not in lineage events
    keeps_process = False  # nor host, pid, or the parent span

    def make_source(self, tmp_path: Path, records: list[RunRecord], foreign: int) -> TraceSource:
        path = tmp_path / "lineage.jsonl"
        write_lineage(path, records, foreign)
        return open_trace_source(f"{OPENLINEAGE_FILE_SCHEME}:{path}")


# -- the engine on lineage ------------------------------------------------------------------


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rewrite(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if keep(json.loads(line))))


def _window() -> Window:
    now = datetime.now(timezone.utc)
    return Window.between(now - timedelta(hours=1), now + timedelta(minutes=1), grace=timedelta(0))


def _reconcile(catalog_url: str, path: Path, **options: Any) -> ReconcileResult:
    catalog = open_catalog_source(catalog_url)
    source = open_trace_source(f"{OPENLINEAGE_FILE_SCHEME}:{path}")
    try:
        return reconcile(catalog, [source], _window(), ReconcileOptions(**options))
    finally:
        catalog.close()


def _kinds(result: ReconcileResult) -> dict[str, str]:
    return {d.run_id: d.kind for d in result.discrepancies()}


def _pipeline(
    fresh_observer: Configure, ol_env: pytest.MonkeyPatch, db: str, path: Path
) -> list[str]:
    """Three node runs (two succeed, one fails) recorded in the catalog and the lineage."""
    ol_env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    ol_env.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    ol_env.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    fresh_observer(catalog_url=db, handle_sigterm=False, mode="inline", project="shop")
    ids = []
    with oo.pipeline_run("sales"):
        for node in ("extract", "load"):
            with oo.node_run("sales", node) as run:
                run.rows_processed = 7
                ids.append(str(run.run_id))
        with pytest.raises(KeyError), oo.node_run("sales", "enrich") as run:
            ids.append(str(run.run_id))
            raise KeyError("amount")
    assert oo.flush(10)
    oo.shutdown()
    return ids


def test_lineage_written_by_a_pipeline_agrees_with_the_catalog(
    fresh_observer: Configure, ol_env: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "lineage.jsonl"
    ids = _pipeline(fresh_observer, ol_env, sqlite_url, path)
    assert len(_events(path)) == 6
    with _reconcile(sqlite_url, path) as result:
        assert result.clean, list(result.discrepancies())
        assert result.traces_hold == "lineage"
        assert (result.matched, result.trace_runs, result.catalog_runs) == (3, 3, 3)
        assert result.completeness == 1.0
    runs = {r.run_id: r for r in OpenLineageFileSource(path).read(_read_range(), _log())}
    assert runs[ids[2]].status == RunStatus.FAILURE.value
    assert runs[ids[2]].error_type == "KeyError"
    assert (runs[ids[0]].pipeline, runs[ids[0]].node, runs[ids[0]].project) == (
        "sales",
        "extract",
        "shop",
    )


def _read_range() -> Any:
    from odibi_observe.reconcile.model import ReadRange

    now = time.time_ns()
    return ReadRange(now - 3_600 * 10**9, now + 60 * 10**9, now)


def _log() -> Any:
    from odibi_observe.reconcile.model import ReadLog

    return ReadLog()


def test_missing_terminal_event_status_mismatch_and_missing_runs_are_reported(
    fresh_observer: Configure, ol_env: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "lineage.jsonl"
    done, lost_end, enriched = _pipeline(fresh_observer, ol_env, sqlite_url, path)
    # The terminal event of one run is lost; another run has no lineage at all ...
    _rewrite(path, lambda e: not (e["run"]["runId"] == lost_end and e["eventType"] != "START"))
    _rewrite(path, lambda e: e["run"]["runId"] != enriched)
    # ... and the catalog row of the first was rewritten to FAILURE after the run.
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE meta_runs SET status = 'FAILURE' WHERE run_id = ?", (done,))
    with _reconcile(sqlite_url, path) as result:
        assert _kinds(result) == {
            done: "status_mismatch",
            lost_end: "missing_terminal_event",
            enriched: "missing_in_traces",
        }
        by_id = {d.run_id: d for d in result.discrepancies()}
        assert (by_id[done].trace or {}).get("status") == "SUCCESS"
        assert "no terminal event" in by_id[lost_end].detail
        assert not result.clean
        # Against lineage only the catalog is repaired: nothing is re-sent, no span emitted.
        catalog = open_catalog_source(sqlite_url)
        try:
            summary = repair(result, catalog, apply=False)
        finally:
            catalog.close()
        assert summary.span_destination is None
        plans = {d.run_id: d.repair or {} for d in result.discrepancies()}
        assert plans[done]["status"] == "planned"
        for run_id in (lost_end, enriched):
            assert plans[run_id]["status"] == "not_repairable"
            assert "lineage" in plans[run_id]["note"]
    # The command line says the same (and exits 1).
    done_cli = _cli_reconcile(sqlite_url, path, tmp_path / "report")
    assert done_cli.returncode == 1, done_cli.stderr
    counts = json.loads(done_cli.stdout)["summary"]["discrepancies"]
    assert {k: n for k, n in counts.items() if n} == {
        "status_mismatch": 1,
        "missing_terminal_event": 1,
        "missing_in_traces": 1,
    }


def _cli_reconcile(catalog_url: str, path: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """``odibi-observe reconcile --traces openlineage-file:PATH --json`` over the last hour."""
    return subprocess.run(
        [
            *CLI,
            "reconcile",
            "--catalog",
            catalog_url,
            "--traces",
            f"{OPENLINEAGE_FILE_SCHEME}:{path}",
            "--last",
            "1h",
            "--grace",
            "0s",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_facet_that_contradicts_the_event_type_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "lineage.jsonl"
    record = make_record()
    write_lineage(path, [record])
    lines = path.read_text().splitlines()
    event = json.loads(lines[1])
    event["run"]["facets"][OPENLINEAGE_RUN_FACET][ODIBI_RUN_FACET_KEYS.status] = "FAILURE"
    path.write_text("\n".join([lines[0], json.dumps(event)]) + "\n")
    log = _log()
    (run,) = OpenLineageFileSource(path).read(_read_range(), log)
    assert run.status == "SUCCESS"  # COMPLETE: what the lineage store shows
    assert "contradicts eventType COMPLETE" in log.errors[0].message


def test_a_run_whose_start_line_is_gone_takes_its_start_from_the_duration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lineage.jsonl"
    record = make_record(duration_ns=250_000_000)
    write_lineage(path, [record])
    _rewrite(path, lambda e: e["eventType"] != "START")
    (run,) = OpenLineageFileSource(path).read(_read_range(), _log())
    assert run.status == "SUCCESS"
    assert run.end_ns - run.start_ns == 250_000_000


def test_malformed_lines_are_counted_and_reported_never_fatal(
    fresh_observer: Configure, ol_env: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> None:
    """A write cut short, a lone surrogate (as raw bytes and as a JSON escape), a 10 MB line,
    JSON that is not an event: each is reported with its line, the rest reconciled, and the
    CLI writes its reports."""
    path = tmp_path / "lineage.jsonl"
    ids = _pipeline(fresh_observer, ol_env, sqlite_url, path)
    good = path.read_bytes().splitlines(keepends=True)
    escaped = json.loads(good[0])
    escaped["job"]["name"] = "sales.load_r\udce9sum\udce9.csv"
    huge = b'{"eventType": "START", "pad": "' + b"x" * (10 * 2**20) + b'"}\n'
    path.write_bytes(
        b"".join(
            [
                good[0][: len(good[0]) // 2] + b"\n",  # truncated JSON
                b'{"eventType": "START", "job": {"name": "load_r\xed\xb3\xa9sum\xe9"}}\n',
                huge,
                b"[1, 2, 3]\n",
                json.dumps(escaped).encode() + b"\n",  # ensure_ascii: the \udce9 escape
                *good,
            ]
        )
    )
    log = _log()
    runs = list(OpenLineageFileSource(path).read(_read_range(), log))
    assert {r.run_id for r in runs} == set(ids)
    messages = [(e.where.rsplit(":", 1)[1], e.message) for e in log.errors]
    assert [where for where, _ in messages] == ["1", "2", "3", "4"]
    assert messages[0][1].startswith("not a JSON event")
    assert messages[1][1].startswith("not UTF-8")
    assert f"longer than {MAX_LINE_BYTES:,}" in messages[2][1]
    assert "a JSON list" in messages[3][1]
    out = tmp_path / "report"
    done = _cli_reconcile(sqlite_url, path, out)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["summary"]["errors"] == 4
    assert summary["summary"]["matched"] == 3
    assert summary["summary"]["discrepancies_total"] == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["errors"]) == 4


def test_spans_and_lineage_are_never_merged_into_one_side(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "lineage.jsonl"
    write_lineage(path, [make_record()])
    spans = tmp_path / "spans.jsonl"
    spans.write_text("")
    catalog = open_catalog_source(sqlite_url)
    try:
        with pytest.raises(ReconcileError, match="reconciled separately"):
            reconcile(
                catalog,
                [
                    open_trace_source(f"otlp-json:{spans}"),
                    open_trace_source(f"{OPENLINEAGE_FILE_SCHEME}:{path}"),
                ],
                _window(),
            )
    finally:
        catalog.close()


def test_a_killed_run_in_sidecar_mode_reconciles_once_the_sweeper_sent_its_fail(
    ol_env: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> None:
    """SIGKILL in sidecar mode: before the sweep the lineage has only the run's START and the
    catalog says RUNNING (stale once its heartbeats stop); after the sweep the FAIL the
    sweeper sent matches the catalog's CRASHED."""
    from odibi_observe.sidecar.service import Sidecar

    path = tmp_path / "lineage.jsonl"
    ol_env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    ol_env.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    ol_env.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    spool = tmp_path / "spool"
    sidecar = Sidecar(
        options(sqlite_url, spool, sweep_interval=3600), settings=settings(sqlite_url)
    ).start()
    try:
        proc, hung, done = start_hanging_pipeline(spool)
        assert wait_until(lambda: path.exists() and len(_events(path)) >= 3, 20)
        assert wait_until(lambda: hung in catalog_rows(sqlite_url), 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with _reconcile(sqlite_url, path, crash_after=timedelta(0)) as before:
            assert _kinds(before) == {hung: "stale_running"}
        swept = sidecar.sweep_once()
        assert swept is not None and [r.run_id for r in swept.closed] == [hung]
        assert wait_until(lambda: len(_events(path)) >= 4, 20)
    finally:
        sidecar.stop(timeout=5)
    with _reconcile(sqlite_url, path) as after:
        assert after.clean, list(after.discrepancies())
        assert after.matched == 2
    fail = next(e for e in _events(path) if e["eventType"] == "FAIL")
    assert fail["run"]["runId"] == hung
    assert catalog_rows(sqlite_url)[hung].status is RunStatus.CRASHED
    assert done


def test_the_new_kind_is_a_convention() -> None:
    assert "missing_terminal_event" in DISCREPANCY_KINDS
