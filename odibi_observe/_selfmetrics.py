"""Metrics odibi-observe keeps about itself: sink errors, drops, clamps, overflow.

An observability tool that fails silently is worse than none, so every bounded buffer, every
clamp and every sink failure is counted here (names from :data:`conventions.SELF_METRICS`) in
the same registry the Prometheus sink exposes. The registry is injectable so that each test (and
each :class:`~odibi_observe.Observer`) has its own, the way ``prometheus_client`` intends.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from odibi_observe.conventions import SELF_METRICS, Metric

log = logging.getLogger("odibi_observe")


def _counter(metric: Metric, registry: CollectorRegistry) -> Counter:
    return Counter(metric.prometheus_base, metric.description, metric.labels, registry=registry)


class RateLimitedLog:
    """WARNING at most once a minute per key, DEBUG otherwise.

    A pipeline that runs a million nodes during a catalog outage must not write a million
    identical warnings; the counters carry the totals.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def warn(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            loud = last is None or now - last >= 60.0
            if loud:
                self._last[key] = now
        log.log(logging.WARNING if loud else logging.DEBUG, message, *args)

    def after_fork(self) -> None:
        """A fresh lock in a forked child (the parent's may have been held by another thread)."""
        self._lock = threading.Lock()


#: For code with no :class:`SelfMonitor` of its own (the spool, the OTel exporters, the
#: sidecar's HTTP listener): one limiter, keys told apart by their prefix.
_shared = RateLimitedLog()
warn_once_per_minute = _shared.warn

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_shared.after_fork)


class SelfMonitor:
    """Counters for the failure paths of the bus and the sinks, with rate-limited logging."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.sink_errors = _counter(SELF_METRICS.sink_errors, self.registry)
        self.events_dropped = _counter(SELF_METRICS.events_dropped, self.registry)
        self.label_overflow = _counter(SELF_METRICS.label_overflow, self.registry)
        self.invalid_input = _counter(SELF_METRICS.invalid_input, self.registry)
        self.dead_letter = _counter(SELF_METRICS.dead_letter, self.registry)
        self.queue_size = Gauge(
            SELF_METRICS.queue_size.prometheus,
            SELF_METRICS.queue_size.description,
            SELF_METRICS.queue_size.labels,
            registry=self.registry,
        )
        self._log = RateLimitedLog()

    def sink_error(self, sink: str) -> None:
        self.sink_errors.labels(sink=sink).inc()

    def dropped(self, sink: str, reason: str, count: int = 1) -> None:
        self.events_dropped.labels(sink=sink, reason=reason).inc(count)
        self.warn_once_per_minute(
            f"drop:{sink}:{reason}",
            "odibi-observe dropped %d event(s) for sink %r: %s "
            f"(counted in {SELF_METRICS.events_dropped.prometheus})",
            count,
            sink,
            reason,
        )

    def dead_lettered(self, sink: str, count: int = 1) -> None:
        """Count records ``sink`` can never export (see :mod:`odibi_observe._deadletter`)."""
        self.dead_letter.labels(sink=sink).inc(count)

    def overflow(self, metric: str) -> None:
        self.label_overflow.labels(metric=metric).inc()

    def invalid(self, field: str, message: str) -> None:
        """Count a clamped input and say once a minute what was clamped and why."""
        self.invalid_input.labels(field=field).inc()
        self.warn_once_per_minute(f"invalid:{field}", "odibi-observe: %s", message)

    def warn_once_per_minute(self, key: str, message: str, *args: object) -> None:
        """Log at WARNING at most once a minute per ``key`` (see :class:`RateLimitedLog`)."""
        self._log.warn(key, message, *args)
