"""SpoolPump: one cursor per sink over a real spool directory; sidecar mode end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe._deadletter import DeadLetter
from odibi_observe._pump import SpoolPump
from odibi_observe._selfmetrics import SelfMonitor
from odibi_observe.conventions import RunStatus
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sinks.base import Sink
from odibi_observe.spool import Spool
from odibi_observe.testing import InMemorySink
from tests.helpers import (
    POISON_NODE,
    Configure,
    FlakySink,
    StrictTextSink,
    finished,
    make_record,
    started,
)


def spool_events(spool: Spool, events: list[RunEvent]) -> None:
    for event in events:
        spool.append(event.to_json().encode())


def some_events(n: int) -> list[RunEvent]:
    out = []
    for i in range(n):
        record = make_record(node=f"n{i}")
        out += [
            started(record.finished(status=RunStatus.RUNNING, ended_ns=None, rows_processed=None)),
            finished(record),
        ]
    return out


@pytest.fixture
def monitor() -> SelfMonitor:
    return SelfMonitor(CollectorRegistry())


SinkT = TypeVar("SinkT", bound=Sink)


def named(sink: SinkT, name: str) -> SinkT:
    """``sink`` renamed, keeping its own type (so tests read its ``events``)."""
    sink.name = name
    return sink


def test_a_failing_sink_does_not_hold_back_the_others_and_catches_up(
    tmp_path: Path, monitor: SelfMonitor
) -> None:
    spool = Spool(tmp_path / "spool", fsync="never")
    events = some_events(20)
    spool_events(spool, events)
    healthy = named(InMemorySink(), "healthy")
    flaky = FlakySink("flaky")
    flaky.broken = True
    pump = SpoolPump(
        spool, [healthy, flaky], monitor=monitor, backoff_initial=0.01, backoff_max=0.02
    )

    pump.pump_once()
    assert [e.run_id for e in healthy.events] == [e.run_id for e in events]
    assert flaky.received == []
    assert pump.backlog() == {"healthy": 0, "flaky": 40}
    assert (
        monitor.registry.get_sample_value("odibi_observe_sink_errors_total", {"sink": "flaky"}) == 1
    )

    flaky.broken = False
    assert pump.drain(5)
    # Every event exactly once, in spool order, with the original records.
    assert [e.to_json() for e in flaky.received] == [e.to_json() for e in events]


def test_acknowledged_frames_are_not_delivered_again_after_a_restart(
    tmp_path: Path, monitor: SelfMonitor
) -> None:
    spool = Spool(tmp_path / "spool", fsync="never")
    spool_events(spool, some_events(5))
    first = named(InMemorySink(), "catalog")
    SpoolPump(spool, [first], monitor=monitor).pump_once()
    assert len(first.events) == 10

    more = some_events(2)
    spool_events(spool, more)
    reopened = Spool(tmp_path / "spool", fsync="never")
    second = named(InMemorySink(), "catalog")
    SpoolPump(reopened, [second], monitor=monitor).pump_once()
    assert [e.to_json() for e in second.events] == [e.to_json() for e in more]


def test_an_undecodable_frame_is_counted_and_skipped(tmp_path: Path, monitor: SelfMonitor) -> None:
    spool = Spool(tmp_path / "spool", fsync="never")
    good = some_events(2)
    spool_events(spool, good[:2])
    spool.append(b"{not a run event")
    spool_events(spool, good[2:])
    sink = named(InMemorySink(), "catalog")
    SpoolPump(spool, [sink], monitor=monitor).pump_once()
    assert [e.to_json() for e in sink.events] == [e.to_json() for e in good]
    assert (
        monitor.registry.get_sample_value(
            "odibi_observe_invalid_input_total", {"field": "spool_payload"}
        )
        == 1
    )


def test_a_sink_gets_only_the_kinds_it_wants_and_its_cursor_moves_past_the_rest(
    tmp_path: Path, monitor: SelfMonitor
) -> None:
    class SpansOnly(InMemorySink):
        kinds = frozenset({EventKind.FINISHED})

    spool = Spool(tmp_path / "spool", fsync="never")
    spool_events(spool, some_events(3))
    sink = named(SpansOnly(), "otel")
    pump = SpoolPump(spool, [sink], monitor=monitor)
    pump.pump_once()
    assert {e.kind for e in sink.events} == {EventKind.FINISHED}
    assert pump.backlog() == {"otel": 0}


def test_worker_threads_deliver_and_stop(tmp_path: Path, monitor: SelfMonitor) -> None:
    spool = Spool(tmp_path / "spool", fsync="never")
    sink = named(InMemorySink(), "catalog")
    pump = SpoolPump(spool, [sink], monitor=monitor, poll_interval=0.01)
    pump.start()
    try:
        spool_events(spool, some_events(50))
        assert pump.drain(10)
        assert len(sink.events) == 100
    finally:
        pump.stop()
    assert pump.delivered() == {"catalog": 100}


def test_sink_names_must_be_unique(tmp_path: Path, monitor: SelfMonitor) -> None:
    with pytest.raises(ValueError, match="unique"):
        SpoolPump(Spool(tmp_path / "s"), [InMemorySink(), InMemorySink()], monitor=monitor)


def test_sidecar_mode_spools_the_same_records_the_sinks_would_see(
    tmp_path: Path, fresh_observer: Configure
) -> None:
    """The decorator in sidecar mode writes exactly the events inline mode delivers."""
    spool_dir = tmp_path / "spool"
    fresh_observer(
        mode="sidecar", spool_dir=spool_dir, handle_sigterm=False, heartbeat_interval=0, strict=True
    )

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
    done = {r.node: r for r in sink.finished}
    assert done["ok"].status is RunStatus.SUCCESS and done["ok"].rows_processed == 3
    assert done["bad"].status is RunStatus.FAILURE and done["bad"].error_type == "ValueError"
    assert [e.kind for e in sink.events] == [
        EventKind.STARTED,
        EventKind.FINISHED,
        EventKind.STARTED,
        EventKind.FINISHED,
    ]


def test_sidecar_mode_without_a_spool_dir_is_a_configuration_error(
    fresh_observer: Configure,
) -> None:
    with pytest.raises(oo.ConfigurationError, match="spool_dir"):
        fresh_observer(mode="sidecar", strict=True, handle_sigterm=False)


def test_an_unusable_spool_dir_falls_back_to_in_process_recording(
    tmp_path: Path, fresh_observer: Configure
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    observer = fresh_observer(mode="sidecar", spool_dir=blocker / "spool", handle_sigterm=False)
    assert observer.settings.mode == "background"
    with oo.node_run("p", "n"):
        pass  # the pipeline is not affected


# -- poison records ------------------------------------------------------------------------


def _bad_types_frame() -> tuple[str, bytes]:
    """A finished event whose record has a string row count and a numeric node name."""
    data = json.loads(finished(make_record()).to_json())
    data["record"]["rows_processed"] = "12"
    return data["record"]["run_id"], json.dumps(data).encode()


def test_a_record_with_bad_types_is_dead_lettered_with_its_reason_for_every_sink(
    tmp_path: Path, monitor: SelfMonitor
) -> None:
    """from_dict refuses a record whose field has the wrong type (a string row count used to
    pass, then fail the metric counters on every retry): each sink's cursor moves past it,
    it is dead-lettered once per sink with the reason, and the events after it arrive."""
    spool = Spool(tmp_path / "spool", fsync="never")
    before, after = some_events(2), some_events(3)
    spool_events(spool, before)
    run_id, frame = _bad_types_frame()
    spool.append(frame)
    spool_events(spool, after)
    dead = DeadLetter.in_spool_dir(monitor, tmp_path / "spool")
    sinks = [named(InMemorySink(), "catalog"), named(InMemorySink(), "otel")]
    SpoolPump(spool, sinks, monitor=monitor, dead_letter=dead).pump_once()
    for sink in sinks:
        assert [e.to_json() for e in sink.events] == [e.to_json() for e in before + after]
        assert (
            monitor.registry.get_sample_value(
                "odibi_observe_dead_letter_total", {"sink": sink.name}
            )
            == 1
        )
    lines = [json.loads(x) for x in dead.path.read_text().splitlines()]  # type: ignore[union-attr]
    assert sorted(x["sink"] for x in lines) == ["catalog", "otel"]
    for line in lines:
        assert line["reason"].startswith("TypeError: RunRecord field 'rows_processed' must be ")
        assert line["payload"]["record"]["run_id"] == run_id
    # Acknowledged: a restarted pump does not offer it (nor dead-letter it) again.
    again = [named(InMemorySink(), "catalog"), named(InMemorySink(), "otel")]
    SpoolPump(
        Spool(tmp_path / "spool", fsync="never"), again, monitor=monitor, dead_letter=dead
    ).pump_once()
    assert all(s.events == [] for s in again)
    assert len(dead.path.read_text().splitlines()) == 2  # type: ignore[union-attr]


def test_a_poison_event_is_isolated_and_the_cursor_goes_on_across_restarts(
    tmp_path: Path, monitor: SelfMonitor
) -> None:
    """A sink that fails every batch holding an unencodable node name (the OTLP exporter's
    behaviour) used to stop its cursor at that batch for good, restart or not."""
    spool = Spool(tmp_path / "spool", fsync="never")
    events = [finished(make_record(node=POISON_NODE if i == 5 else f"n{i}")) for i in range(12)]
    spool_events(spool, events)
    dead = DeadLetter.in_spool_dir(monitor, tmp_path / "spool")
    sink = StrictTextSink("otel")
    SpoolPump(spool, [sink], monitor=monitor, dead_letter=dead, max_batch=8).pump_once()
    assert sorted(e.run_id for e in sink.received) == sorted(
        e.run_id for i, e in enumerate(events) if i != 5
    )
    [line] = dead.path.read_text().splitlines()  # type: ignore[union-attr]
    assert json.loads(line)["run_id"] == events[5].run_id
    restarted = StrictTextSink("otel")
    SpoolPump(
        Spool(tmp_path / "spool", fsync="never"), [restarted], monitor=monitor, dead_letter=dead
    ).pump_once()
    assert restarted.received == []
    assert restarted.calls == 0
