"""The package faces keep the names their importers use, and the sidecar's stays lazy.

``odibi_observe.sinks.otel``, ``odibi_observe.catalog.store`` and ``odibi_observe.sidecar``
re-export what lives in their modules; these tests pin that the re-exported objects are the
very ones defined there (one definition, no copies), and that importing the sidecar package
— which the command line does to build its parser — still loads neither SQLAlchemy nor the
sidecar's machinery.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from odibi_observe import sidecar
from odibi_observe.catalog import engine, fastpath, migrate, store
from odibi_observe.sidecar import options
from odibi_observe.sinks import otel
from odibi_observe.sinks.otel import exporters, routing, sink, spans


def test_otel_face_re_exports_the_definitions() -> None:
    assert otel.OtelSink is sink.OtelSink
    assert otel.record_to_span is spans.record_to_span
    assert otel.span_attributes is spans.span_attributes
    assert otel.record_resource is spans.record_resource
    assert otel.application_tracer_provider is routing.application_tracer_provider
    assert otel.app_span_processor is routing.app_span_processor
    assert otel._install_global_provider is routing._install_global_provider
    assert otel._signal_url is exporters._signal_url
    assert otel._otlp_span_exporter is exporters._otlp_span_exporter
    for name in otel.__all__:
        assert hasattr(otel, name), name


def test_catalog_store_keeps_its_engine_names_and_migrate_uses_the_same_engine() -> None:
    assert store.create_catalog_engine is engine.create_catalog_engine
    assert store.SQLITE_IMMEDIATE is engine.SQLITE_IMMEDIATE
    assert store.POSTGRES_EXTRA_HINT is engine.POSTGRES_EXTRA_HINT
    assert migrate.create_catalog_engine is engine.create_catalog_engine
    assert store._DriverUpsert is fastpath._DriverUpsert
    for name in store.__all__:
        assert hasattr(store, name), name


def test_sidecar_face_re_exports_the_options() -> None:
    assert sidecar.SidecarOptions is options.SidecarOptions
    assert sidecar.DEFAULT_PORT == options.DEFAULT_PORT
    assert sidecar.parse_listen is options.parse_listen
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        sidecar.Nope  # noqa: B018 - the module __getattr__ must refuse unknown names


def test_importing_the_sidecar_package_loads_neither_sqlalchemy_nor_the_service() -> None:
    code = textwrap.dedent("""
        import sys
        import odibi_observe.sidecar as sidecar
        heavy = sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy"
                       or m == "odibi_observe.sidecar.service")
        assert not heavy, heavy
        from odibi_observe.sidecar import Sidecar
        assert Sidecar.__module__ == "odibi_observe.sidecar.service"
        assert "sqlalchemy" in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_catalog_modules_import_in_any_order() -> None:
    """Each catalog module imports alone in a fresh interpreter (no import circle between the
    store and the migrations)."""
    for module in ("engine", "migrate", "fastpath", "store"):
        done = subprocess.run(
            [sys.executable, "-c", f"import odibi_observe.catalog.{module}"],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, (module, done.stderr)
