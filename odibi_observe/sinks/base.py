"""The one contract every sink implements.

A sink turns run events into records in one backend. The contract is deliberately as small as
OpenTelemetry's ``SpanExporter``: :meth:`Sink.export` a batch, :meth:`Sink.force_flush`,
:meth:`Sink.shutdown`. Everything else — queueing, batching, retries with backoff, isolation
from other sinks and from the pipeline — is the event bus's job (:mod:`odibi_observe._bus`), so a
new backend is a small class and behaves like every other one.
:class:`odibi_observe.testing.contracts.SinkContract` is the conformance suite every sink
passes.

How a sink is found: by its ``scheme`` in :mod:`odibi_observe.extensions` (built-ins
``prometheus``, ``catalog``, ``otel``, ``spool`` by import path; another package's through an
entry point in the ``odibi_observe.sinks`` group). What is registered is a *factory*: a callable
taking a :class:`SinkContext` and returning the sink, or None when the settings do not ask for
it; a ``Sink`` subclass is called through :meth:`Sink.from_context`. :func:`build_sink` builds
one. For sinks the scheme is only that key (sinks have no spec); by convention it equals
``name``.

Rules a sink follows:

* ``export`` either records the whole batch or raises. Raising is how a sink says "keep this
  batch and retry later"; it never needs to log or swallow its own errors.
* ``export`` is idempotent by ``run_id``: the bus delivers at least once, so the same event may
  arrive again after a retry (catalog: upsert; metrics: de-duplicated by run id).
* A ``RUNNING`` event arriving after a terminal one for the same run never undoes the terminal
  state (events of one run can be replayed out of order after a failure).
* ``export`` is called from one thread at a time per sink.

Poison records — records a sink can *never* export (a value of the wrong type, text the
backend refuses) — are told apart from a transient failure, so that one of them cannot stop
the sink for good:

* A sink that recognises such records itself records the rest of the batch and raises
  :class:`RecordRejected` with the rejected events and the reason. That is a definite answer
  for the whole batch: the rest is done, the rejected ones go to the dead letter (below) and
  are never offered again. (The OTel SDK's ``SpanExporter`` has only SUCCESS/FAILURE; this is
  the one addition, because "retry later" is the wrong answer for a record that cannot be
  encoded.)
* A sink that knows the backend as a whole cannot take anything now — unreachable, locked,
  full — raises :class:`SinkUnavailable`: no record is at fault, so the batch is retried with
  backoff and never bisected. (A full spool that stored half a batch must not make the other
  half look like poison.)
* Any other exception still means "keep the batch and retry later", but the delivery layer
  (:mod:`odibi_observe._bus`, :mod:`odibi_observe._pump`) isolates the failure by bisecting
  the batch (:func:`export_isolating`): when a part of the same batch is delivered while a
  single event still fails on its own (tried twice), the backend is up and that event is the
  problem — it is dead-lettered with the exception as its reason, and delivery goes on with the
  next events. When every part fails, the backend is down: the batch is retried with backoff.
  The parts of a bisected batch may be recorded out of their order, which the out-of-order
  rule above already covers.
* Dead-lettered events are counted in ``odibi_observe_dead_letter_total{sink}``, logged, and
  written with their reason to ``<spool dir>/dead-letter/`` when there is a spool
  (:class:`~odibi_observe._deadletter.DeadLetter`).
* Text is made encodable before it reaches a backend (:mod:`odibi_observe._textsafe`): a lone
  surrogate is escaped, never a reason to reject a record.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from odibi_observe.record import NODE_EVENT_KINDS, EventKind, RunEvent

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from odibi_observe._selfmetrics import SelfMonitor
    from odibi_observe.config import Settings


@dataclass(frozen=True)
class SinkContext:
    """What a sink factory is given: the resolved settings and the process's shared parts."""

    settings: Settings
    #: The Prometheus registry ``/metrics`` serves (self-metrics live there too).
    registry: CollectorRegistry
    monitor: SelfMonitor
    #: The tracer and meter providers passed to ``configure()``, if any.
    tracer_provider: Any = None
    meter_provider: Any = None


class Sink(abc.ABC):
    """Base class of every sink; ``name`` labels its ``odibi_observe_sink_errors_total``."""

    name: str = "sink"

    #: The key the sink is registered under in :mod:`odibi_observe.extensions` (an entry
    #: point's name); empty for a sink nobody builds by name (one passed to ``configure``).
    scheme: ClassVar[str] = ""

    #: The event kinds this sink wants; the bus does not queue the others for it. A sink that
    #: only records finished runs (spans) says so and saves a queue slot per run. The default
    #: is a node run's kinds: ``EventKind.PIPELINE`` (a pipeline run's record) reaches only
    #: the sinks that ask for it, so a sink written for node runs never mistakes one for a run.
    kinds: frozenset[EventKind] = NODE_EVENT_KINDS

    #: True when a run's start adds nothing once its end is in the same batch (the catalog
    #: writes one row from the end; metrics' in-progress gauge would go up and down again).
    #: The spool pump then does not even decode such starts: on catch-up after an outage,
    #: most starts are in the same batch as their end.
    coalesces_starts: bool = False

    @classmethod
    def from_context(cls, context: SinkContext) -> Sink | None:
        """The sink the settings ask for, or None when they do not (its backend is not
        configured). The default takes no settings: ``cls()``. Raise
        :class:`~odibi_observe.config.ConfigurationError` for settings it cannot use."""
        return cls()

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


def build_sink(scheme: str, context: SinkContext) -> Sink | None:
    """The sink registered as ``scheme``, built for ``context`` (None: not configured).

    Raises :class:`odibi_observe.extensions.ExtensionError` when nothing loadable is registered
    under ``scheme`` or the factory returns something else than a sink; whatever the factory
    raises (a :class:`~odibi_observe.config.ConfigurationError`) passes through.
    """
    from odibi_observe import extensions

    factory = extensions.load(extensions.SINKS, scheme)
    if isinstance(factory, type) and issubclass(factory, Sink):
        sink = factory.from_context(context)
    elif callable(factory):
        sink = factory(context)
    else:
        raise extensions.ExtensionError(f"sink {scheme!r}: {factory!r} is not callable")
    if sink is not None and not isinstance(sink, Sink):
        raise extensions.ExtensionError(
            f"sink {scheme!r}: the factory returned {type(sink).__name__}, not a Sink"
        )
    return sink


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


class SinkUnavailable(SinkExportError):
    """The backend cannot take any record now (down, locked, full): retry the batch later.

    Unlike other errors it says that no record is at fault, so the delivery layer does not
    bisect the batch looking for one (:func:`export_isolating`).
    """


class RecordRejected(Exception):
    """``export`` recorded the batch except ``events``, which it can never export.

    ``reason`` says why, for the dead letter (one reason for all of them; raise with the
    events of one reason, or join the reasons).
    """

    def __init__(self, events: Sequence[RunEvent], reason: str) -> None:
        super().__init__(f"{len(events)} event(s) rejected: {reason}")
        self.events = tuple(events)
        self.reason = reason


#: A dead-lettered event and why.
Rejection = tuple[RunEvent, str]


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def export_isolating(
    export: Callable[[Sequence[RunEvent]], None], events: Sequence[RunEvent]
) -> list[Rejection]:
    """Export ``events``; return the ones that can never be exported, with their reasons.

    Raises when the sink fails as a whole (every part of the batch failed): the caller keeps
    the batch and retries it. Otherwise everything not returned was exported. See the module
    docstring; costs one export call when all is well and three (whole, halves) when the
    backend is down, so an outage does not multiply requests.
    """
    try:
        export(events)
        return []
    except RecordRejected as rejected:
        return [(e, rejected.reason) for e in rejected.events]
    except SinkUnavailable:
        raise
    except Exception as exc:
        if len(events) <= 1:
            raise
        return _bisect(export, list(events), exc, backend_up=False)


def _attempt(
    export: Callable[[Sequence[RunEvent]], None], events: Sequence[RunEvent]
) -> list[Rejection]:
    try:
        export(events)
    except RecordRejected as rejected:
        return [(e, rejected.reason) for e in rejected.events]
    return []


def _bisect(
    export: Callable[[Sequence[RunEvent]], None],
    events: list[RunEvent],
    exc: Exception,
    *,
    backend_up: bool,
) -> list[Rejection]:
    """``events`` failed together with ``exc``: find the ones that fail on their own.

    ``backend_up`` is True once some part of the batch was delivered in this pass.
    """
    if len(events) == 1:
        if not backend_up:
            raise exc
        try:  # a second try alone: a passing blip must not dead-letter a good record
            return _attempt(export, events)
        except SinkUnavailable:
            raise
        except Exception as again:
            return [(events[0], _reason(again))]
    middle = len(events) // 2
    rejected: list[Rejection] = []
    failed: list[tuple[list[RunEvent], Exception]] = []
    for part in (events[:middle], events[middle:]):
        try:
            rejected += _attempt(export, part)
        except SinkUnavailable:
            raise  # the backend went away mid-way: nothing here is poison
        except Exception as part_exc:
            failed.append((part, part_exc))
    if len(failed) == 2 and not backend_up:
        raise exc
    for part, cause in failed:
        rejected += _bisect(export, part, cause, backend_up=True)
    return rejected
