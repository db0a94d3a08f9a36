"""Where the cost of one node run goes: the node's own path, then each sink's export.

Records N runs of an empty node into an in-memory sink (inline mode, so the figure is the
instrumentation's own path on the caller's thread), then replays the very same events into
each real sink in batches of 512 — as the bus delivers them — and reports µs per run. The
figures add up to roughly the ``total`` of ``bench_overhead.py``; use this one to see which
part to work on.

    python benchmarks/bench_sinks.py [--runs 5000] [--pg URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe._otlp_json import OtlpJsonFileSpanExporter
from odibi_observe.record import RunEvent
from odibi_observe.sinks.base import Sink
from odibi_observe.sinks.catalog import CatalogSink
from odibi_observe.sinks.otel import OtelSink
from odibi_observe.sinks.prometheus import PrometheusSink
from odibi_observe.testing import InMemorySink

BATCH = 512


def node_path(n: int) -> tuple[float, list[RunEvent]]:
    memory = InMemorySink()
    oo.configure(mode="inline", sinks=[memory], handle_sigterm=False, strict=True)

    @oo.observe_node(pipeline="bench")
    def node() -> None:
        return None

    start = time.perf_counter()
    for _ in range(n):
        node()
    elapsed = time.perf_counter() - start
    oo.shutdown()
    return elapsed / n, memory.events


def sink_cost(sink: Sink, events: Sequence[RunEvent], n: int) -> float:
    sink.export(events[:2])  # connect, migrate: one-time costs, not per run
    start = time.perf_counter()
    for i in range(0, len(events), BATCH):
        sink.export([e for e in events[i : i + BATCH] if e.kind in sink.kinds])
    sink.force_flush(60)
    elapsed = time.perf_counter() - start
    sink.shutdown()
    return elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--pg", metavar="URL", help="also measure a PostgreSQL catalog")
    args = parser.parse_args()
    n = args.runs
    per_call, events = node_path(n)
    with tempfile.TemporaryDirectory() as tmp:
        figures = {
            "node path (inline, in-memory sink)": per_call,
            "prometheus sink": sink_cost(PrometheusSink(CollectorRegistry()), events, n),
            "catalog sink, SQLite": sink_cost(CatalogSink(f"sqlite:///{tmp}/c.db"), events, n),
            "otel sink, OTLP-JSON file": sink_cost(
                OtelSink(
                    span_exporters=[OtlpJsonFileSpanExporter(str(Path(tmp) / "t.jsonl"))],
                    install_global=False,
                    metrics=False,
                ),
                events,
                n,
            ),
        }
        if args.pg:
            figures["catalog sink, PostgreSQL"] = sink_cost(CatalogSink(args.pg), events, n)
    print(f"µs per node run ({n} runs, batches of {BATCH}):")
    for name, seconds in figures.items():
        print(f"  {name:<36} {seconds * 1e6:8.1f}")


if __name__ == "__main__":
    main()
