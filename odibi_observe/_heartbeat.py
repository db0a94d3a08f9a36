"""Heartbeats: proof, every few seconds, that a running node's process is still alive.

A ``RUNNING`` row says a node started; it cannot say whether the process is still there. The
sweeper can check a pid on its own host, but not across hosts or pid namespaces (a pod's
sidecar container, a pipeline on another machine). So while any node runs, one daemon thread
per process emits a ``HEARTBEAT`` event for each active run every ``heartbeat_interval``
seconds; the catalog moves the run's ``heartbeat_at`` forward (and never a finished run's), and
a sweeper closes a run whose last heartbeat — or, if it never sent one, whose start — is older
than its threshold.

The thread is independent of the node's own thread, so a long synchronous step (a 40-minute
``df.merge``) keeps heartbeating and is not mistaken for a crash. What stops heartbeats is what
should: the process dying, or being frozen (SIGSTOP, a hung interpreter holding the GIL in C
code — the latter is indistinguishable from death from outside, which is why the threshold
should be several intervals).

Heartbeat events carry the run's start snapshot plus ``heartbeat_ns``; the Prometheus and
span sinks do not subscribe to them (see ``Sink.kinds``), so they cost one catalog statement
per run per interval.

The thread reads the live runs from :mod:`odibi_observe._active`; :mod:`odibi_observe._runtime`
starts it when an observer is configured and stops it when the observer is shut down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from odibi_observe._active import LiveRun, active_runs
from odibi_observe._selfmetrics import log

Clock = Callable[[], int]


class Heartbeat:
    """Emits a ``HEARTBEAT`` event for each active run of this process every ``interval``."""

    def __init__(
        self,
        interval: float,
        clock: Clock = time.time_ns,
        runs: Callable[[], list[LiveRun]] = active_runs,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.runs = runs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> int:
        """Send one heartbeat for every active run now; return how many were sent."""
        now = self.clock()
        sent = 0
        for run in self.runs():
            try:
                run.heartbeat(now)
                sent += 1
            except Exception as exc:  # a heartbeat must never kill the thread
                log.debug("odibi-observe heartbeat for %s failed: %s", run.run_id, exc)
        return sent

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.interval <= 0 or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="odibi-observe-heartbeat", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def after_fork_in_child(self) -> None:
        """Threads do not survive ``fork``: start a fresh one in the child."""
        self._stop = threading.Event()
        self._thread = None
        self.start()
