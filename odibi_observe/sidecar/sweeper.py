"""The sweeper: close as ``CRASHED`` the runs whose process died without saying so.

SIGKILL, the OOM killer, a node eviction or a power cut end a process before it can write a
terminal record. What they leave is the durable ``RUNNING`` row (with ``host``, ``pid``,
``started_at`` and the last ``heartbeat_at``). The sweeper finds those rows and decides, for
each, whether its process is gone:

* **same host, pid check on** — the pid is not running, or it is running but that process
  started *after* the run did (the pid was reused by a newer process): gone. A live process is
  trusted, however old its last heartbeat (a long synchronous step is not a crash).
* **otherwise** (another host, ``--all-hosts``, a pid namespace the sweeper cannot see into,
  or the pid check turned off) — no heartbeat within ``heartbeat_timeout``: gone. A run that
  never heartbeated is judged by its ``started_at``.

A run judged gone is closed in *both* places the promise covers:

* the catalog row, with :meth:`CatalogStore.close_running` — only if it is *still* RUNNING, so
  a run whose real ending lands between the check and the write keeps its real ending;
* a span with the run's original ``trace_id``/``span_id`` and its original, back-dated start,
  status ERROR, so the trace backend shows the crash where the run began; and the metrics.

The run's end is its last sign of life — the latest of its start and its last heartbeat —
by the one rule every closing path shares (:mod:`odibi_observe._crash`); the error message
says what was found about the process and when, and which sign of life the end is.

**Why it crashed** (``error_type``, :func:`odibi_observe._crash.crash_cause`) comes from what
the sweeper can see on this host. While a run is alive, the sweeper notes its process's cgroup
(``/proc/<pid>/cgroup``, under ``ODIBI_OBSERVE_CGROUP_ROOT`` if set) and the ``oom_kill`` count of
its ``memory.events``; when the run is found dead it reads the count again (it rose:
``OOMKilled``) and, if the process is a zombie its parent has not reaped yet, its exit status
from ``/proc/<pid>/stat`` (``SIGKILL``, ``SIGTERM``, ...). A peak memory at the limit also says
``OOMKilled``. With nothing visible (another host, a run that died before the sweeper saw it,
an exit status already reaped): ``HeartbeatLost``. A run's process that ended through its
exit hooks (SIGTERM, interpreter exit) closed its runs itself with the cause.

Under load the closing is not held back by other processes: before closing, the sweeper waits
until the catalog's spool cursor has passed the last frame of each dead run's own writer
(``settle``, :func:`spooled_so_far_ingested`), not until the spool is empty: at a thousand
runs a second from live pipelines that never happens.

Clock and liveness checks are injectable: tests use a frozen clock instead of sleeping through
the threshold.
"""

from __future__ import annotations

import collections
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter

from odibi_observe._crash import CrashEvidence, close_as_crashed, crash_cause, utc
from odibi_observe._resources import cgroup_dir, oom_kills, read_limit, zombie_wait_status
from odibi_observe._selfmetrics import log
from odibi_observe.conventions import SIDECAR_METRICS, Source
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.base import Sink
from odibi_observe.sinks.catalog import CatalogSink
from odibi_observe.spool import writer_pid

if TYPE_CHECKING:
    from odibi_observe.catalog.store import CatalogStore
    from odibi_observe.spool import Spool

#: Why a run was closed: the ``reason`` label of ``odibi_observe_sweeper_closed_total``.
PROCESS_GONE = "process_gone"
PID_REUSED = "pid_reused"
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
NO_HEARTBEAT = "no_heartbeat"


LivenessCheck = Callable[[int, "int | None"], bool]


def _process_alive(pid: int, started_ns: int | None) -> bool:
    from odibi_observe.spool import process_alive

    return process_alive(pid, started_ns)


@dataclass(frozen=True, slots=True)
class _Watch:
    """A live run's cgroup as the sweeper saw it: where, its ``oom_kill`` count, its limit."""

    directory: Path
    oom_kills: int | None
    limit: int | None


@dataclass(frozen=True)
class SweepResult:
    """What one pass found: runs checked, runs closed, and why."""

    checked: int
    closed: list[RunRecord] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    @property
    def uncommitted(self) -> list[RunRecord]:
        """The closed runs that wrote and committed no checkpoint (``uncommitted_write``):
        their writes are kept in the closed row, and the next run re-reads what they wrote."""
        return [r for r in self.closed if r.writes and r.uncommitted_write]


class Sweeper:
    """Finds RUNNING runs whose process is gone and closes them in catalog, traces and metrics.

    ``sinks`` receive the closed run's terminal event (spans, metrics; a catalog sink among
    them is skipped, the row is closed by the store). With ``spool``, the event is appended to
    the spool instead and the sidecar's pump delivers it to every sink with retries, so an
    unreachable collector during the sweep does not lose the crash span.

    ``closed_by`` names the closer in the error message (``odibi-observe sweep`` says so).

    ``settle`` is called with the runs about to be closed, after the verdicts and before
    anything is closed; it returns False to postpone the closing to the next pass. The sidecar
    passes "wait until the catalog has every event these runs' writers spooled"
    (:func:`spooled_so_far_ingested`): a process judged dead can no longer write, so once the
    catalog has everything it spooled, a row still RUNNING really has no ending. Only their
    writers, not until the spool is empty: live processes keep writing at any rate, and a
    catalog that is never fully caught up must not keep crashed runs open. (Checking *before*
    the verdicts is not enough: a process may spool its ending and die in between, and would
    then look crashed.)
    """

    def __init__(
        self,
        store: CatalogStore,
        sinks: Sequence[Sink] = (),
        *,
        host: str | None = None,
        heartbeat_timeout: float = 300.0,
        all_hosts: bool = False,
        pid_check: bool = True,
        spool: Spool | None = None,
        clock: Callable[[], int] = time.time_ns,
        alive: LivenessCheck = _process_alive,
        registry: CollectorRegistry | None = None,
        dry_run: bool = False,
        settle: Callable[[Sequence[RunRecord]], bool] | None = None,
        closed_by: str = "the sidecar's sweeper",
    ) -> None:
        if heartbeat_timeout <= 0:
            raise ValueError("heartbeat_timeout must be positive")
        self.store = store
        self.sinks = [s for s in sinks if s.name != CatalogSink.name]
        self.host = host or socket.gethostname()
        self.heartbeat_timeout = heartbeat_timeout
        self.all_hosts = all_hosts
        self.pid_check = pid_check
        self.spool = spool
        self.clock = clock
        self.alive = alive
        self.dry_run = dry_run
        self.settle = settle
        self.closed_by = closed_by
        self.closed_total = Counter(
            SIDECAR_METRICS.sweeper_closed.prometheus_base,
            SIDECAR_METRICS.sweeper_closed.description,
            SIDECAR_METRICS.sweeper_closed.labels,
            registry=registry if registry is not None else CollectorRegistry(),
        )
        #: Live runs on this host (run_id -> their cgroup as first seen), for the OOM cause.
        self._watched: dict[str, _Watch] = {}

    def verdict(self, record: RunRecord, now_ns: int) -> str | None:
        """Why ``record``'s process is gone, or None if it may still be running."""
        if self.pid_check and record.host == self.host and record.pid > 0:
            if self.alive(record.pid, None):
                if self.alive(record.pid, record.started_ns):
                    return None
                return PID_REUSED
            return PROCESS_GONE
        last = record.heartbeat_ns
        age_s = (now_ns - (last if last is not None else record.started_ns)) / 1e9
        if age_s <= self.heartbeat_timeout:
            return None
        return HEARTBEAT_TIMEOUT if last is not None else NO_HEARTBEAT

    def crashed_record(
        self, record: RunRecord, reason: str, now_ns: int, evidence: CrashEvidence | None = None
    ) -> RunRecord:
        """The terminal snapshot of a run closed for ``reason`` (same ids, original start),
        ended at its last sign of life (:func:`odibi_observe._crash.close_as_crashed`), its
        ``error_type`` the cause ``evidence`` shows."""
        cause, shown = crash_cause(
            evidence
            or CrashEvidence(
                peak_rss_bytes=record.peak_rss_bytes, memory_limit_bytes=record.memory_limit_bytes
            )
        )
        verdict = f"{self.verdict_text(record, reason, now_ns)}; {shown}"
        return close_as_crashed(
            record, verdict=verdict, closed_by=self.closed_by, source=Source.SIDECAR, cause=cause
        )

    def _local(self, record: RunRecord) -> bool:
        return self.pid_check and record.host == self.host and record.pid > 0

    def _watch(self, record: RunRecord) -> None:
        """Note a live local run's cgroup and its ``oom_kill`` count, once per run."""
        if record.run_id in self._watched:
            return
        directory = cgroup_dir(record.pid)
        if directory is not None:
            self._watched[record.run_id] = _Watch(
                directory, oom_kills(directory), read_limit(directory)
            )

    def evidence(self, record: RunRecord, reason: str) -> CrashEvidence:
        """What can be seen now of how ``record``'s process ended (read at once: its parent
        may reap a zombie any moment)."""
        status = None
        if self._local(record) and reason == PROCESS_GONE:
            status = zombie_wait_status(record.pid)
        watch = self._watched.get(record.run_id)
        limit = record.memory_limit_bytes
        if watch is None:
            return CrashEvidence(
                status, peak_rss_bytes=record.peak_rss_bytes, memory_limit_bytes=limit
            )
        return CrashEvidence(
            status,
            watch.oom_kills,
            oom_kills(watch.directory),
            record.peak_rss_bytes,
            limit if limit is not None else watch.limit,
        )

    def verdict_text(self, record: RunRecord, reason: str, now_ns: int) -> str:
        """What the sweeper found about ``record``'s process, and when."""
        where = f"process {record.pid} on host {record.host}"
        at = utc(now_ns)
        timeout = timedelta(seconds=round(self.heartbeat_timeout))
        return {
            PROCESS_GONE: f"{where} was not alive at {at}",
            PID_REUSED: f"{where} was not alive at {at} (its pid belonged to a newer process)",
            HEARTBEAT_TIMEOUT: f"no heartbeat from {where} for more than {timeout} at {at}",
            NO_HEARTBEAT: f"{where} sent no heartbeat within {timeout} of its start "
            f"(checked at {at})",
        }[reason]

    def sweep(self) -> SweepResult:
        """One pass over the open runs; returns what was closed (nothing, with ``dry_run``)."""
        candidates = self.store.running(host=None if self.all_hosts else self.host)
        now = self.clock()
        doomed: list[tuple[RunRecord, str]] = []
        for record in candidates:
            reason = self.verdict(record, now)
            if reason is not None:
                evidence = self.evidence(record, reason)
                doomed.append((self.crashed_record(record, reason, now, evidence), reason))
            elif self._local(record):
                self._watch(record)
        open_ids = {r.run_id for r in candidates}
        for run_id in [k for k in self._watched if k not in open_ids]:
            del self._watched[run_id]  # ended (or closed): bounded by the open runs
        if self.dry_run or not doomed:
            return SweepResult(
                len(candidates), [r for r, _ in doomed], _count(reason for _, reason in doomed)
            )
        if self.settle is not None and not self.settle([r for r, _ in doomed]):
            # The catalog is behind what dead processes already wrote (their real endings may
            # be among it); closing now could overwrite a real ending. Next pass.
            return SweepResult(len(candidates))
        closed_ids = set(self.store.close_running([r for r, _ in doomed]))
        closed = [(r, reason) for r, reason in doomed if r.run_id in closed_ids]
        failed = self._emit([r for r, _ in closed])
        for record, reason in closed:
            self.closed_total.labels(reason=reason).inc()
            log.warning(
                "odibi-observe sweeper: run %s (%s/%s) closed as CRASHED: %s%s",
                record.run_id,
                record.pipeline,
                record.node,
                record.error_message,
                uncommitted_note(record),
            )
        return SweepResult(
            len(candidates), [r for r, _ in closed], _count(reason for _, reason in closed), failed
        )

    def _emit(self, records: list[RunRecord]) -> list[str]:
        """Send the closed runs' terminal events; the names of sinks that failed."""
        if not records:
            return []
        events = [RunEvent(EventKind.FINISHED, r) for r in records]
        if self.spool is not None:
            from odibi_observe.spool import SpoolFullError

            try:
                self.spool.append_many([e.to_json().encode() for e in events])
                return []
            except SpoolFullError as exc:
                log.error(
                    "odibi-observe sweeper: spool full (%s); sending the closed runs "
                    "to the sinks directly",
                    exc.reason,
                )
        failed = []
        for sink in self.sinks:
            try:
                sink.export([e for e in events if e.kind in sink.kinds])
                sink.force_flush(10.0)
            except Exception as exc:  # one sink's failure must not stop the others
                log.error("odibi-observe sweeper: sink %r failed: %s", sink.name, exc)
                failed.append(sink.name)
        return failed


def uncommitted_note(record: RunRecord) -> str:
    """``; uncommitted_write: ...`` for a run that left an uncommitted write, else ``""``."""
    summary = record.uncommitted_summary()
    return "" if summary is None else f"; {summary}"


def spooled_so_far_ingested(
    spool: Spool, cursor: str, records: Sequence[RunRecord]
) -> Callable[[], bool]:
    """A check: has cursor ``cursor`` (the catalog's) every frame that the writers of
    ``records`` (the runs about to be closed) had spooled by *now*?

    Their writers: a default writer id (``<host>-<pid>-<start>``) with one of their pids —
    a run's events are spooled by the process that runs it — and, as they name no process,
    custom writer ids. Every other writer is a *live* process the verdicts say nothing about;
    waiting for it would let a busy one keep crashed runs open for ever (the catalog is never
    fully caught up while pipelines run). The mark (:meth:`Spool.end_positions`) is taken
    when this is called, after the verdicts: a dead writer has written all it ever will by
    then; what a custom-id writer appends later is not waited for.
    """
    pids = {r.pid for r in records}
    marks = {
        writer: mark
        for writer, mark in spool.end_positions().items()
        if writer_pid(writer) in pids or writer_pid(writer) is None
    }
    found = [c for c in spool.open_cursors() if c.name == cursor]
    return (lambda: True) if not found else (lambda: found[0].reached(marks))


def _count(reasons: Iterable[str]) -> dict[str, int]:
    return dict(collections.Counter(reasons))
