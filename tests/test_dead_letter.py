"""Poison records, provoked for real: a node name no backend can encode, a record of bad types.

A node named ``os.fsdecode(b"load_r\\xe9sum\\xe9.csv")`` (lone surrogates: how Python decodes a
latin-1 file name) used to make the OTLP exporter fail its batch on every retry — in sidecar
mode the OTel cursor never moved again, across restarts, and ``/metrics`` answered 500 until
a restart; in-process the spans of the same batch were lost. Here a real pipeline process
runs that node and 20 more, through a real sidecar process (or in-process) to the real OTLP
receiver over HTTP, real PostgreSQL and Prometheus: all 21 runs arrive everywhere, the poison
one with its name escaped (``odibi_observe._textsafe``). A spooled record of bad types is
dead-lettered with its reason, shown on ``/healthz``, and never replayed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from odibi_observe._deadletter import DEAD_LETTER_DIR, DEAD_LETTER_FILE, DeadLetter
from odibi_observe._selfmetrics import SelfMonitor
from odibi_observe.conventions import FIELDS, METRICS
from odibi_observe.record import RunRecord
from odibi_observe.spool import Spool
from tests.fault_helpers import (
    ROOT,
    Sidecar,
    catalog_rows,
    child_env,
    eventually,
    metric_sum,
    read_metrics_file,
)
from tests.helpers import POISON_NODE, POISON_NODE_ESCAPED, finished, make_record
from tests.otlp_receiver import OtlpReceiver

PIPELINE = str(ROOT / "tests" / "poison_pipeline.py")
NODE_ATTR = FIELDS.node.attribute or ""
RUN_ID_ATTR = FIELDS.run_id.attribute or ""
NODE_COLUMN = FIELDS.node.column
RUNS = METRICS.runs.prometheus


def _run_pipeline(
    started: Path,
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> dict[str, str]:
    """Run the pipeline process to its end; its runs as run id → node name."""
    result = subprocess.run(
        [sys.executable, PIPELINE, "--started", str(started), *args],
        env=env or child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log.write_text(
        log.read_text() + result.stdout + result.stderr
        if log.exists()
        else result.stdout + result.stderr
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {}
    for line in started.read_text(encoding="utf-8").splitlines():
        run_id, name = line.split(" ", 1)
        runs[run_id] = json.loads(name)
    return runs


def _escaped(name: str) -> str:
    return POISON_NODE_ESCAPED if name == POISON_NODE else name


def _assert_spans(receiver: OtlpReceiver, runs: dict[str, str]) -> None:
    spans = [s for s in receiver.spans if RUN_ID_ATTR in s.attributes]
    got = {str(s.attributes[RUN_ID_ATTR]): str(s.attributes[NODE_ATTR]) for s in spans}
    assert got == {rid: _escaped(name) for rid, name in runs.items()}, (
        f"{len(got)} of {len(runs)} spans"
    )
    assert len(spans) == len(runs), "a span arrived twice"


def _assert_catalog(url: str, runs: dict[str, str]) -> None:
    rows = {r["run_id"]: r for r in catalog_rows(url)}
    assert {rid: r[NODE_COLUMN] for rid, r in rows.items()} == {
        rid: _escaped(name) for rid, name in runs.items()
    }
    assert {r["status"] for r in rows.values()} == {"SUCCESS"}


def _assert_metrics(samples: Any, runs: dict[str, str]) -> None:
    assert metric_sum(samples, RUNS) == len(runs)
    assert metric_sum(samples, RUNS, node=POISON_NODE_ESCAPED) == 1


def test_from_dict_refuses_bad_types_with_the_field_named() -> None:
    good = json.loads(finished(make_record()).to_json())["record"]
    assert RunRecord.from_dict(good).run_id == good["run_id"]
    for field, value in (
        ("rows_processed", "12"),
        ("node", 7),
        ("started_ns", 1.5),
        ("attempt", True),
        ("suggestions", [1]),
        ("attributes", {"a": {}}),
        ("error_message", ["x"]),
    ):
        with pytest.raises(TypeError, match=repr(field) if field != "attributes" else "'a'"):
            RunRecord.from_dict({**good, field: value})


@pytest.mark.postgres
def test_sidecar_poison_name_then_20_runs_all_arrive_and_restarts_do_not_replay(
    pg_url: str, tmp_path: Path
) -> None:
    """Sidecar mode: the poison run and the 20 after it arrive as spans (OTLP/HTTP), catalog
    rows and metrics, the poison one with its name escaped; ``/metrics`` answers. A record of
    bad types spooled next is dead-lettered for each sink with its reason (on ``/healthz``
    and in the dead-letter directory) while the runs after it arrive. After a restart the
    sidecar replays neither: five more runs arrive, nothing twice."""
    spool, started, log = tmp_path / "spool", tmp_path / "started", tmp_path / "log.txt"
    with OtlpReceiver() as receiver:
        sidecar = Sidecar(pg_url, spool, log=log, otlp_endpoint=receiver.endpoint).start()
        try:
            runs = _run_pipeline(
                started,
                log,
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--poison",
                "--runs",
                "20",
            )
            assert len(runs) == 21
            eventually(lambda: _assert_spans(receiver, runs), timeout=30)
            eventually(lambda: _assert_catalog(pg_url, runs), timeout=30)
            eventually(lambda: _assert_metrics(sidecar.metrics(), runs), timeout=30)

            # A record no sink can take: rows_processed is a string.
            data = json.loads(finished(make_record()).to_json())
            data["record"]["rows_processed"] = "12"
            writer = Spool(spool, fsync="never")
            writer.append(json.dumps(data).encode())
            writer.close()
            runs |= _run_pipeline(
                started,
                log,
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--runs",
                "3",
                "--first",
                "20",
            )

            def dead_lettered() -> dict[str, Any]:
                health = json.loads(sidecar.get("/healthz"))["dead_letter"]
                assert health["by_sink"] == {"catalog": 1, "otel": 1, "prometheus": 1}
                return dict(health)

            health = eventually(dead_lettered, timeout=30)
            assert health["last"]["reason"].startswith(
                "TypeError: RunRecord field 'rows_processed' must be int or NoneType"
            )
            eventually(lambda: _assert_spans(receiver, runs), timeout=30)
            eventually(lambda: _assert_catalog(pg_url, runs), timeout=30)
            eventually(lambda: _assert_metrics(sidecar.metrics(), runs), timeout=30)
            samples = sidecar.metrics()
            for sink in ("catalog", "otel", "prometheus"):
                assert metric_sum(samples, "odibi_observe_dead_letter_total", sink=sink) == 1
            lines = (spool / DEAD_LETTER_DIR / DEAD_LETTER_FILE).read_text().splitlines()
            entries = [json.loads(x) for x in lines]
            assert sorted(e["sink"] for e in entries) == ["catalog", "otel", "prometheus"]
            assert all(e["payload"] == data for e in entries)
        finally:
            sidecar.stop()

        again = Sidecar(pg_url, spool, log=log, otlp_endpoint=receiver.endpoint).start()
        try:
            runs |= _run_pipeline(
                started,
                log,
                "--mode",
                "sidecar",
                "--spool-dir",
                str(spool),
                "--runs",
                "5",
                "--first",
                "30",
            )
            eventually(lambda: _assert_spans(receiver, runs), timeout=30)
            eventually(lambda: _assert_catalog(pg_url, runs), timeout=30)
            eventually(lambda: _assert(metric_sum(again.metrics(), RUNS) == 5), timeout=30)
            health = json.loads(again.get("/healthz"))
            assert health["dead_letter"]["total"] == 0, "the bad record was replayed"
            assert health["sinks"]["otel"]["failing"] is False
            assert len((spool / DEAD_LETTER_DIR / DEAD_LETTER_FILE).read_text().splitlines()) == 3
        finally:
            again.stop()


def _assert(condition: bool) -> None:
    assert condition


@pytest.mark.postgres
def test_in_process_poison_name_then_20_runs_all_arrive(pg_url: str, tmp_path: Path) -> None:
    """In-process (background) mode: the batch holding the poison run used to be lost for
    spans. All 21 runs arrive as spans over OTLP/HTTP, catalog rows and Prometheus samples
    (the text file), the poison one with its name escaped; nothing is dead-lettered."""
    started, log, textfile = tmp_path / "started", tmp_path / "log.txt", tmp_path / "m.prom"
    with OtlpReceiver() as receiver:
        env = child_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        )
        runs = _run_pipeline(
            started,
            log,
            "--mode",
            "background",
            "--catalog",
            pg_url,
            "--textfile",
            str(textfile),
            "--spool-dir",
            str(tmp_path / "sp"),
            "--poison",
            "--runs",
            "20",
            env=env,
        )
        assert len(runs) == 21
        eventually(lambda: _assert_spans(receiver, runs), timeout=10)
    _assert_catalog(pg_url, runs)
    samples = read_metrics_file(textfile)
    _assert_metrics(samples, runs)
    assert metric_sum(samples, "odibi_observe_dead_letter_total") == 0
    assert not (tmp_path / "sp" / DEAD_LETTER_DIR).exists()


def test_the_dead_letter_file_is_bounded_and_a_write_failure_still_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past half its bound the file is rotated once (the older copy deleted): the directory
    never holds more than ``max_bytes``, however many records are dead-lettered. A directory
    that cannot be written leaves the count and a warning."""
    monitor = SelfMonitor(CollectorRegistry())
    dead = DeadLetter(monitor, tmp_path / DEAD_LETTER_DIR, max_bytes=20_000)
    for _ in range(200):
        dead.reject("otel", [(finished(make_record()), "RuntimeError: never")])
    files = sorted((tmp_path / DEAD_LETTER_DIR).iterdir())
    assert [f.name for f in files] == [DEAD_LETTER_FILE, DEAD_LETTER_FILE + ".1"]
    assert sum(f.stat().st_size for f in files) <= 20_000
    assert (
        monitor.registry.get_sample_value("odibi_observe_dead_letter_total", {"sink": "otel"})
        == 200
    )
    for line in files[0].read_text().splitlines():
        assert json.loads(line)["reason"] == "RuntimeError: never"

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    stuck = DeadLetter(monitor, blocked, max_bytes=20_000)
    stuck.reject("catalog", [(finished(make_record()), "TypeError: bad")])
    assert (
        monitor.registry.get_sample_value("odibi_observe_dead_letter_total", {"sink": "catalog"})
        == 1
    )
    assert "cannot write the dead letter" in caplog.text
    assert stuck.health()["by_sink"] == {"catalog": 1}
