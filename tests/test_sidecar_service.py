"""The Sidecar in-process: real spool, real pipeline processes, real catalogs, real HTTP.

Pipelines run as separate Python processes in ``mode="sidecar"`` (they only append to the
spool); the sidecar must turn that into catalog rows, metrics and spans, close the runs of a
process killed with SIGKILL, and say on ``/healthz`` when it is stuck.
"""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from odibi_observe.catalog import CatalogStore
from odibi_observe.config import ConfigurationError, Settings
from odibi_observe.conventions import RunStatus, Source
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sidecar import SidecarOptions
from odibi_observe.sidecar.service import Sidecar
from odibi_observe.sinks.base import Sink
from odibi_observe.sinks.catalog import CatalogSink
from odibi_observe.sinks.prometheus import PrometheusSink
from odibi_observe.spool import Spool
from tests.helpers import make_record, wait_until
from tests.otlp_receiver import OtlpReceiver

#: A pipeline process in sidecar mode: one node that finishes, then (with "hang") one that
#: prints its run id once its RUNNING event is spooled and waits to be killed.
PIPELINE = """
import sys, time
import odibi_observe as oo
oo.configure(mode="sidecar", spool_dir=sys.argv[1], project="shop", environment="test",
             handle_sigterm=False, strict=True)

@oo.observe_node(pipeline="nightly")
def load(n):
    print("done", oo.current_run().run_id, flush=True)
    return list(range(n))

@oo.observe_node(pipeline="nightly")
def hang():
    print("hang", oo.current_run().run_id, flush=True)
    time.sleep(600)

for i in range(int(sys.argv[2])):
    load(i + 1)
if len(sys.argv) > 3:
    hang()
"""


def run_pipeline(spool: Path, runs: int) -> list[str]:
    """Run a sidecar-mode pipeline to completion; its run ids."""
    out = subprocess.run(
        [sys.executable, "-c", PIPELINE, str(spool), str(runs)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line.split()[1] for line in out.stdout.splitlines()]


def start_hanging_pipeline(spool: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    """A pipeline whose last node is RUNNING (spooled) when this returns."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PIPELINE, str(spool), "1", "hang"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    done = proc.stdout.readline().split()[1]
    hung = proc.stdout.readline().split()[1]
    return proc, hung, [done]


def options(catalog_url: str, spool: Path, **changes: Any) -> SidecarOptions:
    values: dict[str, Any] = dict(
        catalog_url=catalog_url,
        spool_dir=str(spool),
        listen_port=0,
        sweep_interval=0,
        poll_interval=0.02,
    )
    values.update(changes)
    return SidecarOptions(**values)


def settings(catalog_url: str, **changes: Any) -> Settings:
    return Settings(catalog_url=catalog_url, handle_sigterm=False, otel_metrics=False, **changes)


def get(
    url: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def catalog_rows(url: str) -> dict[str, Any]:
    store = CatalogStore(url)
    try:
        store.ensure_schema()
        return {r.run_id: r for r in store.recent_runs(limit=1000)}
    finally:
        store.dispose()


@pytest.fixture
def started() -> Iterator[list[Sidecar]]:
    """Sidecars a test starts; stopped at the end whatever happens."""
    sidecars: list[Sidecar] = []
    yield sidecars
    for s in sidecars:
        s.stop(timeout=2)


def test_spooled_runs_reach_the_catalog_and_the_metrics(
    catalog_url: str, tmp_path: Path, started: list[Sidecar]
) -> None:
    spool = tmp_path / "spool"
    sidecar = Sidecar(options(catalog_url, spool), settings=settings(catalog_url)).start()
    started.append(sidecar)
    run_ids = run_pipeline(spool, 5)

    assert wait_until(lambda: set(run_ids) <= set(catalog_rows(catalog_url)), 20)
    rows = catalog_rows(catalog_url)
    assert {rows[r].status for r in run_ids} == {RunStatus.SUCCESS}
    assert sorted(rows[r].rows_processed for r in run_ids) == [1, 2, 3, 4, 5]

    registry = sidecar.registry
    labels = {
        "project": "shop",
        "pipeline": "nightly",
        "node": "load",
        "environment": "test",
        "status": "SUCCESS",
    }
    assert wait_until(lambda: registry.get_sample_value("odibi_node_runs_total", labels) == 5)
    assert (
        registry.get_sample_value(
            "odibi_node_rows_processed_total", {k: v for k, v in labels.items() if k != "status"}
        )
        == 15
    )
    for kind in ("started", "finished"):
        assert (
            registry.get_sample_value("odibi_observe_sidecar_events_ingested_total", {"kind": kind})
            == 5
        )
    assert wait_until(
        lambda: (
            registry.get_sample_value("odibi_observe_spool_backlog_events", {"sink": "catalog"})
            == 0
        )
    )
    assert sidecar.stop() is True


def test_a_killed_pipeline_run_is_closed_with_a_crash_span_with_its_own_ids(
    catalog_url: str, tmp_path: Path, started: list[Sidecar]
) -> None:
    spool = tmp_path / "spool"
    with OtlpReceiver() as collector:
        sidecar = Sidecar(
            options(catalog_url, spool, sweep_interval=3600),
            settings=settings(catalog_url, otlp_endpoint=collector.endpoint),
        )
        started.append(sidecar.start())
        proc, hung, done = start_hanging_pipeline(spool)
        assert wait_until(lambda: hung in catalog_rows(catalog_url), 20)
        running = catalog_rows(catalog_url)[hung]
        assert running.status is RunStatus.RUNNING
        alive = sidecar.sweep_once()
        assert alive is not None and alive.closed == []  # alive: left alone

        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        result = sidecar.sweep_once()
        assert result is not None
        assert [r.run_id for r in result.closed] == [hung]
        assert result.reasons == {"process_gone": 1}

        crashed = catalog_rows(catalog_url)[hung]
        assert crashed.status is RunStatus.CRASHED and crashed.started_ns == running.started_ns
        spans = {s.attributes["odibi.run_id"]: s for s in collector.wait_for_spans(2, timeout=20)}
        span = spans[hung]
        assert (span.trace_id, span.span_id) == (running.trace_id, running.span_id)
        assert span.start_ns // 1000 == running.started_ns // 1000  # back-dated to the start
        assert span.attributes["odibi.status"] == "CRASHED" and span.status_code == 2
        assert spans[done[0]].attributes["odibi.status"] == "SUCCESS"
        assert (
            sidecar.registry.get_sample_value(
                "odibi_observe_sweeper_closed_total", {"reason": "process_gone"}
            )
            == 1
        )
        assert sidecar.stop() is True


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class Breakable(Sink):
    """A real catalog sink that can be made to fail, named like the catalog sink."""

    name = "catalog"

    def __init__(self, url: str) -> None:
        self.inner = CatalogSink(url)
        self.broken = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def export(self, events: Sequence[RunEvent]) -> None:
        self.release.wait(30)
        if self.broken.is_set():
            raise ConnectionError("catalog unreachable")
        self.inner.export(events)

    def shutdown(self) -> None:
        self.inner.shutdown()


def test_no_sweep_while_a_run_s_ending_is_still_spooled(
    sqlite_url: str, tmp_path: Path, started: list[Sidecar]
) -> None:
    """The catalog says RUNNING and the process is gone — but its SUCCESS is in the spool.
    Sweeping then would record a crash that did not happen."""
    spool = tmp_path / "spool"
    catalog = Breakable(sqlite_url)
    sidecar = Sidecar(
        options(sqlite_url, spool, sweep_interval=3600),
        settings=settings(sqlite_url),
        sinks=[catalog],
    )
    started.append(sidecar.start())
    record = make_record(status=RunStatus.RUNNING, pid=dead_pid())
    catalog.inner.export([RunEvent(EventKind.STARTED, record)])
    catalog.broken.set()
    # Spooled by the run's own process (the writer id names its pid), which is gone.
    writer = Spool(spool, fsync="never", writer_id=f"{record.host}-{record.pid}-1")
    writer.append(
        RunEvent(
            EventKind.FINISHED,
            record.finished(
                status=RunStatus.SUCCESS, ended_ns=record.started_ns + 10**9, rows_processed=3
            ),
        )
        .to_json()
        .encode()
    )
    writer.close()
    assert wait_until(lambda: sidecar.pump.failing().get("catalog", False))

    postponed = sidecar.sweep_once(catchup_timeout=0.3)
    assert postponed is not None and postponed.closed == []  # judged dead, closing postponed
    assert catalog_rows(sqlite_url)[record.run_id].status is RunStatus.RUNNING
    status, _, body = get(sidecar.url, "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "degraded"
    assert health["sinks"]["catalog"]["failing"] is True
    assert "catalog unreachable" in health["sinks"]["catalog"]["last_error"]

    catalog.broken.clear()
    assert wait_until(lambda: sidecar.pump.backlog()["catalog"] == 0, 20)
    recovered = sidecar.sweep_once()
    assert recovered is not None and recovered.closed == []
    assert catalog_rows(sqlite_url)[record.run_id].status is RunStatus.SUCCESS


def test_healthz_is_503_when_an_export_hangs_and_200_again_after(
    sqlite_url: str, tmp_path: Path, started: list[Sidecar]
) -> None:
    spool = tmp_path / "spool"
    catalog = Breakable(sqlite_url)
    catalog.release.clear()  # the next export hangs, like a database call that never returns
    sidecar = Sidecar(
        options(sqlite_url, spool, stuck_after=0.3), settings=settings(sqlite_url), sinks=[catalog]
    )
    started.append(sidecar.start())
    run_pipeline(spool, 1)
    assert wait_until(lambda: get(sidecar.url, "/healthz")[0] == 503, 10)
    health = json.loads(get(sidecar.url, "/healthz")[2])
    assert health["status"] == "stuck" and health["stuck"] == ["sink:catalog"]
    assert health["sinks"]["catalog"]["exporting_for_seconds"] > 0.3
    catalog.release.set()
    assert wait_until(lambda: get(sidecar.url, "/healthz")[0] == 200, 10)


def test_healthz_is_503_when_a_loop_stops_completing(
    sqlite_url: str, tmp_path: Path, started: list[Sidecar], monkeypatch: pytest.MonkeyPatch
) -> None:
    sidecar = Sidecar(
        options(sqlite_url, tmp_path / "spool", stuck_after=0.2), settings=settings(sqlite_url)
    )
    started.append(sidecar.start())
    status, headers, body = get(sidecar.url, "/healthz")
    health = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert health["status"] == "ok" and health["stuck"] == []
    assert set(health["sinks"]) == {"prometheus", "catalog"}
    assert health["spool"]["backlog"] == {"prometheus": 0, "catalog": 0}
    assert health["last_loop_age_seconds"] < 2

    hung = threading.Event()
    original = sidecar.spool.stats

    def stuck_stats() -> Any:
        hung.wait(30)  # the maintenance loop's disk scan never returns
        return original()

    monkeypatch.setattr(sidecar.spool, "stats", stuck_stats)
    try:
        assert wait_until(lambda: get(sidecar.url, "/healthz")[0] == 503, 10)
        assert json.loads(get(sidecar.url, "/healthz")[2])["stuck"] == ["maintenance"]
    finally:
        hung.set()


def test_metrics_negotiation_text_openmetrics_gzip_and_name_filter(
    sqlite_url: str, tmp_path: Path, started: list[Sidecar]
) -> None:
    sidecar = Sidecar(options(sqlite_url, tmp_path / "spool"), settings=settings(sqlite_url))
    started.append(sidecar.start())
    status, headers, body = get(sidecar.url, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    for name in (
        "odibi_observe_ledger_spans_total",
        "odibi_observe_spool_bytes",
        "odibi_observe_sidecar_last_loop_timestamp_seconds",
        "odibi_observe_sink_errors_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text
    status, headers, body = get(
        sidecar.url, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = get(sidecar.url, "/metrics", {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert b"odibi_observe_spool_bytes" in gzip.decompress(body)
    status, headers, body = get(sidecar.url, "/metrics?name[]=odibi_observe_spool_bytes")
    assert b"odibi_observe_spool_bytes " in body and b"ledger" not in body


def test_bad_input_is_a_configuration_error_before_anything_starts(
    sqlite_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=r"postgresql://u:\*\*\*@") as info:
        Sidecar(options("postgresql://u:hunter2@db:notaport/x", tmp_path / "a"))
    assert "hunter2" not in str(info.value)

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match=r"spool directory .* is not usable"):
        Sidecar(options(sqlite_url, blocker / "spool"))

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(ConfigurationError, match=r"cannot listen on 127\.0\.0\.1:.*in use"):
            Sidecar(
                options(sqlite_url, tmp_path / "b", listen_port=taken.getsockname()[1]),
                settings=settings(sqlite_url),
            )
    finally:
        taken.close()


def test_stop_waits_for_healthy_sinks_but_not_for_a_failing_one(
    sqlite_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    catalog = Breakable(sqlite_url)
    catalog.broken.set()
    prometheus = PrometheusSink(CollectorRegistry())
    sidecar = Sidecar(
        options(sqlite_url, spool, drain_timeout=5),
        settings=settings(sqlite_url),
        sinks=[catalog, prometheus],
    ).start()
    run_pipeline(spool, 3)
    assert wait_until(lambda: sidecar.pump.failing().get("catalog", False), 10)
    began = time.monotonic()
    assert sidecar.stop() is False  # the catalog's events are still spooled...
    assert time.monotonic() - began < 4  # ...and stop did not wait out the drain for them
    assert sidecar.pump.backlog()["prometheus"] == 0

    # The next sidecar on the same spool delivers them.
    again = Sidecar(options(sqlite_url, spool), settings=settings(sqlite_url)).start()
    try:
        assert wait_until(lambda: len(catalog_rows(sqlite_url)) == 3, 20)
    finally:
        again.stop()


def test_the_environment_s_sidecar_mode_does_not_make_the_sidecar_spool_to_itself(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ODIBI_OBSERVE_MODE", "sidecar")
    monkeypatch.setenv("ODIBI_OBSERVE_PROMETHEUS_PORT", "0")
    sidecar = Sidecar(options(sqlite_url, tmp_path / "spool"))
    try:
        assert sidecar.settings.mode == "background"
        assert sidecar.observer.metrics_server is None  # /metrics is the sidecar's own port
        assert {s.name for s in sidecar.sinks} == {"prometheus", "catalog"}
    finally:
        sidecar.stop()


def test_the_sweeper_s_own_crash_event_never_overwrites_a_real_ending_in_the_catalog(
    sqlite_url: str, tmp_path: Path, started: list[Sidecar]
) -> None:
    """The race the catalog filter closes: a run's SUCCESS is spooled just as a sweep closes
    the run; the sweeper's CRASHED event follows it in the spool. The real ending must win."""
    spool = tmp_path / "spool"
    store = CatalogStore(sqlite_url)
    store.ensure_schema()
    record = make_record(status=RunStatus.RUNNING, pid=dead_pid())
    store.upsert([RunEvent(EventKind.STARTED, record)])
    crashed = record.finished(
        status=RunStatus.CRASHED,
        ended_ns=record.started_ns + 1,
        error_type="ProcessCrashed",
        source=Source.SIDECAR,
    )
    assert store.close_running([crashed]) == [record.run_id]
    writer = Spool(spool, fsync="never")
    success = record.finished(
        status=RunStatus.SUCCESS, ended_ns=record.started_ns + 10**9, rows_processed=7
    )
    for event in (RunEvent(EventKind.FINISHED, success), RunEvent(EventKind.FINISHED, crashed)):
        writer.append(event.to_json().encode())
    writer.close()

    sidecar = Sidecar(options(sqlite_url, spool), settings=settings(sqlite_url))
    started.append(sidecar.start())
    assert wait_until(lambda: sidecar.pump.delivered().get("catalog") == 2, 20)
    final = catalog_rows(sqlite_url)[record.run_id]
    assert final.status is RunStatus.SUCCESS and final.rows_processed == 7
    store.dispose()
