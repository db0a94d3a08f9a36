"""The sweeper: which RUNNING runs it closes, how, and which it must leave alone.

Real catalogs (SQLite and PostgreSQL), real processes for the pid checks, a frozen clock for
the heartbeat threshold (no sleeping through real minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from odibi_observe.catalog import CatalogStore
from odibi_observe.conventions import RunStatus, Source
from odibi_observe.otlp_json import read_spans
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sidecar.sweeper import (
    HEARTBEAT_TIMEOUT,
    NO_HEARTBEAT,
    PID_REUSED,
    PROCESS_GONE,
    Sweeper,
)
from odibi_observe.sinks.otel import OtelSink
from odibi_observe.sinks.prometheus import PrometheusSink
from tests.helpers import make_record

MINUTE_NS = 60 * 10**9
NOW_NS = 1_780_000_000 * 10**9  # a fixed "now" for the frozen clock


def running(store: CatalogStore, **changes: object) -> RunRecord:
    """Insert a RUNNING row (as a node's start would) and return its record."""
    record = make_record(status=RunStatus.RUNNING, **changes)
    store.upsert([RunEvent(EventKind.STARTED, record)])
    return record


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def store(catalog_url: str) -> CatalogStore:
    s = CatalogStore(catalog_url)
    s.ensure_schema()
    yield s
    s.dispose()


def frozen(store: CatalogStore, **kwargs: object) -> Sweeper:
    return Sweeper(store, clock=lambda: NOW_NS, host="this-host", **kwargs)  # type: ignore[arg-type]


def test_heartbeat_threshold_with_a_frozen_clock(store: CatalogStore) -> None:
    stale = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS,
                    heartbeat_ns=NOW_NS - 10 * MINUTE_NS)
    fresh = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS,
                    heartbeat_ns=NOW_NS - 1 * MINUTE_NS)
    silent = running(store, host="other", started_ns=NOW_NS - 10 * MINUTE_NS)
    young = running(store, host="other", started_ns=NOW_NS - 1 * MINUTE_NS)

    result = frozen(store, heartbeat_timeout=300, all_hosts=True).sweep()

    assert result.checked == 4
    assert {r.run_id: r.status for r in result.closed} == {
        stale.run_id: RunStatus.CRASHED, silent.run_id: RunStatus.CRASHED}
    assert result.reasons == {HEARTBEAT_TIMEOUT: 1, NO_HEARTBEAT: 1}
    assert store.get(fresh.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]
    assert store.get(young.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]
    closed = store.get(stale.run_id)
    assert closed is not None and closed.status is RunStatus.CRASHED
    # The end is the last sign of life, not the moment of the sweep.
    assert closed.ended_ns == stale.heartbeat_ns
    assert closed.source is Source.SIDECAR
    assert closed.error_type == "ProcessCrashed"
    assert "no heartbeat" in (closed.error_message or "")
    silent_row = store.get(silent.run_id)
    assert silent_row is not None and silent_row.ended_ns == NOW_NS


def test_other_hosts_are_left_alone_unless_asked(store: CatalogStore) -> None:
    other = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS)
    assert frozen(store, heartbeat_timeout=60).sweep().closed == []
    assert store.get(other.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]


def test_a_dead_pid_on_this_host_is_closed(store: CatalogStore) -> None:
    pid = dead_pid()
    run = running(store, host="this-host", pid=pid, started_ns=time.time_ns())
    result = Sweeper(store, host="this-host", heartbeat_timeout=3600).sweep()
    assert [r.run_id for r in result.closed] == [run.run_id]
    assert result.reasons == {PROCESS_GONE: 1}
    assert f"process {pid} on this-host is no longer running" in (
        store.get(run.run_id).error_message or "")  # type: ignore[union-attr]


def test_a_live_process_is_trusted_even_without_heartbeats(store: CatalogStore) -> None:
    """A long synchronous step in a live process is not a crash, whatever its heartbeat age."""
    run = running(store, host="this-host", pid=os.getpid(), started_ns=time.time_ns(),
                  heartbeat_ns=time.time_ns() - 600 * MINUTE_NS)
    assert Sweeper(store, host="this-host", heartbeat_timeout=1).sweep().closed == []
    assert store.get(run.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]


def test_a_reused_pid_is_detected_by_process_start_time(store: CatalogStore) -> None:
    """This process's pid, but the run "started" an hour before this process did."""
    run = running(store, host="this-host", pid=os.getpid(),
                  started_ns=time.time_ns() - 60 * MINUTE_NS)
    result = Sweeper(store, host="this-host").sweep()
    assert [r.run_id for r in result.closed] == [run.run_id]
    assert result.reasons == {PID_REUSED: 1}


def test_pid_check_off_falls_back_to_heartbeats(store: CatalogStore) -> None:
    """Another pid namespace (a sidecar container) cannot see the pipeline's pids."""
    run = running(store, host="this-host", pid=dead_pid(), started_ns=NOW_NS - MINUTE_NS,
                  heartbeat_ns=NOW_NS - 1_000_000_000)
    assert frozen(store, pid_check=False, heartbeat_timeout=300).sweep().closed == []
    assert store.get(run.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]


def test_a_run_that_finished_meanwhile_keeps_its_real_ending(store: CatalogStore) -> None:
    run = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS)
    sweeper = frozen(store, all_hosts=True, heartbeat_timeout=60)
    doomed = sweeper.crashed_record(run, NO_HEARTBEAT, NOW_NS)
    # The real ending lands between the sweeper's check and its write.
    store.upsert([RunEvent(EventKind.FINISHED, run.finished(
        status=RunStatus.SUCCESS, ended_ns=NOW_NS - 59 * MINUTE_NS, rows_processed=7))])
    assert store.close_running([doomed]) == []
    row = store.get(run.run_id)
    assert row is not None and row.status is RunStatus.SUCCESS and row.rows_processed == 7


def test_dry_run_changes_nothing(store: CatalogStore) -> None:
    run = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS)
    result = frozen(store, all_hosts=True, dry_run=True).sweep()
    assert [r.run_id for r in result.closed] == [run.run_id]
    assert store.get(run.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]


def test_closed_runs_get_a_back_dated_error_span_and_metrics(
        store: CatalogStore, tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    otel = OtelSink(traces_file=str(traces), metrics=False)
    registry = CollectorRegistry()
    prometheus = PrometheusSink(registry)
    run = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS,
                  heartbeat_ns=NOW_NS - 30 * MINUTE_NS)

    sweeper = frozen(store, sinks=[otel, prometheus], all_hosts=True, registry=registry)
    assert len(sweeper.sweep().closed) == 1
    otel.shutdown()

    (span,) = [s for s in read_spans(traces) if s.attributes.get("odibi.run_id") == run.run_id]
    assert (span.trace_id, span.span_id) == (run.trace_id, run.span_id)
    assert span.start_ns == run.started_ns  # back-dated to the run's real start
    assert span.end_ns == run.heartbeat_ns
    assert span.attributes["odibi.status"] == "CRASHED"
    assert span.status_code == 2  # STATUS_CODE_ERROR
    assert registry.get_sample_value("odibi_node_runs_total", {
        "project": run.project, "pipeline": run.pipeline, "node": run.node,
        "environment": run.environment, "status": "CRASHED"}) == 1
    assert registry.get_sample_value(
        "odibi_observe_sweeper_closed_total", {"reason": HEARTBEAT_TIMEOUT}) == 1
    # A second pass finds nothing left to close and emits nothing more.
    assert sweeper.sweep().closed == []
    assert len([s for s in read_spans(traces) if s.attributes.get("odibi.run_id")]) == 1


def test_settle_runs_after_the_verdicts_and_can_postpone_the_closing(
        store: CatalogStore) -> None:
    """A process that wrote its ending and died between checks must keep its ending."""
    run = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS)

    def ending_arrives_while_settling() -> bool:
        store.upsert([RunEvent(EventKind.FINISHED, run.finished(
            status=RunStatus.SUCCESS, ended_ns=NOW_NS - 59 * MINUTE_NS))])
        return True

    sweeper = frozen(store, all_hosts=True, settle=ending_arrives_while_settling)
    assert sweeper.sweep().closed == []
    assert store.get(run.run_id).status is RunStatus.SUCCESS  # type: ignore[union-attr]

    other = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS)
    postponed = frozen(store, all_hosts=True, settle=lambda: False).sweep()
    assert postponed.closed == [] and postponed.checked == 1
    assert store.get(other.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]
