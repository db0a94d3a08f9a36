"""One flag language across the commands: each form of each shared option, on each command.

Parsing is checked in this process (``build_parser``); what a user sees on a mistake — the one
error prefix, the exit status, no traceback — through the installed entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from odibi_observe.cli import build_parser

EXE = shutil.which("odibi-observe", path=os.path.dirname(sys.executable))

#: Each command with the arguments it needs to parse at all.
COMMANDS: dict[str, list[str]] = {
    "demo": ["demo"],
    "conventions": ["conventions"],
    "catalog upgrade": ["catalog", "upgrade"],
    "runs": ["runs"],
    "sidecar": ["sidecar"],
    "sweep": ["sweep"],
    "reconcile": ["reconcile"],
    "health": ["health"],
    "dashboards build": ["dashboards", "build"],
    "run": ["run"],
}
CATALOG_COMMANDS = ["catalog upgrade", "runs", "sidecar", "sweep", "reconcile", "health", "run"]
WINDOW_COMMANDS = ["runs", "reconcile", "health"]


def _parse(command: str, *args: str) -> argparse.Namespace:
    tail = ["odibi.yaml"] if command == "run" else []  # run's options come before CONFIG
    return build_parser().parse_args([*COMMANDS[command], *args, *tail])


def _cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    assert EXE is not None
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env={**os.environ, **env},
    )


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [
        leaf
        for sub in subs
        for p in dict.fromkeys(sub.choices.values())
        for leaf in _leaf_parsers(p)
    ]


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", CATALOG_COMMANDS)
@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("catalog.db", "sqlite:///catalog.db"),
        ("/srv/c.db", "sqlite:////srv/c.db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("postgresql://etl@db/catalog", "postgresql://etl@db/catalog"),
    ],
)
def test_catalog_takes_a_url_or_a_bare_sqlite_path(command: str, given: str, url: str) -> None:
    assert _parse(command, "--catalog", given).catalog == url


def test_reconcile_keeps_odibi_delta_specs() -> None:
    assert (
        _parse("reconcile", "--catalog", "odibi-delta:/d/meta_runs").catalog
        == "odibi-delta:/d/meta_runs"
    )


@pytest.mark.parametrize("command", WINDOW_COMMANDS)
@pytest.mark.parametrize("option", ["--since", "--until"])
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2024-05-01T06:00:00Z", datetime(2024, 5, 1, 6, tzinfo=timezone.utc)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=timezone.utc)),
        ("2024-05-01T08:00:00+02:00", datetime(2024, 5, 1, 6, tzinfo=timezone.utc)),
        ("6h", timedelta(hours=6)),
        ("30m", timedelta(minutes=30)),
    ],
)
def test_since_and_until_take_a_duration_or_an_iso_time(
    command: str, option: str, given: str, expected: datetime | timedelta
) -> None:
    value = getattr(_parse(command, option, given), option.lstrip("-"))
    assert isinstance(value, datetime) and value.tzinfo is not None
    if isinstance(expected, timedelta):  # that long ago
        assert abs(datetime.now(timezone.utc) - expected - value) < timedelta(seconds=30)
    else:
        assert value == expected


@pytest.mark.parametrize("command", WINDOW_COMMANDS)
@pytest.mark.parametrize("given", ["24h", "1d", "86400", "ISO"])
def test_last_takes_a_duration_or_an_iso_time(command: str, given: str) -> None:
    if given == "ISO":
        given = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    last = _parse(command, "--last", given).last
    assert abs(last - timedelta(days=1)) < timedelta(seconds=30)


@pytest.mark.parametrize("command", WINDOW_COMMANDS)
def test_a_bad_time_names_both_forms(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse(command, "--since", "yesterday")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "odibi-observe: error: argument --since: 'yesterday' is neither a duration" in err
    assert "ISO 8601" in err


@pytest.mark.parametrize(
    ("command", "values"),
    [
        (
            "reconcile",
            {
                "md": ("md",),
                "markdown": ("md",),
                "MarkDown,JSON": ("md", "json"),
                "json,md,html": ("json", "md", "html"),
            },
        ),
        ("health", {"md": ("md",), "markdown": ("md",), "html,markdown": ("html", "md")}),
        ("conventions", {"md": "markdown", "markdown": "markdown", "JSON": "json", "text": "text"}),
    ],
)
def test_format_values_are_the_same_everywhere(command: str, values: dict[str, object]) -> None:
    for given, expected in values.items():
        assert _parse(command, "--format", given).format == expected


@pytest.mark.parametrize(
    ("given", "seconds"), [("30s", 30.0), ("2m", 120.0), ("45", 45.0), ("1.5s", 1.5)]
)
def test_tempo_timeout_is_a_duration(given: str, seconds: float) -> None:
    assert _parse("reconcile", "--tempo-timeout", given).tempo_timeout == seconds


@pytest.mark.parametrize("command", list(COMMANDS))
def test_log_level_on_every_command(command: str) -> None:
    assert _parse(command, "--log-level", "DEBUG").log_level == "debug"


def test_every_command_has_log_level_and_named_option_groups() -> None:
    """A new command joins the flag language or this fails."""
    for leaf in _leaf_parsers(build_parser()):
        options = {s for a in leaf._actions for s in a.option_strings}
        assert "--log-level" in options, leaf.prog
        named = [
            g
            for g in leaf._action_groups
            if g.title not in ("options", "positional arguments") and g._group_actions
        ]
        if len(options) > 4:  # more than -h, --help, --log-level and one flag
            assert named, f"{leaf.prog}: options in no named group"


@pytest.mark.parametrize(
    "command", ["runs", "reconcile", "health", "catalog upgrade", "sweep", "dashboards build"]
)
def test_json_where_a_summary_is_printed(command: str) -> None:
    assert _parse(command, "--json").json is True


# -- what a user sees on a mistake -------------------------------------------------------------


def test_no_arguments_prints_the_help_with_status_2() -> None:
    result = _cli()
    assert result.returncode == 2
    assert result.stdout.startswith("usage: odibi-observe")
    assert "runs" in result.stdout and "reconcile" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_one_error_prefix_for_usage_errors(command: str) -> None:
    tail = ["odibi.yaml"] if command == "run" else []
    result = _cli(*COMMANDS[command], "--no-such-option", *tail)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "odibi-observe: error: unrecognized arguments: --no-such-option" in lines
    assert not any(
        ": error:" in line and not line.startswith("odibi-observe: error:") for line in lines
    )


@pytest.fixture(scope="module")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = _cli("demo", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out / "catalog.db"


def _out_command(command: str, catalog: Path, out: str) -> list[str]:
    return {
        "demo": ["demo", "--out", out],
        "reconcile": [
            "reconcile",
            "--catalog",
            str(catalog),
            "--traces",
            f"otlp-json:{catalog.parent / 'traces.jsonl'}",
            "--out",
            out,
        ],
        "health": ["health", "--catalog", str(catalog), "--out", out],
        "dashboards build": ["dashboards", "build", "--out", out],
    }[command]


@pytest.mark.parametrize("command", ["demo", "reconcile", "health", "dashboards build"])
@pytest.mark.parametrize("case", ["a file", "under a file", "unwritable", "read-only fs"])
def test_a_bad_out_is_one_clear_line_and_status_2(
    command: str, case: str, demo_catalog: Path, tmp_path: Path
) -> None:
    if case == "unwritable" and os.geteuid() == 0:
        pytest.skip("root may write anywhere: an unwritable directory cannot be made")
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    if case == "a file":
        out = blocker
    elif case == "under a file":
        out = blocker / "sub"
    elif case == "read-only fs":  # nobody, root included, can create a directory here
        out = Path("/proc/odibi-observe-out")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "sub"
    result = _cli(*_out_command(command, demo_catalog, str(out)))
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"odibi-observe: error: --out '{out}'")
    assert "Traceback" not in result.stderr
    assert blocker.read_text() == "mine"


def test_an_unwritable_out_directory_is_refused(tmp_path: Path) -> None:
    """The check itself, for the case root cannot provoke through the file system."""
    from odibi_observe._cliargs import check_out_dir
    from odibi_observe.config import ConfigurationError

    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigurationError, match="is a file, not a directory"):
        check_out_dir(tmp_path / "f")
    with pytest.raises(ConfigurationError, match="is a file, so the directory cannot be"):
        check_out_dir(tmp_path / "f" / "x")
    assert check_out_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert not (tmp_path / "new").exists()  # checked, not created


# -- the demo -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["catalog.db", "traces.jsonl", "metrics.prom"])
def test_demo_never_overwrites_a_file_it_did_not_write(tmp_path: Path, name: str) -> None:
    theirs = tmp_path / name
    theirs.write_text("precious")
    refused = _cli("demo", "--out", str(tmp_path))
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line == (
        f"odibi-observe: error: {theirs} exists and was not written by "
        "odibi-observe demo: not overwriting it (choose another --out, or pass "
        "--force to replace it)"
    )
    assert theirs.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing else written
    forced = _cli("demo", "--out", str(tmp_path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert theirs.read_bytes() != b"precious"


def test_demo_replaces_what_an_earlier_demo_wrote(tmp_path: Path) -> None:
    first = _cli("demo", "--out", str(tmp_path))
    second = _cli("demo", "--out", str(tmp_path))
    assert first.returncode == second.returncode == 0, second.stderr
    assert "all three sinks agree on 6 runs" in second.stdout
    (tmp_path / "notes.txt").write_text("mine")  # other files are left alone
    assert _cli("demo", "--out", str(tmp_path)).returncode == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_demo_hints_name_commands_that_work_as_printed(tmp_path: Path) -> None:
    """Run by its path (as scripts/demo.sh does, without an activated virtualenv), the
    demo's hints name that path; each hint runs as printed."""
    assert EXE is not None
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    exe = venv_bin / "odibi-observe"
    exe.symlink_to(EXE)
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "odibi-observe").exists()
    )
    result = subprocess.run(
        ["venv/bin/odibi-observe", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PATH": path},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    hints = lines[lines.index("look at them:") + 1 :]
    hints = [h.strip() for h in hints[: hints.index("")]]
    assert hints[0] == (
        "venv/bin/odibi-observe runs --catalog sqlite:///odibi-observe-demo/catalog.db"
    )
    for hint in hints:
        done = subprocess.run(
            hint,
            shell=True,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=tmp_path,
            env={**os.environ, "PATH": path},
        )
        assert done.returncode == 0, (hint, done.stderr)
        assert done.stdout.strip()


def test_catalog_upgrade_json(tmp_path: Path) -> None:
    result = _cli("catalog", "upgrade", "--catalog", str(tmp_path / "c.db"), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["catalog"] == f"sqlite:///{tmp_path}/c.db" and data["revision"]
