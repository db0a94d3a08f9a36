"""``--repair``: make the catalog and the traces agree again, where one side is evidently right.

Dry run by default: every discrepancy is annotated with what *would* be done, and nothing is
written. With ``apply=True`` the actions run, in batches:

=====================  ==========================================================================
kind                   action
=====================  ==========================================================================
missing_in_catalog     ``backfill_catalog``: a FINISHED record built from the span — run id,
                       trace and span ids, times, status, rows, node, pipeline, error,
                       suggestions, attributes, host — upserted with ``source='reconciler'``
missing_in_traces      ``emit_span``: the span rebuilt from the catalog row with its stored
                       trace/span ids and times (:func:`~odibi_observe.sinks.otel.record_to_span`,
                       through an :class:`~odibi_observe.sinks.otel.OtelSink`)
stale_running          ``close_crashed``: the row closed as CRASHED at its last sign of life,
                       and a back-dated error span with the run's original ids
status/rows/duration   ``update_catalog_from_trace``: the row takes the span's status, rows,
mismatch               times and error
duplicate_*            none: which copy is right is not knowable; the report says what to do
=====================  ==========================================================================

Against lineage (``openlineage-file:``) only the catalog is repaired, from the lineage events
as from spans: nothing is re-sent to the lineage store and no span is emitted (the spans were
not what was compared), so ``missing_in_traces`` and ``missing_terminal_event`` are reported
only.

Why the span wins a mismatch: both are written from one record, and a span is immutable once
exported, while a catalog row can be rewritten — by a script, a backfill, another writer. So a
difference means the row changed (or, for a RUNNING row, lost its terminal write). The
catalog's previous values stay in the report and in ``meta_reconciliation_items``.

Idempotent: a repaired run no longer shows up as a discrepancy, so a second repair of the same
window has nothing to do; the catalog upsert is keyed by ``run_id`` and re-emitting a span
produces the very same span (same ids, same times). After a repair, a reconciliation over
sources that include the re-emitted spans is clean.

Every planned repair says what it does on each backend (``backends``: ``catalog`` and
``traces``, each ``planned``, ``applied``, ``failed: why`` or ``not_sent: why``), and the
summary counts them per backend: a ``close_crashed`` whose span had no destination, or whose
export failed, is applied for the catalog only (status ``partial``), never counted as applied
for the traces.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa

from odibi_observe import _crash as crash
from odibi_observe._crash import utc
from odibi_observe.catalog.schema import RUN_ID, meta_runs, row_to_record
from odibi_observe.catalog.store import CatalogStore
from odibi_observe.config import ConfigurationError, resolve_settings
from odibi_observe.conventions import RunStatus, Source
from odibi_observe.extensions import split_spec
from odibi_observe.reconcile.catalog_sources import ODIBI_DELTA_SCHEME
from odibi_observe.reconcile.engine import ReconcileResult
from odibi_observe.reconcile.model import Discrepancy, as_json, iso_ns
from odibi_observe.reconcile.sources import CatalogSource
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.otel import OtelSink

#: Service name of spans this process emits on behalf of a run whose own is unknown.
REPAIR_SERVICE_NAME: Final = "odibi-observe-reconcile"
BATCH: Final = 500

BACKFILL = "backfill_catalog"
EMIT = "emit_span"
CLOSE = "close_crashed"
UPDATE = "update_catalog_from_trace"
ACTIONS: Final = {
    "missing_in_catalog": BACKFILL,
    "missing_in_traces": EMIT,
    "stale_running": CLOSE,
    "status_mismatch": UPDATE,
    "rows_mismatch": UPDATE,
    "duration_mismatch": UPDATE,
}

PLANNED, APPLIED, FAILED, SKIPPED, IMPOSSIBLE = (
    "planned",
    "applied",
    "failed",
    "skipped",
    "not_repairable",
)
#: Applied on one backend, not on the other (a CRASHED row whose span could not be sent).
PARTIAL: Final = "partial"
STATUSES: Final = (PLANNED, APPLIED, PARTIAL, FAILED, SKIPPED, IMPOSSIBLE)

#: The two backends a repair writes to, as reports name them.
CATALOG_BACKEND, TRACES_BACKEND = "catalog", "traces"
#: A backend's part of a repair that had nowhere to go: neither applied nor failed.
NOT_SENT: Final = "not_sent"


class RepairError(Exception):
    """A repair destination that cannot be set up (a bad ``--repair-traces``)."""


def span_sink(spec: str | None) -> tuple[OtelSink | None, str | None]:
    """Where re-emitted spans go, and a description of it; ``(None, None)`` when nowhere.

    ``otlp-json:PATH`` appends to an OTLP-JSON lines file; an ``http(s)://`` URL is an OTLP
    endpoint (protocol from ``OTEL_EXPORTER_OTLP_PROTOCOL``, else http/protobuf). Without a
    spec, the standard variables decide (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``ODIBI_OBSERVE_TRACES_FILE``, ...), exactly as for a pipeline process.
    """
    common: dict[str, Any] = {"install_global": False, "metrics": False, "tracer_provider": None}
    try:
        settings = resolve_settings({})
        if spec is None:
            if not (settings.otlp_endpoint or settings.traces_file):
                return None, None
            sink = OtelSink.from_settings(settings, **common)
            where = settings.otlp_endpoint or f"otlp-json:{settings.traces_file}"
            return sink, str(where)
        scheme, location = split_spec(spec)
        if scheme == "otlp-json":
            if not location:
                raise RepairError("--repair-traces otlp-json: needs a file path")
            return OtelSink(service_name=REPAIR_SERVICE_NAME, traces_file=location, **common), spec
        if scheme in ("http", "https") and location.startswith("//"):
            return OtelSink(
                service_name=REPAIR_SERVICE_NAME,
                otlp_endpoint=spec,
                otlp_protocol=settings.otlp_protocol,
                otlp_timeout=settings.otlp_timeout,
                **common,
            ), spec
    except ConfigurationError as exc:
        raise RepairError(f"--repair-traces: {exc}") from None
    raise RepairError(
        f"--repair-traces {spec!r}: expected otlp-json:PATH or an http(s):// OTLP endpoint"
    )


@dataclass
class RepairSummary:
    """What a repair did (or would do), for the report."""

    mode: str
    catalog_writable: bool
    span_destination: str | None
    statuses: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    #: Per backend (``catalog``, ``traces``): how many writes were planned, applied, failed or
    #: not sent. A CRASHED row whose span had no destination counts as applied for the catalog
    #: and as not sent for the traces, never as applied for both.
    backends: dict[str, Counter[str]] = field(default_factory=dict)

    def count_backend(self, backend: str, state: str) -> None:
        self.backends.setdefault(backend, Counter())[state] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            **as_json(self, ("mode", "catalog_writable", "span_destination")),
            **{status: self.statuses.get(status, 0) for status in STATUSES},
            "actions": dict(self.actions),
            "backends": {name: dict(counts) for name, counts in self.backends.items()},
        }


class Repairer:
    """Plans (and with ``apply``, performs) the repairs of a result's discrepancies."""

    def __init__(
        self,
        catalog: CatalogSource,
        spans: OtelSink | None,
        *,
        apply: bool,
        span_destination: str | None = None,
        now_ns: int,
        lineage: bool = False,
    ) -> None:
        self.store: CatalogStore | None = catalog.store()
        self.catalog_note = (
            None
            if self.store is not None
            else (
                "the catalog cannot be written here: "
                + (
                    "Odibi's Delta table is read-only for odibi-observe"
                    if catalog.scheme == ODIBI_DELTA_SCHEME
                    else "meta_runs lacks odibi-observe's columns (run 'odibi-observe catalog "
                    "upgrade')"
                )
            )
        )
        self.spans = spans
        self.lineage = lineage
        self.no_destination = _LINEAGE_NO_SPANS if lineage else _NO_DESTINATION
        self.apply = apply
        self.now_ns = now_ns
        self.summary = RepairSummary(
            mode="applied" if apply else "dry-run",
            catalog_writable=self.store is not None,
            span_destination=span_destination,
        )

    def run(self, result: ReconcileResult) -> RepairSummary:
        """Annotate (and repair) every discrepancy of ``result``; returns the summary."""
        result.replace_discrepancies(self._annotated(result.discrepancies()))
        result.repair = self.summary.to_dict()
        return self.summary

    def _annotated(self, items: Iterable[Discrepancy]) -> Iterator[Discrepancy]:
        batch: list[Discrepancy] = []
        for item in items:
            batch.append(item)
            if len(batch) >= BATCH:
                yield from self._batch(batch)
                batch = []
        if batch:
            yield from self._batch(batch)
        if self.spans is not None and self.apply:
            self.spans.force_flush(30)

    # -- one batch ---------------------------------------------------------------------------

    def _batch(self, items: Sequence[Discrepancy]) -> list[Discrepancy]:
        need = {i.run_id for i in items if i.kind in ACTIONS}
        current = self._fetch(need) if self.store is not None and need else {}
        catalog_events: dict[str, RunEvent] = {}
        span_events: dict[str, RunEvent] = {}
        plans: list[tuple[Discrepancy, str | None, str, str]] = []  # item, action, status, note
        for item in items:
            # A pipeline run's row and span are summaries of its node runs, whose own
            # discrepancies are repaired: the summary is not rebuilt from one side.
            pipeline_run = any(
                (side or {}).get("pipeline_run") for side in (item.catalog, item.trace)
            )
            action = None if pipeline_run else ACTIONS.get(item.kind)
            if action is None:
                plans.append(
                    (
                        item,
                        None,
                        IMPOSSIBLE,
                        _NOT_REPAIRED.get(
                            item.kind,
                            "which copy is right cannot be known; see what to do for this kind",
                        ),
                    )
                )
                continue
            status, note = self._plan(
                item, action, current.get(item.run_id), catalog_events, span_events
            )
            plans.append((item, action, status, note))

        catalog_error = span_error = None
        if self.apply and catalog_events:
            assert self.store is not None
            try:
                self.store.upsert(list(catalog_events.values()))
            except Exception as exc:
                catalog_error = f"catalog write failed: {type(exc).__name__}: {exc}"
        if self.apply and span_events and self.spans is not None:
            try:
                self.spans.export(list(span_events.values()))
            except Exception as exc:
                span_error = f"span export failed: {exc}"

        out = []
        for item, action, planned, note in plans:
            status, text, backends = planned, note, {}
            if planned == PLANNED:
                backends = self._backends(
                    item.run_id,
                    action,
                    catalog_events,
                    span_events,
                    catalog_error=catalog_error,
                    span_error=span_error,
                )
                if self.apply:
                    status = _overall(backends)
                    errors = [state for state in backends.values() if state.startswith(FAILED)]
                    text = "; ".join(errors) if status == FAILED else note
                    if status == PARTIAL and errors:
                        text = "; ".join([note, *errors])
            self.summary.statuses[status] += 1
            if action and status in (PLANNED, APPLIED, PARTIAL):
                self.summary.actions[action] += 1
            item.repair = {"action": action, "status": status, "note": text}
            if backends:
                item.repair["backends"] = backends
            out.append(item)
        return out

    def _backends(
        self,
        run_id: str,
        action: str | None,
        catalog_events: dict[str, RunEvent],
        span_events: dict[str, RunEvent],
        *,
        catalog_error: str | None,
        span_error: str | None,
    ) -> dict[str, str]:
        """What a planned repair does (or did) on each backend, counted in the summary:
        ``planned``, ``applied``, ``failed: why`` or ``not_sent: why``."""
        out: dict[str, str] = {}
        for backend, used, error in (
            (CATALOG_BACKEND, run_id in catalog_events, catalog_error),
            (TRACES_BACKEND, run_id in span_events, span_error),
        ):
            if used:
                state = PLANNED if not self.apply else f"{FAILED}: {error}" if error else APPLIED
            elif backend == TRACES_BACKEND and action == CLOSE:
                state = f"{NOT_SENT}: no trace destination"
            else:
                continue
            self.summary.count_backend(backend, state.split(":", 1)[0])
            out[backend] = state
        return out

    def _plan(
        self,
        item: Discrepancy,
        action: str,
        record: RunRecord | None,
        catalog_events: dict[str, RunEvent],
        span_events: dict[str, RunEvent],
    ) -> tuple[str, str]:
        """``(status, note)`` for one item; queues the events it needs."""
        needs_catalog = action != EMIT or (record is not None and not record.trace_id)
        if needs_catalog and self.store is None:
            return IMPOSSIBLE, self.catalog_note or ""
        if action == BACKFILL:
            if record is not None:
                return SKIPPED, "the catalog has this run (outside the window): nothing to add"
            built = record_from_trace(item.run_id, item.trace or {})
            if built is None:
                return IMPOSSIBLE, "the span's status is not a run status"
            catalog_events[item.run_id] = RunEvent(EventKind.FINISHED, built)
            return PLANNED, "meta_runs row from the span (source=reconciler)"
        if record is None:
            return SKIPPED, "the catalog row is gone"
        if action == EMIT:
            if self.lineage:
                return IMPOSSIBLE, _NOT_REPAIRED[item.kind]
            if record.status is RunStatus.RUNNING:
                return SKIPPED, "the run is still RUNNING in the catalog"
            if self.spans is None:
                return SKIPPED, self.no_destination
            if not record.trace_id or not record.span_id:
                record = record.replace(**derived_ids(record.run_id), source=Source.RECONCILER)
                catalog_events[item.run_id] = RunEvent(EventKind.FINISHED, record)
                note = "span with ids derived from the run id (the row had none; stored too)"
            else:
                note = f"span {record.trace_id}/{record.span_id} as stored in the catalog"
            span_events[item.run_id] = RunEvent(EventKind.FINISHED, record)
            return PLANNED, note
        if action == CLOSE:
            if record.status is not RunStatus.RUNNING:
                return SKIPPED, f"already closed as {record.status.value}"
            closed = close_as_crashed(record)
            catalog_events[item.run_id] = RunEvent(EventKind.FINISHED, closed)
            if self.spans is None:
                when = iso_ns(closed.ended_ns)
                return PLANNED, f"closed as CRASHED at {when}; no span: {self.no_destination}"
            span_events[item.run_id] = RunEvent(EventKind.FINISHED, closed)
            return PLANNED, f"CRASHED at {iso_ns(closed.ended_ns)}, with a back-dated span"
        updated = update_from_trace(record, item.trace or {})
        if updated is None:
            return IMPOSSIBLE, "the span's status is not a run status"
        catalog_events[item.run_id] = RunEvent(EventKind.FINISHED, updated)
        return PLANNED, "catalog row takes the span's status, rows, times and error"

    def _fetch(self, run_ids: set[str]) -> dict[str, RunRecord]:
        assert self.store is not None
        out: dict[str, RunRecord] = {}
        ids = sorted(run_ids)
        with self.store.engine.connect() as conn:
            for i in range(0, len(ids), BATCH):
                query = sa.select(meta_runs).where(meta_runs.c[RUN_ID].in_(ids[i : i + BATCH]))
                for row in conn.execute(query).mappings():
                    try:
                        out[str(row[RUN_ID])] = row_to_record(row)
                    except (ValueError, TypeError):
                        continue  # unreadable row: reported by the read already
        return out


#: Against lineage: no span is emitted (see the module docstring).
_LINEAGE_NO_SPANS: Final = "lineage was reconciled, so no span is emitted"
#: Why a kind is reported only (besides duplicates).
_NOT_REPAIRED: Final = {
    "missing_in_traces": "odibi-observe does not re-send lineage events; the catalog row stands",
    "missing_terminal_event": "odibi-observe does not re-send lineage events; see what to do "
    "for this kind",
}
_NO_DESTINATION: Final = (
    "no trace destination: pass --repair-traces (otlp-json:PATH or an "
    "OTLP endpoint) or set OTEL_EXPORTER_OTLP_ENDPOINT"
)


def _overall(backends: dict[str, str]) -> str:
    """An applied repair's status from its backends' states: applied only when every part of
    it reached its backend."""
    states = [state.split(":", 1)[0] for state in backends.values()]
    if all(state == APPLIED for state in states):
        return APPLIED
    if any(state == APPLIED for state in states):
        return PARTIAL
    return FAILED


def derived_ids(run_id: str) -> dict[str, str]:
    """Trace and span ids for a run that has none, derived from its run id (so that repeating
    a repair produces the same span, never a second one)."""
    digest = hashlib.sha256(run_id.encode("utf-8")).hexdigest()
    trace_id, span_id = digest[:32], digest[32:48]
    return {
        "trace_id": trace_id if int(trace_id, 16) else "1".zfill(32),
        "span_id": span_id if int(span_id, 16) else "1".zfill(16),
    }


def close_as_crashed(record: RunRecord, checked_ns: int | None = None) -> RunRecord:
    """``record`` (RUNNING) closed as CRASHED at its last sign of life: the end time rule the
    sweeper uses too (:func:`odibi_observe._crash.close_as_crashed`), so a run gets the same
    end whichever of them closes it."""
    at = utc(time.time_ns() if checked_ns is None else checked_ns)
    return crash.close_as_crashed(
        record,
        verdict=f"process {record.pid} on host {record.host} left no terminal record, "
        f"no span and no sign of life by {at} (SIGKILL, OOM kill or a lost "
        f"host)",
        closed_by="reconciliation",
        source=Source.RECONCILER,
    )


def _status(value: Any) -> RunStatus | None:
    try:
        return RunStatus(str(value))
    except ValueError:
        return None


def record_from_trace(run_id: str, trace: dict[str, Any]) -> RunRecord | None:
    """The catalog record of a run known only from its span (a discrepancy's trace side)."""
    status = _status(trace.get("status"))
    if status is None:
        return None
    attributes = {
        str(k): tuple(v) if isinstance(v, list) else v
        for k, v in (trace.get("attributes") or {}).items()
    }
    return RunRecord(
        run_id=run_id,
        project=trace.get("project") or "",
        pipeline=trace.get("pipeline") or "",
        node=trace.get("node") or "",
        environment=trace.get("environment") or "",
        status=status,
        started_ns=int(trace["started_ns"]),
        trace_id=trace.get("trace_id") or "",
        span_id=trace.get("span_id") or "",
        host=trace.get("host") or "",
        pid=int(trace.get("pid") or 0),
        service_name=trace.get("service_name") or REPAIR_SERVICE_NAME,
        parent_span_id=trace.get("parent_span_id"),
        pipeline_run_id=trace.get("pipeline_run_id"),
        attempt=int(trace.get("attempt") or 1),
        ended_ns=int(trace["ended_ns"]),
        rows_processed=trace.get("rows_processed"),
        error_type=trace.get("error_type"),
        error_message=trace.get("error_message"),
        suggestions=tuple(trace.get("suggestions") or ()),
        attributes=attributes,
        source=Source.RECONCILER,
    )


def update_from_trace(record: RunRecord, trace: dict[str, Any]) -> RunRecord | None:
    """``record`` with the span's status, rows, times and error; everything else it has (host,
    heartbeat, suggestions, attributes) is kept."""
    status = _status(trace.get("status"))
    if status is None:
        return None
    failed = status in (RunStatus.FAILURE, RunStatus.CRASHED)
    return record.finished(
        status=status,
        rows_processed=trace.get("rows_processed"),
        started_ns=int(trace.get("started_ns") or record.started_ns),
        ended_ns=int(trace.get("ended_ns") or record.ended_ns or record.started_ns),
        error_type=trace.get("error_type") if failed else None,
        error_message=trace.get("error_message") if failed else None,
        source=Source.RECONCILER,
    )


def repair(
    result: ReconcileResult,
    catalog: CatalogSource,
    *,
    apply: bool,
    repair_traces: str | None = None,
) -> RepairSummary:
    """Annotate ``result``'s discrepancies with repairs (applied when ``apply``)."""
    lineage = result.traces_hold == "lineage"
    sink, where = (None, None) if lineage else span_sink(repair_traces)
    try:
        repairer = Repairer(
            catalog,
            sink,
            apply=apply,
            span_destination=where,
            now_ns=result.window.now_ns,
            lineage=lineage,
        )
        return repairer.run(result)
    finally:
        if sink is not None:
            sink.shutdown()


__all__ = [
    "RepairError",
    "RepairSummary",
    "Repairer",
    "close_as_crashed",
    "derived_ids",
    "record_from_trace",
    "repair",
    "span_sink",
    "update_from_trace",
]
