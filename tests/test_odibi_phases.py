"""Exactly-once watch on a real Odibi incremental pipeline: the write and the HWM commit of
every run, and the run killed (or failing) between them.

The project is Odibi's canonical incremental shape: a CSV source read in ``stateful``
incremental mode on ``updated_at`` (Odibi's system catalog keeps the HWM in ``meta_state``),
appended to a Delta table, on the pandas engine. ``tests/odibi_hwm_window.py`` runs it with
``set_hwm`` held open after the Delta commit (the test SIGKILLs it there) or raising; the
process is real, the kill is a real SIGKILL, the catalogs are SQLite (in-process mode) and
PostgreSQL behind a real sidecar (sidecar mode).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import odibi_observe as oo
from odibi_observe.catalog import CatalogStore
from odibi_observe.conventions import (
    CHECKPOINT_EVENT,
    CHECKPOINT_REGRESSED,
    CRASH_HEARTBEAT_LOST,
    OVERLAPPING_RUNS,
    PHASE_METRICS,
    UNCOMMITTED_WRITE,
    WRITE_EVENT,
    RunStatus,
)
from odibi_observe.record import RunRecord

pytest.importorskip("odibi", reason="the Odibi integration needs the 'odibi' extra")
pytest.importorskip("deltalake", reason="reading the Delta target needs the 'odibi' extra")

from odibi_observe.integrations import odibi as observe_odibi
from tests.fault_helpers import CLI, ROOT, Sidecar, child_env, eventually, spans_in
from tests.test_odibi_integration import chdir, make_project
from tests.test_run_phases import reconcile

WINDOW = str(ROOT / "tests" / "odibi_hwm_window.py")
NODE = "load_orders"
HWM_KEY = f"{NODE}_hwm"
INCREMENTAL: dict[str, Any] = {
    "name": NODE,
    "read": {
        "connection": "raw",
        "format": "csv",
        "path": "events.csv",
        "incremental": {"mode": "stateful", "column": "updated_at"},
    },
    "write": {"connection": "lake", "format": "delta", "path": "orders", "mode": "append"},
}
UNCOMMITTED = PHASE_METRICS.uncommitted_writes.prometheus


def write_events(project: Path, first: int, count: int) -> None:
    """``events.csv`` with orders ``first`` .. ``first + count - 1``, one hour apart."""
    lines = ["order_id,amount,updated_at"]
    for i in range(first, first + count):
        lines.append(f"O{i:03d},{10 + i},2024-01-{1 + i // 24:02d} {i % 24:02d}:00:00")
    (project / "data" / "events.csv").write_text("\n".join(lines) + "\n")


def incremental_project(root: Path, orders: int = 15) -> Path:
    project = make_project(root, [INCREMENTAL]).parent
    write_events(project, 0, orders)
    return project


def target_rows(project: Path) -> tuple[int, int]:
    """Rows in the Delta target, and distinct order ids among them."""
    from deltalake import DeltaTable

    frame = DeltaTable(str(project / "lake" / "orders")).to_pandas()
    return len(frame), frame["order_id"].nunique()


def records(catalog_url: str) -> list[RunRecord]:
    store = CatalogStore(catalog_url)
    try:
        return sorted(store.recent_runs(limit=50), key=lambda r: r.started_ns)
    finally:
        store.dispose()


def run_pipeline(project: Path, catalog_url: str, traces: Path) -> None:
    """One run of the project in this process, instrumented (in-process mode)."""
    from odibi.pipeline import PipelineManager

    oo.configure(catalog_url=catalog_url, traces_file=str(traces), handle_sigterm=False)
    observe_odibi.instrument()
    try:
        with chdir(project):
            PipelineManager.from_yaml(str(project / "odibi.yaml")).run()
        assert oo.flush(timeout=30)
    finally:
        observe_odibi.uninstrument()
        oo.shutdown()


def start_window(
    project: Path, mode: str, marker: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, WINDOW, mode, str(marker)],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(**env),
    )


def kill_in_the_window(proc: subprocess.Popen[bytes], marker: Path, ready: Any = None) -> None:
    """SIGKILL ``proc`` once it is held in ``set_hwm`` (and ``ready()`` holds, if given)."""
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() or (ready is not None and not ready()):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the run never reached set_hwm"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL


def assert_killed_run(run: RunRecord, project: Path) -> None:
    """CRASHED, with its Delta write on record and no checkpoint: an uncommitted write."""
    assert run.status is RunStatus.CRASHED
    (write,) = run.writes
    assert write["target"] == str(project / "lake" / "orders")
    assert (write["rows"], write["version"], write["awaits_checkpoint"]) == (15, 0, True)
    assert run.checkpoint is None and run.uncommitted_write


def assert_reported(report: dict[str, Any], run: RunRecord) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        d for d in report["discrepancies"] if d["kind"] == UNCOMMITTED_WRITE
    ]
    assert [d["run_id"] for d in found] == [run.run_id]
    (finding,) = found
    assert finding["catalog"]["rows_to_reread"] == 15 and finding["catalog"]["checkpoint"] is None
    return finding


# -- a normal run, and set_hwm failing ---------------------------------------------------------


def test_a_normal_run_carries_its_write_and_the_checkpoint_it_committed(tmp_path: Path) -> None:
    project = incremental_project(tmp_path / "project")
    catalog, traces = f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path / "traces.jsonl"
    run_pipeline(project, catalog, traces)
    write_events(project, 0, 20)  # five new orders arrive
    run_pipeline(project, catalog, traces)
    first, second = records(catalog)
    assert first.status is second.status is RunStatus.SUCCESS
    assert [(w["rows"], w["version"]) for w in (*first.writes, *second.writes)] == [(15, 0), (5, 1)]
    assert first.checkpoint is not None and second.checkpoint is not None
    assert (first.checkpoint["key"], first.checkpoint["previous"]) == (HWM_KEY, None)
    assert first.checkpoint["value"] == "2024-01-01 14:00:00"
    assert (second.checkpoint["value"], second.checkpoint["previous"]) == (
        "2024-01-01 19:00:00",
        "2024-01-01 14:00:00",
    )
    assert first.writes[0]["at"] < first.checkpoint["at"]
    assert target_rows(project) == (20, 20)
    spans = {s.attributes.get("odibi.run_id"): s for s in spans_in(traces)}
    assert [name for name, _ in spans[first.run_id].events] == [WRITE_EVENT, CHECKPOINT_EVENT]
    report = reconcile(catalog, traces, tmp_path / "report")
    assert report["summary"]["discrepancies"][UNCOMMITTED_WRITE] == 0


def test_set_hwm_raising_after_the_write_is_a_failure_with_an_uncommitted_write(
    tmp_path: Path,
) -> None:
    project = incremental_project(tmp_path / "project")
    catalog, traces = f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path / "traces.jsonl"
    marker = tmp_path / "never"
    proc = start_window(
        project,
        "fail",
        marker,
        {"ODIBI_OBSERVE_CATALOG_URL": catalog, "ODIBI_OBSERVE_TRACES_FILE": str(traces)},
    )
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0, err.decode()[-2000:]
    (run,) = records(catalog)
    assert run.status is RunStatus.FAILURE and run.checkpoint is None
    assert [(w["rows"], w["version"]) for w in run.writes] == [(15, 0)]
    assert run.uncommitted_write
    # Odibi's own account of it, from the result's metadata.
    assert run.attributes["data_write_committed"] is True
    assert "state backend unreachable" in str(run.attributes["hwm_error"])
    assert run.attributes["hwm_pending"] is True and run.attributes["hwm_update_key"] == HWM_KEY
    finding = assert_reported(reconcile(catalog, traces, tmp_path / "report"), run)
    assert "ended FAILURE" in finding["detail"]


# -- SIGKILL between the write and set_hwm ------------------------------------------------------


def test_killed_between_write_and_hwm_in_process_is_crashed_with_its_write(
    tmp_path: Path,
) -> None:
    """In-process mode, SQLite catalog: the run is killed once the catalog has its write (the
    in-process bus delivers in the background), and ``odibi-observe sweep`` closes it."""
    project = incremental_project(tmp_path / "project")
    catalog, traces = f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path / "traces.jsonl"
    marker = tmp_path / "in-set-hwm"
    env = {"ODIBI_OBSERVE_CATALOG_URL": catalog, "ODIBI_OBSERVE_TRACES_FILE": str(traces)}

    def write_on_record() -> bool:
        try:
            return any(r.writes for r in records(catalog))
        except Exception:
            return False

    kill_in_the_window(start_window(project, "block", marker, env), marker, write_on_record)
    sweep = subprocess.run(
        [sys.executable, *CLI, "sweep", "--catalog", catalog],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(ODIBI_OBSERVE_TRACES_FILE=str(traces)),
        check=False,
    )
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    assert "1 with an uncommitted write" in sweep.stdout
    assert f"{UNCOMMITTED_WRITE}: it wrote 15 row(s)" in sweep.stdout
    (run,) = records(catalog)
    assert_killed_run(run, project)
    assert run.error_type == CRASH_HEARTBEAT_LOST
    assert_reported(reconcile(catalog, traces, tmp_path / "report"), run)
    runs = subprocess.run(
        [sys.executable, *CLI, "runs", "--catalog", catalog],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=child_env(COLUMNS="200"),
    )
    assert f"{UNCOMMITTED_WRITE}: it wrote 15 row(s) to " in runs.stdout, runs.stdout
    # What the finding warns of: the next run re-reads the same 15 rows and appends them.
    assert target_rows(project) == (15, 15)
    run_pipeline(project, catalog, traces)
    assert target_rows(project) == (30, 15)


@pytest.fixture
def sidecar(pg_url: str, tmp_path: Path) -> Iterator[Sidecar]:
    with Sidecar(
        pg_url,
        tmp_path / "spool",
        log=tmp_path / "sidecar.log",
        traces_file=tmp_path / "traces.jsonl",
        args=["--sweep-interval", "0.5"],
    ) as running:
        yield running


def test_killed_between_write_and_hwm_in_sidecar_mode_is_crashed_with_its_write(
    sidecar: Sidecar, pg_url: str, tmp_path: Path
) -> None:
    """Sidecar mode, PostgreSQL catalog: killed the moment set_hwm is entered — the write is
    in the spool already — and the sidecar's sweeper closes the run, keeping the write."""
    project = incremental_project(tmp_path / "project")
    marker = tmp_path / "in-set-hwm"
    env = {"ODIBI_OBSERVE_MODE": "sidecar", "ODIBI_OBSERVE_SPOOL_DIR": str(sidecar.spool_dir)}
    kill_in_the_window(start_window(project, "block", marker, env), marker)

    def crashed() -> RunRecord:
        runs = records(pg_url)
        assert len(runs) == 1, runs  # (an assertion, so that it is retried until it holds)
        assert runs[0].status is RunStatus.CRASHED, runs[0].status
        return runs[0]

    run = eventually(crashed, timeout=120)
    assert_killed_run(run, project)
    assert f"{UNCOMMITTED_WRITE}: it wrote 15 row(s)" in sidecar.log.read_text()

    def counted() -> None:
        samples = sidecar.metrics()
        total = sum(v for (name, _), v in samples.items() if name == UNCOMMITTED)
        assert total == 1, total

    eventually(counted, timeout=30)
    traces = tmp_path / "traces.jsonl"

    def crash_span() -> None:
        assert run.span_id in {s.span_id for s in spans_in(traces)}

    eventually(crash_span, timeout=30)
    finding = assert_reported(reconcile(pg_url, traces, tmp_path / "report"), run)
    assert "ended CRASHED" in finding["detail"]


# -- two runs at once: overlapping runs, and the slower one's HWM regresses ----------------------


def test_overlapping_runs_and_the_checkpoint_they_regress_are_flagged(tmp_path: Path) -> None:
    """Run A reads the 15 orders there are and is held between its write and its HWM; five
    more orders arrive; run B of the same node runs meanwhile — from the same (unsaved) HWM,
    so it appends those 15 orders again and the 5 new ones — and commits 19:00. Then A
    commits 14:00 over it. Both succeed, nothing else says so; reconcile finds B overlapping
    A, and A's checkpoint older than the one committed before it."""
    project = incremental_project(tmp_path / "project")
    catalog, traces = f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path / "traces.jsonl"
    env = {"ODIBI_OBSERVE_CATALOG_URL": catalog, "ODIBI_OBSERVE_TRACES_FILE": str(traces)}
    marker = tmp_path / "a-in-set-hwm"
    slow = start_window(project, "hold", marker, env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert slow.poll() is None, slow.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "run A never reached set_hwm"
            time.sleep(0.05)
        write_events(project, 0, 20)  # five more orders arrive while A is held
        fast = start_window(project, "pass", tmp_path / "unused", env)
        _, err = fast.communicate(timeout=180)
        assert fast.returncode == 0, err.decode()[-3000:]
        (tmp_path / "a-in-set-hwm.release").touch()
        _, err = slow.communicate(timeout=180)
        assert slow.returncode == 0, err.decode()[-3000:]
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait(10)
    a, b = records(catalog)
    assert a.status is b.status is RunStatus.SUCCESS
    assert [w["rows"] for w in (*a.writes, *b.writes)] == [15, 20]
    assert a.checkpoint is not None and b.checkpoint is not None
    assert (a.checkpoint["value"], b.checkpoint["value"]) == (
        "2024-01-01 14:00:00",
        "2024-01-01 19:00:00",
    )
    assert target_rows(project) == (35, 20)  # the window of A was written twice
    report = reconcile(catalog, traces, tmp_path / "report")
    kinds = {(d["kind"], d["run_id"]): d for d in report["discrepancies"]}
    overlap = kinds[(OVERLAPPING_RUNS, b.run_id)]
    assert overlap["catalog"]["overlapped"]["run_id"] == a.run_id
    assert "both read from checkpoint None" in overlap["detail"]
    regressed = kinds[(CHECKPOINT_REGRESSED, a.run_id)]
    assert "older than the checkpoint run " + b.run_id in regressed["detail"]
    assert report["summary"]["discrepancies"][UNCOMMITTED_WRITE] == 0
    assert {k for k, _ in kinds} == {OVERLAPPING_RUNS, CHECKPOINT_REGRESSED}


# -- the natural race: SIGKILL at whatever moment follows the Delta commit ------------------------


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.1, 0.5])
def test_a_kill_at_any_moment_after_the_commit_is_never_a_silent_duplicate(
    tmp_path: Path, delay: float
) -> None:
    """No held ``set_hwm``: the pipeline runs as Odibi runs it, in sidecar mode, and is
    SIGKILLed ``delay`` seconds after its Delta commit appears — wherever that lands (before
    the write call returned, between the write and the HWM, after the HWM). Then the next run
    shows whether the window is read again. Whatever the moment: rows read twice are always
    named, by ``reconcile`` (``uncommitted_write``) or, when the kill came before the write
    was on record, by ``audit`` (which needs no catalog); and a run whose HWM was saved and
    on record is never called uncommitted."""
    from tests.test_audit import audit

    project = incremental_project(tmp_path / "project")
    catalog, traces = f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path / "traces.jsonl"
    commit = project / "lake" / "orders" / "_delta_log" / f"{0:020d}.json"
    with Sidecar(
        catalog, tmp_path / "spool", log=tmp_path / "sidecar.log", traces_file=traces
    ) as sidecar:
        env = {"ODIBI_OBSERVE_MODE": "sidecar", "ODIBI_OBSERVE_SPOOL_DIR": str(sidecar.spool_dir)}
        proc = start_window(project, "pass", tmp_path / "unused", env)
        try:
            deadline = time.monotonic() + 120
            while not commit.exists():
                assert proc.poll() is None, "the run ended before its commit was seen"
                assert time.monotonic() < deadline, "the run never committed"
                time.sleep(0.0005)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
            proc.stderr.close()  # type: ignore[union-attr]

        def closed() -> RunRecord:
            runs = [r for r in records(catalog) if r.node == NODE]
            assert len(runs) == 1, runs  # none yet while the sidecar has not caught up
            assert runs[0].status is not RunStatus.RUNNING, runs[0].status
            return runs[0]

        run = eventually(closed, timeout=120)
    report = reconcile(catalog, traces, tmp_path / "report")
    flagged = {d["run_id"] for d in report["discrepancies"] if d["kind"] == UNCOMMITTED_WRITE}
    found = audit(project, tmp_path / "audit")
    audited = {f["kind"] for f in found.report["findings"]}
    # What the kill left: the next run re-reads the window or it does not.
    run_pipeline(project, catalog, traces)
    rows, distinct = target_rows(project)
    duplicated = rows > distinct
    print(
        f"killed {delay}s after the commit: {run.status.value}, writes={len(run.writes)}, "
        f"checkpoint={run.checkpoint is not None}, reconcile={run.run_id in flagged}, "
        f"audit={sorted(audited)}, target {rows} rows / {distinct} distinct"
    )
    if duplicated:
        assert run.run_id in flagged or audited & {"hwm_not_saved", "unclaimed_commit"}, (
            run,
            audited,
        )
    if run.checkpoint is not None:
        assert run.run_id not in flagged and not duplicated, (run, rows, distinct)
    if run.run_id in flagged:
        assert run.writes and run.checkpoint is None
