"""What the status page shows, read from the catalog alone (no Prometheus, no Grafana).

The panels are the overview dashboard's (:func:`odibi_observe.grafana.dashboards.pipeline_overview`)
computed from ``meta_runs`` instead of from Prometheus: runs by status over time, the success
rate, the slowest nodes, the recent failures with their suggestions, what is running now and
the crashed runs; and, where the catalog has their tables, the completeness the last
reconciliation recorded (``meta_reconciliation``, migration 0002) and the open data-health
findings (``meta_health_findings``, migration 0003). A table that is not there is a note on
the page, never an error: an Odibi-created catalog that was never upgraded still gets a page.

Reading is portable SQLAlchemy Core (SQLite and PostgreSQL alike) and only reads: the engine
comes from :func:`odibi_observe.catalog.readonly.open_readonly_engine`. The window's runs are
streamed once (``yield_per``) for the counts and the per-node durations; exact quantiles need
each node's durations, so memory is one float per finished run of the window (a day of a
million runs is tens of MB), and the lists are read with ``LIMIT``.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from odibi_observe.catalog import schema
from odibi_observe.catalog.schema import (
    DURATION_MS,
    NODE,
    PIPELINE,
    RUN_ID,
    STARTED_AT,
    STATUS,
    TRACE_ID,
    row_to_record,
    utc,
)
from odibi_observe.conventions import (
    CATALOG_TABLE,
    DISCREPANCY_KINDS,
    HEALTH_FINDINGS_TABLE,
    RECONCILIATION_TABLE,
    STATUS_PAGE_ROWS,
    STATUS_PAGE_SLOWEST,
    RunStatus,
)
from odibi_observe.reconcile.report import reconciliation_row
from odibi_observe.record import RunRecord

#: The bucket sizes of "runs by status over time": the smallest that gives at most
#: :data:`MAX_BUCKETS` bars for the window.
BUCKET_STEPS: Final = tuple(
    timedelta(minutes=m) for m in (1, 5, 15, 30, 60, 180, 360, 720, 1_440, 10_080)
)
MAX_BUCKETS: Final = 36

#: The order statuses are stacked and listed in (the dashboard's legend order).
STATUS_ORDER: Final = (
    RunStatus.SUCCESS,
    RunStatus.FAILURE,
    RunStatus.CRASHED,
    RunStatus.CANCELLED,
    RunStatus.SKIPPED,
    RunStatus.RUNNING,
)
#: The runs the success rate is taken over and the slowest nodes are timed on: not
#: ``SKIPPED`` (a node that never started has neither an outcome nor a duration of its own).
FINISHED: Final = frozenset(
    {
        RunStatus.SUCCESS.value,
        RunStatus.FAILURE.value,
        RunStatus.CRASHED.value,
        RunStatus.CANCELLED.value,
    }
)
#: A finding's state while passes keep seeing it (see :mod:`odibi_observe.health.store`).
OPEN_STATE: Final = "open"


class StatusPageError(Exception):
    """The catalog cannot give a status page (no meta_runs, or not at the current schema)."""


@dataclass(frozen=True)
class Bucket:
    """Runs that started in ``[start, start + step)``, by status."""

    start: datetime
    counts: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class NodeTiming:
    """One row of "slowest nodes": exact quantiles of the node's finished runs."""

    pipeline: str
    node: str
    runs: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    slowest_run_id: str
    trace_id: str | None


@dataclass(frozen=True)
class Completeness:
    """A reconciliation's verdict: recorded (the last row of meta_reconciliation) or live."""

    live: bool
    created_at: datetime
    window_start: datetime
    window_end: datetime
    catalog_runs: int
    trace_runs: int
    matched: int
    discrepancies: int
    ratio: float | None
    by_kind: Mapping[str, int]
    report_id: str
    errors: int = 0


@dataclass(frozen=True)
class OpenFinding:
    """An open row of meta_health_findings."""

    kind: str
    pipeline: str
    node: str
    opened_at: datetime
    last_seen_at: datetime
    passes: int
    score: float | None
    detail: str


@dataclass
class StatusPage:
    """Everything the page shows; :func:`odibi_observe.statuspage.html.render_html` draws it."""

    catalog: str
    since: datetime
    until: datetime
    generated_at: datetime
    step: timedelta
    buckets: list[Bucket] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)
    slowest: list[NodeTiming] = field(default_factory=list)
    failures: list[RunRecord] = field(default_factory=list)
    failures_total: int = 0
    running: list[RunRecord] = field(default_factory=list)
    running_total: int = 0
    crashed: list[RunRecord] = field(default_factory=list)
    crashed_total: int = 0
    completeness: Completeness | None = None
    #: None: the catalog has no meta_health_findings table (the page says so).
    findings: list[OpenFinding] | None = None
    findings_total: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return sum(n for status, n in self.totals.items() if status in FINISHED)

    @property
    def success_rate(self) -> float | None:
        """SUCCESS / finished runs of the window, as the dashboard's "Success rate"."""
        finished = self.finished
        return self.totals.get(RunStatus.SUCCESS.value, 0) / finished if finished else None


def bucket_step(since: datetime, until: datetime) -> timedelta:
    """The smallest of :data:`BUCKET_STEPS` that draws the window in at most MAX_BUCKETS bars."""
    span = until - since
    for step in BUCKET_STEPS:
        if span / step <= MAX_BUCKETS:
            return step
    return BUCKET_STEPS[-1]


def collect(
    engine: Engine, since: datetime, until: datetime, *, catalog: str, now: datetime | None = None
) -> StatusPage:
    """Read the status page of runs that started in ``[since, until)`` from ``engine``.

    Raises :class:`StatusPageError` when the catalog has no usable ``meta_runs``;
    :class:`sqlalchemy.exc.SQLAlchemyError` when reading fails.
    """
    since, until = utc(since), utc(until)
    now = utc(now or datetime.now(timezone.utc))
    tables = set(sa.inspect(engine).get_table_names())
    _check_meta_runs(engine, tables)
    page = StatusPage(
        catalog=catalog, since=since, until=until, generated_at=now, step=bucket_step(since, until)
    )
    with engine.connect() as conn:
        _scan_window(conn, page)
        _lists(conn, page)
        if RECONCILIATION_TABLE in tables:
            page.completeness = _last_reconciliation(conn)
            if page.completeness is None:
                page.notes.append(
                    f"{RECONCILIATION_TABLE} is empty: no reconciliation "
                    "recorded yet (odibi-observe reconcile records one)"
                )
        else:
            page.notes.append(
                f"no {RECONCILIATION_TABLE} table: completeness is shown once "
                "'odibi-observe catalog upgrade' created it and a reconcile ran"
            )
        if HEALTH_FINDINGS_TABLE in tables:
            page.findings, page.findings_total = _open_findings(conn)
        else:
            page.notes.append(
                f"no {HEALTH_FINDINGS_TABLE} table: health findings are shown "
                "once 'odibi-observe catalog upgrade' created it and a health "
                "pass ran"
            )
    return page


def _check_meta_runs(engine: Engine, tables: set[str]) -> None:
    if CATALOG_TABLE not in tables:
        raise StatusPageError(
            f"it has no {CATALOG_TABLE} table (not a run catalog, or nothing recorded yet)"
        )
    present = {c["name"] for c in sa.inspect(engine).get_columns(CATALOG_TABLE)}
    missing = [name for name in schema.COLUMNS if name not in present]
    if missing:
        raise StatusPageError(
            f"its {CATALOG_TABLE} lacks the columns {', '.join(missing[:5])}"
            f"{' and more' if len(missing) > 5 else ''} (an Odibi-created table): bring it to "
            "odibi-observe's schema once with 'odibi-observe catalog upgrade'"
        )


def _in_window(page: StatusPage) -> sa.ColumnElement[bool]:
    started = schema.meta_runs.c[STARTED_AT]
    return sa.and_(started >= page.since, started < page.until)


def _scan_window(conn: sa.Connection, page: StatusPage) -> None:
    """One pass over the window's runs: bars, totals and each node's durations."""
    c = schema.meta_runs.c
    query = sa.select(
        c[STARTED_AT], c[STATUS], c[PIPELINE], c[NODE], c[DURATION_MS], c[RUN_ID], c[TRACE_ID]
    ).where(_in_window(page))
    step_s = page.step.total_seconds()
    origin = page.since.timestamp() - page.since.timestamp() % step_s
    slots = max(1, math.ceil((page.until.timestamp() - origin) / step_s))
    counts: list[Counter[str]] = [Counter() for _ in range(slots)]
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    slowest: dict[tuple[str, str], tuple[float, str, str | None]] = {}
    result = conn.execution_options(yield_per=10_000).execute(query)
    for started, raw_status, pipeline, node, duration, run_id, trace_id in result:
        status = str(raw_status)
        slot = int((utc(started).timestamp() - origin) // step_s)
        counts[min(max(slot, 0), slots - 1)][status] += 1
        page.totals[status] += 1
        if status in FINISHED and duration is not None:
            key = (str(pipeline or ""), str(node or ""))
            ms = float(duration)
            durations[key].append(ms)
            best = slowest.get(key)
            if best is None or (ms, str(run_id)) > best[:2]:
                slowest[key] = (ms, str(run_id), trace_id)
    page.buckets = [
        Bucket(datetime.fromtimestamp(origin + i * step_s, tz=timezone.utc), dict(n))
        for i, n in enumerate(counts)
    ]
    timings = []
    for key, values in durations.items():
        values.sort()
        ms, run_id, trace_id = slowest[key]
        timings.append(
            NodeTiming(
                key[0],
                key[1],
                len(values),
                _quantile(values, 0.5),
                _quantile(values, 0.95),
                values[-1],
                run_id,
                trace_id,
            )
        )
    timings.sort(key=lambda t: (-t.p95_ms, -t.max_ms, t.pipeline, t.node))
    page.slowest = timings[:STATUS_PAGE_SLOWEST]


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (PostgreSQL's ``percentile_cont``)."""
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _runs(
    conn: sa.Connection,
    where: sa.ColumnElement[bool],
    *,
    newest_first: bool = True,
) -> tuple[list[RunRecord], int]:
    c = schema.meta_runs.c
    order = (c[STARTED_AT].desc(), c[RUN_ID].desc()) if newest_first else (c[STARTED_AT], c[RUN_ID])
    rows = (
        conn.execute(
            sa.select(schema.meta_runs).where(where).order_by(*order).limit(STATUS_PAGE_ROWS)
        )
        .mappings()
        .all()
    )
    total = conn.execute(
        sa.select(sa.func.count()).select_from(schema.meta_runs).where(where)
    ).scalar_one()
    return [row_to_record(row) for row in rows], int(total)


def _lists(conn: sa.Connection, page: StatusPage) -> None:
    status = schema.meta_runs.c[STATUS]
    failed = [RunStatus.FAILURE.value, RunStatus.CRASHED.value]
    page.failures, page.failures_total = _runs(conn, sa.and_(status.in_(failed), _in_window(page)))
    page.crashed, page.crashed_total = _runs(
        conn, sa.and_(status == RunStatus.CRASHED.value, _in_window(page))
    )
    # Running now is not windowed: a run left RUNNING a week ago is exactly what to see.
    page.running, page.running_total = _runs(
        conn, status == RunStatus.RUNNING.value, newest_first=False
    )


def _last_reconciliation(conn: sa.Connection) -> Completeness | None:
    t = schema.reconciliation.c
    row = (
        conn.execute(sa.select(schema.reconciliation).order_by(t.created_at.desc()).limit(1))
        .mappings()
        .first()
    )
    return None if row is None else _completeness(row, live=False)


def _completeness(row: Mapping[Any, Any], *, live: bool) -> Completeness:
    """The :class:`Completeness` of a ``meta_reconciliation`` row."""
    return Completeness(
        live=live,
        created_at=utc(row["created_at"]),
        window_start=utc(row["window_start"]),
        window_end=utc(row["window_end"]),
        catalog_runs=int(row["catalog_runs"]),
        trace_runs=int(row["trace_runs"]),
        matched=int(row["matched"]),
        discrepancies=int(row["discrepancies"]),
        ratio=None if row["completeness_ratio"] is None else float(row["completeness_ratio"]),
        by_kind=_kinds(row["discrepancies_json"]),
        report_id=str(row[schema.REPORT_ID]),
        errors=int(row["errors"] or 0),
    )


def _kinds(text: Any) -> dict[str, int]:
    """The per-kind counts of a report row (unknown or unreadable entries are left out)."""
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {
        k: int(value[k])
        for k in DISCREPANCY_KINDS
        if isinstance(value.get(k), int | float) and value[k]
    }


def live_completeness(result: Any) -> Completeness:
    """The :class:`Completeness` of a reconciliation just run (``report --traces``): the row
    recording it would hold, created when it started."""
    return _completeness({**reconciliation_row(result), "created_at": result.started_at}, live=True)


def _open_findings(conn: sa.Connection) -> tuple[list[OpenFinding], int]:
    t = schema.health_findings.c
    where = t.state == OPEN_STATE
    rows = (
        conn.execute(
            sa.select(schema.health_findings)
            .where(where)
            .order_by(t.last_seen_at.desc(), t.kind, t[PIPELINE], t[NODE])
            .limit(STATUS_PAGE_ROWS)
        )
        .mappings()
        .all()
    )
    total = conn.execute(
        sa.select(sa.func.count()).select_from(schema.health_findings).where(where)
    ).scalar_one()
    return [
        OpenFinding(
            kind=str(r["kind"]),
            pipeline=str(r[PIPELINE]),
            node=str(r[NODE]),
            opened_at=utc(r["opened_at"]),
            last_seen_at=utc(r["last_seen_at"]),
            passes=int(r["passes"]),
            score=None if r["score"] is None else float(r["score"]),
            detail=str(r["detail"] or ""),
        )
        for r in rows
    ], int(total)
