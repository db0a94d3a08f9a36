"""``memory_growth``: a node's peak memory trending toward the memory limit it runs under.

The pandas node that loads a whole table does not fail on the day it is written; it fails
months later, OOM-killed, when the table has grown. Its ``peak_rss_bytes`` per run tells that
story long before: a line that rises run after run toward ``memory_limit_bytes``.

The method, per node, over its last ``memory_runs`` SUCCESS runs with a recorded peak (in the
training period and the window, newest last):

* a least-squares line through ``(run number, peak_rss_bytes)``;
* the limit is the newest run's ``memory_limit_bytes``: a node without one is judged against
  nothing and produces nothing (there is no limit to run into);
* found when the newest run is already at ``memory_threshold`` (90 %) of the limit or above,
  or when the line is rising, has risen by at least ``min_change`` (10 %) of its start over the
  runs fitted (so a steady node's wobble is never a trend), and reaches the threshold within
  ``memory_horizon`` runs after the newest;
* the node must have a SUCCESS with a peak in the window: a node that stopped running is not
  judged on old runs.

The node summary (detect's second scan) counts each node's recent successes with a recorded
peak and a limit, at no extra scan; only those nodes are read, each by one query on the
``(pipeline_name, node_name, started_at)`` index that walks back from the newest run and stops
after ``memory_runs`` (at most 20 rows a node). Those runs are the fit and the evidence; a
catalog without peaks or limits (older runs, hosts without a cgroup limit, Odibi's own table)
costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from odibi_observe.catalog.schema import MEMORY_LIMIT, NODE, PEAK_RSS, PIPELINE, RUN_ID, STATUS
from odibi_observe.conventions import RunStatus
from odibi_observe.health.model import EVIDENCE_RUNS, Finding, HealthOptions, HealthResult, finite
from odibi_observe.reconcile.model import as_utc, iso
from odibi_observe.reconcile.sqlutil import to_ns
from odibi_observe.record import ns_to_datetime

KIND: Final = "memory_growth"
SUCCESS: Final = RunStatus.SUCCESS.value
_MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class Trend:
    """The least-squares line of one node's peaks: ``peak = start + slope * i`` for run ``i``
    (0 the oldest fitted, ``points - 1`` the newest)."""

    points: int
    start: float
    slope: float
    last: float
    limit: float

    @property
    def fitted_last(self) -> float:
        return self.start + self.slope * (self.points - 1)

    def runs_to(self, level: float) -> float | None:
        """Runs after the newest until the line reaches ``level``: 0 when it is there already,
        None when it never will (flat or falling)."""
        if self.last >= level or self.fitted_last >= level:
            return 0.0
        if self.slope <= 0:
            return None
        return (level - self.fitted_last) / self.slope


def fit(
    points: int, sx: float, sy: float, sxy: float, sxx: float, *, last: float, limit: float
) -> Trend | None:
    """The trend of ``points`` runs from their sums (``x`` the run number); None when the runs
    cannot carry a line (fewer than 2)."""
    denominator = points * sxx - sx * sx
    if points < 2 or denominator <= 0:
        return None
    slope = (points * sxy - sx * sy) / denominator
    intercept = (sy - slope * sx) / points
    return Trend(points, intercept, slope, last, limit)


def judge(trend: Trend, options: HealthOptions) -> float | None:
    """Runs until the threshold when ``trend`` is a finding (see the module docstring)."""
    level = options.memory_threshold * trend.limit
    runs = trend.runs_to(level)
    if runs is None:
        return None
    if runs == 0:
        return 0.0 if trend.last >= level else None
    rise = trend.slope * (trend.points - 1)
    if rise < options.min_change * max(trend.start, 1.0) or runs > options.memory_horizon:
        return None
    return runs


def memory_growth(
    scope: Any,
    options: HealthOptions,
    result: HealthResult,
    summary: dict[tuple[str, str], dict[str, Any]],
) -> list[Finding]:
    """The ``memory_growth`` findings of one pass (``scope`` is detect's :class:`Scope`,
    ``summary`` its node summary, which counts each node's recent successes with a peak and
    a limit)."""
    c = scope.table.c
    if PEAK_RSS not in c or MEMORY_LIMIT not in c:
        return []
    nodes = [key for key, s in summary.items() if int(s.get("peak_recent") or 0) > 0]
    findings = []
    try:
        with scope.engine.connect() as conn:
            for pipeline, node in nodes:
                runs = _runs(conn, scope, pipeline, node, options)
                finding = _judge_node(pipeline, node, runs, options)
                if finding is not None:
                    findings.append(finding)
    except SQLAlchemyError as exc:
        result.notes.append(f"memory_growth not checked: {str(exc).splitlines()[0]}")
        return []
    return findings


def _judge_node(
    pipeline: str, node: str, runs: list[dict[str, Any]], options: HealthOptions
) -> Finding | None:
    """A finding when the node's runs (newest first) trend into its limit."""
    limit = runs[0][MEMORY_LIMIT] if runs else None
    if len(runs) < options.min_points or limit is None or limit <= 0:
        return None  # too little history, or no limit: nothing to run into
    ys = [float(r[PEAK_RSS]) for r in reversed(runs)]  # oldest first
    xs = range(len(ys))
    trend = fit(
        len(ys),
        float(sum(xs)),
        sum(ys),
        sum(x * y for x, y in zip(xs, ys, strict=True)),
        float(sum(x * x for x in xs)),
        last=ys[-1],
        limit=float(limit),
    )
    if trend is None:
        return None
    to_threshold = judge(trend, options)
    if to_threshold is None:
        return None
    finding = _finding(pipeline, node, trend, to_threshold, options)
    finding.runs = runs[:EVIDENCE_RUNS]
    finding.runs_total = len(runs)
    return finding


def _finding(
    pipeline: str, node: str, trend: Trend, runs: float, options: HealthOptions
) -> Finding:
    level = options.memory_threshold * trend.limit
    share = trend.last / trend.limit
    if runs == 0:
        when = f"already at {share:.0%} of its limit"
    else:
        when = f"reaches {options.memory_threshold:.0%} of its limit in {runs:.1f} run(s)"
    detail = (
        f"peak memory {trend.last / _MIB:,.0f} MiB of a {trend.limit / _MIB:,.0f} MiB "
        f"limit, growing {trend.slope / _MIB:+,.1f} MiB per run over the last "
        f"{trend.points} runs (from {trend.start / _MIB:,.0f} MiB): {when}"
    )
    return Finding(
        kind=KIND,
        pipeline=pipeline,
        node=node,
        score=share,
        baseline=trend.start,
        value=trend.last,
        detail=detail,
        evidence={
            "baseline_bytes": finite(trend.start),
            "slope_bytes_per_run": finite(trend.slope),
            "last_bytes": finite(trend.last),
            "limit_bytes": finite(trend.limit),
            "threshold": options.memory_threshold,
            "threshold_bytes": finite(level),
            "runs_to_threshold": finite(runs),
            "points": trend.points,
            "horizon_runs": options.memory_horizon,
        },
    )


def _runs(
    conn: Any, scope: Any, pipeline: str, node: str, options: HealthOptions
) -> list[dict[str, Any]]:
    """The node's newest ``memory_runs`` SUCCESS runs with a peak, newest first (by the
    ``(pipeline_name, node_name, started_at)`` index, from the newest backwards)."""
    c, t = scope.table.c, scope.t
    query = (
        sa.select(c[RUN_ID], t.label("t"), c[PEAK_RSS], c[MEMORY_LIMIT])
        .where(
            c[PIPELINE] == pipeline,
            c[NODE] == node,
            c[STATUS] == SUCCESS,
            c[PEAK_RSS].is_not(None),
            t >= scope.training_start,
            t < scope.end,
        )
        .order_by(t.desc())
        .limit(options.memory_runs)
    )
    return [
        {
            "run_id": str(r[RUN_ID]),
            "started_at": iso(_dt(r["t"])),
            PEAK_RSS: int(r[PEAK_RSS]),
            MEMORY_LIMIT: None if r[MEMORY_LIMIT] is None else int(r[MEMORY_LIMIT]),
        }
        for r in conn.execute(query).mappings()
    ]


def _dt(value: Any) -> datetime | None:
    """A time as the database returned it (aware, naive UTC, or SQLite text) → aware UTC."""
    ns = to_ns(value)
    return None if ns is None else as_utc(ns_to_datetime(ns))
