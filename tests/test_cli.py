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

from odibi_observe.conventions import CATALOG_TABLE, FIELDS, METRICS, render_table
from odibi_observe.otlp_json import read_spans


def _cli(*args: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("odibi-observe", path=os.path.dirname(sys.executable))
    command = [exe] if exe else [sys.executable, "-m", "odibi_observe.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, **(env or {})}, cwd=cwd)


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
    assert set(rows) == {"ingest_orders", "clean_orders", "fetch_fx_rates", "enrich_customers",
                         "aggregate_revenue", "publish_report"}
    assert rows["enrich_customers"].status == "FAILURE"
    assert "compare its header" in rows["enrich_customers"].suggestions_json
    assert "hunter2" not in rows["enrich_customers"].error_message
    assert (rows["publish_report"].status, rows["publish_report"].error_type) == (
        "FAILURE", "KeyboardInterrupt")
    assert rows["ingest_orders"].rows_processed == 1200

    spans = read_spans(demo_dir / "traces.jsonl")
    run_attr = FIELDS.run_id.attribute
    node_spans = {s.attributes[run_attr]: s for s in spans if run_attr in s.attributes}
    assert {r.run_id for r in rows.values()} == set(node_spans)
    (pipeline_span,) = [s for s in spans if run_attr not in s.attributes]
    assert all(s.parent_span_id == pipeline_span.span_id for s in node_spans.values())

    text = (demo_dir / "metrics.prom").read_text()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == METRICS.runs.prometheus]
    assert sum(s.value for s in samples) == 6
    assert sum(s.value for s in samples if s.labels["status"] == "FAILURE") == 2


def test_runs_shows_failures_with_their_suggestions(demo_dir: Path) -> None:
    url = f"sqlite:///{demo_dir}/catalog.db"
    result = _cli("runs", "--catalog", url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("STARTED (UTC)")
    assert sum(1 for line in lines if " SUCCESS " in line) == 4
    assert any("suggestion: re-run with --node enrich_customers" in line for line in lines)
    failures = _cli("runs", "--catalog", url, "--failures").stdout
    assert "ingest_orders" not in failures and "publish_report" in failures
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
    assert render_table("markdown") in doc, \
        "docs/conventions.md is stale: odibi-observe conventions --format markdown"


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
    result = subprocess.run([exe, "runs"], capture_output=True, text=True, env=env, timeout=60,
                            check=False)
    assert result.returncode == 2
    assert "--catalog URL is required" in result.stderr


def test_help_answers_what_each_command_does() -> None:
    top = _cli("--help").stdout
    for command in ("demo", "conventions", "catalog", "runs"):
        assert command in top
    runs_help = _cli("runs", "--help").stdout
    assert "--failures" in runs_help and "ODIBI_OBSERVE_CATALOG_URL" in runs_help
