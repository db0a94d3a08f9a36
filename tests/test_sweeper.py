"""The sweeper: which RUNNING runs it closes, how, and which it must leave alone.

Real catalogs (SQLite and PostgreSQL), real processes for the pid checks, a frozen clock for
the heartbeat threshold (no sleeping through real minutes).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from odibi_observe._crash import utc
from odibi_observe._otlp_json import read_spans
from odibi_observe.catalog import CatalogStore
from odibi_observe.conventions import CRASH_HEARTBEAT_LOST, RunStatus, Source
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


def running(store: CatalogStore, **changes: Any) -> RunRecord:
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
def store(catalog_url: str) -> Iterator[CatalogStore]:
    s = CatalogStore(catalog_url)
    s.ensure_schema()
    yield s
    s.dispose()


def frozen(store: CatalogStore, **kwargs: object) -> Sweeper:
    return Sweeper(store, clock=lambda: NOW_NS, host="this-host", **kwargs)  # type: ignore[arg-type]


def test_heartbeat_threshold_with_a_frozen_clock(store: CatalogStore) -> None:
    stale = running(
        store,
        host="other",
        started_ns=NOW_NS - 60 * MINUTE_NS,
        heartbeat_ns=NOW_NS - 10 * MINUTE_NS,
    )
    fresh = running(
        store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS, heartbeat_ns=NOW_NS - 1 * MINUTE_NS
    )
    silent = running(store, host="other", started_ns=NOW_NS - 10 * MINUTE_NS)
    young = running(store, host="other", started_ns=NOW_NS - 1 * MINUTE_NS)

    result = frozen(store, heartbeat_timeout=300, all_hosts=True).sweep()

    assert result.checked == 4
    assert {r.run_id: r.status for r in result.closed} == {
        stale.run_id: RunStatus.CRASHED,
        silent.run_id: RunStatus.CRASHED,
    }
    assert result.reasons == {HEARTBEAT_TIMEOUT: 1, NO_HEARTBEAT: 1}
    assert store.get(fresh.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]
    assert store.get(young.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]
    closed = store.get(stale.run_id)
    assert closed is not None and closed.status is RunStatus.CRASHED
    # The end is the last sign of life, not the moment of the sweep.
    assert closed.ended_ns == stale.heartbeat_ns
    assert closed.source is Source.SIDECAR
    assert closed.error_type == CRASH_HEARTBEAT_LOST  # another host: nothing else is visible
    assert "no heartbeat" in (closed.error_message or "")
    assert "(heartbeat); closed as CRASHED by the sidecar's sweeper" in (closed.error_message or "")
    # No heartbeat: the start is the last sign of life — not the moment of the sweep, which
    # would make the duration depend on when the sweeper happened to look.
    silent_row = store.get(silent.run_id)
    assert silent_row is not None and silent_row.ended_ns == silent.started_ns
    assert "(start)" in (silent_row.error_message or "")


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
    assert f"process {pid} on host this-host was not alive at " in (
        store.get(run.run_id).error_message or ""  # type: ignore[union-attr]
    )


def test_a_live_process_is_trusted_even_without_heartbeats(store: CatalogStore) -> None:
    """A long synchronous step in a live process is not a crash, whatever its heartbeat age."""
    run = running(
        store,
        host="this-host",
        pid=os.getpid(),
        started_ns=time.time_ns(),
        heartbeat_ns=time.time_ns() - 600 * MINUTE_NS,
    )
    assert Sweeper(store, host="this-host", heartbeat_timeout=1).sweep().closed == []
    assert store.get(run.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]


def test_a_reused_pid_is_detected_by_process_start_time(store: CatalogStore) -> None:
    """This process's pid, but the run "started" an hour before this process did."""
    run = running(
        store, host="this-host", pid=os.getpid(), started_ns=time.time_ns() - 60 * MINUTE_NS
    )
    result = Sweeper(store, host="this-host").sweep()
    assert [r.run_id for r in result.closed] == [run.run_id]
    assert result.reasons == {PID_REUSED: 1}


def test_pid_check_off_falls_back_to_heartbeats(store: CatalogStore) -> None:
    """Another pid namespace (a sidecar container) cannot see the pipeline's pids."""
    run = running(
        store,
        host="this-host",
        pid=dead_pid(),
        started_ns=NOW_NS - MINUTE_NS,
        heartbeat_ns=NOW_NS - 1_000_000_000,
    )
    assert frozen(store, pid_check=False, heartbeat_timeout=300).sweep().closed == []
    assert store.get(run.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]


def test_a_run_that_finished_meanwhile_keeps_its_real_ending(store: CatalogStore) -> None:
    run = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS)
    sweeper = frozen(store, all_hosts=True, heartbeat_timeout=60)
    doomed = sweeper.crashed_record(run, NO_HEARTBEAT, NOW_NS)
    # The real ending lands between the sweeper's check and its write.
    store.upsert(
        [
            RunEvent(
                EventKind.FINISHED,
                run.finished(
                    status=RunStatus.SUCCESS, ended_ns=NOW_NS - 59 * MINUTE_NS, rows_processed=7
                ),
            )
        ]
    )
    assert store.close_running([doomed]) == []
    row = store.get(run.run_id)
    assert row is not None and row.status is RunStatus.SUCCESS and row.rows_processed == 7


def test_dry_run_changes_nothing(store: CatalogStore) -> None:
    run = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS)
    result = frozen(store, all_hosts=True, dry_run=True).sweep()
    assert [r.run_id for r in result.closed] == [run.run_id]
    assert store.get(run.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]


def test_closed_runs_get_a_back_dated_error_span_and_metrics(
    store: CatalogStore, tmp_path: Path
) -> None:
    traces = tmp_path / "traces.jsonl"
    otel = OtelSink(traces_file=str(traces), metrics=False)
    registry = CollectorRegistry()
    prometheus = PrometheusSink(registry)
    run = running(
        store,
        host="other",
        started_ns=NOW_NS - 60 * MINUTE_NS,
        heartbeat_ns=NOW_NS - 30 * MINUTE_NS,
    )

    sweeper = frozen(store, sinks=[otel, prometheus], all_hosts=True, registry=registry)
    assert len(sweeper.sweep().closed) == 1
    otel.shutdown()

    (span,) = [s for s in read_spans(traces) if s.attributes.get("odibi.run_id") == run.run_id]
    assert (span.trace_id, span.span_id) == (run.trace_id, run.span_id)
    assert span.start_ns == run.started_ns  # back-dated to the run's real start
    assert span.end_ns == run.heartbeat_ns
    assert span.attributes["odibi.status"] == "CRASHED"
    assert span.status_code == 2  # STATUS_CODE_ERROR
    assert (
        registry.get_sample_value(
            "odibi_node_runs_total",
            {
                "project": run.project,
                "pipeline": run.pipeline,
                "node": run.node,
                "environment": run.environment,
                "status": "CRASHED",
            },
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "odibi_observe_sweeper_closed_total", {"reason": HEARTBEAT_TIMEOUT}
        )
        == 1
    )
    # A second pass finds nothing left to close and emits nothing more.
    assert sweeper.sweep().closed == []
    assert len([s for s in read_spans(traces) if s.attributes.get("odibi.run_id")]) == 1


def test_settle_runs_after_the_verdicts_and_can_postpone_the_closing(store: CatalogStore) -> None:
    """A process that wrote its ending and died between checks must keep its ending."""
    run = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS)

    def ending_arrives_while_settling(records: object) -> bool:
        store.upsert(
            [
                RunEvent(
                    EventKind.FINISHED,
                    run.finished(status=RunStatus.SUCCESS, ended_ns=NOW_NS - 59 * MINUTE_NS),
                )
            ]
        )
        return True

    sweeper = frozen(store, all_hosts=True, settle=ending_arrives_while_settling)
    assert sweeper.sweep().closed == []
    assert store.get(run.run_id).status is RunStatus.SUCCESS  # type: ignore[union-attr]

    other = running(store, host="other", started_ns=NOW_NS - 60 * MINUTE_NS)
    postponed = frozen(store, all_hosts=True, settle=lambda records: False).sweep()
    assert postponed.closed == [] and postponed.checked == 1
    assert store.get(other.run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]


# -- one end time, whichever path closes the run -------------------------------------------------


def _catalog_with(url: str, record: RunRecord) -> None:
    s = CatalogStore(url)
    s.ensure_schema()
    s.upsert([RunEvent(EventKind.STARTED, record)])
    if record.heartbeat_ns is not None:
        s.upsert([RunEvent(EventKind.HEARTBEAT, record)])
    s.dispose()


def _closed(url: str, run_id: str) -> RunRecord:
    s = CatalogStore(url)
    try:
        record = s.get(run_id)
    finally:
        s.dispose()
    assert record is not None and record.status is RunStatus.CRASHED, record
    return record


def _status(url: str, run_id: str) -> RunStatus | None:
    s = CatalogStore(url)
    try:
        record = s.get(run_id)
    finally:
        s.dispose()
    return None if record is None else record.status


@pytest.mark.parametrize("heartbeat", [True, False], ids=["heartbeat", "no-heartbeat"])
def test_sidecar_sweep_command_and_repair_close_a_run_at_the_same_end(
    tmp_path: Path, heartbeat: bool
) -> None:
    """The same RUNNING run (its process dead, on this host), closed by each of the three
    paths: a real sidecar process's sweeper, ``odibi-observe sweep``, and ``reconcile
    --repair``. All three end it at its last sign of life — the heartbeat 12.3 s after the
    start, or the start itself — in the catalog and in the span, whenever they run."""
    from datetime import timedelta

    from odibi_observe.reconcile import (
        ReconcileOptions,
        open_catalog_source,
        open_trace_source,
        reconcile,
        repair,
    )
    from odibi_observe.reconcile.model import Window
    from odibi_observe.record import ns_to_datetime
    from tests.fault_helpers import Sidecar, spans_in, sweep

    started = (time.time_ns() - 60 * MINUTE_NS) // 1000 * 1000  # the catalog keeps µs
    beat = started + 12_300_000_000 if heartbeat else None
    run = make_record(
        status=RunStatus.RUNNING,
        host=socket.gethostname(),
        pid=dead_pid(),
        started_ns=started,
        heartbeat_ns=beat,
    )
    expected_end = beat if beat is not None else started
    urls = {path: f"sqlite:///{tmp_path / path}.db" for path in ("sidecar", "sweep", "repair")}
    traces = {path: tmp_path / f"{path}.jsonl" for path in urls}
    for url in urls.values():
        _catalog_with(url, run)

    with Sidecar(
        urls["sidecar"],
        tmp_path / "spool",
        log=tmp_path / "sidecar.log",
        traces_file=traces["sidecar"],
        args=["--sweep-interval", "0.2"],
    ):
        deadline = time.monotonic() + 30
        while _status(urls["sidecar"], run.run_id) is RunStatus.RUNNING:
            assert time.monotonic() < deadline, (tmp_path / "sidecar.log").read_text()
            time.sleep(0.1)
    sweep(urls["sweep"], log=tmp_path / "sweep.log", traces_file=traces["sweep"])
    (tmp_path / "none.jsonl").touch()
    window = Window.between(
        ns_to_datetime(started - MINUTE_NS), ns_to_datetime(time.time_ns()), grace=timedelta(0)
    )
    with reconcile(
        open_catalog_source(urls["repair"]),
        [open_trace_source(f"otlp-json:{tmp_path / 'none.jsonl'}")],
        window,
        ReconcileOptions(crash_after=timedelta(minutes=1)),
    ) as result:
        summary = repair(
            result,
            open_catalog_source(urls["repair"]),
            apply=True,
            repair_traces=f"otlp-json:{traces['repair']}",
        )
    assert summary.statuses["applied"] == 1, summary

    closed = {path: _closed(url, run.run_id) for path, url in urls.items()}
    assert {p: r.ended_ns for p, r in closed.items()} == dict.fromkeys(urls, expected_end)
    assert {p: r.duration_ms for p, r in closed.items()} == dict.fromkeys(
        urls, (expected_end - started + 500_000) // 1_000_000
    )
    kind = "heartbeat" if heartbeat else "start"
    for path, record in closed.items():
        message = record.error_message or ""
        assert f"process {run.pid} on host {run.host}" in message, (path, message)
        closer = {
            "sidecar": "the sidecar's sweeper",
            "sweep": "odibi-observe sweep",
            "repair": "reconciliation",
        }[path]
        assert (
            f"; last sign of life {utc(expected_end)} ({kind}); closed as CRASHED by "
            f"{closer}, ended at its last sign of life" in message
        ), (path, message)
        (span,) = [s for s in spans_in(traces[path]) if s.attributes.get("odibi.run_id")]
        assert (span.start_ns, span.end_ns) == (started, expected_end), path
        assert span.attributes["odibi.status"] == "CRASHED"


# -- waiting for the catalog: up to the verdicts, not until the spool is empty -------------------


def test_the_wait_is_for_the_dead_runs_writers_not_for_an_empty_spool(tmp_path: Path) -> None:
    """Three writers: the dead run's own (pid 4242, its last frame torn by the death), a
    custom-id writer (it names no process, so it is waited for up to the mark) and a live
    pipeline of another pid that keeps appending. The check is satisfied once the catalog
    cursor has the dead writer's valid frames and the custom writer's up to the mark — with
    the busy pipeline's frames still unread, so the spool's backlog is never 0."""
    from odibi_observe.sidecar.sweeper import spooled_so_far_ingested
    from odibi_observe.spool import Spool

    directory = tmp_path / "spool"
    consumer = Spool(directory, fsync="never")
    catalog = consumer.cursor("catalog")
    dead = Spool(directory, writer_id="vm-4242-1000", fsync="never")
    custom = Spool(directory, writer_id="custom-writer", fsync="never")
    busy = Spool(directory, writer_id="vm-5151-2000", fsync="never")
    dead.append_many([b"dead-1", b"dead-2"])
    dead.close()
    (segment,) = directory.glob("vm-4242-1000.*")
    with open(segment, "ab") as handle:
        handle.write(b"\xa7OSF\x00")  # a frame cut short by the death: never acknowledged
    custom.append_many([b"custom-1", b"custom-2"])
    busy.append_many([b"busy-1", b"busy-2", b"busy-3"])

    caught_up = spooled_so_far_ingested(consumer, "catalog", [make_record(pid=4242)])
    custom.append(b"custom-3")  # after the verdicts: not waited for
    assert not caught_up()
    catalog.ack(catalog.read(2, writer="custom-writer"))
    assert not caught_up()  # the dead writer's frames are not in yet
    catalog.ack(catalog.read(10, writer="vm-4242-1000"))
    assert caught_up()
    assert catalog.backlog() == 4  # custom-3 and the busy pipeline's: the spool need not empty
    for spool in (custom, busy, consumer):
        spool.close()
