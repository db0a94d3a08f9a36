"""Data health from the run record: volume, duration, freshness, failure-streak, flakiness and
memory-growth findings, each node judged against its own history in ``meta_runs``
(``odibi-observe health``; docs/health.md)."""

from odibi_observe.health.detect import HealthError, detect, zscore
from odibi_observe.health.model import Finding, HealthOptions, HealthResult, load_rules

__all__ = [
    "Finding",
    "HealthError",
    "HealthOptions",
    "HealthResult",
    "detect",
    "load_rules",
    "zscore",
]
