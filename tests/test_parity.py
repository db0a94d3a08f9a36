"""Parity is the product: random runs, then catalog row == span == Prometheus samples.

Hypothesis drives mixes of successes, failures, BaseExceptions, nested pipeline spans, async
nodes and threads through the real sinks (SQLite or PostgreSQL catalog, the OTel sink with an
in-memory span exporter, the Prometheus sink) and checks, for every run, that the catalog row
and the span carry the same run_id, status, rows and duration (to the millisecond), and that
the Prometheus counters and histogram add up to exactly the same runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe.conventions import CATALOG_TABLE, FIELDS, METRICS
from odibi_observe.sinks.catalog import CatalogSink
from odibi_observe.sinks.otel import OtelSink
from odibi_observe.sinks.prometheus import PrometheusSink


@dataclass(frozen=True)
class Step:
    outcome: str  # "ok", "error", "interrupt", "exit"
    rows: str  # "list", "set", "none"
    n: int
    style: str  # "sync", "async", "thread", "context"
    nested: bool
    node: str


steps = st.builds(
    Step,
    outcome=st.sampled_from(["ok", "ok", "error", "interrupt", "exit"]),
    rows=st.sampled_from(["list", "set", "none"]),
    n=st.integers(min_value=0, max_value=50),
    style=st.sampled_from(["sync", "async", "thread", "context"]),
    nested=st.booleans(),
    node=st.sampled_from(["extract", "clean", "join", "load"]),
)


class Boom(Exception):
    suggestions = ("check the input",)


def _body(step: Step) -> Callable[[], Any]:
    def body() -> Any:
        if step.rows == "set":
            oo.current_run().rows_processed = step.n
        if step.outcome == "error":
            raise Boom(f"failed after {step.n}")
        if step.outcome == "interrupt":
            raise KeyboardInterrupt
        if step.outcome == "exit":
            raise SystemExit(2)
        return list(range(step.n)) if step.rows == "list" else None

    return body


def _run_step(step: Step, tracer: Any) -> None:
    body = _body(step)

    def call() -> None:
        try:
            if step.style == "context":
                with oo.node_run("parity", step.node):
                    body()
            elif step.style == "async":

                @oo.observe_node(pipeline="parity", node=step.node)
                async def anode() -> Any:
                    await asyncio.sleep(0)
                    return body()

                asyncio.run(anode())
            else:
                oo.observe_node(pipeline="parity", node=step.node)(body)()
        except (Boom, KeyboardInterrupt, SystemExit):
            pass

    def maybe_nested() -> None:
        if step.nested:
            with tracer.start_as_current_span("pipeline parity"):
                call()
        else:
            call()

    if step.style == "thread":
        t = threading.Thread(target=maybe_nested)
        t.start()
        t.join()
    else:
        maybe_nested()


def _check_parity(
    url: str, spans: list[ReadableSpan], registry: CollectorRegistry, expected_runs: int
) -> None:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {CATALOG_TABLE}"))]
    engine.dispose()
    node_spans = {
        s.attributes[FIELDS.run_id.attribute]: s  # type: ignore[index]
        for s in spans
        if s.attributes and FIELDS.run_id.attribute in s.attributes
    }
    assert len(rows) == expected_runs
    assert {r[FIELDS.run_id.column] for r in rows} == set(node_spans)

    totals: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    for row in rows:
        span = node_spans[row[FIELDS.run_id.column]]
        attrs = span.attributes or {}
        ctx = span.get_span_context()
        assert ctx is not None
        assert row[FIELDS.trace_ids.columns[0]] == f"{ctx.trace_id:032x}"
        assert row[FIELDS.trace_ids.columns[1]] == f"{ctx.span_id:016x}"
        assert row[FIELDS.status.column] == attrs[FIELDS.status.attribute]  # type: ignore[index]
        assert row[FIELDS.status.column] != "RUNNING"
        # ERROR for failures and crashes; a cancellation (Ctrl-C) is no error of the node.
        assert (span.status.status_code is StatusCode.ERROR) == (
            row[FIELDS.status.column] not in ("SUCCESS", "CANCELLED")
        )
        assert row[FIELDS.rows.column] == attrs.get(FIELDS.rows.attribute)  # type: ignore[arg-type]
        assert span.end_time is not None and span.start_time is not None
        span_ms = (span.end_time - span.start_time) / 1e6
        assert abs(span_ms - row[FIELDS.duration.column]) <= 0.5 + 1e-9
        assert row[FIELDS.duration.column] == attrs[FIELDS.duration.attribute]  # type: ignore[index]
        key = tuple(str(row[c]) for c in ("project", "pipeline_name", "node_name", "environment"))
        totals[key]["runs:" + row[FIELDS.status.column]] += 1
        totals[key]["rows"] += row[FIELDS.rows.column] or 0
        totals[key]["count"] += 1
        totals[key]["ns"] += span.end_time - span.start_time

    for key, t in totals.items():
        labels = dict(zip(METRICS.rows.labels, key, strict=True))
        for status in ("SUCCESS", "FAILURE", "CRASHED", "CANCELLED"):
            value = (
                registry.get_sample_value(METRICS.runs.prometheus, {**labels, "status": status})
                or 0
            )
            assert value == t["runs:" + status], (key, status)
        assert (registry.get_sample_value(METRICS.rows.prometheus, labels) or 0) == t["rows"]
        assert (
            registry.get_sample_value(METRICS.duration.prometheus + "_count", labels) == t["count"]
        )
        hist_sum = registry.get_sample_value(METRICS.duration.prometheus + "_sum", labels)
        assert hist_sum == pytest.approx(t["ns"] / 1e9, abs=1e-6)


def _parity_case(url: str, plan: list[Step], mode: str) -> None:
    exporter = InMemorySpanExporter()
    registry = CollectorRegistry()
    tracer = TracerProvider().get_tracer("parity-test")
    otel = OtelSink(span_exporters=[exporter], install_global=False, metrics=False)
    oo.configure(
        mode=mode,
        project="prop",
        environment="test",
        handle_sigterm=False,
        sinks=[CatalogSink(url), otel, PrometheusSink(registry)],
        strict=True,
    )
    try:
        for step in plan:
            _run_step(step, tracer)
        assert oo.flush(30)
        _check_parity(url, list(exporter.get_finished_spans()), registry, len(plan))
    finally:
        oo.shutdown()


def _reset(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if sa.inspect(conn).has_table(CATALOG_TABLE):
            conn.execute(sa.text(f"DELETE FROM {CATALOG_TABLE}"))
    engine.dispose()


_settings = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_settings
@given(
    plan=st.lists(steps, min_size=1, max_size=12), mode=st.sampled_from(["inline", "background"])
)
def test_parity_on_sqlite(sqlite_url: str, plan: list[Step], mode: str) -> None:
    _reset(sqlite_url)
    _parity_case(sqlite_url, plan, mode)


@pytest.mark.postgres
@settings(_settings, max_examples=20)
@given(
    plan=st.lists(steps, min_size=1, max_size=12), mode=st.sampled_from(["inline", "background"])
)
def test_parity_on_postgresql(pg_url: str, plan: list[Step], mode: str) -> None:
    _reset(pg_url)
    _parity_case(pg_url, plan, mode)
