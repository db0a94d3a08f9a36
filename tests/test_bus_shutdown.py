"""Shutdown of the bus: one deadline for every sink, and what is left goes to a keeper."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from odibi_observe._bus import EventBus
from odibi_observe._selfmetrics import SelfMonitor
from odibi_observe._spill import SpoolKeeper, default_spill_dir
from odibi_observe.record import RunEvent
from odibi_observe.sinks.base import Sink
from odibi_observe.spool import Spool
from odibi_observe.testing import InMemorySink
from tests.helpers import Configure, FlakySink, SlowSink, finished, make_record, started


class ListKeeper:
    def __init__(self, fail: bool = False) -> None:
        self.kept: list[RunEvent] = []
        self.fail = fail

    def keep(self, events: Sequence[RunEvent]) -> str:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.kept.extend(events)
        return "the test's list"


class HungShutdown(InMemorySink):
    """Records, but hangs in ``shutdown`` and ``force_flush`` (a pool that never closes)."""

    name = "hung-shutdown"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def force_flush(self, timeout: float | None = None) -> bool:
        self.release.wait(30)
        return True

    def shutdown(self) -> None:
        self.release.wait(30)


def _dropped(monitor: SelfMonitor, sink: str) -> float:
    value = monitor.registry.get_sample_value(
        "odibi_observe_events_dropped_total", {"sink": sink, "reason": "shutdown"}
    )
    return value or 0.0


def test_two_hung_sinks_share_one_deadline() -> None:
    a, b = SlowSink(), SlowSink()
    b.name = "slow2"
    bus = EventBus([a, b], mode="background", flush_interval=0.0)
    bus.emit(finished(make_record()))
    start = time.monotonic()
    assert not bus.shutdown(timeout=0.5, keeper=ListKeeper())
    # Before: 0.5 s of flush, then up to 5 s more waiting for each hung worker.
    assert time.monotonic() - start < 1.2
    a.release.set()
    b.release.set()


def test_a_sink_hung_in_flush_and_shutdown_does_not_hold_the_bus() -> None:
    sink = HungShutdown()
    bus = EventBus([sink], mode="background", flush_interval=0.0)
    bus.emit(finished(make_record()))
    start = time.monotonic()
    assert not bus.flush(timeout=0.3)
    assert time.monotonic() - start < 0.8
    start = time.monotonic()
    bus.shutdown(timeout=0.3)
    assert time.monotonic() - start < 1.2
    sink.release.set()


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_undelivered_events_go_to_the_keeper_once_and_are_not_counted_dropped(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = SelfMonitor(CollectorRegistry())
    good, bad, worse = InMemorySink(), FlakySink("bad"), FlakySink("worse")
    bad.broken = worse.broken = True
    bus = EventBus(
        [good, bad, worse], mode=mode, monitor=monitor, flush_interval=0.0, retry_initial=10.0
    )
    records = [make_record() for _ in range(3)]
    events = [ev for r in records for ev in (started(r), finished(r))]
    for event in events:
        bus.emit(event)
    keeper = ListKeeper()
    with caplog.at_level(logging.WARNING, logger="odibi_observe"):
        assert not bus.shutdown(timeout=0.5, keeper=keeper)
    assert keeper.kept == events  # once, in order, although two sinks missed them
    assert _dropped(monitor, "bad") == _dropped(monitor, "worse") == 0
    summaries = [r.getMessage() for r in caplog.records if "not delivered at" in r.getMessage()]
    assert len(summaries) == 2  # one per sink that had leftovers, none for the good one
    assert "odibi-observe sink 'bad': 3 run(s) (6 event(s)) not delivered at exit" in summaries[0]
    assert "3 run(s) kept in the test's list" in summaries[0]
    assert "ConnectionError: backend unavailable" in summaries[0]
    assert "hunter2" not in " ".join(summaries)  # the sink error is redacted
    assert good.events == events


def test_a_failing_keeper_means_dropped_counted_and_said(caplog: pytest.LogCaptureFixture) -> None:
    monitor = SelfMonitor(CollectorRegistry())
    bad = FlakySink("bad")
    bad.broken = True
    bus = EventBus([bad], mode="background", monitor=monitor, flush_interval=0.0)
    bus.emit(finished(make_record()))
    with caplog.at_level(logging.WARNING, logger="odibi_observe"):
        bus.shutdown(timeout=0.5, keeper=ListKeeper(fail=True))
    assert _dropped(monitor, "bad") == 1
    (summary,) = [r.getMessage() for r in caplog.records if "not delivered at" in r.getMessage()]
    assert "dropped; could not keep them: OSError: [Errno 28] No space left on device" in summary


def test_without_a_keeper_shutdown_drops_and_counts_as_before() -> None:
    monitor = SelfMonitor(CollectorRegistry())
    bad = FlakySink("bad")
    bad.broken = True
    bus = EventBus([bad], mode="background", monitor=monitor, flush_interval=0.0)
    bus.emit(finished(make_record()))
    bus.shutdown(timeout=0.3)
    assert _dropped(monitor, "bad") == 1


def test_an_export_in_flight_at_the_deadline_is_kept() -> None:
    slow = SlowSink()
    bus = EventBus([slow], mode="background", flush_interval=0.0)
    event = finished(make_record())
    bus.emit(event)
    keeper = ListKeeper()
    bus.shutdown(timeout=0.3, keeper=keeper)
    assert keeper.kept == [event]
    slow.release.set()


def test_spool_keeper_writes_frames_the_spool_reads_back(tmp_path: object) -> None:
    directory = f"{tmp_path}/spill"
    events = [finished(make_record()) for _ in range(3)]
    where = SpoolKeeper(directory).keep(events)
    assert where.startswith(f"{directory} for delivery by 'odibi-observe sweep --spool-dir")
    spool = Spool(directory)
    try:
        read = [RunEvent.from_json(e.payload) for e in spool.cursor("t").read()]
    finally:
        spool.close()
    assert [e.run_id for e in read] == [e.run_id for e in events]


def test_the_default_spill_dir_follows_xdg_state_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/somewhere/state")
    assert default_spill_dir() == "/somewhere/state/odibi-observe/spool"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/pipe")
    assert default_spill_dir() == "/home/pipe/.local/state/odibi-observe/spool"


class _NeverSink(Sink):
    name = "never"

    def export(self, events: Sequence[RunEvent]) -> None:
        raise RuntimeError("line one\nline two of a long driver message")


def test_the_exit_warning_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus([_NeverSink()], mode="inline")
    bus.emit(finished(make_record()))
    with caplog.at_level(logging.WARNING, logger="odibi_observe"):
        bus.shutdown(timeout=0.2, keeper=ListKeeper())
    (summary,) = [r.getMessage() for r in caplog.records if "not delivered at" in r.getMessage()]
    assert "\n" not in summary and "RuntimeError: line one" in summary


class FailsThenHangs(SlowSink):
    """Refuses the first export, then hangs: a collector that goes from down to stuck."""

    name = "fails-then-hangs"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def export(self, events: Sequence[RunEvent]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("connection refused")
        super().export(events)


def test_inline_flush_of_a_hung_sink_is_bounded_and_its_batch_kept() -> None:
    sink = FailsThenHangs()
    bus = EventBus([sink], mode="inline")
    event = finished(make_record())
    bus.emit(event)  # refused: kept for retry
    keeper = ListKeeper()
    start = time.monotonic()
    assert not bus.shutdown(timeout=0.3, keeper=keeper)  # the retry hangs
    assert time.monotonic() - start < 1.0
    assert sink.calls == 2
    assert keeper.kept == [event]
    sink.release.set()


def test_shutdown_with_spill_keeps_what_the_sinks_did_not_take(
    tmp_path: object, fresh_observer: Configure
) -> None:
    import odibi_observe as oo

    broken = FlakySink("catalog")
    broken.broken = True
    fresh_observer(sinks=[broken], mode="background", spool_dir=f"{tmp_path}/spool")
    with oo.node_run("p", "n"):
        pass
    assert oo.shutdown(timeout=0.3, spill=True) is False
    spool = Spool(f"{tmp_path}/spool")
    try:
        kept = [RunEvent.from_json(e.payload) for e in spool.cursor("t").read()]
    finally:
        spool.close()
    assert [e.kind.value for e in kept] == ["started", "finished"]
