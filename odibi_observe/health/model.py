"""What a data-health pass is asked (:class:`HealthOptions`) and what it answers (:class:`Finding`,
:class:`HealthResult`).

The defaults are the field's: elementary's anomaly tests (sensitivity 3 standard deviations, 14
days of training, at least 7 points, direction ``both``, optional day-of-week or hour-of-day
seasonality, small changes ignored), so a team that knows those tools knows these.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import tomllib

from odibi_observe.config import ConfigurationError, parse_duration
from odibi_observe.conventions import HEALTH_FINDING_KINDS
from odibi_observe.reconcile.model import KindInfo, Window, as_json, iso, kind_table

DIRECTIONS: Final = ("both", "spike", "drop")
SEASONALITIES: Final = ("none", "day_of_week", "hour_of_day")

#: Runs kept as evidence per finding (the count says how many there were).
EVIDENCE_RUNS: Final = 20


#: How each finding kind is explained in every report (its ``meaning``: how it is detected).
KINDS: Final = kind_table(
    HEALTH_FINDING_KINDS,
    KindInfo(
        "volume_anomaly",
        "Volume anomaly",
        meaning=(
            "rows_processed of a recent SUCCESS run is more than SENSITIVITY standard "
            "deviations from the node's own training mean (and differs from it by at least "
            "MIN_CHANGE)"
        ),
        todo=(
            "Compare the source with the run before: a filter, a join or an upstream extract "
            "changed. If the new volume is the new normal, the baseline follows within the "
            "training period."
        ),
    ),
    KindInfo(
        "zero_rows",
        "Zero rows",
        meaning=(
            "a recent SUCCESS run processed 0 rows, and every run in the training period had rows"
        ),
        todo=(
            "The node succeeded on an empty input: check the upstream table or file for the "
            "run's time and re-run the node once it has data."
        ),
    ),
    KindInfo(
        "duration_anomaly",
        "Duration anomaly",
        meaning=(
            "duration_ms of a recent SUCCESS run is more than SENSITIVITY standard deviations "
            "from the node's training mean (and differs by at least MIN_CHANGE and 1 s)"
        ),
        todo=(
            "Look at the run's trace for the slow step; check input growth (volume), locks "
            "and the cluster's load at that time."
        ),
    ),
    KindInfo(
        "freshness",
        "Stale node",
        meaning=(
            "no SUCCESS for longer than the node's learned cadence allows (FRESHNESS_FACTOR x "
            "its mean interval between successes), or than its declared SLA"
        ),
        todo=(
            "Check whether the schedule still runs the node and whether its recent runs "
            "failed (failure_streak); `odibi-observe runs --node NODE` lists them."
        ),
    ),
    KindInfo(
        "failure_streak",
        "Failure streak",
        meaning=(
            "the node's last FAILURE_STREAK or more runs failed or crashed, with no SUCCESS "
            "in between"
        ),
        todo=(
            "Read the first failure's error and suggestions (`odibi-observe runs --node NODE "
            "--failures`); retries will not fix it."
        ),
    ),
    KindInfo(
        "flaky",
        "Flaky node",
        meaning=(
            "SUCCESS runs that needed a retry (attempt > 1): at least FLAKY_MIN in the "
            "training and detection periods, one of them recent"
        ),
        todo=(
            "The node succeeds only on a second try: find the transient error in the failed "
            "attempts (timeouts, locks, rate limits) before it becomes a failure."
        ),
    ),
    KindInfo(
        "memory_growth",
        "Memory growth",
        meaning=(
            "the least-squares trend of peak_rss_bytes over the node's last MEMORY_RUNS "
            "SUCCESS runs reaches MEMORY_THRESHOLD of its memory_limit_bytes within "
            "MEMORY_HORIZON runs (growing by at least MIN_CHANGE over the runs fitted), or "
            "its last run is already above it; nodes without a limit are not judged"
        ),
        todo=(
            "The node will be OOM-killed soon: find what grows (an input that grows, a whole "
            "table loaded into pandas, a cache); process it in chunks, or raise the "
            "container's memory limit before it crashes."
        ),
    ),
)


@dataclass(frozen=True)
class NodeRule:
    """One ``[[node]]`` entry of the health config file: a declared SLA, or kinds to skip."""

    pipeline: str
    node: str
    freshness_sla: timedelta | None = None
    freshness_off: bool = False
    skip: frozenset[str] = frozenset()

    def matches(self, pipeline: str, node: str) -> bool:
        return fnmatch.fnmatchcase(pipeline, self.pipeline) and fnmatch.fnmatchcase(node, self.node)

    @property
    def exact(self) -> bool:
        return not any(c in self.pipeline + self.node for c in "*?[")


def load_rules(path: str | Path) -> tuple[NodeRule, ...]:
    """The rules of a TOML config file (see docs/health.md); :class:`ConfigurationError` on
    anything it cannot take, naming the entry, so a typo never silently disables a check."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"health config {path}: {exc}") from None
    unknown_top = set(data) - {"node"}
    if unknown_top:
        raise ConfigurationError(
            f"health config {path}: unknown key(s) "
            f"{', '.join(sorted(unknown_top))} (expected [[node]] entries)"
        )
    entries = data.get("node", [])
    if not isinstance(entries, list):
        raise ConfigurationError(f"health config {path}: 'node' must be [[node]] entries")
    return tuple(_rule(path, i, entry) for i, entry in enumerate(entries, start=1))


def _rule(path: str | Path, number: int, entry: Any) -> NodeRule:
    where = f"health config {path}, [[node]] #{number}"
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: not a table")
    unknown = set(entry) - {"pipeline", "node", "freshness_sla", "skip"}
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    pipeline, node = entry.get("pipeline", "*"), entry.get("node", "*")
    if not isinstance(pipeline, str) or not isinstance(node, str):
        raise ConfigurationError(f"{where}: pipeline and node must be strings (globs allowed)")
    sla, off = None, False
    raw = entry.get("freshness_sla")
    if raw is not None:
        if str(raw).strip().lower() == "off":
            off = True
        else:
            try:
                sla = timedelta(seconds=parse_duration(str(raw)))
            except ValueError as exc:
                raise ConfigurationError(f'{where}: freshness_sla: {exc} (or "off")') from None
    skip = entry.get("skip", [])
    if not isinstance(skip, list) or any(k not in HEALTH_FINDING_KINDS for k in skip):
        raise ConfigurationError(
            f"{where}: skip must list finding kinds of {', '.join(HEALTH_FINDING_KINDS)}"
        )
    return NodeRule(pipeline, node, sla, off, frozenset(skip))


@dataclass(frozen=True)
class HealthOptions:
    """How a pass judges; the defaults are documented in docs/health.md."""

    sensitivity: float = 3.0
    training: timedelta = timedelta(days=14)
    min_points: int = 7
    volume_direction: str = "both"
    duration_direction: str = "spike"
    min_change: float = 0.10
    duration_min_ms: float = 1000.0
    seasonality: str = "none"
    freshness_factor: float = 3.0
    freshness_min: timedelta = timedelta(hours=1)
    failure_streak: int = 3
    flaky_min: int = 2
    memory_runs: int = 20
    memory_horizon: int = 10
    memory_threshold: float = 0.90
    rules: tuple[NodeRule, ...] = ()

    def __post_init__(self) -> None:
        if self.volume_direction not in DIRECTIONS or self.duration_direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if self.seasonality not in SEASONALITIES:
            raise ValueError(f"seasonality must be one of {', '.join(SEASONALITIES)}")
        if not (
            self.sensitivity > 0
            and self.min_points >= 2
            and self.failure_streak >= 1
            and self.flaky_min >= 1
            and self.training > timedelta(0)
        ):
            raise ValueError(
                "sensitivity, training, min points, failure streak and flaky "
                "minimum must be positive (min points at least 2)"
            )
        if not (
            self.memory_runs >= 2 and self.memory_horizon >= 0 and 0 < self.memory_threshold <= 1
        ):
            raise ValueError(
                "memory runs must be at least 2, the memory horizon not "
                "negative and the memory threshold in (0, 1]"
            )

    @property
    def training_span(self) -> timedelta:
        """The training period: with day-of-week seasonality it is 7 times longer (as in
        elementary), or each weekday would have two points of history."""
        return self.training * 7 if self.seasonality == "day_of_week" else self.training

    def rule(self, pipeline: str, node: str) -> NodeRule | None:
        """The first rule that matches the node, if any."""
        return next((r for r in self.rules if r.matches(pipeline, node)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sensitivity": self.sensitivity,
            "training_days": self.training / timedelta(days=1),
            "training_span_days": self.training_span / timedelta(days=1),
            "min_points": self.min_points,
            "volume_direction": self.volume_direction,
            "duration_direction": self.duration_direction,
            "min_change": self.min_change,
            "duration_min_ms": self.duration_min_ms,
            "seasonality": self.seasonality,
            "freshness_factor": self.freshness_factor,
            "freshness_min_seconds": self.freshness_min.total_seconds(),
            "failure_streak": self.failure_streak,
            "flaky_min": self.flaky_min,
            "memory_runs": self.memory_runs,
            "memory_horizon": self.memory_horizon,
            "memory_threshold": self.memory_threshold,
            "rules": len(self.rules),
        }


def finite(value: float | None) -> float | None:
    """A float JSON can hold: an infinite z-score (a constant history) becomes null."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)


#: A finding's JSON: its fields in this order, times as ISO text, floats JSON-safe.
_FINDING_JSON: Final = (
    "kind",
    "pipeline",
    "node",
    "state",
    "finding_id",
    "opened_at",
    "passes",
    "score",
    "baseline",
    "value",
    "detail",
    "evidence",
    "runs_total",
    "runs",
)


@dataclass
class Finding:
    """One problem of one node: ``(kind, pipeline, node)`` with the evidence.

    ``score`` is the size of the problem in the kind's own unit: |z| for the anomalies
    (infinite when the history never varied), how many times the allowed age the node's
    staleness is for ``freshness``, the number of runs for ``failure_streak`` and ``flaky``.
    ``state`` is filled in by recording: ``new`` (opened by this pass), ``open`` (seen by an
    earlier pass too, ``opened_at`` says since when) or ``unrecorded`` (no findings table).
    """

    kind: str
    pipeline: str
    node: str
    score: float
    baseline: float | None
    value: float | None
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    runs_total: int = 0
    state: str = "unrecorded"
    opened_at: datetime | None = None
    passes: int = 1
    finding_id: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.pipeline, self.node)

    def to_dict(self) -> dict[str, Any]:
        return as_json(
            self,
            _FINDING_JSON,
            opened_at=iso(self.opened_at),
            score=finite(self.score),
            baseline=finite(self.baseline),
            value=finite(self.value),
        )


@dataclass
class HealthResult:
    """Everything one pass found, and what it looked at."""

    window: Window
    training_start: datetime
    options: HealthOptions
    catalog: str
    findings: list[Finding] = field(default_factory=list)
    resolved: list[dict[str, Any]] = field(default_factory=list)
    nodes_seen: int = 0
    nodes_judged: int = 0
    recent_runs: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    recorded: bool = False

    def by_kind(self) -> dict[str, int]:
        counts = dict.fromkeys(HEALTH_FINDING_KINDS, 0)
        for f in self.findings:
            counts[f.kind] += 1
        return counts

    def opened_by_kind(self) -> dict[str, int]:
        counts = dict.fromkeys(HEALTH_FINDING_KINDS, 0)
        for f in self.findings:
            if f.state == "new":
                counts[f.kind] += 1
        return counts

    def resolved_by_kind(self) -> dict[str, int]:
        counts = dict.fromkeys(HEALTH_FINDING_KINDS, 0)
        for r in self.resolved:
            counts[str(r["kind"])] = counts.get(str(r["kind"]), 0) + 1
        return counts

    def sorted_findings(self) -> list[Finding]:
        """Kind order first, then the largest score."""
        order = {k: i for i, k in enumerate(HEALTH_FINDING_KINDS)}
        return sorted(
            self.findings, key=lambda f: (order[f.kind], -_sort_score(f.score), f.pipeline, f.node)
        )


def _sort_score(score: float) -> float:
    return 1e300 if math.isinf(score) else score
