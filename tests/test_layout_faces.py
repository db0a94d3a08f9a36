"""The package faces keep the names their importers use, and the sidecar's stays lazy.

``odibi_observe.sinks.otel``, ``odibi_observe.catalog.store`` and ``odibi_observe.sidecar``
re-export what lives in their modules; these tests pin that the re-exported objects are the
very ones defined there (one definition, no copies), and that importing the sidecar package
— which the command line does to build its parser — still loads neither SQLAlchemy nor the
sidecar's machinery.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

from odibi_observe import sidecar

#: (face, name, the module that defines it)
RE_EXPORTS = [
    ("odibi_observe.sinks.otel", "OtelSink", "odibi_observe.sinks.otel.sink"),
    ("odibi_observe.sinks.otel", "record_to_span", "odibi_observe.sinks.otel.spans"),
    ("odibi_observe.sinks.otel", "span_attributes", "odibi_observe.sinks.otel.spans"),
    ("odibi_observe.sinks.otel", "record_resource", "odibi_observe.sinks.otel.spans"),
    ("odibi_observe.sinks.otel", "application_tracer_provider", "odibi_observe.sinks.otel.routing"),
    ("odibi_observe.sinks.otel", "app_span_processor", "odibi_observe.sinks.otel.routing"),
    ("odibi_observe.sinks.otel", "_install_global_provider", "odibi_observe.sinks.otel.routing"),
    ("odibi_observe.sinks.otel", "_signal_url", "odibi_observe.sinks.otel.exporters"),
    ("odibi_observe.sinks.otel", "_otlp_span_exporter", "odibi_observe.sinks.otel.exporters"),
    ("odibi_observe.catalog.store", "create_catalog_engine", "odibi_observe.catalog.engine"),
    ("odibi_observe.catalog.store", "SQLITE_IMMEDIATE", "odibi_observe.catalog.engine"),
    ("odibi_observe.catalog.store", "POSTGRES_EXTRA_HINT", "odibi_observe.catalog.engine"),
    ("odibi_observe.catalog.store", "_DriverUpsert", "odibi_observe.catalog.fastpath"),
    ("odibi_observe.catalog.migrate", "create_catalog_engine", "odibi_observe.catalog.engine"),
    ("odibi_observe.sidecar", "SidecarOptions", "odibi_observe.sidecar.options"),
    ("odibi_observe.sidecar", "DEFAULT_PORT", "odibi_observe.sidecar.options"),
    ("odibi_observe.sidecar", "parse_listen", "odibi_observe.sidecar.options"),
]


@pytest.mark.parametrize(("face", "name", "home"), RE_EXPORTS)
def test_a_face_re_exports_the_definition_itself(face: str, name: str, home: str) -> None:
    value = getattr(importlib.import_module(face), name)
    assert value is getattr(importlib.import_module(home), name)


@pytest.mark.parametrize(
    "face", ["odibi_observe.sinks.otel", "odibi_observe.catalog.store", "odibi_observe.sidecar"]
)
def test_every_name_a_face_declares_is_there(face: str) -> None:
    module = importlib.import_module(face)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


def test_the_sidecar_face_refuses_unknown_names() -> None:
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
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_catalog_modules_import_in_any_order() -> None:
    """Each catalog module imports alone in a fresh interpreter (no import circle between the
    store and the migrations)."""
    for module in ("engine", "migrate", "fastpath", "store"):
        done = subprocess.run(
            [sys.executable, "-c", f"import odibi_observe.catalog.{module}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (module, done.stderr)
