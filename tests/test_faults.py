"""Faults, provoked for real: every started run ends up recorded once, identically.

Real pipeline processes (``tests/fault_pipeline.py``), real signals, real PostgreSQL, a real
sidecar process and a real OTLP receiver. Each scenario ends with the same invariant,
:func:`~tests.fault_helpers.assert_every_run_recorded`: every run a pipeline process said it
started is in ``meta_runs`` exactly once with a terminal status, and has exactly one odibi span
whose trace/span ids, times and status are the catalog's; a run whose decorator had finished
shows the status it finished with (no crash invented for it); no row or span exists for a run
nobody started.

Randomness is seeded: a randomized test prints its seed and names it in its assertion
messages; ``ODIBI_OBSERVE_FAULT_SEED=<seed>`` replays it. ``ODIBI_OBSERVE_FAULT_KILL_TRIALS``
raises the number of SIGKILL trials for a longer soak. Every test here runs in CI (the ``slow``
ones too): none needs more than a few seconds on two cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from odibi_observe.catalog import CatalogStore
from odibi_observe.conventions import CRASH_HEARTBEAT_LOST, RunStatus
from odibi_observe.record import EventKind, RunEvent, datetime_to_ns
from odibi_observe.sidecar.sweeper import HEARTBEAT_TIMEOUT, Sweeper
from odibi_observe.spool import Spool
from tests import fault_helpers
from tests.fault_helpers import (
    FaultFigures,
    Sidecar,
    ThrowawayPostgres,
    assert_every_run_recorded,
    catalog_rows,
    child_env,
    eventually,
    expect_line,
    kill_own,
    metric_sum,
    note_time_to_crashed,
    own_process,
    pipeline,
    read_metrics_file,
    read_started,
    read_started_glob,
    reset_figures,
    small_tmpfs,
    spans_in,
    status_counts,
    sweep,
    throwaway_postgres_or_skip,
)
from tests.otlp_receiver import OtlpReceiver

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not hasattr(os, "fork") or not os.path.exists("/proc/self/stat"),
        reason="real signals, fork and /proc: Linux",
    ),
]

RUNS_TOTAL = "odibi_node_runs_total"


@pytest.fixture
def seed() -> int:
    """This test's random seed (``ODIBI_OBSERVE_FAULT_SEED`` replays one)."""
    value = int(os.environ.get("ODIBI_OBSERVE_FAULT_SEED") or random.randrange(2**32))
    print(f"fault seed: ODIBI_OBSERVE_FAULT_SEED={value}")
    return value


@pytest.fixture(scope="session")
def private_pg() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of this session alone, which the outage test stops and starts."""
    server = throwaway_postgres_or_skip()
    yield server
    server.destroy()


@pytest.fixture(autouse=True)
def figures(request: pytest.FixtureRequest) -> Iterator[FaultFigures]:
    """This test's figures; with ``ODIBI_OBSERVE_FAULT_SUMMARY=PATH`` appended to PATH as one
    JSON line (``python -m tests.fault_summary`` runs the suite so and prints the table)."""
    current = reset_figures()
    began = time.monotonic()
    yield current
    path = os.environ.get("ODIBI_OBSERVE_FAULT_SUMMARY")
    if path:
        line = {
            "test": request.node.nodeid,
            "seconds": round(time.monotonic() - began, 1),
            **dataclasses.asdict(fault_helpers.FIGURES),
        }
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


def _catalog_counts(url: str) -> dict[str, int]:
    return dict(Counter(r["status"] for r in catalog_rows(url)))


def _node_runs(samples: dict, status: str | None = None) -> float:  # type: ignore[type-arg]
    labels = {} if status is None else {"status": status}
    return metric_sum(samples, RUNS_TOTAL, **labels)


def _assert_metrics_match_catalog(sidecar: Sidecar, url: str, context: str) -> None:
    """The sidecar's odibi_node_runs_total, by status, equals the catalog's rows by status."""
    samples = sidecar.metrics()
    catalog = _catalog_counts(url)
    metrics = {s: int(_node_runs(samples, s)) for s in ("SUCCESS", "FAILURE", "CRASHED")}
    assert {k: v for k, v in metrics.items() if v} == catalog, (
        f"{context}: metrics {metrics} != catalog {catalog}"
    )


# -- SIGKILL at random points ------------------------------------------------------------------

#: ``ODIBI_OBSERVE_FAULT_KILL_TRIALS=600`` soaks longer (rounded down to KILL_PARALLEL).
KILL_TRIALS = max(60, int(os.environ.get("ODIBI_OBSERVE_FAULT_KILL_TRIALS") or 120))
KILL_PARALLEL = 12


@pytest.mark.slow  # still run by CI: scripts/test.sh deselects no marker
def test_sigkill_at_random_points_every_started_run_is_recorded_once(
    pg_url: str, tmp_path: Path, seed: int
) -> None:
    """120 pipeline processes (sidecar mode), 12 at a time, SIGKILLed at seeded random moments
    while they run nodes back to back (random 0-30 ms bodies, 20 % failures, heartbeats every
    100 ms): 10 % within 50 ms of their start, the rest 0-150 ms after their first node began,
    so the kill lands in start-up, in a start, in a body, in an end, between nodes. One
    sidecar delivers and sweeps (every 50 ms: sweeps racing the pump) all the while.
    Afterwards every started run is in the catalog once, terminal, with one span carrying its
    ids; runs whose decorator returned keep their real status; the sidecar's
    odibi_node_runs_total equals the catalog by status.
    """
    rng = random.Random(seed)
    spool, traces, started_dir = tmp_path / "spool", tmp_path / "traces.jsonl", tmp_path / "s"
    started_dir.mkdir()
    log = tmp_path / "log.txt"
    with Sidecar(
        pg_url,
        spool,
        log=log,
        traces_file=traces,
        args=["--sweep-interval", "0.05", "--gc-interval", "1"],
    ) as sidecar:
        zygote = pipeline(
            [
                "zygote",
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--started-dir",
                str(started_dir),
                "--heartbeat",
                "0.1",
                "--sleep",
                "0.03",
                "--fail-rate",
                "0.2",
            ],
            log=log,
            stdin=True,
        )
        alive: dict[int, int] = {}  # pid -> pidfd: a signal can never reach a reused pid
        killed_at: dict[int, float] = {}
        in_node_trials = 0
        try:
            expect_line(zygote, "zygote ready", log)
            assert zygote.stdin is not None
            for batch in range(KILL_TRIALS // KILL_PARALLEL):
                # pid -> [started file, delay, kill at (None: after the first node began)]
                plan: dict[int, list] = {}  # type: ignore[type-arg]
                for k in range(KILL_PARALLEL):
                    trial = batch * KILL_PARALLEL + k
                    zygote.stdin.write(f"spawn {trial} {rng.randrange(2**31)}\n")
                    zygote.stdin.flush()
                    pid = int(expect_line(zygote, "spawned", log).split()[2])
                    alive[pid] = own_process(pid, parent=zygote.pid)
                    if rng.random() < 0.1:  # early: during start-up or the first node
                        plan[pid] = [None, 0.0, time.monotonic() + rng.uniform(0.002, 0.05)]
                    else:  # a random moment once nodes are running
                        in_node_trials += 1
                        plan[pid] = [
                            started_dir / f"trial-{trial}.log",
                            rng.uniform(0.0, 0.15),
                            None,
                        ]
                deadline = time.monotonic() + 20
                while plan:
                    now = time.monotonic()
                    assert now < deadline, f"seed={seed}: children never started a node"
                    for pid, entry in list(plan.items()):
                        path, delay, kill_at = entry
                        if kill_at is None and path.exists() and path.stat().st_size:
                            kill_at = entry[2] = now + delay
                        if kill_at is not None and now >= kill_at:
                            kill_own(alive.pop(pid))
                            killed_at[pid] = time.time()
                            del plan[pid]
                    time.sleep(0.001)
            zygote.stdin.write("exit\n")
            zygote.stdin.flush()
            assert zygote.wait(10) == 0
        finally:
            for handle in alive.values():  # a failed test must not leave children looping
                kill_own(handle)
            if zygote.poll() is None:
                zygote.kill()
                zygote.wait(10)

        started = read_started_glob(str(started_dir / "trial-*.log"))
        context = f"seed={seed}"

        def recorded() -> dict:  # type: ignore[type-arg]
            return assert_every_run_recorded(
                pg_url,
                spans_in(traces),
                started.run_ids,
                ended=started.ended,
                pids=started.pids,
                max_unlisted=KILL_TRIALS,
                context=context,
            )

        rows = eventually(recorded, timeout=45)
        eventually(lambda: _assert_metrics_match_catalog(sidecar, pg_url, context), timeout=10)
    counts = status_counts(rows)
    print(f"{len(rows)} runs: {counts}")
    fault_helpers.FIGURES.trials = KILL_TRIALS
    note_time_to_crashed(rows.values(), killed_at)
    # The test is only worth something if the kills really landed inside nodes.
    assert counts.get("CRASHED", 0) >= in_node_trials // 2, f"{context}: {counts}"
    assert counts.get("SUCCESS", 0) > 0 and counts.get("FAILURE", 0) > 0, counts
    # One unlisted run at most per killed process (killed between its start event and its
    # started-file line), and it must have been closed as crashed.
    unlisted = [r for rid, r in rows.items() if rid not in started.pids]
    assert max(Counter(r["pid"] for r in unlisted).values(), default=0) <= 1, unlisted
    assert {r["status"] for r in unlisted} <= {"CRASHED"}, unlisted


# -- a crashed run closed on schedule while a busy writer keeps the spool full -----------------

SWEEP_INTERVAL = 2.0
#: What closing may take beyond one interval: the pass itself (a catalog query, the dead
#: writer's tail, the close) on two shared cores with the busy writer and the pump running.
SWEEP_SLACK = 3.0


@pytest.mark.slow  # still run by CI: scripts/test.sh deselects no marker
def test_killed_run_is_crashed_on_schedule_while_a_busy_writer_keeps_the_backlog_up(
    pg_url: str, tmp_path: Path, seed: int
) -> None:
    """A pipeline (sidecar mode) runs nodes back to back with no pause — the spool's catalog
    backlog is never 0 while it runs — and a second pipeline, inside a long node, is
    SIGKILLed. The sidecar (sweep interval 2 s) closes the killed run as CRASHED within one
    interval plus 3 s of slack: it waits only for the dead writer's spooled events, not for
    the busy writer's. Afterwards no run that finished is CRASHED (each has the status its
    decorator finished with), every run is recorded once, and the killed one is CRASHED."""
    spool, traces, log = tmp_path / "spool", tmp_path / "traces.jsonl", tmp_path / "log.txt"
    busy_file, victim_file, stop = tmp_path / "busy", tmp_path / "victim", tmp_path / "stop"
    with Sidecar(
        pg_url, spool, log=log, traces_file=traces, args=["--sweep-interval", str(SWEEP_INTERVAL)]
    ) as sidecar:
        busy = pipeline(
            [
                "loop",
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--started",
                str(busy_file),
                "--fail-rate",
                "0.1",
                "--spool-fsync",
                "never",
                "--started-fsync",
                "never",
                "--stop-file",
                str(stop),
                "--seed",
                str(seed),
            ],
            log=log,
        )
        victim = pipeline(
            [
                "hang",
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--heartbeat",
                "0.2",
                "--started",
                str(victim_file),
                "--stop-file",
                str(tmp_path / "never"),
            ],
            log=log,
        )
        try:
            expect_line(busy, "ready", log)
            expect_line(victim, "ready", log)
            (killed,) = read_started([victim_file]).order

            def victim_running() -> None:
                rows = {r["run_id"]: r["status"] for r in catalog_rows(pg_url)}
                assert rows.get(killed) == "RUNNING", rows.get(killed)

            eventually(victim_running, timeout=20)
            time.sleep(0.5)  # a heartbeat or two of the victim in the spool
            victim.send_signal(signal.SIGKILL)
            killed_at = time.time()
            victim.wait(10)
            busy_before = len(read_started([busy_file]).order)
            backlog_seen: list[float] = []

            def victim_crashed() -> None:
                backlog_seen.append(
                    metric_sum(
                        sidecar.metrics(), "odibi_observe_spool_backlog_events", sink="catalog"
                    )
                )
                rows = {r["run_id"]: r for r in catalog_rows(pg_url)}
                assert rows[killed]["status"] == "CRASHED", rows[killed]["status"]

            eventually(victim_crashed, timeout=SWEEP_INTERVAL + SWEEP_SLACK + 30, interval=0.1)
            waited = time.time() - killed_at
            busy_during = len(read_started([busy_file]).order) - busy_before
        finally:
            stop.touch()
            if victim.poll() is None:
                victim.kill()
            assert busy.wait(30) == 0, log.read_text()[-2000:]
        started = read_started([busy_file, victim_file])
        rows = eventually(
            lambda: assert_every_run_recorded(
                pg_url,
                spans_in(traces),
                started.run_ids,
                ended={**started.ended, killed: "CRASHED"},
                pids=started.pids,
                context=f"seed={seed}",
            ),
            timeout=120,
        )
    crashed = note_time_to_crashed([rows[killed]], {victim.pid: killed_at})
    fault_helpers.FIGURES.trials = 1
    rate = busy_during / waited
    fault_helpers.FIGURES.note = (
        f"busy writer {rate:.0f} runs/s while the killed run waited; killed run CRASHED "
        f"{waited:.2f} s after the kill (sweep interval {SWEEP_INTERVAL:g} s); catalog "
        f"backlog up to {max(backlog_seen):.0f} events meanwhile"
    )
    print(
        f"killed run CRASHED after {waited:.2f} s (catalog close {crashed}); busy writer "
        f"{rate:.0f} runs/s meanwhile; catalog backlog seen {backlog_seen[:3]}..."
        f"{backlog_seen[-3:]}; {len(rows)} runs: {status_counts(rows)}"
    )
    # Reaped (victim.wait) before the sweep: the exit status is gone, nothing else visible.
    assert rows[killed]["error_type"] == CRASH_HEARTBEAT_LOST
    assert status_counts(rows).get("CRASHED") == 1, status_counts(rows)
    assert max(backlog_seen) > 0, "the busy writer never kept the catalog busy: no load"
    assert waited <= SWEEP_INTERVAL + SWEEP_SLACK, (
        f"the killed run took {waited:.1f} s to be CRASHED (interval {SWEEP_INTERVAL} s)"
    )


# -- a crash judged by heartbeats, then the real ending -------------------------------------------


def test_heartbeat_judged_crash_then_real_end_the_real_ending_wins_everywhere(
    pg_url: str, tmp_path: Path
) -> None:
    """A sidecar judging by heartbeats (``--no-pid-check``, timeout 1 s) and a pipeline inside
    a long node, heartbeating every 100 ms, frozen with SIGSTOP: the sweeper closes the run
    as CRASHED and its crash span reaches the (real) OTLP receiver. The process is resumed and
    the node really ends, SUCCESS: the catalog row becomes SUCCESS (the real terminal record
    replaces the verdict); the receiver holds both spans with the run's ids, the crash span
    ending at the last heartbeat and the real one later; the span ledger fed those spans in
    the order they crossed the wire keeps the SUCCESS; and reconciliation — over the ledger,
    and over a traces file holding both spans — finds nothing to repair (before, the ledger
    kept the crash and reconciliation proposed turning the real SUCCESS into CRASHED)."""
    from datetime import timedelta

    from odibi_observe.reconcile import open_catalog_source, open_trace_source, reconcile
    from odibi_observe.reconcile.model import Window
    from odibi_observe.record import ns_to_datetime
    from odibi_observe.sidecar.ledger import SpanLedger

    spool, traces, log = tmp_path / "spool", tmp_path / "traces.jsonl", tmp_path / "log.txt"
    started_file, stop = tmp_path / "s", tmp_path / "stop"
    began = time.time_ns()
    with (
        OtlpReceiver() as receiver,
        Sidecar(
            pg_url,
            spool,
            log=log,
            traces_file=traces,
            otlp_endpoint=receiver.endpoint,
            args=["--sweep-interval", "0.3", "--no-pid-check", "--heartbeat-timeout", "1s"],
        ),
    ):
        proc = pipeline(
            [
                "hang",
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--heartbeat",
                "0.1",
                "--started",
                str(started_file),
                "--stop-file",
                str(stop),
            ],
            log=log,
        )
        try:
            expect_line(proc, "ready", log)
            (run_id,) = read_started([started_file]).order

            def row() -> dict:  # type: ignore[type-arg]
                found = {r["run_id"]: r for r in catalog_rows(pg_url)}.get(run_id)
                assert found is not None, "no catalog row yet"
                return found

            eventually(lambda: _assert(row()["heartbeat_at"] is not None), timeout=15)
            os.kill(proc.pid, signal.SIGSTOP)
            eventually(lambda: _assert(row()["status"] == "CRASHED"), timeout=20)
            crashed_row = row()
            assert crashed_row["error_type"] == CRASH_HEARTBEAT_LOST
            assert "no heartbeat from process" in crashed_row["error_message"]

            def spans() -> list:  # type: ignore[type-arg]
                return [s for s in receiver.spans if s.attributes.get("odibi.run_id") == run_id]

            eventually(lambda: _assert(len(spans()) == 1), timeout=20)
            stop.touch()
            os.kill(proc.pid, signal.SIGCONT)
            assert proc.wait(15) == 0, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        eventually(lambda: _assert(row()["status"] == "SUCCESS"), timeout=20)
        eventually(lambda: _assert(len(spans()) == 2), timeout=20)
    final = row()
    assert final["error_type"] is None and final["error_message"] is None
    crash, real = spans()
    assert (crash.trace_id, crash.span_id) == (real.trace_id, real.span_id)
    assert crash.attributes["odibi.status"] == "CRASHED"
    assert crash.attributes["error.type"] == CRASH_HEARTBEAT_LOST
    assert real.attributes["odibi.status"] == "SUCCESS"
    assert crash.end_ns // 1000 == datetime_to_ns(crashed_row["ended_at"]) // 1000
    assert real.end_ns > crash.end_ns
    assert real.end_ns // 1000 == datetime_to_ns(final["ended_at"]) // 1000

    ledger = SpanLedger(pg_url)
    for span in (crash, real):  # as the sidecar's receiver would get them, one export each
        ledger.store([span])
    ledger.dispose()
    window = Window.between(
        ns_to_datetime(began - 60 * 10**9), ns_to_datetime(time.time_ns()), grace=timedelta(0)
    )
    for spec in (f"ledger:{pg_url}", f"otlp-json:{traces}"):
        with reconcile(open_catalog_source(pg_url), [open_trace_source(spec)], window) as result:
            assert (result.matched, dict(+result.by_kind)) == (1, {}), (spec, result.by_kind)
    fault_helpers.FIGURES.runs, fault_helpers.FIGURES.false_crashes = 1, 0
    fault_helpers.FIGURES.crashed = 0


# -- SIGTERM, os._exit, an uncaught exception in a thread ---------------------------------------


@pytest.mark.parametrize("mode", ["inline", "background", "sidecar"])
def test_sigterm_os_exit_and_thread_exception_every_run_recorded(
    mode: str, pg_url: str, tmp_path: Path
) -> None:
    """Three processes per mode: one SIGTERMed inside a node (CRASHED, error_type SIGTERM, by
    the process itself, which still dies of SIGTERM); one whose node calls os._exit(3)
    (RUNNING until ``odibi-observe sweep`` closes it as CRASHED with a back-dated span); one
    whose node raises uncaught in a thread (FAILURE, traceback still printed, the process goes
    on). In-process modes write the catalog and a traces file themselves; sidecar mode only
    spools, and ``sweep --spool-dir`` delivers.
    """
    traces, spool = tmp_path / "traces.jsonl", tmp_path / "spool"
    config = ["--mode", mode]
    if mode == "sidecar":
        config += ["--spool-dir", str(spool)]
    else:
        config += ["--catalog", pg_url, "--traces-file", str(traces)]
    procs = {}
    for command in ("sigterm", "os_exit", "thread_exception"):
        procs[command] = pipeline(
            [command, *config, "--started", str(tmp_path / command)],
            log=tmp_path / f"{command}.err",
        )
    for command, proc in procs.items():
        expect_line(proc, "ready", tmp_path / f"{command}.err")
    procs["sigterm"].send_signal(signal.SIGTERM)
    codes = {command: proc.wait(30) for command, proc in procs.items()}
    assert codes == {"sigterm": -signal.SIGTERM, "os_exit": 3, "thread_exception": 0}
    stderr = (tmp_path / "thread_exception.err").read_text()
    assert "Exception in thread worker" in stderr
    assert "RuntimeError: worker thread blew up" in stderr  # the traceback is untouched

    output = sweep(
        pg_url,
        log=tmp_path / "sweep.log",
        traces_file=traces,
        spool_dir=spool if mode == "sidecar" else None,
    )
    assert "1 closed as CRASHED" in output, output

    started = read_started(tmp_path / c for c in procs)
    rows = assert_every_run_recorded(
        pg_url,
        spans_in(traces),
        started.run_ids,
        ended=started.ended,
        pids=started.pids,
        context=mode,
    )
    by_command = {c: read_started([tmp_path / c]).order for c in procs}
    assert len(rows) == 7

    def row(command: str, index: int) -> tuple[str, str | None]:
        r = rows[by_command[command][index]]
        return r["status"], r["error_type"]

    assert row("sigterm", 0) == ("SUCCESS", None)
    assert row("sigterm", 1) == ("CRASHED", "SIGTERM")
    assert row("os_exit", 0) == ("SUCCESS", None)
    assert row("os_exit", 1) == ("CRASHED", CRASH_HEARTBEAT_LOST)  # reaped before the sweep
    assert row("thread_exception", 0) == ("SUCCESS", None)
    assert row("thread_exception", 1) == ("FAILURE", "RuntimeError")
    assert row("thread_exception", 2) == ("SUCCESS", None)


# -- PostgreSQL down, then up ------------------------------------------------------------------


@pytest.mark.slow  # still run by CI: scripts/test.sh deselects no marker
def test_catalog_outage_runs_land_after_the_restart_none_lost_none_duplicated(
    private_pg: ThrowawayPostgres, tmp_path: Path, seed: int
) -> None:
    """A sidecar-mode pipeline runs a node every ~25 ms while the catalog's PostgreSQL server
    (a private one) is stopped for 2.5 s and started again. During the outage the spans keep
    flowing (the catalog's cursor alone waits) and the catalog sink's errors are counted;
    after the restart the catalog catches up: every run once, nothing lost, no duplicate.
    """
    url = private_pg.create_database(f"outage_{uuid.uuid4().hex[:8]}")
    spool, traces, started_file = tmp_path / "spool", tmp_path / "traces.jsonl", tmp_path / "s"
    stop, log = tmp_path / "stop", tmp_path / "log.txt"
    with Sidecar(
        url, spool, log=log, traces_file=traces, args=["--sweep-interval", "0.5"]
    ) as sidecar:
        child = pipeline(
            [
                "loop",
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--started",
                str(started_file),
                "--sleep",
                "0.01",
                "--gap",
                "0.015",
                "--fail-rate",
                "0.1",
                "--stop-file",
                str(stop),
                "--seed",
                str(seed),
            ],
            log=log,
        )
        try:
            expect_line(child, "ready", log)
            time.sleep(1.0)
            private_pg.stop()
            try:
                before = len(read_started([started_file]).pids)
                spans_before = len(spans_in(traces))
                time.sleep(2.5)
                during = len(read_started([started_file]).pids) - before
                spans_during = len(spans_in(traces)) - spans_before
                errors = metric_sum(
                    sidecar.metrics(), "odibi_observe_sink_errors_total", sink="catalog"
                )
            finally:
                private_pg.start()
            time.sleep(0.5)
            stop.touch()
            assert child.wait(30) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        assert during >= 20, f"only {during} runs started during the outage"
        assert spans_during >= during // 2, "spans stopped while only the catalog was down"
        assert errors >= 1, "the outage was not felt by the catalog sink"
        started = read_started([started_file])
        eventually(
            lambda: assert_every_run_recorded(
                url,
                spans_in(traces),
                started.run_ids,
                ended=started.ended,
                pids=started.pids,
                context=f"seed={seed}",
            ),
            timeout=60,
        )
        eventually(lambda: _assert_metrics_match_catalog(sidecar, url, f"seed={seed}"), 10)
        assert sidecar.proc is not None and sidecar.proc.poll() is None


# -- the OTLP endpoint down, then back ---------------------------------------------------------


def test_otlp_endpoint_down_then_back_spans_resent_with_original_ids_and_times(
    pg_url: str, tmp_path: Path
) -> None:
    """The collector answers 503 while 30 runs happen (sidecar mode) and a 31st pipeline is
    SIGKILLed inside its node: the catalog gets every run meanwhile (the killed one closed as
    CRASHED by the sidecar's sweeper), no span is accepted. When the collector is back, every
    span arrives once — the crash span too, back-dated to its run's start — with the catalog's
    trace/span ids and the runs' original start and end times (all before the collector came
    back)."""
    spool, started_file, log = tmp_path / "spool", tmp_path / "s", tmp_path / "log.txt"
    killed_file = tmp_path / "killed"
    with OtlpReceiver() as receiver:
        receiver.down = True
        with Sidecar(
            pg_url,
            spool,
            log=log,
            otlp_endpoint=receiver.endpoint,
            args=["--sweep-interval", "0.3"],
        ):
            victim = pipeline(
                [
                    "hang",
                    "--mode",
                    "sidecar",
                    "--spool-dir",
                    str(spool),
                    "--started",
                    str(killed_file),
                    "--stop-file",
                    str(tmp_path / "never"),
                ],
                log=log,
            )
            child = pipeline(
                [
                    "loop",
                    "--mode",
                    "sidecar",
                    "--spool-dir",
                    str(spool),
                    "--started",
                    str(started_file),
                    "--nodes",
                    "30",
                    "--fail-rate",
                    "0.2",
                    "--seed",
                    "7",
                ],
                log=log,
            )
            expect_line(victim, "ready", log)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            assert child.wait(30) == 0, log.read_text()[-2000:]
            started = read_started([started_file, killed_file])
            (killed,) = read_started([killed_file]).order
            assert len(started.pids) == 31
            ended = {**started.ended, killed: "CRASHED"}

            def catalog_complete() -> None:
                rows = {r["run_id"]: r["status"] for r in catalog_rows(pg_url)}
                assert rows == ended

            eventually(catalog_complete, timeout=20)
            eventually(lambda: _assert(receiver.refused >= 1), timeout=20)
            assert receiver.spans == []
            back_ns = time.time_ns()
            receiver.down = False
            eventually(
                lambda: assert_every_run_recorded(
                    pg_url,
                    receiver.spans,
                    started.run_ids,
                    ended=ended,
                    pids=started.pids,
                    context="otlp back",
                ),
                timeout=60,
            )
    spans = [s for s in receiver.spans if "odibi.run_id" in s.attributes]
    assert len(spans) == 31
    assert all(s.end_ns < back_ns for s in spans), "span times are not the runs' own"


def _assert(condition: bool) -> None:
    assert condition


# -- the sidecar SIGKILLed and restarted -------------------------------------------------------


@pytest.mark.slow  # still run by CI: scripts/test.sh deselects no marker
def test_sidecar_sigkilled_and_restarted_while_events_flow(
    pg_url: str, tmp_path: Path, seed: int
) -> None:
    """A pipeline (sidecar mode) runs nodes continuously; the sidecar is SIGKILLed mid-stream
    and another started on the same spool 0.5 s later. Asserted: every run once in the catalog,
    terminal, with its real status; its span present with the catalog's ids — the file may hold
    an *identical* replay of a span the first sidecar wrote but had not acknowledged
    (at-least-once), never two different spans. Prometheus counters restart with the process:
    the second sidecar's odibi_node_runs_total counts each run at most once (≤ runs, ≤ catalog
    per status) and at least every run that started after it came up."""
    spool, traces, started_file = tmp_path / "spool", tmp_path / "traces.jsonl", tmp_path / "s"
    stop, log = tmp_path / "stop", tmp_path / "log.txt"
    first = Sidecar(
        pg_url, spool, log=log, traces_file=traces, args=["--sweep-interval", "0.5"]
    ).start()
    child = pipeline(
        [
            "loop",
            "--mode",
            "sidecar",
            "--spool-dir",
            str(spool),
            "--started",
            str(started_file),
            "--sleep",
            "0.01",
            "--gap",
            "0.005",
            "--fail-rate",
            "0.1",
            "--stop-file",
            str(stop),
            "--seed",
            str(seed),
        ],
        log=log,
    )
    second = Sidecar(pg_url, spool, log=log, traces_file=traces, args=["--sweep-interval", "0.5"])
    try:
        expect_line(child, "ready", log)
        eventually(lambda: _assert(_node_runs(first.metrics()) >= 10), timeout=15)
        time.sleep(random.Random(seed).uniform(0.0, 0.3))
        first.kill()
        time.sleep(0.5)
        second.start()
        after_restart = len(read_started([started_file]).order)
        time.sleep(1.0)
        stop.touch()
        assert child.wait(30) == 0
        started = read_started([started_file])
        rows = eventually(
            lambda: assert_every_run_recorded(
                pg_url,
                spans_in(traces),
                started.run_ids,
                ended=started.ended,
                pids=started.pids,
                identical_span_replays=True,
                context=f"seed={seed}",
            ),
            timeout=45,
        )
        samples = second.metrics()
        total = _node_runs(samples)
        late = len(started.order) - after_restart
        assert late >= 10
        assert late <= total <= len(rows), (late, total, len(rows))
        catalog = status_counts(rows)
        for status in ("SUCCESS", "FAILURE", "CRASHED"):
            assert _node_runs(samples, status) <= catalog.get(status, 0), (samples, catalog)
        replays = len(spans_in(traces)) - len(rows)
        print(f"{len(rows)} runs; {replays} identical span replay(s) after the restart")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        second.stop()
        first.stop()


# -- a damaged spool ---------------------------------------------------------------------------


def test_truncated_and_corrupted_spool_frames_are_skipped_and_counted(
    pg_url: str, tmp_path: Path
) -> None:
    """40 runs are spooled by a pipeline that then exits. The spool is damaged: one byte of the
    terminal frame of run 20 is flipped, and the last frame (run 40's end) is cut short. A
    sidecar then delivers: the 38 intact runs keep their real status, the two whose end was
    destroyed are closed as CRASHED by the sweeper (their process is gone), every run once
    with one span, and exactly two damaged frames are counted on /metrics."""
    spool, traces, started_file, log = (
        tmp_path / "spool",
        tmp_path / "traces.jsonl",
        tmp_path / "s",
        tmp_path / "log.txt",
    )
    child = pipeline(
        [
            "loop",
            "--mode",
            "sidecar",
            "--spool-dir",
            str(spool),
            "--started",
            str(started_file),
            "--nodes",
            "40",
            "--spool-fsync",
            "never",
        ],
        log=log,
    )
    assert child.wait(30) == 0, log.read_text()[-2000:]
    started = read_started([started_file])
    assert len(started.order) == 40 and set(started.ended.values()) == {"SUCCESS"}

    (segment,) = [p for p in spool.iterdir() if p.suffix in (".seg", ".open")]
    data = bytearray(segment.read_bytes())
    middle, last = started.order[19], started.order[-1]
    # Each run id occurs once per frame: in its start frame, then in its end frame.
    end_frame = data.find(middle.encode(), data.find(middle.encode()) + 1)
    assert end_frame > 0
    data[end_frame + 3] ^= 0x01
    last_end = data.rfind(last.encode())
    assert last_end > data.find(last.encode())
    del data[last_end + 10 :]  # the last frame, torn
    segment.write_bytes(bytes(data))

    expected = {**started.ended, middle: "CRASHED", last: "CRASHED"}
    with Sidecar(
        pg_url, spool, log=log, traces_file=traces, args=["--sweep-interval", "0.3"]
    ) as sidecar:
        rows = eventually(
            lambda: assert_every_run_recorded(
                pg_url,
                spans_in(traces),
                started.run_ids,
                ended=expected,
                pids=started.pids,
                context="damaged spool",
            ),
            timeout=30,
        )
        assert rows[middle]["error_type"] == rows[last]["error_type"] == CRASH_HEARTBEAT_LOST
        corrupt = metric_sum(sidecar.metrics(), "odibi_observe_spool_corrupt_frames_total")
        assert corrupt == 2


# -- the spool's disk full ---------------------------------------------------------------------


def _spool_limit(
    tmp_path: Path,
) -> tuple[Path, contextlib.AbstractContextManager[object], dict[str, str]]:
    """A spool directory that fills at 256 KiB: a tmpfs as root, else the spool size limit
    (also with ``ODIBI_OBSERVE_FAULT_SIZE_LIMIT=1``)."""
    spool = tmp_path / "spool"
    if (
        os.geteuid() == 0
        and shutil.which("mount")
        and not os.environ.get("ODIBI_OBSERVE_FAULT_SIZE_LIMIT")
    ):
        return spool, small_tmpfs(spool, "256k"), {}
    return spool, contextlib.nullcontext(), {"ODIBI_OBSERVE_SPOOL_MAX_BYTES": str(256 * 1024)}


@pytest.mark.slow  # still run by CI: scripts/test.sh deselects no marker
def test_spool_disk_full_pipeline_keeps_running_and_recovers(pg_url: str, tmp_path: Path) -> None:
    """The sidecar is down while pipelines (sidecar mode) go on: a first one spools 60 runs and
    exits; a second one fills the spool's disk (a 256 KiB tmpfs; the spool size limit when not
    root) and keeps running. It never sees an exception; the rejections are counted
    (odibi_observe_spool_rejected_total, sink errors) and logged, and the refused events wait
    in the bounded retry buffer. The sidecar comes back: it delivers, collects the first
    process's segment, the space returns, the second process's retry buffer drains into the
    spool, and every run of both is recorded once with its real status: nothing dropped."""
    spool, limit, extra = _spool_limit(tmp_path)
    log, textfile, traces, go = (
        tmp_path / "log.txt",
        tmp_path / "child.prom",
        tmp_path / "traces.jsonl",
        tmp_path / "go",
    )
    config = ["--mode", "sidecar", "--spool-dir", str(spool), "--payload", "1000"]
    with limit:
        # The sidecar served this spool before (its cursors exist), then went away.
        Sidecar(pg_url, spool, log=log, traces_file=traces).start().stop()
        earlier = pipeline(
            ["loop", *config, "--started", str(tmp_path / "s1"), "--nodes", "60"],
            log=log,
            env=child_env(**extra),
        )
        assert earlier.wait(30) == 0, log.read_text()[-2000:]
        child = pipeline(
            [
                "loop",
                *config,
                "--started",
                str(tmp_path / "s2"),
                "--nodes",
                "100",
                "--pause-file",
                str(go),
                "--pause-at",
                "80",
                "--textfile",
                str(textfile),
            ],
            log=log,
            env=child_env(**extra),
        )
        try:
            expect_line(child, "ready", log)
            expect_line(child, "paused 80", log)
            paused = read_metrics_file(textfile)
            assert metric_sum(paused, "odibi_observe_spool_rejected_total") > 0
            assert metric_sum(paused, "odibi_observe_sink_errors_total", sink="spool") > 0
            assert metric_sum(paused, "odibi_observe_events_dropped_total") == 0
            assert "rejected" in log.read_text()  # logged, not only counted
            with Sidecar(
                pg_url,
                spool,
                log=log,
                traces_file=traces,
                args=["--sweep-interval", "0.5", "--gc-interval", "0.2"],
            ) as sidecar:
                eventually(lambda: _assert(_node_runs(sidecar.metrics()) >= 60), timeout=20)
                time.sleep(1.5)  # a gc pass after the catalog caught up
                go.touch()
                assert expect_line(child, "done", log) == "done 100"
                assert child.wait(30) == 0
                final = read_metrics_file(textfile)
                assert metric_sum(final, "odibi_observe_events_dropped_total") == 0
                started = read_started([tmp_path / "s1", tmp_path / "s2"])
                assert len(started.order) == 160
                eventually(
                    lambda: assert_every_run_recorded(
                        pg_url,
                        spans_in(traces),
                        started.run_ids,
                        ended=started.ended,
                        pids=started.pids,
                        context="disk full, recovered",
                    ),
                    timeout=45,
                )
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)


def test_spool_disk_full_to_the_end_every_lost_event_is_counted(
    pg_url: str, tmp_path: Path
) -> None:
    """The spool's disk stays full until the pipeline exits: events it could not store are
    lost, but none silently — the spooled events plus odibi_observe_events_dropped_total equal
    the events emitted (two per run), exactly. Every run with a spooled event is then
    recorded once (a run whose end was refused is closed as CRASHED); no other run appears."""
    spool, limit, extra = _spool_limit(tmp_path)
    started_file, textfile, log = tmp_path / "s", tmp_path / "child.prom", tmp_path / "log.txt"
    traces, copy = tmp_path / "traces.jsonl", tmp_path / "spool-copy"
    runs = 150
    with limit:
        child = pipeline(
            [
                "loop",
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--started",
                str(started_file),
                "--nodes",
                str(runs),
                "--payload",
                "2000",
                "--textfile",
                str(textfile),
            ],
            log=log,
            env=child_env(**extra),
        )
        assert expect_line(child, "ready", log) == "ready"
        assert expect_line(child, "done", log) == f"done {runs}"
        assert child.wait(30) == 0
        shutil.copytree(spool, copy)
    metrics = read_metrics_file(textfile)
    dropped = metric_sum(metrics, "odibi_observe_events_dropped_total", sink="spool")
    assert metric_sum(metrics, "odibi_observe_spool_rejected_total") > 0
    assert dropped > 0

    frames: dict[str, list[str]] = {}
    reader = Spool(copy, fsync="never")
    cursor = reader.cursor("audit")
    while entries := cursor.read(1000):
        for entry in entries:
            event = RunEvent.from_json(entry.payload)
            frames.setdefault(event.run_id, []).append(event.kind.value)
    reader.close()
    shutil.rmtree(copy / "cursors")
    spooled = sum(map(len, frames.values()))
    assert spooled + dropped == 2 * runs, (spooled, dropped)

    started = read_started([started_file])
    assert len(started.order) == runs and set(frames) <= started.run_ids
    sweep(pg_url, log=log, spool_dir=copy, traces_file=traces)
    complete = {
        rid: started.ended[rid]
        for rid, kinds in frames.items()
        if EventKind.FINISHED.value in kinds
    }
    rows = assert_every_run_recorded(
        pg_url,
        spans_in(traces),
        set(frames),
        ended=complete,
        pids=started.pids,
        context="disk full to the end",
    )
    assert {rid for rid, r in rows.items() if r["status"] == "CRASHED"} == set(frames) - set(
        complete
    )


# -- fork after configure ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sidecar", "background"])
def test_fork_after_configure_every_childs_runs_recorded_once(
    mode: str, pg_url: str, tmp_path: Path
) -> None:
    """configure(), then multiprocessing with the fork start method: 4 children run 6 nodes
    each (some fail) while the parent's node is open. Every run is recorded once, each row
    carries the pid of the process that ran it, each child has its 6 rows."""
    traces, spool, started_file = tmp_path / "traces.jsonl", tmp_path / "spool", tmp_path / "s"
    log = tmp_path / "log.txt"
    config = ["--mode", mode]
    if mode == "sidecar":
        config += ["--spool-dir", str(spool)]
    else:
        config += ["--catalog", pg_url, "--traces-file", str(traces)]
    child = pipeline(
        ["fork", *config, "--started", str(started_file), "--children", "4", "--nodes", "6"],
        log=log,
    )
    assert child.wait(60) == 0, log.read_text()[-3000:]
    if mode == "sidecar":
        sweep(pg_url, log=log, spool_dir=spool, traces_file=traces)
    started = read_started([started_file])
    assert len(started.order) == 2 + 4 * 6
    rows = assert_every_run_recorded(
        pg_url,
        spans_in(traces),
        started.run_ids,
        ended=started.ended,
        pids=started.pids,
        context=mode,
    )
    per_pid = Counter(r["pid"] for r in rows.values())
    assert len(per_pid) == 5
    assert sorted(per_pid.values()) == [2, 6, 6, 6, 6]
    assert per_pid[child.pid] == 2


# -- the heartbeat threshold, with a frozen clock ----------------------------------------------


def test_frozen_clock_sweeper_closes_the_silent_run_not_the_heartbeating_one(
    pg_url: str, tmp_path: Path
) -> None:
    """Two pipelines (sidecar mode, heartbeats every 100 ms) each in a long node; one is frozen
    with SIGSTOP. Once the other's last heartbeat is ≥ 1 s newer, a sweeper judging by
    heartbeats (no pid check, as across pid namespaces) with a *frozen clock* set just past
    the frozen run's last heartbeat + 5 min — and so before the live run's + 5 min — closes
    the frozen run only (HEARTBEAT_TIMEOUT, ended at its last heartbeat, with its span) and
    leaves the heartbeating run RUNNING, which later ends as SUCCESS. No real minute passes."""
    spool, traces, log = tmp_path / "spool", tmp_path / "traces.jsonl", tmp_path / "log.txt"
    timeout_s = 300
    procs = {}
    with Sidecar(pg_url, spool, log=log, traces_file=traces, args=["--sweep-interval", "0"]):
        for name in ("frozen", "alive"):
            procs[name] = pipeline(
                [
                    "hang",
                    "--mode",
                    "sidecar",
                    "--spool-dir",
                    str(spool),
                    "--heartbeat",
                    "0.1",
                    "--started",
                    str(tmp_path / name),
                    "--stop-file",
                    str(tmp_path / f"stop-{name}"),
                ],
                log=log,
            )
        try:
            for proc in procs.values():
                expect_line(proc, "ready", log)
            ids = {n: read_started([tmp_path / n]).order[0] for n in procs}
            store = CatalogStore(pg_url)
            store.ensure_schema()

            def heartbeat(name: str) -> int:
                record = store.get(ids[name])
                assert record is not None and record.heartbeat_ns is not None
                return record.heartbeat_ns

            eventually(lambda: [heartbeat(n) for n in procs], timeout=15)
            os.kill(procs["frozen"].pid, signal.SIGSTOP)
            time.sleep(0.5)  # a heartbeat already spooled lands; then nothing more comes
            last_frozen = heartbeat("frozen")
            eventually(lambda: _assert(heartbeat("alive") - last_frozen >= 1_000_000_000), 15)
            assert heartbeat("frozen") == last_frozen
            gap = heartbeat("alive") - last_frozen
            now = last_frozen + timeout_s * 10**9 + gap // 2

            # Its crash event goes through the spool, as the sidecar's own sweeper does.
            writer = Spool(spool, fsync="never")
            sweeper = Sweeper(
                store, heartbeat_timeout=timeout_s, pid_check=False, clock=lambda: now, spool=writer
            )
            result = sweeper.sweep()
            writer.close()
            assert [r.run_id for r in result.closed] == [ids["frozen"]]
            assert result.reasons == {HEARTBEAT_TIMEOUT: 1}
            closed = store.get(ids["frozen"])
            assert closed is not None and closed.status is RunStatus.CRASHED
            assert closed.ended_ns is not None and closed.ended_ns // 1000 == last_frozen // 1000
            alive = store.get(ids["alive"])
            assert alive is not None and alive.status is RunStatus.RUNNING

            (tmp_path / "stop-alive").touch()
            assert procs["alive"].wait(15) == 0
            started = read_started([tmp_path / n for n in procs])
            eventually(
                lambda: assert_every_run_recorded(
                    pg_url,
                    spans_in(traces),
                    started.run_ids,
                    ended={**started.ended, ids["frozen"]: "CRASHED"},
                    pids=started.pids,
                    context="frozen clock",
                ),
                timeout=20,
            )
            store.dispose()
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)


# -- a spool that filled once, a long-lived writer ---------------------------------------------


class _AuditReader:
    """A real consumer of the spool in the test process: its own cursor, acknowledged as it
    reads (so it holds nothing back from gc), recording every event in the order read."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool = Spool(spool_dir, fsync="never")
        self.cursor = self.spool.cursor("audit")
        self.seen: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.03):
            entries = self.cursor.read(1000)
            for entry in entries:
                event = RunEvent.from_json(entry.payload)
                self.seen.append((event.run_id, event.kind.value))
            if entries:
                self.cursor.ack(entries)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.spool.close()


def test_long_lived_process_recovers_after_its_spool_filled_oldest_first_none_twice(
    pg_url: str, tmp_path: Path
) -> None:
    """One long-lived pipeline process (sidecar mode, spool_max_bytes=48 KiB, 1 KB events)
    runs 40 nodes with no sidecar: the spool fills with its own events and the rest wait in
    its retry buffer. A real sidecar starts, delivers and collects everything: the spool
    holds 0 bytes although the writer lives (its segment was sealed at the first refusal).
    The same process then runs 10 more nodes; while it is still alive, all 50 runs are
    recorded once. A consumer that read the spool from the start saw every event exactly once
    and in the order the process emitted them: the retried backlog first, in pieces, then
    the new runs."""
    spool, log, traces = tmp_path / "spool", tmp_path / "log.txt", tmp_path / "traces.jsonl"
    go, hold, textfile = tmp_path / "go", tmp_path / "hold", tmp_path / "child.prom"
    audit = _AuditReader(spool)
    child = pipeline(
        [
            "loop",
            "--mode",
            "sidecar",
            "--spool-dir",
            str(spool),
            "--payload",
            "1000",
            "--started",
            str(tmp_path / "s"),
            "--nodes",
            "50",
            "--gap",
            "0.1",
            "--pause-file",
            str(go),
            "--pause-at",
            "40",
            "--hold-file",
            str(hold),
            "--textfile",
            str(textfile),
        ],
        log=log,
        env=child_env(ODIBI_OBSERVE_SPOOL_MAX_BYTES=str(48 * 1024)),
    )
    try:
        expect_line(child, "ready", log)
        expect_line(child, "paused 40", log)
        paused = read_metrics_file(textfile)
        assert metric_sum(paused, "odibi_observe_spool_rejected_total") > 20
        with Sidecar(
            pg_url,
            spool,
            log=log,
            traces_file=traces,
            args=["--sweep-interval", "0.5", "--gc-interval", "0.2"],
        ) as sidecar:

            def drained_and_freed() -> None:
                samples = sidecar.metrics()
                assert _node_runs(samples) > 10
                assert metric_sum(samples, "odibi_observe_spool_bytes") == 0, (
                    "the live writer's segment was never collected"
                )

            eventually(drained_and_freed, timeout=20)
            go.touch()
            assert expect_line(child, "done", log) == "done 50"
            started = read_started([tmp_path / "s"])
            assert len(started.order) == 50
            eventually(
                lambda: assert_every_run_recorded(
                    pg_url,
                    spans_in(traces),
                    started.run_ids,
                    ended=started.ended,
                    pids=started.pids,
                    context="after the spool filled once",
                ),
                timeout=30,
            )
            assert child.poll() is None  # recorded while the process lives, not at its exit
            ingested = sidecar.metrics()
            for kind in ("started", "finished"):
                assert (
                    metric_sum(ingested, "odibi_observe_sidecar_events_ingested_total", kind=kind)
                    == 50
                ), kind
        emitted = [(rid, kind) for rid in started.order for kind in ("started", "finished")]
        eventually(lambda: _assert(len(audit.seen) >= len(emitted)), timeout=10)
        assert audit.seen == emitted
        hold.touch()
        assert child.wait(30) == 0
        assert metric_sum(read_metrics_file(textfile), "odibi_observe_events_dropped_total") == 0
    finally:
        audit.close()
        if child.poll() is None:
            child.kill()
            child.wait(10)


# -- a spool volume that filled before the sidecar's first start --------------------------------


def _spooled_frames(spool: Path, copy: Path) -> dict[str, list[str]]:
    """Event kinds per run id in a copy of ``spool`` (read by a throwaway cursor)."""
    shutil.copytree(spool, copy)
    frames: dict[str, list[str]] = {}
    reader = Spool(copy, fsync="never")
    cursor = reader.cursor("audit")
    while entries := cursor.read(1000):
        for entry in entries:
            event = RunEvent.from_json(entry.payload)
            frames.setdefault(event.run_id, []).append(event.kind.value)
    reader.close()
    return frames


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="mounts a real 1 MiB tmpfs (root only)"
)
def test_spool_volume_full_before_the_first_sidecar_start_drains_and_accepts_again(
    pg_url: str, tmp_path: Path
) -> None:
    """A real full filesystem (a 1 MiB tmpfs mounted on the spool directory, unmounted at the
    end): a pipeline (sidecar mode) fills it with no sidecar ever having run, so no cursor
    file exists, and exits. A sidecar then starts for the first time: it can write its cursor
    files (the spool's cursor reserve), delivers every spooled run (the runs whose end did
    not fit are closed as CRASHED), collects the segments (the volume has room again) and a
    second pipeline's 20 runs are all recorded."""
    spool, log, traces = tmp_path / "spool", tmp_path / "log.txt", tmp_path / "traces.jsonl"
    with small_tmpfs(spool, "1m"):
        first = pipeline(
            [
                "loop",
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--payload",
                "4000",
                "--started",
                str(tmp_path / "s1"),
                "--nodes",
                "600",
            ],
            log=log,
        )
        assert first.wait(60) == 0, log.read_text()[-2000:]
        assert "rejected" in log.read_text()
        assert shutil.disk_usage(spool).free < 64 * 1024  # really full
        assert not list((spool / "cursors").glob("*.json"))
        frames = _spooled_frames(spool, tmp_path / "copy")
        started = read_started([tmp_path / "s1"])
        assert 100 < len(frames) < 600 and set(frames) <= started.run_ids
        complete = {
            rid: started.ended[rid]
            for rid, kinds in frames.items()
            if EventKind.FINISHED.value in kinds
        }
        with Sidecar(
            pg_url,
            spool,
            log=log,
            traces_file=traces,
            args=["--sweep-interval", "0.3", "--gc-interval", "0.2"],
        ):
            rows = eventually(
                lambda: assert_every_run_recorded(
                    pg_url,
                    spans_in(traces),
                    set(frames),
                    ended=complete,
                    pids=started.pids,
                    context="full before the first start",
                ),
                timeout=45,
            )
            assert {rid for rid, r in rows.items() if r["status"] == "CRASHED"} == set(
                frames
            ) - set(complete)
            # The first pipeline's segments are collected (the sidecar's own segment, holding
            # the sweeper's CRASHED events, stays open while it lives).
            eventually(lambda: _assert(not list(spool.glob(f"*-{first.pid}-*"))), timeout=20)
            assert shutil.disk_usage(spool).free > 512 * 1024
            assert list((spool / "cursors").glob("*.json"))
            second = pipeline(
                [
                    "loop",
                    "--mode",
                    "sidecar",
                    "--spool-dir",
                    str(spool),
                    "--payload",
                    "4000",
                    "--started",
                    str(tmp_path / "s2"),
                    "--nodes",
                    "20",
                ],
                log=log,
            )
            assert second.wait(60) == 0, log.read_text()[-2000:]
            later = read_started([tmp_path / "s2"])
            assert len(later.order) == 20
            eventually(
                lambda: assert_every_run_recorded(
                    pg_url,
                    spans_in(traces),
                    set(frames) | later.run_ids,
                    ended={**complete, **later.ended},
                    pids={**started.pids, **later.pids},
                    context="after the drain",
                ),
                timeout=30,
            )


# -- damage: a zeroed block, a deleted sealed segment, a deleted live segment -------------------


def _frames_overlapping(data: bytes, lo: int, hi: int) -> int:
    """How many frames of an intact segment have a byte in ``lo..hi-1``."""
    count, p = 0, 0
    while p < len(data):
        end = p + 16 + int.from_bytes(data[p + 4 : p + 8], "little")
        count += p < hi and end > lo
        p = end
    return count


def _healthz_damage(sidecar: Sidecar) -> dict[str, Any]:
    return dict(json.loads(sidecar.get("/healthz"))["spool"]["damage"])


def test_spool_damage_is_counted_in_frames_missing_segments_and_runs(
    pg_url: str, tmp_path: Path
) -> None:
    """With no sidecar running, pipeline A (sidecar mode, small segments) spools 100 runs and
    exits; a 4 KiB block of its second segment is zeroed and its fourth segment (sealed,
    ~20 runs) deleted. Pipeline B, long-lived, spools 10 runs, its open segment is deleted
    under it, and it runs 50 more: it notices within a second, says so in its log and goes on
    in a new segment. A real sidecar then reports, on /healthz and /metrics: one damaged
    region whose frames lost match the frames the block destroyed (within one), two missing
    segments, and as affected runs exactly A's runs whose start was read but whose end was
    lost — the runs the sweeper closes as CRASHED."""
    spool, log, traces = tmp_path / "spool", tmp_path / "log.txt", tmp_path / "traces.jsonl"
    go, hold = tmp_path / "go", tmp_path / "hold"
    common = [
        "loop",
        "--mode",
        "sidecar",
        "--spool-dir",
        str(spool),
        "--payload",
        "200",
        "--spool-segment-bytes",
        "20000",
    ]
    first = pipeline([*common, "--started", str(tmp_path / "a"), "--nodes", "100"], log=log)
    assert first.wait(60) == 0, log.read_text()[-2000:]
    segments = sorted(spool.glob(f"*-{first.pid}-*.seg"))
    assert len(segments) >= 5
    data = bytearray(segments[1].read_bytes())
    destroyed = _frames_overlapping(bytes(data), 4096, 8192)
    data[4096:8192] = bytes(4096)
    segments[1].write_bytes(bytes(data))
    segments[3].unlink()

    second = pipeline(
        [
            *common,
            "--started",
            str(tmp_path / "b"),
            "--nodes",
            "60",
            "--gap",
            "0.05",
            "--pause-file",
            str(go),
            "--pause-at",
            "10",
            "--hold-file",
            str(hold),
        ],
        log=log,
    )
    try:
        expect_line(second, "ready", log)
        expect_line(second, "paused 10", log)
        (live,) = spool.glob(f"*-{second.pid}-*.open")
        live.unlink()
        go.touch()
        assert expect_line(second, "done", log) == "done 60"
        assert "was deleted while this process wrote to it" in log.read_text()
        a = read_started([tmp_path / "a"])
        with Sidecar(
            pg_url, spool, log=log, traces_file=traces, args=["--sweep-interval", "0.3"]
        ) as sidecar:

            def reported() -> dict[str, Any]:
                damage = _healthz_damage(sidecar)
                assert damage["damaged_regions"] == 1 and damage["missing_segments"] == 2, damage
                return damage

            damage = eventually(reported, timeout=30)
            assert abs(damage["frames_lost"] - destroyed) <= 1, (damage, destroyed)
            assert damage["last"]
            samples = sidecar.metrics()
            assert (
                metric_sum(samples, "odibi_observe_spool_corrupt_frames_total")
                == damage["frames_lost"]
            )
            assert metric_sum(samples, "odibi_observe_spool_damaged_regions_total") == 1
            assert metric_sum(samples, "odibi_observe_spool_missing_segments_total") == 2

            def crashed_of_a() -> tuple[set[str], set[str]]:
                # Every run the sweeper closed was named by the damage report; a named run
                # whose rows arrive late is waited for.
                rows = {r["run_id"]: r for r in catalog_rows(pg_url)}
                assert not [
                    r for r in rows.values() if r["status"] == "RUNNING" and r["pid"] == first.pid
                ]
                crashed = {
                    rid
                    for rid, r in rows.items()
                    if r["pid"] == first.pid and r["status"] == "CRASHED"
                }
                affected = set(_healthz_damage(sidecar)["runs_affected"])
                assert crashed and crashed <= affected, (crashed, affected)
                # A named run that is not CRASHED either kept its end after all (a terminal
                # status) or lost every frame (no row: the report is then all that names it);
                # never RUNNING.
                for rid in affected & a.run_ids - crashed:
                    status = rows[rid]["status"] if rid in rows else None
                    assert status in {None, "SUCCESS", "FAILURE", "CANCELLED"}, rows[rid]
                return crashed, affected

            crashed, affected = eventually(crashed_of_a, timeout=30)
            assert crashed <= affected & a.run_ids, (crashed, affected)
    finally:
        hold.touch()
        if second.wait(30) != 0:
            second.kill()
