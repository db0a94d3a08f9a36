"""End to end: instrumented runs, injected faults, a report naming exactly the faulty runs, a
repair, and a second reconciliation that is clean.

Runs are recorded by the product itself (``odibi_observe.configure`` + ``observe_node`` into a
real catalog, SQLite or PostgreSQL, and an OTLP-JSON trace file). The faults are the ones
reconciliation exists for: a catalog row deleted, a span line dropped, a row count changed in
the catalog, and a real process SIGKILLed in the middle of a node, which leaves a RUNNING row
and no span.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe.catalog import create_catalog_engine
from tests.helpers import wait_until
from tests.test_reconcile_support import cli

KILLED_NODE = textwrap.dedent("""
    import sys, time
    import odibi_observe as oo

    oo.configure(project="shop", environment="test", catalog_url=sys.argv[1],
                 traces_file=sys.argv[2], mode="inline", handle_sigterm=False, strict=True)

    @oo.observe_node(pipeline="nightly")
    def load_warehouse():
        print("started", flush=True)
        time.sleep(120)

    load_warehouse()
""")


class SuggestedError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.suggestions = ["check the upstream export", "re-run with --node enrich"]


def _pipeline(url: str, traces: Path) -> dict[str, str]:
    """Six nodes of a real pipeline, one of them failing; returns node → run id."""
    oo.configure(
        project="shop",
        environment="test",
        catalog_url=url,
        traces_file=str(traces),
        mode="inline",
        handle_sigterm=False,
        strict=True,
        registry=CollectorRegistry(),
    )
    ids: dict[str, str] = {}

    def node(name: str, rows: int, fail: bool = False) -> None:
        @oo.observe_node(pipeline="nightly", node=name)
        def body() -> list[int]:
            run_id = oo.current_run().run_id
            assert run_id is not None
            ids[name] = run_id
            oo.current_run().set_attribute("batch", 7)
            if fail:
                raise SuggestedError("column 'segment' not found")
            time.sleep(0.003)
            return list(range(rows))

        with contextlib.suppress(SuggestedError):
            body()

    with oo.pipeline_run("nightly"):
        for name, rows in (
            ("extract", 120),
            ("clean", 110),
            ("enrich", 0),
            ("aggregate", 12),
            ("publish", 12),
            ("archive", 5),
        ):
            node(name, rows, fail=name == "enrich")
    assert oo.flush(timeout=30)
    oo.shutdown()
    return ids


def _kill_mid_node(url: str, traces: Path) -> str:
    """A real process SIGKILLed while its node runs; returns the run id it left RUNNING."""
    engine = create_catalog_engine(url)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_NODE, url, str(traces)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"

        def running() -> Sequence[Any]:
            with engine.connect() as conn:
                return (
                    conn.execute(
                        sa.text(
                            "SELECT run_id FROM meta_runs WHERE status = 'RUNNING' AND pid = :p"
                        ),
                        {"p": proc.pid},
                    )
                    .scalars()
                    .all()
                )

        assert wait_until(lambda: bool(running()), timeout=20)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=20) == -signal.SIGKILL
        (run_id,) = running()
        return str(run_id)
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()


def _sql(url: str, statement: str, **params: Any) -> None:
    engine = create_catalog_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)
    engine.dispose()


def test_faults_are_named_repaired_and_gone(catalog_url: str, tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    ids = _pipeline(catalog_url, traces / "traces.jsonl")
    killed = _kill_mid_node(catalog_url, traces / "traces.jsonl")

    # The faults.
    _sql(catalog_url, "DELETE FROM meta_runs WHERE run_id = :r", r=ids["clean"])
    lines = (traces / "traces.jsonl").read_text().splitlines()
    kept = [line for line in lines if ids["aggregate"] not in line]
    assert len(kept) == len(lines) - 1  # inline mode: the node's span is a line of its own
    (traces / "traces.jsonl").write_text("".join(line + "\n" for line in kept))
    _sql(
        catalog_url,
        "UPDATE meta_runs SET rows_processed = rows_processed + 5 WHERE run_id = :r",
        r=ids["publish"],
    )
    time.sleep(1.2)  # past --crash-after

    base = [
        "reconcile",
        "--catalog",
        catalog_url,
        "--traces",
        f"otlp-json:{traces}",
        "--since",
        since.isoformat(),
        "--until",
        (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat(),
        "--grace",
        "0s",
        "--crash-after",
        "1s",
        "--trace-url-template",
        "http://grafana/explore?traceId={trace_id}",
    ]
    code, _, err = cli(*base, "--out", str(tmp_path / "first"), "--quiet")
    assert code == 1, err
    first = json.loads((tmp_path / "first" / "report.json").read_text())
    assert {(d["kind"], d["run_id"]) for d in first["discrepancies"]} == {
        ("missing_in_catalog", ids["clean"]),
        ("missing_in_traces", ids["aggregate"]),
        ("rows_mismatch", ids["publish"]),
        ("stale_running", killed),
    }
    assert first["summary"]["ignored_spans"] >= 1  # the pipeline span is not a node span
    assert not first["errors"]

    code, _, err = cli(
        *base,
        "--out",
        str(tmp_path / "repair"),
        "--quiet",
        "--repair",
        "--repair-traces",
        f"otlp-json:{traces / 'repaired.jsonl'}",
    )
    assert code == 1, err
    repaired = json.loads((tmp_path / "repair" / "report.json").read_text())
    assert repaired["repair"]["applied"] == 4 and repaired["repair"]["failed"] == 0

    code, out, err = cli(*base, "--out", str(tmp_path / "second"))
    second = json.loads((tmp_path / "second" / "report.json").read_text())
    assert (code, second["discrepancies"], second["errors"]) == (0, [], []), err
    assert "discrepancies  0" in out
    summary = second["summary"]
    assert summary["catalog_runs"] == summary["trace_runs"] == summary["matched"] == 7
