"""Every exit path the interpreter can see leaves a terminal row; the ones it can't, a RUNNING one.

Each test runs a real pipeline process (``python -c``) writing to a real SQLite catalog, sends
it a real signal or lets it exit, and reads the catalog afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

PRELUDE = """
import os, sys, threading, time, signal
import odibi_observe as oo
oo.configure(catalog_url=os.environ["CATALOG"], mode="background", project="exits")

def ready():
    oo.flush(10)                      # the RUNNING row is in the catalog
    print("ready", flush=True)
"""


def _spawn(tmp_path: Path, body: str) -> tuple[subprocess.Popen[str], str]:
    url = f"sqlite:///{tmp_path}/catalog.db"
    code = PRELUDE + textwrap.dedent(body)
    env = {**os.environ, "CATALOG": url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, url


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line


def _rows(url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM meta_runs"))]
    engine.dispose()
    return rows


def test_sigterm_during_a_node_closes_it_as_crashed_then_terminates(tmp_path: Path) -> None:
    proc, url = _spawn(
        tmp_path,
        """
        with oo.node_run("p", "long_step"):
            ready()
            time.sleep(60)
    """,
    )
    _wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM  # the default action still happens
    (row,) = _rows(url)
    assert row["status"] == "CRASHED"
    assert row["error_type"] == "SIGTERM"
    assert row["ended_at"] is not None


def test_app_sigterm_handler_is_respected_and_its_exception_recorded(tmp_path: Path) -> None:
    proc, url = _spawn(
        tmp_path,
        """
        def graceful(signum, frame):
            raise SystemExit(17)
        signal.signal(signal.SIGTERM, graceful)
        oo.configure(catalog_url=os.environ["CATALOG"], mode="background")  # after the handler
        with oo.node_run("p", "long_step"):
            ready()
            time.sleep(60)
    """,
    )
    _wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 17
    (row,) = _rows(url)
    assert (row["status"], row["error_type"]) == ("FAILURE", "SystemExit")


def test_sigint_during_a_node_is_a_cancellation_with_keyboard_interrupt(tmp_path: Path) -> None:
    proc, url = _spawn(
        tmp_path,
        """
        with oo.node_run("p", "interactive"):
            ready()
            time.sleep(60)
    """,
    )
    _wait_ready(proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) != 0
    (row,) = _rows(url)
    assert (row["status"], row["error_type"]) == ("CANCELLED", "KeyboardInterrupt")


def test_uncaught_exception_is_recorded_before_the_process_dies(tmp_path: Path) -> None:
    proc, url = _spawn(
        tmp_path,
        """
        @oo.observe_node(pipeline="p")
        def boom():
            raise RuntimeError("disk on fire")
        print("ready", flush=True)
        boom()
    """,
    )
    _wait_ready(proc)
    assert proc.wait(30) == 1
    assert proc.stderr is not None
    assert "RuntimeError: disk on fire" in proc.stderr.read()  # the traceback is untouched
    (row,) = _rows(url)
    assert (row["status"], row["error_type"], row["error_message"]) == (
        "FAILURE",
        "RuntimeError",
        "disk on fire",
    )


def test_exit_with_a_node_still_running_in_a_daemon_thread_is_crashed(tmp_path: Path) -> None:
    proc, url = _spawn(
        tmp_path,
        """
        started = threading.Event()
        def worker():
            with oo.node_run("p", "background_node"):
                started.set()
                time.sleep(60)
        threading.Thread(target=worker, daemon=True).start()
        started.wait(10)
        ready()
        sys.exit(0)          # the interpreter exits while the node runs
    """,
    )
    _wait_ready(proc)
    assert proc.wait(30) == 0
    (row,) = _rows(url)
    assert (row["status"], row["error_type"]) == ("CRASHED", "ProcessExit")


def test_sigkill_leaves_the_running_marker_with_liveness_for_the_sweeper(tmp_path: Path) -> None:
    proc, url = _spawn(
        tmp_path,
        """
        with oo.node_run("p", "oom_victim"):
            ready()
            time.sleep(60)
    """,
    )
    _wait_ready(proc)
    proc.kill()
    proc.wait(30)
    (row,) = _rows(url)
    assert row["status"] == "RUNNING"  # durable marker: nothing in-process could close it
    assert row["pid"] == proc.pid
    assert row["host"] and row["started_at"] is not None


def test_sigterm_with_no_node_running_changes_nothing(tmp_path: Path) -> None:
    proc, url = _spawn(
        tmp_path,
        """
        with oo.node_run("p", "done"):
            pass
        ready()
        time.sleep(60)
    """,
    )
    _wait_ready(proc)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM
    (row,) = _rows(url)
    assert row["status"] == "SUCCESS"


@pytest.mark.skipif(sys.platform != "linux", reason="fork semantics checked on Linux")
def test_fork_after_configure_children_record_their_own_runs(tmp_path: Path) -> None:
    proc, url = _spawn(
        tmp_path,
        """
        import multiprocessing as mp

        @oo.observe_node(pipeline="p")
        def child_node(i):
            return list(range(i))

        def child(i):
            child_node(i)
            oo.flush(10)

        with oo.node_run("p", "parent"):
            ctx = mp.get_context("fork")
            procs = [ctx.Process(target=child, args=(i,)) for i in range(1, 4)]
            for p in procs: p.start()
            for p in procs: p.join()
        print("ready", flush=True)
    """,
    )
    _wait_ready(proc)
    assert proc.wait(30) == 0
    rows = _rows(url)
    by_node = sorted((r["node_name"], r["status"], r["rows_processed"]) for r in rows)
    assert by_node == [
        ("child_node", "SUCCESS", 1),
        ("child_node", "SUCCESS", 2),
        ("child_node", "SUCCESS", 3),
        ("parent", "SUCCESS", None),
    ]
    assert len({r["pid"] for r in rows}) == 4
