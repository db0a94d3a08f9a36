"""Finding data-health problems in ``meta_runs``: the database aggregates, Python judges.

A catalog holds months of runs, so nothing here pulls the history into Python. Three queries do
the work, each a range scan of an indexed time column:

1. **Recent outliers** — the training statistics per node (count, sum and sum of squares of
   ``rows_processed`` and ``duration_ms`` of SUCCESS runs, ``GROUP BY`` pipeline, node and,
   with seasonality, the weekday or hour), joined to the SUCCESS runs of the window, returning
   only the runs that *could* be anomalous (the z-score test, written without a square root so
   that SQLite needs no math extension). Python then recomputes each run's z-score exactly and
   applies direction and the small-change rule: the SQL condition is a superset, Python is
   the judge.
2. **Node summary** — per node over training + window: successes, first and last success, last
   failure, successes that needed a retry. Freshness, failure streaks and flakiness come from
   these few numbers per node.
3. **Evidence** — for the few nodes 2. flags, their runs (by the
   ``(pipeline_name, node_name, started_at)`` index).

Variance is ``(Σx² - (Σx)²/n) / (n - 1)``: one pass, no second scan. It loses precision when
the spread is tiny next to the mean, but a change must also exceed ``min_change`` of the mean
(10 % by default), far above that error, so the loss cannot create a finding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from odibi_observe.catalog.schema import (
    ATTEMPT,
    DURATION_MS,
    ERROR_TYPE,
    MEMORY_LIMIT,
    NODE,
    PEAK_RSS,
    PIPELINE,
    ROWS,
    RUN_ID,
    STARTED_AT,
    STATUS,
    TIMESTAMP,
)
from odibi_observe.config import hide_password
from odibi_observe.conventions import CATALOG_TABLE, RunStatus
from odibi_observe.health.memory import memory_growth
from odibi_observe.health.model import (
    EVIDENCE_RUNS,
    Finding,
    HealthOptions,
    HealthResult,
    finite,
)
from odibi_observe.reconcile.model import Window, as_utc, iso
from odibi_observe.reconcile.sqlutil import table_columns, to_ns
from odibi_observe.record import ns_to_datetime

SUCCESS: Final = RunStatus.SUCCESS.value
#: Statuses of a run that did not succeed (Odibi's ``FAILED`` included).
FAILED: Final = (RunStatus.FAILURE.value, RunStatus.CRASHED.value, "FAILED")

#: Nodes per pass whose runs are fetched as evidence (freshness, streaks, flakiness); beyond
#: it findings are still reported, with a note, but without their run lists.
MAX_EVIDENCE_NODES: Final = 500

#: A standard deviation this small next to the mean is a constant history (every run the same).
_CONSTANT: Final = 1e-7
#: The SQL pre-filter is a little looser than Python's test, so rounding never loses a run.
_LOOSE: Final = 0.999


class HealthError(Exception):
    """The catalog cannot be read at all (exit status 2)."""


@dataclass(frozen=True)
class Scope:
    """What one pass reads: the table, its time column, and the training and recent periods
    (training ``[training_start, since)``, recent ``[since, end)``)."""

    engine: Engine
    table: sa.TableClause
    time_col: str
    training_start: datetime
    since: datetime
    end: datetime

    @property
    def t(self) -> Any:
        return self.table.c[self.time_col]


def detect(
    engine: Engine, window: Window, options: HealthOptions, *, catalog: str = ""
) -> HealthResult:
    """One data-health pass over the catalog at ``engine``; see the module docstring."""
    started = time.monotonic()
    end = window.end
    training_start = window.since - options.training_span
    result = HealthResult(
        window=window,
        training_start=training_start,
        options=options,
        catalog=catalog or hide_password(str(engine.url)),
    )
    table, time_col = _table(engine, result)
    scope = Scope(engine, table, time_col, training_start, window.since, end)
    try:
        outliers, summary = _both(scope, options)
    except SQLAlchemyError as exc:
        raise HealthError(
            f"catalog {result.catalog}: cannot read {CATALOG_TABLE}: {_first_line(exc)}"
        ) from None
    result.nodes_seen = len(summary)
    result.nodes_judged = sum(1 for s in summary.values() if s["ok_training"] >= options.min_points)
    result.recent_runs = sum(int(s["ok_recent"]) for s in summary.values())
    findings = _anomalies(outliers, options)
    evidence = _Evidence(scope, result)
    findings += _freshness(summary, options, evidence)
    findings += _streaks(summary, options, evidence)
    findings += _flaky(summary, options, evidence, ATTEMPT in table.c)
    findings += memory_growth(scope, options, result, summary)
    result.findings = [f for f in findings if not _skipped(options, f)]
    result.seconds = time.monotonic() - started
    return result


def _both(
    scope: Scope, options: HealthOptions
) -> tuple[list[Any], dict[tuple[str, str], dict[str, Any]]]:
    """The outliers and the node summary: two scans of the same time range, run at once on
    two connections where the pool has two (each is one database process; on 10 M runs in
    PostgreSQL this halves the pass). An in-memory SQLite catalog has one connection."""
    if isinstance(scope.engine.pool, StaticPool):
        return _outliers(scope, options), _summary(scope)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="odibi-health") as pool:
        summary = pool.submit(_summary, scope)
        outliers = _outliers(scope, options)
        return outliers, summary.result()


# --- the table ---------------------------------------------------------------------------------


def _table(engine: Engine, result: HealthResult) -> tuple[sa.TableClause, str]:
    """``meta_runs`` as the database has it: odibi-observe's, or Odibi's own (then placed in
    time by ``timestamp`` and without retries, with a note)."""
    try:
        columns = table_columns(engine, CATALOG_TABLE)
    except SQLAlchemyError as exc:
        raise HealthError(f"catalog {result.catalog}: cannot connect: {_first_line(exc)}") from None
    if columns is None:
        raise HealthError(f"catalog {result.catalog}: no table {CATALOG_TABLE}")
    time_col = STARTED_AT if STARTED_AT in columns else TIMESTAMP
    missing = [c for c in (RUN_ID, PIPELINE, NODE, STATUS) if c not in columns]
    if time_col not in columns:
        missing.append(f"{STARTED_AT} or {TIMESTAMP}")
    if missing:
        raise HealthError(
            f"catalog {result.catalog}: {CATALOG_TABLE} has no column "
            f"{', '.join(missing)}: not a run catalog"
        )
    absent = [
        c
        for c in (ROWS, DURATION_MS, ATTEMPT, STARTED_AT, ERROR_TYPE, PEAK_RSS, MEMORY_LIMIT)
        if c not in columns
    ]
    if absent:
        result.notes.append(
            f"{CATALOG_TABLE} has no column {', '.join(absent)} (a table Odibi created, never "
            f"upgraded): what needs them is not checked; 'odibi-observe catalog upgrade' adds "
            "them"
        )
    wanted = (
        RUN_ID,
        PIPELINE,
        NODE,
        STATUS,
        time_col,
        ROWS,
        DURATION_MS,
        ATTEMPT,
        ERROR_TYPE,
        PEAK_RSS,
        MEMORY_LIMIT,
    )
    table = sa.table(
        CATALOG_TABLE, *(sa.column(c, columns[c].type) for c in wanted if c in columns)
    )
    return table, time_col


def _group_key(engine: Engine, table: sa.TableClause, name: str) -> Any:
    """``table.name`` as a GROUP BY key. On SQLite it is written ``+table.name`` (the same
    value): grouping by the bare column makes SQLite's planner walk the
    ``(pipeline_name, node_name, started_at)`` index node by node to save a sort, which on
    10 M runs is twice as slow as the range scan of a time index it picks otherwise."""
    column = table.c[name]
    if engine.dialect.name != "sqlite":
        return column
    quote = engine.dialect.identifier_preparer.quote
    return sa.literal_column(f"+{quote(table.name)}.{quote(name)}", type_=column.type)


def _bucket(engine: Engine, column: Any, seasonality: str) -> Any:
    """The run's weekday (0 = Sunday) or UTC hour, as an integer, in the dialect's SQL."""
    field = "dow" if seasonality == "day_of_week" else "hour"
    if engine.dialect.name == "sqlite":
        return sa.cast(sa.func.strftime("%w" if field == "dow" else "%H", column), sa.Integer)
    if engine.dialect.name == "postgresql" and getattr(column.type, "timezone", False):
        column = sa.func.timezone("UTC", column)
    return sa.cast(sa.extract(field, column), sa.Integer)


# --- 1. recent outliers --------------------------------------------------------------------------


_METRICS: Final = (("rows", ROWS), ("dur", DURATION_MS))


def _outliers(scope: Scope, options: HealthOptions) -> list[Any]:
    """The recent SUCCESS runs whose rows or duration may be anomalous, with their node's
    training statistics (see the module docstring)."""
    engine, table, t = scope.engine, scope.table, scope.t
    training_start, since, end = scope.training_start, scope.since, scope.end
    metrics = [(name, table.c[col]) for name, col in _METRICS if col in table.c]
    if not metrics:
        return []
    seasonal = options.seasonality != "none"
    keys = [
        _group_key(engine, table, PIPELINE).label("p"),
        _group_key(engine, table, NODE).label("n"),
    ]
    if seasonal:
        keys.append(_bucket(engine, t, options.seasonality).label("b"))
    stats: list[Any] = list(keys)
    for name, col in metrics:
        value = sa.cast(col, sa.Float)
        stats += [
            sa.func.count(col).label(f"{name}_n"),
            sa.func.sum(value).label(f"{name}_s"),
            sa.func.sum(value * value).label(f"{name}_ss"),
            sa.func.min(col).label(f"{name}_min"),
        ]
    base = (
        sa.select(*stats)
        .where(table.c[STATUS] == SUCCESS, t >= training_start, t < since)
        .group_by(*keys)
        .having(sa.func.count() >= options.min_points)
        .cte("base")
    )
    on = [base.c.p == table.c[PIPELINE], base.c.n == table.c[NODE]]
    if seasonal:
        on.append(base.c.b == _bucket(engine, t, options.seasonality))
    possible = []
    for name, col in metrics:
        possible.append(_could_be_anomalous(name, col, base, options))
    selected = [
        table.c[RUN_ID],
        table.c[PIPELINE],
        table.c[NODE],
        t.label("t"),
        *(col.label(name) for name, col in metrics),
        *(base.c[f"{name}_{s}"] for name, _ in metrics for s in ("n", "s", "ss", "min")),
    ]
    if ATTEMPT in table.c:
        selected.append(table.c[ATTEMPT].label("attempt"))
    if seasonal:
        selected.append(base.c.b)
    query = (
        sa.select(*selected)
        .select_from(table.join(base, sa.and_(*on)))
        .where(table.c[STATUS] == SUCCESS, t >= since, t < end, sa.or_(*possible))
    )
    with engine.connect() as conn:
        return list(conn.execute(query).mappings())


def _could_be_anomalous(name: str, col: Any, base: Any, options: HealthOptions) -> Any:
    """SQL: this run's value is far from its node's training mean (or 0 where the history
    never was): the z-score test squared, with the small-change rule."""
    n, s, ss = base.c[f"{name}_n"], base.c[f"{name}_s"], base.c[f"{name}_ss"]
    x = sa.cast(col, sa.Float)
    mean = s / sa.func.nullif(n, 0)
    var = (ss - s * s / sa.func.nullif(n, 0)) / sa.func.nullif(n - 1, 0)
    diff = x - mean
    far = sa.and_(
        diff * diff >= _LOOSE * options.sensitivity**2 * var,
        sa.func.abs(diff) >= _LOOSE * options.min_change * sa.func.abs(mean),
    )
    condition = sa.and_(n >= options.min_points, col.is_not(None), far)
    if name == "rows":
        zero = sa.and_(n >= options.min_points, col == 0, base.c[f"{name}_min"] > 0)
        return sa.or_(condition, zero)
    return condition


def zscore(
    x: float,
    n: int,
    s: float,
    ss: float,
    *,
    sensitivity: float,
    direction: str,
    min_change: float,
    min_abs: float = 0.0,
) -> tuple[float, float, float] | None:
    """``(z, mean, stddev)`` when ``x`` is anomalous against a history of ``n`` values with sum
    ``s`` and sum of squares ``ss``; else None. ``z`` is infinite when the history never varied.

    Anomalous: beyond ``sensitivity`` standard deviations, in ``direction`` (``spike``: above
    the mean, ``drop``: below, ``both``), and different from the mean by at least ``min_change``
    of it and ``min_abs`` (so a steady node's 1 % wobble is never a finding).
    """
    if n < 2:
        return None
    mean = s / n
    sd = math.sqrt(max((ss - s * s / n) / (n - 1), 0.0))
    diff = x - mean
    if diff == 0 or (direction == "spike" and diff < 0) or (direction == "drop" and diff > 0):
        return None
    if abs(diff) < min_change * abs(mean) or abs(diff) < min_abs:
        return None
    z = math.copysign(math.inf, diff) if sd <= _CONSTANT * max(1.0, abs(mean)) else diff / sd
    if abs(z) <= sensitivity:
        return None
    return z, mean, sd


def _anomalies(rows: Iterable[Any], options: HealthOptions) -> list[Finding]:
    """Findings ``volume_anomaly``, ``zero_rows`` and ``duration_anomaly`` from the outliers."""
    hits: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        for kind, judged in _judge_run(row, options):
            hits.setdefault((kind, str(row[PIPELINE]), str(row[NODE])), []).append(judged)
    findings = []
    for (kind, pipeline, node), runs in hits.items():
        runs.sort(key=lambda r: r["started_at"], reverse=True)
        worst = max(runs, key=lambda r: abs(r["_z"]))
        unit = "ms" if kind == "duration_anomaly" else "rows"
        if kind == "zero_rows":
            detail = (
                f"{len(runs)} recent SUCCESS run(s) processed 0 rows; all "
                f"{worst['_n']} runs of the training period had rows (at least "
                f"{worst['_min']:,}, mean {worst['_mean']:,.0f})"
            )
        else:
            z = worst["_z"]
            z_text = "∞ (the history never varied)" if math.isinf(z) else f"{z:+.1f}"
            detail = (
                f"{worst['_value']:,.0f} {unit} against a mean of {worst['_mean']:,.0f} "
                f"(stddev {worst['_sd']:,.1f}, {worst['_n']} runs): z = {z_text}; "
                f"{len(runs)} recent run(s) anomalous"
            )
        evidence = {
            "mean": finite(worst["_mean"]),
            "stddev": finite(worst["_sd"]),
            "points": worst["_n"],
            "sensitivity": options.sensitivity,
            "direction": (
                options.duration_direction
                if kind == "duration_anomaly"
                else options.volume_direction
                if kind == "volume_anomaly"
                else "drop"
            ),
            "min_change": options.min_change,
            "seasonality": options.seasonality,
        }
        if worst.get("bucket") is not None:
            evidence["bucket"] = worst["bucket"]
        if kind == "zero_rows":
            evidence["training_min_rows"] = worst["_min"]
        findings.append(
            Finding(
                kind=kind,
                pipeline=pipeline,
                node=node,
                score=abs(worst["_z"]),
                baseline=worst["_mean"],
                value=worst["_value"],
                detail=detail,
                evidence=evidence,
                runs=[
                    {k: v for k, v in r.items() if not k.startswith("_")}
                    for r in runs[:EVIDENCE_RUNS]
                ],
                runs_total=len(runs),
            )
        )
    return findings


def _anomaly(
    kind: str,
    measured: tuple[str, Any],
    history: tuple[int, float, float],
    base: dict[str, Any],
    options: HealthOptions,
    *,
    direction: str,
    min_abs: float = 0.0,
) -> list[tuple[str, dict[str, Any]]]:
    """``[(kind, the run as evidence)]`` when the run's ``measured`` value (its column and
    value) is anomalous against the node's ``history`` (count, sum, sum of squares); else
    ``[]``. Volume and duration are judged alike, each with its own direction."""
    column, value = measured
    n, s, ss = history
    judged = zscore(
        float(value),
        n,
        s,
        ss,
        sensitivity=options.sensitivity,
        direction=direction,
        min_change=options.min_change,
        min_abs=min_abs,
    )
    if judged is None:
        return []
    z, mean, sd = judged
    evidence = {
        **base,
        column: int(value),
        "z": finite(z),
        "_z": z,
        "_mean": mean,
        "_sd": sd,
        "_n": n,
        "_value": float(value),
    }
    return [(kind, evidence)]


def _judge_run(row: Any, options: HealthOptions) -> list[tuple[str, dict[str, Any]]]:
    """What is wrong with one recent run: ``(kind, the run as evidence)`` pairs."""
    out = []
    base = {
        "run_id": str(row[RUN_ID]),
        "started_at": iso(_dt(row["t"])),
        "attempt": row.get("attempt"),
    }
    if row.get("b") is not None:
        base["bucket"] = row["b"]
    rows = row.get("rows")
    if rows is not None and row.get("rows_n") is not None:
        n, s, ss = int(row["rows_n"]), float(row["rows_s"]), float(row["rows_ss"])
        minimum = row["rows_min"]
        if rows == 0 and minimum is not None and minimum > 0 and n >= options.min_points:
            out.append(
                (
                    "zero_rows",
                    {
                        **base,
                        "rows_processed": 0,
                        "_z": math.inf,
                        "_mean": s / n,
                        "_sd": 0.0,
                        "_n": n,
                        "_value": 0.0,
                        "_min": int(minimum),
                    },
                )
            )
        else:
            out += _anomaly(
                "volume_anomaly",
                ("rows_processed", rows),
                (n, s, ss),
                base,
                options,
                direction=options.volume_direction,
            )
    duration = row.get("dur")
    if duration is not None and row.get("dur_n") is not None:
        out += _anomaly(
            "duration_anomaly",
            ("duration_ms", duration),
            (int(row["dur_n"]), float(row["dur_s"]), float(row["dur_ss"])),
            base,
            options,
            direction=options.duration_direction,
            min_abs=options.duration_min_ms,
        )
    return out


# --- 2. the node summary -------------------------------------------------------------------------


def _summary(scope: Scope) -> dict[tuple[str, str], dict[str, Any]]:
    """Per node over training + window: the few numbers freshness, streaks and flakiness need."""
    engine, table, t, since = scope.engine, scope.table, scope.t, scope.since
    status = table.c[STATUS]
    ok = status == SUCCESS
    failed = status.in_(FAILED)

    def count(condition: Any) -> Any:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    pipeline, node = _group_key(engine, table, PIPELINE), _group_key(engine, table, NODE)
    columns = [
        pipeline.label("p"),
        node.label("n"),
        count(ok).label("ok"),
        count(sa.and_(ok, t < since)).label("ok_training"),
        count(sa.and_(ok, t >= since)).label("ok_recent"),
        sa.func.min(sa.case((ok, t))).label("first_ok"),
        sa.func.max(sa.case((ok, t))).label("last_ok"),
        sa.func.max(sa.case((failed, t))).label("last_failed"),
    ]
    if PEAK_RSS in table.c and MEMORY_LIMIT in table.c:
        # The nodes memory_growth reads: a recent success with a peak and a limit.
        limited = sa.and_(ok, t >= since, table.c[MEMORY_LIMIT] > 0)
        columns.append(sa.func.count(sa.case((limited, table.c[PEAK_RSS]))).label("peak_recent"))
    if ATTEMPT in table.c:
        retried = sa.and_(ok, table.c[ATTEMPT] > 1)
        columns += [
            count(retried).label("retried"),
            count(sa.and_(retried, t >= since)).label("retried_recent"),
        ]
    query = (
        sa.select(*columns).where(t >= scope.training_start, t < scope.end).group_by(pipeline, node)
    )
    out: dict[tuple[str, str], dict[str, Any]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query).mappings():
            item = dict(row)
            for key in ("first_ok", "last_ok", "last_failed"):
                item[key] = _dt(item[key])
            for key in (
                "ok",
                "ok_training",
                "ok_recent",
                "retried",
                "retried_recent",
                "peak_recent",
            ):
                item[key] = int(item.get(key) or 0)
            out[(str(row["p"] or ""), str(row["n"] or ""))] = item
    return out


# --- 3. evidence, and the kinds that need it ---------------------------------------------


class _Evidence:
    """The runs of one node, for the few nodes the summary flags (by the node index)."""

    def __init__(self, scope: Scope, result: HealthResult) -> None:
        self.engine, self.table, self.t = scope.engine, scope.table, scope.t
        self.training_start, self.end, self.result = scope.training_start, scope.end, result
        self.queries = 0

    def runs(
        self,
        pipeline: str,
        node: str,
        condition: Any,
        *,
        after: datetime | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]] | None:
        """Matching runs, newest first; None beyond :data:`MAX_EVIDENCE_NODES` (with a note)."""
        if self.queries >= MAX_EVIDENCE_NODES:
            if self.queries == MAX_EVIDENCE_NODES:
                self.result.notes.append(
                    f"more than {MAX_EVIDENCE_NODES} nodes flagged: the "
                    "rest are reported without their runs"
                )
                self.queries += 1
            return None
        self.queries += 1
        c = self.table.c
        cols = [c[RUN_ID], self.t.label("t"), c[STATUS]]
        cols += [c[name] for name in (ATTEMPT, ERROR_TYPE) if name in c]
        lower = self.t > after if after is not None else self.t >= self.training_start
        query = (
            sa.select(*cols)
            .where(c[PIPELINE] == pipeline, c[NODE] == node, lower, self.t < self.end, condition)
            .order_by(self.t.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            self.result.notes.append(f"runs of {pipeline}/{node} not read: {_first_line(exc)}")
            return None
        return [
            {
                "run_id": str(r[RUN_ID]),
                "started_at": iso(_dt(r["t"])),
                "status": r[STATUS],
                "attempt": r.get(ATTEMPT),
                "error_type": r.get(ERROR_TYPE),
            }
            for r in rows
        ]


def _freshness(
    summary: dict[tuple[str, str], dict[str, Any]], options: HealthOptions, evidence: _Evidence
) -> list[Finding]:
    findings = []
    end, training_start = evidence.end, evidence.training_start
    for (pipeline, node), s in summary.items():
        finding = _stale(pipeline, node, s, options, end, training_start)
        if finding is not None:
            last = evidence.runs(pipeline, node, evidence.table.c[STATUS] == SUCCESS, limit=1)
            finding.runs = last or []
            finding.runs_total = len(finding.runs)
            findings.append(finding)
    seen = set(summary)
    for rule in options.rules:  # declared nodes with no run at all in the period
        if rule.exact and rule.freshness_sla and (rule.pipeline, rule.node) not in seen:
            finding = _stale(
                rule.pipeline,
                rule.node,
                {"ok": 0, "first_ok": None, "last_ok": None},
                options,
                end,
                training_start,
            )
            if finding is not None:
                findings.append(finding)
    return findings


def _stale(  # noqa: PLR0917
    pipeline: str,
    node: str,
    s: dict[str, Any],
    options: HealthOptions,
    end: datetime,
    training_start: datetime,
) -> Finding | None:
    """A ``freshness`` finding when the node's last success is older than it may be."""
    rule = options.rule(pipeline, node)
    successes, first_ok, last_ok = int(s["ok"]), s["first_ok"], s["last_ok"]
    if rule is not None and (rule.freshness_off or "freshness" in rule.skip):
        return None
    if rule is not None and rule.freshness_sla is not None:
        allowed, basis = rule.freshness_sla, "declared SLA"
        cadence = None
    elif (
        successes >= options.min_points
        and first_ok is not None
        and last_ok is not None
        and last_ok > first_ok
    ):
        cadence = (last_ok - first_ok) / (successes - 1)
        allowed = max(cadence * options.freshness_factor, options.freshness_min)
        basis = (
            f"learned: {options.freshness_factor:g} x the mean interval of "
            f"{_human(cadence)} between {successes} successes"
        )
    else:
        return None
    age = end - (last_ok or training_start)
    if age <= allowed:
        return None
    since_text = (
        f"last SUCCESS {iso(last_ok)}"
        if last_ok
        else f"no SUCCESS since {iso(training_start)} (the whole training period)"
    )
    return Finding(
        kind="freshness",
        pipeline=pipeline,
        node=node,
        score=age / allowed,
        baseline=allowed.total_seconds(),
        value=age.total_seconds(),
        detail=f"{since_text}, {_human(age)} ago; allowed {_human(allowed)} ({basis})",
        evidence={
            "last_success": iso(last_ok),
            "age_seconds": age.total_seconds(),
            "allowed_seconds": allowed.total_seconds(),
            "basis": basis.split(":")[0],
            "cadence_seconds": None if cadence is None else cadence.total_seconds(),
            "successes": successes,
        },
    )


def _streaks(
    summary: dict[tuple[str, str], dict[str, Any]], options: HealthOptions, evidence: _Evidence
) -> list[Finding]:
    findings = []
    status = evidence.table.c[STATUS]
    for (pipeline, node), s in summary.items():
        last_failed, last_ok = s["last_failed"], s["last_ok"]
        if last_failed is None or (last_ok is not None and last_ok > last_failed):
            continue
        runs = evidence.runs(pipeline, node, status.in_(FAILED), after=last_ok)
        if runs is None or len(runs) < options.failure_streak:
            continue
        first = runs[-1]
        since = (
            f"since the last SUCCESS {iso(last_ok)}"
            if last_ok
            else "and none succeeded in the training period"
        )
        findings.append(
            Finding(
                kind="failure_streak",
                pipeline=pipeline,
                node=node,
                score=float(len(runs)),
                baseline=float(options.failure_streak),
                value=float(len(runs)),
                detail=f"the last {len(runs)} runs failed {since}; first failure "
                f"{first['started_at']}: {first.get('error_type') or first['status']}",
                evidence={
                    "streak": len(runs),
                    "threshold": options.failure_streak,
                    "last_success": iso(last_ok),
                    "first_failure": first["started_at"],
                    "error_types": sorted({str(r.get("error_type") or r["status"]) for r in runs}),
                },
                runs=runs[:EVIDENCE_RUNS],
                runs_total=len(runs),
            )
        )
    return findings


def _flaky(
    summary: dict[tuple[str, str], dict[str, Any]],
    options: HealthOptions,
    evidence: _Evidence,
    has_attempt: bool,
) -> list[Finding]:
    if not has_attempt:
        return []
    findings = []
    c = evidence.table.c
    for (pipeline, node), s in summary.items():
        if s["retried"] < options.flaky_min or s["retried_recent"] < 1:
            continue
        runs = (
            evidence.runs(
                pipeline, node, sa.and_(c[STATUS] == SUCCESS, c[ATTEMPT] > 1), limit=EVIDENCE_RUNS
            )
            or []
        )
        share = s["retried"] / max(s["ok"], 1)
        findings.append(
            Finding(
                kind="flaky",
                pipeline=pipeline,
                node=node,
                score=float(s["retried"]),
                baseline=float(options.flaky_min),
                value=float(s["retried"]),
                detail=f"{s['retried']} of {s['ok']} successes ({share:.0%}) needed a retry, "
                f"{s['retried_recent']} of them recently",
                evidence={
                    "retried_successes": s["retried"],
                    "recent": s["retried_recent"],
                    "successes": s["ok"],
                    "share": round(share, 6),
                    "threshold": options.flaky_min,
                },
                runs=runs,
                runs_total=s["retried"],
            )
        )
    return findings


# --- helpers -----------------------------------------------------------------------------------


def _skipped(options: HealthOptions, finding: Finding) -> bool:
    rule = options.rule(finding.pipeline, finding.node)
    return rule is not None and finding.kind in rule.skip


def _dt(value: Any) -> datetime | None:
    """A time as the database returned it (aware, naive UTC, or SQLite text) → aware UTC."""
    ns = to_ns(value)
    return None if ns is None else as_utc(ns_to_datetime(ns))


def _human(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86_400.0), ("h", 3_600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return hide_password(text.splitlines()[0]) if text else type(exc).__name__


__all__: Sequence[str] = ("HealthError", "detect", "zscore")
