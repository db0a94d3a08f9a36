"""``runs``, ``reconcile``, ``report`` and ``--help`` as a person sees them, in a pty.

Driven with pexpect at 80 columns: the output fits, is coloured on the terminal, and has no
colour (no escape sequence at all) when piped or when ``NO_COLOR`` is set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect  # type: ignore[import-untyped]  # no stubs are published
import pytest

from odibi_observe.catalog import CatalogStore
from odibi_observe.conventions import RunStatus
from tests.helpers import finished, make_record

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
EXE = shutil.which("odibi-observe", path=os.path.dirname(sys.executable))


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")
    }
    env.update(TERM="xterm-256color", **extra)
    return env


def _pty(*args: str, columns: int = 80, **env: str) -> tuple[str, int]:
    """Output and exit status of ``odibi-observe ARGS`` in a pseudo-terminal."""
    assert EXE is not None
    child = pexpect.spawn(
        EXE, list(args), dimensions=(60, columns), env=_env(**env), encoding="utf-8", timeout=120
    )
    child.expect(pexpect.EOF)
    child.close()
    return child.before.replace("\r\n", "\n"), int(child.exitstatus or 0)


def _piped(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert EXE is not None
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=120, check=False, env=_env(**env)
    )


def _visible(text: str) -> list[str]:
    return [ANSI.sub("", line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> str:
    """25 runs: two projects, a retried success, a failure with a long error and
    suggestions, a crash, and a row count that needs separators."""
    url = f"sqlite:///{tmp_path_factory.mktemp('runs')}/catalog.db"
    store = CatalogStore(url)
    store.ensure_schema()
    base = 1_780_000_000_000_000_000
    records = [
        make_record(
            node=f"node_{i:02d}",
            started_ns=base + i * 10**9,
            pipeline_run_id="11111111-aaaa-bbbb-cccc-000000000000",
        )
        for i in range(20)
    ]
    records += [
        make_record(
            node="load_a_very_long_node_name_that_cannot_fit_in_eighty_columns",
            started_ns=base + 30 * 10**9,
            rows=1_234_567,
            attempt=3,
            pipeline_run_id="22222222-aaaa-bbbb-cccc-000000000000",
        ),
        make_record(
            node="enrich",
            status=RunStatus.FAILURE,
            started_ns=base + 31 * 10**9,
            rows=None,
            error_type="ValueError",
            error_message="column 'segment' not found " + "x" * 150,
            suggestions=("compare the header of customers.csv with the schema",),
            pipeline_run_id="22222222-aaaa-bbbb-cccc-000000000000",
        ),
        make_record(
            node="publish",
            status=RunStatus.CRASHED,
            started_ns=base + 32 * 10**9,
            rows=None,
            error_type="ProcessCrashed",
            error_message="process 4242 on host vm was not alive",
            pipeline_run_id="22222222-aaaa-bbbb-cccc-000000000000",
        ),
        make_record(
            node="other",
            project="billing",
            environment="prod",
            pipeline="invoices",
            started_ns=base + 33 * 10**9,
        ),
        make_record(
            node="other",
            project="billing",
            environment="dev",
            pipeline="invoices",
            started_ns=base + 34 * 10**9,
        ),
    ]
    store.upsert([finished(r) for r in records])
    store.dispose()
    return url


def test_runs_in_a_terminal_fits_80_columns_in_colour(catalog: str) -> None:
    out, status = _pty("runs", "--catalog", catalog)
    assert status == 0, out
    assert "\x1b[" in out  # coloured
    lines = _visible(out)
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    assert lines[0].split() == [
        "STARTED",
        "(UTC)",
        "NODE",
        "STATUS",
        "TRY",
        "ROWS",
        "DURATION",
        "RUN",
        "ID",
    ]
    assert "1,234,567" in text  # thousands separators
    assert "pipeline run 22222222" in text  # the pipeline run, by its short id
    assert re.search(r"load_a_very_\w*…", text)  # cut, not wrapped
    assert re.search(r"load_a_very\S*…\s+SUCCESS\s+3\s", text)  # attempt 3
    assert "cause: ProcessCrashed: process 4242" in text  # the crash cause
    assert "suggestion: compare the header" in text
    assert "showing 20 of 25 runs" in text


def test_runs_piped_or_no_color_has_no_escape_sequences(catalog: str) -> None:
    piped = _piped("runs", "--catalog", catalog)
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stdout
    table = [line for line in piped.stdout.splitlines() if not line.startswith("    ")]
    assert max(len(line) for line in table) <= 80
    # Piped, an error line is kept whole (for grep), not wrapped.
    assert any(
        line.startswith("    error: ValueError: column 'segment' not found xxx")
        and line.endswith("x" * 20)
        for line in piped.stdout.splitlines()
    )
    out, status = _pty("runs", "--catalog", catalog, NO_COLOR="1")
    assert status == 0
    assert "\x1b[3" not in out and "\x1b[1m" not in out  # no colour, no bold
    assert "showing 20 of 25 runs" in out


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--project", "billing"], {"other"}),
        (["--environment", "prod"], {"other"}),
        (["--pipeline", "invoices", "--environment", "dev"], {"other"}),
        (["--status", "crashed"], {"publish"}),
        (["--failures"], {"publish", "enrich"}),
        (["--node", "enrich"], {"enrich"}),
        (["--until", "2026-05-28T20:26:43Z", "--limit", "5"], {"node_00", "node_01", "node_02"}),
    ],
)
def test_runs_filters(catalog: str, args: list[str], shown: set[str]) -> None:
    result = _piped("runs", "--catalog", catalog, "--json", *args)
    assert result.returncode == 0, result.stderr
    import json

    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["node_name"] for r in rows} == shown


def test_runs_json_is_one_object_per_line(catalog: str) -> None:
    import json

    result = _piped("runs", "--catalog", catalog, "--json", "--limit", "25")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 25
    crash = next(r for r in rows if r["status"] == "CRASHED")
    assert crash["error_type"] == "ProcessCrashed" and crash["attempt"] == 1
    assert crash["started_at"].endswith("Z") and crash["pipeline_run_id"].startswith("2222")
    assert isinstance(crash["suggestions"], list) and isinstance(crash["attributes"], dict)


def test_runs_details_of_one_run(catalog: str) -> None:
    import json

    (enrich,) = [
        json.loads(line)
        for line in _piped(
            "runs", "--catalog", catalog, "--json", "--node", "enrich"
        ).stdout.splitlines()
    ]
    out, status = _pty(
        "runs",
        "--catalog",
        catalog,
        "--details",
        enrich["run_id"][:8],
        "--trace-url-template",
        "http://grafana/explore?traceId={trace_id}",
    )
    assert status == 0, out
    lines = _visible(out)
    assert max(len(line) for line in lines) <= 80
    text = " ".join(" ".join(lines).split())
    assert f"run id {enrich['run_id']}" in text
    assert "error: ValueError" in text and "column 'segment' not found" in text
    assert "suggestions: - compare the header" in text
    assert f"http://grafana/explore?traceId={enrich['trace_id']}" in text
    assert "pipeline run 22222222-aaaa-bbbb-cccc-000000000000" in text
    missing = _piped("runs", "--catalog", catalog, "--details", "no-such-run")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "odibi-observe: error: no run 'no-such-run' in the catalog"


COMMANDS = [
    "",
    "demo",
    "conventions",
    "catalog",
    "catalog upgrade",
    "runs",
    "sidecar",
    "sweep",
    "reconcile",
    "health",
    "report",
    "dashboards",
    "dashboards build",
    "run",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns(command: str) -> None:
    out, status = _pty(*command.split(), "--help", columns=120)
    assert status == 0, out
    lines = _visible(out)
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert lines[0].startswith("usage: odibi-observe")


def test_help_groups_options_by_name() -> None:
    out, _ = _pty("runs", "--help")
    for group in ("catalog:", "filters:", "output:"):
        assert group in out.splitlines(), group


def test_reconcile_progress_only_on_a_terminal(tmp_path: Path, catalog: str) -> None:
    """The summary reaches both; the progress bar (rich, on stderr) only the terminal."""
    traces = tmp_path / "traces.jsonl"
    traces.write_text("")
    args = (
        "reconcile",
        "--catalog",
        catalog,
        "--traces",
        f"otlp-json:{traces}",
        "--since",
        "2026-05-28",
        "--until",
        "2026-05-30",
        "--grace",
        "0s",
        "--out",
        str(tmp_path / "report"),
        "--no-record",
    )
    piped = _piped(*args)
    assert piped.returncode == 1, piped.stderr
    assert "\x1b" not in piped.stdout + piped.stderr and "━" not in piped.stderr
    assert "discrepancies  25: missing_in_traces 25" in piped.stdout
    out, status = _pty(*args)
    assert status == 1
    assert "discrepancies  25: missing_in_traces 25" in " ".join(_visible(out))


def _reconcile_args(tmp_path: Path, catalog: str) -> tuple[str, ...]:
    traces = tmp_path / "traces.jsonl"
    traces.write_text("")
    return (
        "reconcile",
        "--catalog",
        catalog,
        "--traces",
        f"otlp-json:{traces}",
        "--since",
        "2026-05-28",
        "--until",
        "2026-05-30",
        "--grace",
        "0s",
        "--out",
        str(tmp_path / "report"),
        "--no-record",
    )


def test_reconcile_in_a_terminal_fits_80_columns(tmp_path: Path, catalog: str) -> None:
    """Long summary lines (the window, each repair note) wrap under their indent on a
    terminal; piped they stay whole, one line per fact, for grep."""
    args = _reconcile_args(tmp_path, catalog)
    out, status = _pty(*args)
    assert status == 1, out
    assert "\x1b[38;5;" in out  # the progress bar, in colour
    # What stays on the screen: the bar is redrawn with carriage returns, then erased.
    lines = [line.rsplit("\r", 1)[-1] for line in _visible(out)]
    lines = [line for line in lines if line.strip() and "━" not in line]
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert any(
        line.startswith("reconciled 2026-05-28T00:00:00Z .. 2026-05-30T00:00:00Z") for line in lines
    ), "\n".join(lines)
    assert "discrepancies  25: missing_in_traces 25" in lines
    assert "matched        0  completeness 100.00%" in lines  # of the catalog, by the traces
    skipped = next(
        (i for i, line in enumerate(lines) if line.startswith("  skipped emit_span")), None
    )
    assert skipped is not None, "\n".join(lines)
    assert lines[skipped + 1].startswith("    ")  # the wrapped rest, indented
    assert lines[-1].endswith("report.html")  # a long path: wrapped too
    piped = _piped(*args)
    assert any(
        line.startswith("  skipped emit_span")
        and len(line) > 80
        and line.endswith("OTEL_EXPORTER_OTLP_ENDPOINT")
        for line in piped.stdout.splitlines()
    ), piped.stdout
    plain, _ = _pty(*args, NO_COLOR="1")
    assert "\x1b[3" not in plain and "discrepancies  25: missing_in_traces 25" in plain


def test_report_in_a_terminal_fits_80_columns(tmp_path: Path, catalog: str) -> None:
    args = (
        "report",
        "--catalog",
        catalog,
        "--since",
        "2026-05-28",
        "--until",
        "2026-05-30",
        "--out",
        str(tmp_path / "status"),
    )
    out, status = _pty(*args)
    assert status == 1, out  # a failed and a crashed run in the window
    lines = _visible(out)
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    assert "status of runs 2026-05-28 00:00:00 .. 2026-05-30 00:00:00 UTC" in text
    assert "runs           25, success rate 92.0%" in text
    assert "failed         2 (1 crashed)" in text
    assert "completeness   — (no reconcile recorded)" in text
    assert text.rstrip().endswith("status.html")
    assert (tmp_path / "status" / "status.html").is_file()
    for result in (_piped(*args), _piped(*args, NO_COLOR="1")):
        assert result.returncode == 1, result.stderr
        assert "\x1b" not in result.stdout + result.stderr
        assert "runs           25, success rate 92.0%" in result.stdout
    plain, _ = _pty(*args, NO_COLOR="1")
    assert "\x1b[3" not in plain and "failed         2 (1 crashed)" in plain
