"""Configuration never records nowhere: a bad setting drops only itself, nothing is ignored
silently, the one settings table is what every reader uses, and a shared Prometheus registry
survives a second ``configure()``.

Warnings are checked in a fresh interpreter where they must be *visible*: with no logging set
up at all, Python prints WARNING records to stderr, which is what a pipeline author sees.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import odibi_observe as oo
from odibi_observe._otlp_json import read_spans
from odibi_observe.catalog import CatalogStore
from odibi_observe.config import (
    PIPELINE_SETTINGS,
    SETTINGS,
    ConfigurationError,
    Settings,
    parse_size,
    resolve,
    resolve_settings,
    settings_markdown,
    sidecar_setting,
)
from odibi_observe.sidecar import SidecarOptions
from tests.helpers import Configure

ROOT = Path(__file__).parents[1]
PREFIX = "odibi-observe:"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ODIBI_OBSERVE_", "OTEL_"))}
    env.update(extra)
    return env


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (no logging configured) with only ``env`` set."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env(**env),
    )


def ours(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(PREFIX)]


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("ODIBI_OBSERVE_", "OTEL_")) and name != "ODIBI_OBSERVE_TEST_PG_URL":
            monkeypatch.delenv(name)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.getMessage().startswith(PREFIX)
    ]


# -- 1. one invalid setting drops that setting only -----------------------------------------------

RUN_THREE_NODES = """
    import odibi_observe as oo
    oo.configure(catalog_url={catalog!r}, traces_file={traces!r}, handle_sigterm=False)
    for node in ("a", "b", "c"):
        with oo.node_run("p", node):
            pass
    oo.shutdown()
    print("sinks ok")
"""


def test_a_bad_variable_next_to_good_keywords_drops_only_itself(
    sqlite_url: str, tmp_path: Path
) -> None:
    traces = tmp_path / "traces.jsonl"
    done = python(
        RUN_THREE_NODES.format(catalog=sqlite_url, traces=str(traces)),
        ODIBI_OBSERVE_PROMETHEUS_PORT="nine",
    )
    assert done.returncode == 0, done.stderr
    # One warning, not one per run: the variable, its value, what is expected.
    assert ours(done.stderr) == [
        "odibi-observe: ODIBI_OBSERVE_PROMETHEUS_PORT='nine': expected a TCP port number, 0 to "
        "65535 (0: any free port); ignored, using the default prometheus_port=none"
    ]
    store = CatalogStore(sqlite_url)
    try:
        assert sorted(r.node for r in store.recent_runs(limit=10)) == ["a", "b", "c"]
    finally:
        store.dispose()
    assert len([s for s in read_spans(traces) if s.scope_name == "odibi_observe"]) == 3


def test_strict_still_raises_on_the_bad_variable(
    monkeypatch: pytest.MonkeyPatch, fresh_observer: Configure
) -> None:
    monkeypatch.setenv("ODIBI_OBSERVE_PROMETHEUS_PORT", "nine")
    with pytest.raises(ConfigurationError, match="ODIBI_OBSERVE_PROMETHEUS_PORT='nine'"):
        fresh_observer(catalog_url="sqlite://", sinks=[], strict=True)


def test_a_bad_keyword_is_named_with_its_value(
    caplog: pytest.LogCaptureFixture, sqlite_url: str, fresh_observer: Configure
) -> None:
    with caplog.at_level("WARNING", logger="odibi_observe"):
        observer = fresh_observer(
            max_queue=0, flush_interval="soon", catalog_url=sqlite_url, handle_sigterm=False
        )
    assert observer.settings.catalog_url == sqlite_url
    assert (observer.settings.max_queue, observer.settings.flush_interval) == (10_000, 0.1)
    assert [s.name for s in observer.sinks] == ["prometheus", "catalog"]
    oo.shutdown()  # the warnings below are all there are, shutting down included
    messages = warnings_of(caplog)
    assert len(messages) == 2, messages
    assert "max_queue=0: expected a whole number of at least 1" in messages[0]
    assert "flush_interval='soon': expected a duration" in messages[1]


def test_sidecar_mode_without_spool_dir_keeps_every_other_setting(
    caplog: pytest.LogCaptureFixture, sqlite_url: str, fresh_observer: Configure
) -> None:
    with caplog.at_level("WARNING", logger="odibi_observe"):
        observer = fresh_observer(mode="sidecar", catalog_url=sqlite_url, handle_sigterm=False)
    assert observer.settings.mode == "background"
    assert [s.name for s in observer.sinks] == ["prometheus", "catalog"]
    oo.shutdown()  # the warnings below are all there are, shutting down included
    assert warnings_of(caplog) == [
        "odibi-observe: mode='sidecar' needs spool_dir (ODIBI_OBSERVE_SPOOL_DIR), the directory "
        "shared with the sidecar; ignored, recording in-process in mode='background'"
    ]
    with pytest.raises(ConfigurationError, match="spool_dir"):
        resolve_settings({"mode": "sidecar"}, environ={})


def test_sizes_parse_with_one_parser_in_the_library_and_the_sidecar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from odibi_observe.cli import build_parser
    from odibi_observe.sidecar.commands import sidecar_options

    env = {"ODIBI_OBSERVE_SPOOL_MAX_BYTES": "512MiB"}
    assert resolve_settings({}, environ=env).spool_max_bytes == 512 * 2**20
    assert resolve_settings({"spool_max_bytes": "1GiB"}, environ={}).spool_max_bytes == 2**30
    monkeypatch.setenv("ODIBI_OBSERVE_SPOOL_MAX_BYTES", "100MB")
    args = build_parser().parse_args(["sidecar", "--catalog", "sqlite://", "--spool-dir", "s"])
    assert sidecar_options(args).spool_max_bytes == 100 * 10**6
    assert resolve_settings({}).spool_max_bytes == 100 * 10**6
    bad = resolve({}, environ={"ODIBI_OBSERVE_SPOOL_MAX_BYTES": "lots"})
    assert bad.settings.spool_max_bytes == 512 * 2**20
    assert [p.message for p in bad.problems] == [
        "ODIBI_OBSERVE_SPOOL_MAX_BYTES='lots': expected a size like 512MiB, 1GiB or 100MB "
        "(a bare number is bytes)"
    ]
    assert parse_size("512MiB") == 512 * 2**20


# -- 2. one settings table ----------------------------------------------------------------------


def test_settings_fields_and_defaults_are_the_tables() -> None:
    assert [f.name for f in dataclasses.fields(Settings)] == [s.name for s in PIPELINE_SETTINGS]
    defaults = Settings()
    for s in PIPELINE_SETTINGS:
        expected = s.factory() if s.factory is not None else s.default
        assert getattr(defaults, s.name) == expected, s.name
        assert resolve_settings({}, environ={}) == Settings(
            host=defaults.host, resource_attributes={}
        )


def test_sidecar_options_and_cli_defaults_are_the_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    from odibi_observe.cli import build_parser
    from odibi_observe.sidecar.commands import sidecar_options

    args = build_parser().parse_args(["sidecar", "--catalog", "sqlite://", "--spool-dir", "s"])
    from_cli = sidecar_options(args)
    direct = SidecarOptions(catalog_url="sqlite://", spool_dir="s")
    assert from_cli == direct
    for f in dataclasses.fields(SidecarOptions):
        try:
            entry = sidecar_setting(f.name)
        except KeyError:
            continue
        if entry.default is not None:
            assert getattr(direct, f.name) == entry.default, f.name
    assert (direct.listen_host, direct.listen_port) == next(
        s.default for s in SETTINGS if s.name == "sidecar_listen"
    )
    # Every variable of the table is the one the sidecar reads, and --help names it with the
    # table's default.
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = commands.choices["sidecar"].format_help()
    flat = " ".join(text.split())
    for s in SETTINGS:
        if s.sidecar and s.env:
            assert s.env in flat, s.name
        if s.sidecar and s.flag and s.default is not None:
            assert f"default: {s.shown_default()}" in flat or s.shown_default() in (
                "true",
                "false",
            ), s
    monkeypatch.setenv("ODIBI_OBSERVE_SIDECAR_MAX_BATCH", "7")
    monkeypatch.setenv("ODIBI_OBSERVE_SWEEP_PID_CHECK", "off")
    options = sidecar_options(args)
    assert (options.max_batch, options.pid_check) == (7, False)


def test_docs_settings_table_is_generated_from_the_table() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert settings_markdown() in doc, (
        "docs/configuration.md is stale: python -c 'from odibi_observe.config import "
        "settings_markdown; print(settings_markdown())'"
    )


def test_operations_doc_agrees_with_the_table() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text().splitlines()
    for s in SETTINGS:
        if not (s.sidecar and s.flag and s.env):
            continue
        rows = [line for line in doc if line.startswith(f"| `{s.flag}") and s.env in line]
        assert rows, s.name
        if s.default is not None and not isinstance(s.default, bool):
            assert f"`{s.shown_default()}`" in rows[0], (s.name, rows[0])


def test_no_variable_name_is_spelled_outside_the_table() -> None:
    for path in (ROOT / "odibi_observe").rglob("*.py"):
        if path.name == "config.py":
            continue
        text = path.read_text()
        for s in SETTINGS:
            assert not (s.env and f'"{s.env}"' in text), (path, s.env)


# -- 3. spool_dir without mode ------------------------------------------------------------------


def test_spool_dir_alone_means_sidecar_mode_and_says_so(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    done = python(
        """
        import odibi_observe as oo
        observer = oo.configure(handle_sigterm=False)
        print(observer.settings.mode, [s.name for s in observer.sinks])
        for node in ("a", "b"):
            with oo.node_run("p", node):
                pass
        oo.shutdown()
    """,
        ODIBI_OBSERVE_SPOOL_DIR=str(spool),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "sidecar"
    assert ours(done.stderr) == [
        f"odibi-observe: spool_dir={str(spool)!r} is set (ODIBI_OBSERVE_SPOOL_DIR) and mode is "
        f"not: recording in mode='sidecar' (each event appended to the spool, the sidecar "
        f"delivers it); set mode (ODIBI_OBSERVE_MODE) to say so explicitly"
    ]
    assert sum(p.stat().st_size for p in spool.rglob("*") if p.is_file()) > 0


def test_an_explicit_mode_with_spool_dir_is_quiet(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, fresh_observer: Configure
) -> None:
    with caplog.at_level("WARNING", logger="odibi_observe"):
        observer = fresh_observer(
            mode="sidecar", spool_dir=tmp_path / "spool", handle_sigterm=False
        )
    oo.shutdown()  # quiet through shutdown too
    assert observer.settings.mode == "sidecar"
    assert warnings_of(caplog) == []


# -- 4. sidecar mode with destinations given to the pipeline -------------------------------------


def test_sidecar_mode_says_once_that_the_sidecar_writes_the_catalog(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, fresh_observer: Configure
) -> None:
    catalog = tmp_path / "catalog.db"
    with caplog.at_level("WARNING", logger="odibi_observe"):
        observer = fresh_observer(
            mode="sidecar",
            spool_dir=tmp_path / "spool",
            catalog_url=f"sqlite:///{catalog}",
            traces_file=tmp_path / "traces.jsonl",
            handle_sigterm=False,
        )
        for node in ("a", "b", "c"):
            with oo.node_run("p", node):
                pass
        oo.shutdown()
    assert [s.name for s in observer.sinks] == ["spool"]
    assert warnings_of(caplog) == [
        f"odibi-observe: mode='sidecar': catalog_url and traces_file are written by the sidecar "
        f"(odibi-observe sidecar, from its own settings), not by this process, which appends "
        f"every event to the spool in {tmp_path / 'spool'}"
    ]
    assert not catalog.exists() and not (tmp_path / "traces.jsonl").exists()


def test_a_catalog_variable_shared_with_the_sidecar_is_not_an_alarm(
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_observer: Configure,
) -> None:
    monkeypatch.setenv("ODIBI_OBSERVE_CATALOG_URL", f"sqlite:///{tmp_path / 'c.db'}")
    monkeypatch.setenv("ODIBI_OBSERVE_MODE", "sidecar")
    with caplog.at_level("WARNING", logger="odibi_observe"):
        fresh_observer(spool_dir=tmp_path / "spool", handle_sigterm=False)
    oo.shutdown()  # quiet through shutdown too
    assert warnings_of(caplog) == []


def test_odibi_observe_run_in_sidecar_mode_names_the_spool_not_the_catalog(tmp_path: Path) -> None:
    pytest.importorskip("odibi")
    from tests.test_odibi_integration import (
        INGEST,
        _cli_command,
        make_project,
        run_subprocess,
        step_node,
    )

    project = make_project(
        tmp_path / "p", [INGEST, step_node("tag_orders", "add_tag", tag="x")]
    ).parent
    spool = tmp_path / "spool"
    result = run_subprocess(
        [*_cli_command("odibi-observe"), "run", "--catalog", "sqlite:///catalog.db", "odibi.yaml"],
        project,
        env={"ODIBI_OBSERVE_MODE": "sidecar", "ODIBI_OBSERVE_SPOOL_DIR": str(spool)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = ours(result.stderr)
    assert (
        f"odibi-observe: recorded 2 node runs (2 SUCCESS) in the spool {spool}; the "
        f"sidecar (odibi-observe sidecar) delivers them to its catalog and traces"
    ) in lines
    assert not any("runs --catalog" in line or " in sqlite" in line for line in lines), lines
    assert sum("written by the sidecar" in line for line in lines) == 1, lines
    assert not (project / "catalog.db").exists()
    assert sum(p.stat().st_size for p in spool.rglob("*") if p.is_file()) > 0


# -- 5. no durable destination ---------------------------------------------------------------------


def test_no_durable_destination_warns_once_with_the_fix() -> None:
    done = python("""
        import odibi_observe as oo
        for node in ("a", "b", "c"):
            with oo.node_run("p", node):  # configures from the environment on first use
                pass
        oo.shutdown()
    """)
    assert done.returncode == 0, done.stderr
    lines = ours(done.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "odibi-observe: no durable destination: node runs are recorded "
        "only in this process's private Prometheus registry"
    )
    for fix in (
        "catalog_url (ODIBI_OBSERVE_CATALOG_URL)",
        "traces_file",
        "otlp_endpoint",
        "spool_dir (ODIBI_OBSERVE_SPOOL_DIR)",
        "prometheus_port",
    ):
        assert fix in lines[0]


@pytest.mark.parametrize(
    "code",
    [
        "oo.configure(sinks=[], handle_sigterm=False)",
        "oo.configure(catalog_url='sqlite://', handle_sigterm=False)",
        "oo.configure(prometheus_port=0, handle_sigterm=False)",
        "oo.configure(registry=prometheus_client.REGISTRY, handle_sigterm=False)",
    ],
)
def test_a_destination_or_own_sinks_is_not_an_alarm(code: str) -> None:
    done = python(f"import prometheus_client, odibi_observe as oo\n{code}\noo.shutdown()\n")
    assert done.returncode == 0, done.stderr
    assert ours(done.stderr) == []


# -- 6. prometheus_client.REGISTRY ----------------------------------------------------------------


def test_the_global_registry_serves_odibis_series_across_reconfiguration() -> None:
    done = python("""
        import urllib.request
        import prometheus_client
        import odibi_observe as oo

        # The application's own /metrics, on the global registry.
        server, _ = prometheus_client.start_http_server(0, addr="127.0.0.1")
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        for step in ("first", "second"):
            oo.configure(registry=prometheus_client.REGISTRY, project=step,
                         handle_sigterm=False, strict=True)
            with oo.node_run("p", "n"):
                pass
            oo.flush()
        oo.shutdown()
        oo.configure(registry=prometheus_client.REGISTRY, project="third",
                     handle_sigterm=False, strict=True)
        with oo.node_run("p", "n"):
            pass
        oo.flush()
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        print("\\n".join(l for l in body.splitlines() if l.startswith("odibi_node_runs_total")))
        oo.shutdown()
    """)
    assert done.returncode == 0, done.stderr
    series = done.stdout.splitlines()
    # The current observer's series only (one per status); the replaced observers' are gone.
    assert series and all('project="third"' in line for line in series), series
    assert next(line for line in series if 'status="SUCCESS"' in line).endswith(" 1.0")
    assert "Duplicated timeseries" not in done.stderr
