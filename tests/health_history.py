"""Run histories for the data-health tests: steady nodes and planted problems, written through
the real catalog (:class:`~odibi_observe.catalog.CatalogStore`), spread over past days."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from odibi_observe.conventions import RunStatus
from odibi_observe.reconcile.model import Window
from odibi_observe.record import RunRecord
from tests.helpers import make_record
from tests.test_reconcile_support import write_catalog

SECOND = 1_000_000_000
HOUR = 3_600 * SECOND
DAY = 24 * HOUR
#: "Now" of every health test: whole seconds, so windows and runs line up exactly.
NOW_NS = (time.time_ns() // SECOND) * SECOND
NOW = datetime.fromtimestamp(NOW_NS / SECOND, tz=timezone.utc)


@dataclass
class Node:
    """A node's schedule and normal behaviour; ``plant(i, values)`` changes run ``i`` (0 is
    the newest, in the last 24 hours) by editing the ``values`` dict in place."""

    pipeline: str
    node: str
    every_ns: int = DAY
    runs: int = 16
    rows: float = 10_000
    rows_cv: float = 0.02
    duration_ms: float = 60_000
    duration_cv: float = 0.03
    first_ns: int = NOW_NS - 2 * HOUR
    #: Peak memory of every run and the limit it runs under (None: not recorded / no limit).
    peak_rss: float | None = None
    peak_rss_cv: float = 0.03
    memory_limit: int | None = None
    plant: Callable[[int, dict[str, Any]], None] | None = None
    extra: list[dict[str, Any]] = field(default_factory=list)


def records(nodes: list[Node], *, seed: int = 7) -> list[RunRecord]:
    """Every run of ``nodes``, newest first per node (seeded: the same history every time)."""
    rng = random.Random(seed)
    out = []
    for spec in nodes:
        for i in range(spec.runs):
            values: dict[str, Any] = {
                "started_ns": spec.first_ns - i * spec.every_ns,
                "rows": max(0, round(rng.gauss(spec.rows, spec.rows * spec.rows_cv))),
                "duration_ms": max(
                    1.0, rng.gauss(spec.duration_ms, spec.duration_ms * spec.duration_cv)
                ),
                "status": RunStatus.SUCCESS,
                "attempt": 1,
                "peak_rss": None
                if spec.peak_rss is None
                else max(1, round(rng.gauss(spec.peak_rss, spec.peak_rss * spec.peak_rss_cv))),
                "memory_limit": spec.memory_limit,
            }
            if spec.plant is not None:
                spec.plant(i, values)
            if values.get("skip"):
                continue
            out.append(_record(spec, values))
        out += [_record(spec, dict(values)) for values in spec.extra]
    return out


def _record(spec: Node, values: dict[str, Any]) -> RunRecord:
    status = values["status"]
    failed = status is not RunStatus.SUCCESS
    return make_record(
        pipeline=spec.pipeline,
        node=spec.node,
        status=status,
        rows=None if failed else values["rows"],
        duration_ns=int(values["duration_ms"] * 1_000_000),
        started_ns=values["started_ns"],
        attempt=values["attempt"],
        peak_rss_bytes=values.get("peak_rss"),
        memory_limit_bytes=values.get("memory_limit"),
        error_type="ValueError" if failed else None,
        error_message="upstream file missing" if failed else None,
    )


def write(url: str, nodes: list[Node], *, seed: int = 7) -> list[RunRecord]:
    """Write the history of ``nodes`` into the catalog at ``url`` (migrated to head)."""
    recs = records(nodes, seed=seed)
    write_catalog(url, recs).dispose()
    return recs


def last_day(now: datetime = NOW) -> Window:
    return Window.last(timedelta(hours=24), grace=timedelta(0), now=now)
