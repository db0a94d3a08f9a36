"""Every name odibi-observe writes is spelled once, in ``conventions.py``: a scan of the package.

A metric name spelled by hand in a warning, a crash ``error_type`` typed again in an exit hook,
``service.name`` or the default TraceQL query copied into a module: each is a second spelling
that a rename in the conventions silently misses. The scan reads every string the package's
code holds (docstrings and comments are documentation and may name things), and fails on a
metric's Prometheus name inside any of them, or on a string that *is* a crash error type,
``service.name`` or the default TraceQL query. The migrations are left out on purpose: they
are history and spell their names out so they never change when a constant does.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from odibi_observe import conventions as c

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "odibi_observe"
MIGRATIONS = PACKAGE / "catalog" / "migrations"

#: Strings that must never appear, whole, outside conventions.py.
EXACT_NAMES = (
    *c.CRASH_CAUSES,
    c.CRASHED_ERROR_TYPE,
    c.RESOURCE_SERVICE_NAME,
    c.TEMPO_DEFAULT_QUERY,
)
#: Metric names, which must not appear even inside a longer text (a log message, a hint).
METRIC_NAMES = tuple(m.prometheus for m in c.all_metrics())


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """The ids of the string constants that are documentation: bare string statements."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


def code_strings(source: str) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of every string constant in ``source`` that is not documentation,
    including the literal parts of f-strings."""
    tree = ast.parse(source)
    docs = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def spelled_names(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every conventions name ``source`` spells by hand."""
    found = []
    for line, text in code_strings(source):
        found += [(line, name) for name in EXACT_NAMES if text == name]
        found += [
            (line, name)
            for name in METRIC_NAMES
            if re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text)
        ]
    return found


def _package_sources() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "conventions.py" or MIGRATIONS in path.parents:
            continue
        yield path


def test_the_package_spells_no_name_of_the_conventions() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in _package_sources()
        for line, name in spelled_names(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "use the constants of odibi_observe.conventions:\n" + "\n".join(
        offenders
    )


@pytest.mark.parametrize(
    ("source", "name"),
    [
        (
            'log.warning("dropped %d (counted in odibi_observe_events_dropped_total)", n)',
            c.SELF_METRICS.events_dropped.prometheus,
        ),
        ('close("ProcessExit", "the interpreter exited")', c.CRASH_PROCESS_EXIT),
        ('close("SIGTERM", "received SIGTERM")', c.CRASH_SIGTERM),
        ('error_type = "ProcessCrashed"', c.CRASHED_ERROR_TYPE),
        ('attributes = {"service.name": service}', c.RESOURCE_SERVICE_NAME),
        ("query: str = '{ span.odibi.run_id != \"\" }'", c.TEMPO_DEFAULT_QUERY),
        ('print(f"grep odibi_node_runs_total {path}")', c.METRICS.runs.prometheus),
    ],
)
def test_the_scan_finds_a_name_spelled_by_hand(source: str, name: str) -> None:
    """The scan can fail: each kind of second spelling is found where code holds it."""
    assert [found for _, found in spelled_names(source)] == [name]


def test_the_scan_leaves_documentation_and_other_names_alone() -> None:
    source = '''
def close() -> None:
    """Closes a run as CRASHED (SIGTERM, ProcessExit), counted in odibi_node_runs_total."""
    # "service.name" in a comment is documentation too.
    log.warning("the process received SIGTERM")  # SIGTERM inside a message is not a name
    other = "odibi_node_runs_totals", "service.name.suffix"
'''
    assert spelled_names(source) == []


def test_the_default_tempo_query_selects_spans_by_the_run_id_attribute() -> None:
    assert c.TEMPO_DEFAULT_QUERY == '{ span.odibi.run_id != "" }'
    assert c.FIELDS.run_id.attribute is not None
    assert c.FIELDS.run_id.attribute in c.TEMPO_DEFAULT_QUERY


def test_service_name_is_the_semantic_conventions_constant() -> None:
    from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

    assert c.RESOURCE_SERVICE_NAME == SERVICE_NAME == "service.name"


def test_every_names_table_iterates_its_entries_in_declaration_order() -> None:
    """One base class iterates every table; each yields exactly its dataclass fields."""
    import dataclasses

    tables = [value for value in vars(c).values() if isinstance(value, c._Table)]
    assert {type(t).__name__ for t in tables} >= {
        "Fields",
        "Metrics",
        "SelfMetrics",
        "SidecarMetrics",
        "ReconcileMetrics",
        "HealthMetrics",
        "ResourceFields",
        "ResourceMetrics",
    }
    for table in tables:
        assert dataclasses.is_dataclass(table)
        names = [f.name for f in dataclasses.fields(table)]
        assert [entry.key for entry in table] == names, type(table).__name__
