"""The one contract every sink implements.

A sink turns run events into records in one backend. The contract is deliberately as small as
OpenTelemetry's ``SpanExporter``: :meth:`Sink.export` a batch, :meth:`Sink.force_flush`,
:meth:`Sink.shutdown`. Everything else — queueing, batching, retries with backoff, isolation
from other sinks and from the pipeline — is the event bus's job (:mod:`odibi_observe.bus`), so a
new backend is a small class and behaves like every other one. ``tests/test_sink_conformance.py``
is the conformance suite every sink passes.

Rules a sink follows:

* ``export`` either records the whole batch or raises. Raising is how a sink says "keep this
  batch and retry later"; it never needs to log or swallow its own errors.
* ``export`` is idempotent by ``run_id``: the bus delivers at least once, so the same event may
  arrive again after a retry (catalog: upsert; metrics: de-duplicated by run id).
* A ``RUNNING`` event arriving after a terminal one for the same run never undoes the terminal
  state (events of one run can be replayed out of order after a failure).
* ``export`` is called from one thread at a time per sink.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from odibi_observe.record import EventKind, RunEvent


class Sink(abc.ABC):
    """Base class of every sink; ``name`` labels its ``odibi_observe_sink_errors_total``."""

    name: str = "sink"

    #: The event kinds this sink wants; the bus does not queue the others for it. A sink that
    #: only records finished runs (spans) says so and saves a queue slot per run.
    kinds: frozenset[EventKind] = frozenset(EventKind)

    #: True when a run's start adds nothing once its end is in the same batch (the catalog
    #: writes one row from the end; metrics' in-progress gauge would go up and down again).
    #: The spool pump then does not even decode such starts: on catch-up after an outage,
    #: most starts are in the same batch as their end.
    coalesces_starts: bool = False

    @abc.abstractmethod
    def export(self, events: Sequence[RunEvent]) -> None:
        """Record ``events`` (in order) or raise to have the whole batch retried."""

    def force_flush(self, timeout: float | None = None) -> bool:
        """Push anything the sink buffers itself; return False if it could not in time."""
        return True

    def shutdown(self) -> None:  # noqa: B027 - optional hook, most sinks hold nothing
        """Release connections and threads. Called once, after a final flush."""

    def after_fork(self) -> None:  # noqa: B027 - optional hook
        """Re-create what must not be shared with a parent process (connections, locks)."""


class RecentKeys:
    """A bounded set that forgets its oldest members first.

    Sinks whose backend is not idempotent by itself (counters, span files) remember the
    ``run_id`` of what they already recorded, so a batch the bus delivers again after a
    failure is recorded once. Bounded, because a long-running process sees unbounded runs; a
    replay older than ``capacity`` runs is not expected from the bus.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: Hashable) -> bool:
        """Add ``key``; False if it was already there (it then counts as recent again)."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True

    def discard(self, key: Hashable) -> bool:
        """Remove ``key``; False if it was not there."""
        if key in self._keys:
            del self._keys[key]
            return True
        return False


class SinkExportError(RuntimeError):
    """A sink could not deliver a batch; the bus keeps the batch and retries it."""
