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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from odibi_observe.conventions import CRASHED_ERROR_TYPE, RunStatus, Source
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


def close_as_crashed(record: RunRecord, *, verdict: str, closed_by: str,
                     source: Source) -> RunRecord:
    """``record`` (RUNNING) closed as CRASHED at its last sign of life.

    ``verdict`` says what the closer found about the process and when ("process 1234 on host
    h was not alive at ..."); ``closed_by`` names the closer ("the sidecar's sweeper").
    """
    last = last_sign_of_life(record)
    return record.finished(
        status=RunStatus.CRASHED, ended_ns=last.at_ns, error_type=CRASHED_ERROR_TYPE,
        error_message=f"{verdict}; last sign of life {utc(last.at_ns)} ({last.kind}); closed "
                      f"as CRASHED by {closed_by}, ended at its last sign of life",
        source=source,
    )
