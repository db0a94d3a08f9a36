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

The runs are read through the catalog source's ``phase_runs`` (the contract), so reconciliation
never learns which kind of catalog it reads.
"""

from __future__ import annotations

import json
from typing import Any

from odibi_observe.conventions import UNCOMMITTED_STATUSES, UNCOMMITTED_WRITE, RunStatus
from odibi_observe.reconcile.model import Discrepancy, ReadLog, ReadRange, Window, iso_ns
from odibi_observe.reconcile.sources import CatalogSource
from odibi_observe.record import RunRecord


def uncommitted_writes(
    catalog: CatalogSource,
    window: Window,
    read_range: ReadRange,
    log: ReadLog,
    stale_before_ns: int,
) -> list[Discrepancy]:
    """The ``uncommitted_write`` findings of the runs that started in ``window``.

    ``stale_before_ns``: a RUNNING run whose last sign of life is older is taken as dead.
    """
    found = []
    for record in catalog.phase_runs(read_range, log):
        if not window.since_ns <= record.started_ns < window.end_ns:
            continue
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


def _ended_uncommitted(record: RunRecord, stale_before_ns: int) -> bool:
    if record.status in UNCOMMITTED_STATUSES:
        return True
    alive = max(record.started_ns, record.heartbeat_ns or 0)
    return record.status is RunStatus.RUNNING and alive < stale_before_ns


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
    catalog = {
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
        "writes": [
            {**w, "at": iso_ns(w["at"]) if type(w.get("at")) is int else w.get("at")}
            for w in record.writes
        ],
        "checkpoint": None,
        "rows_to_reread": reread,
    }
    return Discrepancy(
        UNCOMMITTED_WRITE,
        record.run_id,
        record.pipeline,
        record.node,
        record.started_ns,
        json.loads(json.dumps(catalog, default=str)),
        None,
        detail,
    )
