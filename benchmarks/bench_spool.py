"""Cost of Spool.append per event, against a plain os.write of the same bytes.

The spool sits on the pipeline's path (every run event is appended before anything else
happens to it), so its append must cost little more than the system call it is built on. Four
ways to put N encoded run events on disk, measured in the same process, interleaved, as ratios:

``write``     — the baseline: ``os.write`` of the already-encoded frame (same bytes: header +
                payload) to an ``O_APPEND`` descriptor, nothing else;
``never``     — ``Spool.append`` with ``fsync="never"``;
``interval``  — ``Spool.append`` with ``fsync="interval"`` (the default; a daemon thread
                fsyncs once a second);
``always``    — ``Spool.append`` with ``fsync="always"`` (an fsync before every return).

``always`` is bound by the disk's flush latency, not by the spool, so it is also compared with
``write+fsync`` (``os.write`` then ``os.fsync`` per event) and runs fewer events
(``--always-events``). The payload is a run record serialised as JSON, as the pipeline writes
it. Figures are medians of R interleaved rounds in µs per event; the ratios are what to compare
across machines.

    python benchmarks/bench_spool.py [--events 20000] [--always-events 300] [--rounds 5]
                                     [--dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from odibi_observe.conventions import RunStatus
from odibi_observe.record import RunRecord
from odibi_observe.spool import Spool, encode_frame


def payload() -> bytes:
    now = time.time_ns()
    record = RunRecord(
        run_id=str(uuid.uuid4()),
        project="bench",
        pipeline="daily_sales",
        node="clean_orders",
        environment="bench",
        status=RunStatus.SUCCESS,
        started_ns=now,
        ended_ns=now + 12_345_678,
        trace_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16],
        host="bench-host",
        pid=os.getpid(),
        rows_processed=1185,
        attributes={"region": "eu"},
    )
    return json.dumps(
        {"kind": "finished", "record": record.to_dict()}, separators=(",", ":")
    ).encode()


def bench_write(n: int, workdir: Path, data: bytes, *, fsync: bool = False) -> float:
    frame = encode_frame(data)
    fd = os.open(
        workdir / f"plain-{uuid.uuid4().hex}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
    )
    write, sync = os.write, os.fsync
    start = time.perf_counter()
    for _ in range(n):
        write(fd, frame)
        if fsync:
            sync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    return elapsed


def bench_spool(n: int, workdir: Path, data: bytes, policy: str) -> float:
    spool = Spool(
        workdir / f"spool-{uuid.uuid4().hex}",
        fsync=policy,  # type: ignore[arg-type]
        max_bytes=2**40,
        registry=CollectorRegistry(),
    )
    spool.append(data)  # the first segment's creation is a one-time cost, not a per-event one
    append = spool.append
    start = time.perf_counter()
    for _ in range(n):
        append(data)
    elapsed = time.perf_counter() - start
    spool.close()
    return elapsed


VARIANTS: dict[str, Callable[[int, Path, bytes], float]] = {
    "write": bench_write,
    "never": lambda n, d, p: bench_spool(n, d, p, "never"),
    "interval": lambda n, d, p: bench_spool(n, d, p, "interval"),
    "write+fsync": lambda n, d, p: bench_write(n, d, p, fsync=True),
    "always": lambda n, d, p: bench_spool(n, d, p, "always"),
}
SLOW = {"write+fsync", "always"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000, help="appends per variant and round")
    parser.add_argument(
        "--always-events",
        type=int,
        default=300,
        help="appends for the fsync-per-event variants (bound by the disk)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="directory on the disk to measure (default: tmp)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    data = payload()
    per_event: dict[str, list[float]] = {k: [] for k in VARIANTS}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for _ in range(args.rounds):
            for name, fn in VARIANTS.items():
                n = args.always_events if name in SLOW else args.events
                per_event[name].append(fn(n, Path(tmp), data) / n)
    us = {k: statistics.median(v) * 1e6 for k, v in per_event.items()}
    result = {
        "us_per_event": {k: round(v, 2) for k, v in us.items()},
        "never_over_write": round(us["never"] / us["write"], 2),
        "interval_over_write": round(us["interval"] / us["write"], 2),
        "always_over_write": round(us["always"] / us["write"], 1),
        "always_over_write_fsync": round(us["always"] / us["write+fsync"], 2),
        "payload_bytes": len(data),
        "events": args.events,
        "always_events": args.always_events,
        "rounds": args.rounds,
    }
    print(f"per event ({len(data)}-byte payload), median of {args.rounds} rounds:")
    print(f"  {'variant':<12} {'µs':>9}")
    for k in VARIANTS:
        print(f"  {k:<12} {us[k]:>9.2f}")
    print(f"spool never    / os.write        : {result['never_over_write']:>6}")
    print(f"spool interval / os.write        : {result['interval_over_write']:>6}")
    print(f"spool always   / os.write        : {result['always_over_write']:>6}")
    print(f"spool always   / os.write+fsync  : {result['always_over_write_fsync']:>6}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
