"""Checkpoint sanity from the catalog's history: ``checkpoint_regressed`` and
``overlapping_runs``, on runs recorded by the decorator with ``record_checkpoint`` (SQLite and
the real PostgreSQL server), judged by ``odibi-observe reconcile``."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import odibi_observe as oo
from odibi_observe.catalog import CatalogStore
from odibi_observe.conventions import CHECKPOINT_REGRESSED, OVERLAPPING_RUNS, RunStatus
from odibi_observe.reconcile.phases import OVERLAP_SLACK_NS
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.testing.contracts import make_record
from tests.fault_helpers import CLI, child_env, eventually
from tests.test_run_phases import reconcile

SANITY = (CHECKPOINT_REGRESSED, OVERLAPPING_RUNS)
HOUR_NS = 3_600 * 10**9


def committed(key: str, value: Any, previous: Any = None) -> str:
    """One run of ``p``/``orders`` that appends and commits ``key`` = ``value``; its id."""
    with oo.node_run("p", "orders") as run:
        run.record_write("silver/orders", rows=5, awaits_checkpoint=True)
        run.record_checkpoint(key, value, previous=previous)
        return run.run_id


def findings(
    catalog_url: str, tmp_path: Path, *, since: str = "2000-01-01T00:00:00"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    assert oo.flush(timeout=30)
    traces = tmp_path / "traces.jsonl"
    traces.touch()
    report = reconcile(catalog_url, traces, tmp_path / "report", since=since)
    return [d for d in report["discrepancies"] if d["kind"] in SANITY], report


def unordered_notes(report: dict[str, Any]) -> list[str]:
    return [n for n in report["notes"] if f"{CHECKPOINT_REGRESSED} not judged" in n]


def test_a_clean_sequence_of_checkpoints_gives_no_finding(
    catalog_url: str, tmp_path: Path, fresh_observer: Any
) -> None:
    fresh_observer(catalog_url=catalog_url)
    committed("orders_hwm", 10)
    committed("orders_hwm", 20, previous=10)
    committed("orders_hwm", 20, previous=20)
    found, report = findings(catalog_url, tmp_path)
    assert found == []
    assert unordered_notes(report) == []


def test_a_checkpoint_older_than_the_one_before_it_is_regressed(
    catalog_url: str, tmp_path: Path, fresh_observer: Any
) -> None:
    fresh_observer(catalog_url=catalog_url)
    committed("orders_hwm", "2024-01-03")
    committed("orders_hwm", "2024-01-02", previous="2024-01-03")  # committed an older value
    committed("orders_hwm", 7, previous=9)  # older than the value it replaced
    found, _ = findings(catalog_url, tmp_path)
    assert [d["kind"] for d in found] == [CHECKPOINT_REGRESSED] * 2
    older, replaced = found
    assert "committed orders_hwm = '2024-01-02', older than the checkpoint run" in older["detail"]
    assert older["catalog"]["checkpoint"]["value"] == "2024-01-02"
    assert "older than the value it replaced (9)" in replaced["detail"]


def test_a_state_set_back_between_runs_is_regressed(
    catalog_url: str, tmp_path: Path, fresh_observer: Any
) -> None:
    """The third run commits a newer value than any before it, but it replaced 5: someone set
    the state back from 20 before it ran, so it read 5..20 again."""
    fresh_observer(catalog_url=catalog_url)
    committed("orders_hwm", 10)
    second = committed("orders_hwm", 20, previous=10)
    third = committed("orders_hwm", 25, previous=5)
    found, _ = findings(catalog_url, tmp_path)
    (regressed,) = found
    assert (regressed["kind"], regressed["run_id"]) == (CHECKPOINT_REGRESSED, third)
    assert regressed["detail"].startswith(
        "the state was set back before this run: the value it replaced (orders_hwm = 5) is "
        f"older than 20, committed by run {second} before this run started"
    )


def test_values_that_cannot_be_compared_are_not_accused_but_noted(
    catalog_url: str, tmp_path: Path, fresh_observer: Any
) -> None:
    fresh_observer(catalog_url=catalog_url)
    committed("orders_hwm", "batch-b")
    second = committed("orders_hwm", "batch-a")  # text that is no time: no order
    committed("orders_hwm", 5, previous="batch-a")  # a number after text
    committed("orders_hwm", 5, previous=5)  # the same value: nothing to note
    found, report = findings(catalog_url, tmp_path)
    assert found == []
    (note,) = unordered_notes(report)
    assert f"{CHECKPOINT_REGRESSED} not judged for 2 run(s) of p/orders" in note
    assert f"'batch-a' against 'batch-b', run {second}" in note
    assert report["errors_total"] == 0


def test_two_runs_at_once_overlap_and_the_later_names_the_earlier(
    catalog_url: str, tmp_path: Path, fresh_observer: Any
) -> None:
    fresh_observer(catalog_url=catalog_url)
    reading, release = threading.Event(), threading.Event()
    ids: list[str] = []

    def first() -> None:
        with oo.node_run("p", "orders") as run:
            ids.append(run.run_id)
            reading.set()
            assert release.wait(30)
            run.record_write("silver/orders", rows=5, awaits_checkpoint=True)
            run.record_checkpoint("orders_hwm", 10)

    thread = threading.Thread(target=first)
    thread.start()
    assert reading.wait(30)
    committed("orders_hwm", 10)  # the same window, read while the first is still reading
    release.set()
    thread.join(30)
    committed("orders_hwm", 20, previous=10)  # after both: no overlap
    found, _ = findings(catalog_url, tmp_path)
    (overlap,) = found
    assert overlap["kind"] == OVERLAPPING_RUNS
    assert overlap["catalog"]["overlapped"]["run_id"] == ids[0] != overlap["run_id"]
    assert f"while run {ids[0]} of the same node" in overlap["detail"]
    assert overlap["detail"].endswith("so the rows of that window were written twice")


def test_back_to_back_runs_of_a_retry_loop_do_not_overlap(
    catalog_url: str, tmp_path: Path, fresh_observer: Any
) -> None:
    """Runs that fail at once and are retried in the same thread, then one that commits: a
    run's end (its start plus a monotonic duration) may pass the next start by microseconds,
    which is no overlap."""
    fresh_observer(catalog_url=catalog_url)
    for _ in range(20):
        with contextlib.suppress(OSError), oo.node_run("p", "orders"):
            raise OSError("source unreachable")
    committed("orders_hwm", 10)
    committed("orders_hwm", 20, previous=10)
    found, _ = findings(catalog_url, tmp_path)
    assert found == []


@pytest.mark.parametrize("silent", ["earlier", "later"])
def test_a_run_that_failed_before_writing_still_overlaps(
    silent: str, catalog_url: str, tmp_path: Path, fresh_observer: Any
) -> None:
    """One of two runs at once of a checkpointing node fails before it writes anything (no
    write, no checkpoint on record): the two still overlap, whichever started first."""
    fresh_observer(catalog_url=catalog_url)
    reading, release = threading.Event(), threading.Event()
    ids: list[str] = []

    def run_of_orders(*, writes: bool, held: bool) -> None:
        with contextlib.suppress(OSError), oo.node_run("p", "orders") as run:
            ids.append(run.run_id)
            if held:
                reading.set()
                assert release.wait(30)
            if not writes:
                raise OSError("source unreachable")
            run.record_write("silver/orders", rows=5, awaits_checkpoint=True)
            run.record_checkpoint("orders_hwm", 10)

    thread = threading.Thread(
        target=run_of_orders, kwargs={"writes": silent != "earlier", "held": True}
    )
    thread.start()
    assert reading.wait(30)
    run_of_orders(writes=silent != "later", held=False)
    time.sleep(0.05)  # the overlap lasts well past the slack
    release.set()
    thread.join(30)
    earlier, later = ids
    found, report = findings(catalog_url, tmp_path)
    (overlap,) = found
    assert (overlap["kind"], overlap["run_id"]) == (OVERLAPPING_RUNS, later)
    failed = earlier if silent == "earlier" else later
    assert overlap["catalog"]["overlapped"]["run_id"] == earlier
    assert (
        overlap["catalog"]["overlapped"]["status"]
        == (RunStatus.FAILURE if silent == "earlier" else RunStatus.SUCCESS).value
    )
    assert f"run {failed} recorded no write (it ended FAILURE)" in overlap["detail"]
    assert report["summary"]["discrepancies"][OVERLAPPING_RUNS] == 1


@pytest.mark.parametrize(
    ("value", "previous", "says"),
    [
        (30, None, "committed orders_hwm = 30, older than the checkpoint run {before}"),
        (60, 40, "the state was set back before this run: the value it replaced "),
    ],
)
def test_the_first_checkpoint_of_a_window_is_compared_with_the_last_before_it(
    value: int,
    previous: int | None,
    says: str,
    catalog_url: str,
    tmp_path: Path,
    fresh_observer: Any,
) -> None:
    """A run an hour ago (outside the window and its margin) committed 50; the window's first
    run commits 30, or replaces 40: both take the node back from 50."""
    store = CatalogStore(catalog_url)
    try:
        store.ensure_schema()
        started = time.time_ns() - HOUR_NS
        before = make_record(
            pipeline="p",
            node="orders",
            started_ns=started,
            writes=({"target": "silver/orders", "rows": 5, "at": started + 1_000},),
            checkpoint={"key": "orders_hwm", "value": 50, "previous": 40, "at": started + 2_000},
        )
        store.upsert([RunEvent(EventKind.FINISHED, before)])
    finally:
        store.dispose()
    fresh_observer(catalog_url=catalog_url)
    run_id = committed("orders_hwm", value, previous=previous)
    since = (datetime.now(UTC) - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S")
    found, _ = findings(catalog_url, tmp_path, since=since)
    (regressed,) = found
    assert (regressed["kind"], regressed["run_id"]) == (CHECKPOINT_REGRESSED, run_id)
    assert says.format(before=before.run_id) in regressed["detail"]
    assert before.run_id in regressed["detail"]


#: A run of ``p``/``orders`` that touches ``argv[1]`` once started and then waits (to be
#: SIGKILLed) before it reads or writes anything, its heartbeats going to ``argv[2]``.
KILLED_RUN = """
import sys, time
from pathlib import Path
import odibi_observe as oo
oo.configure(catalog_url=sys.argv[2], mode="inline", heartbeat_interval=0.05)
with oo.node_run("p", "orders"):
    Path(sys.argv[1]).touch()
    while True:
        time.sleep(60)
"""


def test_a_run_killed_before_writing_still_overlaps(
    catalog_url: str, tmp_path: Path, fresh_observer: Any
) -> None:
    """A real SIGKILL: the killed run recorded no phase, the sweep closes it CRASHED at its
    last heartbeat — after the other run started — and the other run overlaps it."""
    marker = tmp_path / "started"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(marker), catalog_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        eventually(lambda: _assert(marker.exists() and child.poll() is None), timeout=60)
        fresh_observer(catalog_url=catalog_url)
        later = committed("orders_hwm", 10)
        assert oo.flush(timeout=30)
        (record,) = [r for r in _runs(catalog_url) if r.run_id == later]

        def beat_after_it() -> None:
            others = [r for r in _runs(catalog_url) if r.run_id != later]
            _assert(len(others) == 1)  # retried (an assertion) until its row is written
            _assert((others[0].heartbeat_ns or 0) > record.started_ns + 10 * OVERLAP_SLACK_NS)

        eventually(beat_after_it, timeout=30)
    finally:
        child.kill()
        child.wait(30)
        child.stderr.close()  # type: ignore[union-attr]
    assert child.returncode == -signal.SIGKILL
    sweep = subprocess.run(
        [sys.executable, *CLI, "sweep", "--catalog", catalog_url],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    (killed,) = [r for r in _runs(catalog_url) if r.run_id != later]
    assert killed.status is RunStatus.CRASHED and not killed.writes and killed.checkpoint is None
    found, _ = findings(catalog_url, tmp_path)
    (overlap,) = found
    assert (overlap["kind"], overlap["run_id"]) == (OVERLAPPING_RUNS, later)
    assert overlap["catalog"]["overlapped"]["run_id"] == killed.run_id
    assert f"run {killed.run_id} recorded no write (it ended CRASHED)" in overlap["detail"]


def _assert(condition: bool) -> None:
    assert condition


def _runs(catalog_url: str) -> list[RunRecord]:
    store = CatalogStore(catalog_url)
    try:
        return store.recent_runs(limit=10)
    finally:
        store.dispose()


def test_an_odibi_hwm_set_back_between_runs_is_regressed(tmp_path: Path) -> None:
    """A real Odibi incremental pipeline: two runs (HWM 14:00, then 19:00); an operator puts
    the HWM back to 14:00 with Odibi's own StateManager (a restored backup); the third run
    reads from 14:00 again and appends 5 orders a second time. Every run succeeds; reconcile
    reports the third as ``checkpoint_regressed``: the state was set back before it."""
    pytest.importorskip("odibi", reason="the Odibi integration needs the 'odibi' extra")
    pytest.importorskip("deltalake", reason="reading the Delta target needs the 'odibi' extra")
    from odibi.config import load_config_from_file
    from odibi.state import StateManager, create_state_backend

    from tests.test_odibi_integration import chdir
    from tests.test_odibi_phases import (
        HWM_KEY,
        incremental_project,
        records,
        run_pipeline,
        target_rows,
        write_events,
    )

    project = incremental_project(tmp_path / "project")
    catalog, traces = f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path / "traces.jsonl"

    def state() -> StateManager:
        with chdir(project):
            config = load_config_from_file(str(project / "odibi.yaml"))
            return StateManager(backend=create_state_backend(config, project_root=str(project)))

    run_pipeline(project, catalog, traces)
    saved = state().get_hwm(HWM_KEY)
    write_events(project, 0, 20)
    run_pipeline(project, catalog, traces)
    state().set_hwm(HWM_KEY, saved)  # the HWM restored to what it was after the first run
    write_events(project, 0, 24)
    run_pipeline(project, catalog, traces)
    first, second, third = records(catalog)
    assert first.status is second.status is third.status is RunStatus.SUCCESS
    assert [w["rows"] for r in (first, second, third) for w in r.writes] == [15, 5, 9]
    assert target_rows(project) == (29, 24)  # orders 15..19 appended twice
    assert second.checkpoint is not None and third.checkpoint is not None
    assert third.checkpoint["previous"] == "2024-01-01 14:00:00"
    report = reconcile(catalog, traces, tmp_path / "report")
    (regressed,) = [d for d in report["discrepancies"] if d["kind"] in SANITY]
    assert (regressed["kind"], regressed["run_id"]) == (CHECKPOINT_REGRESSED, third.run_id)
    assert regressed["detail"].startswith(
        f"the state was set back before this run: the value it replaced ({HWM_KEY} = "
        f"'2024-01-01 14:00:00') is older than '2024-01-01 19:00:00', committed by run "
        f"{second.run_id} before this run started"
    )
