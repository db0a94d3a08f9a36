"""``odibi-observe sidecar`` and ``odibi-observe sweep`` as real processes.

The sidecar is started the way an operator starts it (``python -m odibi_observe.cli sidecar
...``), talked to over HTTP, fed by a pipeline process in sidecar mode, and stopped with
SIGTERM; ``sweep`` is run after a pipeline was killed with SIGKILL, with the OTLP exporter of
the standard ``OTEL_*`` variables pointed at a real OTLP receiver.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from odibi_observe.cli import build_parser
from odibi_observe.config import parse_duration
from odibi_observe.conventions import RunStatus
from odibi_observe.sidecar.commands import format_size, parse_size
from tests.helpers import wait_until
from tests.otlp_receiver import OtlpReceiver
from tests.test_sidecar_service import (
    catalog_rows,
    run_pipeline,
    start_hanging_pipeline,
)

CLI = [sys.executable, "-m", "odibi_observe.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without odibi-observe or OTel settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ODIBI_OBSERVE_", "OTEL_")) or k == "ODIBI_OBSERVE_TEST_PG_URL"
    }
    env.update(extra)
    return env


class SidecarProcess:
    """``odibi-observe sidecar`` in a child process, with the address it printed."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "sidecar", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or clean_env(),
        )
        assert self.proc.stdout is not None
        self.banner = [self.proc.stdout.readline()]
        match = re.search(r"listening on (http://\S+)", self.banner[0])
        if match is None:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"sidecar did not start: {self.banner[0]!r} {err}")
        self.url = match.group(1)
        self.banner += [self.proc.stdout.readline() for _ in range(4)]

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def terminate(self, timeout: float = 15.0) -> tuple[int, str, str, float]:
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err, time.monotonic() - began


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sidecar_serves_delivers_and_stops_on_sigterm(
    catalog_url: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    spool = tmp_path / "spool"
    sidecar = SidecarProcess(
        "--catalog",
        catalog_url,
        "--spool-dir",
        str(spool),
        "--listen",
        "127.0.0.1:0",
        "--sweep-interval",
        "1h",
    )
    processes.append(sidecar.proc)
    assert sidecar.url.startswith("http://127.0.0.1:")
    banner = "".join(sidecar.banner)
    assert str(spool) in banner and "sinks    prometheus, catalog" in banner

    status, body = sidecar.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"

    run_ids = run_pipeline(spool, 3)
    assert wait_until(lambda: set(run_ids) <= set(catalog_rows(catalog_url)), 20)
    status, body = sidecar.get("/metrics")
    assert (
        b'odibi_node_runs_total{environment="test",node="load",pipeline="nightly",'
        b'project="shop",status="SUCCESS"} 3.0' in body
    )

    code, out, err, took = sidecar.terminate()
    assert code == 0, err
    assert took < 10
    assert "odibi-observe sidecar stopped" in out
    assert "Traceback" not in err


def test_sidecar_reads_its_settings_from_the_environment(
    sqlite_url: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    env = clean_env(
        ODIBI_OBSERVE_CATALOG_URL=sqlite_url,
        ODIBI_OBSERVE_SPOOL_DIR=str(tmp_path / "spool"),
        ODIBI_OBSERVE_SIDECAR_LISTEN="127.0.0.1:0",
        ODIBI_OBSERVE_SIDECAR_TOKEN_FILE=str(token),
        ODIBI_OBSERVE_SWEEP_INTERVAL="0",
    )
    sidecar = SidecarProcess(env=env)
    processes.append(sidecar.proc)
    assert "sweeper  off" in "".join(sidecar.banner)
    request = urllib.request.Request(
        sidecar.url + "/v1/traces",
        data=b"",
        method="POST",
        headers={"Content-Type": "application/x-protobuf"},
    )
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(request, timeout=10)
    assert denied.value.code == 401
    request.add_header("Authorization", "Bearer t0ken")
    with urllib.request.urlopen(request, timeout=10) as response:  # an empty export is valid
        assert response.status == 200
    assert sidecar.terminate()[0] == 0


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env or clean_env(),
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--catalog", "postgresql://etl:hunter2@db:port/x"],
            {},
            r"postgresql://etl:\*\*\*@db:port/x.* is not a valid database URL",
        ),
        (["--listen", "127.0.0.1:99999"], {}, r"port 99999 is not a TCP port"),
        (["--sweep-interval", "soon"], {}, r"--sweep-interval='soon': expected a duration"),
        (
            [],
            {"ODIBI_OBSERVE_SPOOL_MAX_BYTES": "lots"},
            r"ODIBI_OBSERVE_SPOOL_MAX_BYTES='lots': expected a size",
        ),
        (["--token-file", "/nonexistent/token"], {}, r"--token-file '/nonexistent/token' cannot"),
        ([], {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, r"otlp_protocol='carrier-pigeon'"),
    ],
)
def test_sidecar_bad_input_is_one_line_and_exit_2(
    sqlite_url: str, tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    base = [
        "--catalog",
        sqlite_url,
        "--spool-dir",
        str(tmp_path / "spool"),
        "--listen",
        "127.0.0.1:0",
    ]
    done = _run("sidecar", *base, *args, env=clean_env(**env))
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("odibi-observe: error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert "hunter2" not in done.stderr + done.stdout


def test_sidecar_port_in_use_and_unwritable_spool_are_exit_2(
    sqlite_url: str, tmp_path: Path
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        done = _run(
            "sidecar",
            "--catalog",
            sqlite_url,
            "--spool-dir",
            str(tmp_path / "s"),
            "--listen",
            f"127.0.0.1:{port}",
        )
    finally:
        taken.close()
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr

    blocker = tmp_path / "file"
    blocker.write_text("")  # a directory cannot be created under a file, even by root
    done = _run(
        "sidecar",
        "--catalog",
        sqlite_url,
        "--spool-dir",
        str(blocker / "spool"),
        "--listen",
        "127.0.0.1:0",
    )
    assert done.returncode == 2
    assert "spool directory" in done.stderr and "is not usable" in done.stderr

    done = _run("sidecar", "--spool-dir", str(tmp_path / "s"))
    assert done.returncode == 2 and "--catalog URL is required" in done.stderr


def test_help_documents_every_option_with_its_default_and_environment_variable() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("sidecar", "sweep"):
        sub = commands.choices[name]
        text = _run(name, "--help").stdout
        for action in sub._actions:
            if action.dest in ("help", "dry_run", "json"):  # no variable: per invocation
                continue
            flag = action.option_strings[0]
            assert flag in text, (name, flag)
            assert action.help and "env " in action.help, (name, flag)
            assert "default" in action.help or "required" in action.help, (name, flag)
        for variable in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_SERVICE_NAME",
        ):
            assert variable in text


def test_value_parsers() -> None:
    assert parse_duration("30s") == 30 and parse_duration("5m") == 300
    assert parse_duration("1.5h") == 5400 and parse_duration("45") == 45
    assert parse_duration("250ms") == 0.25
    assert parse_size("512MiB") == 512 * 2**20 and parse_size("100MB") == 100 * 10**6
    assert parse_size("64k") == 65536 and parse_size("1024") == 1024
    assert format_size(512 * 2**20) == "512MiB"
    for bad in ("", "5 minutes", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for bad in ("lots", "0", "5iB"):
        with pytest.raises(ValueError):
            parse_size(bad)


# -- odibi-observe sweep ---------------------------------------------------------------------


def test_sweep_closes_a_killed_run_and_exports_its_crash_span(
    catalog_url: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    spool = tmp_path / "spool"
    proc, hung, done = start_hanging_pipeline(spool)
    processes.append(proc)
    finished_later = run_pipeline(spool, 1)  # a finished run, still only in the spool
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    with OtlpReceiver() as collector:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        )
        dry = _run(
            "sweep", "--catalog", catalog_url, "--spool-dir", str(spool), "--dry-run", env=env
        )
        assert dry.returncode == 0, dry.stderr
        assert f"would close {hung}" in dry.stdout and "1 to close as CRASHED" in dry.stdout
        assert catalog_rows(catalog_url)[hung].status is RunStatus.RUNNING

        swept = _run("sweep", "--catalog", catalog_url, "--spool-dir", str(spool), env=env)
        assert swept.returncode == 0, swept.stderr
        lines = swept.stdout.splitlines()
        assert lines[0].startswith(f"closed {hung}  nightly/hang  started ")
        assert "process" in lines[1] and "was not alive at" in lines[1]
        assert "last sign of life" in lines[1]
        assert re.search(
            r"swept host '.+' at .+: 1 RUNNING run\(s\) checked, 1 closed as "
            r"CRASHED \(process_gone: 1\)",
            lines[-1],
        ), lines[-1]

        rows = catalog_rows(catalog_url)
        assert rows[hung].status is RunStatus.CRASHED
        for run_id in (*done, *finished_later):  # delivered from the spool, not crashed
            assert rows[run_id].status is RunStatus.SUCCESS
        spans = {s.attributes["odibi.run_id"]: s for s in collector.wait_for_spans(3, 20)}
        crash = spans[hung]
        assert (crash.trace_id, crash.span_id) == (rows[hung].trace_id, rows[hung].span_id)
        assert crash.start_ns // 1000 == rows[hung].started_ns // 1000
        assert crash.attributes["odibi.status"] == "CRASHED"

    again = _run("sweep", "--catalog", catalog_url)
    assert again.returncode == 0 and "0 RUNNING run(s) checked, 0 closed" in again.stdout


def test_sweep_with_an_unreachable_catalog_is_exit_2(tmp_path: Path) -> None:
    done = _run("sweep", "--catalog", "postgresql://etl:hunter2@127.0.0.1:1/x")
    assert done.returncode == 2
    assert "cannot sweep postgresql://etl:***@127.0.0.1:1/x" in done.stderr
    assert "hunter2" not in done.stderr
