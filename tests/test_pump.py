"""SpoolPump: one cursor per sink over a real spool directory; sidecar mode end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe.conventions import RunStatus
from odibi_observe.pump import SpoolPump
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.selfmetrics import SelfMonitor
from odibi_observe.sinks.base import Sink
from odibi_observe.spool import Spool
from odibi_observe.testing import InMemorySink
from tests.helpers import FlakySink, finished, make_record, started


def spool_events(spool: Spool, events: list[RunEvent]) -> None:
    for event in events:
        spool.append(event.to_json().encode())


def some_events(n: int) -> list[RunEvent]:
    out = []
    for i in range(n):
        record = make_record(node=f"n{i}")
        out += [started(record.finished(status=RunStatus.RUNNING, ended_ns=None,
                                        rows_processed=None)), finished(record)]
    return out


@pytest.fixture
def monitor() -> SelfMonitor:
    return SelfMonitor(CollectorRegistry())


def named(sink: Sink, name: str) -> Sink:
    sink.name = name
    return sink


def test_a_failing_sink_does_not_hold_back_the_others_and_catches_up(
        tmp_path: Path, monitor: SelfMonitor) -> None:
    spool = Spool(tmp_path / "spool", fsync="never")
    events = some_events(20)
    spool_events(spool, events)
    healthy = named(InMemorySink(), "healthy")
    flaky = FlakySink("flaky")
    flaky.broken = True
    pump = SpoolPump(spool, [healthy, flaky], monitor=monitor, backoff_initial=0.01,
                     backoff_max=0.02)

    pump.pump_once()
    assert [e.run_id for e in healthy.events] == [e.run_id for e in events]  # type: ignore[attr-defined]
    assert flaky.received == []
    assert pump.backlog() == {"healthy": 0, "flaky": 40}
    assert monitor.registry.get_sample_value(
        "odibi_observe_sink_errors_total", {"sink": "flaky"}) == 1

    flaky.broken = False
    assert pump.drain(5)
    # Every event exactly once, in spool order, with the original records.
    assert [e.to_json() for e in flaky.received] == [e.to_json() for e in events]


def test_acknowledged_frames_are_not_delivered_again_after_a_restart(
        tmp_path: Path, monitor: SelfMonitor) -> None:
    spool = Spool(tmp_path / "spool", fsync="never")
    spool_events(spool, some_events(5))
    first = named(InMemorySink(), "catalog")
    SpoolPump(spool, [first], monitor=monitor).pump_once()
    assert len(first.events) == 10  # type: ignore[arg-type]

    more = some_events(2)
    spool_events(spool, more)
    reopened = Spool(tmp_path / "spool", fsync="never")
    second = named(InMemorySink(), "catalog")
    SpoolPump(reopened, [second], monitor=monitor).pump_once()
    assert [e.to_json() for e in second.events] == [e.to_json() for e in more]  # type: ignore[attr-defined]


def test_an_undecodable_frame_is_counted_and_skipped(tmp_path: Path, monitor: SelfMonitor) -> None:
    spool = Spool(tmp_path / "spool", fsync="never")
    good = some_events(2)
    spool_events(spool, good[:2])
    spool.append(b"{not a run event")
    spool_events(spool, good[2:])
    sink = named(InMemorySink(), "catalog")
    SpoolPump(spool, [sink], monitor=monitor).pump_once()
    assert [e.to_json() for e in sink.events] == [e.to_json() for e in good]  # type: ignore[attr-defined]
    assert monitor.registry.get_sample_value(
        "odibi_observe_invalid_input_total", {"field": "spool_payload"}) == 1


def test_a_sink_gets_only_the_kinds_it_wants_and_its_cursor_moves_past_the_rest(
        tmp_path: Path, monitor: SelfMonitor) -> None:
    class SpansOnly(InMemorySink):
        kinds = frozenset({EventKind.FINISHED})

    spool = Spool(tmp_path / "spool", fsync="never")
    spool_events(spool, some_events(3))
    sink = named(SpansOnly(), "otel")
    pump = SpoolPump(spool, [sink], monitor=monitor)
    pump.pump_once()
    assert {e.kind for e in sink.events} == {EventKind.FINISHED}  # type: ignore[attr-defined]
    assert pump.backlog() == {"otel": 0}


def test_worker_threads_deliver_and_stop(tmp_path: Path, monitor: SelfMonitor) -> None:
    spool = Spool(tmp_path / "spool", fsync="never")
    sink = named(InMemorySink(), "catalog")
    pump = SpoolPump(spool, [sink], monitor=monitor, poll_interval=0.01)
    pump.start()
    try:
        spool_events(spool, some_events(50))
        assert pump.drain(10)
        assert len(sink.events) == 100  # type: ignore[arg-type]
    finally:
        pump.stop()
    assert pump.delivered() == {"catalog": 100}


def test_sink_names_must_be_unique(tmp_path: Path, monitor: SelfMonitor) -> None:
    with pytest.raises(ValueError, match="unique"):
        SpoolPump(Spool(tmp_path / "s"), [InMemorySink(), InMemorySink()], monitor=monitor)


def test_sidecar_mode_spools_the_same_records_the_sinks_would_see(tmp_path: Path) -> None:
    """The decorator in sidecar mode writes exactly the events inline mode delivers."""
    spool_dir = tmp_path / "spool"
    oo.configure(mode="sidecar", spool_dir=spool_dir, handle_sigterm=False,
                 heartbeat_interval=0, strict=True)
    try:
        @oo.observe_node(pipeline="p")
        def ok() -> list[int]:
            return [1, 2, 3]

        @oo.observe_node(pipeline="p")
        def bad() -> None:
            raise ValueError("boom")

        ok()
        with pytest.raises(ValueError):
            bad()
        # On disk already, before any flush: a SIGKILL now would lose nothing.
        sink = named(InMemorySink(), "catalog")
        SpoolPump(Spool(spool_dir), [sink], monitor=SelfMonitor()).pump_once()
    finally:
        oo.shutdown()
    done = {r.node: r for r in sink.finished}  # type: ignore[attr-defined]
    assert done["ok"].status is RunStatus.SUCCESS and done["ok"].rows_processed == 3
    assert done["bad"].status is RunStatus.FAILURE and done["bad"].error_type == "ValueError"
    assert [e.kind for e in sink.events] == [  # type: ignore[attr-defined]
        EventKind.STARTED, EventKind.FINISHED, EventKind.STARTED, EventKind.FINISHED]


def test_sidecar_mode_without_a_spool_dir_is_a_configuration_error() -> None:
    with pytest.raises(oo.ConfigurationError, match="spool_dir"):
        oo.configure(mode="sidecar", strict=True, handle_sigterm=False)


def test_an_unusable_spool_dir_falls_back_to_in_process_recording(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    observer = oo.configure(mode="sidecar", spool_dir=blocker / "spool", handle_sigterm=False)
    try:
        assert observer.settings.mode == "background"
        with oo.node_run("p", "n"):
            pass  # the pipeline is not affected
    finally:
        oo.shutdown()
