"""``odibi-observe report``: the status page, from a real catalog, checked in headless Chromium."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from odibi_observe.catalog import CatalogStore
from odibi_observe.cli import main
from odibi_observe.conventions import (
    CRASHED_ERROR_TYPE,
    HEALTH_FINDINGS_TABLE,
    RECONCILIATION_ITEMS_TABLE,
    RECONCILIATION_TABLE,
    STATUS_PAGE_FILE,
    RunStatus,
)
from odibi_observe.record import EventKind, RunEvent
from tests.helpers import make_record

HOUR = 3_600 * 1_000_000_000


def _write(url: str, *records: object) -> None:
    store = CatalogStore(url)
    store.ensure_schema()
    store.upsert(
        [
            RunEvent(
                EventKind.STARTED
                if r.status is RunStatus.RUNNING  # type: ignore[attr-defined]
                else EventKind.FINISHED,
                r,  # type: ignore[arg-type]
            )
            for r in records
        ]
    )
    store.dispose()


def _catalog(url: str) -> None:
    now = time.time_ns()
    _write(
        url,
        make_record(node="load", started_ns=now - 2 * HOUR, duration_ns=4_000_000_000),
        make_record(node="load", started_ns=now - HOUR, duration_ns=2_000_000_000),
        make_record(
            node="clean",
            status=RunStatus.FAILURE,
            started_ns=now - HOUR,
            error_type="ValueError",
            error_message="column 'segment' <missing>",
            suggestions=("compare customers.csv with the schema",),
        ),
        make_record(
            node="publish",
            status=RunStatus.CRASHED,
            started_ns=now - 3 * HOUR,
            error_type=CRASHED_ERROR_TYPE,
            error_message="process 4242 was not alive",
        ),
        make_record(node="export", status=RunStatus.RUNNING, started_ns=now - 30 * HOUR),
        make_record(
            node="old",
            status=RunStatus.FAILURE,
            started_ns=now - 50 * HOUR,
            error_type="OldError",
            error_message="outside the window",
        ),
    )


def _report(tmp_path: Path, *args: str) -> tuple[int, str]:
    out = tmp_path / "status"
    code = main(["report", *args, "--out", str(out)])
    page = out / STATUS_PAGE_FILE
    return code, page.read_text(encoding="utf-8") if page.exists() else ""


def test_report_shows_the_overview_panels_from_the_catalog(
    catalog_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _catalog(catalog_url)
    code, html = _report(tmp_path, "--catalog", catalog_url)
    assert code == 1  # failed runs in the window
    out = capsys.readouterr().out
    assert "runs           4, success rate 50.0%" in out  # load x2 ok, clean failed, crashed
    assert "failed         2 (1 crashed)" in out
    assert "running now    1" in out
    for title in (
        "Runs by status",
        "Recent failures, with suggestions",
        "Slowest nodes",
        "Running now",
        "Crashed runs",
        "Completeness",
        "Open health findings",
    ):
        assert title in html
    assert "column &#x27;segment&#x27; &lt;missing&gt;" in html  # escaped, not markup
    assert "compare customers.csv with the schema" in html
    assert "process 4242 was not alive" in html
    assert "OldError" not in html  # started before the window
    assert "export" in html  # RUNNING for 30 h: still listed, whenever it started
    assert "3.0 s" in html  # load's p50 of 2 s and 4 s
    assert "No reconciliation recorded" in html  # tables exist, nothing recorded yet


def test_report_exit_0_without_failures_and_a_wider_window(sqlite_url: str, tmp_path: Path) -> None:
    _write(sqlite_url, make_record(started_ns=time.time_ns() - 3 * 24 * HOUR))
    code, html = _report(tmp_path, "--catalog", sqlite_url)
    assert code == 0
    assert "NO RUNS IN THIS WINDOW" in html
    code, html = _report(tmp_path, "--catalog", sqlite_url, "--last", "7d")
    assert code == 0
    assert "ALL RUNS SUCCEEDED" in html and "per 6 h" in html


def test_report_shows_last_reconcile_and_open_findings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = tmp_path / "demo"
    assert main(["demo", "--out", str(demo)]) == 0
    url = f"sqlite:///{demo / 'catalog.db'}"
    assert main(["catalog", "upgrade", "--catalog", url]) == 0
    with sqlite3.connect(demo / "catalog.db") as db:
        db.execute("DELETE FROM meta_runs WHERE node_name = 'clean_orders'")
    traces = f"otlp-json:{demo / 'traces.jsonl'}"
    assert (
        main(
            [
                "reconcile",
                "--catalog",
                url,
                "--traces",
                traces,
                "--last",
                "1h",
                "--grace",
                "0s",
                "--out",
                str(tmp_path / "rec"),
                "--quiet",
            ]
        )
        == 1
    )
    with sqlite3.connect(demo / "catalog.db") as db:
        db.execute(
            f"INSERT INTO {HEALTH_FINDINGS_TABLE} (finding_id, kind, pipeline_name, "
            "node_name, state, opened_at, last_seen_at, passes, detail) VALUES "
            "('f1', 'zero_rows', 'daily_sales', 'aggregate_revenue', 'open', "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00', 3, 'processed 0 rows'), "
            "('f2', 'flaky', 'daily_sales', 'x', 'resolved', "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00', 1, 'gone')"
        )
    capsys.readouterr()
    code, html = _report(tmp_path, "--catalog", url)
    assert code == 1
    out = capsys.readouterr().out
    assert "completeness   83.33% (last reconcile)" in out
    assert "open findings  1" in out
    assert "missing_in_catalog 1" in html and "83.33%" in html
    assert "processed 0 rows" in html and "gone" not in html
    # --traces: the window reconciled now, read-only (nothing recorded, nothing repaired)
    with sqlite3.connect(demo / "catalog.db") as db:
        reports = db.execute(f"SELECT count(*) FROM {RECONCILIATION_TABLE}").fetchone()
    code, html = _report(tmp_path, "--catalog", url, "--traces", traces)
    assert "completeness   83.33% (reconciled now)" in capsys.readouterr().out
    assert "reconciled now (--traces)" in html
    with sqlite3.connect(demo / "catalog.db") as db:
        assert db.execute(f"SELECT count(*) FROM {RECONCILIATION_TABLE}").fetchone() == reports


def test_report_without_the_optional_tables_says_so(sqlite_url: str, tmp_path: Path) -> None:
    _catalog(sqlite_url)
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
        for table in (RECONCILIATION_ITEMS_TABLE, RECONCILIATION_TABLE, HEALTH_FINDINGS_TABLE):
            db.execute(f"DROP TABLE {table}")
    code, html = _report(tmp_path, "--catalog", sqlite_url)
    assert code == 1
    assert f"no {RECONCILIATION_TABLE} table" in html
    assert f"no {HEALTH_FINDINGS_TABLE} table" in html
    assert "The catalog has no findings table" in html


def test_report_only_reads_the_catalog(sqlite_url: str, tmp_path: Path) -> None:
    _catalog(sqlite_url)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    _report(tmp_path, "--catalog", str(path))  # a bare path is accepted
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    # (a WAL database's readers may add its -shm/-wal files: SQLite's, not a write)
    assert sorted(p.name for p in path.parent.glob("*.db")) == ["catalog.db"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--catalog", "missing.db"], "the file missing.db does not exist (nothing was created)"),
        (["--catalog", "sqlite:///EMPTY"], "it has no meta_runs table"),
        (["--catalog", "sqlite:///ODIBI"], "lacks the columns"),
    ],
)
def test_report_refuses_what_is_not_a_readable_catalog(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    sqlite3.connect(tmp_path / "EMPTY").execute("CREATE TABLE t (x)").connection.commit()
    with sqlite3.connect(tmp_path / "ODIBI") as db:  # Odibi's own, never upgraded
        db.execute(
            "CREATE TABLE meta_runs (run_id TEXT, pipeline_name TEXT, node_name TEXT, status TEXT)"
        )
    assert main(["report", *args, "--out", "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("odibi-observe: error: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "status").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--last", "1h", "--since", "2026-01-01"], "either --last or --since/--until"),
        (["--until", "2026-01-01"], "--until needs --since"),
        (["--since", "2026-01-02", "--until", "2026-01-01"], "the window is empty"),
        (["--last", "soon"], "--last"),
    ],
)
def test_report_bad_window_exits_2(
    sqlite_url: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["report", "--catalog", sqlite_url, *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_report_out_that_is_a_file_exits_2(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _catalog(sqlite_url)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["report", "--catalog", sqlite_url, "--out", str(blocker)])
    assert exc.value.code == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert main(["report", "--catalog", sqlite_url, "--out", str(blocker / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err


# --- the page itself: self-contained, and it fits 800 px -------------------------------------


class _Audit(HTMLParser):
    """Every tag, attribute and style of the page, for the self-containment checks."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "data", "poster", "xlink:href"):
                self.urls.append(value or "")
            if name == "style" and value:
                self.styles.append(value)
            if name == "width" and value and value.isdigit():
                self.styles.append(f"width:{value}px")

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A status page of the sample catalog the screenshots are made from."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "sample_catalog", root / "scripts" / "sample_catalog.py"
    )
    assert spec and spec.loader
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    tmp = tmp_path_factory.mktemp("page")
    catalog = sample.build(tmp / "sample")
    assert main(["report", "--catalog", str(catalog), "--out", str(tmp / "status"), "--quiet"]) == 1
    return Path(tmp / "status" / STATUS_PAGE_FILE)


def test_page_is_self_contained(page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    audit = _Audit()
    audit.feed(html)
    assert "script" not in audit.tags and "<script" not in html.lower()
    for forbidden in ("iframe", "img", "link", "object", "embed", "video", "audio"):
        assert forbidden not in audit.tags
    assert audit.urls == []
    css = "\n".join(audit.styles)
    assert "url(" not in css and "@import" not in css
    assert not re.search(r"https?://", css)
    # No fixed width wider than the narrow screen: only max-width may be large.
    widths = [int(w) for w in re.findall(r"(?<![-\w])(?:min-)?width:\s*(\d+)px", css)]
    assert widths and max(widths) <= 800, widths


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _require_chromium() -> str:
    """Headless Chromium (``scripts/test.sh`` installs it): skip without it, fail if CI=true."""
    if CHROMIUM is not None:
        return CHROMIUM
    problem = "chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{problem}; the page must be checked in a real browser in CI", pytrace=False)
    pytest.skip(problem)


#: Added to a copy of the page only (the page itself has no script): layout widths, in the DOM.
_PROBE = (
    '<script>addEventListener("load",()=>{const e=document.documentElement;'
    "document.body.dataset.sw=e.scrollWidth;document.body.dataset.cw=e.clientWidth})"
    "</script>"
)


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _require_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("width", [1400, 800])
def test_page_renders_in_chromium(page: Path, tmp_path: Path, width: int) -> None:
    shot = tmp_path / f"status-{width}.png"
    done = _chromium(f"--window-size={width},2400", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == width  # the IHDR width
    assert len(data) > 50_000  # a drawn page, not a blank one


@pytest.mark.parametrize("width", [800, 1400])
def test_page_has_no_horizontal_overflow(page: Path, tmp_path: Path, width: int) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8"
    )
    dom = _chromium(f"--window-size={width},2000", "--dump-dom", probe.as_uri()).stdout
    scroll = re.search(r'data-sw="(\d+)"', dom)
    client = re.search(r'data-cw="(\d+)"', dom)
    assert scroll and client, dom[-500:]
    assert int(scroll.group(1)) <= int(client.group(1)) <= width
