"""Reports and the command line: JSON, Markdown, HTML, meta_reconciliation rows, the
Prometheus text file, ``--help``, exit statuses and the progress line."""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from odibi_observe.catalog import create_catalog_engine
from odibi_observe.conventions import DISCREPANCY_KINDS, RECONCILE_METRICS, RunStatus
from odibi_observe.reconcile import (
    open_catalog_source,
    open_trace_source,
    reconcile,
    render_html,
    render_markdown,
    repair,
    write_json,
)
from odibi_observe.reconcile.progress import Progress
from odibi_observe.reconcile.report import recorded_reports, trace_url
from odibi_observe.record import EventKind
from tests.test_reconcile_support import (
    BASE_NS,
    HOUR,
    cli,
    execute,
    failed,
    iso,
    runs,
    window,
    write_catalog,
    write_spans,
)

TEMPLATE = 'http://grafana.local/explore?left={"queries":[{"query":"{trace_id}"}]}'


@pytest.fixture
def planted(tmp_path: Path, sqlite_url: str) -> dict[str, Any]:
    records = runs(8)
    records[2] = failed(records[2].finished(node="<script>alert(1)</script>"))
    stale = runs(1, status=RunStatus.RUNNING, started_ns=BASE_NS + 2 * HOUR)[0]
    write_catalog(sqlite_url, [r for r in records if r is not records[2]])
    write_catalog(sqlite_url, [stale], kind=EventKind.STARTED)
    execute(
        sqlite_url, "UPDATE meta_runs SET rows_processed = 3 WHERE run_id = :r", r=records[4].run_id
    )
    write_spans(tmp_path / "t" / "a.jsonl", records[:6], extra_lines=["garbage line"])
    return {"url": sqlite_url, "traces": tmp_path / "t", "records": records, "stale": stale}


def _result(planted: dict[str, Any]) -> Any:
    result = reconcile(
        open_catalog_source(planted["url"]),
        [open_trace_source(f"otlp-json:{planted['traces']}")],
        window(),
    )
    repair(result, open_catalog_source(planted["url"]), apply=False)
    return result


def test_json_report_has_the_documented_shape(planted: dict[str, Any], tmp_path: Path) -> None:
    with _result(planted) as result:
        write_json(result, tmp_path / "report.json", trace_url_template=TEMPLATE)
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"window", "summary", "discrepancies", "errors"} <= set(report)
    summary = report["summary"]
    assert (summary["catalog_runs"], summary["trace_runs"], summary["matched"]) == (8, 6, 5)
    assert set(summary["discrepancies"]) == set(DISCREPANCY_KINDS)
    kinds = sorted(d["kind"] for d in report["discrepancies"])
    assert kinds == [
        "missing_in_catalog",
        "missing_in_traces",
        "missing_in_traces",
        "rows_mismatch",
        "stale_running",
    ]
    for item in report["discrepancies"]:
        assert {"kind", "run_id", "pipeline", "node", "catalog", "trace", "detail"} <= set(item)
        assert item["repair"]["status"] in ("planned", "skipped", "not_repairable")
    rows = next(d for d in report["discrepancies"] if d["kind"] == "rows_mismatch")
    assert rows["catalog"]["rows_processed"] == 3 and rows["trace"]["rows_processed"] == 14
    assert rows["trace_url"] == TEMPLATE.replace("{trace_id}", rows["trace"]["trace_id"])
    missing = next(d for d in report["discrepancies"] if d["kind"] == "missing_in_catalog")
    assert missing["catalog"] is None and missing["trace"]["suggestions"]
    assert report["errors"][0]["where"].endswith("a.jsonl:2")
    assert report["pipelines"][0]["completeness_ratio"] < 1
    assert report["repair"]["mode"] == "dry-run"


def test_markdown_is_a_pasteable_summary(planted: dict[str, Any]) -> None:
    with _result(planted) as result:
        text = render_markdown(result, trace_url_template="http://t/{trace_id}", max_rows=2)
    assert text.startswith("## odibi-observe reconciliation: 5 discrepancies")
    assert "| 8 | 6 | 5 | 83.33% | 5 | 1 |" in text
    assert "| `stale_running` | 1 |" in text
    assert "3 more in report.json" in text
    assert "(http://t/" in text
    assert "Read errors: 1" in text and "a.jsonl:2" in text
    assert "would do" in text


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]


def test_html_is_one_self_contained_file(planted: dict[str, Any]) -> None:
    with _result(planted) as result:
        page = render_html(result, trace_url_template=TEMPLATE)
    parser = _Links()
    parser.feed(page)
    assert {"svg", "style", "table"} <= parser.tags
    assert "script" not in parser.tags and "link" not in parser.tags and "img" not in parser.tags
    assert parser.urls and all(u.startswith("http://grafana.local/explore") for u in parser.urls)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # node names are escaped
    assert "Completeness per pipeline" in page and "What to do" in page
    assert "suggestion: check the export" in page  # the failed run's own advice
    assert "Read errors (1)" in page
    assert re.search(r"<svg[^>]+aria-label=\"discrepancies over time\"", page)


def test_a_clean_window(tmp_path: Path, sqlite_url: str) -> None:
    records = runs(3)
    write_catalog(sqlite_url, records)
    write_spans(tmp_path / "t.jsonl", records)
    code, out, err = cli(
        "reconcile",
        "--catalog",
        sqlite_url,
        "--traces",
        f"otlp-json:{tmp_path / 't.jsonl'}",
        "--since",
        iso(BASE_NS),
        "--until",
        iso(BASE_NS + 24 * HOUR),
        "--out",
        str(tmp_path / "r"),
    )
    assert (code, err) == (0, "")
    assert "discrepancies  0" in out and "completeness 100.00%" in out
    page = (tmp_path / "r" / "report.html").read_text()
    assert "CLEAN" in page and "No discrepancies in this window." in page


def test_cli_writes_reports_records_them_and_exports_metrics(
    planted: dict[str, Any], tmp_path: Path
) -> None:
    out_dir, metrics = tmp_path / "out", tmp_path / "reconcile.prom"
    args = [
        "reconcile",
        "--catalog",
        planted["url"],
        "--traces",
        f"otlp-json:{planted['traces']}",
        "--since",
        iso(BASE_NS),
        "--until",
        iso(BASE_NS + 24 * HOUR),
        "--grace",
        "0s",
        "--out",
        str(out_dir),
        "--metrics-textfile",
        str(metrics),
        "--trace-url-template",
        TEMPLATE,
    ]
    code, out, err = cli(*args)
    assert code == 1, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["report.html", "report.json", "report.md"]
    assert "discrepancies  5: missing_in_catalog 1, missing_in_traces 2" in out
    assert "errors         1 (first: " in out
    assert "would do" in out

    samples = {
        (s.name, s.labels.get("kind")): s.value
        for family in text_string_to_metric_families(metrics.read_text())
        for s in family.samples
    }
    assert samples[(RECONCILE_METRICS.discrepancies.prometheus, "missing_in_traces")] == 2
    assert samples[(RECONCILE_METRICS.discrepancies.prometheus, "status_mismatch")] == 0
    assert samples[(RECONCILE_METRICS.completeness.prometheus, None)] == pytest.approx(5 / 6)
    assert samples[(RECONCILE_METRICS.last_run.prometheus, None)] > 1.7e9

    (report,) = recorded_reports(planted["url"])
    assert (report["catalog_runs"], report["trace_runs"], report["discrepancies"]) == (8, 6, 5)
    assert json.loads(report["discrepancies_json"])["missing_in_traces"] == 2
    engine = create_catalog_engine(planted["url"])
    with engine.connect() as conn:
        items = conn.execute(
            sa.text("SELECT kind, run_id FROM meta_reconciliation_items WHERE report_id = :r"),
            {"r": report["report_id"]},
        ).all()
    engine.dispose()
    assert sorted(k for k, _ in items) == sorted(
        d["kind"] for d in json.loads((out_dir / "report.json").read_text())["discrepancies"]
    )

    code, *_ = cli(*args, "--no-record", "--format", "md")
    assert code == 1 and len(recorded_reports(planted["url"])) == 1


@pytest.mark.postgres
def test_reports_are_recorded_in_postgres(pg_url: str, tmp_path: Path) -> None:
    records = runs(2)
    write_catalog(pg_url, records[:1])
    write_spans(tmp_path / "t.jsonl", records)
    code, _, err = cli(
        "reconcile",
        "--catalog",
        pg_url,
        "--traces",
        f"otlp-json:{tmp_path / 't.jsonl'}",
        "--since",
        iso(BASE_NS),
        "--until",
        iso(BASE_NS + 24 * HOUR),
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    )
    assert code == 1, err
    (report,) = recorded_reports(pg_url)
    assert report["discrepancies"] == 1 and report["completeness_ratio"] == 0.5


def test_exit_status_two_when_nothing_can_be_read(tmp_path: Path, sqlite_url: str) -> None:
    write_catalog(sqlite_url, runs(1))
    code, out, err = cli(
        "reconcile",
        "--catalog",
        sqlite_url,
        "--traces",
        f"otlp-json:{tmp_path / 'missing'}",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 2 and "no trace source could be read" in err and out == ""
    code, _, err = cli(
        "reconcile",
        "--catalog",
        f"sqlite:///{tmp_path}/none.db",
        "--traces",
        f"otlp-json:{tmp_path}",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 2 and "does not exist (nothing was created)" in err
    assert not (tmp_path / "none.db").exists()
    code, _, err = cli(
        "reconcile",
        "--catalog",
        "postgresql://u:hunter2@127.0.0.1:9/x",
        "--traces",
        f"otlp-json:{tmp_path}",
    )
    assert code == 2 and "hunter2" not in err
    for bad in (
        ["--traces", "otlp-json:x"],
        ["--catalog", sqlite_url],
        ["--catalog", sqlite_url, "--traces", "x", "--last", "1h", "--since", "2024-01-01"],
        ["--catalog", sqlite_url, "--traces", "otlp-json:x", "--format", "pdf"],
        ["--catalog", sqlite_url, "--traces", "otlp-json:x", "--since", "yesterday"],
    ):
        code, _, err = cli("reconcile", *bad)
        assert code == 2, bad
        assert "error" in err


def test_help_answers_the_usual_questions() -> None:
    code, out, _ = cli("reconcile", "--help")
    assert code == 0
    for needle in (
        "otlp-json:PATH",
        "ledger:URL",
        "tempo:URL",
        "odibi-delta:",
        "--last",
        "--grace",
        "--repair",
        "--repair-traces",
        "--trace-url-template",
        "--metrics-textfile",
        "exit status",
        "stale_running",
        "examples:",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ):
        assert needle in out, needle


def test_trace_url_template_keeps_other_braces() -> None:
    from odibi_observe.reconcile.model import Discrepancy

    item = Discrepancy(
        "missing_in_traces",
        "r-1",
        "p",
        "n",
        None,
        {"trace_id": "ab" * 16, "span_id": "cd" * 8},
        None,
        "",
    )
    assert trace_url('x?{"a":1}&t={trace_id}&s={span_id}&r={run_id}', item) == (
        f'x?{{"a":1}}&t={"ab" * 16}&s={"cd" * 8}&r=r-1'
    )
    assert trace_url(None, item) is None


def test_progress_line_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet = io.StringIO()
    Progress(quiet)("reading traces", 10, 100)
    assert quiet.getvalue() == ""
    tty = Tty()
    progress = Progress(tty)
    progress("reading traces", 50 * 2**20, 100 * 2**20)
    progress("reconciling", 200_000, None)  # throttled: within 0.2 s of the last redraw
    progress.finish()
    text = tty.getvalue()
    assert "reading traces " in text and " 50%" in text and "50.0 MB / 100.0 MB" in text
    assert text.endswith("\x1b[2K")  # the bar is erased: what follows starts clean
