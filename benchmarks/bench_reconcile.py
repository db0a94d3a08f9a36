"""Reconciliation at scale: odibi-observe's streaming engine against a naive baseline.

For each ``--runs N`` this generates a window of N node runs — the catalog in SQLite (written by
:class:`~odibi_observe.catalog.CatalogStore`), the traces as gzip-compressed OTLP-JSON lines
files rotated every 100 000 spans, 512 spans per line as a Collector batches them, with a
pipeline span (not a node span) every 20 — and plants discrepancies of every kind SQLite can
hold (``duplicate_in_catalog`` needs a table without a primary key), plus things that must
*not* be reported: failed runs, the same span delivered twice, non-node spans. Then, each in a
subprocess of its own so that peak RSS is its own:

* ``odibi-observe reconcile`` (the CLI, JSON report, no recording);
* a naive baseline: ``json.loads`` every line of every file into memory, build a DataFrame of
  the node spans, ``pandas.read_sql`` the whole catalog, ``merge`` them and compare columns.

It prints wall time, CPU time and peak RSS (``ru_maxrss`` of the child, plus that of the
process the engine reads trace files in, as if both peaked at once) and checks that the report names
every planted discrepancy and nothing else (the baseline's answer is checked too, so the
comparison is between two correct programs). Datasets are kept in ``--work`` and reused.

    python benchmarks/bench_reconcile.py --runs 1000000 --runs 2000000
    python benchmarks/bench_reconcile.py --runs 100000 --baseline-max 100000   # quick look

Targets: 1M runs in <= 60 s and <= 1 GiB, >= 5x faster than the baseline; 2M in <= 2.2x the
time of 1M. The baseline holds every decoded request in memory (~10 GB at 1M runs), so it only
runs up to ``--baseline-max`` runs and only when the machine has the memory free.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SPANS_PER_LINE = 512
SPANS_PER_FILE = 100_000
PIPELINES = ("daily_sales", "fx_rates", "inventory", "crm_sync", "billing", "audit")
NODES = ("ingest", "clean", "enrich", "aggregate", "publish")
HOUR_NS = 3_600 * 1_000_000_000


# ------------------------------------------------------------------------------- generation


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _kv(key: str, value: str) -> str:
    return f'{{"key":"{key}","value":{{"stringValue":"{value}"}}}}'


def _ki(key: str, value: int) -> str:
    return f'{{"key":"{key}","value":{{"intValue":"{value}"}}}}'


def span_text(r: dict[str, Any]) -> str:
    """One node span exactly as odibi-observe's OTLP-JSON encoder writes it (checked below)."""
    attrs = [
        _kv("odibi.run_id", r["run_id"]),
        _kv("odibi.project", "bench"),
        _kv("odibi.pipeline", r["pipeline"]),
        _kv("odibi.pipeline_run_id", r["prid"]),
        _kv("odibi.node", r["node"]),
        _ki("odibi.attempt", 1),
        _kv("odibi.status", r["status"]),
        _ki("odibi.rows_processed", r["rows"]),
        _ki("odibi.duration_ms", (r["end"] - r["start"] + 500_000) // 1_000_000),
        _kv("odibi.environment", "prod"),
    ]
    tail = ',"status":{},"flags":256}'
    if r["status"] == "FAILURE":
        attrs.append(_kv("error.type", "ValueError"))
        tail = (
            f',"events":[{{"timeUnixNano":"{r["end"]}","name":"exception","attributes":'
            f"[{_kv('exception.type', 'ValueError')},{_kv('exception.message', 'bad row')}"
            f']}}],"status":{{"message":"ValueError: bad row","code":2}},"flags":256}}'
        )
    return (
        f'{{"traceId":"{r["trace_id"]}","spanId":"{r["span_id"]}","parentSpanId":'
        f'"{r["parent"]}","name":"node {r["node"]}","kind":1,"startTimeUnixNano":'
        f'"{r["start"]}","endTimeUnixNano":"{r["end"]}","attributes":[{",".join(attrs)}]' + tail
    )


def pipeline_span_text(r: dict[str, Any]) -> str:
    return (
        f'{{"traceId":"{r["trace_id"]}","spanId":"{r["parent"]}","parentSpanId":"",'
        f'"name":"pipeline {r["pipeline"]}","kind":1,"startTimeUnixNano":"{r["start"]}",'
        f'"endTimeUnixNano":"{r["end"]}","attributes":[{_kv("odibi.pipeline", r["pipeline"])}'
        f'],"status":{{}},"flags":256}}'
    )


_RESOURCE = (
    '{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":'
    '"bench-etl"}},{"key":"host.name","value":{"stringValue":"worker-3"}},{"key":'
    '"process.pid","value":{"intValue":"4242"}}]},"scopeSpans":[{"scope":{"name":'
    '"odibi_observe","version":"0.1.0"},"spans":['
)


def check_span_format() -> None:
    """The generator's text must decode to what the real encoder writes for the same run."""
    from opentelemetry.sdk.resources import Resource

    from odibi_observe._otlp_json import encode_spans_json
    from odibi_observe.conventions import RunStatus
    from odibi_observe.record import RunRecord
    from odibi_observe.sinks.otel import record_to_span

    for status in ("SUCCESS", "FAILURE"):
        r: dict[str, Any] = {
            "run_id": "r-1",
            "pipeline": "p",
            "node": "n",
            "prid": "pr-1",
            "status": status,
            "rows": 7,
            "start": 1_700_000_000_000_000_000,
            "end": 1_700_000_000_123_456_789,
            "trace_id": "ab" * 16,
            "span_id": "cd" * 8,
            "parent": "ef" * 8,
        }
        record = RunRecord(
            run_id="r-1",
            project="bench",
            pipeline="p",
            node="n",
            environment="prod",
            status=RunStatus(status),
            started_ns=r["start"],
            ended_ns=r["end"],
            trace_id=r["trace_id"],
            span_id=r["span_id"],
            parent_span_id=r["parent"],
            pipeline_run_id="pr-1",
            host="h",
            pid=1,
            rows_processed=7,
            error_type="ValueError" if status == "FAILURE" else None,
            error_message="bad row" if status == "FAILURE" else None,
        )
        real = json.loads(encode_spans_json([record_to_span(record, Resource({}))]))
        real_span = real["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert json.loads(span_text(r)) == real_span, "generator drifted from the encoder"


def generate(n: int, work: Path, seed: int = 7) -> dict[str, Any]:
    """Write the dataset for ``n`` runs into ``work``; returns its description (cached)."""
    meta_path = work / "meta.json"
    if meta_path.exists():
        return dict(json.loads(meta_path.read_text()))
    from odibi_observe.catalog import CatalogStore
    from odibi_observe.conventions import RunStatus
    from odibi_observe.record import EventKind, RunEvent, RunRecord

    check_span_format()
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    clock = time.perf_counter()
    now = time.time_ns()
    since = now - 22 * HOUR_NS
    until = now - HOUR_NS // 2
    step = (20 * HOUR_NS) // n
    k = max(1, n // 2_000)  # planted per kind: 0.05 %
    picks = rng.sample(range(n), 7 * k)
    missing_catalog, missing_traces, status_bad, rows_bad, duration_bad, dup_traces, twice = (
        set(picks[i * k : (i + 1) * k]) for i in range(7)
    )
    expected: list[tuple[str, str]] = []

    url = f"sqlite:///{work}/catalog.db"
    store = CatalogStore(url)
    store.ensure_schema()
    events: list[RunEvent] = []
    files: list[Path] = []
    out: gzip.GzipFile | None = None
    line: list[str] = []
    spans_in_file = 0

    def flush_line() -> None:
        nonlocal out, spans_in_file
        if not line:
            return
        if out is None or spans_in_file >= SPANS_PER_FILE:
            if out is not None:
                out.close()
            path = work / f"traces-{len(files):04d}.jsonl.gz"
            files.append(path)
            out = gzip.open(path, "wb", compresslevel=1)  # noqa: SIM115 - closed on rotation
            spans_in_file = 0
        out.write((f'{{"resourceSpans":[{_RESOURCE}{",".join(line)}]}}]}}]}}\n').encode())
        spans_in_file += len(line)
        line.clear()

    prid = _uuid(rng)
    parent = f"{rng.getrandbits(64) | 1:016x}"
    trace_id = f"{rng.getrandbits(128) | 1:032x}"
    for i in range(n):
        if i % 20 == 0:
            prid, parent = _uuid(rng), f"{rng.getrandbits(64) | 1:016x}"
            trace_id = f"{rng.getrandbits(128) | 1:032x}"
        start = since + HOUR_NS + i * step
        r: dict[str, Any] = {
            "run_id": _uuid(rng),
            "pipeline": PIPELINES[i % len(PIPELINES)],
            "node": NODES[(i // 3) % len(NODES)],
            "prid": prid,
            "status": "FAILURE" if rng.random() < 0.02 else "SUCCESS",
            "rows": rng.randrange(100_000),
            "start": start,
            "end": start + rng.randrange(1, 60_000) * 1_000_000 + rng.randrange(1_000_000),
            "trace_id": trace_id,
            "span_id": f"{rng.getrandbits(64) | 1:016x}",
            "parent": parent,
        }
        if i % 20 == 0:
            line.append(pipeline_span_text(r))
        if i not in missing_traces:
            line.append(span_text(r))
        else:
            expected.append(("missing_in_traces", r["run_id"]))
        if i in twice:
            line.append(span_text(r))  # the same span again: not a discrepancy
        if i in dup_traces:
            line.append(span_text({**r, "span_id": f"{rng.getrandbits(64) | 1:016x}"}))
            expected.append(("duplicate_in_traces", r["run_id"]))
        if len(line) >= SPANS_PER_LINE:
            flush_line()
        if i in missing_catalog:
            expected.append(("missing_in_catalog", r["run_id"]))
            continue
        status, rows, end = r["status"], r["rows"], r["end"]
        if i in status_bad:
            status = "FAILURE" if status == "SUCCESS" else "SUCCESS"
            expected.append(("status_mismatch", r["run_id"]))
        if i in rows_bad:
            rows += 1
            expected.append(("rows_mismatch", r["run_id"]))
        if i in duration_bad:
            end += (end - start) + 100_000_000
            expected.append(("duration_mismatch", r["run_id"]))
        failed = status == "FAILURE"
        events.append(
            RunEvent(
                EventKind.FINISHED,
                RunRecord(
                    run_id=r["run_id"],
                    project="bench",
                    pipeline=r["pipeline"],
                    node=r["node"],
                    environment="prod",
                    status=RunStatus(status),
                    started_ns=start,
                    ended_ns=end,
                    trace_id=r["trace_id"],
                    span_id=r["span_id"],
                    parent_span_id=r["parent"],
                    pipeline_run_id=prid,
                    host="worker-3",
                    pid=4242,
                    rows_processed=rows,
                    error_type="ValueError" if failed else None,
                    error_message="bad row" if failed else None,
                ),
            )
        )
        if len(events) >= 20_000:
            store.upsert(events)
            events = []
    for j in range(k):  # processes killed mid-node: RUNNING, no span, long silent
        run_id = _uuid(rng)
        events.append(
            RunEvent(
                EventKind.STARTED,
                RunRecord(
                    run_id=run_id,
                    project="bench",
                    pipeline="inventory",
                    node="load",
                    environment="prod",
                    status=RunStatus.RUNNING,
                    started_ns=since + 2 * HOUR_NS + j * (HOUR_NS // k),
                    trace_id=f"{j + 1:032x}",
                    span_id=f"{j + 1:016x}",
                    host="worker-9",
                    pid=999,
                ),
            )
        )
        expected.append(("stale_running", run_id))
    store.upsert(events)
    flush_line()
    if out is not None:
        out.close()
    store.dispose()
    meta = {
        "runs": n,
        "since_ns": since,
        "until_ns": until,
        "catalog": url,
        "traces": str(work),
        "files": len(files),
        "planted": len(expected),
        "generated_seconds": round(time.perf_counter() - clock, 1),
        "trace_bytes": sum(f.stat().st_size for f in files),
    }
    (work / "expected.json").write_text(json.dumps(sorted(expected)))
    meta_path.write_text(json.dumps(meta))
    return meta


# ---------------------------------------------------------------------------------- children


def _iso(ns: int) -> str:
    from odibi_observe.record import ns_to_datetime

    return ns_to_datetime(ns).isoformat()


def child_engine(meta: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    from odibi_observe.cli import main

    code = main(
        [
            "reconcile",
            "--catalog",
            meta["catalog"],
            "--traces",
            f"otlp-json:{meta['traces']}",
            "--since",
            _iso(meta["since_ns"]),
            "--until",
            _iso(meta["until_ns"]),
            "--grace",
            "0s",
            "--format",
            "json",
            "--out",
            str(out),
            "--no-record",
            "--quiet",
        ]
    )
    assert code in (0, 1), code
    report = json.loads((out / "report.json").read_text())
    return sorted((d["kind"], d["run_id"]) for d in report["discrepancies"])


def child_baseline(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The naive way: decode everything into memory, then let pandas join and compare."""
    import pandas as pd
    import sqlalchemy as sa

    docs: list[Any] = []
    for path in sorted(Path(meta["traces"]).glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as handle:
            docs.extend(json.loads(line) for line in handle)
    rows = []
    for doc in docs:
        for rs in doc["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for sp in ss["spans"]:
                    attrs = {a["key"]: next(iter(a["value"].values())) for a in sp["attributes"]}
                    if "odibi.run_id" not in attrs:
                        continue
                    rows.append(
                        {
                            "run_id": attrs["odibi.run_id"],
                            "trace_id": sp["traceId"],
                            "span_id": sp["spanId"],
                            "start": int(sp["startTimeUnixNano"]),
                            "end": int(sp["endTimeUnixNano"]),
                            "status_t": attrs.get("odibi.status"),
                            "rows_t": int(attrs["odibi.rows_processed"]),
                        }
                    )
    traces = pd.DataFrame(rows).drop_duplicates(["run_id", "trace_id", "span_id"])
    spans_per_run = traces.groupby("run_id")["span_id"].nunique()
    dups = set(spans_per_run[spans_per_run > 1].index)
    traces = traces.drop_duplicates("run_id")
    catalog = pd.read_sql("SELECT * FROM meta_runs", sa.create_engine(meta["catalog"]))
    started = pd.to_datetime(catalog["started_at"], utc=True)
    low = pd.Timestamp(meta["since_ns"], unit="ns", tz="UTC")
    high = pd.Timestamp(meta["until_ns"], unit="ns", tz="UTC")
    catalog = catalog[(started >= low) & (started < high)]
    traces = traces[(traces["start"] >= meta["since_ns"]) & (traces["start"] < meta["until_ns"])]
    merged = traces.merge(catalog, on="run_id", how="outer", indicator=True)
    found = [("duplicate_in_traces", r) for r in dups]
    found += [
        ("missing_in_catalog", r) for r in merged.loc[merged["_merge"] == "left_only", "run_id"]
    ]
    right = merged[merged["_merge"] == "right_only"]
    found += [("missing_in_traces", r) for r in right.loc[right["status"] != "RUNNING", "run_id"]]
    found += [("stale_running", r) for r in right.loc[right["status"] == "RUNNING", "run_id"]]
    both = merged[merged["_merge"] == "both"]
    found += [
        ("status_mismatch", r) for r in both.loc[both["status"] != both["status_t"], "run_id"]
    ]
    found += [
        ("rows_mismatch", r) for r in both.loc[both["rows_processed"] != both["rows_t"], "run_id"]
    ]
    span_ms = (both["end"] - both["start"]) / 1e6
    allowed = (0.01 * pd.concat([span_ms, both["duration_ms"]], axis=1).max(axis=1)).clip(lower=5)
    found += [
        ("duration_mismatch", r)
        for r in both.loc[(span_ms - both["duration_ms"]).abs() > allowed, "run_id"]
    ]
    return sorted(found)


def run_child(kind: str, meta_path: Path, out: Path) -> dict[str, Any]:
    """Run one measured program in its own process; its own wall time and peak RSS."""
    clock = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--meta",
            str(meta_path),
            "--child-out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - clock
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_with_startup"] = round(wall, 2)
    return result


def child_main(kind: str, meta_path: Path, out: Path) -> None:
    meta = json.loads(meta_path.read_text())
    clock = time.perf_counter()
    found = child_engine(meta, out) if kind == "engine" else child_baseline(meta)
    seconds = time.perf_counter() - clock
    expected = [tuple(x) for x in json.loads((meta_path.parent / "expected.json").read_text())]
    missed = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    # The engine reads trace files in a second process: its CPU time counts, and its peak
    # memory is added to this one's (as if both peaked at the same moment).
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kb = usage.ru_maxrss + children.ru_maxrss
    print(
        json.dumps(
            {
                "kind": kind,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(
                    usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime, 2
                ),
                "peak_rss_mb": round(peak_kb / 1024, 1),
                "found": len(found),
                "missed": len(missed),
                "extra": len(extra),
                "examples": (missed + extra)[:5],
            }
        )
    )


def available_mb() -> float:
    with open("/proc/meminfo") as handle:
        for row in handle:
            if row.startswith("MemAvailable:"):
                return int(row.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        type=int,
        action="append",
        help="runs in the window (repeatable; default 1000000 and 2000000)",
    )
    parser.add_argument(
        "--work", default="/tmp/odibi-bench-reconcile", help="where datasets are generated and kept"
    )
    parser.add_argument(
        "--baseline-max",
        type=int,
        default=1_000_000,
        help="largest N the baseline runs at (it needs ~10 GB per 1M runs)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--meta", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, Path(args.meta), Path(args.child_out))
        return
    sizes = args.runs or [1_000_000, 2_000_000]
    rows = []
    for n in sizes:
        work = Path(args.work) / f"runs-{n}"
        meta = generate(n, work)
        print(
            f"dataset {n:,} runs: {meta['files']} gz files, "
            f"{meta['trace_bytes'] / 2**20:,.0f} MiB of traces, {meta['planted']:,} planted "
            f"(generated in {meta['generated_seconds']} s)",
            flush=True,
        )
        engine = run_child("engine", work / "meta.json", work / "report")
        print(f"  odibi-observe: {engine}", flush=True)
        baseline = None
        estimate_mb = n / 1_000_000 * 11_000
        if n <= args.baseline_max and available_mb() > estimate_mb * 1.3:
            baseline = run_child("baseline", work / "meta.json", work / "report")
            print(f"  baseline:      {baseline}", flush=True)
        elif n <= args.baseline_max:
            print(
                f"  baseline skipped: needs ~{estimate_mb:,.0f} MB, "
                f"{available_mb():,.0f} MB available",
                flush=True,
            )
        rows.append((n, engine, baseline))
    print()
    print(
        f"{'runs':>10} {'odibi-observe':>14} {'(cpu)':>7} {'peak RSS':>9} {'baseline':>9} "
        f"{'(cpu)':>7} {'peak RSS':>9} {'speed-up':>9} {'(cpu)':>6}  correct"
    )
    for n, engine, baseline in rows:
        ok = "yes" if engine["missed"] == engine["extra"] == 0 else "NO"
        if baseline:
            ok += "" if baseline["missed"] == baseline["extra"] == 0 else " (baseline NO)"
            other = (
                f"{baseline['seconds']:>8.1f}s {baseline['cpu_seconds']:>6.1f}s "
                f"{baseline['peak_rss_mb']:>6.0f} MB "
                f"{baseline['seconds'] / engine['seconds']:>8.1f}x "
                f"{baseline['cpu_seconds'] / engine['cpu_seconds']:>5.1f}x"
            )
        else:
            other = f"{'-':>9} {'-':>7} {'-':>9} {'-':>9} {'-':>6}"
        print(
            f"{n:>10,} {engine['seconds']:>13.1f}s {engine['cpu_seconds']:>6.1f}s "
            f"{engine['peak_rss_mb']:>6.0f} MB {other}  {ok}"
        )
    if len(rows) >= 2:
        (n1, e1, _), (n2, e2, _) = rows[0], rows[-1]
        print(
            f"scaling: {n2:,} runs took {e2['seconds'] / e1['seconds']:.2f}x the wall time "
            f"({e2['cpu_seconds'] / e1['cpu_seconds']:.2f}x the CPU time) of {n1:,}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
