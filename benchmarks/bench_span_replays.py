"""How many spans a SIGKILLed sidecar sends twice: the at-least-once rate of spans, measured.

A writer appends runs to a spool (a STARTED and a FINISHED event per run, the frames a
pipeline in ``mode="sidecar"`` writes) at a steady rate, while a real ``odibi-observe sidecar``
process delivers them to a real OTLP/HTTP receiver (``tests/otlp_receiver.py``) and is
SIGKILLed at random moments and restarted at once, until every run was written; the last one
drains and stops. Counted: distinct spans (every run must arrive), spans received more than
once (always byte-identical re-sends of a batch acknowledged too late: same trace/span ids),
and the kills.

    python benchmarks/bench_span_replays.py [--runs 12000] [--rate 600] [--kill-every 1.0]
                                            [--seed 1] [--max-batch 512]

The catalog is a SQLite file in a temporary directory; nothing else is touched.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from odibi_observe.conventions import FIELDS, RunStatus  # noqa: E402
from odibi_observe.record import EventKind, RunEvent, RunRecord  # noqa: E402
from odibi_observe.spool import Spool  # noqa: E402
from tests.fault_helpers import Sidecar  # noqa: E402
from tests.otlp_receiver import OtlpReceiver  # noqa: E402


def _run(i: int) -> RunRecord:
    start = time.time_ns()
    return RunRecord(
        run_id=str(uuid.uuid4()),
        project="bench",
        pipeline="replays",
        node=f"n{i % 50}",
        environment="bench",
        status=RunStatus.RUNNING,
        started_ns=start,
        trace_id=f"{random.getrandbits(128) | 1:032x}",
        span_id=f"{random.getrandbits(64) | 1:016x}",
        host=socket.gethostname(),
        pid=os.getpid(),
    )


def write(spool_dir: Path, runs: int, rate: float, done: threading.Event) -> None:
    spool = Spool(spool_dir, fsync="never")
    pause = 1.0 / rate
    try:
        for i in range(runs):
            record = _run(i)
            spool.append(RunEvent(EventKind.STARTED, record).to_json().encode())
            end = record.finished(
                status=RunStatus.SUCCESS, ended_ns=record.started_ns + 1_000, rows_processed=i % 7
            )
            spool.append(RunEvent(EventKind.FINISHED, end).to_json().encode())
            time.sleep(pause)
    finally:
        spool.close()
        done.set()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=12_000)
    parser.add_argument("--rate", type=float, default=600.0, help="runs written per second")
    parser.add_argument(
        "--kill-every", type=float, default=1.0, help="mean seconds between SIGKILLs of the sidecar"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--max-batch", type=int, default=0, help="the sidecar's --max-batch (0: its default)"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="oo-replays-") as tmp, OtlpReceiver() as receiver:
        work = Path(tmp)
        spool_dir, catalog = work / "spool", f"sqlite:///{work}/catalog.db"
        sidecar_args = ["--sweep-interval", "0"]
        if args.max_batch:
            sidecar_args += ["--max-batch", str(args.max_batch)]
        log = work / "sidecar.log"
        done = threading.Event()
        spool_dir.mkdir()
        writer = threading.Thread(target=write, args=(spool_dir, args.runs, args.rate, done))
        started = time.monotonic()
        sidecar = Sidecar(
            catalog, spool_dir, log=log, otlp_endpoint=receiver.endpoint, args=sidecar_args
        ).start()
        writer.start()
        kills = 0
        while not done.is_set():
            done.wait(rng.uniform(0.2, 2 * args.kill_every - 0.2))
            if done.is_set():
                break
            sidecar.kill()
            kills += 1
            sidecar = Sidecar(
                catalog, spool_dir, log=log, otlp_endpoint=receiver.endpoint, args=sidecar_args
            ).start()
        writer.join()
        deadline = time.monotonic() + 300
        attribute = FIELDS.run_id.attribute
        while time.monotonic() < deadline:
            spans = [s for s in receiver.spans if attribute in s.attributes]
            if len({(s.trace_id, s.span_id) for s in spans}) >= args.runs:
                break
            time.sleep(0.5)
        sidecar.stop()
        elapsed = time.monotonic() - started
        spans = [s for s in receiver.spans if attribute in s.attributes]
    per_span = Counter((s.trace_id, s.span_id) for s in spans)
    twice = sum(1 for n in per_span.values() if n > 1)
    extra = sum(n - 1 for n in per_span.values())
    print(f"runs written        {args.runs}")
    print(f"sidecar SIGKILLs    {kills} (one every {elapsed / max(kills, 1):.2f} s)")
    print(
        f"distinct spans      {len(per_span)}"
        + ("" if len(per_span) == args.runs else "   << SPANS MISSING")
    )
    print(
        f"runs sent twice+    {twice} ({twice / args.runs:.2%} of runs; {extra} extra "
        f"span(s), {twice / max(kills, 1):.1f} per kill)"
    )
    print(f"elapsed             {elapsed:.1f} s")
    return 0 if len(per_span) == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
