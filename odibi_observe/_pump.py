"""Deliver spooled run events to sinks, one cursor per sink.

The spool (:mod:`odibi_observe.spool`) is the durable copy of every event a pipeline process
wrote; the pump is what turns it into catalog rows, spans and metrics. Each sink gets its own
worker thread and its own spool cursor, so:

* a sink that is down (the catalog during a database restart, the collector during a deploy)
  stops only its own cursor; the other sinks keep up, and the stopped one catches up from where
  it was when it comes back — with the events' original run ids, span ids and timestamps,
  because the event *is* the record;
* a frame is acknowledged only after its sink exported it, so a sidecar killed mid-batch
  re-reads the batch on restart (at-least-once; sinks are idempotent by ``run_id``);
* a frame that cannot be decoded (a valid checksum around bytes that are not a run event, e.g.
  written by an incompatible version, or a record whose fields have the wrong types) is
  counted as invalid input, dead-lettered for each sink (:mod:`odibi_observe._deadletter`) and
  skipped: retrying it can never succeed and must not block the events behind it;
* an event the sink can never export (it raises ``RecordRejected``, or it fails on its own
  while the rest of its batch is delivered — see :func:`~odibi_observe.sinks.base.
  export_isolating`) is dead-lettered too, and the cursor moves past it;
* a *span frame* (an application span of the pipeline process — its pipeline span, Odibi's
  spans — see :mod:`odibi_observe.sinks.spool`) goes to the sinks that take spans (the OTel
  sink's ``export_spans``) and is skipped by the others, so the node spans the sidecar exports
  keep their parents.

Failed exports back off exponentially with jitter (:class:`~odibi_observe._bus.Backoff`), and
are counted in ``odibi_observe_sink_errors_total{sink}`` like every other sink error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from odibi_observe._bus import Backoff, sink_failed
from odibi_observe._deadletter import DeadLetter
from odibi_observe._redact import safe_text
from odibi_observe._selfmetrics import SelfMonitor, log
from odibi_observe.record import EventKind, RunEvent, peek_event
from odibi_observe.sinks.base import Sink, export_isolating
from odibi_observe.sinks.spool import decode_span, is_span_frame, takes_spans

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

    from odibi_observe.spool import Spool, SpoolCursor, SpoolEntry


_MISSING: object = object()


class _SinkPump:
    """One sink's cursor, backoff and worker thread."""

    def __init__(self, pump: SpoolPump, sink: Sink) -> None:
        self.pump = pump
        self.sink = sink
        self.name = sink.name
        self.cursor: SpoolCursor = pump.spool.cursor(sink.name)
        self.backoff = Backoff(pump.backoff_initial, pump.backoff_max)
        self.retry_at = 0.0
        self.failing = False
        self.delivered = 0
        self.acknowledged = 0
        self._kinds: dict[EventKind | None, int] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self._undecodable: list[SpoolEntry] = []
        self.takes_spans = takes_spans(sink)

    def _prepare(self) -> tuple[list[SpoolEntry], list[RunEvent], list[ReadableSpan]] | None:
        """The next batch, the events of it this sink takes and its span frames (for a sink
        that takes spans), or None when caught up."""
        entries = self.cursor.read(self.pump.max_batch)
        if not entries:
            return None
        self._undecodable = []
        runs = [entry for entry in entries if not is_span_frame(entry.payload)]
        spans = self._decode_spans(entries) if self.takes_spans and len(runs) < len(entries) else []
        return entries, self._decode(self._needed(runs)), spans

    def _commit(
        self,
        entries: list[SpoolEntry],
        wanted: list[RunEvent],
        rejected: Sequence[tuple[RunEvent, str]] = (),
    ) -> None:
        """After a successful export: acknowledge the batch, reset the backoff.

        What the batch held that this sink can never take — frames that are not run events,
        events the export rejected — goes to the dead letter first, once: only a batch that
        is acknowledged is never read again.
        """
        dead = self.pump.dead_letter
        for entry in self._undecodable:
            dead.reject_payload(
                self.name, entry.payload, entry.position, self.pump.decode_error(entry)
            )
        if rejected:
            dead.reject(self.name, rejected)
        self.cursor.ack(entries)
        self.delivered += len(wanted)
        self.acknowledged += len(entries)
        if self.pump.on_commit is not None:
            self.pump.on_commit(self.name, self._kinds)
        if self.failing:
            log.info("odibi-observe sink %r recovered", self.name)
            self.failing = False
        self.backoff.reset()

    def step(self) -> int:
        """Read one batch, export it, ack it. Returns the frames acknowledged (0: idle/failed)."""
        with self.lock:
            if time.monotonic() < self.retry_at:
                return 0
            prepared = self._prepare()
            if prepared is None:
                return 0
            entries, wanted, spans = prepared
            rejected: list[tuple[RunEvent, str]] = []
            if wanted or spans:
                try:
                    if wanted:
                        # Bisected on failure: a poison event is isolated and dead-lettered,
                        # the rest delivered; only a sink failing as a whole is retried
                        # (sinks/base.py).
                        rejected = export_isolating(self.sink.export, wanted)
                    if spans:
                        self.sink.export_spans(spans)  # type: ignore[attr-defined]
                except Exception as exc:  # a sink error must never stop the pump
                    self._failed(exc, len(wanted) + len(spans))
                    return 0
            self._commit(entries, wanted, rejected)
            return len(entries)

    def _needed(self, entries: Sequence[SpoolEntry]) -> list[SpoolEntry]:
        """The entries this sink needs decoded: not those of kinds it does not take, nor (for
        a sink that ``coalesces_starts``) a start whose end is in the same batch. Decoding is
        most of the pump's CPU; both are recognised from the payload's first bytes."""
        kinds = self.sink.kinds
        peeked = [(entry, peek_event(entry.payload)) for entry in entries]
        if self.pump.on_commit is not None:
            counts: dict[EventKind | None, int] = {}
            for _, p in peeked:
                kind = None if p is None else p[0]
                counts[kind] = counts.get(kind, 0) + 1
            self._kinds = counts
        ended = (
            {p[1] for _, p in peeked if p is not None and p[0] is EventKind.FINISHED}
            if self.sink.coalesces_starts
            else set()
        )
        return [
            entry
            for entry, p in peeked
            if p is None or (p[0] in kinds and not (p[0] is EventKind.STARTED and p[1] in ended))
        ]

    def _decode(self, entries: Sequence[SpoolEntry]) -> list[RunEvent]:
        decode, kinds = self.pump.decode, self.sink.kinds
        out = []
        for entry in entries:
            event = decode(entry)
            if event is None:
                self._undecodable.append(entry)
            elif event.kind in kinds:
                out.append(event)
        return out

    def _decode_spans(self, entries: Sequence[SpoolEntry]) -> list[ReadableSpan]:
        """The span frames of the batch, decoded (only one sink takes them: not cached)."""
        spans = []
        for entry in entries:
            if not is_span_frame(entry.payload):
                continue
            try:
                spans.append(decode_span(entry.payload))
            except Exception as exc:  # as for run events: skipped, counted, never retried
                self.pump.monitor.invalid(
                    "spool_payload",
                    f"spooled span frame at {entry.position} cannot be read "
                    f"({type(exc).__name__}: {safe_text(str(exc), 200)}); skipped",
                )
        return spans

    def _failed(self, exc: Exception, count: int) -> None:
        sink_failed(
            self.pump.monitor, "pump", self.name, exc, f"{count} spooled event(s) will be retried"
        )
        self.failing = True
        self.retry_at = time.monotonic() + self.backoff.next_delay()
        # The cursor has read past the batch; the next attempt must read it again.
        self.cursor.rewind()

    def run(self) -> None:
        """The worker: one batch at a time, read, decode, export, acknowledge.

        Deliberately not overlapped (reading the next batch while an export runs): both halves
        are mostly Python under the GIL, and a thread doing database I/O that must win the GIL
        back from a busy decoding thread after every socket call waits out the interpreter's
        switch interval each time. Measured, the overlap made PostgreSQL ingest 2.5x slower.
        """
        stop = self.pump._stop
        while not stop.is_set():
            try:
                moved = self.step()
            except Exception as exc:  # a spool read error: wait and retry
                self.cursor.rewind()
                self.pump.monitor.warn_once_per_minute(
                    f"pump-read:{self.name}",
                    "odibi-observe spool read for %r failed: %s",
                    self.name,
                    safe_text(str(exc), 500),
                )
                moved = 0
            if not moved:
                stop.wait(self.pump.poll_interval)


class SpoolPump:
    """Feeds every sink from its own cursor over one spool."""

    def __init__(
        self,
        spool: Spool,
        sinks: Sequence[Sink],
        *,
        monitor: SelfMonitor,
        max_batch: int = 512,
        poll_interval: float = 0.2,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        on_commit: Callable[[str, dict[EventKind | None, int]], None] | None = None,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique (they name spool cursors): {names}")
        self.spool = spool
        self.monitor = monitor
        self.max_batch = max_batch
        self.poll_interval = poll_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        #: Called after each acknowledged batch with the sink's name and the batch's frames
        #: by kind (None: not recognisable without decoding) — what the sidecar counts as
        #: ingested, whether or not the sink needed every frame decoded.
        self.on_commit = on_commit
        self._stop = threading.Event()
        self._decoded: dict[object, RunEvent | None] = {}
        self._decoded_lock = threading.Lock()
        #: Why a frame did not decode, for its dead letter (bounded like the cache).
        self._decode_errors: dict[object, str] = {}
        self.dead_letter = dead_letter if dead_letter is not None else DeadLetter(monitor)
        self._decoded_capacity = 4 * max_batch * max(1, len(sinks))
        self._pumps = [_SinkPump(self, sink) for sink in sinks]

    def decode(self, entry: SpoolEntry) -> RunEvent | None:
        """The event in ``entry``, decoded once for all sinks (None: not a run event).

        Every sink reads the same frames, usually close behind one another; decoding each
        frame once instead of once per sink is most of the pump's CPU (and the GIL is shared).
        The cache is bounded: a sink far behind the others decodes for itself.
        """
        cached = self._decoded.get(entry.position, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        event: RunEvent | None
        try:
            event = RunEvent.from_json(entry.payload)
        except Exception as exc:  # any undecodable frame is skipped alike (dead-lettered)
            event = None
            if len(self._decode_errors) >= self._decoded_capacity:
                self._decode_errors.pop(next(iter(self._decode_errors)), None)
            self._decode_errors[entry.position] = f"{type(exc).__name__}: {exc}"
            self.monitor.invalid(
                "spool_payload",
                f"spooled frame at {entry.position} is not a run event "
                f"({type(exc).__name__}: {safe_text(str(exc), 200)}); skipped",
            )
        with self._decoded_lock:
            if entry.position not in self._decoded:
                if len(self._decoded) >= self._decoded_capacity:
                    del self._decoded[next(iter(self._decoded))]
                self._decoded[entry.position] = event
        return event

    def decode_error(self, entry: SpoolEntry) -> str:
        """Why ``entry`` did not decode (for its dead letter)."""
        return self._decode_errors.get(entry.position, "not a run event")

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return tuple(p.sink for p in self._pumps)

    def start(self) -> None:
        """Start one daemon worker per sink."""
        self._stop.clear()
        for p in self._pumps:
            if p.thread is None or not p.thread.is_alive():
                p.thread = threading.Thread(
                    target=p.run, name=f"odibi-observe-pump-{p.name}", daemon=True
                )
                p.thread.start()

    def pump_once(self) -> int:
        """Synchronously deliver what every sink can take now; frames acknowledged in total.

        Used by one-shot commands (``odibi-observe sweep --spool-dir``) and tests. A failing
        sink is tried once and then left to its backoff; the others are not held up.
        """
        total = 0
        for p in self._pumps:
            while True:
                moved = p.step()
                total += moved
                if not moved:
                    break
        return total

    def drain(self, timeout: float) -> bool:
        """Wait until no sink has a backlog (True) or ``timeout`` seconds passed (False).

        With the workers running this only waits; without them it pumps on this thread,
        honouring each failing sink's backoff.
        """
        deadline = time.monotonic() + timeout
        while any(self.backlog().values()):
            if time.monotonic() >= deadline:
                return False
            if not self._threads_running():
                self.pump_once()
                if not any(self.backlog().values()):
                    break
            time.sleep(0.05)
        return True

    def _threads_running(self) -> bool:
        return any(p.thread is not None and p.thread.is_alive() for p in self._pumps)

    def backlog(self) -> dict[str, int]:
        """Frames each sink has not acknowledged yet."""
        return {p.name: p.cursor.backlog() for p in self._pumps}

    def failing(self) -> dict[str, bool]:
        """Whether each sink's last export failed (for ``/healthz``)."""
        return {p.name: p.failing for p in self._pumps}

    def delivered(self) -> dict[str, int]:
        """Events exported per sink since this pump started."""
        return {p.name: p.delivered for p in self._pumps}

    def acknowledged(self) -> dict[str, int]:
        """Spool frames acknowledged per sink since this pump started (exported, or not
        needed by that sink: other kinds, starts superseded by their end)."""
        return {p.name: p.acknowledged for p in self._pumps}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers (after their current batch); unacknowledged frames stay spooled."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for p in self._pumps:
            if p.thread is not None:
                p.thread.join(max(0.0, deadline - time.monotonic()))
                p.thread = None
