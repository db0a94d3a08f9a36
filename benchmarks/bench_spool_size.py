"""Spool bytes per node run, for sizing ``--spool-max-bytes`` against an outage to ride out.

Real node runs through ``@observe_node`` in ``mode="sidecar"`` (the pipeline side: a STARTED
and a FINISHED event per run, framed and appended to the spool), into a temporary spool
directory; nothing delivers them, as during an outage of every sink. Three shapes of run are
measured, since the record's size is mostly its names and its error:

``success``  — project, pipeline and node names of 10-20 characters, rows counted;
``failure``  — the same, raising ``ValueError`` with a 200-character message;
``odibi``    — a success with six attributes, as the Odibi integration records them.

Reported: bytes per run of each, and the spool a sustained rate needs for an outage of one
hour, from the measured bytes per run (``runs/s x 3600 x bytes/run``).

    python benchmarks/bench_spool_size.py [--runs 5000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import odibi_observe as oo


def spool_bytes(directory: Path) -> int:
    return sum(
        p.stat().st_size for p in directory.rglob("*") if p.is_file() and "cursors" not in p.parts
    )


def measure(shape: str, runs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / "spool"
        oo.configure(
            mode="sidecar",
            spool_dir=spool,
            project="retail_analytics",
            environment="production",
            handle_sigterm=False,
            strict=True,
            spool_fsync="never",
            heartbeat_interval=0,
        )
        node = _node(shape)
        for _ in range(runs):
            with contextlib.suppress(ValueError):
                node()
        oo.flush()
        size = spool_bytes(spool)
        oo.shutdown()
    return size / runs


def _node(shape: str) -> Callable[[], object]:
    @oo.observe_node(pipeline="daily_sales_rollup", node="load_store_orders")
    def success() -> list[int]:
        return list(range(10))

    @oo.observe_node(pipeline="daily_sales_rollup", node="load_store_orders")
    def failure() -> None:
        raise ValueError("column 'order_total' has 1 234 null values; " + "x" * 155)

    @oo.observe_node(pipeline="daily_sales_rollup", node="load_store_orders")
    def odibi() -> list[int]:
        run = oo.current_run()
        for key, value in (
            ("odibi.engine", "pandas"),
            ("odibi.operation", "read"),
            ("odibi.format", "delta"),
            ("odibi.mode", "append"),
            ("odibi.connection", "warehouse"),
            ("odibi.write_path", "gold/x"),
        ):
            run.set_attribute(key, value)
        return list(range(10))

    return {"success": success, "failure": failure, "odibi": odibi}[shape]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, pid {os.getpid()}, {args.runs} runs per shape")
    sizes = {shape: measure(shape, args.runs) for shape in ("success", "failure", "odibi")}
    for shape, size in sizes.items():
        print(f"{shape:>8}: {size:,.0f} bytes per run")
    worst = max(sizes.values())
    print("\nspool for a one-hour outage at the largest shape:")
    for rate in (1, 10, 100, 1000):
        need = rate * 3600 * worst
        print(f"  {rate:>5} runs/s: {need / 2**20:>10,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
