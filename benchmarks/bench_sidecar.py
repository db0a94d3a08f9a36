"""The sidecar's two hot paths, each against a baseline measured in the same run.

(a) **Ingest.** N runs are written to a spool by a writer (a STARTED and a FINISHED event per
    run, as a pipeline in ``mode="sidecar"`` writes them), then a real :class:`Sidecar` — its
    pump thread and the catalog sink, nothing else — delivers them into ``meta_runs``; timed
    from ``start()`` until every event is acknowledged. Baseline: a raw SQLAlchemy executemany
    ``INSERT`` of the very same final rows into the same database, in transactions of 512
    rows — as many runs per transaction as the sidecar's default batch of 1024 events holds.
    Reported as runs/s and sidecar/raw; target >= 0.5 on SQLite and on PostgreSQL. The raw
    insert has nothing to decode, nothing to coalesce and no conflict handling; the sidecar
    reads the spool, checks frames, decodes JSON, coalesces a run's two events and upserts by
    ``run_id``.
(b) **Scrape.** ``GET /metrics`` from the sidecar's HTTP server over a kept-alive connection,
    with 10 000 series in its registry, against ``prometheus_client.generate_latest`` of the
    same registry called directly. Reported as sidecar/baseline (1.0 = free; target: close).

    python benchmarks/bench_sidecar.py [--runs 20000] [--rounds 3] [--pg URL] [--series 10000]

``--pg`` is a PostgreSQL server URL whose role may ``CREATE DATABASE``: a scratch database is
created for the run and dropped afterwards (nothing else is touched).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, generate_latest

from odibi_observe.catalog.schema import meta_runs, record_to_row
from odibi_observe.catalog.store import CatalogStore, create_catalog_engine
from odibi_observe.config import Settings
from odibi_observe.conventions import RunStatus
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sidecar import SidecarOptions
from odibi_observe.sidecar.server import SidecarServer
from odibi_observe.sidecar.service import Sidecar
from odibi_observe.sinks.base import Sink
from odibi_observe.sinks.catalog import CatalogSink
from odibi_observe.spool import Spool

BATCH = 512


def make_runs(n: int) -> list[RunRecord]:
    start = time.time_ns()
    runs = []
    for i in range(n):
        started = start + i * 1_000_000
        runs.append(
            RunRecord(
                run_id=str(uuid.uuid4()),
                project="bench",
                pipeline=f"pipeline_{i % 20}",
                node=f"node_{i % 200}",
                environment="bench",
                status=RunStatus.SUCCESS,
                started_ns=started,
                ended_ns=started + 12_345_678,
                rows_processed=i,
                trace_id=uuid.uuid4().hex,
                span_id=uuid.uuid4().hex[:16],
                host="bench-host",
                pid=4242,
                pipeline_run_id=f"prun-{i // 200}",
            )
        )
    return runs


def clear(url: str) -> None:
    engine = create_catalog_engine(url)
    with engine.begin() as conn:
        conn.execute(meta_runs.delete())
    engine.dispose()


def raw_insert(url: str, runs: list[RunRecord]) -> float:
    """Seconds for executemany INSERTs of the runs' final rows, 512 per transaction."""
    rows = [record_to_row(r, kind=EventKind.FINISHED) for r in runs]
    engine = create_catalog_engine(url)
    insert = meta_runs.insert()
    with engine.connect() as conn:  # connect before timing: a pool warm-up is not a cost
        conn.execute(sa.select(1))
    start = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        with engine.begin() as conn:
            conn.execute(insert, rows[i : i + BATCH])
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed


def sidecar_ingest(url: str, runs: list[RunRecord], workdir: Path) -> float:
    """Seconds for a Sidecar's pump + catalog sink to deliver the spooled runs."""
    spool_dir = workdir / f"spool-{uuid.uuid4().hex[:8]}"
    writer = Spool(spool_dir, fsync="never", max_bytes=2**34)
    for record in runs:
        running = record.finished(status=RunStatus.RUNNING, ended_ns=None, rows_processed=None)
        writer.append(RunEvent(EventKind.STARTED, running).to_json().encode())
        writer.append(RunEvent(EventKind.FINISHED, record).to_json().encode())
    writer.close()
    expected = 2 * len(runs)
    sink = _Done(CatalogSink(url), len(runs))
    sink.inner.store.ensure_schema()
    sidecar = Sidecar(
        SidecarOptions(
            catalog_url=url,
            spool_dir=str(spool_dir),
            listen_port=0,
            sweep_interval=0,
            gc_interval=0,
        ),
        settings=Settings(catalog_url=url, handle_sigterm=False),
        sinks=[sink],
    )
    start = time.perf_counter()
    sidecar.start()
    # Waiting on an event, not polling: a polling thread takes the GIL from the pump every
    # time it wakes, and would slow down what it measures.
    sink.done.wait(600)
    while sidecar.pump.acknowledged().get("catalog", 0) < expected:  # the last ack follows
        time.sleep(0.0005)
    elapsed = time.perf_counter() - start
    sidecar.stop(timeout=5)
    store = CatalogStore(url)
    count = store.count()
    store.dispose()
    if count != len(runs):
        raise RuntimeError(f"sidecar wrote {count} rows, expected {len(runs)}")
    return elapsed


class _Done(Sink):
    """The catalog sink, setting ``done`` once the ends of ``expected`` runs were exported."""

    name = "catalog"
    kinds = CatalogSink.kinds
    coalesces_starts = CatalogSink.coalesces_starts

    def __init__(self, inner: CatalogSink, expected: int) -> None:
        self.inner = inner
        self.expected = expected
        self.finished = 0
        self.done = threading.Event()

    def export(self, events: Sequence[RunEvent]) -> None:
        self.inner.export(events)
        self.finished += sum(1 for e in events if e.kind is EventKind.FINISHED)
        if self.finished >= self.expected:
            self.done.set()

    def shutdown(self) -> None:
        self.inner.shutdown()


def ingest(name: str, url: str, n: int, rounds: int, workdir: Path) -> float:
    CatalogStore(url).ensure_schema()
    raw_s, side_s = [], []
    for _ in range(rounds):  # interleaved, so drift in the machine hits both alike
        runs = make_runs(n)
        clear(url)
        raw_s.append(raw_insert(url, runs))
        clear(url)
        side_s.append(sidecar_ingest(url, runs, workdir))
    raw, side = statistics.median(raw_s), statistics.median(side_s)
    ratio = raw / side
    print(
        f"  {name:<10}  raw INSERT {n / raw:>9,.0f} runs/s   sidecar {n / side:>9,.0f} runs/s"
        f"   sidecar/raw {ratio:.2f}   target >= 0.50  {'met' if ratio >= 0.5 else 'MISSED'}"
    )
    return ratio


@contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    name = f"odibi_observe_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def scrape(series: int, repeats: int) -> float:
    registry = CollectorRegistry()
    counter = Counter("bench_series", "One series per label value.", ["series"], registry=registry)
    for i in range(series):
        counter.labels(series=f"s{i:05d}").inc(i)
    server = SidecarServer("127.0.0.1", 0, registry=registry).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def over_http() -> bytes:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        return response.read()

    def best(fn: Callable[[], Any]) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    try:
        assert over_http() == generate_latest(registry)
        base = best(lambda: generate_latest(registry))
        http_s = best(over_http)
    finally:
        conn.close()
        server.stop()
    ratio = http_s / base
    print(
        f"  {series:,} series ({len(generate_latest(registry)) / 1e6:.1f} MB): "
        f"generate_latest {base * 1000:.1f} ms   GET /metrics {http_s * 1000:.1f} ms   "
        f"sidecar/baseline {ratio:.2f}"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg", metavar="URL", help="also measure PostgreSQL (scratch database)")
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=15)
    args = parser.parse_args()
    print(f"(a) ingest of {args.runs:,} runs (2 spooled events each), median of {args.rounds}:")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ingest("SQLite", f"sqlite:///{workdir}/catalog.db", args.runs, args.rounds, workdir)
        if args.pg:
            with scratch_postgres(args.pg) as url:
                ingest("PostgreSQL", url, args.runs, args.rounds, workdir)
    print(f"(b) /metrics scrape, median of {args.scrapes}:")
    scrape(args.series, args.scrapes)


if __name__ == "__main__":
    main()
