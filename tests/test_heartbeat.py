"""Heartbeats: sent while a node runs, stop when it ends, reach the catalog's heartbeat_at."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import odibi_observe as oo
from odibi_observe import _heartbeat as heartbeat
from odibi_observe import _runtime as runtime
from odibi_observe.catalog import CatalogStore
from odibi_observe.conventions import RunStatus
from odibi_observe.record import EventKind
from odibi_observe.sidecar.sweeper import Sweeper
from odibi_observe.testing import InMemorySink
from tests.helpers import Configure


def beats(sink: InMemorySink) -> list[int]:
    return [e.record.heartbeat_ns or 0 for e in sink.events if e.kind is EventKind.HEARTBEAT]


def test_beat_sends_one_heartbeat_per_active_run_with_the_clock_time(
    fresh_observer: Configure,
) -> None:
    sink = InMemorySink()
    fresh_observer(sinks=[sink], mode="inline", heartbeat_interval=0, handle_sigterm=False)
    hb = heartbeat.Heartbeat(interval=60, clock=lambda: 123_456_789)
    assert hb.beat() == 0  # no run active
    with oo.node_run("p", "a") as a, oo.node_run("p", "b") as b:
        assert hb.beat() == 2
    sent = {e.record.run_id: e.record for e in sink.events if e.kind is EventKind.HEARTBEAT}
    assert set(sent) == {a.run_id, b.run_id}
    assert {r.heartbeat_ns for r in sent.values()} == {123_456_789}
    assert {r.status for r in sent.values()} == {RunStatus.RUNNING}
    assert hb.beat() == 0  # both ended


def test_heartbeats_flow_while_a_node_runs_and_stop_after(fresh_observer: Configure) -> None:
    sink = InMemorySink()
    fresh_observer(sinks=[sink], mode="inline", heartbeat_interval=0.05, handle_sigterm=False)
    with oo.node_run("p", "slow"):
        time.sleep(0.4)
    during = beats(sink)
    assert len(during) >= 3
    assert during == sorted(during)
    time.sleep(0.2)
    assert beats(sink) == during  # nothing after the run ended


def test_zero_interval_sends_none(fresh_observer: Configure) -> None:
    sink = InMemorySink()
    fresh_observer(sinks=[sink], mode="inline", heartbeat_interval=0, handle_sigterm=False)
    with oo.node_run("p", "n"):
        time.sleep(0.1)
    assert beats(sink) == []


def test_heartbeats_move_heartbeat_at_and_never_touch_a_finished_row(
    tmp_path: Path, fresh_observer: Configure
) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    fresh_observer(catalog_url=url, mode="inline", heartbeat_interval=0.05, handle_sigterm=False)
    store = CatalogStore(url)
    with oo.node_run("p", "n") as run:
        time.sleep(0.3)
        first = store.get(run.run_id)
        assert first is not None and first.heartbeat_ns is not None
        time.sleep(0.2)
        second = store.get(run.run_id)
        assert second is not None and second.heartbeat_ns > first.heartbeat_ns  # type: ignore[operator]
    heartbeat.Heartbeat(60).beat()  # nothing active: no effect
    final = store.get(run.run_id)
    assert final is not None and final.status is RunStatus.SUCCESS
    store.dispose()


def test_a_long_cpu_bound_step_keeps_heartbeating_and_is_not_swept(
    tmp_path: Path, fresh_observer: Configure
) -> None:
    """A node holding the GIL in pure Python still lets the heartbeat thread run."""
    url = f"sqlite:///{tmp_path}/c.db"
    fresh_observer(catalog_url=url, mode="inline", heartbeat_interval=0.05, handle_sigterm=False)
    store = CatalogStore(url)
    # pid check off and every host: only the heartbeat can keep the run open.
    sweeper = Sweeper(store, all_hosts=True, pid_check=False, heartbeat_timeout=0.5)
    verdicts: list[int] = []

    def sweep_mid_step() -> None:
        time.sleep(1.0)
        verdicts.append(len(sweeper.sweep().closed))

    with oo.node_run("p", "cpu") as run:
        checker = threading.Thread(target=sweep_mid_step)
        checker.start()
        deadline = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < deadline:  # busy, never sleeps
            n += 1
        checker.join()
    assert verdicts == [0]
    row = store.get(run.run_id)
    assert row is not None and row.status is RunStatus.SUCCESS
    store.dispose()


def test_heartbeat_interval_is_validated(fresh_observer: Configure) -> None:
    with pytest.raises(oo.ConfigurationError, match="heartbeat_interval"):
        fresh_observer(heartbeat_interval=-1, strict=True, handle_sigterm=False)


def _heartbeat_threads() -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if t.name == "odibi-observe-heartbeat" and t.is_alive()
    ]


def test_shutdown_stops_the_heartbeat_thread_and_configure_starts_it_again(
    fresh_observer: Configure,
) -> None:
    fresh_observer(
        sinks=[InMemorySink()], mode="inline", heartbeat_interval=0.05, handle_sigterm=False
    )
    assert len(_heartbeat_threads()) == 1 and runtime.heartbeat_running()
    oo.shutdown()
    assert _heartbeat_threads() == [] and not runtime.heartbeat_running()
    sink = InMemorySink()
    fresh_observer(sinks=[sink], mode="inline", heartbeat_interval=0.05, handle_sigterm=False)
    assert len(_heartbeat_threads()) == 1
    with oo.node_run("p", "n"):
        time.sleep(0.3)
    assert beats(sink)  # the new thread beats for the new observer's runs


def test_a_new_interval_replaces_the_thread_and_zero_stops_it(fresh_observer: Configure) -> None:
    fresh_observer(
        sinks=[InMemorySink()], mode="inline", heartbeat_interval=0.05, handle_sigterm=False
    )
    (first,) = _heartbeat_threads()
    fresh_observer(
        sinks=[InMemorySink()], mode="inline", heartbeat_interval=0.07, handle_sigterm=False
    )
    (second,) = _heartbeat_threads()
    assert second is not first and not first.is_alive()
    fresh_observer(
        sinks=[InMemorySink()], mode="inline", heartbeat_interval=0, handle_sigterm=False
    )
    assert _heartbeat_threads() == []
