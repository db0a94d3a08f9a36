"""Per-run cost of @observe_node against a bare OTel span and a naive catalog INSERT.

Three ways to record one node run, measured in the same process, interleaved, as ratios:

(a) ``otel``  — a bare OpenTelemetry ``start_as_current_span`` with the same attributes, an SDK
    ``TracerProvider`` and a ``BatchSpanProcessor`` writing OTLP-JSON lines to a file;
(b) ``observe`` — ``@observe_node`` in ``background`` mode with all three sinks: SQLite
    catalog, the OTel sink writing the same OTLP-JSON file format, Prometheus;
(c) ``naive`` — what pipelines do today: one synchronous ``INSERT`` into ``meta_runs`` plus
    ``COMMIT`` per run, on a default SQLite database;
(e) ``lineage`` — (b) with a fourth sink, OpenLineage (the official client's ``file``
    transport, appending a START and a COMPLETE event per run);
(d) ``sidecar`` — ``@observe_node`` in ``sidecar`` mode: each event appended to the write-ahead
    spool on the caller's thread (fsync ``interval``), nothing else; the sidecar process does
    the rest and is not part of the pipeline's cost.

Each variant records N runs of an empty node. Two figures per variant:

* ``call`` — the loop alone: what a pipeline's node calls are slowed by. Background threads
  (the BatchSpanProcessor's, the bus's) run during the loop and take the GIL too, so their
  work is largely inside this figure already;
* ``total`` — the loop plus the final flush, until every record is in its sink: the whole
  CPU cost of recording N runs, nothing deferred past the measurement.

Figures are medians of R interleaved rounds; the ratios are what to compare across machines.

    python benchmarks/bench_overhead.py [--runs 5000] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe._otlp_json import OtlpJsonFileSpanExporter

ATTRIBUTES: dict[str, str | int] = {
    "odibi.project": "bench",
    "odibi.pipeline": "bench",
    "odibi.node": "node",
    "odibi.environment": "bench",
    "odibi.status": "SUCCESS",
    "odibi.rows_processed": 0,
    "odibi.duration_ms": 0,
    "odibi.attempt": 1,
}


def bench_otel(n: int, workdir: Path) -> tuple[float, float]:
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    # A queue that holds every span: with the default 2048 the processor drops spans in a
    # tight loop, and a variant that drops work would look cheaper than it is.
    provider.add_span_processor(
        BatchSpanProcessor(
            OtlpJsonFileSpanExporter(str(workdir / f"otel-{uuid.uuid4().hex}.jsonl")),
            max_queue_size=n + 1,
        )
    )
    tracer = provider.get_tracer("bench")

    def node() -> None:
        return None

    start = time.perf_counter()
    for _ in range(n):
        with tracer.start_as_current_span(
            "node node", attributes={**ATTRIBUTES, "odibi.run_id": str(uuid.uuid4())}
        ):
            node()
    loop = time.perf_counter() - start
    provider.force_flush()
    elapsed = time.perf_counter() - start
    provider.shutdown()
    return loop, elapsed


def _time_decorated_node(n: int, name: str, **settings: object) -> tuple[float, float]:
    """Configure with ``settings``, then time ``n`` calls of an empty ``@observe_node`` and the
    flush after them. One warm-up run first: creating a catalog or a spool is a one-time cost,
    not a per-run one."""
    oo.configure(
        project="bench",
        environment="bench",
        registry=CollectorRegistry(),
        handle_sigterm=False,
        strict=True,
        **settings,  # type: ignore[arg-type]
    )
    with oo.node_run("warmup", "warmup"):
        pass
    oo.flush(30)

    @oo.observe_node(pipeline="bench")
    def node() -> None:
        return None

    start = time.perf_counter()
    for _ in range(n):
        node()
    loop = time.perf_counter() - start
    ok = oo.flush(120)
    elapsed = time.perf_counter() - start
    oo.shutdown()
    if not ok:
        raise RuntimeError(f"{name} variant did not flush")
    return loop, elapsed


def bench_observe(n: int, workdir: Path) -> tuple[float, float]:
    tag = uuid.uuid4().hex
    return _time_decorated_node(
        n,
        "observe",
        mode="background",
        catalog_url=f"sqlite:///{workdir}/observe-{tag}.db",
        traces_file=str(workdir / f"observe-{tag}.jsonl"),
        otel_metrics=False,
        max_queue=2 * n + 10,
    )


def bench_lineage(n: int, workdir: Path) -> tuple[float, float]:
    """(b) plus the OpenLineage sink, configured the OpenLineage way (its variables)."""
    import os

    tag = uuid.uuid4().hex
    events = workdir / f"lineage-{tag}.jsonl"
    transport = {
        "OPENLINEAGE__TRANSPORT__TYPE": "file",
        "OPENLINEAGE__TRANSPORT__LOG_FILE_PATH": str(events),
        "OPENLINEAGE__TRANSPORT__APPEND": "true",
    }
    os.environ.update(transport)
    try:
        timed = _time_decorated_node(
            n,
            "lineage",
            mode="background",
            catalog_url=f"sqlite:///{workdir}/lineage-{tag}.db",
            traces_file=str(workdir / f"lineage-{tag}.jsonl.otlp"),
            otel_metrics=False,
            max_queue=2 * n + 10,
            openlineage=True,
        )
    finally:
        for key in transport:
            os.environ.pop(key, None)
    # A variant that dropped its events would look cheaper than it is: START and COMPLETE
    # of every run (and of the warm-up run) must be in the file.
    written = sum(1 for _ in events.open("rb"))
    if written != 2 * (n + 1):
        raise RuntimeError(f"lineage variant wrote {written} events, not {2 * (n + 1)}")
    return timed


def bench_sidecar(n: int, workdir: Path) -> tuple[float, float]:
    return _time_decorated_node(
        n,
        "sidecar",
        mode="sidecar",
        spool_dir=workdir / f"spool-{uuid.uuid4().hex}",
        spool_max_bytes=2**34,
    )


def bench_naive(n: int, workdir: Path) -> tuple[float, float]:
    engine = sa.create_engine(f"sqlite:///{workdir}/naive-{uuid.uuid4().hex}.db")
    meta = sa.MetaData()
    runs = sa.Table(
        "meta_runs",
        meta,
        sa.Column("run_id", sa.String(100), primary_key=True),
        sa.Column("project", sa.String(255)),
        sa.Column("pipeline_name", sa.String(255)),
        sa.Column("node_name", sa.String(255)),
        sa.Column("status", sa.String(50)),
        sa.Column("rows_processed", sa.BigInteger),
        sa.Column("duration_ms", sa.BigInteger),
        sa.Column("metrics_json", sa.Text),
        sa.Column("environment", sa.String(255)),
        sa.Column("timestamp", sa.DateTime(timezone=True)),
        sa.Column("date", sa.Date),
    )
    meta.create_all(engine)

    def node() -> None:
        return None

    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        node()
        now = datetime.now(timezone.utc)
        with engine.begin() as conn:  # INSERT + COMMIT per run
            conn.execute(
                runs.insert().values(
                    run_id=str(uuid.uuid4()),
                    project="bench",
                    pipeline_name="bench",
                    node_name="node",
                    status="SUCCESS",
                    rows_processed=0,
                    duration_ms=int((time.perf_counter() - t0) * 1000),
                    metrics_json="{}",
                    environment="bench",
                    timestamp=now,
                    date=now.date(),
                )
            )
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed, elapsed  # synchronous: nothing is left to flush


VARIANTS: dict[str, Callable[[int, Path], tuple[float, float]]] = {
    "otel": bench_otel,
    "observe": bench_observe,
    "naive": bench_naive,
    "sidecar": bench_sidecar,
    "lineage": bench_lineage,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5000, help="node runs per variant and round")
    parser.add_argument(
        "--naive-runs",
        type=int,
        default=1000,
        help="runs for the naive variant (it is slow; per-run cost is compared)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    calls: dict[str, list[float]] = {k: [] for k in VARIANTS}
    totals: dict[str, list[float]] = {k: [] for k in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, fn in VARIANTS.items():
                n = args.naive_runs if name == "naive" else args.runs
                loop, whole = fn(n, Path(tmp))
                calls[name].append(loop / n)
                totals[name].append(whole / n)
    call = {k: statistics.median(v) for k, v in calls.items()}
    total = {k: statistics.median(v) for k, v in totals.items()}
    result: dict[str, Any] = {
        "call_us": {k: round(v * 1e6, 1) for k, v in call.items()},
        "total_us": {k: round(v * 1e6, 1) for k, v in total.items()},
        "b_over_a_call": round(call["observe"] / call["otel"], 2),
        "b_over_a_total": round(total["observe"] / total["otel"], 2),
        "c_over_b_call": round(call["naive"] / call["observe"], 1),
        "c_over_b_total": round(total["naive"] / total["observe"], 1),
        "d_over_a_call": round(call["sidecar"] / call["otel"], 2),
        "d_over_a_total": round(total["sidecar"] / total["otel"], 2),
        "e_over_a_call": round(call["lineage"] / call["otel"], 2),
        "e_over_a_total": round(total["lineage"] / total["otel"], 2),
        "runs": args.runs,
        "naive_runs": args.naive_runs,
        "rounds": args.rounds,
    }
    print(f"per node run, median of {args.rounds} rounds (µs):")
    print(f"  {'variant':<9} {'call':>8} {'total':>8}")
    for k in VARIANTS:
        print(f"  {k:<9} {result['call_us'][k]:>8.1f} {result['total_us'][k]:>8.1f}")
    print(
        f"(b)/(a) observe / bare otel span : call {result['b_over_a_call']:>5}   "
        f"total {result['b_over_a_total']:>5}   target <= 1.5"
    )
    print(
        f"(c)/(b) naive insert / observe   : call {result['c_over_b_call']:>5}   "
        f"total {result['c_over_b_total']:>5}   target >= 20"
    )
    print(
        f"(d)/(a) sidecar mode / bare otel : call {result['d_over_a_call']:>5}   "
        f"total {result['d_over_a_total']:>5}   target <= 2"
    )
    print(
        f"(e)/(a) four sinks / bare otel   : call {result['e_over_a_call']:>5}   "
        f"total {result['e_over_a_total']:>5}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
