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
* the newest run must be in the window: a node that stopped running is not judged on old runs.

The database does the work: one query numbers each node's runs newest first (``ROW_NUMBER``),
keeps the last ``memory_runs`` and returns the sums a least-squares fit needs, one row per
node; Python fits and judges. Only flagged nodes have their runs read, as evidence.
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


def fit(points: int, sx: float, sy: float, sxy: float, sxx: float, *, last: float,
        limit: float) -> Trend | None:
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


def memory_growth(scope: Any, options: HealthOptions, result: HealthResult) -> list[Finding]:
    """The ``memory_growth`` findings of one pass (``scope`` is detect's :class:`Scope`)."""
    c = scope.table.c
    if PEAK_RSS not in c or MEMORY_LIMIT not in c:
        return []
    try:
        rows = _sums(scope, options)
    except SQLAlchemyError as exc:
        result.notes.append(f"memory_growth not checked: {str(exc).splitlines()[0]}")
        return []
    findings = []
    for row in rows:
        if row["last_limit"] is None or int(row["last_limit"]) <= 0:
            continue  # no limit: nothing to run into
        last_t = _dt(row["last_t"])
        if last_t is None or last_t < scope.since:
            continue  # the node has not run in the window
        trend = fit(int(row["k"]), float(row["sx"]), float(row["sy"]), float(row["sxy"]),
                    float(row["sxx"]), last=float(row["last_peak"]),
                    limit=float(row["last_limit"]))
        if trend is None or trend.points < options.min_points:
            continue
        runs = judge(trend, options)
        if runs is None:
            continue
        findings.append(_finding(str(row["p"]), str(row["n"]), trend, runs, options))
    for finding in findings:
        finding.runs = _runs(scope, finding.pipeline, finding.node, options)
        finding.runs_total = len(finding.runs)
    return findings


def _ranked(scope: Any, options: HealthOptions) -> Any:
    c, t = scope.table.c, scope.t
    rank = sa.func.row_number().over(partition_by=(c[PIPELINE], c[NODE]), order_by=t.desc())
    return (sa.select(c[PIPELINE].label("p"), c[NODE].label("n"), t.label("t"),
                      sa.cast(c[PEAK_RSS], sa.Float).label("y"), c[MEMORY_LIMIT].label("lim"),
                      rank.label("rn"))
            .where(c[STATUS] == SUCCESS, c[PEAK_RSS].is_not(None),
                   t >= scope.training_start, t < scope.end)
            .subquery("ranked"))


def _sums(scope: Any, options: HealthOptions) -> list[Any]:
    r = _ranked(scope, options)
    # x counts up from the oldest fitted run: x = k - rn with k = the runs fitted, written as
    # -rn here (a shift of x changes the intercept, which fit() recomputes, not the slope).
    x = sa.cast(-r.c.rn, sa.Float)
    newest = r.c.rn == 1
    query = (sa.select(
        r.c.p, r.c.n, sa.func.count().label("k"), sa.func.sum(x).label("sx"),
        sa.func.sum(r.c.y).label("sy"), sa.func.sum(x * r.c.y).label("sxy"),
        sa.func.sum(x * x).label("sxx"),
        sa.func.max(sa.case((newest, r.c.y))).label("last_peak"),
        sa.func.max(sa.case((newest, r.c.lim))).label("last_limit"),
        sa.func.max(r.c.t).label("last_t"))
        .where(r.c.rn <= options.memory_runs)
        .group_by(r.c.p, r.c.n)
        .having(sa.func.count() >= options.min_points))
    with scope.engine.connect() as conn:
        rows = list(conn.execute(query).mappings())
    out = []
    for row in rows:
        item = dict(row)
        k = int(item["k"])
        # Shift x from -rn (-k .. -1) to 0 .. k-1: x' = x + k.
        sx = float(item["sx"]) + k * k
        sxy = float(item["sxy"]) + k * float(item["sy"])
        sxx = float(item["sxx"]) + 2 * k * float(item["sx"]) + k * k * k
        item.update(sx=sx, sxy=sxy, sxx=sxx)
        out.append(item)
    return out


def _finding(pipeline: str, node: str, trend: Trend, runs: float,
             options: HealthOptions) -> Finding:
    level = options.memory_threshold * trend.limit
    share = trend.last / trend.limit
    if runs == 0:
        when = f"already at {share:.0%} of its limit"
    else:
        when = f"reaches {options.memory_threshold:.0%} of its limit in {runs:.1f} run(s)"
    detail = (f"peak memory {trend.last / _MIB:,.0f} MiB of a {trend.limit / _MIB:,.0f} MiB "
              f"limit, growing {trend.slope / _MIB:+,.1f} MiB per run over the last "
              f"{trend.points} runs (from {trend.start / _MIB:,.0f} MiB): {when}")
    return Finding(
        kind=KIND, pipeline=pipeline, node=node, score=share,
        baseline=trend.start, value=trend.last, detail=detail,
        evidence={"baseline_bytes": finite(trend.start), "slope_bytes_per_run":
                  finite(trend.slope), "last_bytes": finite(trend.last),
                  "limit_bytes": finite(trend.limit), "threshold": options.memory_threshold,
                  "threshold_bytes": finite(level), "runs_to_threshold": finite(runs),
                  "points": trend.points, "horizon_runs": options.memory_horizon},
    )


def _runs(scope: Any, pipeline: str, node: str, options: HealthOptions) -> list[dict[str, Any]]:
    """The fitted runs of a flagged node, newest first, as evidence (by the node index)."""
    c, t = scope.table.c, scope.t
    query = (sa.select(c[RUN_ID], t.label("t"), c[PEAK_RSS], c[MEMORY_LIMIT])
             .where(c[PIPELINE] == pipeline, c[NODE] == node, c[STATUS] == SUCCESS,
                    c[PEAK_RSS].is_not(None), t >= scope.training_start, t < scope.end)
             .order_by(t.desc()).limit(min(options.memory_runs, EVIDENCE_RUNS)))
    with scope.engine.connect() as conn:
        return [{"run_id": str(r[RUN_ID]), "started_at": iso(_dt(r["t"])),
                 PEAK_RSS: int(r[PEAK_RSS]),
                 MEMORY_LIMIT: None if r[MEMORY_LIMIT] is None else int(r[MEMORY_LIMIT])}
                for r in conn.execute(query).mappings()]


def _dt(value: Any) -> datetime | None:
    """A time as the database returned it (aware, naive UTC, or SQLite text) → aware UTC."""
    ns = to_ns(value)
    return None if ns is None else as_utc(ns_to_datetime(ns))
