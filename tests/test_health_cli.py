"""``odibi-observe health``: exit statuses, the three reports, the gauges, and findings that
stay open across passes and resolve when no longer seen (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from odibi_observe.catalog import create_catalog_engine
from odibi_observe.catalog.schema import NODE, PIPELINE
from odibi_observe.conventions import HEALTH_FINDINGS_TABLE, HEALTH_METRICS, RunStatus
from odibi_observe.health import HealthOptions, HealthResult, detect
from odibi_observe.health.store import findings, record
from tests.health_history import HOUR, NOW_NS, Node, last_day, records, write
from tests.test_health_detect import EXPECTED, PLANTED, STEADY
from tests.test_reconcile_support import cli, write_catalog


def _health(url: str, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli("health", "--catalog", url, "--out", str(out), *extra)


def _recorded(url: str, state: str | None = None) -> list[dict[str, Any]]:
    engine = create_catalog_engine(url)
    try:
        return findings(engine, state=state)
    finally:
        engine.dispose()


def test_findings_open_once_stay_open_and_resolve(catalog_url: str, tmp_path: Path) -> None:
    write(catalog_url, STEADY + PLANTED)
    prom = tmp_path / "health.prom"
    code, out, err = _health(catalog_url, tmp_path / "r1", "--metrics-textfile", str(prom))
    assert code == 1, err
    assert f"findings       {len(EXPECTED)}" in out and "8 new, 0 still open" in out
    report = json.loads((tmp_path / "r1" / "health.json").read_text())
    assert {(f["kind"], f["pipeline"], f["node"]) for f in report["findings"]} == EXPECTED
    assert all(f["state"] == "new" for f in report["findings"])
    assert (
        (tmp_path / "r1" / "health.md")
        .read_text()
        .startswith("## odibi-observe data health: 8 findings (8 new)")
    )
    assert "<svg" in (tmp_path / "r1" / "health.html").read_text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(prom.read_text())
        for s in fam.samples
    }
    assert samples[(HEALTH_METRICS.findings.prometheus, (("kind", "freshness"),))] == 2
    assert samples[(HEALTH_METRICS.opened.prometheus, (("kind", "zero_rows"),))] == 1
    assert (
        samples[
            (
                HEALTH_METRICS.open_finding.prometheus,
                (("kind", "failure_streak"), ("node", "broken"), ("pipeline", "ops")),
            )
        ]
        == 1
    )
    assert samples[(HEALTH_METRICS.nodes.prometheus, ())] == len(STEADY) + len(PLANTED) - 1

    code, out, _ = _health(catalog_url, tmp_path / "r2")
    assert code == 1 and "0 new, 8 still open, 0 resolved" in out
    rows = _recorded(catalog_url)
    assert len(rows) == len(EXPECTED) and {r["state"] for r in rows} == {"open"}
    assert {r["passes"] for r in rows} == {2}

    # The broken node succeeds again: its streak and its staleness are over.
    fixed = Node("ops", "broken", runs=1, first_ns=NOW_NS - HOUR // 2)
    write_catalog(catalog_url, records([fixed])).dispose()
    code, out, _ = _health(catalog_url, tmp_path / "r3")
    assert code == 1 and "0 new, 6 still open, 2 resolved" in out
    resolved = {(r["kind"], r[PIPELINE], r[NODE]) for r in _recorded(catalog_url, "resolved")}
    assert resolved == {("failure_streak", "ops", "broken"), ("freshness", "ops", "broken")}
    report = json.loads((tmp_path / "r3" / "health.json").read_text())
    assert report["summary"]["resolved"]["failure_streak"] == 1
    assert len(_recorded(catalog_url, "open")) == 6


def test_a_healthy_catalog_exits_0(catalog_url: str, tmp_path: Path) -> None:
    write(catalog_url, STEADY)
    code, out, err = _health(catalog_url, tmp_path / "r", "--format", "json")
    assert code == 0, err
    assert "findings       0" in out
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["health.json"]
    assert _recorded(catalog_url) == []


def test_without_the_table_it_reports_and_creates_nothing(sqlite_url: str, tmp_path: Path) -> None:
    write(sqlite_url, PLANTED)
    engine = create_catalog_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {HEALTH_FINDINGS_TABLE}"))
    code, _, err = _health(sqlite_url, tmp_path / "r")
    assert code == 1
    assert f"not recorded: the catalog has no {HEALTH_FINDINGS_TABLE} table" in err
    assert "odibi-observe catalog upgrade --catalog" in err
    assert not sa.inspect(engine).has_table(HEALTH_FINDINGS_TABLE)
    report = json.loads((tmp_path / "r" / "health.json").read_text())
    assert {f["state"] for f in report["findings"]} == {"unrecorded"}
    engine.dispose()


def test_no_record_leaves_the_table_alone(sqlite_url: str, tmp_path: Path) -> None:
    write(sqlite_url, PLANTED)
    code, _, err = _health(sqlite_url, tmp_path / "r", "--no-record")
    assert code == 1 and "not recorded" not in err
    assert _recorded(sqlite_url) == []


def test_unreadable_catalogs_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    code, _, err = _health(f"sqlite:///{missing}", tmp_path / "r")
    assert code == 2 and "no such file" in err
    assert not missing.exists()
    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()
    code, _, err = _health(f"sqlite:///{empty}", tmp_path / "r")
    assert code == 2 and "no table meta_runs" in err
    code, _, err = _health("postgresql://u:secret@127.0.0.1:1/db", tmp_path / "r")
    assert code == 2 and "secret" not in err


def test_config_file(sqlite_url: str, tmp_path: Path) -> None:
    write(sqlite_url, STEADY + PLANTED)
    config = tmp_path / "health.toml"
    config.write_text(
        '[[node]]\npipeline = "sales"\nnode = "steady_0"\nfreshness_sla = "1h"\n'
        '[[node]]\npipeline = "*"\nnode = "volume_*"\nskip = ["volume_anomaly"]\n'
    )
    code, _, _ = _health(sqlite_url, tmp_path / "r", "--config", str(config), "--no-record")
    assert code == 1
    report = json.loads((tmp_path / "r" / "health.json").read_text())
    keys = {(f["kind"], f["node"]) for f in report["findings"]}
    assert ("freshness", "steady_0") in keys and ("volume_anomaly", "volume_drop") not in keys
    config.write_text('[[node]]\nnode = "x"\nfreshness_sla = "soon"\n')
    code, _, err = _health(sqlite_url, tmp_path / "r", "--config", str(config))
    assert code == 2 and "freshness_sla" in err
    config.write_text('[[node]]\nnode = "x"\nskip = ["volume"]\n')
    code, _, err = _health(sqlite_url, tmp_path / "r", "--config", str(config))
    assert code == 2 and "skip must list finding kinds" in err


def test_window_options(sqlite_url: str, tmp_path: Path) -> None:
    write(sqlite_url, STEADY)
    code, _, err = _health(sqlite_url, tmp_path / "r", "--last", "24h", "--since", "2024-01-01")
    assert code == 2 and "either --last or --since" in err
    code, _, err = _health(sqlite_url, tmp_path / "r", "--until", "2024-01-01")
    assert code == 2 and "--until needs --since" in err
    code, out, _ = _health(
        sqlite_url, tmp_path / "r", "--since", "2000-01-01", "--until", "2000-01-02"
    )
    assert code == 0 and "0 with enough history" in out


def test_failed_runs_are_never_volume_findings(sqlite_url: str, tmp_path: Path) -> None:
    def fail_newest(i: int, values: dict[str, object]) -> None:
        if i == 0:
            values["status"] = RunStatus.FAILURE

    write(sqlite_url, [Node("a", "failed_once", plant=fail_newest)])
    code, out, _ = _health(sqlite_url, tmp_path / "r")
    assert code == 0, out


@pytest.mark.parametrize("flag", ["--help"])
def test_help(flag: str) -> None:
    code, out, _ = cli("health", flag)
    assert code == 0 and "finding kinds: volume_anomaly" in out and "exit status" in out


def test_concurrent_passes_open_each_finding_once(catalog_url: str) -> None:
    write(catalog_url, PLANTED)
    engine = create_catalog_engine(catalog_url)
    results = [detect(engine, last_day(), HealthOptions()) for _ in range(4)]
    barrier = threading.Barrier(len(results))
    errors: list[BaseException] = []

    def one(result: HealthResult) -> None:
        barrier.wait()
        try:
            record(engine, result)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(r,)) for r in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    engine.dispose()
    assert not errors
    rows = _recorded(catalog_url)
    assert len(rows) == len(EXPECTED) and {r["state"] for r in rows} == {"open"}
    assert sorted(r["passes"] for r in rows) == [4] * len(EXPECTED)
    assert sum(f.state == "new" for r in results for f in r.findings) == len(EXPECTED)


def test_html_is_self_contained_and_escaped(sqlite_url: str, tmp_path: Path) -> None:
    from html.parser import HTMLParser

    evil = Node(
        "<script>alert(1)</script>", "n", plant=lambda i, v: v.update(rows=1) if i == 0 else None
    )
    write(sqlite_url, [evil])
    code, _, _ = _health(sqlite_url, tmp_path / "r", "--format", "html")
    assert code == 1
    page = (tmp_path / "r" / "health.html").read_text()
    tags: set[str] = set()

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.add(tag)

    Tags().feed(page)
    assert {"svg", "style", "table"} <= tags
    assert not tags & {"script", "link", "img", "iframe"}
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def _snapshot(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows, in a stable order."""
    engine = create_catalog_engine(url)
    try:
        out = {}
        with engine.connect() as conn:
            for name in sorted(sa.inspect(engine).get_table_names()):
                rows = conn.execute(sa.text(f'SELECT * FROM "{name}"')).all()
                out[name] = sorted((tuple(r) for r in rows), key=repr)
        return out
    finally:
        engine.dispose()


def test_a_pass_changes_nothing_but_its_findings(catalog_url: str, tmp_path: Path) -> None:
    write(catalog_url, STEADY + PLANTED)
    before = _snapshot(catalog_url)
    assert _health(catalog_url, tmp_path / "a", "--no-record")[0] == 1
    assert _snapshot(catalog_url) == before
    assert _health(catalog_url, tmp_path / "b")[0] == 1
    after = _snapshot(catalog_url)
    assert {t for t in after if after[t] != before[t]} == {HEALTH_FINDINGS_TABLE}
