"""When a run whose process died without saying so ended: one rule, for every path that closes it.

Three things close a ``RUNNING`` run as ``CRASHED``: the sidecar's sweeper, ``odibi-observe
sweep`` and ``odibi-observe reconcile --repair``. They run at different moments, on different
hosts, with different evidence at hand, and each used to pick its own end time (the moment of
the sweep, or the start) — so the same run got three durations. This module is the one rule
they share.

**The rule: a crashed run ended at its last sign of life** — the latest of its ``started_at``
and its last ``heartbeat_at``, both read from the run's catalog row.

Why only those two:

* they are evidence about *the run*: the run was certainly still going at its start and at
  each heartbeat (a heartbeat is sent only while the node runs). Evidence about *the process*
  — the last time it appended to the spool, the moment it was found dead — says nothing about
  this run: a process can outlive a run whose terminal event was lost (a full spool), and it
  can write other runs' events after this one stopped. It bounds the end from above, never
  from below, so it goes in the error message, not in the duration;
* every closing path sees them — reconciliation may run on another host with no spool and no
  pid to look at — so the three paths compute the same end from the same row. The sweeper
  closes a run only once the catalog has every event its writer spooled (see
  :mod:`odibi_observe.sidecar.sweeper`), so the row's heartbeat is the last one sent;
* a later sweep does not make the run longer: the duration is what the run is known to have
  lived, not the sweeper's latency. (A run that never heartbeated gets 0 ms; the message says
  why.)

The error message says what is known, in that order: the verdict (what was found about the
process, and when), the last sign of life and which kind it was, and who closed the run.

**Why it crashed** goes in ``error_type``, one of a few names (``CRASH_CAUSES`` in the
conventions), so that a dashboard can count crashes by cause: :func:`crash_cause` decides it
from the evidence a closer could gather (:class:`CrashEvidence`). A closer that sees nothing
about the process (reconciliation on another host) says ``HeartbeatLost``.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Final

from odibi_observe.conventions import (
    CRASH_HEARTBEAT_LOST,
    CRASH_OOM_KILLED,
    CRASH_PROCESS_EXIT,
    CRASH_SIGKILL,
    CRASH_SIGNALED,
    CRASH_SIGTERM,
    RunStatus,
    Source,
)
from odibi_observe.record import RunRecord, ns_to_datetime

#: The kinds of sign of life a run leaves in its catalog row.
HEARTBEAT: Final = "heartbeat"
START: Final = "start"


@dataclass(frozen=True, slots=True)
class SignOfLife:
    """The last moment a run is known to have been running, and what showed it."""

    at_ns: int
    kind: str  # HEARTBEAT or START


def last_sign_of_life(record: RunRecord) -> SignOfLife:
    """The latest of ``record``'s start and last heartbeat (a heartbeat on a clock behind the
    start's does not move the end before the start)."""
    beat = record.heartbeat_ns
    if beat is not None and beat > record.started_ns:
        return SignOfLife(beat, HEARTBEAT)
    return SignOfLife(record.started_ns, START)


def utc(ns: int) -> str:
    """``2026-12-06 20:51:03.123 UTC``: millisecond precision, what the messages show."""
    return f"{ns_to_datetime(ns):%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"


#: A run whose peak memory reached this fraction of its limit is taken as OOM-killed when it
#: died of SIGKILL (or of an unknown cause): RSS is sampled at heartbeats, so the reading
#: before the kill is below the limit by what the node allocated since.
PEAK_AT_LIMIT_FRACTION: Final = 0.9


@dataclass(frozen=True, slots=True)
class CrashEvidence:
    """What a closer could see of how a run's process ended (None: could not see it).

    ``wait_status``: the process's exit status (``os.waitpid`` form), e.g. read from
    ``/proc/<pid>/stat`` of a zombie; ``oom_before``/``oom_after``: the ``oom_kill`` count of
    its cgroup's ``memory.events`` while the run was seen alive and after it died;
    ``peak_rss_bytes``/``memory_limit_bytes``: the run's peak memory and its limit.
    """

    wait_status: int | None = None
    oom_before: int | None = None
    oom_after: int | None = None
    peak_rss_bytes: int | None = None
    memory_limit_bytes: int | None = None

    @property
    def signal(self) -> int | None:
        """The signal that ended the process, if its status is visible and it was one."""
        if self.wait_status is not None and os.WIFSIGNALED(self.wait_status):
            return os.WTERMSIG(self.wait_status)
        return None

    @property
    def oom_kill_rose(self) -> bool:
        return (
            self.oom_before is not None
            and self.oom_after is not None
            and self.oom_after > self.oom_before
        )

    @property
    def peak_at_limit(self) -> bool:
        peak, limit = self.peak_rss_bytes, self.memory_limit_bytes
        return (
            peak is not None
            and limit is not None
            and limit > 0
            and peak >= PEAK_AT_LIMIT_FRACTION * limit
        )


def crash_cause(evidence: CrashEvidence) -> tuple[str, str]:
    """``(error_type, what showed it)`` of a crashed run, from ``evidence``.

    An exit status that is not SIGKILL decides alone (SIGTERM, another signal, a plain exit:
    the OOM killer only sends SIGKILL). Otherwise an ``oom_kill`` count that rose, or a peak at
    the limit, says ``OOMKilled``; a visible SIGKILL status says ``SIGKILL``; nothing visible
    says ``HeartbeatLost``.
    """
    sig = evidence.signal
    status = evidence.wait_status
    if status is not None and sig is None:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
        return CRASH_PROCESS_EXIT, f"it exited with status {code}"
    if sig is not None and sig != signal.SIGKILL:
        name = _signal_name(sig)
        return (
            CRASH_SIGTERM if sig == signal.SIGTERM else CRASH_SIGNALED,
            f"it was killed by {name} (its exit status)",
        )
    if evidence.oom_kill_rose:
        return CRASH_OOM_KILLED, (
            f"its cgroup's oom_kill count rose from {evidence.oom_before} to {evidence.oom_after}"
        )
    if evidence.peak_at_limit:
        return CRASH_OOM_KILLED, (
            f"its peak memory {evidence.peak_rss_bytes} bytes was at its "
            f"limit {evidence.memory_limit_bytes} bytes"
        )
    if sig is not None:
        return CRASH_SIGKILL, "it was killed by SIGKILL (its exit status)"
    return CRASH_HEARTBEAT_LOST, "how it ended is not visible from here"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def close_as_crashed(
    record: RunRecord,
    *,
    verdict: str,
    closed_by: str,
    source: Source,
    cause: str = CRASH_HEARTBEAT_LOST,
) -> RunRecord:
    """``record`` (RUNNING) closed as CRASHED at its last sign of life, ``error_type`` ``cause``.

    ``verdict`` says what the closer found about the process and when ("process 1234 on host
    h was not alive at ..."); ``closed_by`` names the closer ("the sidecar's sweeper").
    """
    last = last_sign_of_life(record)
    return record.finished(
        status=RunStatus.CRASHED,
        ended_ns=last.at_ns,
        error_type=cause,
        error_message=f"{verdict}; last sign of life {utc(last.at_ns)} ({last.kind}); closed "
        f"as CRASHED by {closed_by}, ended at its last sign of life",
        source=source,
    )
