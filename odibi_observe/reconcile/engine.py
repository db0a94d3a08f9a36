"""The reconciliation engine: a streaming sort-merge of the catalog and the traces by ``run_id``.

Memory does not grow with the window. The catalog arrives sorted from its database
(``ORDER BY run_id``, streamed) or from the external sort (Odibi's Delta table); trace sources
that cannot sort — files, Tempo — are spilled through the same external sort
(:mod:`~odibi_observe.reconcile.spill`), big inputs read by two processes at once
(:mod:`~odibi_observe.reconcile.parallel`); sorted ones (the ledger) are merged in as they come.
The engine then walks both sorted streams once, like a merge join, holding one ``run_id``'s
rows at a time. Discrepancies are written to a temporary file as they are found (a catalog
pointed at the wrong database would otherwise produce a million of them in memory); only
counts — by kind, by pipeline, by hour — stay in memory.

For each ``run_id`` the engine decides, in this order:

1. Is the run in the window? It is when the catalog places it there, or — when the catalog
   has no row — when its span started there. Both sides are read a margin wider than the
   window so that a run whose two records straddle an edge is still matched.
2. Duplicates: several catalog rows (``duplicate_in_catalog``), several *different* spans
   (``duplicate_in_traces``; the same span delivered twice is one span).
3. One side only: no catalog row is ``missing_in_catalog``; no span is ``missing_in_traces``,
   except for a RUNNING row, which is ``stale_running`` once its last sign of life (start or
   heartbeat) is older than the crash threshold and simply in flight before that; and except
   for runs in a time range a trace source reported it could not read (counted as unchecked),
   and except for rows Odibi logged for nodes it did not execute (dry runs, skipped nodes:
   counted in ``not_run``).
4. Both sides: status, rows and duration (within tolerance: 1 % or 5 ms, whichever is larger,
   by default) are compared; each difference is one discrepancy of its kind. A trace side
   that holds the run's start but not its end (``RUNNING``: lineage with a ``START`` and no
   terminal event) is ``missing_terminal_event`` when the catalog closed the run, and judged
   like a catalog-only ``RUNNING`` row (in flight, or ``stale_running``) when it did not.

Spans and lineage (a source's ``holds``) are reconciled separately, never merged into one
trace side: the same run in both would count once and hide what one of them lacks.
"""

from __future__ import annotations

import heapq
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import chain
from operator import itemgetter
from typing import IO, Any, Final

from odibi_observe.conventions import DISCREPANCY_KINDS, RunStatus
from odibi_observe.reconcile.model import (
    C_DURATION,
    C_EXACT,
    C_HEARTBEAT,
    C_NODE,
    C_NOT_RUN,
    C_PIPELINE,
    C_ROWS,
    C_SPAN_ID,
    C_STARTED,
    C_STATUS,
    C_UNCHECKED,
    C_WINDOW,
    EXACT_MARGIN,
    FUTURE_SKEW_NS,
    T_END,
    T_NODE,
    T_ORIGIN,
    T_PIPELINE,
    T_ROWS,
    T_SPAN_ID,
    T_START,
    T_STATUS,
    T_TRACE_ID,
    T_UNCHECKED,
    Discrepancy,
    ReadError,
    ReadLog,
    ReadRange,
    Window,
    catalog_side,
    iso_ns,
    trace_side,
)
from odibi_observe.reconcile.parallel import read_in_parallel, sort_sources
from odibi_observe.reconcile.phases import phase_findings
from odibi_observe.reconcile.pipelines import compare_pipeline_runs
from odibi_observe.reconcile.sources import CatalogSource, SourceError, TraceSource
from odibi_observe.reconcile.spill import DEFAULT_CHUNK, ExternalSorter

_RUNNING: Final = RunStatus.RUNNING.value
_SKIPPED: Final = RunStatus.SKIPPED.value
_CRASHED: Final = RunStatus.CRASHED.value
_HOUR_NS: Final = 3_600 * 1_000_000_000
_DAY_NS: Final = 24 * _HOUR_NS
_key = itemgetter(0)


class ReconcileError(Exception):
    """Reconciliation could not run: the catalog, or every trace source, is unreadable."""


@dataclass(frozen=True)
class ReconcileOptions:
    """How runs are judged. The defaults are what ``odibi-observe reconcile`` uses."""

    #: A RUNNING catalog row with no span is ``stale_running`` once its last sign of life
    #: (start or heartbeat) is older than this.
    crash_after: timedelta = timedelta(minutes=15)
    #: Durations agree within this share of the span's duration ...
    duration_tolerance_ratio: float = 0.01
    #: ... or within this many milliseconds, whichever is larger.
    duration_tolerance_ms: float = 5.0
    #: Directory for spill files (default: the system's temporary directory).
    spill_dir: str | None = None
    #: Spans held in memory before a sorted run is spilled (per process).
    chunk_size: int = DEFAULT_CHUNK
    #: Processes that read trace files at once (0: one per core, at most two); see
    #: :mod:`~odibi_observe.reconcile.parallel`.
    workers: int = 0
    #: Input (bytes of trace files) below which a second process is not worth starting.
    parallel_min_bytes: int = 32 * 2**20
    #: ``progress(phase, done, total)`` while reading and merging (the CLI's progress bar).
    progress: Callable[[str, int, int | None], None] | None = None


@dataclass(slots=True)
class PipelineStats:
    """Per-pipeline counts: how complete the catalog is for each pipeline."""

    trace_runs: int = 0
    catalog_runs: int = 0
    matched: int = 0
    discrepancies: int = 0

    @property
    def completeness(self) -> float:
        return 1.0 if not self.trace_runs else self.matched / self.trace_runs


@dataclass
class ReconcileResult:
    """What a reconciliation found. Discrepancies live in a temporary file: iterate them with
    :meth:`discrepancies`; :meth:`close` (or ``with``) removes it."""

    report_id: str
    window: Window
    catalog_source: str
    trace_sources: list[str]
    options: ReconcileOptions
    catalog_runs: int = 0
    trace_runs: int = 0
    matched: int = 0
    #: What the trace sources hold: ``spans``, or ``lineage`` (OpenLineage run events).
    traces_hold: str = "spans"
    in_flight: int = 0
    unchecked: int = 0
    outside_window: int = 0
    #: Runs that started after the window's end because of the grace period (too recent: in
    #: flight, or spans still on their way): left for the next reconciliation.
    deferred: int = 0
    #: Odibi rows of nodes that did not execute, by reason (``dry_run``, ``skipped``).
    not_run: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    pipelines: dict[str, PipelineStats] = field(default_factory=dict)
    timeline: Counter[tuple[int, str]] = field(default_factory=Counter)
    bucket_ns: int = _HOUR_NS
    errors: list[ReadError] = field(default_factory=list)
    errors_total: int = 0
    ignored_spans: int = 0
    unreadable: list[str] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    seconds: float = 0.0
    repair: dict[str, Any] = field(default_factory=dict)
    _items: IO[str] | None = None

    @property
    def discrepancies_total(self) -> int:
        return sum(self.by_kind.values())

    @property
    def completeness(self) -> float:
        """Share of traced runs the catalog holds (1.0 when nothing was traced)."""
        return 1.0 if not self.trace_runs else self.matched / self.trace_runs

    @property
    def checked(self) -> int:
        """Runs judged in the window: on either side, a run found on both counted once."""
        return self.catalog_runs + self.trace_runs - self.matched

    @property
    def clean(self) -> bool:
        return not self.discrepancies_total and not self.errors_total

    def discrepancies(self) -> Iterator[Discrepancy]:
        """Every discrepancy, in ``run_id`` order."""
        if self._items is None:
            return
        self._items.seek(0)
        for line in self._items:
            yield Discrepancy.from_json(line)

    def add(self, item: Discrepancy) -> None:
        """Record one more discrepancy, judged outside the merge (the phases of a run)."""
        self.by_kind[item.kind] += 1
        self.pipelines.setdefault(item.pipeline, PipelineStats()).discrepancies += 1
        if item.started_ns is not None:
            self.timeline[(item.started_ns - item.started_ns % self.bucket_ns, item.kind)] += 1
        if self._items is None:
            self._items = _items_file(self.options.spill_dir)
        self._items.write(item.to_json() + "\n")
        self._items.flush()

    def replace_discrepancies(self, items: Iterable[Discrepancy]) -> None:
        """Swap in ``items`` (the repaired annotations of the same discrepancies)."""
        new = _items_file(self.options.spill_dir)
        for item in items:
            new.write(item.to_json() + "\n")
        new.flush()
        if self._items is not None:
            self._items.close()
        self._items = new

    def summary(self) -> dict[str, Any]:
        return {
            "catalog_runs": self.catalog_runs,
            "trace_runs": self.trace_runs,
            "matched": self.matched,
            "completeness_ratio": round(self.completeness, 6),
            "discrepancies": {kind: self.by_kind.get(kind, 0) for kind in DISCREPANCY_KINDS},
            "discrepancies_total": self.discrepancies_total,
            "runs_checked": self.checked,
            "deferred": self.deferred,
            "deferred_reason": (
                f"started within the grace period "
                f"({self.window.grace.total_seconds():g} s) before "
                f"{iso_ns(self.window.now_ns)}: too recent, left for the "
                "next reconciliation"
            )
            if self.deferred
            else None,
            "not_run": dict(self.not_run),
            "in_flight": self.in_flight,
            "unchecked": self.unchecked,
            "ignored_spans": self.ignored_spans,
            "errors": self.errors_total,
        }

    def close(self) -> None:
        if self._items is not None:
            self._items.close()
            self._items = None

    def __enter__(self) -> ReconcileResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _items_file(directory: str | None) -> IO[str]:
    return tempfile.TemporaryFile(
        mode="w+", encoding="utf-8", prefix="odibi-reconcile-items-", dir=directory
    )


def reconcile(
    catalog: CatalogSource,
    traces: Sequence[TraceSource],
    window: Window,
    options: ReconcileOptions | None = None,
) -> ReconcileResult:
    """Compare ``catalog`` with ``traces`` over ``window``; see the module docstring.

    Raises :class:`ReconcileError` when the catalog or every trace source cannot be read at
    all. Anything less — bad lines, failed requests, one unreadable source of several — is in
    the result's ``errors`` and the rest is still reconciled.
    """
    options = options or ReconcileOptions()
    clock = time.perf_counter()
    holds = {source.holds for source in traces}
    if len(holds) > 1:
        raise ReconcileError(
            "spans and lineage are reconciled separately (one --traces kind per run): "
            + ", ".join(f"{t.describe()} holds {t.holds}" for t in traces)
        )
    result = ReconcileResult(
        report_id=f"{window.now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        window=window,
        catalog_source=catalog.describe(),
        trace_sources=[t.describe() for t in traces],
        options=options,
        traces_hold=holds.pop() if holds else "spans",
        bucket_ns=_HOUR_NS if window.end - window.since <= timedelta(days=3) else _DAY_NS,
    )
    log = ReadLog(progress=options.progress)
    try:
        margin = max(catalog.margin(), EXACT_MARGIN)
    except SourceError as exc:
        raise ReconcileError(str(exc)) from None
    # Read up to now (not only to the window's end) so that the runs the grace period leaves
    # for the next reconciliation are counted, and the report can say why it checked fewer.
    read_range = ReadRange(
        window.since_ns - _ns(margin),
        max(window.end_ns + _ns(margin), _deferred_end(window)),
        window.now_ns,
    )

    sorter = ExternalSorter(chunk_size=options.chunk_size, directory=options.spill_dir)
    streams: list[Iterator[tuple[Any, ...]]] = []
    workdir: tempfile.TemporaryDirectory[str] | None = None
    try:
        parts: list[TraceSource] = []
        workers = options.workers or min(2, os.cpu_count() or 1)
        for source in traces:
            try:
                if source.sorted_by_run_id:
                    streams.append(_primed(source.read(read_range, log)))
                else:
                    parts.extend(
                        source.split(workers, read_range, min_bytes=options.parallel_min_bytes)
                    )
            except SourceError as exc:
                result.unreadable.append(str(exc))
                log.add_error(source.describe(), "source", str(exc))
        if workers > 1 and len(parts) > 1:
            workdir = tempfile.TemporaryDirectory(prefix="odibi-reconcile-", dir=options.spill_dir)
            groups = [parts[i::workers] for i in range(workers) if parts[i::workers]]
            for part in read_in_parallel(
                groups,
                read_range,
                chunk_size=options.chunk_size,
                directory=workdir.name,
                log=log,
                unreadable=result.unreadable,
            ):
                sorter.adopt(part.paths, part.count)
        else:
            sort_sources(sorter, parts, read_range, log, result.unreadable)
        if len(result.unreadable) == len(traces):
            raise ReconcileError("no trace source could be read: " + "; ".join(result.unreadable))
        streams.insert(0, sorter.sorted())
        trace_stream = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=_key)
        try:
            catalog_stream = _primed(catalog.read(read_range, log))
            result._items = _items_file(options.spill_dir)
            merger = _Merger(result, log, options, records_skipped=catalog.holds_plans())
            merger.run(catalog_stream, trace_stream)
            if merger.skipped_spans:
                log.add_note(
                    result.catalog_source,
                    f"{merger.skipped_spans:,} SKIPPED runs (planned nodes that never started) "
                    "have a span only: this catalog records no skipped runs",
                )
            stale_before = window.now_ns - _ns(options.crash_after)
            _add_pipeline_runs(result, catalog, traces, read_range, log, stale_before=stale_before)
            for item in phase_findings(catalog, window, read_range, log, stale_before):
                result.add(item)
        except SourceError as exc:  # a source that failed only once the merge was under way
            raise ReconcileError(str(exc)) from None
    except BaseException:
        result.close()
        raise
    finally:
        sorter.close()
        if workdir is not None:
            workdir.cleanup()
    result.errors = log.errors
    result.errors_total = log.errors_total
    result.notes = log.notes
    result.ignored_spans = log.ignored_spans
    result.seconds = time.perf_counter() - clock
    return result


def _add_pipeline_runs(
    result: ReconcileResult,
    catalog: CatalogSource,
    traces: Sequence[TraceSource],
    read_range: ReadRange,
    log: ReadLog,
    *,
    stale_before: int,
) -> None:
    """Reconcile the pipeline runs too (:mod:`~odibi_observe.reconcile.pipelines`): their
    discrepancies join the node runs' under the same kinds, counted and listed alike."""
    found = compare_pipeline_runs(
        catalog, traces, read_range, result.window, log, stale_before_ns=stale_before
    )
    if found is None:
        return
    assert result._items is not None
    for item in found:
        result.by_kind[item.kind] += 1
        if item.started_ns is not None:
            bucket = item.started_ns - item.started_ns % result.bucket_ns
            result.timeline[(bucket, item.kind)] += 1
        result._items.write(item.to_json() + "\n")


def _deferred_end(window: Window) -> int:
    """Where the runs deferred by the grace period end: ``until``, or now (plus the clock skew
    tolerated) when ``until`` is later. Equal to the window's end when no grace cut it."""
    return max(window.end_ns, min(window.until_ns, window.now_ns + FUTURE_SKEW_NS))


def _ns(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1_000_000_000)


def _primed(stream: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    """Start ``stream`` now, so that a source that cannot be read at all says so before the
    merge begins (generators do nothing until first asked). ``chain`` keeps the rest of the
    stream as cheap to iterate as it was: this is on the path of every run."""
    first = next(stream, None)
    return iter(()) if first is None else chain((first,), stream)


class _Merger:
    """The merge join over the two sorted streams (see the module docstring)."""

    def __init__(
        self,
        result: ReconcileResult,
        log: ReadLog,
        options: ReconcileOptions,
        *,
        records_skipped: bool = True,
    ) -> None:
        self.result = result
        # False for a catalog that never holds a SKIPPED run (Odibi's own): their spans
        # alone are then expected, counted as not run rather than missing.
        self.records_skipped = records_skipped
        self.skipped_spans = 0
        self.log = log
        self.options = options
        window = result.window
        self.since = window.since_ns
        self.end = window.end_ns
        self.deferred_end = _deferred_end(window)
        self.stale_before = window.now_ns - _ns(options.crash_after)
        self.ratio = options.duration_tolerance_ratio
        self.slack_ms = options.duration_tolerance_ms
        assert result._items is not None
        self.write = result._items.write
        #: What the trace side is called in details: "span", or "lineage" for lineage runs.
        self.noun = "lineage" if result.traces_hold == "lineage" else "span"
        # The run being judged, for the methods that record its discrepancies.
        self.run_id = self.pipeline = self.node = ""
        self.stats = PipelineStats()

    def run(self, cats: Iterator[tuple[Any, ...]], trs: Iterator[tuple[Any, ...]]) -> None:
        """Walk both streams once. Most runs are one row and one span that agree; they are
        settled inline, without building groups or calling :meth:`judge`."""
        c = next(cats, None)
        t = next(trs, None)
        since, end = self.since, self.end
        slack, ratio = self.slack_ms, self.ratio
        pipelines = self.result.pipelines
        tick = self.log.tick
        judge = self.judge
        merged = agreed = 0
        while c is not None or t is not None:
            merged += 1
            if merged % 100_000 == 0:
                tick("reconciling", merged, None)
            if c is not None and t is not None and c[0] == t[0]:
                key = c[0]
                c2 = next(cats, None)
                t2 = next(trs, None)
                if (c2 is None or c2[0] > key) and (t2 is None or t2[0] > key):
                    expected = c[C_DURATION]
                    if (
                        expected is not None
                        and since <= c[C_WINDOW] < end
                        and c[C_STATUS] == t[T_STATUS]
                        and c[C_ROWS] == t[T_ROWS]
                    ):
                        actual = (t[T_END] - t[T_START]) / 1e6
                        if abs(actual - expected) <= max(slack, ratio * actual):
                            stats = pipelines.get(t[T_PIPELINE])
                            if stats is None:
                                stats = pipelines[t[T_PIPELINE]] = PipelineStats()
                            stats.trace_runs += 1
                            stats.catalog_runs += 1
                            stats.matched += 1
                            agreed += 1
                            c, t = c2, t2
                            continue
                    judge(key, [c], [t])
                    c, t = c2, t2
                    continue
                cgroup, tgroup = [c], [t]
                c, t = c2, t2
            else:
                key = c[0] if t is None or (c is not None and c[0] <= t[0]) else t[0]  # type: ignore[index]
                cgroup, tgroup = [], []
            while c is not None and c[0] == key:
                cgroup.append(c)
                c = next(cats, None)
            while t is not None and t[0] == key:
                tgroup.append(t)
                t = next(trs, None)
            if (c is not None and c[0] < key) or (t is not None and t[0] < key):
                side = "catalog" if c is not None and c[0] < key else "traces"
                raise ReconcileError(
                    f"the {side} stream is not sorted by run_id ({key!r} came before "
                    f"{(c if side == 'catalog' else t)[0]!r}): a database collation other "  # type: ignore[index]
                    "than byte order?"
                )
            judge(key, cgroup, tgroup)
        result = self.result
        result.trace_runs += agreed
        result.catalog_runs += agreed
        result.matched += agreed
        result._items.flush()  # type: ignore[union-attr]

    # -- one run ----------------------------------------------------------------------------

    def judge(self, run_id: str, cats: list[tuple[Any, ...]], trs: list[tuple[Any, ...]]) -> None:
        result = self.result
        if len(trs) > 1:
            trs = _distinct_spans(trs)
        cat = cats[0] if cats else None
        tr = trs[0] if trs else None
        if cat is not None and len(cats) > 1:
            cat = max(cats, key=itemgetter(C_WINDOW))
        if tr is not None and cat is not None and len(trs) > 1:
            # Compare with the span the catalog row points at, if it is one of them.
            tr = next((s for s in trs if s[T_SPAN_ID] == cat[C_SPAN_ID]), tr)
        if not (
            (cat is not None and self.since <= cat[C_WINDOW] < self.end)
            or (tr is not None and self.since <= tr[T_START] < self.end)
        ):
            end, later = self.end, self.deferred_end
            if (cat is not None and end <= cat[C_WINDOW] < later) or (
                tr is not None and end <= tr[T_START] < later
            ):
                result.deferred += 1
            else:
                result.outside_window += 1
            return
        if cat is None and not self.records_skipped and tr is not None and tr[T_STATUS] == _SKIPPED:
            self.skipped_spans += 1
            return
        if tr is not None:
            pipeline, node = tr[T_PIPELINE], tr[T_NODE]
        else:
            assert cat is not None
            pipeline, node = cat[C_PIPELINE], cat[C_NODE]
        stats = result.pipelines.get(pipeline)
        if stats is None:
            stats = result.pipelines[pipeline] = PipelineStats()
        self.run_id, self.pipeline, self.node, self.stats = run_id, pipeline, node, stats
        if tr is not None:
            result.trace_runs += 1
            stats.trace_runs += 1
        if cat is not None:
            result.catalog_runs += 1
            stats.catalog_runs += 1

        if cat is not None and tr is not None:
            result.matched += 1
            stats.matched += 1
            if tr[T_STATUS] == _RUNNING and cat[C_STATUS] == _RUNNING:
                self._catalog_only(cat, cats)  # neither side has the end: alive or stale?
                return
            if len(cats) == 1 and len(trs) == 1:
                rows_equal = cat[C_ROWS] == tr[T_ROWS] or (cat[C_ROWS] is None and not cat[C_EXACT])
                if cat[C_STATUS] == tr[T_STATUS] and rows_equal and self._durations_agree(cat, tr):
                    return  # the common case: both sides agree
            self._compare(cat, tr, cats, trs)
        elif cat is not None:
            self._catalog_only(cat, cats)
        else:
            assert tr is not None
            self._found(
                "missing_in_catalog",
                tr[T_START],
                None,
                tr,
                f"{self.noun} in {tr[T_ORIGIN]} has no meta_runs row",
            )
            if len(trs) > 1:
                self._duplicate_spans(None, trs)

    def _durations_agree(self, cat: tuple[Any, ...], tr: tuple[Any, ...]) -> bool:
        expected: int | None = cat[C_DURATION]
        if expected is None:
            return bool(not cat[C_EXACT] or cat[C_STATUS] == _RUNNING)
        actual: float = (tr[T_END] - tr[T_START]) / 1e6
        allowed: float = max(self.slack_ms, self.ratio * actual)
        return abs(actual - expected) <= allowed

    def _compare(
        self,
        cat: tuple[Any, ...],
        tr: tuple[Any, ...],
        cats: list[tuple[Any, ...]],
        trs: list[tuple[Any, ...]],
    ) -> None:
        if len(cats) > 1:
            self._found(
                "duplicate_in_catalog",
                tr[T_START],
                cat,
                tr,
                f"{len(cats)} meta_runs rows have this run_id",
                cats=cats,
            )
        if len(trs) > 1:
            self._duplicate_spans(cat, trs)
        unchecked = f"{cat[C_UNCHECKED]},{tr[T_UNCHECKED]}"
        start = tr[T_START]
        if tr[T_STATUS] == _RUNNING and "status" not in unchecked:
            self._found(
                "missing_terminal_event",
                start,
                cat,
                tr,
                f"catalog says {cat[C_STATUS] or '(none)'}, {tr[T_ORIGIN]} has the run's start "
                "and no terminal event",
            )
            return  # rows and duration are unknown on the trace side
        if cat[C_STATUS] != tr[T_STATUS] and "status" not in unchecked:
            if cat[C_STATUS] == _RUNNING:
                detail = (
                    f"catalog still says RUNNING, the {self.noun} says {tr[T_STATUS]}: the "
                    "terminal catalog write was lost"
                )
            else:
                said = cat[C_STATUS] or "(none)"
                detail = f"catalog says {said}, {self.noun} says {tr[T_STATUS]}"
            self._found("status_mismatch", start, cat, tr, detail)
        if (
            cat[C_ROWS] != tr[T_ROWS]
            and "rows" not in unchecked
            and (cat[C_EXACT] or cat[C_ROWS] is not None)
            and cat[C_STATUS] != _RUNNING
        ):
            self._found(
                "rows_mismatch",
                start,
                cat,
                tr,
                f"catalog has {_n(cat[C_ROWS])} rows, span has {_n(tr[T_ROWS])}",
            )
        if (
            "duration" not in unchecked
            and cat[C_STATUS] != _RUNNING
            and not self._durations_agree(cat, tr)
        ):
            actual = (tr[T_END] - tr[T_START]) / 1e6
            self._found(
                "duration_mismatch",
                start,
                cat,
                tr,
                f"catalog has {_n(cat[C_DURATION])} ms, span lasted {actual:,.1f} ms "
                f"(tolerance {self.options.duration_tolerance_ratio:.0%} or "
                f"{self.options.duration_tolerance_ms:g} ms)",
            )

    def _catalog_only(self, cat: tuple[Any, ...], cats: list[tuple[Any, ...]]) -> None:
        result = self.result
        when = cat[C_STARTED] if cat[C_STARTED] is not None else cat[C_WINDOW]
        if len(cats) > 1:
            self._found(
                "duplicate_in_catalog",
                when,
                cat,
                None,
                f"{len(cats)} meta_runs rows have this run_id",
                cats=cats,
            )
        if cat[C_NOT_RUN]:  # Odibi logged a node it did not execute: no span to expect
            result.not_run[cat[C_NOT_RUN]] += 1
            return
        if cat[C_STATUS] == _RUNNING:
            alive = max(when, cat[C_HEARTBEAT] or 0)
            if alive >= self.stale_before:
                result.in_flight += 1
                return
            self._found(
                "stale_running",
                when,
                cat,
                None,
                f"RUNNING with no sign of life since {iso_ns(alive)} and no span: "
                "the process died without closing the run",
            )
            return
        if self.log.gaps and self.log.in_gap(when):
            result.unchecked += 1
            return
        self._found(
            "missing_in_traces",
            when,
            cat,
            None,
            f"{cat[C_STATUS] or 'a'} run in meta_runs has no {self.noun}",
        )

    def _duplicate_spans(self, cat: tuple[Any, ...] | None, trs: list[tuple[Any, ...]]) -> None:
        ids = ", ".join(f"{s[T_TRACE_ID]}/{s[T_SPAN_ID]} ({s[T_ORIGIN]})" for s in trs)
        self._found(
            "duplicate_in_traces",
            trs[0][T_START],
            cat,
            trs[0],
            f"{len(trs)} different spans carry this run_id: {ids}",
            trs=trs,
        )

    def _found(
        self,
        kind: str,
        started: int | None,
        cat: tuple[Any, ...] | None,
        tr: tuple[Any, ...] | None,
        detail: str,
        *,
        cats: list[tuple[Any, ...]] | None = None,
        trs: list[tuple[Any, ...]] | None = None,
    ) -> None:
        """Record one discrepancy of the run being judged (``self.run_id``)."""
        result = self.result
        result.by_kind[kind] += 1
        self.stats.discrepancies += 1
        if started is not None:
            result.timeline[(started - started % result.bucket_ns, kind)] += 1
        catalog = catalog_side(cat) if cat is not None else None
        trace = trace_side(tr) if tr is not None else None
        if catalog is not None and cats is not None and len(cats) > 1:
            catalog["duplicates"] = [catalog_side(c) for c in cats]
        if trace is not None and trs is not None and len(trs) > 1 and kind.startswith("dup"):
            trace["duplicates"] = [
                {"trace_id": s[T_TRACE_ID], "span_id": s[T_SPAN_ID], "origin": s[T_ORIGIN]}
                for s in trs
            ]
        self.write(
            Discrepancy(
                kind, self.run_id, self.pipeline, self.node, started, catalog, trace, detail
            ).to_json()
            + "\n"
        )


def _distinct_spans(spans: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The different spans among ``spans``: one per (trace id, span id), preferring a terminal
    status, then a real ending over CRASHED (a run the sweeper judged dead by its heartbeats
    that then really ended: the later truth wins), then the latest end."""
    best: dict[tuple[str, str], tuple[Any, ...]] = {}
    for span in spans:
        ids = (span[T_TRACE_ID], span[T_SPAN_ID])
        current = best.get(ids)
        if current is None or _rank(span) > _rank(current):
            best[ids] = span
    return list(best.values())


def _rank(span: tuple[Any, ...]) -> tuple[bool, bool, int]:
    return span[T_STATUS] != _RUNNING, span[T_STATUS] != _CRASHED, span[T_END]


def _n(value: Any) -> str:
    return "no" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
