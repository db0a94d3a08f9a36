"""Findings from the phases of the runs (their writes and checkpoints), judged on the catalog
alone: no span is needed to see that a run wrote and never committed its checkpoint.

``uncommitted_write``: a run of a *checkpointing* node that recorded a write (``writes_json``)
and no checkpoint (``checkpoint_json`` NULL), and ended ``CRASHED``, ``FAILURE`` or
``CANCELLED`` — or is still ``RUNNING`` long after its last sign of life (killed, not yet
swept). A node is checkpointing when the write said it awaits the run's checkpoint (the Odibi
integration says so for an append of a node that reads incrementally in ``stateful`` mode), or
when an earlier run of the node committed one (the catalog's history). A write of 0 rows
leaves nothing to re-read and is not flagged. The finding names the rows the next run will
read and write again, where the writes counted them.

``checkpoint_regressed``: a run committed a checkpoint that takes a node back (same node and
key; checkpoints in the order of their commits, ``at``):

* older than the one committed before it (an overlapping run that committed last);
* older than the value it replaced (its ``previous``);
* or its ``previous`` is older than the value committed last before the run *started*: the
  state was set back before this run (restored, edited, reset), so a run read again from the
  older value.

The first checkpoints of the window are compared with the last one committed before it
(``CatalogSource.checkpoints_before``). Values are ordered when both are numbers, or both
ISO-8601 times (both with a UTC offset or both without); two values that are neither and not
equal (text against a number, ``'batch-b'`` against ``'batch-a'``) cannot be ordered: they are
never accused, and one note per key of the report counts them. A ``previous`` of None (none
recorded, or no state yet) is not judged.

``overlapping_runs``: a run of a checkpointing node started while another run of the same node
was still running — before it committed its checkpoint, or, with none, before its end (or its
last sign of life) — so both read from the same checkpoint. Every run of the node counts
(``CatalogSource.node_runs``), also one that ended before it wrote anything. Reported on the
later run. The end of a run is its start plus a duration measured on another clock, so an
overlap with a run that ended uncommitted must last :data:`OVERLAP_SLACK_NS` to be judged.

The runs are read through the catalog source's ``phase_runs``, ``node_runs`` and
``checkpoints_before`` (the contract), so reconciliation never learns which kind of catalog it
reads.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Final, NamedTuple

from odibi_observe.conventions import (
    CHECKPOINT_REGRESSED,
    OVERLAPPING_RUNS,
    PHASE_KEYS,
    UNCOMMITTED_STATUSES,
    UNCOMMITTED_WRITE,
    RunStatus,
)
from odibi_observe.reconcile.model import Discrepancy, ReadLog, ReadRange, Window, iso_ns
from odibi_observe.reconcile.sources import CatalogSource
from odibi_observe.record import RunRecord

#: The keys of a write and of the checkpoint (``writes_json``, ``checkpoint_json``).
_K: Final = PHASE_KEYS

#: A run that ended without a checkpoint is taken to end this much earlier: its end is its
#: wall-clock start plus a monotonic duration, so the next run of a loop in one process may
#: seem to start a few microseconds before it ended. (A commit's ``at`` is exact.)
OVERLAP_SLACK_NS: Final = 10_000_000

_Node = tuple[str, str]


def phase_findings(
    catalog: CatalogSource,
    window: Window,
    read_range: ReadRange,
    log: ReadLog,
    stale_before_ns: int,
) -> list[Discrepancy]:
    """Every finding of this module about the runs that started in ``window`` (the runs
    around it, within the read range, and the checkpoints before it are their history).

    ``stale_before_ns``: a RUNNING run whose last sign of life is older is taken as dead.
    """
    runs = list(catalog.phase_runs(read_range, log))

    def in_window(record: RunRecord) -> bool:
        return window.since_ns <= record.started_ns < window.end_ns

    nodes = checkpointing_nodes(catalog, runs, read_range.end_ns)
    committing = sorted({(r.pipeline, r.node) for r in runs if r.checkpoint is not None})
    history = [
        r for pn in committing for r in catalog.checkpoints_before(*pn, read_range.start_ns, log)
    ]
    regressed, unordered = regressed_checkpoints([*history, *runs])
    note_unordered([u for u in unordered if in_window(u.record)], log, catalog.describe())
    every_run = node_runs(catalog, nodes, runs, read_range, log)
    return [
        *uncommitted_writes(catalog, [r for r in runs if in_window(r)], stale_before_ns),
        *(f for r, f in regressed if in_window(r)),
        *(
            f
            for r, f in overlapping_runs(every_run, stale_before_ns, window.now_ns)
            if in_window(r)
        ),
    ]


def checkpointing_nodes(
    catalog: CatalogSource, runs: list[RunRecord], before_ns: int
) -> set[_Node]:
    """The nodes among ``runs`` that checkpoint: one of their runs committed a checkpoint or
    wrote awaiting one, or wrote and the node committed one before (its history)."""
    nodes = {
        (r.pipeline, r.node)
        for r in runs
        if r.checkpoint is not None or any(w.get(_K.awaits_checkpoint) for w in r.writes)
    }
    writing = {(r.pipeline, r.node) for r in runs if r.writes} - nodes
    return nodes | {pn for pn in writing if catalog.checkpointed_before(*pn, before_ns)}


def node_runs(
    catalog: CatalogSource,
    nodes: Iterable[_Node],
    runs: list[RunRecord],
    read_range: ReadRange,
    log: ReadLog,
) -> list[RunRecord]:
    """Every run of ``nodes`` in the read range: those ``catalog.node_runs`` reads (also
    runs that recorded no phase) with the phase ``runs`` of those nodes, once each."""
    wanted = set(nodes)
    found = {r.run_id: r for r in runs if (r.pipeline, r.node) in wanted}
    for pipeline, node in sorted(wanted):
        found.update((r.run_id, r) for r in catalog.node_runs(pipeline, node, read_range, log))
    return list(found.values())


def uncommitted_writes(
    catalog: CatalogSource, runs: list[RunRecord], stale_before_ns: int
) -> list[Discrepancy]:
    """The ``uncommitted_write`` findings among ``runs``."""
    found = []
    for record in runs:
        if record.checkpoint is not None or not _ended_uncommitted(record, stale_before_ns):
            continue
        pending = [w for w in record.writes if w.get(_K.rows) != 0]
        if not pending:
            continue
        if not any(w.get(_K.awaits_checkpoint) for w in pending) and not (
            catalog.checkpointed_before(record.pipeline, record.node, record.started_ns)
        ):
            continue  # not a checkpointing node: its writes are all there is
        found.append(_finding(record, pending))
    return found


class Unordered(NamedTuple):
    """A checkpoint value of ``record`` that could not be ordered against ``against``."""

    record: RunRecord
    key: str
    value: Any
    against: Any


#: What a checkpoint older than the one before it, or than the value it replaced, leads to.
_NEXT_RUN: Final = (
    ": the next run reads again from the older value and writes those rows a second time"
)


def _checks(
    cp: dict[str, Any], before: RunRecord | None, read: RunRecord | None
) -> tuple[tuple[Any, Any, Callable[[], str]], ...]:
    """The comparisons of checkpoint ``cp`` in the order they are tried — the value and what
    it must not be older than, and (lazily) what a regression's detail says — given the
    checkpoint committed before it and the one committed last before its run started."""
    key, value, previous = cp.get(_K.key), cp.get(_K.value), cp.get(_K.previous)
    return (
        (
            value,
            _value(before),
            lambda: (
                f"committed {key} = {value!r}, older than the checkpoint run "
                f"{_run_id(before)} committed before it ({_value(before)!r}){_NEXT_RUN}"
            ),
        ),
        (
            value,
            previous,
            lambda: (
                f"committed {key} = {value!r}, older than the value it replaced "
                f"({previous!r}){_NEXT_RUN}"
            ),
        ),
        (
            previous,
            _value(read),
            lambda: (
                f"the state was set back before this run: the value it replaced ({key} = "
                f"{previous!r}) is older than {_value(read)!r}, committed by run {_run_id(read)} "
                "before this run started (restored, edited or reset): a run that read from "
                "the older value read those rows again and wrote them a second time"
            ),
        ),
    )


def regressed_checkpoints(
    runs: Iterable[RunRecord],
) -> tuple[list[tuple[RunRecord, Discrepancy]], list[Unordered]]:
    """``checkpoint_regressed``: each checkpoint that takes its node back (see the module's
    docstring); and the values that could not be ordered, one per run at most."""
    found, unordered = [], []
    history: dict[tuple[str, str, str], list[RunRecord]] = {}
    for record in sorted((r for r in runs if r.checkpoint is not None), key=_committed_at):
        checkpoint = record.checkpoint or {}
        key = str(checkpoint.get(_K.key))
        earlier = history.setdefault((record.pipeline, record.node, key), [])
        before = earlier[-1] if earlier else None
        read = _committed_before(earlier, record.started_ns)
        earlier.append(record)
        unclear: Unordered | None = None
        for value, against, say in _checks(checkpoint, before, read):
            order = _order(value, against)
            if order is None:
                unclear = unclear or Unordered(record, key, value, against)
            elif order < 0:
                found.append((record, _discrepancy(CHECKPOINT_REGRESSED, record, say())))
                break
        else:
            if unclear is not None:
                unordered.append(unclear)
    return found, unordered


def note_unordered(unordered: list[Unordered], log: ReadLog, source: str) -> None:
    """One note per node and key: how many of its checkpoints could not be ordered, with an
    example, so that a regression not judged is never silent."""
    by_key: dict[tuple[str, str, str], list[Unordered]] = {}
    for item in unordered:
        by_key.setdefault((item.record.pipeline, item.record.node, item.key), []).append(item)
    for (pipeline, node, key), items in by_key.items():
        first = items[0]
        log.add_note(
            f"catalog {source}",
            f"{CHECKPOINT_REGRESSED} not judged for {len(items)} run(s) of {pipeline}/{node}: "
            f"its checkpoint {key!r} cannot be ordered against the one before (e.g. "
            f"{first.value!r} against {first.against!r}, run {first.record.run_id}): not two "
            "numbers, nor two ISO-8601 times both with or both without an offset",
        )


def overlapping_runs(
    runs: Iterable[RunRecord], stale_before_ns: int, now_ns: int
) -> list[tuple[RunRecord, Discrepancy]]:
    """``overlapping_runs``: each run (of a checkpointing node: ``runs`` are all of them)
    that started while an earlier run of the node was still running and had not committed."""
    found = []
    by_node: dict[_Node, list[RunRecord]] = {}
    for record in runs:
        if record.status is not RunStatus.SKIPPED:
            by_node.setdefault((record.pipeline, record.node), []).append(record)
    for group in by_node.values():
        group.sort(key=lambda r: (r.started_ns, r.run_id))
        for i, record in enumerate(group):
            other = next(
                (
                    earlier
                    for earlier in reversed(group[:i])
                    if _reading_until(earlier, stale_before_ns, now_ns) > record.started_ns
                ),
                None,
            )
            if other is not None:
                detail = _overlap_detail(record, other)
                found.append((record, _discrepancy(OVERLAPPING_RUNS, record, detail, other=other)))
    return found


def _overlap_detail(record: RunRecord, other: RunRecord) -> str:
    same = _read_from(record) == _read_from(other) and _read_from(record) is not _UNKNOWN
    both = (
        f"both read from checkpoint {_read_from(record)!r}"
        if same
        else "both read from the same checkpoint"
    )
    silent = [r for r in (other, record) if not r.writes]
    if silent:
        run = silent[0]
        how = (
            "it is still RUNNING"
            if run.status is RunStatus.RUNNING
            else f"it ended {run.status.value}"
        )
        outcome = (
            f"; run {run.run_id} recorded no write ({how}), so nothing was written twice this "
            "time, but nothing keeps two runs of this node apart"
        )
    else:
        outcome = ", so the rows of that window were written twice"
    return (
        f"started at {iso_ns(record.started_ns)} while run {other.run_id} of the same "
        f"node (started {iso_ns(other.started_ns)}) was still running: {both}{outcome}"
    )


_UNKNOWN: Final = object()


def _read_from(record: RunRecord) -> Any:
    """The checkpoint value the run started from: what its commit replaced (unknown without)."""
    return _UNKNOWN if record.checkpoint is None else record.checkpoint.get(_K.previous)


def _value(record: RunRecord | None) -> Any:
    return None if record is None else (record.checkpoint or {}).get(_K.value)


def _run_id(record: RunRecord | None) -> str:
    return "?" if record is None else record.run_id


def _committed_at(record: RunRecord) -> int:
    at = (record.checkpoint or {}).get(_K.at)
    return at if type(at) is int else record.ended_ns or record.started_ns


def _committed_before(commits: list[RunRecord], ns: int) -> RunRecord | None:
    """The last of ``commits`` (in commit order) committed before ``ns``."""
    i = bisect_left(commits, ns, key=_committed_at)
    return commits[i - 1] if i else None


def _reading_until(record: RunRecord, stale_before_ns: int, now_ns: int) -> int:
    """Until when another run of the node read what ``record`` read: its commit, if it made
    one; else its end (less the slack: see :data:`OVERLAP_SLACK_NS`), its last sign of life
    once stale, or now."""
    at = (record.checkpoint or {}).get(_K.at)
    if type(at) is int:
        return at
    if record.ended_ns is not None:
        return record.ended_ns - OVERLAP_SLACK_NS
    alive = max(record.started_ns, record.heartbeat_ns or 0)
    return alive if alive < stale_before_ns else now_ns


def _order(value: Any, than: Any) -> int | None:
    """-1, 0 or 1 as checkpoint ``value`` is before, equal to or after ``than``: numbers, or
    ISO-8601 times (both naive or both aware), or two equal values; 0 when either is None
    (nothing to judge); None when they cannot be ordered."""
    if value is None or than is None:
        return 0
    if type(value) is type(than) and value == than:
        return 0
    if _is_number(value) and _is_number(than):
        return int(value > than) - int(value < than)
    if isinstance(value, str) and isinstance(than, str):
        try:
            a, b = datetime.fromisoformat(value), datetime.fromisoformat(than)
            return (a > b) - (a < b)
        except (ValueError, TypeError):  # not times, or one naive and one aware
            return None
    return None


def _is_number(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _ended_uncommitted(record: RunRecord, stale_before_ns: int) -> bool:
    if record.status in UNCOMMITTED_STATUSES:
        return True
    alive = max(record.started_ns, record.heartbeat_ns or 0)
    return record.status is RunStatus.RUNNING and alive < stale_before_ns


def _with_iso_time(item: dict[str, Any]) -> dict[str, Any]:
    at = item.get(_K.at)
    return {**item, _K.at: iso_ns(at) if type(at) is int else at}


def _finding(record: RunRecord, pending: list[dict[str, Any]]) -> Discrepancy:
    rows = [w.get(_K.rows) for w in pending]
    reread = None if None in rows else sum(int(r) for r in rows if r is not None)
    targets = ", ".join(dict.fromkeys(str(w.get(_K.target)) for w in pending))
    versions = [w.get(_K.version) for w in pending if w.get(_K.version) is not None]
    status = (
        "still RUNNING (its process is gone)"
        if record.status is RunStatus.RUNNING
        else (f"ended {record.status.value}")
    )
    detail = (
        f"wrote {'rows' if reread is None else f'{reread} row(s)'} to {targets}"
        + (f" (version {', '.join(map(str, versions))})" if versions else "")
        + f" and {status} without committing its checkpoint: the next run re-reads "
        + ("them" if reread is None else f"those {reread} row(s)")
        + " and writes them again"
    )
    return _discrepancy(UNCOMMITTED_WRITE, record, detail, rows_to_reread=reread)


def _discrepancy(
    kind: str, record: RunRecord, detail: str, *, other: RunRecord | None = None, **extra: Any
) -> Discrepancy:
    """A finding about ``record``: its catalog side shows its phases (and ``other``, the run
    it overlapped)."""
    catalog: dict[str, Any] = {
        "status": record.status.value,
        "started_at": iso_ns(record.started_ns),
        "started_ns": record.started_ns,
        "ended_at": iso_ns(record.ended_ns),
        "heartbeat_at": iso_ns(record.heartbeat_ns),
        "trace_id": record.trace_id,
        "span_id": record.span_id,
        "pipeline": record.pipeline,
        "node": record.node,
        "error_type": record.error_type,
        "writes": [_with_iso_time(w) for w in record.writes],
        "checkpoint": None if record.checkpoint is None else _with_iso_time(record.checkpoint),
        **extra,
    }
    if other is not None:
        catalog["overlapped"] = {
            "run_id": other.run_id,
            "status": other.status.value,
            "started_at": iso_ns(other.started_ns),
            "ended_at": iso_ns(other.ended_ns),
            "checkpoint": None if other.checkpoint is None else _with_iso_time(other.checkpoint),
        }
    return Discrepancy(
        kind,
        record.run_id,
        record.pipeline,
        record.node,
        record.started_ns,
        json.loads(json.dumps(catalog, default=str)),
        None,
        detail,
    )
