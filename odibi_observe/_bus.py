"""The event bus: one emit, every sink, each isolated from the others and from the pipeline.

Each sink gets its own *channel*: a bounded queue, a retry buffer, a backoff state and (in
``background`` mode) its own worker thread. That is the whole isolation story: a catalog that
hangs for 30 s or an OTLP endpoint that refuses connections only ever stalls its own channel,
never the other sinks and never the node (the node only appends to in-memory queues).

Modes:

``inline``
    ``emit`` calls every sink before it returns. Deterministic, for tests and short scripts.
    A failing sink is still isolated (its batch goes to its retry buffer), but a *slow* sink
    is as slow for the caller as it is.
``background`` (default)
    ``emit`` appends to each channel's queue and returns. The channel's worker takes batches of
    up to ``max_batch`` events, waiting at most ``flush_interval`` for a batch to fill.

Failure handling, per channel: an ``export`` that raises is counted
(``odibi_observe_sink_errors_total{sink}``), logged (once a minute at WARNING) and the batch is
kept in the retry buffer, re-tried with exponential backoff and jitter, before newer events so
order is kept. An event that fails on its own while the rest of its batch is delivered (a
poison record, or one the sink rejects with ``RecordRejected``) is not retried: it goes to the
dead letter (:mod:`odibi_observe._deadletter`) and delivery goes on. Bounds: ``max_queue``
events per queue and ``max_retry`` per retry buffer; past
them the oldest events are dropped and counted in ``odibi_observe_events_dropped_total`` with
``reason="queue_full"`` / ``"retry_buffer_full"`` — never silently. (The write-ahead spool is
what makes delivery survive the process; this bus makes it survive a sink.)

Shutdown has one deadline for everything: every channel is flushed at once, then the workers'
last batches, the sinks' ``force_flush`` and ``shutdown`` get the time that is left (plus
``_SHUTDOWN_GRACE`` to release connections); a call still busy then is left behind in a daemon
thread, so no backend decides how long a process takes to end. What no sink confirmed by then
— queue, retry buffer, in-flight batch — goes, once, to the ``keeper`` (at exit: the spill into
a spool directory, :mod:`odibi_observe._spill`), or is dropped and counted without one. Each
sink with leftovers gets one warning: how many runs, why, kept where or dropped.

Fork safety: in a child process the queues and retry buffers start empty (the parent still owns
and delivers its own events), locks are new, worker threads restart on first use, and every
sink's ``after_fork`` runs so connections are not shared across processes.
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Final, Protocol

from odibi_observe._deadletter import DeadLetter
from odibi_observe._redact import safe_text
from odibi_observe._selfmetrics import SelfMonitor, log
from odibi_observe.conventions import SELF_METRICS
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sinks.base import Sink, export_isolating

#: Longest an idle worker sleeps without being woken: the bound on the delay a missed wake-up
#: (see ``_Channel.put``) can add. Idle workers wake twice a second; that costs nothing.
_IDLE_WAKEUP: Final = 0.5
#: Extra time sinks get to release connections once the shutdown deadline has passed.
_SHUTDOWN_GRACE: Final = 0.25


def _deadline(timeout: float | None) -> float:
    return time.monotonic() + (timeout if timeout is not None else 1e9)


class BusMode(str, Enum):
    INLINE = "inline"
    BACKGROUND = "background"


class Backoff:
    """Exponential backoff with full jitter in [delay/2, delay], capped at ``maximum``."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** min(self.failures, 30)))
        self.failures += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.failures = 0


class _Channel:
    """Queue, retry buffer and worker for one sink."""

    def __init__(self, bus: EventBus, sink: Sink) -> None:
        self.bus = bus
        self.sink = sink
        self.name = getattr(sink, "name", type(sink).__name__)
        self.kinds = getattr(sink, "kinds", frozenset(EventKind))
        self._reset_state()

    def _reset_state(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.queue: deque[RunEvent] = deque()
        self.retry: deque[RunEvent] = deque()
        # A sink whose retry is local and cheap (the spool: a size check) may cap its backoff,
        # so it takes events again as soon as there is room rather than up to retry_max later.
        cap = getattr(self.sink, "max_retry_delay", None)
        self.backoff = Backoff(
            self.bus.retry_initial,
            self.bus.retry_max if cap is None else min(cap, self.bus.retry_max),
        )
        self.retry_at = 0.0
        self.inflight = 0
        #: The batch the worker is exporting: still undelivered if the process exits now.
        self.inflight_batch: list[RunEvent] = []
        #: The last export error, for the one warning at shutdown about what was left over.
        self.last_error: str | None = None
        self.flush_requested = False
        self.closed = False
        self.thread: threading.Thread | None = None
        self.failing = False

    # -- producer side -------------------------------------------------------------------
    def put(self, event: RunEvent) -> None:
        """Queue ``event``; on the node's path, so the common case takes no lock.

        ``deque.append`` is atomic, and the worker re-checks the queue under the lock before
        it waits, so an append needs the lock only to wake the worker: when the queue was
        empty or a batch is full. Two producers racing on the empty-to-one transition may both
        skip the wake-up; the worker's idle wait is bounded (``_IDLE_WAKEUP``) for that case.
        Shutdown, the first event and a full queue take the locked path.
        """
        queue = self.queue
        if self.closed or self.thread is None or len(queue) >= self.bus.max_queue:
            self._put_locked(event)
            return
        queue.append(event)
        size = len(queue)
        if size == 1 or size >= self.bus.max_batch:
            with self.cond:
                self.cond.notify()

    def _put_locked(self, event: RunEvent) -> None:
        with self.cond:
            if self.closed:
                self.bus.monitor.dropped(self.name, "shutdown")
                return
            if len(self.queue) >= self.bus.max_queue:
                self.queue.popleft()
                self.bus.monitor.dropped(self.name, "queue_full")
            self.queue.append(event)
            if self.thread is None:
                self._start_worker()
            if len(self.queue) == 1 or len(self.queue) >= self.bus.max_batch:
                self.cond.notify()

    def _start_worker(self) -> None:
        self.thread = threading.Thread(
            target=self._run, name=f"odibi-observe-{self.name}", daemon=True
        )
        self.thread.start()

    # -- worker side ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                batch = self._wait_for_batch()
                if batch is None:
                    return
                self.inflight = len(batch)
                self.inflight_batch = batch
            try:
                self._deliver(batch)
            finally:
                with self.cond:
                    self.inflight = 0
                    self.inflight_batch = []
                    self.cond.notify_all()

    def _wait_for_batch(self) -> list[RunEvent] | None:
        """Block (holding ``cond``) until a batch is due; None means the channel is closed.

        A batch is due when the queue is full, its oldest event has waited ``flush_interval``,
        or a flush was requested. While a failing sink waits out its backoff, nothing is taken:
        new events stay queued behind the retry buffer, so order is kept.
        """
        first_seen: float | None = None
        while True:
            now = time.monotonic()
            if self.closed and not self.queue:
                return None
            if self.retry:
                if now >= self.retry_at or self.flush_requested:
                    break
                self.cond.wait(max(self.retry_at - now, 0.001))
                continue
            if self.queue:
                if first_seen is None:
                    first_seen = now
                waited = now - first_seen
                if (
                    len(self.queue) >= self.bus.max_batch
                    or waited >= self.bus.flush_interval
                    or self.flush_requested
                    or self.closed
                ):
                    break
                self.cond.wait(self.bus.flush_interval - waited)
                continue
            self.cond.wait(_IDLE_WAKEUP)
        batch = list(self.retry)
        self.retry.clear()
        take = min(len(self.queue), self.bus.max_batch)
        batch.extend(self.queue.popleft() for _ in range(take))
        self.flush_requested = False
        return batch

    def _deliver(self, batch: list[RunEvent]) -> None:
        """Export ``batch`` in chunks; on failure keep the rest for a retry with backoff."""
        step = self.bus.max_batch
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            try:
                # A chunk that fails is bisected: events that fail on their own while the
                # rest is delivered are dead-lettered, not retried forever (sinks/base.py).
                rejected = export_isolating(self.sink.export, chunk)
            except Exception as exc:  # a sink must never take the bus down
                self._failed(exc, batch[start:])
                return
            if rejected:
                self.bus.dead_letter.reject(self.name, rejected)
        if self.failing:
            log.info("odibi-observe sink %r recovered", self.name)
        with self.cond:
            self.failing = False
            self.backoff.reset()

    def _failed(self, exc: Exception, rest: list[RunEvent]) -> None:
        self.last_error = _short_error(exc)
        sink_failed(
            self.bus.monitor, "sink", self.name, exc, f"{len(rest)} event(s) kept for retry"
        )
        with self.cond:
            self.failing = True
            self._to_retry(rest)
            self.retry_at = time.monotonic() + self.backoff.next_delay()

    def _to_retry(self, events: Sequence[RunEvent]) -> None:
        """Append to the retry buffer (caller holds ``cond``); drop the oldest past the bound."""
        self.retry.extend(events)
        excess = len(self.retry) - self.bus.max_retry
        if excess > 0:
            for _ in range(excess):
                self.retry.popleft()
            self.bus.monitor.dropped(self.name, "retry_buffer_full", excess)

    # -- inline mode ---------------------------------------------------------------------
    def deliver_inline(self, events: Sequence[RunEvent], force_retry: bool = False) -> None:
        with self.cond:
            if self.closed:
                self.bus.monitor.dropped(self.name, "shutdown", len(events))
                return
            if self.retry and not force_retry and time.monotonic() < self.retry_at:
                self._to_retry(events)
                return
            batch = [*self.retry, *events]
            self.retry.clear()
        if batch:
            self._deliver(batch)

    def _retry_inline(self) -> None:
        """Inline mode's flush: try the retry buffer now, as the in-flight batch."""
        with self.cond:
            if self.closed or not self.retry:
                return
            batch = list(self.retry)
            self.retry.clear()
            self.inflight, self.inflight_batch = len(batch), batch
        try:
            self._deliver(batch)
        finally:
            with self.cond:
                self.inflight, self.inflight_batch = 0, []

    # -- flush / shutdown ----------------------------------------------------------------
    def pending(self) -> int:
        return len(self.queue) + len(self.retry) + self.inflight

    def request_flush(self) -> None:
        """Ask the worker to deliver what it holds now, without waiting (background mode).

        :meth:`EventBus.flush` asks every channel first and waits afterwards, so that the
        channels deliver in parallel and one slow sink does not eat the others' deadline.
        """
        if self.bus.mode is BusMode.INLINE:
            return
        with self.cond:
            if self.thread is None and (self.queue or self.retry):
                self._start_worker()
            self.flush_requested = True
            self.cond.notify_all()

    def flush(self, deadline: float, *, requested: bool = False) -> bool:
        if self.bus.mode is BusMode.INLINE:
            # In a thread of its own: a hung backend must not hold flush past its deadline
            # (at exit, the process) even in inline mode; the batch then counts as in flight.
            _call_before(deadline, self._retry_inline, name=f"odibi-observe-flush-{self.name}")
        else:
            if not requested:
                self.request_flush()
            with self.cond:
                while self.pending():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.cond.wait(min(remaining, 0.05))
                    if self.pending() and not self.flush_requested and not self.inflight:
                        # One delivery attempt per flush call for a failing sink; then give
                        # up until the deadline rather than spin on a dead backend.
                        if self.failing:
                            break
                        self.flush_requested = True
                        self.cond.notify_all()
        ok = not self.pending()
        # A sink's own flush (an SDK metric reader exporting, say) may block far longer than
        # the deadline on a hung backend; it gets the time that is left and no more.
        done, flushed = _call_before(
            deadline,
            self.sink.force_flush,
            max(deadline - time.monotonic(), 0.0),
            name=f"odibi-observe-flush-{self.name}",
        )
        if isinstance(flushed, Exception):
            self._failed(flushed, [])
            return False
        return ok and done and flushed is True

    def stop(self, deadline: float) -> None:
        """Refuse new events and give the worker until ``deadline`` to finish its batch."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.0))

    def take_undelivered(self) -> list[RunEvent]:
        """Everything not confirmed delivered, oldest first, and forget it.

        The in-flight batch counts as undelivered: a worker still waiting on a hung backend
        at the deadline may never finish. If it does, the event is delivered twice, which
        every consumer of a kept event tolerates (sinks are idempotent by ``run_id``).
        """
        with self.cond:
            candidates = [*self.inflight_batch, *self.retry, *self.queue]
            self.retry.clear()
            self.queue.clear()
        return _unique(candidates)


class Keeper(Protocol):
    """Where :meth:`EventBus.shutdown` puts what no sink could deliver in time."""

    def keep(self, events: Sequence[RunEvent]) -> str:
        """Store ``events`` durably and say where and who delivers them, or raise."""


def _unique(events: Sequence[RunEvent]) -> list[RunEvent]:
    seen: set[int] = set()
    out: list[RunEvent] = []
    for event in events:
        if id(event) not in seen:
            seen.add(id(event))
            out.append(event)
    return out


def sink_failed(monitor: SelfMonitor, where: str, name: str, exc: Exception, kept: str) -> None:
    """Count a failed export to sink ``name`` and warn about it, at most once a minute per
    ``where`` and sink, saying what was ``kept``: the bus and the spool pump report a sink's
    failure in the same words."""
    monitor.sink_error(name)
    monitor.warn_once_per_minute(
        f"{where}:{name}",
        "odibi-observe sink %r failed (%s: %s); %s",
        name,
        type(exc).__name__,
        safe_text(str(exc), 500),
        kept,
    )


def _short_error(exc: BaseException) -> str:
    """``Type: first line of the message``, bounded: one warning line, never a paragraph."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {safe_text(first, 300)}" if first else type(exc).__name__


def _cause(ch: _Channel) -> str:
    """Why a channel still holds events at shutdown, for its one warning."""
    parts = ["an export was still waiting for an answer"] if ch.inflight else []
    if ch.last_error:
        parts.append(f"last error: {ch.last_error}")
    return "; ".join(parts) or "not delivered in time"


def _call_before(
    deadline: float, func: Callable[..., object], *args: object, name: str
) -> tuple[bool, object]:
    """Run ``func(*args)`` in a daemon thread and wait for it until ``deadline``.

    Returns (finished, result or the exception it raised). A call still running at the
    deadline is left behind: it is a daemon thread, so it cannot hold the process's exit,
    which is the point — no backend decides how long a pipeline takes to end.
    """
    box: list[object] = []

    def run() -> None:
        try:
            box.append(func(*args))
        except Exception as exc:
            box.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0.0))
    return (True, box[0]) if box else (False, None)


class EventBus:
    """Fan run events out to sinks; see the module docstring for the guarantees."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        mode: BusMode | str = BusMode.BACKGROUND,
        monitor: SelfMonitor | None = None,
        max_queue: int = 10_000,
        max_batch: int = 512,
        max_retry: int = 100_000,
        flush_interval: float = 0.1,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        self.mode = BusMode(mode)
        self.monitor = monitor if monitor is not None else SelfMonitor()
        #: Where events a sink can never export go (counted and logged; kept with a spool).
        self.dead_letter = dead_letter if dead_letter is not None else DeadLetter(self.monitor)
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.max_retry = max_retry
        self.flush_interval = flush_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.sinks = tuple(sinks)
        self._channels = [_Channel(self, s) for s in self.sinks]
        self._closed = False
        self._pid = os.getpid()
        for ch in self._channels:
            self.monitor.queue_size.labels(sink=ch.name).set_function(ch.pending)
        _register_fork_handler(self)

    def emit(self, event: RunEvent) -> None:
        """Hand ``event`` to every sink. Never raises."""
        if self._pid != os.getpid():  # fork without the at-fork hook (e.g. os.fork in C)
            self._after_fork_in_child()
        try:
            kind = event.kind
            if self.mode is BusMode.INLINE:
                for ch in self._channels:
                    if kind in ch.kinds:
                        ch.deliver_inline((event,))
            else:
                for ch in self._channels:
                    if kind in ch.kinds:
                        ch.put(event)
        except Exception:  # pragma: no cover - defensive: the bus never raises into a node
            log.exception("odibi-observe: internal error while emitting an event")

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Deliver everything queued; True when every sink confirmed within ``timeout``."""
        return self._flush_until(_deadline(timeout))

    def _flush_until(self, deadline: float) -> bool:
        for ch in self._channels:
            ch.request_flush()
        # A list, not a generator: every channel is flushed even after one has failed.
        return all([ch.flush(deadline, requested=True) for ch in self._channels])  # noqa: C419

    def shutdown(self, timeout: float | None = 30.0, *, keeper: Keeper | None = None) -> bool:
        """Flush, stop the workers and shut the sinks down, all within ``timeout``. Idempotent.

        One deadline covers everything: flushing (every channel at once), the workers'
        last batches and the sinks' own shutdown; a sink still busy at the deadline is left
        behind (daemon threads). What no sink confirmed is then handed to ``keeper`` once
        (the union over the sinks) or, without one or if it fails, dropped and counted
        (``reason="shutdown"``). Either way each sink with leftovers gets one warning saying
        how many runs, why, and where they are.
        """
        if self._closed:
            return True
        deadline = _deadline(timeout)
        ok = self._flush_until(deadline)
        self._closed = True
        for ch in self._channels:
            ch.stop(deadline)
        self._keep_or_drop({ch: ch.take_undelivered() for ch in self._channels}, keeper)
        self._shutdown_sinks(deadline)
        return ok

    def _keep_or_drop(self, left: dict[_Channel, list[RunEvent]], keeper: Keeper | None) -> None:
        everything = _unique([e for events in left.values() for e in events])
        if not everything:
            return
        where: str | None = None
        failure = ""
        if keeper is not None:
            try:
                where = keeper.keep(everything)
            except Exception as exc:  # a full disk at exit must not raise out of atexit
                failure = f"; could not keep them: {_short_error(exc)}"
        for ch, events in left.items():
            if not events:
                continue
            runs = len({e.record.run_id for e in events})
            cause = _cause(ch)
            if where is not None:
                log.warning(
                    "odibi-observe sink %r: %d run(s) (%d event(s)) not delivered at "
                    "exit (%s); %d run(s) kept in %s",
                    ch.name,
                    runs,
                    len(events),
                    cause,
                    runs,
                    where,
                )
                continue
            self.monitor.events_dropped.labels(sink=ch.name, reason="shutdown").inc(len(events))
            log.warning(
                "odibi-observe sink %r: %d run(s) (%d event(s)) not delivered at "
                "shutdown (%s); dropped%s (counted in "
                f"{SELF_METRICS.events_dropped.prometheus})",
                ch.name,
                runs,
                len(events),
                cause,
                failure,
            )

    def _shutdown_sinks(self, deadline: float) -> None:
        """Shut every sink down in parallel, waiting until the deadline (plus a short grace
        for the ones that release a connection pool) and no longer."""
        grace = max(deadline, time.monotonic() + _SHUTDOWN_GRACE)
        threads: list[tuple[str, threading.Thread]] = []
        for ch in self._channels:
            thread = threading.Thread(
                target=self._shutdown_sink,
                args=(ch,),
                name=f"odibi-observe-shutdown-{ch.name}",
                daemon=True,
            )
            thread.start()
            threads.append((ch.name, thread))
        for _, thread in threads:
            thread.join(max(grace - time.monotonic(), 0.0))
        late = [name for name, thread in threads if thread.is_alive()]
        if late:
            log.info(
                "odibi-observe: sink(s) %s still shutting down at the deadline; not waited for",
                ", ".join(repr(n) for n in late),
            )

    @staticmethod
    def _shutdown_sink(ch: _Channel) -> None:
        try:
            ch.sink.shutdown()
        except Exception as exc:
            log.warning(
                "odibi-observe sink %r failed to shut down: %s", ch.name, safe_text(str(exc), 500)
            )

    def pending(self) -> dict[str, int]:
        """Events not yet delivered, per sink (queue + retry buffer + in flight)."""
        return {ch.name: ch.pending() for ch in self._channels}

    def _after_fork_in_child(self) -> None:
        self._pid = os.getpid()
        for ch in self._channels:
            ch._reset_state()
            try:
                ch.sink.after_fork()
            except Exception as exc:
                log.warning(
                    "odibi-observe sink %r failed to reset after fork: %s",
                    ch.name,
                    safe_text(str(exc), 500),
                )


_buses: weakref.WeakSet[EventBus] = weakref.WeakSet()


def _fork_child() -> None:
    for bus in list(_buses):
        bus._after_fork_in_child()


def _register_fork_handler(bus: EventBus) -> None:
    _buses.add(bus)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_child)
