"""The audit says what it did: a pass that checked nothing says why, and a repair lists every
action it took, on which backend, in the terminal and in the reports."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from odibi_observe.catalog import CatalogStore
from odibi_observe.conventions import RECONCILE_METRICS, RunStatus
from odibi_observe.reconcile import (
    Window,
    open_catalog_source,
    open_trace_source,
    reconcile,
    repair,
)
from odibi_observe.record import EventKind, ns_to_datetime
from tests.test_reconcile_support import (
    BASE_NS,
    HOUR,
    SECOND,
    ListSource,
    cli,
    execute,
    iso,
    runs,
    trace_run,
    write_catalog,
    write_spans,
)

# --- an empty pass says why -------------------------------------------------------------------


def _samples(path: Path) -> dict[str, float]:
    return {
        s.name: s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
        if not s.labels
    }


def test_a_pass_right_after_the_runs_says_they_were_left_for_the_next(
    catalog_url: str, tmp_path: Path
) -> None:
    """Right after a run, the default 15 min grace holds every run back: the pass says it
    checked nothing and why, everywhere, and exports the count for an alert."""
    now = time.time_ns()
    fresh = runs(6, start_ns=now - 10 * 60 * SECOND, step_ns=60 * SECOND)
    write_catalog(catalog_url, fresh)
    write_spans(tmp_path / "t.jsonl", fresh)
    out_dir, metrics = tmp_path / "r", tmp_path / "r.prom"
    code, out, err = cli(
        "reconcile",
        "--catalog",
        catalog_url,
        "--traces",
        f"otlp-json:{tmp_path / 't.jsonl'}",
        "--out",
        str(out_dir),
        "--metrics-textfile",
        str(metrics),
    )
    assert code == 0, out + err
    assert (
        "checked        0 runs: this pass proves nothing; 6 left for the next pass (too "
        "recent: started within the grace period of 15m, after "
    ) in out

    summary = json.loads((out_dir / "report.json").read_text())["summary"]
    assert (summary["runs_checked"], summary["deferred"]) == (0, 6)
    assert "within the grace period (900 s)" in summary["deferred_reason"]
    markdown = (out_dir / "report.md").read_text()
    assert markdown.startswith("## odibi-observe reconciliation: nothing checked")
    assert "6 left for the next pass (too recent: started within the grace period" in markdown
    page = (out_dir / "report.html").read_text()
    assert "NOTHING CHECKED" in page and "6 left for the next pass" in page

    gauges = _samples(metrics)
    assert gauges[RECONCILE_METRICS.checked.prometheus] == 0
    assert gauges[RECONCILE_METRICS.deferred.prometheus] == 6

    # The same runs, once the grace period is over, are checked.
    code, out, _ = cli(
        "reconcile",
        "--catalog",
        catalog_url,
        "--traces",
        f"otlp-json:{tmp_path / 't.jsonl'}",
        "--out",
        str(out_dir),
        "--grace",
        "0s",
        "--metrics-textfile",
        str(metrics),
    )
    assert code == 0
    assert "checked        6 runs in the window." in out
    assert _samples(metrics)[RECONCILE_METRICS.checked.prometheus] == 6


def test_only_runs_the_grace_period_holds_back_are_deferred(sqlite_url: str) -> None:
    now = time.time_ns()
    settled = runs(2, start_ns=now - 2 * HOUR)
    fresh = runs(2, start_ns=now - 5 * 60 * SECOND)
    write_catalog(sqlite_url, [*settled, fresh[0]])
    spans = ListSource([trace_run(r) for r in (*settled, fresh[1])])
    win = Window.last(timedelta(hours=6), grace=timedelta(minutes=15))
    with reconcile(open_catalog_source(sqlite_url), [spans], win) as result:
        assert (result.checked, result.matched, result.deferred) == (2, 2, 2)
        assert result.clean
    # A window that ends an hour ago: later runs are outside it, not "left for the next pass".
    past = Window.between(
        ns_to_datetime(now - 6 * HOUR), ns_to_datetime(now - HOUR), grace=timedelta(minutes=15)
    )
    with reconcile(open_catalog_source(sqlite_url), [spans], past) as result:
        assert (result.checked, result.deferred) == (2, 0)


# --- repair explains itself ---------------------------------------------------------------------


@pytest.fixture
def no_trace_destination(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "ODIBI_OBSERVE_OTLP_ENDPOINT",
        "ODIBI_OBSERVE_TRACES_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


def _plant(url: str, folder: Path) -> dict[str, str]:
    """A RUNNING row whose process died, a row whose count was changed, a row with no span."""
    records = runs(3)
    stale = runs(1, status=RunStatus.RUNNING, started_ns=BASE_NS + 2 * HOUR)[0]
    write_catalog(url, records)
    write_catalog(url, [stale], kind=EventKind.STARTED)
    execute(url, "UPDATE meta_runs SET rows_processed = 1 WHERE run_id = :r", r=records[0].run_id)
    write_spans(folder / "traces.jsonl", records[:2])
    return {"stale": stale.run_id, "rows": records[0].run_id, "no_span": records[2].run_id}


def _cli_repair(url: str, folder: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli(
        "reconcile",
        "--catalog",
        url,
        "--traces",
        f"otlp-json:{folder}",
        "--since",
        iso(BASE_NS),
        "--until",
        iso(BASE_NS + 24 * HOUR),
        "--grace",
        "0s",
        "--out",
        str(out),
        "--repair",
        *extra,
    )


def test_repair_lists_each_action_with_its_backend(
    sqlite_url: str, tmp_path: Path, no_trace_destination: None
) -> None:
    """Without a trace destination, closing a crashed run is applied to the catalog only:
    'partial', and the traces' part is 'not sent' — never counted as applied for traces."""
    ids = _plant(sqlite_url, tmp_path / "t")
    code, out, err = _cli_repair(sqlite_url, tmp_path / "t", tmp_path / "r")
    assert code == 1, out + err
    lines = out.splitlines()

    def line(start: str) -> str:
        (found,) = [text.strip() for text in lines if text.strip().startswith(start)]
        return found

    crashed = line(f"partial close_crashed for stale_running run {ids['stale']}")
    assert "closed as CRASHED" in crashed
    assert crashed.endswith("[catalog: applied; traces: not_sent: no trace destination]")
    updated = line(f"applied update_catalog_from_trace for rows_mismatch run {ids['rows']}")
    assert updated.endswith("[catalog: applied]")
    assert "no trace destination" in line(
        f"skipped emit_span for missing_in_traces run {ids['no_span']}"
    )
    assert "by backend: catalog 2 applied, traces 0 applied / 1 not sent" in out

    report = json.loads((tmp_path / "r" / "report.json").read_text())
    summary = report["repair"]
    assert (summary["applied"], summary["partial"], summary["skipped"]) == (1, 1, 1)
    assert summary["backends"] == {"catalog": {"applied": 2}, "traces": {"not_sent": 1}}
    by_run = {d["run_id"]: d["repair"] for d in report["discrepancies"]}
    assert by_run[ids["stale"]]["backends"]["traces"].startswith("not_sent: ")
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "**Repair actions** (kind, run, what was done, where):" in markdown
    assert f"- partial close_crashed for stale_running run {ids['stale']}" in markdown
    assert f"- applied update_catalog_from_trace for rows_mismatch run {ids['rows']}" in markdown

    store = CatalogStore(sqlite_url)
    record = store.get(ids["stale"])
    store.dispose()
    assert record is not None and record.status is RunStatus.CRASHED


def test_a_crashed_run_whose_span_export_failed_is_not_applied_for_traces(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ODIBI_OBSERVE_OTLP_TIMEOUT", "0.5")
    ids = _plant(sqlite_url, tmp_path / "t")
    catalog = open_catalog_source(sqlite_url)
    with reconcile(
        catalog,
        [open_trace_source(f"otlp-json:{tmp_path / 't'}")],
        Window.between(
            ns_to_datetime(BASE_NS), ns_to_datetime(BASE_NS + 24 * HOUR), grace=timedelta(0)
        ),
    ) as result:
        summary = repair(result, catalog, apply=True, repair_traces="http://127.0.0.1:9/v1/traces")
        by_run = {d.run_id: d.repair or {} for d in result.discrepancies()}
    catalog.close()
    crashed = by_run[ids["stale"]]
    assert crashed["status"] == "partial"
    assert crashed["backends"]["catalog"] == "applied"
    assert crashed["backends"]["traces"].startswith("failed: span export failed")
    emitted = by_run[ids["no_span"]]
    assert emitted["status"] == "failed" and "span export failed" in emitted["note"]
    assert summary.backends["traces"] == {"failed": 2}
    assert summary.statuses["partial"] == 1
    assert summary.to_dict()["backends"]["catalog"] == {"applied": 2}


# --- spool damage reaches the audit -----------------------------------------------------------


def test_spool_damage_the_sidecar_found_is_in_the_reconcile_report(tmp_path: Path) -> None:
    """A zeroed block in a real spool segment: the reader logs what it lost in the spool
    directory, and ``reconcile --spool-dir`` reports it — frames lost and the runs whose end
    was destroyed — in the terminal and the Markdown report, though no sidecar is running any
    more (its counters are gone; the log is not)."""
    from odibi_observe.spool import DAMAGE_LOG, Spool
    from tests.test_spool import _run_events, drain, segment_files

    spool_dir = tmp_path / "spool"
    writer = Spool(spool_dir, writer_id="w", fsync="never")
    events = _run_events(60, payload=0)
    for _, payload in events:
        writer.append(payload)
    writer.close()
    (name,) = segment_files(spool_dir)
    data = bytearray((spool_dir / name).read_bytes())
    data[4096:8192] = bytes(4096)
    (spool_dir / name).write_bytes(bytes(data))
    reader = Spool(spool_dir)
    drain(reader.cursor("catalog"))
    affected = set(reader.damage().runs_affected)
    assert affected and (spool_dir / DAMAGE_LOG).exists()
    reader.close()

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    write_catalog(url, []).dispose()
    traces = tmp_path / "traces.jsonl"
    traces.write_text("")
    out_dir = tmp_path / "out"
    code, out, err = cli(
        "reconcile",
        "--catalog",
        url,
        "--traces",
        f"otlp-json:{traces}",
        "--last",
        "1h",
        "--grace",
        "0s",
        "--spool-dir",
        str(spool_dir),
        "--format",
        "md",
        "--out",
        str(out_dir),
    )
    assert (out_dir / "report.md").exists(), (code, err)
    report = (out_dir / "report.md").read_text()
    for text in (out, report):
        assert "spool damage in" in text and "damaged region(s)" in text, text
        assert "frame(s) lost" in text
        assert any(run_id in text for run_id in affected), (affected, text)
    # A finding outside the window is not reported.
    _, out, _ = cli(
        "reconcile",
        "--catalog",
        url,
        "--traces",
        f"otlp-json:{traces}",
        "--since",
        "2020-01-01",
        "--until",
        "2020-01-02",
        "--spool-dir",
        str(spool_dir),
        "--out",
        str(tmp_path / "old"),
    )
    assert "spool damage" not in out
