"""``memory_growth`` on histories written through the real catalog (SQLite and PostgreSQL):
a node whose peak memory climbs toward its limit is found, one already above 90 % of it is
found, and steady nodes, nodes without a limit, slow growers and nodes that stopped running
produce nothing."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from odibi_observe.catalog import create_catalog_engine
from odibi_observe.health import HealthOptions, HealthResult, detect
from odibi_observe.health.memory import Trend, fit, judge
from tests.health_history import DAY, NOW_NS, Node, last_day, write
from tests.test_reconcile_support import cli

MIB = 1024 * 1024
GIB = 1024 * MIB
LIMIT = 2 * GIB


def _growing(start: float, per_run: float) -> Any:
    """Run ``i`` (0 the newest of 16) peaks at ``start + (15 - i) * per_run``."""

    def plant(i: int, values: dict[str, Any]) -> None:
        values["peak_rss"] = round(start + (15 - i) * per_run)

    return plant


STEADY = [Node("etl", f"steady_{i}", peak_rss=1.2 * GIB, memory_limit=LIMIT) for i in range(6)]
STEADY += [
    Node("etl", "steady_high", peak_rss=1.5 * GIB, peak_rss_cv=0.02, memory_limit=LIMIT),
    # Grows like the leak, but runs without a limit: judged against nothing.
    Node("etl", "no_limit", plant=_growing(1.0 * GIB, 45 * MIB), peak_rss=1.0 * GIB),
    # Grows 1 MiB a run at half the limit: it would take years.
    Node(
        "etl",
        "slow_grower",
        plant=_growing(1.0 * GIB, 1 * MIB),
        peak_rss=1.0 * GIB,
        memory_limit=LIMIT,
    ),
    # The leak's history, but its last run was two days ago: not judged on old runs.
    Node(
        "etl",
        "stopped",
        plant=_growing(1.0 * GIB, 45 * MIB),
        peak_rss=1.0 * GIB,
        memory_limit=LIMIT,
        first_ns=NOW_NS - 2 * DAY,
    ),
    # Too few runs to fit a trend.
    Node(
        "etl",
        "newbie",
        runs=4,
        plant=_growing(1.6 * GIB, 60 * MIB),
        peak_rss=1.6 * GIB,
        memory_limit=LIMIT,
    ),
    # No peak recorded at all (runs from before the resource columns).
    Node("etl", "unmeasured"),
]

PLANTED = [
    # 1 GiB growing 45 MiB a run: 1.66 GiB (83 %) now, 90 % in about 3 runs.
    Node(
        "etl", "leak", plant=_growing(1.0 * GIB, 45 * MIB), peak_rss=1.0 * GIB, memory_limit=LIMIT
    ),
    # Steady, but at 95 % of its limit already.
    Node("etl", "at_limit", peak_rss=0.95 * LIMIT, peak_rss_cv=0.005, memory_limit=LIMIT),
]


def _detect(url: str, options: HealthOptions | None = None) -> HealthResult:
    engine = create_catalog_engine(url)
    try:
        return detect(engine, last_day(), options or HealthOptions())
    finally:
        engine.dispose()


def _memory(result: HealthResult) -> dict[str, Any]:
    return {f.node: f for f in result.findings if f.kind == "memory_growth"}


@pytest.fixture
def planted(catalog_url: str) -> str:
    write(catalog_url, STEADY + PLANTED)
    return catalog_url


def test_planted_growth_is_found_and_nothing_else(planted: str) -> None:
    result = _detect(planted)
    assert {f.key for f in result.findings} == {
        ("memory_growth", "etl", "leak"),
        ("memory_growth", "etl", "at_limit"),
    }
    found = _memory(result)

    leak = found["leak"]
    ev = leak.evidence
    assert ev["slope_bytes_per_run"] == pytest.approx(45 * MIB, rel=1e-6)
    # The oldest of the 16 runs is before the 14 days of training: 15 are fitted.
    assert ev["points"] == 15
    assert ev["baseline_bytes"] == pytest.approx(1.0 * GIB + 45 * MIB, rel=1e-6)
    assert ev["last_bytes"] == round(1.0 * GIB + 15 * 45 * MIB)
    assert ev["limit_bytes"] == LIMIT and ev["threshold"] == 0.9
    expected_runs = (0.9 * LIMIT - (1.0 * GIB + 15 * 45 * MIB)) / (45 * MIB)
    assert ev["runs_to_threshold"] == pytest.approx(expected_runs, rel=1e-6)
    assert leak.score == pytest.approx(ev["last_bytes"] / LIMIT)
    assert leak.runs_total == 15 and leak.runs[0]["peak_rss_bytes"] == ev["last_bytes"]
    assert leak.runs[0]["memory_limit_bytes"] == LIMIT
    assert "MiB per run" in leak.detail and "in 3.2 run(s)" in leak.detail

    at_limit = found["at_limit"]
    assert at_limit.evidence["runs_to_threshold"] == 0
    assert at_limit.score > 0.9 and "already at 9" in at_limit.detail


def test_horizon_and_threshold_change_what_is_found(planted: str) -> None:
    # The leak is ~3.2 runs from 90 %: a horizon of 2 runs does not reach it.
    assert set(_memory(_detect(planted, HealthOptions(memory_horizon=2)))) == {"at_limit"}
    # A threshold of 99 % is beyond at_limit's 95 %; the leak reaches it in ~7.3 runs.
    assert set(_memory(_detect(planted, HealthOptions(memory_threshold=0.99)))) == {"leak"}
    assert (
        set(_memory(_detect(planted, HealthOptions(memory_threshold=0.99, memory_horizon=5))))
        == set()
    )
    # Fitted to the last 5 runs only, the leak's trend is still found.
    assert "leak" in _memory(_detect(planted, HealthOptions(memory_runs=5, min_points=5)))


def test_steady_memory_nodes_produce_nothing(catalog_url: str) -> None:
    """40 steady nodes between 30 % and 80 % of their limit, 3 % noise, 16 runs each."""
    nodes = [
        Node("steady", f"n{i}", peak_rss=(0.3 + 0.0125 * i) * LIMIT, memory_limit=LIMIT)
        for i in range(40)
    ]
    write(catalog_url, nodes, seed=11)
    result = _detect(catalog_url)
    assert result.findings == []
    assert result.nodes_judged == 40


def test_fit_is_least_squares() -> None:
    ys = [100.0, 130.0, 120.0, 170.0, 160.0, 200.0, 230.0]
    xs = list(range(len(ys)))
    trend = fit(
        len(ys),
        sum(xs),
        sum(ys),
        sum(x * y for x, y in zip(xs, ys, strict=True)),
        sum(x * x for x in xs),
        last=ys[-1],
        limit=300.0,
    )
    assert trend is not None
    slope, intercept = statistics.linear_regression(xs, ys)
    assert trend.slope == pytest.approx(slope) and trend.start == pytest.approx(intercept)
    assert fit(1, 0.0, 5.0, 0.0, 0.0, last=5.0, limit=10.0) is None


def test_judge_rules() -> None:
    options = HealthOptions()
    # Falling, or flat, below the threshold: never.
    assert judge(Trend(10, 1500.0, -10.0, 1410.0, 2000.0), options) is None
    assert judge(Trend(10, 1500.0, 0.0, 1500.0, 2000.0), options) is None
    # Rising 1 % over the runs fitted (under min_change) while 1 run from 90 %: not a trend.
    assert judge(Trend(10, 1780.0, 2.0, 1798.0, 2000.0), options) is None
    # Already above the threshold: found at 0 runs, whatever the slope.
    assert judge(Trend(10, 1900.0, -1.0, 1891.0, 2000.0), options) == 0.0
    # Fitted line above but the last run below: a wobble, not found by the "already" rule.
    assert judge(Trend(10, 1700.0, 12.0, 1790.0, 2000.0), options) is None


def test_cli_options_and_the_html_drawing(sqlite_url: str, tmp_path: Path) -> None:
    write(sqlite_url, STEADY + PLANTED)
    out = tmp_path / "report"
    code, _, err = cli(
        "health",
        "--catalog",
        sqlite_url,
        "--out",
        str(out),
        "--no-record",
        "--memory-horizon",
        "2",
        "--quiet",
    )
    assert code == 1, err
    report = json.loads((out / "health.json").read_text())
    assert [(f["kind"], f["node"]) for f in report["findings"]] == [("memory_growth", "at_limit")]
    assert report["options"]["memory_horizon"] == 2
    html = (out / "health.html").read_text()
    assert 'aria-label="peak memory against limit"' in html and "limit 2,048 MiB" in html
