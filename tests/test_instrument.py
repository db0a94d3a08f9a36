"""@observe_node, node_run(), current_run(): the record on every exit path, inputs clamped."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

import odibi_observe as oo
from odibi_observe._instrument import rows_from_result
from odibi_observe.conventions import RunStatus
from odibi_observe.record import EventKind
from odibi_observe.testing import capture_runs


class NodeExecutionError(Exception):
    """Shaped like Odibi's: carries actionable ``suggestions``."""

    def __init__(self, message: str, suggestions: list[str]) -> None:
        super().__init__(message)
        self.suggestions = suggestions


def test_success_records_started_then_finished_with_same_ids() -> None:
    with capture_runs(project="shop", environment="prod") as runs:

        @oo.observe_node(pipeline="sales")
        def load() -> list[int]:
            return [1, 2, 3]

        assert load() == [1, 2, 3]
    kinds = [e.kind for e in runs.events]
    assert kinds == [EventKind.STARTED, EventKind.FINISHED]
    start, end = (e.record for e in runs.events)
    assert start.run_id == end.run_id and start.span_id == end.span_id
    assert start.status is RunStatus.RUNNING and end.status is RunStatus.SUCCESS
    assert (end.project, end.pipeline, end.node, end.environment) == (
        "shop",
        "sales",
        "load",
        "prod",
    )
    assert end.rows_processed == 3
    assert end.ended_ns is not None and end.ended_ns >= end.started_ns
    assert end.duration_ms == round((end.ended_ns - end.started_ns) / 1e6)


def test_exception_is_recorded_before_it_propagates_unchanged() -> None:
    seen_by_caller: list[int] = []
    with capture_runs() as runs:

        @oo.observe_node(pipeline="sales")
        def transform() -> None:
            oo.current_run().suggest("re-run after the upstream export lands")
            raise NodeExecutionError(
                "column 'amount' missing (token=abc123)",
                ["check the source schema", "pin the export version"],
            )

        with pytest.raises(NodeExecutionError) as info:
            try:
                transform()
            finally:
                seen_by_caller.append(len(runs.finished))
    assert seen_by_caller == [1]  # the terminal record existed before the caller saw the error
    assert str(info.value) == "column 'amount' missing (token=abc123)"  # untouched
    (rec,) = runs.finished
    assert rec.status is RunStatus.FAILURE
    assert rec.error_type == "tests.test_instrument.NodeExecutionError"
    assert rec.error_message is not None
    assert "abc123" not in rec.error_message and "token=***" in rec.error_message
    assert rec.suggestions == (
        "re-run after the upstream export lands",
        "check the source schema",
        "pin the export version",
    )


@pytest.mark.parametrize("exc", [SystemExit(3), asyncio.CancelledError()])
def test_base_exceptions_are_failures_and_propagate(exc: BaseException) -> None:
    with capture_runs() as runs:

        @oo.observe_node(pipeline="p")
        def node() -> None:
            raise exc

        with pytest.raises(type(exc)):
            node()
    (rec,) = runs.finished
    assert rec.status is RunStatus.FAILURE
    assert rec.error_type is not None and rec.error_type.endswith(type(exc).__name__)


def test_keyboard_interrupt_is_a_cancellation_and_propagates_unchanged() -> None:
    interrupt = KeyboardInterrupt("operator pressed Ctrl-C")
    with capture_runs() as runs:

        @oo.observe_node(pipeline="p")
        def node() -> None:
            raise interrupt

        with pytest.raises(KeyboardInterrupt) as info:
            node()
        with pytest.raises(KeyboardInterrupt), oo.node_run("p", "block"):
            raise KeyboardInterrupt
    assert info.value is interrupt  # the very exception, not a wrapper
    decorated, block = runs.finished
    for rec in (decorated, block):
        assert rec.status is RunStatus.CANCELLED
        assert rec.error_type == "KeyboardInterrupt"
    assert decorated.error_message == "operator pressed Ctrl-C"


def test_suggestions_are_found_on_the_cause_chain() -> None:
    with capture_runs() as runs:
        with pytest.raises(RuntimeError), oo.node_run("p", "n"):
            try:
                raise NodeExecutionError("inner", ["fix the inner thing"])
            except NodeExecutionError as inner:
                raise RuntimeError("outer") from inner
    assert runs.finished[0].suggestions == ("fix the inner thing",)


def test_async_nodes_and_concurrent_tasks_keep_their_own_run() -> None:
    with capture_runs() as runs:

        @oo.observe_node(pipeline="p")
        async def fetch(n: int) -> list[int]:
            run_id = oo.current_run().run_id
            await asyncio.sleep(0.01)
            assert oo.current_run().run_id == run_id  # no bleed between tasks
            oo.current_run().set_attribute("n", n)
            return list(range(n))

        async def main() -> list[list[int]]:
            return await asyncio.gather(*(fetch(n) for n in range(5)))

        assert asyncio.run(main()) == [list(range(n)) for n in range(5)]
    recs = sorted(runs.finished, key=lambda r: r.attributes["n"])
    assert [r.rows_processed for r in recs] == [0, 1, 2, 3, 4]
    assert len({r.run_id for r in recs}) == 5


def test_threads_record_independently() -> None:
    with capture_runs() as runs:

        @oo.observe_node(pipeline="p")
        def work(i: int) -> list[int]:
            oo.current_run().rows_processed = i
            return []

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(r.rows_processed or 0 for r in runs.finished) == list(range(8))


def test_node_run_context_manager_and_current_run_api() -> None:
    with capture_runs() as runs:
        assert not oo.current_run()  # falsy no-op outside a node
        oo.current_run().add_rows(5)  # accepted and ignored
        with oo.node_run("sales", "publish", attempt=2) as run:
            assert oo.current_run() is run
            run.add_rows(10)
            run.add_rows(5)
            run.set_attribute("region", "eu")
        assert not oo.current_run()
    (rec,) = runs.finished
    assert (rec.node, rec.attempt, rec.rows_processed) == ("publish", 2, 15)
    assert rec.attributes == {"region": "eu"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([1, 2, 3], 3),
        (pd.DataFrame({"a": range(4)}), 4),
        (pl.DataFrame({"a": range(6)}), 6),
        (pa.table({"a": list(range(7))}), 7),
        (42, None),  # an int is not a row count unless asked
        (True, None),
        ({"a": 1}, None),
        ("text", None),
        (None, None),
    ],
)
def test_rows_from_result(value: object, expected: int | None) -> None:
    assert rows_from_result(value) == expected


def test_int_return_counted_only_when_asked() -> None:
    with capture_runs() as runs:

        @oo.observe_node(pipeline="p", count_int_return=True)
        def written() -> int:
            return 99

        @oo.observe_node(pipeline="p")
        def status_code() -> int:
            return 99

        written()
        status_code()
    by_node = {r.node: r.rows_processed for r in runs.finished}
    assert by_node == {"written": 99, "status_code": None}


def test_node_nests_under_the_callers_span_and_user_spans_nest_under_the_node() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    with capture_runs() as runs:
        with tracer.start_as_current_span("pipeline") as pipeline_span:
            with oo.node_run("p", "n"):
                inner = tracer.start_span("user work")
                inner.end()
    (rec,) = runs.finished
    parent_ctx = pipeline_span.get_span_context()
    assert rec.trace_id == f"{parent_ctx.trace_id:032x}"
    assert rec.parent_span_id == f"{parent_ctx.span_id:016x}"
    assert isinstance(inner, ReadableSpan) and inner.parent is not None
    assert f"{inner.parent.span_id:016x}" == rec.span_id
    assert trace.get_current_span().get_span_context().is_valid is False


def test_pipeline_run_groups_nodes() -> None:
    with capture_runs() as runs:
        with oo.pipeline_run("nightly", project="lake") as prid:
            with oo.node_run(node="a"):
                pass
            with oo.node_run(node="b"):
                pass
    assert {(r.pipeline, r.project, r.pipeline_run_id) for r in runs.finished} == {
        ("nightly", "lake", prid)
    }


class TestBadInputIsClampedNeverRaised:
    def _one(self, body) -> oo.RunRecord:  # type: ignore[no-untyped-def]
        with capture_runs() as runs:
            with oo.node_run("p", "n") as run:
                body(run)
        (rec,) = runs.finished
        return rec

    @pytest.mark.parametrize("bad", [math.nan, -5, math.inf, "lots", object()])
    def test_invalid_row_counts_become_unknown(self, bad: object) -> None:
        rec = self._one(lambda run: setattr(run, "rows_processed", bad))
        assert rec.rows_processed is None

    def test_row_count_float_is_truncated(self) -> None:
        assert self._one(lambda run: setattr(run, "rows_processed", 3.0)).rows_processed == 3

    def test_unserialisable_attribute_is_stored_as_repr(self) -> None:
        class Weird:
            def __repr__(self) -> str:
                return "<Weird>"

        rec = self._one(lambda run: run.set_attribute("w", Weird()))
        assert rec.attributes["w"] == "<Weird>"

    def test_unprintable_attribute_does_not_raise(self) -> None:
        class Broken:
            def __repr__(self) -> str:
                raise RuntimeError("no")

        rec = self._one(lambda run: run.set_attribute("b", Broken()))
        assert rec.attributes["b"] == "<unprintable Broken>"

    def test_megabyte_string_is_bounded(self) -> None:
        rec = self._one(lambda run: run.set_attribute("big", "x" * 1_000_000))
        value = rec.attributes["big"]
        assert isinstance(value, str) and len(value) <= 4096
        assert value.endswith("more characters]")

    def test_megabyte_error_message_is_bounded(self) -> None:
        with capture_runs() as runs:
            with pytest.raises(ValueError), oo.node_run("p", "n"):
                raise ValueError("y" * 1_000_000)
        assert len(runs.finished[0].error_message or "") <= 8192

    def test_nan_float_attribute_becomes_text(self) -> None:
        assert self._one(lambda run: run.set_attribute("f", math.nan)).attributes["f"] == "nan"

    def test_mixed_list_attribute_becomes_strings(self) -> None:
        rec = self._one(lambda run: run.set_attribute("l", [1, "a", 2.5]))
        assert rec.attributes["l"] == ("1", "a", "2.5")

    def test_hostile_names_are_kept_verbatim_but_bounded(self) -> None:
        name = 'x\'; DROP TABLE meta_runs; --\n"q"'
        with capture_runs() as runs:
            with oo.node_run(name, name * 100):
                pass
        rec = runs.finished[0]
        assert rec.pipeline == name
        assert rec.node == (name * 100)[:255]

    def test_invalid_inputs_are_counted(self) -> None:
        with capture_runs() as runs:
            observer = oo.get_observer()
            with oo.node_run("p", "n") as run:
                run.rows_processed = -1
                run.set_attribute("x", math.inf)
            registry = observer.registry
            assert (
                registry.get_sample_value(
                    "odibi_observe_invalid_input_total", {"field": "rows_processed"}
                )
                == 1
            )
            assert (
                registry.get_sample_value(
                    "odibi_observe_invalid_input_total", {"field": "attribute"}
                )
                == 1
            )
        assert runs.finished[0].rows_processed is None

    def test_non_string_pipeline_is_a_clear_error_at_decoration(self) -> None:
        with pytest.raises(TypeError, match="pipeline"):
            oo.observe_node(pipeline=123)  # type: ignore[call-overload]


def test_decorator_preserves_function_metadata() -> None:
    @oo.observe_node(pipeline="p")
    def documented(x: int) -> int:
        """Docs."""
        return x

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docs."


def test_internal_error_at_start_runs_the_node_unobserved(monkeypatch: pytest.MonkeyPatch) -> None:
    import odibi_observe._instrument as instrument

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("internal")

    with capture_runs() as runs:
        monkeypatch.setattr(instrument, "_start", broken)

        @oo.observe_node(pipeline="p")
        def node() -> int:
            return 7

        assert node() == 7
    assert runs.events == []


def test_record_finished_equals_dataclasses_replace() -> None:
    import dataclasses

    from tests.helpers import make_record

    rec = make_record(status=RunStatus.RUNNING)
    changes: dict[str, Any] = {
        "status": RunStatus.FAILURE,
        "ended_ns": rec.started_ns + 5,
        "rows_processed": 3,
        "suggestions": ("x",),
    }
    assert rec.finished(**changes) == dataclasses.replace(rec, **changes)
    with pytest.raises(TypeError, match="no field"):
        rec.finished(colour="red")


def test_record_replace_amends_without_finishing() -> None:
    import dataclasses

    from tests.helpers import make_record

    rec = make_record(status=RunStatus.RUNNING, ended_ns=None)
    beat = rec.replace(heartbeat_ns=rec.started_ns + 7)
    assert beat == dataclasses.replace(rec, heartbeat_ns=rec.started_ns + 7)
    assert beat.status is RunStatus.RUNNING and beat.ended_ns is None
    with pytest.raises(TypeError, match="no field"):
        rec.replace(colour="red")


def test_internal_error_at_start_of_a_block_runs_it_unobserved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import odibi_observe._instrument as instrument

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("internal")

    with capture_runs() as runs:
        monkeypatch.setattr(instrument, "_start", broken)
        with oo.node_run("p", "n") as run:
            run.rows_processed = 5
            run.add_rows(1)
            ran = True
    assert ran
    assert runs.events == []


def test_generator_functions_are_refused_with_a_clear_error() -> None:
    def rows():  # type: ignore[no-untyped-def]
        yield 1

    async def arows():  # type: ignore[no-untyped-def]
        yield 1

    for func in (rows, arows):
        with pytest.raises(TypeError, match="node_run"):
            oo.observe_node(pipeline="p")(func)


def test_fail_records_a_returned_failure_without_raising() -> None:
    """Frameworks that return failures (not raise them) record them with ``run.fail``."""

    class ReportedError(Exception):
        suggestions = ["check the input file"]

    with capture_runs() as runs, oo.node_run("p", "returns_failure") as run:
        run.fail(ReportedError("bad row 17"), message="ReportedError: bad row 17 (in step 2)")
        result = "the framework's result goes back unchanged"
    assert result
    (record,) = runs.finished
    assert record.status is RunStatus.FAILURE
    assert record.error_type.endswith("ReportedError")  # type: ignore[union-attr]
    assert record.error_message == "ReportedError: bad row 17 (in step 2)"
    assert record.suggestions == ("check the input file",)
    assert len(runs.events) == 2  # leaving the block recorded nothing more


def test_attempt_known_during_the_run_is_recorded() -> None:
    with capture_runs() as runs:
        with oo.node_run("p", "retried") as run:
            run.attempt = 3
            run.attempt = 0  # not an attempt number: ignored
            run.attempt = "2"  # not a whole number: ignored
        assert oo.current_run().attempt is None
    (record,) = runs.finished
    assert record.attempt == 3
