"""Where the cost of one node run goes: the node's own path, then each sink's export.

Records N runs of an empty node into an in-memory sink (inline mode, so the figure is the
instrumentation's own path on the caller's thread), then replays the very same events into
each real sink in batches of 512 — as the bus delivers them — and reports µs per run. The
figures add up to roughly the ``total`` of ``bench_overhead.py``; use this one to see which
part to work on.

    python benchmarks/bench_sinks.py [--runs 5000] [--pg URL]

``--spans`` instead times the OTel sink's per-span steps alone — the span attributes, the
whole span, its OTLP/JSON encoding and ``OtelSink.export`` to a traces file — in CPU time of
the measuring thread (best of ``--repeat``), which a loaded machine disturbs far less than
elapsed time. Run it with ``PYTHONPATH`` at two source trees to compare them:

    python benchmarks/bench_sinks.py --spans --runs 20000 [--repeat 9]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe._otlp_json import OtlpJsonFileSpanExporter, encode_spans_json
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sinks.base import Sink
from odibi_observe.sinks.catalog import CatalogSink
from odibi_observe.sinks.otel import OtelSink
from odibi_observe.sinks.otel.spans import record_to_span, span_attributes
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


def _cpu_per_run(step: Callable[[], object], n: int, repeat: int) -> float:
    """Best thread CPU time of one call of ``step`` over ``repeat`` calls, per run."""
    return min(timeit.repeat(step, number=1, repeat=repeat, timer=time.thread_time)) / n


def span_steps(events: Sequence[RunEvent], n: int, repeat: int, workdir: Path) -> dict[str, float]:
    """The OTel sink's per-span steps on the FINISHED events of ``n`` runs, in s of CPU/run."""
    finished = [e for e in events if e.kind is EventKind.FINISHED]
    records = [e.record for e in finished]
    base = OtelSink(install_global=False, metrics=False).resource
    spans = [record_to_span(r, base) for r in records]

    def export_all() -> None:
        # A new sink each time: the sink skips spans a destination already has.
        sink = OtelSink(
            traces_file=str(workdir / f"spans-{time.monotonic_ns()}.jsonl"),
            install_global=False,
            metrics=False,
        )
        start = time.thread_time()
        for i in range(0, len(finished), BATCH):
            sink.export(finished[i : i + BATCH])
        times.append(time.thread_time() - start)
        sink.shutdown()

    times: list[float] = []
    for _ in range(repeat):
        export_all()
    return {
        "span_attributes": _cpu_per_run(lambda: [span_attributes(r) for r in records], n, repeat),
        "record_to_span": _cpu_per_run(
            lambda: [record_to_span(r, base) for r in records], n, repeat
        ),
        "encode_spans_json": _cpu_per_run(
            lambda: [encode_spans_json(spans[i : i + BATCH]) for i in range(0, n, BATCH)],
            n,
            repeat,
        ),
        "OtelSink.export, traces file": min(times) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--pg", metavar="URL", help="also measure a PostgreSQL catalog")
    parser.add_argument("--spans", action="store_true", help="time the OTel sink's span steps")
    parser.add_argument("--repeat", type=int, default=9, help="repetitions for --spans")
    args = parser.parse_args()
    n = args.runs
    per_call, events = node_path(n)
    if args.spans:
        with tempfile.TemporaryDirectory() as tmp:
            steps = span_steps(events, n, args.repeat, Path(tmp))
        print(f"µs of CPU per node run ({n} runs, batches of {BATCH}, best of {args.repeat}):")
        for name, seconds in steps.items():
            print(f"  {name:<36} {seconds * 1e6:8.2f}")
        return
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
