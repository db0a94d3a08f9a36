"""Small builders shared by the tests."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from odibi_observe._runtime import Observer
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.base import Sink
from odibi_observe.testing import contracts

# One record builder: the one shipped to users with the conformance suites.
make_record = contracts.make_record


def started(record: RunRecord) -> RunEvent:
    return RunEvent(EventKind.STARTED, record)


def finished(record: RunRecord) -> RunEvent:
    return RunEvent(EventKind.FINISHED, record)


class FlakySink(Sink):
    """Fails while ``broken`` is true (or for the first ``fail_times`` calls), then records."""

    def __init__(self, name: str = "flaky", fail_times: int = 0) -> None:
        self.name = name
        self.fail_times = fail_times
        self.broken = False
        self.calls = 0
        self.received: list[RunEvent] = []
        self.lock = threading.Lock()

    def export(self, events: Sequence[RunEvent]) -> None:
        with self.lock:
            self.calls += 1
            if self.broken or self.calls <= self.fail_times:
                raise ConnectionError("backend unavailable (password=hunter2)")
            self.received.extend(events)


class SlowSink(Sink):
    """Blocks every export until ``release`` is set: a hung backend."""

    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received: list[RunEvent] = []

    def export(self, events: Sequence[RunEvent]) -> None:
        self.release.wait(30)
        self.received.extend(events)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


#: A node name as Python decodes a latin-1 file name (``load_résumé.csv``): lone surrogates.
POISON_NODE = os.fsdecode(b"load_r\xe9sum\xe9.csv")
#: How every backend records it (``odibi_observe._textsafe``): the surrogates escaped.
POISON_NODE_ESCAPED = "load_r\\udce9sum\\udce9.csv"


class StrictTextSink(Sink):
    """A backend that encodes each batch as UTF-8 before recording it, all or nothing — what
    an OTLP protobuf exporter does: one unencodable record fails the whole batch, every time.
    ``down`` makes every export fail (an outage)."""

    def __init__(self, name: str = "strict") -> None:
        self.name = name
        self.down = False
        self.calls = 0
        self.received: list[RunEvent] = []

    def export(self, events: Sequence[RunEvent]) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("backend unavailable")
        for event in events:
            event.to_json().encode("ascii")  # escaped: always encodes
            event.record.node.encode("utf-8")  # raises UnicodeEncodeError for a surrogate
        self.received.extend(events)


#: What the ``fresh_observer`` fixture (tests/conftest.py) gives a test: ``configure()``.
Configure = Callable[..., Observer]


def reconcile_argv(
    catalog: str, traces: Path, out: Path, *extra: str, since: str = "2000-01-01T00:00:00"
) -> list[str]:
    """The arguments of ``odibi-observe reconcile`` of ``catalog`` against one OTLP-JSON
    trace file, from ``since``, no grace period, its JSON report written into ``out``."""
    return [
        "reconcile",
        "--catalog",
        catalog,
        "--traces",
        f"otlp-json:{traces}",
        "--since",
        since,
        "--grace",
        "0s",
        *extra,
        "--format",
        "json",
        "--out",
        str(out),
        "--quiet",
    ]
