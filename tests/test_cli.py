"""The command line, run as a user runs it: the installed ``odibi-observe`` entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from odibi_observe._otlp_json import read_spans
from odibi_observe.conventions import CATALOG_TABLE, FIELDS, METRICS, render_table


def _cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("odibi-observe", path=os.path.dirname(sys.executable))
    command = [exe] if exe else [sys.executable, "-m", "odibi_observe.cli"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = _cli("demo", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    (out / "stdout.txt").write_text(result.stdout)
    return out


def test_demo_records_every_run_in_all_three_sinks(demo_dir: Path) -> None:
    stdout = (demo_dir / "stdout.txt").read_text()
    assert "all three sinks agree on 6 runs" in stdout
    engine = sa.create_engine(f"sqlite:///{demo_dir}/catalog.db")
    with engine.connect() as conn:
        rows = {r.node_name: r for r in conn.execute(sa.text(f"SELECT * FROM {CATALOG_TABLE}"))}
    engine.dispose()
    assert set(rows) == {
        "ingest_orders",
        "clean_orders",
        "fetch_fx_rates",
        "enrich_customers",
        "aggregate_revenue",
        "publish_report",
    }
    assert rows["enrich_customers"].status == "FAILURE"
    assert "compare its header" in rows["enrich_customers"].suggestions_json
    assert "hunter2" not in rows["enrich_customers"].error_message
    assert (rows["publish_report"].status, rows["publish_report"].error_type) == (
        "CANCELLED",
        "KeyboardInterrupt",
    )
    assert rows["ingest_orders"].rows_processed == 1200

    spans = read_spans(demo_dir / "traces.jsonl")
    run_attr = FIELDS.run_id.attribute
    node_spans = {s.attributes[run_attr]: s for s in spans if run_attr in s.attributes}
    assert {r.run_id for r in rows.values()} == set(node_spans)
    (pipeline_span,) = [s for s in spans if run_attr not in s.attributes]
    assert all(s.parent_span_id == pipeline_span.span_id for s in node_spans.values())

    text = (demo_dir / "metrics.prom").read_text()
    samples = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == METRICS.runs.prometheus
    ]
    assert sum(s.value for s in samples) == 6
    assert sum(s.value for s in samples if s.labels["status"] == "FAILURE") == 1
    assert sum(s.value for s in samples if s.labels["status"] == "CANCELLED") == 1


def test_runs_shows_failures_with_their_suggestions(demo_dir: Path) -> None:
    url = f"sqlite:///{demo_dir}/catalog.db"
    result = _cli("runs", "--catalog", url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("STARTED (UTC)")
    assert sum(1 for line in lines if " SUCCESS " in line) == 4
    assert any("suggestion: re-run with --node enrich_customers" in line for line in lines)
    failures = _cli("runs", "--catalog", url, "--failures").stdout
    assert "enrich_customers" in failures
    assert "ingest_orders" not in failures and "publish_report" not in failures  # cancelled
    cancelled = [line for line in lines if " CANCELLED " in line]
    assert len(cancelled) == 1 and "publish_report" in cancelled[0]
    assert any("error: KeyboardInterrupt: operator pressed Ctrl-C" in line for line in lines)
    only_cancelled = _cli("runs", "--catalog", url, "--status", "cancelled").stdout
    assert "publish_report" in only_cancelled and "enrich_customers" not in only_cancelled
    only = _cli("runs", "--catalog", url, "--node", "clean_orders", "--limit", "5").stdout
    assert len([line for line in only.splitlines() if "clean_orders" in line]) == 1


def test_runs_reads_the_catalog_url_from_the_environment(demo_dir: Path) -> None:
    result = _cli("runs", env={"ODIBI_OBSERVE_CATALOG_URL": f"sqlite:///{demo_dir}/catalog.db"})
    assert result.returncode == 0
    assert "aggregate_revenue" in result.stdout


def test_conventions_prints_the_table_in_each_format() -> None:
    text = _cli("conventions")
    assert text.returncode == 0
    assert text.stdout == render_table("text")
    md = _cli("conventions", "--format", "markdown").stdout
    assert md.splitlines()[0].startswith("| field | catalog column |")
    data = json.loads(_cli("conventions", "--format", "json").stdout)
    assert {m["prometheus"] for m in data["metrics"]} >= {m.prometheus for m in METRICS}


def test_docs_conventions_table_is_generated_from_the_module() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "conventions.md").read_text()
    assert render_table("markdown") in doc, (
        "docs/conventions.md is stale: odibi-observe conventions --format markdown"
    )


def test_catalog_upgrade_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    first = _cli("catalog", "upgrade", "--catalog", url)
    second = _cli("catalog", "upgrade", "--catalog", url)
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stdout.split()[-1] == second.stdout.split()[-1]  # same head revision
    engine = sa.create_engine(url)
    assert sa.inspect(engine).has_table(CATALOG_TABLE)
    engine.dispose()


def test_unreachable_catalog_is_exit_2_without_the_password() -> None:
    url = "postgresql+psycopg://etl:s3cretpw@127.0.0.1:1/catalog"
    for args in (("runs", "--catalog", url), ("catalog", "upgrade", "--catalog", url)):
        result = _cli(*args)
        assert result.returncode == 2, result
        assert "s3cretpw" not in result.stdout + result.stderr
        assert "etl:***@127.0.0.1" in result.stderr


def test_missing_catalog_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ODIBI_OBSERVE_CATALOG_URL"}
    exe = shutil.which("odibi-observe", path=os.path.dirname(sys.executable))
    assert exe is not None
    result = subprocess.run(
        [exe, "runs"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "--catalog URL is required" in result.stderr


def test_help_answers_what_each_command_does() -> None:
    top = _cli("--help").stdout
    for command in ("demo", "conventions", "catalog", "runs"):
        assert command in top
    runs_help = _cli("runs", "--help").stdout
    assert "--failures" in runs_help and "ODIBI_OBSERVE_CATALOG_URL" in runs_help


# -- read-only commands create nothing -------------------------------------------------------


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "spec",
    [
        "missing.db",
        "sqlite:///missing.db",
        "sub/dir/missing.db",
        "{tmp}/missing.db",
        "sqlite:///{tmp}/missing.db",
    ],
)
@pytest.mark.parametrize("command", ["runs", "reconcile"])
def test_a_mistyped_sqlite_catalog_is_refused_and_not_created(
    tmp_path: Path, spec: str, command: str
) -> None:
    work = tmp_path / "work"
    (work / "traces").mkdir(parents=True)
    before = _listing(tmp_path)
    catalog = spec.format(tmp=work)
    extra = (
        ["--traces", "otlp-json:traces", "--out", str(tmp_path / "never")]
        if command == "reconcile"
        else []
    )
    result = _cli(command, "--catalog", catalog, *extra, cwd=work)
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("odibi-observe: error: cannot read catalog sqlite:///")
    assert "does not exist (nothing was created)" in line
    assert "OperationalError" not in result.stderr and "Traceback" not in result.stderr
    assert _listing(tmp_path) == before  # no database, no -wal/-shm, no report directory


def test_a_bare_path_reads_the_catalog_without_writing_to_it(
    demo_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "catalog.db"
    shutil.copy(demo_dir / "catalog.db", copy)
    before = (_listing(tmp_path), copy.stat().st_mtime_ns, copy.read_bytes())
    result = _cli("runs", "--catalog", "catalog.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "aggregate_revenue" in result.stdout
    # SQLite's own -wal/-shm files may appear (any reader of a WAL database needs them);
    # the database itself is not written to.
    after = [n for n in _listing(tmp_path) if not n.endswith(("-wal", "-shm"))]
    assert (after, copy.stat().st_mtime_ns, copy.read_bytes()) == before


def test_a_file_that_is_not_a_catalog_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database")
    engine = sa.create_engine(f"sqlite:///{tmp_path}/other.db")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE unrelated (a INTEGER)"))
    engine.dispose()
    for name, reason in (
        ("notes.txt", "file is not a database"),
        ("other.db", f"it has no {CATALOG_TABLE} table"),
    ):
        result = _cli("runs", "--catalog", name, cwd=tmp_path)
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"odibi-observe: error: cannot read catalog sqlite:///{name}: ")
        assert reason in line


@pytest.mark.parametrize("command", ["runs", "reconcile"])
def test_an_unreachable_catalog_url_is_one_line_with_the_password_hidden(
    tmp_path: Path, command: str
) -> None:
    url = "postgresql+psycopg://etl:s3cretpw@127.0.0.1:1/catalog"
    extra = (
        ["--traces", f"otlp-json:{tmp_path}", "--out", str(tmp_path / "never")]
        if command == "reconcile"
        else []
    )
    result = _cli(command, "--catalog", url, *extra)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "odibi-observe: error: cannot read catalog "
        "postgresql+psycopg://etl:***@127.0.0.1:1/catalog: "
    )
    assert "s3cretpw" not in result.stdout + result.stderr
    assert not (tmp_path / "never").exists()


def test_runs_help_says_a_bare_path_is_accepted() -> None:
    text = " ".join(_cli("runs", "--help").stdout.split())
    assert "a path to a SQLite file (catalog.db means sqlite:///catalog.db" in text


# -- what `runs` prints: redacted, without terminal control sequences ------------------------

SECRETS = {
    "url": "postgresql://etl:pa55w0rd@db/x",
    "aws id": "AKIAIOSFODNN7EXAMPLE",
    "aws secret": "aws_secret_access_key=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
    "pg": "PGPASSWORD=pgsecret99",
    "flag": "--password flagsecret77",
    "token user": "https://ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/o/r",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIEpemsecretbody\n-----END RSA PRIVATE KEY-----",
    "slack": "https://hooks.slack.com/services/T0SLACK/B0SLACK/slacksecretpath",
    "github": "gho_16C7e42F292c6912E7710c838347Ae178B4a",
    "bearer": "Authorization: Bearer eyJbearersecret.x.y",
}
LEAKS = (
    "pa55w0rd",
    "IOSFODNN7EXAMPLE",
    "wJalrXUtnFEMIK7MDENG",
    "pgsecret99",
    "flagsecret77",
    "abcdefghijklmnopqrstuvwxyz0123",
    "MIIEpemsecretbody",
    "slacksecretpath",
    "16C7e42F292c6912E7710c838347",
    "eyJbearersecret",
)

_SCRIPT = """
import sys
import odibi_observe as oo

oo.configure(catalog_url=sys.argv[1], traces_file=sys.argv[2], mode="inline",
             handle_sigterm=False)
message = sys.argv[3]

@oo.observe_node(pipeline="p\\x1b]0;pwned\\x07ipe", node="no\\x1b[2Jde\\rX")
def node():
    oo.current_run().suggest("try \\x1b[31mred\\x1b[0m " + message)
    raise RuntimeError("\\x1b[1A\\x1b[2Kfailed: " + message)

try:
    with oo.pipeline_run("pipe"):
        node()
except RuntimeError:
    pass
oo.shutdown()
"""


def test_secrets_reach_no_sink_and_runs_prints_no_control_sequences(tmp_path: Path) -> None:
    url, traces = f"sqlite:///{tmp_path}/c.db", tmp_path / "t.jsonl"
    message = " ".join(SECRETS.values())
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, url, str(traces), message],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        (row,) = conn.execute(sa.text(f"SELECT * FROM {CATALOG_TABLE}")).mappings()
    engine.dispose()
    spans = read_spans(traces)
    assert len(spans) == 2  # the node span and the pipeline span, both failed
    texts = [row["error_message"], row["suggestions_json"]]
    for span in spans:
        assert span.status_code == 2 and span.status_message
        texts.append(span.status_message)
        texts.extend(
            str(attrs.get("exception.message"))
            for name, attrs in span.events
            if name == "exception"
        )
    assert sum(1 for span in spans for name, _ in span.events if name == "exception") == 2
    for text in texts:
        for leak in LEAKS:
            assert leak not in text, (leak, text)
    out = _cli("runs", "--catalog", url)
    assert out.returncode == 0, out.stderr
    for leak in LEAKS:
        assert leak not in out.stdout
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout and "\r" not in out.stdout
    assert "pipe" in out.stdout and "error: builtins" not in out.stdout
    assert "    error: RuntimeError: failed: postgresql://etl:***@db/x" in out.stdout
    assert "    suggestion: try red postgresql://etl:***@db/x" in out.stdout
