"""What reconciliation compares and what it finds: runs as each side saw them, the window,
discrepancies and the problems met while reading.

Both sides are reduced to plain tuples before they meet (:class:`TraceRun` for a node span,
:class:`CatalogRun` for a catalog row) because the engine handles millions of them: a
``NamedTuple`` costs what a tuple costs, can be spilled to disk with ``marshal`` once turned into
a plain tuple, and the engine reads the few fields it compares by position (the ``*_I``
constants below), which works on both forms.

All times are integer nanoseconds since the Unix epoch, as in :class:`~odibi_observe.RunRecord`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, Final, Generic, NamedTuple, Self, TypeVar, overload

from odibi_observe.conventions import (
    CHECKPOINT_REGRESSED,
    DISCREPANCY_KINDS,
    OVERLAPPING_RUNS,
    SELF_METRICS,
    UNCOMMITTED_WRITE,
    RunStatus,
)
from odibi_observe.record import datetime_to_ns, ns_to_datetime

_Row = TypeVar("_Row")
_T = TypeVar("_T")

# ------------------------------------------------------------------------------ the two sides


class TraceRun(NamedTuple):
    """One odibi node span (a span carrying ``odibi.run_id``), whatever source it came from.

    ``unchecked`` names the fields the span carried with an invalid value (a wrong attribute
    type): they are reported as read errors and left out of the comparison rather than being
    compared as "unknown". ``attributes_json`` is the run's user attributes as a JSON object
    (``odibi.attr.*`` without the prefix), kept as text because only repairs ever need it.
    ``origin`` says where the span was read (``traces.jsonl.gz:1234``, ``tempo trace ...``).
    """

    run_id: str
    trace_id: str
    span_id: str
    start_ns: int
    end_ns: int
    status: str
    rows: int | None
    pipeline: str
    node: str
    project: str
    environment: str
    parent_span_id: str | None
    pipeline_run_id: str | None
    attempt: int
    error_type: str | None
    error_message: str | None
    suggestions: tuple[str, ...]
    attributes_json: str | None
    host: str
    pid: int
    service_name: str
    unchecked: str
    origin: str


class CatalogRun(NamedTuple):
    """One catalog row, reduced to what reconciliation compares.

    ``window_ns`` is the time that places the row in a window: ``started_at`` for catalogs
    odibi-observe writes, Odibi's ``timestamp`` (when the row was logged) otherwise.
    ``exact`` is true for rows written from the same record as the span (they carry trace ids):
    there, an unknown row count or duration is a fact to compare. For rows Odibi wrote itself
    it only means "not recorded", and the comparison skips it. ``unchecked`` names fields whose
    stored value could not be read (reported as read errors, left out of the comparison).
    ``not_run`` is set on rows Odibi logged for a node it did not execute: ``dry_run`` (its
    ``metrics_json`` says ``"dry_run": true``) or ``skipped``; no span is expected for them.
    """

    run_id: str
    status: str
    rows: int | None
    duration_ms: int | None
    window_ns: int
    started_ns: int | None
    trace_id: str | None
    span_id: str | None
    pipeline: str
    node: str
    heartbeat_ns: int | None
    exact: bool
    unchecked: str
    origin: str
    not_run: str = ""


#: ``new_trace_run(values)``: a :class:`TraceRun` from a tuple of its fields in order, without
#: the keyword handling of ``TraceRun(...)`` (which costs more than the tuple, per span).
new_trace_run: Final = partial(tuple.__new__, TraceRun)
new_catalog_run: Final = partial(tuple.__new__, CatalogRun)


def _index(cls: type[Any], name: str) -> int:
    fields_: tuple[str, ...] = cls._fields
    return fields_.index(name)


# Positions of the fields the engine reads in its inner loop (tuples from a spill file are
# plain tuples, on which attribute access does not exist).
T_RUN_ID: Final = _index(TraceRun, "run_id")
T_TRACE_ID: Final = _index(TraceRun, "trace_id")
T_SPAN_ID: Final = _index(TraceRun, "span_id")
T_START: Final = _index(TraceRun, "start_ns")
T_END: Final = _index(TraceRun, "end_ns")
T_STATUS: Final = _index(TraceRun, "status")
T_ROWS: Final = _index(TraceRun, "rows")
T_PIPELINE: Final = _index(TraceRun, "pipeline")
T_NODE: Final = _index(TraceRun, "node")
T_UNCHECKED: Final = _index(TraceRun, "unchecked")
T_ORIGIN: Final = _index(TraceRun, "origin")
C_STATUS: Final = _index(CatalogRun, "status")
C_ROWS: Final = _index(CatalogRun, "rows")
C_DURATION: Final = _index(CatalogRun, "duration_ms")
C_WINDOW: Final = _index(CatalogRun, "window_ns")
C_PIPELINE: Final = _index(CatalogRun, "pipeline")
C_EXACT: Final = _index(CatalogRun, "exact")
C_SPAN_ID: Final = _index(CatalogRun, "span_id")
C_UNCHECKED: Final = _index(CatalogRun, "unchecked")
C_HEARTBEAT: Final = _index(CatalogRun, "heartbeat_ns")
C_STARTED: Final = _index(CatalogRun, "started_ns")
C_NODE: Final = _index(CatalogRun, "node")
C_NOT_RUN: Final = _index(CatalogRun, "not_run")

#: ``CatalogRun.not_run`` values: why Odibi logged a row for a node it did not execute. The
#: keys are the ``metrics_json`` flags Odibi 3.15 sets on such a node's result
#: (``Node._execute_dry_run``; ``Pipeline.run`` for skipped nodes).
NOT_RUN_REASONS: Final = {
    "dry_run": "dry run (metrics_json.dry_run): Odibi executed nothing, so no span exists",
    "skipped": "skipped (metrics_json.skipped, e.g. a dependency failed): nothing ran",
}


def odibi_not_run(metrics_json: object) -> str:
    """``dry_run`` or ``skipped`` when Odibi's ``metrics_json`` marks a node that did not
    execute; ``""`` otherwise (including text that is not a JSON object)."""
    if not isinstance(metrics_json, str) or not metrics_json:
        return ""
    try:
        metrics = json.loads(metrics_json)
    except ValueError:
        return ""
    if not isinstance(metrics, dict):
        return ""
    return next((flag for flag in NOT_RUN_REASONS if metrics.get(flag) is True), "")


def odibi_rows(status: str, rows: int | None, exact: bool) -> int | None:
    """The row count a catalog row really records. Odibi writes ``rows_processed = 0`` for a
    failed node whose count it never learnt (``result.rows_processed or 0``): on a row Odibi
    wrote (not ``exact``), a FAILURE with 0 rows means unknown, not zero."""
    if not exact and rows == 0 and status == RunStatus.FAILURE.value:
        return None
    return rows


_STATUSES: Final = frozenset(s.value for s in RunStatus)


def normalize_status(value: object) -> str:
    """A status as both sides compare it: upper case, Odibi's legacy ``FAILED`` as FAILURE.

    Unknown values are kept (upper-cased) rather than rejected: a status nobody expects is
    itself worth a ``status_mismatch``.
    """
    if value in _STATUSES:
        return value  # the common case, already normal
    text = str(value or "").strip().upper()
    return RunStatus.FAILURE.value if text == "FAILED" else text


# ----------------------------------------------------------------------------------- window

#: Runs whose time is this far outside the window on one side are still read, so that a run
#: whose two records straddle the window's edge is matched instead of reported missing.
EXACT_MARGIN: Final = timedelta(minutes=5)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    return (
        value.replace(tzinfo=timezone.utc)
        if value.tzinfo is None
        else value.astimezone(timezone.utc)
    )


class _Converted(Generic[_T]):
    """A read-only property: another attribute of the instance, converted (a time in
    nanoseconds as a datetime, or the other way round). The window and the read range hold
    each time one way and answer for it both ways."""

    def __init__(self, attribute: str, convert: Callable[[Any], _T]) -> None:
        self._attribute = attribute
        self._convert = convert

    @overload
    def __get__(self, instance: None, owner: type) -> Self: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> _T: ...

    def __get__(self, instance: object, owner: type | None = None) -> _T | Self:
        if instance is None:  # on the class (help(), inspect): the property itself
            return self
        return self._convert(getattr(instance, self._attribute))


@dataclass(frozen=True)
class Window:
    """The runs to reconcile: those that started in ``[since, end)``.

    ``end`` is ``until``, moved back to ``now - grace`` when that is earlier: a run that started
    within the grace period may still be running, or its span may still be on its way through
    a collector, so it is left for the next reconciliation instead of being reported. With
    ``--last``, ``since`` is moved back by the grace too, so that consecutive nightly runs
    cover consecutive, non-overlapping stretches of time with nothing left out.
    """

    since: datetime
    until: datetime
    grace: timedelta
    now: datetime

    @classmethod
    def last(cls, duration: timedelta, *, grace: timedelta, now: datetime | None = None) -> Window:
        now = as_utc(now or utc_now())
        return cls(since=now - grace - duration, until=now, grace=grace, now=now)

    @classmethod
    def between(
        cls, since: datetime, until: datetime, *, grace: timedelta, now: datetime | None = None
    ) -> Window:
        return cls(
            since=as_utc(since), until=as_utc(until), grace=grace, now=as_utc(now or utc_now())
        )

    def __post_init__(self) -> None:
        if self.until <= self.since:
            raise ValueError(
                f"the window ends ({self.until.isoformat()}) before it starts "
                f"({self.since.isoformat()})"
            )
        if self.grace < timedelta(0):
            raise ValueError("grace must not be negative")

    @property
    def end(self) -> datetime:
        return min(self.until, self.now - self.grace)

    since_ns = _Converted("since", datetime_to_ns)
    end_ns = _Converted("end", datetime_to_ns)
    until_ns = _Converted("until", datetime_to_ns)
    now_ns = _Converted("now", datetime_to_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": iso(self.since),
            "until": iso(self.until),
            "end": iso(self.end),
            "grace_seconds": self.grace.total_seconds(),
            "now": iso(self.now),
        }


@dataclass(frozen=True)
class ReadRange:
    """What a source is asked for: spans or rows whose time is in ``[start_ns, end_ns)``.

    Wider than the window by a margin on each side (see :data:`EXACT_MARGIN`); the engine
    decides which runs are in the window. ``now_ns`` lets sources reject times in the future.
    """

    start_ns: int
    end_ns: int
    now_ns: int

    start = _Converted("start_ns", ns_to_datetime)
    end = _Converted("end_ns", ns_to_datetime)


def as_json(obj: object, layout: Iterable[str], **derived: Any) -> dict[str, Any]:
    """``obj``'s attributes named in ``layout``, in that order (the order its JSON shows
    them), as a dict; a name in ``derived`` takes that value instead (a time as ISO text, a
    float made JSON-safe, a value the object computes)."""
    return {name: derived[name] if name in derived else getattr(obj, name) for name in layout}


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return as_utc(value).isoformat().replace("+00:00", "Z")


def iso_ns(ns: int | None) -> str | None:
    return None if ns is None else iso(ns_to_datetime(ns))


# -------------------------------------------------------------------------- reading problems

#: How many read errors are kept with their text; beyond it they are only counted (a file of a
#: million broken lines must not produce a million-line report).
MAX_ERRORS_KEPT: Final = 1_000

#: A span or row more than this far in the future is a bad clock or bad data, not a run.
FUTURE_SKEW_NS: Final = 5 * 60 * 1_000_000_000


@dataclass(frozen=True)
class ReadError:
    """Something a source could not read: where (file and line, table, URL) and why."""

    source: str
    where: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "where": self.where, "message": self.message}


@dataclass
class ReadLog:
    """What sources report besides runs: errors, ignored spans, time ranges they could not read.

    Sources never raise for bad content; they record it here and carry on, so that one bad
    line or one failed request costs that line or that request and nothing more. A *gap* is a
    time range a source knows it could not read (a Tempo search that timed out): catalog runs
    in it are counted as unchecked instead of being reported missing from the traces.
    """

    errors: list[ReadError] = field(default_factory=list)
    errors_total: int = 0
    ignored_spans: int = 0
    outside_range: int = 0
    gaps: list[tuple[int, int, str]] = field(default_factory=list)
    progress: Callable[[str, int, int | None], None] | None = None
    #: Facts about the input that limit the comparison but are not errors (an Odibi table
    #: without odibi-observe's columns): shown in every report, they do not fail the run.
    notes: list[str] = field(default_factory=list)

    def add_note(self, source: str, message: str) -> None:
        text = f"{source}: {message}"
        if text not in self.notes:
            self.notes.append(text)

    def add_error(self, source: str, where: str, message: str) -> None:
        self.errors_total += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(ReadError(source, where, message))

    def gap(self, start_ns: int, end_ns: int, source: str) -> None:
        self.gaps.append((start_ns, end_ns, source))

    def tick(self, phase: str, done: int, total: int | None = None) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    def numbered(self, rows: Iterable[_Row], phase: str, every: int) -> Iterator[tuple[int, _Row]]:
        """``enumerate(rows, start=1)`` that ticks the progress line every ``every`` rows,
        once the row before the tick is dealt with (a source streaming a table)."""
        for number, row in enumerate(rows, start=1):
            yield number, row
            if number % every == 0:
                self.tick(phase, number, None)

    def in_gap(self, ns: int) -> bool:
        return any(start <= ns < end for start, end, _ in self.gaps)


# ----------------------------------------------------------------------------- discrepancies


@dataclass(frozen=True)
class KindInfo:
    """How a kind (of discrepancy, of health finding) is explained in every report: what it
    means, what to do about it, and what ``--repair`` does (None: nothing)."""

    name: str
    title: str
    meaning: str
    todo: str
    repair: str | None = None


def kind_table(order: Sequence[str], *infos: KindInfo) -> Mapping[str, KindInfo]:
    """The explained kinds by name. They must be the kinds of ``order`` (the conventions'
    list), in its order: a kind added to one list and not the other fails at import."""
    table = {k.name: k for k in infos}
    if tuple(table) != tuple(order):  # pragma: no cover - guards edits of either list
        raise RuntimeError(f"explained kinds {list(table)} are not the kinds {list(order)}")
    return table


def md_cell(text: object) -> str:
    """``text`` as one cell of a Markdown table: pipes escaped, on one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def todo_table(counts: Mapping[str, int], infos: Mapping[str, KindInfo], count: str) -> list[str]:
    """The Markdown lines of a report's "what to do": each kind with a count (``counts`` in
    the kinds' order) and its ``todo``, under a column named ``count``; none if no kind has."""
    rows = [f"| `{k}` | {n:,} | {md_cell(infos[k].todo)} |" for k, n in counts.items() if n]
    return ["", f"| kind | {count} | what to do |", "|---|---:|---|", *rows] if rows else []


KINDS: Final = kind_table(
    DISCREPANCY_KINDS,
    KindInfo(
        "missing_in_catalog",
        "Missing in catalog",
        "The run has a span but no meta_runs row.",
        "The catalog write was lost: check the catalog sink's errors "
        f'({SELF_METRICS.sink_errors.prometheus}{{sink="catalog"}}) and the database\'s '
        "availability "
        "at that time.",
        "backfill the meta_runs row from the span (source='reconciler')",
    ),
    KindInfo(
        "missing_in_traces",
        "Missing in traces",
        "The run has a meta_runs row but no span.",
        "Spans were lost between the process and the trace store: check the collector's "
        "queue and drop counters, sampling, and retention for that time.",
        "re-emit the span with the run's stored trace and span ids and times",
    ),
    KindInfo(
        "status_mismatch",
        "Status mismatch",
        "The catalog and the span disagree on the run's status.",
        "A catalog row stuck at RUNNING lost its terminal write; any other mismatch means the "
        "row was changed after the run: check who writes to meta_runs.",
        "set the catalog row's status (and error) to the span's",
    ),
    KindInfo(
        "rows_mismatch",
        "Rows mismatch",
        "The catalog and the span disagree on rows processed.",
        "Both are written from one record, so the row was changed afterwards: check other "
        "writers of meta_runs (scripts, backfills, Odibi's own writer).",
        "set the catalog row's rows_processed to the span's",
    ),
    KindInfo(
        "duration_mismatch",
        "Duration mismatch",
        "The catalog's duration_ms differs from the span's duration beyond the tolerance.",
        "Check who rewrote the row's times; if it is a clock problem, the hosts' NTP.",
        "set the catalog row's end time and duration to the span's",
    ),
    KindInfo(
        "duplicate_in_catalog",
        "Duplicate in catalog",
        "Several catalog rows have the same run_id.",
        "Only tables without a primary key allow this (Odibi's own Delta table): a run was "
        "logged twice. Keep one row.",
        None,
    ),
    KindInfo(
        "duplicate_in_traces",
        "Duplicate in traces",
        "Different spans (different span ids) carry the same odibi.run_id.",
        "Two processes claimed one run id: look for copied run ids or a replayed job that "
        "reused its id. The same span delivered twice is not reported.",
        None,
    ),
    KindInfo(
        "stale_running",
        "Stale RUNNING",
        "The catalog row is still RUNNING long after its last sign of life, and no span exists.",
        "The process died without closing the run (SIGKILL, OOM kill, lost host): check the "
        "host's kernel log and the scheduler for the kill, then re-run the node.",
        "close the run as CRASHED in the catalog and emit a back-dated error span with its ids",
    ),
    KindInfo(
        UNCOMMITTED_WRITE,
        "Uncommitted write",
        "The run of a checkpointing node wrote its target and ended (CRASHED, FAILURE, "
        "CANCELLED, or still RUNNING long after its last sign of life) without committing "
        "its checkpoint: the next run re-reads what it wrote and writes it again.",
        "Before the next run, remove the rows this run wrote (or restore the target to the "
        "version before its write), or set the checkpoint to the value the write covered; "
        "for good, make the write idempotent (merge on a key). See docs/exactly-once.md.",
        None,
    ),
    KindInfo(
        CHECKPOINT_REGRESSED,
        "Checkpoint regressed",
        "The run committed a checkpoint older than the one committed before it, or the "
        "state was set back before it ran: a run reads again from the older value.",
        "Usually a slower run that overlapped a faster one committed last, or the state "
        "was restored: set the checkpoint back to the newer value before the next run, and "
        "keep runs of the node from overlapping. See docs/exactly-once.md.",
        None,
    ),
    KindInfo(
        OVERLAPPING_RUNS,
        "Overlapping runs",
        "Two runs of the same checkpointing node ran at the same time, so both read from "
        "the same checkpoint: the rows of that window were written twice.",
        "Keep one run of a node at a time (a lock, the scheduler's concurrency limit); "
        "remove the second copy of the window's rows, or make the write idempotent "
        "(merge on a key). See docs/exactly-once.md.",
        None,
    ),
    KindInfo(
        "count_mismatch",
        "Node count mismatch",
        "A pipeline run's meta_pipeline_runs row and its RUN span disagree on how many "
        "nodes were planned, ran, were skipped or failed.",
        "Both are written from one plan, so one side was changed or lost part of the run: "
        "compare the pipeline run's meta_runs rows with its node spans.",
        None,
    ),
    KindInfo(
        "missing_terminal_event",
        "Missing terminal event",
        "The lineage has the run's START but no terminal event (COMPLETE, FAIL, ABORT), "
        "while the catalog has closed the run.",
        "The terminal event was lost on its way to the lineage store: check the "
        "OpenLineage sink's errors "
        f'({SELF_METRICS.sink_errors.prometheus}{{sink="openlineage"}}) and dead letter. '
        "A run killed without a sidecar gets its FAIL only from the sidecar's sweeper.",
        None,
    ),
)


#: A discrepancy's JSON: its fields, with the start also as ISO text, in this order.
_DISCREPANCY_JSON: Final = (
    "kind",
    "run_id",
    "pipeline",
    "node",
    "started_at",
    "started_ns",
    "catalog",
    "trace",
    "detail",
    "repair",
)


@dataclass
class Discrepancy:
    """One finding about one run: its kind, both sides as they were read, and a sentence.

    ``catalog`` and ``trace`` are JSON-ready dicts (``None`` for the side that has nothing).
    ``repair`` is filled by :mod:`~odibi_observe.reconcile.repair`: the action, and whether it
    was planned (dry run), applied, failed or impossible.
    """

    kind: str
    run_id: str
    pipeline: str
    node: str
    started_ns: int | None
    catalog: dict[str, Any] | None
    trace: dict[str, Any] | None
    detail: str
    repair: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return as_json(self, _DISCREPANCY_JSON, started_at=iso_ns(self.started_ns))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Discrepancy:
        return cls(
            kind=data["kind"],
            run_id=data["run_id"],
            pipeline=data.get("pipeline") or "",
            node=data.get("node") or "",
            started_ns=data.get("started_ns"),
            catalog=data.get("catalog"),
            trace=data.get("trace"),
            detail=data.get("detail") or "",
            repair=data.get("repair"),
        )

    @classmethod
    def from_json(cls, text: str) -> Discrepancy:
        return cls.from_dict(json.loads(text))

    @property
    def trace_id(self) -> str | None:
        for side in (self.trace, self.catalog):
            if side and side.get("trace_id"):
                return str(side["trace_id"])
        return None


def trace_side(run: TraceRun | tuple[Any, ...]) -> dict[str, Any]:
    """A span's fields as a discrepancy shows them (and as a repair rebuilds the run from)."""
    t = TraceRun._make(run)
    return {
        "status": t.status,
        "rows_processed": t.rows,
        "duration_ms": round((t.end_ns - t.start_ns) / 1e6, 3),
        "started_at": iso_ns(t.start_ns),
        "ended_at": iso_ns(t.end_ns),
        "started_ns": t.start_ns,
        "ended_ns": t.end_ns,
        "trace_id": t.trace_id,
        "span_id": t.span_id,
        "parent_span_id": t.parent_span_id,
        "project": t.project,
        "pipeline": t.pipeline,
        "node": t.node,
        "environment": t.environment,
        "pipeline_run_id": t.pipeline_run_id,
        "attempt": t.attempt,
        "error_type": t.error_type,
        "error_message": t.error_message,
        "suggestions": list(t.suggestions),
        "attributes": json.loads(t.attributes_json) if t.attributes_json else {},
        "host": t.host,
        "pid": t.pid,
        "service_name": t.service_name,
        "origin": t.origin,
    }


def catalog_side(run: CatalogRun | tuple[Any, ...]) -> dict[str, Any]:
    """A catalog row's fields as a discrepancy shows them."""
    c = CatalogRun._make(run)
    return {
        "status": c.status,
        "rows_processed": c.rows,
        "duration_ms": c.duration_ms,
        "started_at": iso_ns(c.started_ns),
        "started_ns": c.started_ns,
        "logged_at": iso_ns(c.window_ns),
        "trace_id": c.trace_id,
        "span_id": c.span_id,
        "pipeline": c.pipeline,
        "node": c.node,
        "heartbeat_at": iso_ns(c.heartbeat_ns),
        "origin": c.origin,
        **({"not_run": c.not_run} if c.not_run else {}),
    }


__all__ = [
    "KINDS",
    "CatalogRun",
    "Discrepancy",
    "KindInfo",
    "ReadError",
    "ReadLog",
    "ReadRange",
    "TraceRun",
    "Window",
    "normalize_status",
]


class PipelineRunSide(NamedTuple):
    """One pipeline run as one side holds it: a ``meta_pipeline_runs`` row, or a
    ``RUN {pipeline}`` span carrying the node counts (``conventions.PIPELINE_COUNTS``).

    ``status`` is a status name (``SUCCESS``, ...; a span's ``cicd.pipeline.result`` read
    back); ``counts`` are in ``PIPELINE_COUNTS`` order, None where a side has none;
    ``origin`` says where it was read (a file and line, a table).
    """

    pipeline_run_id: str
    pipeline: str
    started_ns: int
    status: str
    counts: tuple[int | None, ...]
    origin: str
