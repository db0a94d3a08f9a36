"""The spool's own metrics: damage and rejection counters, and the directory gauges.

Several Spools (a writer and a reader in one process, tests) may share one Prometheus
registry, and a counter can be registered only once per registry; this module hands each
registry its one set. The gauges are directory facts that other processes change, so they
are computed when Prometheus scrapes rather than kept up to date by every append.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric as PromMetric

from odibi_observe._selfmetrics import log, warn_once_per_minute
from odibi_observe.conventions import SIDECAR_METRICS, Metric


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Directory totals (``bytes``, ``segments``) and this Spool's counters since it was made."""

    bytes: int
    segments: int
    corrupt_frames: int
    rejected: int
    damaged_regions: int = 0
    missing_segments: int = 0


class _Backlogged(Protocol):
    """A cursor as the backlog gauge sees it."""

    @property
    def name(self) -> str: ...

    def backlog(self) -> int: ...


class GaugedSpool(Protocol):
    """A spool as the gauges see it: its directory, its totals and its open cursors."""

    @property
    def directory(self) -> str: ...

    def stats(self) -> SpoolStats: ...

    def open_cursors(self) -> Sequence[_Backlogged]: ...


class SpoolGauges:
    """``odibi_observe_spool_bytes`` and ``..._spool_backlog_events{sink}``, computed per scrape.

    Both are directory facts (other processes write and acknowledge), so they are read when
    Prometheus asks rather than kept up to date by every append.
    """

    def __init__(self) -> None:
        self.spools: weakref.WeakSet[GaugedSpool] = weakref.WeakSet()

    def describe(self) -> Iterator[PromMetric]:
        yield GaugeMetricFamily(
            SIDECAR_METRICS.spool_bytes.prometheus, SIDECAR_METRICS.spool_bytes.description
        )
        yield GaugeMetricFamily(
            SIDECAR_METRICS.spool_backlog.prometheus,
            SIDECAR_METRICS.spool_backlog.description,
            labels=SIDECAR_METRICS.spool_backlog.labels,
        )

    def collect(self) -> Iterator[PromMetric]:
        size = GaugeMetricFamily(
            SIDECAR_METRICS.spool_bytes.prometheus, SIDECAR_METRICS.spool_bytes.description
        )
        backlog = GaugeMetricFamily(
            SIDECAR_METRICS.spool_backlog.prometheus,
            SIDECAR_METRICS.spool_backlog.description,
            labels=SIDECAR_METRICS.spool_backlog.labels,
        )
        total = 0
        seen_dirs: set[str] = set()
        seen_cursors: set[str] = set()
        for spool in list(self.spools):
            try:
                if spool.directory not in seen_dirs:
                    seen_dirs.add(spool.directory)
                    total += spool.stats().bytes
                for cursor in spool.open_cursors():
                    if cursor.name not in seen_cursors:
                        seen_cursors.add(cursor.name)
                        backlog.add_metric([cursor.name], cursor.backlog())
            except OSError as exc:
                warn_once_per_minute("spool:gauges", "odibi-observe: spool metrics: %s", exc)
        size.add_metric([], total)
        yield size
        yield backlog


@dataclass
class SpoolMetrics:
    """The counters and gauges of one registry."""

    corrupt: Counter
    rejected: Counter
    regions: Counter
    missing: Counter
    gauges: SpoolGauges


_metrics_lock = threading.Lock()
_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, SpoolMetrics] = (
    weakref.WeakKeyDictionary()
)


def _counter(metric: Metric, registry: CollectorRegistry) -> Counter:
    try:
        return Counter(metric.prometheus_base, metric.description, metric.labels, registry=registry)
    except ValueError as exc:  # registered by someone else: count privately, say so
        log.warning("odibi-observe: spool counter not exported: %s", exc)
        return Counter(metric.prometheus_base, metric.description, metric.labels, registry=None)


def metrics_for(registry: CollectorRegistry) -> SpoolMetrics:
    """The spool metrics of ``registry``, created once: several Spools may share a registry."""
    with _metrics_lock:
        found = _metrics_by_registry.get(registry)
        if found is not None:
            return found
        m = SIDECAR_METRICS
        corrupt, rejected, regions, missing = (
            _counter(metric, registry)
            for metric in (
                m.spool_corrupt,
                m.spool_rejected,
                m.spool_damaged_regions,
                m.spool_missing_segments,
            )
        )
        gauges = SpoolGauges()
        try:
            registry.register(gauges)
        except ValueError as exc:
            log.warning("odibi-observe: spool gauges not exported: %s", exc)
        found = _metrics_by_registry[registry] = SpoolMetrics(
            corrupt, rejected, regions, missing, gauges
        )
        return found


def after_fork_in_child() -> None:
    """A fresh lock for the registry table in a forked child (called at fork by the Spool)."""
    global _metrics_lock
    _metrics_lock = threading.Lock()
