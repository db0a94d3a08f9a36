"""configure(): sink selection from settings, re-configuration, serving /metrics, failures."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

import odibi_observe as oo
from odibi_observe._otlp_json import read_spans
from odibi_observe.sinks.catalog import CatalogSink
from odibi_observe.sinks.otel import OtelSink
from odibi_observe.sinks.prometheus import PrometheusSink
from tests.helpers import Configure


def test_default_sinks_follow_the_settings(tmp_path: Path, fresh_observer: Configure) -> None:
    observer = fresh_observer(handle_sigterm=False)
    assert [type(s) for s in observer.sinks] == [PrometheusSink]
    observer = fresh_observer(
        catalog_url=f"sqlite:///{tmp_path}/c.db",
        traces_file=str(tmp_path / "t.jsonl"),
        handle_sigterm=False,
    )
    assert [type(s) for s in observer.sinks] == [PrometheusSink, CatalogSink, OtelSink]


def test_configuration_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_observer: Configure
) -> None:
    monkeypatch.setenv("ODIBI_OBSERVE_PROJECT", "lake")
    monkeypatch.setenv("ODIBI_OBSERVE_MODE", "inline")
    monkeypatch.setenv("ODIBI_OBSERVE_TRACES_FILE", str(tmp_path / "t.jsonl"))
    monkeypatch.setenv("OTEL_SERVICE_NAME", "nightly-etl")
    observer = fresh_observer(handle_sigterm=False)
    with oo.node_run("p", "n"):
        pass
    assert oo.flush(10)
    (span,) = [s for s in read_spans(tmp_path / "t.jsonl") if "odibi.run_id" in s.attributes]
    assert span.attributes["odibi.project"] == "lake"
    assert span.resource["service.name"] == "nightly-etl"
    assert observer.settings.mode == "inline"


def test_reconfigure_flushes_the_previous_observer(
    tmp_path: Path, fresh_observer: Configure
) -> None:
    first = tmp_path / "first.jsonl"
    fresh_observer(
        traces_file=str(first), mode="background", flush_interval=5.0, handle_sigterm=False
    )
    with oo.node_run("p", "before"):
        pass
    fresh_observer(traces_file=str(tmp_path / "second.jsonl"), handle_sigterm=False)
    names = [s.attributes.get("odibi.node") for s in read_spans(first)]
    assert "before" in names


def test_metrics_are_served_on_loopback_when_a_port_is_set(fresh_observer: Configure) -> None:
    observer = fresh_observer(prometheus_port=0, mode="inline", handle_sigterm=False)
    with oo.node_run("served", "n"):
        pass
    assert observer.prometheus_port
    url = f"http://127.0.0.1:{observer.prometheus_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read().decode()
    assert 'pipeline="served"' in body
    assert "odibi_observe_queue_size" in body


def test_prometheus_textfile_is_written_on_flush(tmp_path: Path, fresh_observer: Configure) -> None:
    path = tmp_path / "metrics" / "odibi.prom"
    fresh_observer(prometheus_textfile=str(path), mode="inline", handle_sigterm=False)
    with oo.node_run("p", "textfile"):
        pass
    oo.flush(5)
    assert 'node="textfile"' in path.read_text()


def test_unreachable_endpoints_at_startup_do_not_fail_the_pipeline(
    tmp_path: Path, fresh_observer: Configure
) -> None:
    observer = fresh_observer(
        catalog_url="postgresql+psycopg://u:pw@127.0.0.1:1/nope",
        otlp_endpoint="http://127.0.0.1:1",
        otlp_timeout=0.5,
        mode="background",
        handle_sigterm=False,
    )

    @oo.observe_node(pipeline="p")
    def node() -> list[int]:
        return [1, 2]

    assert node() == [1, 2]
    assert not oo.flush(3)  # cannot confirm, but nothing raised and nothing was lost
    pending = observer.bus.pending()
    assert pending == {"prometheus": 0, "catalog": 2, "otel": 1}  # RUNNING + end; one span
    assert observer.registry.get_sample_value(
        "odibi_observe_sink_errors_total", {"sink": "catalog"}
    )


def test_first_run_configures_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, fresh_observer: Configure
) -> None:
    monkeypatch.setenv("ODIBI_OBSERVE_PROJECT", "auto")
    with oo.node_run("p", "n") as run:
        assert oo.get_observer().settings.project == "auto"
        assert run.record.project == "auto"


def test_records_kept_during_a_catalog_outage_land_when_it_returns(
    tmp_path: Path, fresh_observer: Configure
) -> None:
    """The catalog's directory does not exist yet: SQLite cannot open the file (an outage)."""
    import sqlalchemy as sa

    directory = tmp_path / "not-yet"
    url = f"sqlite:///{directory}/catalog.db"
    observer = fresh_observer(catalog_url=url, mode="background", handle_sigterm=False)

    @oo.observe_node(pipeline="outage")
    def node() -> list[int]:
        return [1, 2, 3]

    assert [node() for _ in range(3)] == [[1, 2, 3]] * 3
    assert not oo.flush(2)
    assert observer.bus.pending()["catalog"] == 6
    directory.mkdir()  # the catalog is back
    assert oo.flush(10)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, rows_processed FROM meta_runs")).all()
    engine.dispose()
    assert sorted(rows) == [("SUCCESS", 3)] * 3


def test_reconfiguring_stops_the_previous_metrics_server(fresh_observer: Configure) -> None:
    first = fresh_observer(prometheus_port=0, mode="inline", handle_sigterm=False)
    port = first.prometheus_port
    assert port
    fresh_observer(mode="inline", handle_sigterm=False)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_capture_runs_sets_the_observer_aside_and_gives_it_back_with_its_heartbeat(
    fresh_observer: Configure,
) -> None:
    from odibi_observe import _runtime as runtime
    from odibi_observe.testing import InMemorySink, capture_runs

    outer_sink = InMemorySink()
    outer = fresh_observer(
        sinks=[outer_sink], mode="inline", heartbeat_interval=0.05, handle_sigterm=False
    )
    with capture_runs(heartbeat_interval=0) as captured:
        assert runtime.current_observer() is not outer
        assert not runtime.heartbeat_running()
        with oo.node_run("p", "inside"):
            pass
    assert [r.node for r in captured.finished] == ["inside"]
    assert runtime.current_observer() is outer and runtime.heartbeat_running()
    with oo.node_run("p", "after"):
        pass
    assert [r.node for r in outer_sink.finished] == ["after"]


def test_current_observer_never_configures_one(fresh_observer: Configure) -> None:
    from odibi_observe import _runtime as runtime

    assert runtime.current_observer() is None
    assert runtime.current_observer() is None  # still none: nothing was configured
    observer = fresh_observer(sinks=[], mode="inline", handle_sigterm=False)
    assert runtime.current_observer() is observer
