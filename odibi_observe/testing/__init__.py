"""Test helpers shipped to users: assert on the records your own pipelines produce.

::

    from odibi_observe.testing import capture_runs

    def test_my_pipeline():
        with capture_runs() as runs:
            run_my_pipeline()
        assert [r.status for r in runs.finished] == [RunStatus.SUCCESS] * 3

:func:`capture_runs` installs an inline observer whose only sink is an :class:`InMemorySink`
(no files, no network), and restores the previous observer afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from odibi_observe import _runtime as runtime
from odibi_observe.conventions import RunStatus
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.base import Sink


class InMemorySink(Sink):
    """Keeps every event it receives, in order. Thread-safe."""

    name = "memory"
    kinds = frozenset(EventKind)  # pipeline runs too: see ``pipeline_runs``

    def __init__(self) -> None:
        self._events: list[RunEvent] = []
        self._lock = threading.Lock()

    def export(self, events: Sequence[RunEvent]) -> None:
        with self._lock:
            self._events.extend(events)

    @property
    def events(self) -> list[RunEvent]:
        with self._lock:
            return list(self._events)

    @property
    def finished(self) -> list[RunRecord]:
        """Terminal records, one per run (the latest if a run was delivered twice)."""
        return self._latest(EventKind.FINISHED)

    @property
    def pipeline_runs(self) -> list[RunRecord]:
        """Pipeline-run records (``EventKind.PIPELINE``), the latest per pipeline run: the
        ``run_id`` is the pipeline run id, the counts are in ``attributes``."""
        return self._latest(EventKind.PIPELINE)

    def _latest(self, kind: EventKind) -> list[RunRecord]:
        latest: dict[str, RunRecord] = {}
        for event in self.events:
            if event.kind is kind:
                latest[event.run_id] = event.record
        return list(latest.values())

    @property
    def skipped(self) -> list[RunRecord]:
        """Finished records of the planned nodes that never started (status ``SKIPPED``)."""
        return [r for r in self.finished if r.status is RunStatus.SKIPPED]

    @property
    def started(self) -> list[RunRecord]:
        return [e.record for e in self.events if e.kind is EventKind.STARTED]

    def by_node(self, node: str) -> list[RunRecord]:
        return [r for r in self.finished if r.node == node]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()


@contextmanager
def capture_runs(**settings: Any) -> Iterator[InMemorySink]:
    """Record node runs into an :class:`InMemorySink` for the duration of the block.

    Keyword arguments are passed to :func:`odibi_observe.configure` (``project=...``).
    """
    sink = InMemorySink()
    previous = runtime.swap_observer(None)
    try:
        runtime.configure(mode="inline", sinks=[sink], **settings)
        yield sink
    finally:
        runtime.shutdown()
        runtime.swap_observer(previous)
