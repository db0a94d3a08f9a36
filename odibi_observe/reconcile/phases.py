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

``checkpoint_regressed``: a run committed a checkpoint older than the one committed before it
(of the same node and key, in commit order), or older than the value it replaced: the next run
reads again from the older value. Values are compared when both are numbers, or both ISO-8601
times; others are not ordered and never flagged.

``overlapping_runs``: a run of a checkpointing node started while another run of the same node
was still running (between its start and its end, or its last sign of life): both read from
the same checkpoint, so the rows of that window were written twice. Reported on the later run.

The runs are read through the catalog source's ``phase_runs`` (the contract), so reconciliation
never learns which kind of catalog it reads.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

from odibi_observe.conventions import (
    CHECKPOINT_REGRESSED,
    OVERLAPPING_RUNS,
    UNCOMMITTED_STATUSES,
    UNCOMMITTED_WRITE,
    RunStatus,
)
from odibi_observe.reconcile.model import Discrepancy, ReadLog, ReadRange, Window, iso_ns
from odibi_observe.reconcile.sources import CatalogSource
from odibi_observe.record import RunRecord


def phase_findings(
    catalog: CatalogSource,
    window: Window,
    read_range: ReadRange,
    log: ReadLog,
    stale_before_ns: int,
) -> list[Discrepancy]:
    """Every finding of this module about the runs that started in ``window`` (the runs
    around it, within the read range, are their history).

    ``stale_before_ns``: a RUNNING run whose last sign of life is older is taken as dead.
    """
    runs = list(catalog.phase_runs(read_range, log))

    def in_window(record: RunRecord) -> bool:
        return window.since_ns <= record.started_ns < window.end_ns

    return [
        *uncommitted_writes(catalog, [r for r in runs if in_window(r)], stale_before_ns),
        *(f for r, f in regressed_checkpoints(runs) if in_window(r)),
        *(f for r, f in overlapping_runs(runs, stale_before_ns, window.now_ns) if in_window(r)),
    ]


def uncommitted_writes(
    catalog: CatalogSource, runs: list[RunRecord], stale_before_ns: int
) -> list[Discrepancy]:
    """The ``uncommitted_write`` findings among ``runs``."""
    found = []
    for record in runs:
        if record.checkpoint is not None or not _ended_uncommitted(record, stale_before_ns):
            continue
        pending = [w for w in record.writes if w.get("rows") != 0]
        if not pending:
            continue
        if not any(w.get("awaits_checkpoint") for w in pending) and not (
            catalog.checkpointed_before(record.pipeline, record.node, record.started_ns)
        ):
            continue  # not a checkpointing node: its writes are all there is
        found.append(_finding(record, pending))
    return found


def regressed_checkpoints(runs: list[RunRecord]) -> list[tuple[RunRecord, Discrepancy]]:
    """``checkpoint_regressed``: each checkpoint older than the one committed before it (same
    node and key, in commit order) or than the value it replaced."""
    found = []
    last: dict[tuple[str, str, str], RunRecord] = {}
    committed = [r for r in runs if r.checkpoint is not None]
    for record in sorted(committed, key=_committed_at):
        checkpoint = record.checkpoint or {}
        key = (record.pipeline, record.node, str(checkpoint.get("key")))
        before = last.get(key)
        last[key] = record
        value = checkpoint.get("value")
        if before is not None and _older(value, (before.checkpoint or {}).get("value")):
            against = (before.checkpoint or {}).get("value")
            source = f"the checkpoint run {before.run_id} committed before it ({against!r})"
        elif _older(value, checkpoint.get("previous")):
            against = checkpoint.get("previous")
            source = f"the value it replaced ({against!r})"
        else:
            continue
        detail = (
            f"committed {checkpoint.get('key')} = {value!r}, older than {source}: the next run "
            "reads again from the older value and writes those rows a second time"
        )
        found.append((record, _discrepancy(CHECKPOINT_REGRESSED, record, detail)))
    return found


def overlapping_runs(
    runs: list[RunRecord], stale_before_ns: int, now_ns: int
) -> list[tuple[RunRecord, Discrepancy]]:
    """``overlapping_runs``: each run of a checkpointing node that started while an earlier
    run of the node was still running."""
    found = []
    by_node: dict[tuple[str, str], list[RunRecord]] = {}
    for record in runs:
        if record.checkpoint is not None or any(w.get("awaits_checkpoint") for w in record.writes):
            by_node.setdefault((record.pipeline, record.node), []).append(record)
    for group in by_node.values():
        group.sort(key=lambda r: r.started_ns)
        for i, record in enumerate(group):
            other = next(
                (
                    earlier
                    for earlier in reversed(group[:i])
                    if _end(earlier, stale_before_ns, now_ns) > record.started_ns
                ),
                None,
            )
            if other is None:
                continue
            same = _read_from(record) == _read_from(other) and _read_from(record) is not _UNKNOWN
            detail = (
                f"started at {iso_ns(record.started_ns)} while run {other.run_id} of the same "
                f"node (started {iso_ns(other.started_ns)}) was still running: "
                + (
                    f"both read from checkpoint {_read_from(record)!r}, "
                    if same
                    else "both read from the same checkpoint, "
                )
                + "so the rows of that window were written twice"
            )
            found.append((record, _discrepancy(OVERLAPPING_RUNS, record, detail, other=other)))
    return found


_UNKNOWN: Final = object()


def _read_from(record: RunRecord) -> Any:
    """The checkpoint value the run started from: what its commit replaced (unknown without)."""
    return _UNKNOWN if record.checkpoint is None else record.checkpoint.get("previous")


def _committed_at(record: RunRecord) -> int:
    at = (record.checkpoint or {}).get("at")
    return at if type(at) is int else record.ended_ns or record.started_ns


def _end(record: RunRecord, stale_before_ns: int, now_ns: int) -> int:
    """When ``record`` stopped running: its end, its last sign of life once stale, or now."""
    if record.ended_ns is not None:
        return record.ended_ns
    alive = max(record.started_ns, record.heartbeat_ns or 0)
    return alive if alive < stale_before_ns else now_ns


def _older(value: Any, than: Any) -> bool:
    """Whether checkpoint ``value`` is before ``than``: numbers, or ISO-8601 times (both
    naive or both aware); False when they cannot be ordered."""
    if isinstance(value, bool) or isinstance(than, bool) or value is None or than is None:
        return False
    if isinstance(value, (int, float)) and isinstance(than, (int, float)):
        return value < than
    if isinstance(value, str) and isinstance(than, str):
        try:
            return datetime.fromisoformat(value) < datetime.fromisoformat(than)
        except (ValueError, TypeError):  # not times, or one naive and one aware
            return False
    return False


def _ended_uncommitted(record: RunRecord, stale_before_ns: int) -> bool:
    if record.status in UNCOMMITTED_STATUSES:
        return True
    alive = max(record.started_ns, record.heartbeat_ns or 0)
    return record.status is RunStatus.RUNNING and alive < stale_before_ns


def _with_iso_time(item: dict[str, Any]) -> dict[str, Any]:
    at = item.get("at")
    return {**item, "at": iso_ns(at) if type(at) is int else at}


def _finding(record: RunRecord, pending: list[dict[str, Any]]) -> Discrepancy:
    rows = [w.get("rows") for w in pending]
    reread = None if None in rows else sum(int(r) for r in rows if r is not None)
    targets = ", ".join(dict.fromkeys(str(w.get("target")) for w in pending))
    versions = [w.get("version") for w in pending if w.get("version") is not None]
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
