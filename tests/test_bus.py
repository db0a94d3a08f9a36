"""The event bus: delivery, isolation, retries with backoff, bounds, flush and fork."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from odibi_observe._bus import Backoff, EventBus
from odibi_observe._deadletter import DeadLetter
from odibi_observe._selfmetrics import SelfMonitor
from odibi_observe.record import RunEvent
from odibi_observe.sinks.base import RecordRejected
from odibi_observe.testing import InMemorySink
from tests.helpers import (
    POISON_NODE,
    FlakySink,
    SlowSink,
    StrictTextSink,
    finished,
    make_record,
    wait_until,
)


def _monitor() -> SelfMonitor:
    return SelfMonitor(CollectorRegistry())


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_every_sink_receives_every_event_in_order(mode: str) -> None:
    a, b = InMemorySink(), InMemorySink()
    bus = EventBus([a, b], mode=mode, flush_interval=0.01)
    events = [finished(make_record()) for _ in range(1200)]
    for e in events:
        bus.emit(e)
    assert bus.flush(10)
    assert a.events == events
    assert b.events == events
    bus.shutdown()


def test_background_batches_up_to_max_batch() -> None:
    sizes: list[int] = []

    class Recorder(InMemorySink):
        def export(self, events):  # type: ignore[no-untyped-def]
            sizes.append(len(events))
            super().export(events)

    sink = Recorder()
    bus = EventBus([sink], mode="background", max_batch=100, flush_interval=0.5)
    for _ in range(1000):
        bus.emit(finished(make_record()))
    assert bus.flush(10)
    assert sum(sizes) == 1000
    assert max(sizes) <= 100
    assert len(sizes) < 1000  # batched, not one call per event
    bus.shutdown()


def test_failing_sink_does_not_block_the_others_and_is_retried() -> None:
    monitor = _monitor()
    good, bad = InMemorySink(), FlakySink("bad")
    bad.broken = True
    bus = EventBus(
        [bad, good],
        mode="background",
        monitor=monitor,
        flush_interval=0.01,
        retry_initial=0.05,
        retry_max=0.1,
    )
    events = [finished(make_record()) for _ in range(50)]
    for e in events:
        bus.emit(e)
    assert wait_until(lambda: len(good.events) == 50)
    assert wait_until(
        lambda: (
            (
                monitor.registry.get_sample_value(
                    "odibi_observe_sink_errors_total", {"sink": "bad"}
                )
                or 0
            )
            >= 2
        )
    )
    assert bus.pending()["bad"] == 50
    bad.broken = False
    assert wait_until(lambda: len(bad.received) == 50, timeout=5)
    assert bad.received == events  # order kept across the retry
    assert bus.flush(5)
    bus.shutdown()


def test_hung_sink_does_not_delay_other_sinks() -> None:
    slow, fast = SlowSink(), InMemorySink()
    bus = EventBus([slow, fast], mode="background", flush_interval=0.01)
    started = time.monotonic()
    for _ in range(10):
        bus.emit(finished(make_record()))
    assert wait_until(lambda: len(fast.events) == 10, timeout=5)
    assert time.monotonic() - started < 5
    assert not bus.flush(0.2)  # the hung sink cannot confirm
    slow.release.set()
    assert bus.flush(5)
    assert len(slow.received) == 10
    bus.shutdown()


def test_inline_mode_keeps_failed_events_and_delivers_them_first_later() -> None:
    monitor = _monitor()
    sink = FlakySink(fail_times=1)
    bus = EventBus([sink], mode="inline", monitor=monitor, retry_initial=0.0, retry_max=0.0)
    first, second = finished(make_record()), finished(make_record())
    bus.emit(first)  # fails, kept
    assert sink.received == []
    assert bus.pending() == {"flaky": 1}
    bus.emit(second)
    assert sink.received == [first, second]
    assert (
        monitor.registry.get_sample_value("odibi_observe_sink_errors_total", {"sink": "flaky"}) == 1
    )


def test_queue_bound_drops_oldest_and_counts_it() -> None:
    monitor = _monitor()
    slow = SlowSink()
    bus = EventBus(
        [slow], mode="background", monitor=monitor, max_queue=10, max_batch=1, flush_interval=0.0
    )
    for _ in range(30):
        bus.emit(finished(make_record()))
    dropped = monitor.registry.get_sample_value(
        "odibi_observe_events_dropped_total", {"sink": "slow", "reason": "queue_full"}
    )
    assert dropped is not None and dropped >= 19
    slow.release.set()
    bus.shutdown(5)


def test_retry_buffer_bound_drops_oldest_and_counts_it() -> None:
    monitor = _monitor()
    sink = FlakySink()
    sink.broken = True
    bus = EventBus(
        [sink], mode="inline", monitor=monitor, max_retry=5, retry_initial=0.0, retry_max=0.0
    )
    events = [finished(make_record()) for _ in range(8)]
    for e in events:
        bus.emit(e)
    assert (
        monitor.registry.get_sample_value(
            "odibi_observe_events_dropped_total", {"sink": "flaky", "reason": "retry_buffer_full"}
        )
        == 3
    )
    sink.broken = False
    assert bus.flush(1)
    assert sink.received == events[3:]


def test_sink_error_log_is_redacted_and_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    sink = FlakySink()
    sink.broken = True
    bus = EventBus([sink], mode="inline", monitor=_monitor(), retry_initial=0.0, retry_max=0.0)
    with caplog.at_level("WARNING", logger="odibi_observe"):
        for _ in range(20):
            bus.emit(finished(make_record()))
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1
    assert "hunter2" not in caplog.text
    assert "password=***" in warnings[0].getMessage()


class _Unprintable(ConnectionError):
    """A client library's exception whose message cannot be made: ``str()`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("no message")


class _UnprintableFailureSink(FlakySink):
    def export(self, events: Sequence[RunEvent]) -> None:
        with self.lock:
            self.calls += 1
            if self.broken:
                raise _Unprintable()
            self.received.extend(events)


def test_a_sink_error_whose_str_raises_is_reported_and_retried_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = _monitor()
    sink = _UnprintableFailureSink("unprintable")
    sink.broken = True
    bus = EventBus([sink], mode="background", monitor=monitor, retry_initial=0.02, retry_max=0.05)
    events = [finished(make_record()) for _ in range(5)]
    with caplog.at_level("WARNING", logger="odibi_observe"):
        for e in events:
            bus.emit(e)
        assert wait_until(
            lambda: (
                (
                    monitor.registry.get_sample_value(
                        "odibi_observe_sink_errors_total", {"sink": "unprintable"}
                    )
                    or 0
                )
                >= 2
            )
        )
    assert "<unprintable _Unprintable>" in caplog.text
    assert bus.pending()["unprintable"] == 5  # kept, and the worker is still alive
    sink.broken = False
    assert bus.flush(5)
    assert sink.received == events
    bus.shutdown()


def test_backoff_grows_exponentially_with_jitter_and_caps() -> None:
    b = Backoff(initial=1.0, maximum=8.0)
    delays = [b.next_delay() for _ in range(6)]
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert 2.0 <= delays[2] <= 4.0
    assert all(4.0 <= d <= 8.0 for d in delays[3:])
    b.reset()
    assert b.next_delay() <= 1.0


def test_shutdown_flushes_then_counts_what_could_not_be_delivered() -> None:
    monitor = _monitor()
    sink = FlakySink()
    sink.broken = True
    bus = EventBus(
        [sink], mode="background", monitor=monitor, flush_interval=0.0, retry_initial=10.0
    )
    bus.emit(finished(make_record()))
    assert not bus.shutdown(timeout=0.5)
    assert (
        monitor.registry.get_sample_value(
            "odibi_observe_events_dropped_total", {"sink": "flaky", "reason": "shutdown"}
        )
        == 1
    )
    bus.emit(finished(make_record()))  # after shutdown: counted, not raised
    assert (
        monitor.registry.get_sample_value(
            "odibi_observe_events_dropped_total", {"sink": "flaky", "reason": "shutdown"}
        )
        == 2
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_starts_with_empty_queues_and_working_worker() -> None:
    sink = FlakySink()
    sink.broken = True
    bus = EventBus([sink], mode="background", flush_interval=0.0, retry_initial=60.0)
    bus.emit(finished(make_record()))
    assert wait_until(lambda: sink.calls >= 1)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            sink.broken = False
            sink.received.clear()
            ok = bus.pending()["flaky"] == 0
            bus.emit(finished(make_record()))
            ok = ok and bus.flush(5) and len(sink.received) == 1
            os.write(write_fd, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"1"
    os.waitpid(pid, 0)
    assert bus.pending()["flaky"] == 1  # the parent still owns its own undelivered event
    bus.shutdown(0.1)


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_a_sink_only_receives_the_kinds_it_declares(mode: str) -> None:
    from odibi_observe.record import EventKind
    from tests.helpers import started

    class FinishedOnly(InMemorySink):
        kinds = frozenset({EventKind.FINISHED})

    only, every = FinishedOnly(), InMemorySink()
    bus = EventBus([only, every], mode=mode, flush_interval=0.0)
    rec = make_record()
    bus.emit(started(rec))
    bus.emit(finished(rec))
    assert bus.flush(5)
    assert [e.kind for e in only.events] == [EventKind.FINISHED]
    assert [e.kind for e in every.events] == [EventKind.STARTED, EventKind.FINISHED]
    bus.shutdown()


# -- poison records ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_a_poison_event_is_dead_lettered_and_the_rest_of_its_batch_delivered(
    mode: str, tmp_path: Path
) -> None:
    """A sink that fails any batch holding one unencodable record used to retry that batch
    forever. Bisected: the other 7 events of the batch and the events after it are delivered,
    the poison one is dead-lettered once — counted, and kept with its reason in the spool
    directory's dead-letter file."""
    monitor = _monitor()
    sink = StrictTextSink()
    dead = DeadLetter.in_spool_dir(monitor, tmp_path)
    bus = EventBus(
        [sink],
        mode=mode,
        monitor=monitor,
        flush_interval=0.05,
        max_batch=8,
        retry_initial=0.01,
        retry_max=0.02,
        dead_letter=dead,
    )
    events = [finished(make_record(node=POISON_NODE if i == 3 else f"n{i}")) for i in range(8)]
    if mode == "inline":
        bus._channels[0].deliver_inline(events)  # one batch of 8, as the worker would take it
    else:
        for event in events:
            bus.emit(event)
    later = [finished(make_record(node=f"later{i}")) for i in range(20)]
    for event in later:
        bus.emit(event)
    assert bus.flush(10)
    received = [e.run_id for e in sink.received]
    # The parts of a bisected batch may arrive out of order (the contract allows it); the
    # events after the batch come after it.
    assert sorted(received[:7]) == sorted(e.run_id for i, e in enumerate(events) if i != 3)
    assert received[7:] == [e.run_id for e in later]
    assert (
        monitor.registry.get_sample_value("odibi_observe_dead_letter_total", {"sink": "strict"})
        == 1
    )
    assert bus.pending() == {"strict": 0}
    [line] = (tmp_path / "dead-letter" / "dead-letter.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["sink"] == "strict"
    assert entry["run_id"] == events[3].run_id
    assert entry["reason"].startswith("UnicodeEncodeError:")
    assert entry["event"]["record"]["node"] == POISON_NODE  # JSON escapes the surrogates
    assert entry["time"].endswith("Z")
    bus.shutdown()


def test_a_sink_down_is_retried_not_dead_lettered_and_bisection_stays_cheap() -> None:
    """Every part of a batch failing means the backend is down, not a poison record: nothing
    is dead-lettered, the batch is kept, and an attempt costs three calls (whole, halves)."""
    monitor = _monitor()
    sink = StrictTextSink()
    sink.down = True
    bus = EventBus([sink], mode="inline", monitor=monitor, retry_initial=60)
    bus._channels[0].deliver_inline([finished(make_record()) for _ in range(64)])
    assert sink.calls == 3
    assert bus.pending() == {"strict": 64}
    assert (
        monitor.registry.get_sample_value("odibi_observe_dead_letter_total", {"sink": "strict"})
        is None
    )
    sink.down = False
    assert bus.flush(5)
    assert len(sink.received) == 64
    bus.shutdown()


def test_records_a_sink_rejects_are_dead_lettered_without_a_spool_dir(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RecordRejected: the sink recorded the rest; the rejected ones are counted and logged
    (no spool directory: nothing to keep them in) and never offered again."""

    class Picky(InMemorySink):
        name = "picky"

        def export(self, events: Sequence[RunEvent]) -> None:
            bad = [e for e in events if e.record.rows_processed == 13]
            super().export([e for e in events if e not in bad])
            if bad:
                raise RecordRejected(bad, "thirteen rows are unlucky")

    monitor = _monitor()
    sink = Picky()
    bus = EventBus([sink], mode="inline", monitor=monitor)
    events = [finished(make_record(rows=i)) for i in range(10, 16)]
    for event in events:
        bus.emit(event)
    assert bus.flush(5)
    assert [e.record.rows_processed for e in sink.events] == [10, 11, 12, 14, 15]
    assert (
        monitor.registry.get_sample_value("odibi_observe_dead_letter_total", {"sink": "picky"}) == 1
    )
    assert "thirteen rows are unlucky" in caplog.text
    assert "not kept (no spool_dir)" in caplog.text
    assert bus.dead_letter.health()["by_sink"] == {"picky": 1}
    bus.shutdown()


def test_a_spool_that_fills_mid_batch_dead_letters_nothing(tmp_path: Path) -> None:
    """A real spool with room for half a batch: the stored half must not make the refused
    half look like poison. The spool sink says "unavailable", so nothing is bisected into
    the dead letter; every event arrives once, oldest first, when room is made."""
    from odibi_observe.sinks.spool import SpoolSink
    from odibi_observe.spool import Spool

    monitor = _monitor()
    spool = Spool(
        tmp_path / "spool",
        writer_id="w",
        fsync="never",
        segment_bytes=2000,
        max_bytes=3000,
        registry=monitor.registry,
    )
    dead = DeadLetter.in_spool_dir(monitor, tmp_path / "spool")
    bus = EventBus(
        [SpoolSink(spool)],
        mode="inline",
        monitor=monitor,
        retry_initial=0.0,
        retry_max=0.0,
        dead_letter=dead,
    )
    events = [finished(make_record(run_id=f"run-{i:03d}")) for i in range(24)]
    bus._channels[0].deliver_inline(events)
    assert bus.pending()["spool"] > 0
    assert (
        monitor.registry.get_sample_value("odibi_observe_dead_letter_total", {"sink": "spool"})
        is None
    )
    cursor = spool.cursor("reader")
    seen: list[str] = []
    for _ in range(40):
        got = cursor.read(max_frames=1000)
        seen += [RunEvent.from_json(e.payload).run_id for e in got]
        cursor.ack(got)
        spool.gc()
        bus.flush(1.0)
        if not bus.pending()["spool"]:
            break
    seen += [RunEvent.from_json(e.payload).run_id for e in cursor.read(max_frames=1000)]
    assert seen == [e.run_id for e in events]
    assert not (tmp_path / "spool" / "dead-letter" / "dead-letter.jsonl").exists()
    bus.shutdown(1.0)


def test_a_catalog_that_is_unreachable_is_retried_not_bisected(tmp_path: Path) -> None:
    """A catalog that cannot be opened (its directory is gone) fails as a whole: one call
    per attempt, nothing dead-lettered, every run written once it is back."""
    from odibi_observe.catalog import CatalogStore
    from odibi_observe.sinks.catalog import CatalogSink

    home = tmp_path / "gone"
    url = f"sqlite:///{home / 'catalog.db'}"
    monitor = _monitor()
    sink = CatalogSink(url)
    calls: list[int] = []
    real_export = sink.export

    def counted_export(events: Sequence[RunEvent]) -> None:
        calls.append(len(events))
        real_export(events)

    sink.export = counted_export  # type: ignore[method-assign]  # count the calls it gets
    bus = EventBus([sink], mode="inline", monitor=monitor, retry_initial=60)
    runs = [finished(make_record()) for _ in range(16)]
    bus._channels[0].deliver_inline(runs)
    assert calls == [16]
    assert bus.pending() == {"catalog": 16}
    assert (
        monitor.registry.get_sample_value("odibi_observe_dead_letter_total", {"sink": "catalog"})
        is None
    )
    home.mkdir()
    assert bus.flush(10)
    store = CatalogStore(url)
    assert {r.run_id for r in store.recent_runs(limit=100)} == {e.run_id for e in runs}
    store.dispose()
    bus.shutdown(1.0)
