"""Why a crashed run crashed: ``error_type`` from what the sweeper can see on this host.

Real processes and real signals throughout. A killed child is left unreaped (a zombie) so
its exit status is readable in ``/proc/<pid>/stat``, as for any process whose parent has not
waited for it yet. The OOM kill is simulated with **faked cgroup counters in a temp dir**
(``ODIBI_OBSERVE_CGROUP_ROOT``): this host's cgroup v2 hierarchy has no memory controller
(memory is on a v1 hierarchy), so no child cgroup with ``memory.max`` can be made here.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from odibi_observe._resources import CGROUP_ROOT_ENV
from odibi_observe.catalog import CatalogStore
from odibi_observe.conventions import (
    CRASH_HEARTBEAT_LOST,
    CRASH_OOM_KILLED,
    CRASH_PROCESS_EXIT,
    CRASH_SIGKILL,
    CRASH_SIGNALED,
    CRASH_SIGTERM,
    FIELDS,
    RunStatus,
)
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sidecar.sweeper import Sweeper
from tests.fault_helpers import (
    Sidecar,
    catalog_rows,
    eventually,
    expect_line,
    pipeline,
    read_started,
    spans_in,
)
from tests.helpers import make_record

HOST = socket.gethostname()
A_ERROR_TYPE = str(FIELDS.error.attribute)
A_RUN_ID = str(FIELDS.run_id.attribute)
MIB = 1024 * 1024
SLEEPER = "import time\nwhile True: time.sleep(0.05)"


@pytest.fixture
def store(catalog_url: str) -> Iterator[CatalogStore]:
    s = CatalogStore(catalog_url)
    s.ensure_schema()
    yield s
    s.dispose()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes of the test, killed and reaped at the end whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def sleeper(children: list[subprocess.Popen[bytes]], code: str = SLEEPER) -> int:
    proc = subprocess.Popen([sys.executable, "-c", code])
    children.append(proc)
    return proc.pid


def running(store: CatalogStore, pid: int, **changes: Any) -> RunRecord:
    record = make_record(
        status=RunStatus.RUNNING, pid=pid, host=HOST, started_ns=time.time_ns() - 10**9, **changes
    )
    store.upsert([RunEvent(EventKind.STARTED, record)])
    return record


def until_zombie(pid: int) -> None:
    """Wait until ``pid`` has exited (and is left unreaped: we never wait for it here)."""

    def exited() -> None:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        assert state == b"Z", state

    eventually(exited, timeout=10, interval=0.02)


def closed(store: CatalogStore, record: RunRecord) -> RunRecord:
    got = store.get(record.run_id)
    assert got is not None and got.status is RunStatus.CRASHED, got
    return got


def fake_cgroup(root: Path, *, oom_kill: int, memory_max: str = "max") -> Path:
    """Fake cgroup v2 files for this process's cgroup under ``root`` (children share it)."""
    line = next(
        x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::")
    )
    directory = root / line[3:].strip().lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "memory.events").write_text(
        f"low 0\nhigh 0\nmax 0\noom 0\noom_kill {oom_kill}\noom_group_kill 0\n"
    )
    (directory / "memory.max").write_text(memory_max + "\n")
    return directory


@pytest.mark.parametrize(
    ("how", "cause"),
    [
        ("sigkill", CRASH_SIGKILL),
        ("sigterm", CRASH_SIGTERM),
        ("sigsegv", CRASH_SIGNALED),
        ("exit", CRASH_PROCESS_EXIT),
    ],
)
def test_the_exit_status_of_an_unreaped_process_names_the_cause(
    store: CatalogStore, children: list[subprocess.Popen[bytes]], how: str, cause: str
) -> None:
    code = "import os\nos._exit(3)" if how == "exit" else SLEEPER
    pid = sleeper(children, code)
    record = running(store, pid)
    if how != "exit":
        sig = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigsegv": signal.SIGSEGV}[how]
        children[-1].send_signal(sig)
    until_zombie(pid)

    result = Sweeper(store, host=HOST).sweep()

    assert [r.run_id for r in result.closed] == [record.run_id]
    crashed = closed(store, record)
    assert crashed.error_type == cause
    if how == "sigsegv":
        assert "killed by SIGSEGV (its exit status)" in (crashed.error_message or "")
    if how == "exit":
        assert "it exited with status 3" in (crashed.error_message or "")


def test_a_reaped_process_leaves_heartbeat_lost(
    store: CatalogStore, children: list[subprocess.Popen[bytes]]
) -> None:
    """Once the parent has waited, nothing says how it ended: the cause is not guessed."""
    pid = sleeper(children)
    record = running(store, pid)
    children[-1].kill()
    children[-1].wait(10)

    Sweeper(store, host=HOST).sweep()

    crashed = closed(store, record)
    assert crashed.error_type == CRASH_HEARTBEAT_LOST
    assert "how it ended is not visible from here" in (crashed.error_message or "")


def test_oom_kill_count_that_rose_while_the_run_was_alive_says_oom_killed(
    store: CatalogStore,
    children: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faked cgroup counters in a temp dir (see the module docstring)."""
    monkeypatch.setenv(CGROUP_ROOT_ENV, str(tmp_path))
    directory = fake_cgroup(tmp_path, oom_kill=2)
    pid = sleeper(children)
    record = running(store, pid)
    sweeper = Sweeper(store, host=HOST)
    assert sweeper.sweep().closed == []  # alive: its cgroup's count (2) is noted
    (directory / "memory.events").write_text("oom 1\noom_kill 3\n")
    children[-1].kill()  # the OOM killer sends SIGKILL
    until_zombie(pid)

    sweeper.sweep()

    crashed = closed(store, record)
    assert crashed.error_type == CRASH_OOM_KILLED
    assert "oom_kill count rose from 2 to 3" in (crashed.error_message or "")


def test_sigkill_with_an_unchanged_oom_count_is_sigkill(
    store: CatalogStore,
    children: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CGROUP_ROOT_ENV, str(tmp_path))
    fake_cgroup(tmp_path, oom_kill=2)
    pid = sleeper(children)
    record = running(store, pid)
    sweeper = Sweeper(store, host=HOST)
    sweeper.sweep()
    children[-1].kill()
    until_zombie(pid)

    sweeper.sweep()

    assert closed(store, record).error_type == CRASH_SIGKILL


def test_peak_memory_at_the_limit_says_oom_killed(
    store: CatalogStore,
    children: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No oom_kill counter to read, but the last heartbeat's peak was at the cgroup's
    memory.max (faked in a temp dir): a SIGKILL then is the OOM killer's."""
    monkeypatch.setenv(CGROUP_ROOT_ENV, str(tmp_path))
    directory = fake_cgroup(tmp_path, oom_kill=0, memory_max=str(100 * MIB))
    (directory / "memory.events").unlink()
    pid = sleeper(children)
    record = running(store, pid, peak_rss_bytes=95 * MIB)
    sweeper = Sweeper(store, host=HOST)
    sweeper.sweep()
    children[-1].kill()
    until_zombie(pid)

    sweeper.sweep()

    crashed = closed(store, record)
    assert crashed.error_type == CRASH_OOM_KILLED
    assert f"peak memory {95 * MIB} bytes was at its limit {100 * MIB}" in (
        crashed.error_message or ""
    )


# -- a real pipeline process under a real sidecar ------------------------------------------------


def _hang_under_sidecar(
    pg_url: str,
    tmp_path: Path,
    kill: signal.Signals,
    env: dict[str, str] | None = None,
    before_kill: Callable[[], None] | None = None,
) -> tuple[dict[str, object], list[str]]:
    """A real node (``tests/fault_pipeline.py hang``, sidecar mode) killed by ``kill`` and left
    unreaped; returns its catalog row and the ``error.type`` of its spans."""
    spool, traces, log = tmp_path / "spool", tmp_path / "traces.jsonl", tmp_path / "log.txt"
    started_file = tmp_path / "started"
    with Sidecar(
        pg_url, spool, log=log, traces_file=traces, env=env, args=["--sweep-interval", "0.3"]
    ):
        proc = pipeline(
            [
                "hang",
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--heartbeat",
                "0.2",
                "--started",
                str(started_file),
                "--stop-file",
                str(tmp_path / "never"),
            ],
            log=log,
        )
        try:
            expect_line(proc, "ready", log)
            (run_id,) = read_started([started_file]).order

            def row() -> dict[str, object]:
                found = {r["run_id"]: r for r in catalog_rows(pg_url)}.get(run_id)
                assert found is not None, "no catalog row yet"
                return found

            def beating() -> None:
                assert row()["heartbeat_at"] is not None, "no heartbeat yet"

            eventually(beating, timeout=20)
            time.sleep(1.0)  # a few sweeps see the run alive (and note its cgroup)
            if before_kill is not None:
                before_kill()
            proc.send_signal(kill)  # not waited for: its exit status stays readable

            def crashed() -> dict[str, object]:
                found = row()
                assert found["status"] == "CRASHED", found["status"]
                return found

            result = eventually(crashed, timeout=30)
            types = eventually(lambda: _error_types(traces, run_id), timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    return result, types


def _error_types(traces: Path, run_id: str) -> list[str]:
    found = [
        str(s.attributes.get(A_ERROR_TYPE))
        for s in spans_in(traces)
        if s.attributes.get(A_RUN_ID) == run_id
    ]
    assert found, "no span yet"
    return found


@pytest.mark.slow  # still run by CI: scripts/test.sh deselects no marker
def test_a_real_node_killed_by_sigkill_under_the_sidecar_is_crashed_sigkill(
    pg_url: str, tmp_path: Path
) -> None:
    row, types = _hang_under_sidecar(pg_url, tmp_path, signal.SIGKILL)
    assert row["error_type"] == CRASH_SIGKILL
    assert types == [CRASH_SIGKILL]


@pytest.mark.slow
def test_a_real_node_oom_killed_under_the_sidecar_is_crashed_oom_killed(
    pg_url: str, tmp_path: Path
) -> None:
    """The sidecar reads faked cgroup counters from a temp dir (see the module docstring);
    the count rises just before the SIGKILL, as the kernel's OOM killer makes it do."""
    root = tmp_path / "cgroup"
    directory = fake_cgroup(root, oom_kill=0)

    def oom() -> None:
        (directory / "memory.events").write_text("oom 1\noom_kill 1\n")

    row, types = _hang_under_sidecar(
        pg_url, tmp_path, signal.SIGKILL, env={CGROUP_ROOT_ENV: str(root)}, before_kill=oom
    )
    assert row["error_type"] == CRASH_OOM_KILLED
    assert types == [CRASH_OOM_KILLED]


@pytest.mark.slow
def test_a_real_node_sent_sigterm_closes_itself_as_sigterm(pg_url: str, tmp_path: Path) -> None:
    """The in-process SIGTERM handler closes the run before the process ends."""
    row, types = _hang_under_sidecar(pg_url, tmp_path, signal.SIGTERM)
    assert row["error_type"] == CRASH_SIGTERM
    assert types == [CRASH_SIGTERM]
