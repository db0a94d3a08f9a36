"""The traceback of a failed or cancelled run: ``error_stack`` in the catalog (migration 0005)
and ``exception.stacktrace`` on the span, redacted and bounded, through real sinks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

import odibi_observe as oo
from odibi_observe._otlp_json import read_spans
from odibi_observe.catalog import CatalogStore
from odibi_observe.catalog.migrate import alembic_config
from odibi_observe.conventions import CATALOG_TABLE, EXCEPTION_STACKTRACE, RunStatus


def _leaky_step(depth: int) -> None:
    """Raise a ValueError whose message (and source line) holds a secret; ``depth`` chains as
    many more before it, so the traceback is long."""
    password = "hunter2"  # the secret the stored traceback must not show
    if depth:
        try:
            _leaky_step(depth - 1)
        except ValueError as exc:
            raise ValueError(f"login refused: password={password}") from exc
    raise ValueError(f"login refused: password={password}")


def _run_all(
    configure: Callable[..., oo.Observer], url: str, traces: Path, **settings: Any
) -> dict[str, Any]:
    configure(catalog_url=url, traces_file=str(traces), mode="inline", **settings)

    @oo.observe_node(pipeline="p")
    def fails(depth: int = 0) -> None:
        _leaky_step(depth)

    @oo.observe_node(pipeline="p")
    def cancelled() -> None:
        raise KeyboardInterrupt

    @oo.observe_node(pipeline="p")
    def fine() -> list[int]:
        return [1]

    with pytest.raises(ValueError, match="hunter2"):  # the node's own exception is untouched
        fails()
    with pytest.raises(KeyboardInterrupt):
        cancelled()
    fine()
    with pytest.raises(ValueError):
        fails(60)
    oo.shutdown()
    store = CatalogStore(url)
    try:
        rows = {(r.node, len(r.error_stack or "") > 4_000): r for r in store.recent_runs()}
    finally:
        store.dispose()
    return {"rows": rows, "spans": read_spans(traces)}


def test_failed_and_cancelled_runs_keep_their_redacted_traceback(
    fresh_observer: Callable[..., oo.Observer], catalog_url: str, tmp_path: Path
) -> None:
    out = _run_all(fresh_observer, catalog_url, tmp_path / "t.jsonl", max_error_stack_length=6_000)
    rows = out["rows"]
    failed, deep = rows[("fails", False)], rows[("fails", True)]
    cancelled, fine = rows[("cancelled", False)], rows[("fine", False)]
    assert (failed.status, cancelled.status) == (RunStatus.FAILURE, RunStatus.CANCELLED)
    stack = failed.error_stack or ""
    assert stack.startswith("Traceback (most recent call last):")
    assert "in _leaky_step" in stack and "in fails" in stack
    assert "hunter2" not in stack and "password=***" in stack  # message and source line
    assert stack.endswith("ValueError: login refused: password=***\n")
    assert (cancelled.error_stack or "").endswith("KeyboardInterrupt\n")
    assert fine.error_stack is None
    # Bounded: the innermost frames and the exception line are what is kept.
    deep_stack = deep.error_stack or ""
    assert len(deep_stack) == 6_000 and deep_stack.startswith("…")
    assert deep_stack.endswith("ValueError: login refused: password=***\n")
    assert "hunter2" not in deep_stack
    spans = {s.attributes["odibi.run_id"]: s for s in out["spans"]}
    for rec in (failed, cancelled, deep):
        ((name, event),) = spans[rec.run_id].events
        assert name == "exception" and event[EXCEPTION_STACKTRACE] == rec.error_stack
    assert spans[fine.run_id].events == []


def test_migration_0005_adds_the_column_to_a_0004_catalog(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)

    def columns() -> set[str]:
        return {c["name"] for c in sa.inspect(engine).get_columns(CATALOG_TABLE)}

    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0004_resources")
        assert "error_stack" not in columns()
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0005_error_stack")
        assert "error_stack" in columns()
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0004_resources")
        assert "error_stack" not in columns()
    finally:
        engine.dispose()


def test_runs_details_shows_the_stored_traceback(
    fresh_observer: Callable[..., oo.Observer], sqlite_url: str, tmp_path: Path
) -> None:
    """``odibi-observe runs --details`` prints the run's ``error_stack`` (and ``--json``
    carries it), redacted as stored; a run without one prints no stack section."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    rows = _run_all(fresh_observer, sqlite_url, tmp_path / "t.jsonl")["rows"]
    failed, fine = rows[("fails", False)], rows[("fine", False)]
    exe = shutil.which("odibi-observe", path=os.path.dirname(sys.executable))
    assert exe is not None

    def cli(*args: str) -> str:
        done = subprocess.run(
            [exe, "runs", "--catalog", sqlite_url, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        )
        return done.stdout

    text = cli("--details", failed.run_id)
    assert "stack trace:" in text
    stack = text.split("stack trace:", 1)[1]
    assert "Traceback (most recent call last):" in stack
    assert "in _leaky_step" in stack and "ValueError: login refused" in stack
    assert "hunter2" not in text
    assert "stack trace:" not in cli("--details", fine.run_id)
    listed = {
        run["run_id"]: run for run in map(json.loads, cli("--json", "--node", "fails").splitlines())
    }
    assert listed[failed.run_id]["error_stack"] == failed.error_stack
