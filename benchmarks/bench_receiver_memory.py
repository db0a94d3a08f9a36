"""Peak memory of the sidecar's OTLP receiver against the size of one export.

A real ``odibi-observe sidecar`` process (SQLite catalog and span ledger in a temporary
directory) receives OTLP/HTTP protobuf exports of small spans — the shape that makes memory
per byte worst: ~75 bytes of wire per span, so a 14 MiB body holds ~190 000 spans. For each
body size a fresh sidecar is started; its resident set before the export and its high-water
mark (``VmHWM`` from ``/proc``) after the answer are reported, and their difference per MiB
of body (each sidecar is started with ``--max-body`` just above the body it receives). Bodies
of odibi node spans (which the ledger stores) and of foreign spans (which it
counts and ignores) are measured separately; ``--concurrent N`` sends N exports at once.

    python benchmarks/bench_receiver_memory.py [--sizes 1,4,14] [--concurrent 1] [--kind both]

The baseline in the same run is the sidecar's own idle resident set: what matters for sizing
is how much one request adds to it (``docs/operations.md``, "Sizing the sidecar").
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from odibi_observe.conventions import FIELDS

RUN_ID = FIELDS.run_id.attribute


def make_body(target_bytes: int, *, odibi: bool) -> tuple[bytes, int]:
    """An ``ExportTraceServiceRequest`` of about ``target_bytes``; (body, number of spans)."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    scope.scope.name = "bench"
    base = time.time_ns()
    template = Span(name="n", start_time_unix_nano=base, end_time_unix_nano=base + 1_000)
    if odibi:
        template.attributes.append(KeyValue(key=str(RUN_ID), value=AnyValue(string_value="")))
    one = len(template.SerializeToString()) + 16 + 8 + (36 if odibi else 0) + 8
    count = max(1, target_bytes // one)
    for i in range(count):
        span = scope.spans.add()
        span.CopyFrom(template)
        span.trace_id = uuid.uuid4().bytes
        span.span_id = (i + 1).to_bytes(8, "big")
        if odibi:
            span.attributes[0].value.string_value = str(uuid.uuid4())
    return request.SerializeToString(), count


def _status(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def start_sidecar(workdir: Path, max_body: int) -> tuple[subprocess.Popen[str], int]:
    catalog = f"sqlite:///{workdir / 'catalog.db'}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "odibi_observe.cli",
            "sidecar",
            "--catalog",
            catalog,
            "--spool-dir",
            str(workdir / "spool"),
            "--listen",
            "127.0.0.1:0",
            "--sweep-interval",
            "0",
            "--max-body",
            str(max_body),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"the sidecar did not start: {line!r}")
    return proc, int(match.group(1))


def post(port: int, body: bytes, results: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
    response = conn.getresponse()
    response.read()
    results.append(response.status)
    conn.close()


def measure(size_mib: float, *, odibi: bool, concurrent: int) -> dict[str, float]:
    body, spans = make_body(int(size_mib * 2**20), odibi=odibi)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_sidecar(Path(tmp), len(body) + 2**20)
        try:
            time.sleep(1.0)
            idle = _status(proc.pid, "VmRSS")
            statuses: list[int] = []
            started = time.perf_counter()
            threads = [
                threading.Thread(target=post, args=(port, body, statuses))
                for _ in range(concurrent)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            peak = _status(proc.pid, "VmHWM")
            after = _status(proc.pid, "VmRSS")
        finally:
            proc.terminate()
            proc.wait(30)
    return {
        "body_mib": len(body) / 2**20,
        "spans": spans,
        "idle_mib": idle / 2**20,
        "peak_mib": peak / 2**20,
        "after_mib": after / 2**20,
        "seconds": elapsed,
        "statuses": float(sum(1 for s in statuses if s == 200)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4,14", help="body sizes in MiB (default 1,4,14)")
    parser.add_argument("--concurrent", type=int, default=1, help="exports sent at once")
    parser.add_argument("--kind", choices=("odibi", "foreign", "both"), default="both")
    args = parser.parse_args(argv)
    kinds = {"odibi": [True], "foreign": [False], "both": [True, False]}[args.kind]
    print(f"python {sys.version.split()[0]}, pid {os.getpid()}, concurrent={args.concurrent}")
    print(
        f"{'spans':>8} {'body MiB':>9} {'kind':>8} {'idle MiB':>9} {'peak MiB':>9} "
        f"{'after MiB':>10} {'peak-idle per body MiB':>23} {'s':>6} {'200s':>5}"
    )
    for odibi in kinds:
        for size in (float(s) for s in args.sizes.split(",")):
            r = measure(size, odibi=odibi, concurrent=args.concurrent)
            per = (r["peak_mib"] - r["idle_mib"]) / (r["body_mib"] * args.concurrent)
            print(
                f"{r['spans']:>8.0f} {r['body_mib']:>9.1f} {'odibi' if odibi else 'foreign':>8} "
                f"{r['idle_mib']:>9.0f} {r['peak_mib']:>9.0f} {r['after_mib']:>10.0f} "
                f"{per:>23.1f} {r['seconds']:>6.1f} {r['statuses']:>5.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
