"""Exit is bounded, and what could not be delivered by then is kept on disk, not dropped.

Every test runs a real pipeline process (``python -c``) against a backend that is down — an
OTLP endpoint on a closed port, an OTLP receiver that accepts and never answers, a catalog on
a stopped PostgreSQL server — measures how long the process takes to end after its last node
and what it writes to stderr, then delivers the spill with the real ``odibi-observe sweep`` or
``odibi-observe sidecar`` once the backend is reachable and checks every run arrived once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from odibi_observe.config import ConfigurationError, Settings, resolve_settings
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sinks.otel import _otlp_span_exporter, record_to_span
from odibi_observe.spool import Spool
from tests.fault_helpers import (
    Sidecar,
    catalog_rows,
    child_env,
    eventually,
    free_port,
    sweep,
    throwaway_postgres_or_skip,
)
from tests.helpers import make_record
from tests.otlp_receiver import OtlpReceiver

#: Slack for a loaded 2-core CI machine on top of the promised bound.
SLACK = 2.0

SCRIPT = """
import os, sys
import odibi_observe as oo
oo.configure(mode=os.environ.get("MODE", "background"), project="exits")

@oo.observe_node(pipeline="p")
def step(i):
    return i

for i in range(int(os.environ.get("RUNS", "1"))):
    step(i)
print("done", flush=True)
"""


class Exited:
    """A finished pipeline process: its stderr and how long it took to end after its work."""

    def __init__(self, returncode: int, stderr: str, exit_seconds: float) -> None:
        self.returncode = returncode
        self.stderr = stderr
        self.exit_seconds = exit_seconds

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_pipeline(tmp_path: Path, runs: int = 1, **env: str) -> Exited:
    """Run :data:`SCRIPT`; the clock starts when it prints ``done`` (its last node is over)."""
    environ = child_env(XDG_STATE_HOME=str(tmp_path / "state"), RUNS=str(runs), **env)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        env=environ,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    done = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        raise AssertionError(f"the pipeline did not exit within 60 s:\n{stderr}") from None
    assert line.strip() == "done", stderr
    return Exited(proc.returncode, stderr, time.monotonic() - done)


def default_spill(tmp_path: Path) -> Path:
    return tmp_path / "state" / "odibi-observe" / "spool"


def spilled(directory: Path) -> list[RunEvent]:
    spool = Spool(directory)
    try:
        return [RunEvent.from_json(e.payload) for e in spool.cursor("test-reader").read(100_000)]
    finally:
        spool.drop_cursor("test-reader")  # a reader that never acknowledges would block gc
        spool.close()


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- Trust: bounded exit --------------------------------------------------------------------------


def test_closed_otlp_port_exits_fast_with_one_line_per_problem(tmp_path: Path) -> None:
    result = run_pipeline(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=closed_port_url())
    assert result.returncode == 0
    # Before: ~21 s after the node and 18 lines of the exporter's own retries.
    assert result.exit_seconds < 1.0 + SLACK, result.stderr
    assert "Transient error" not in result.stderr
    assert "retrying in" not in result.stderr
    assert "otlp http/protobuf: otlp http/protobuf" not in result.stderr
    assert len(result.lines) <= 3, result.stderr
    assert "Connection refused" in result.stderr  # the reason, not "export returned FAILURE"
    spill = default_spill(tmp_path)
    (summary,) = [line for line in result.lines if "not delivered at exit" in line]
    assert summary.startswith("odibi-observe sink 'otel': 1 run(s)")
    assert f"1 run(s) kept in {spill} for delivery by 'odibi-observe sweep --spool-dir" in summary
    (event,) = spilled(spill)
    assert event.kind is EventKind.FINISHED and event.record.node == "step"


@pytest.mark.parametrize("exit_timeout", [None, "1"])
def test_a_hung_collector_holds_the_exit_for_exit_timeout_at_most(
    tmp_path: Path, exit_timeout: str | None
) -> None:
    env = {} if exit_timeout is None else {"ODIBI_OBSERVE_EXIT_TIMEOUT": exit_timeout}
    bound = 3.0 if exit_timeout is None else float(exit_timeout)
    with OtlpReceiver() as receiver:
        receiver.hang = True
        result = run_pipeline(
            tmp_path, runs=1, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, **env
        )
        assert receiver.hung >= 1  # the export really was waiting for an answer
    assert result.returncode == 0
    assert result.exit_seconds < bound + SLACK, result.stderr
    assert len(result.lines) <= 2, result.stderr
    assert "an export was still waiting for an answer" in result.stderr
    assert "1 run(s) kept in" in result.stderr
    assert [e.kind for e in spilled(default_spill(tmp_path))] == [EventKind.FINISHED]


def test_the_spilled_span_reaches_the_collector_through_sweep(tmp_path: Path) -> None:
    result = run_pipeline(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=closed_port_url())
    (event,) = spilled(default_spill(tmp_path))
    catalog = f"sqlite:///{tmp_path}/catalog.db"
    with OtlpReceiver() as receiver:
        sweep(
            catalog,
            log=tmp_path / "sweep.log",
            spool_dir=default_spill(tmp_path),
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
        )
        (span,) = receiver.wait_for_spans(1)
    assert span.trace_id == event.record.trace_id and span.span_id == event.record.span_id
    assert result.returncode == 0


def test_exit_timeout_is_a_setting() -> None:
    assert Settings().exit_timeout == 3.0
    assert resolve_settings({}, {"ODIBI_OBSERVE_EXIT_TIMEOUT": "0.5"}).exit_timeout == 0.5
    assert resolve_settings({}, {"ODIBI_OBSERVE_EXIT_TIMEOUT": "1500ms"}).exit_timeout == 1.5
    assert resolve_settings({"exit_timeout": 7}, {}).exit_timeout == 7
    with pytest.raises(ConfigurationError, match="ODIBI_OBSERVE_EXIT_TIMEOUT"):
        resolve_settings({}, {"ODIBI_OBSERVE_EXIT_TIMEOUT": "-1"})


# -- Durability: a background process ending during a catalog outage -------------------------------


def test_catalog_outage_at_exit_spills_every_run_and_sweep_records_each_once(
    tmp_path: Path,
) -> None:
    pg = throwaway_postgres_or_skip()
    try:
        catalog = pg.create_database("spill")
        pg.stop()  # the outage: the pipeline runs and ends while the catalog is down
        result = run_pipeline(tmp_path, runs=200, ODIBI_OBSERVE_CATALOG_URL=catalog)
        assert result.returncode == 0
        assert result.exit_seconds < 3.0 + SLACK, result.stderr
        spill = default_spill(tmp_path)
        # Before: "dropped 400 event(s) for sink 'catalog': shutdown", and nothing to sweep.
        assert "dropped" not in result.stderr
        (summary,) = [line for line in result.lines if "not delivered at exit" in line]
        assert "'catalog': 200 run(s) (400 event(s))" in summary
        assert f"200 run(s) kept in {spill} for delivery by" in summary
        events = spilled(spill)
        assert len({e.run_id for e in events}) == 200

        pg.start()
        log = tmp_path / "sweep.log"
        sweep(catalog, log=log, spool_dir=spill)
        sweep(catalog, log=log, spool_dir=spill)  # a second pass adds nothing
        assert not list(spill.glob("*.seg")) and not list(spill.glob("*.open"))  # collected
        rows = catalog_rows(catalog)
        assert len(rows) == 200
        assert {r["run_id"] for r in rows} == {e.run_id for e in events}
        assert {r["status"] for r in rows} == {"SUCCESS"}
    finally:
        pg.destroy()


def test_a_sidecar_on_spool_dir_delivers_what_a_background_process_spilled(
    tmp_path: Path, pg_url: str
) -> None:
    spool_dir = tmp_path / "spool"
    down = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    result = run_pipeline(
        tmp_path, runs=50, ODIBI_OBSERVE_CATALOG_URL=down, ODIBI_OBSERVE_SPOOL_DIR=str(spool_dir)
    )
    assert f"50 run(s) kept in {spool_dir} for delivery by" in result.stderr
    assert not default_spill(tmp_path).exists()  # spool_dir wins over the default
    with Sidecar(pg_url, spool_dir, log=tmp_path / "sidecar.log"):
        rows = eventually(lambda: _fifty(pg_url), timeout=30)
    assert len({r["run_id"] for r in rows}) == 50
    assert {r["status"] for r in rows} == {"SUCCESS"}


def _fifty(url: str) -> list[dict[str, object]]:
    rows = catalog_rows(url)
    assert len(rows) == 50 and all(r["status"] == "SUCCESS" for r in rows)
    return rows


def test_sigterm_during_an_outage_spills_the_crashed_run(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import odibi_observe as oo, time
        oo.configure(mode="background")
        with oo.node_run("p", "long_step"):
            print("ready", flush=True)
            time.sleep(60)
    """)
    env = child_env(
        XDG_STATE_HOME=str(tmp_path / "state"),
        ODIBI_OBSERVE_CATALOG_URL=f"postgresql+psycopg://x@127.0.0.1:{free_port()}/x",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert time.monotonic() - sent < 3.0 + SLACK
    assert "1 run(s) kept in" in stderr
    kinds = {(e.kind, e.record.status.value) for e in spilled(default_spill(tmp_path))}
    assert (EventKind.FINISHED, "CRASHED") in kinds


def test_sidecar_mode_does_not_spill(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    result = run_pipeline(tmp_path, MODE="sidecar", ODIBI_OBSERVE_SPOOL_DIR=str(spool_dir))
    assert result.returncode == 0 and result.lines == []
    assert not default_spill(tmp_path).exists()
    assert os.path.isdir(spool_dir)


# -- the OTLP exporter itself ----------------------------------------------------------------------


def _span() -> ReadableSpan:
    return record_to_span(make_record(), Resource.create({}))


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_the_otlp_exporter_sends_once_per_export_and_says_why_it_failed(
    protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Pins the one private hook on the SDK's OTLP/HTTP client (``_one_attempt`` in
    sinks/otel/exporters.py): if a new SDK version changes the client, this fails instead of the
    exit getting slow."""
    with OtlpReceiver() as receiver:
        receiver.down = True  # 503: retryable, so the SDK client alone would retry 5 times
        exporter = _otlp_span_exporter(receiver.endpoint, protocol, 10.0)
        with caplog.at_level(logging.DEBUG):
            start = time.monotonic()
            assert exporter.export([_span()]) is SpanExportResult.FAILURE
            assert time.monotonic() - start < 0.9  # the SDK's first backoff is 0.8-1.2 s
        assert receiver.refused == 1
    assert getattr(exporter, "last_error", None) in ("HTTP 503 Service Unavailable", "HTTP 503")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    closed = _otlp_span_exporter(closed_port_url(), protocol, 10.0)
    assert closed.export([_span()]) is SpanExportResult.FAILURE
    assert "Connection refused" in (getattr(closed, "last_error", None) or "")


def test_odibi_observe_run_keeps_its_runs_when_the_catalog_is_down(tmp_path: Path) -> None:
    pytest.importorskip("odibi")
    from tests.test_odibi_integration import INGEST, _cli_command, make_project, run_subprocess

    project = make_project(tmp_path / "shop", [INGEST]).parent
    down = f"postgresql+psycopg://etl@127.0.0.1:{free_port()}/catalog"
    result = run_subprocess(
        [*_cli_command("odibi-observe"), "run", "--catalog", down, "odibi.yaml"],
        project,
        {"XDG_STATE_HOME": str(tmp_path / "state")},
    )
    assert "recorded 1 node run" in result.stderr, result.stderr[-3000:]
    # Odibi configures logging its own way; the exit line must reach the terminal anyway.
    assert "kept in" in result.stderr, result.stderr[-3000:]
    events = spilled(default_spill(tmp_path))
    assert {(e.kind, e.record.node) for e in events} >= {(EventKind.FINISHED, "ingest_orders")}
