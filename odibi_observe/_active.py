"""The runs in progress in this process, for the heartbeat and the exit hooks.

Two parts of odibi-observe act on runs they did not start: the heartbeat thread (a
``HEARTBEAT`` event for each run, every interval) and the ``atexit``/SIGTERM hooks (every run
still active is closed as ``CRASHED``). Both need the same short list of live runs and only a
few things of each, which :class:`LiveRun` names. Keeping the registry here, below the
instrumentation, the heartbeat and the runtime, is what lets those three import one another
in one direction only: the instrumentation registers its runs, the others read the registry.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol


class LiveRun(Protocol):
    """What the heartbeat and the exit hooks need of a run in progress."""

    @property
    def run_id(self) -> str:
        """The run's id: the registry's key."""
        ...

    @property
    def pid(self) -> int:
        """The process that began the run; only its own runs are active in a process."""
        ...

    def heartbeat(self, now_ns: int) -> None:
        """Emit one ``HEARTBEAT`` event stamped ``now_ns`` (may raise; the caller counts)."""
        ...

    def crash(self, error_type: str, message: str) -> bool:
        """End the run as ``CRASHED``; False if it had ended already. Never raises."""
        ...


_runs: dict[str, LiveRun] = {}
_lock = threading.Lock()


def add(run: LiveRun) -> None:
    """Register ``run`` as active (when it starts)."""
    with _lock:
        _runs[run.run_id] = run


def discard(run_id: str) -> None:
    """Forget the run ``run_id`` (when it ends); no error if it is not registered."""
    with _lock:
        _runs.pop(run_id, None)


def active_runs() -> list[LiveRun]:
    """The runs in progress in this process (a snapshot; for heartbeats and exit hooks)."""
    pid = os.getpid()
    with _lock:
        return [run for run in _runs.values() if run.pid == pid]


def crash_active_runs(error_type: str, message: str) -> int:
    """Close every run still active in this process as ``CRASHED``; return how many."""
    return sum(1 for run in active_runs() if run.crash(error_type, message))


def _after_fork_in_child() -> None:
    # Runs active in the parent are the parent's to finish; the child must not close them. The
    # lock is replaced, not taken: another thread may have held it at the moment of the fork.
    global _lock
    _lock = threading.Lock()
    _runs.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
