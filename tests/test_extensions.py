"""The extension registry (odibi_observe/extensions.py): built-ins by import path, third parties
by entry point, one rule for sinks, trace sources and catalog sources.

Entry points are tested for real: a tiny installed distribution (a ``*.dist-info`` directory
with ``entry_points.txt``, next to its package) on ``PYTHONPATH`` of a child process, which
then runs ``odibi-observe reconcile`` and an instrumented node exactly as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from odibi_observe import extensions
from odibi_observe.conventions import (
    CATALOG_SOURCES_ENTRY_POINT_GROUP,
    SINKS_ENTRY_POINT_GROUP,
    TRACE_SOURCES_ENTRY_POINT_GROUP,
)
from odibi_observe.reconcile import (
    SourceError,
    SourceOptions,
    TraceSource,
    open_catalog_source,
    open_trace_source,
    register_trace_source,
)
from odibi_observe.reconcile.model import ReadLog
from odibi_observe.sinks.base import Sink
from odibi_observe.testing.contracts import BASE_NS, HOUR, read_range, runs
from tests.test_reconcile_support import ListSource, trace_run, write_catalog, write_spans

# --------------------------------------------------------------------------- in-process registry


def test_importing_the_contracts_and_the_registry_imports_no_implementation() -> None:
    """The registry names built-ins by import path: nothing is imported until it is used, so
    the contract modules and the registry can be imported by every implementation."""
    code = textwrap.dedent("""
        import sys
        # (The Prometheus sink's module is the /metrics server's too: the package loads it.)
        implementations = ("odibi_observe.sinks.otel", "odibi_observe.sinks.spool",
                           "odibi_observe.sinks.catalog", "odibi_observe.reconcile.ledger",
                           "odibi_observe.reconcile.tempo", "odibi_observe.reconcile.otlp_files")
        import odibi_observe.extensions as x
        import odibi_observe.sinks.base, odibi_observe.sinks.builtin
        x.schemes(x.SINKS); x.schemes(x.TRACE_SOURCES); x.schemes(x.CATALOG_SOURCES)
        print(sorted(m for m in sys.modules if m in implementations))
        # The reconcile package imports its engine and repair (and so the OTel sink), but
        # not one trace source.
        import odibi_observe.reconcile.sources
        print(sorted(m for m in sys.modules if m in implementations[3:]))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["[]", "[]"], out.stderr


def test_every_builtin_is_registered_under_its_own_scheme() -> None:
    for kind, builtins in extensions.BUILTIN.items():
        assert extensions.schemes(kind)[: len(builtins)] == tuple(builtins)
        for scheme in builtins:
            obj = extensions.load(kind, scheme)
            declared = getattr(obj, "scheme", scheme)
            assert declared == scheme
    # Sinks register factories; the classes they build carry the same scheme as their name.
    from odibi_observe.sinks.catalog import CatalogSink
    from odibi_observe.sinks.otel import OtelSink
    from odibi_observe.sinks.prometheus import PrometheusSink
    from odibi_observe.sinks.spool import SpoolSink

    for cls in (CatalogSink, OtelSink, PrometheusSink, SpoolSink):
        assert cls.scheme == cls.name
        assert cls.scheme in extensions.schemes(extensions.SINKS)


def test_unknown_schemes_list_the_known_ones() -> None:
    with pytest.raises(SourceError) as traces:
        open_trace_source("jaeger:http://x")
    assert "otlp-json:..., ledger:..., tempo:..." in str(traces.value)
    with pytest.raises(SourceError) as catalog:
        open_catalog_source("jaeger:/x")
    assert "SQLAlchemy URL or one of odibi-delta:..." in str(catalog.value)
    with pytest.raises(extensions.UnknownScheme, match="known: prometheus, catalog, otel"):
        extensions.load(extensions.SINKS, "nope")


def test_register_trace_source_is_the_registry(tmp_path: Path) -> None:
    """``register_trace_source`` (exported from odibi_observe.reconcile) keeps working."""
    record = runs(1)[0]

    def factory(location: str, options: SourceOptions) -> TraceSource:
        assert (location, options.tempo_limit) == ("anything", 500)
        return ListSource([trace_run(record)])

    register_trace_source("listed", factory)
    try:
        assert "listed" in extensions.schemes(extensions.TRACE_SOURCES)
        source = open_trace_source("listed:anything")
        assert [r[0] for r in source.read(read_range(), ReadLog())] == [record.run_id]
    finally:
        extensions.unregister(extensions.TRACE_SOURCES, "listed")
    with pytest.raises(SourceError, match="expected one of"):
        open_trace_source("listed:anything")


def test_a_factory_that_returns_something_else_is_a_clear_error() -> None:
    extensions.register(extensions.TRACE_SOURCES, "wrong", lambda location, options: 42)
    extensions.register(extensions.SINKS, "wrong", lambda context: "not a sink")
    try:
        with pytest.raises(SourceError, match="returned int, not a TraceSource"):
            open_trace_source("wrong:x")
        from odibi_observe.sinks.base import build_sink

        with pytest.raises(extensions.ExtensionError, match="returned str, not a Sink"):
            build_sink("wrong", None)  # type: ignore[arg-type]
    finally:
        extensions.unregister(extensions.TRACE_SOURCES, "wrong")
        extensions.unregister(extensions.SINKS, "wrong")


def test_an_implementation_that_declares_another_scheme_is_refused() -> None:
    class Elsewhere(ListSource):
        scheme = "elsewhere"

    extensions.register(extensions.TRACE_SOURCES, "here", Elsewhere)
    try:
        with pytest.raises(SourceError, match="declares scheme 'elsewhere'"):
            open_trace_source("here:x")
    finally:
        extensions.unregister(extensions.TRACE_SOURCES, "here")


def test_schemes_are_names() -> None:
    for bad in ("", "a:b", " x"):
        with pytest.raises(ValueError, match="scheme"):
            extensions.register(extensions.SINKS, bad, Sink)


# ------------------------------------------------------------------- entry points, for real

_PACKAGE = '''
"""A third-party package: one trace source, one catalog source, two sinks."""
import os

from odibi_observe.reconcile.catalog_sources import SqlCatalog
from odibi_observe.reconcile.otlp_files import OtlpJsonFileSource
from odibi_observe.sinks.base import Sink


class MySource(OtlpJsonFileSource):
    """Spans in OTLP-JSON files, under a scheme of its own."""

    scheme = "myscheme"


class MyCatalog(SqlCatalog):
    scheme = "mycat"


class RunFileSink(Sink):
    """One line per finished run, in the file $RUNFILE."""

    name = scheme = "runfile"

    def __init__(self, path):
        self.path = path

    @classmethod
    def from_context(cls, context):
        path = os.environ.get("RUNFILE")
        return cls(path) if path else None

    def export(self, events):
        with open(self.path, "a") as out:
            for e in events:
                if e.kind.value == "finished":
                    out.write(f"{e.run_id} {e.record.status.value} {e.record.node}\\n")


def broken(context):
    raise RuntimeError("broken on purpose")


def not_importable():
    pass
'''

_ENTRY_POINTS = f"""
[{TRACE_SOURCES_ENTRY_POINT_GROUP}]
myscheme = oo_thirdparty:MySource
tempo = oo_thirdparty:MySource

[{CATALOG_SOURCES_ENTRY_POINT_GROUP}]
mycat = oo_thirdparty:MyCatalog

[{SINKS_ENTRY_POINT_GROUP}]
runfile = oo_thirdparty:RunFileSink
broken = oo_thirdparty:broken
missing = oo_thirdparty_gone:factory
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory holding an installed distribution ``oo-thirdparty`` and its package."""
    site = tmp_path / "site"
    (site / "oo_thirdparty").mkdir(parents=True)
    (site / "oo_thirdparty" / "__init__.py").write_text(_PACKAGE)
    info = site / "oo_thirdparty-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: oo-thirdparty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(_ENTRY_POINTS)
    return site


def _child(site: Path, code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` with the distribution's directory on ``PYTHONPATH``."""
    environ = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    for name in (
        "ODIBI_OBSERVE_CATALOG_URL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "ODIBI_OBSERVE_TRACES_FILE",
        "ODIBI_OBSERVE_MODE",
    ):
        environ.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )


_CLI = "import sys; from odibi_observe.cli import main; sys.exit(main(sys.argv[1:]))"


def test_reconcile_finds_a_third_party_trace_and_catalog_source(site: Path, tmp_path: Path) -> None:
    records = runs(5)
    url = f"sqlite:///{tmp_path}/catalog.db"
    write_catalog(url, records).dispose()
    write_spans(tmp_path / "traces" / "t.jsonl", records)
    window = ["--since", _iso(BASE_NS), "--until", _iso(BASE_NS + 24 * HOUR), "--grace", "0s"]
    out = tmp_path / "out"
    done = _child(
        site,
        _CLI,
        "reconcile",
        "--catalog",
        f"mycat:{url}",
        "--traces",
        f"myscheme:{tmp_path / 'traces'}",
        *window,
        "--out",
        str(out),
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["sources"]["traces"] == [f"myscheme:{tmp_path / 'traces'}"]
    assert report["summary"]["trace_runs"] == 5
    assert report["discrepancies"] == []
    assert not report["errors"]

    unknown = _child(
        site,
        _CLI,
        "reconcile",
        "--catalog",
        url,
        "--traces",
        "nosuch:x",
        *window,
        "--out",
        str(tmp_path / "out2"),
        "--quiet",
    )
    assert unknown.returncode != 0
    assert (
        "expected one of otlp-json:..., ledger:..., tempo:..., openlineage-file:..., myscheme:..."
        in unknown.stderr
    )
    # An entry point may not take a built-in scheme: it is ignored, with a warning.
    assert "entry point tempo = oo_thirdparty:MySource" in unknown.stderr
    assert "is a built-in trace source" in unknown.stderr


def _iso(ns: int) -> str:
    from odibi_observe.record import ns_to_datetime

    return ns_to_datetime(ns).isoformat()


def test_a_third_party_sink_records_every_run_and_a_broken_one_costs_only_itself(
    site: Path, tmp_path: Path
) -> None:
    runfile = tmp_path / "runs.txt"
    code = textwrap.dedent("""
        import odibi_observe as oo
        observer = oo.configure(mode="inline", project="p")
        print("sinks", sorted(s.name for s in oo.get_observer().sinks))

        @oo.observe_node(pipeline="sales")
        def load():
            return 3

        assert load() == 3
        oo.shutdown()
        print("returned")
    """)
    done = _child(site, code, RUNFILE=str(runfile))
    assert done.returncode == 0, done.stderr
    assert "sinks ['prometheus', 'runfile']" in done.stdout
    assert "returned" in done.stdout
    lines = runfile.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith(" SUCCESS load")
    assert "broken sink disabled: RuntimeError: broken on purpose" in done.stderr
    assert "missing sink disabled: cannot load entry point missing" in done.stderr
    assert "ModuleNotFoundError" in done.stderr

    # Without its setting the third-party factory builds nothing, and says nothing.
    quiet = _child(site, code)
    assert quiet.returncode == 0, quiet.stderr
    assert "sinks ['prometheus']" in quiet.stdout


def test_strict_configuration_refuses_a_broken_third_party_sink(site: Path) -> None:
    code = textwrap.dedent("""
        import odibi_observe as oo
        from odibi_observe.config import ConfigurationError
        try:
            oo.configure(mode="inline", project="p", strict=True)
        except ConfigurationError as exc:
            print("refused:", exc)
    """)
    done = _child(site, code)
    assert "refused: broken sink: broken on purpose" in done.stdout, done.stderr


# ------------------------------------------------------------------------ specs, by scheme


def test_repair_span_destinations_are_split_by_scheme(tmp_path: Path) -> None:
    from odibi_observe.reconcile.repair import RepairError, span_sink

    sink, where = span_sink(f"otlp-json:{tmp_path / 'repaired.jsonl'}")
    assert sink is not None
    assert where == f"otlp-json:{tmp_path / 'repaired.jsonl'}"
    sink.shutdown()
    sink, where = span_sink("http://127.0.0.1:9/v1/traces")
    assert sink is not None
    assert where == "http://127.0.0.1:9/v1/traces"
    sink.shutdown()
    for bad, message in (
        ("otlp-json:", "needs a file path"),
        ("jaeger:http://x", "expected otlp-json:PATH or an http"),
        ("http:relative", "expected otlp-json:PATH or an http"),
    ):
        with pytest.raises(RepairError, match=message):
            span_sink(bad)


def test_sql_names_the_sql_catalog_and_a_plain_url_needs_no_prefix(tmp_path: Path) -> None:
    from odibi_observe.catalog.readonly import CatalogUnreadable, readable_catalog_url

    url = f"sqlite:///{tmp_path}/catalog.db"
    write_catalog(url, runs(2)).dispose()
    for spec in (url, f"sql:{url}"):
        source = open_catalog_source(readable_catalog_url(spec))
        assert source.scheme == "sql"
        assert len(list(source.read(read_range(), ReadLog()))) == 2
        source.close()
    # The read-only check looks through sql: at the URL (nothing is created by a typo).
    with pytest.raises(CatalogUnreadable, match="does not exist"):
        readable_catalog_url(f"sql:sqlite:///{tmp_path}/typo.db")
    assert not (tmp_path / "typo.db").exists()
    # Another registered catalog scheme is the source's to check.
    assert readable_catalog_url(f"odibi-delta:{tmp_path}/x") == f"odibi-delta:{tmp_path}/x"


def test_configure_builds_the_registered_sinks_the_settings_ask_for(tmp_path: Path) -> None:
    """In-process: a registered sink class is built by ``from_context`` (None leaves it out),
    next to the built-ins; one whose factory raises is left out and the rest record."""
    import odibi_observe as oo
    from odibi_observe import _runtime as runtime
    from odibi_observe.testing import InMemorySink

    built: list[InMemorySink] = []

    class Remembering(InMemorySink):
        scheme = "remembering"

        @classmethod
        def from_context(cls, context: object) -> InMemorySink:
            built.append(cls())
            return built[-1]

    def refuses(context: object) -> None:
        return None

    def raises(context: object) -> Sink:
        raise RuntimeError("no")

    for scheme, target in (("remembering", Remembering), ("refuses", refuses), ("raises", raises)):
        extensions.register(extensions.SINKS, scheme, target)
    try:
        with runtime._lock:
            previous, runtime._observer = runtime._observer, None
        try:
            observer = oo.configure(
                mode="inline", project="p", catalog_url=f"sqlite:///{tmp_path}/c.db"
            )
            assert [s.name for s in observer.sinks] == ["prometheus", "catalog", "memory"]
            assert observer.prometheus_sink is observer.sinks[0]

            @oo.observe_node(pipeline="sales")
            def load() -> int:
                return 1

            load()
            oo.flush()
            assert [r.node for r in built[0].finished] == ["load"]
        finally:
            oo.shutdown()
            with runtime._lock:
                runtime._observer = previous
    finally:
        for scheme in ("remembering", "refuses", "raises"):
            extensions.unregister(extensions.SINKS, scheme)
