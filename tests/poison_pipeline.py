"""A pipeline process whose first node has a poison name, for ``tests/test_dead_letter.py``.

``python tests/poison_pipeline.py --mode MODE --started FILE [--poison] [--runs N] ...``
configures odibi-observe (OTLP endpoint from ``OTEL_EXPORTER_OTLP_ENDPOINT``), runs the node
``os.fsdecode(b"load_r\\xe9sum\\xe9.csv")`` — lone surrogates, how Python decodes a latin-1
file name — when ``--poison`` is given, then ``--runs`` nodes ``n0``, ``n1``, ... Each run's id
is written to the started file (``<run_id> <node as JSON>``) after the decorator returned.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import odibi_observe as oo

POISON = os.fsdecode(b"load_r\xe9sum\xe9.csv")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", required=True)
    parser.add_argument("--started", required=True)
    parser.add_argument("--catalog")
    parser.add_argument("--spool-dir")
    parser.add_argument("--textfile")
    parser.add_argument("--poison", action="store_true")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--first", type=int, default=0)
    args = parser.parse_args()
    settings: dict[str, Any] = {
        "project": "poison",
        "mode": args.mode,
        "strict": True,
        "max_batch": 64,
        "flush_interval": 0.5,
    }
    if args.catalog:
        settings["catalog_url"] = args.catalog
    if args.spool_dir:
        settings["spool_dir"] = args.spool_dir
    if args.textfile:
        settings["prometheus_textfile"] = args.textfile
    oo.configure(**settings)
    names = ([POISON] if args.poison else []) + [
        f"n{i}" for i in range(args.first, args.first + args.runs)
    ]
    with open(args.started, "a", encoding="utf-8") as started:
        for name in names:
            ids: list[str] = []

            @oo.observe_node(pipeline="files", node=name)
            def load(ids: list[str] = ids) -> list[int]:
                ids.append(str(oo.current_run().run_id))
                return [1, 2, 3]

            load()
            started.write(f"{ids[0]} {json.dumps(name)}\n")
            started.flush()
    ok = oo.flush(30)
    oo.shutdown()
    return 0 if ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
