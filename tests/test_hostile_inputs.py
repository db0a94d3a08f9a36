"""Nothing raises into the node, and every run ends: hostile values on purpose.

Each case hands ``current_run()`` (or the decorator, through a return value or an exception)
an object built to break a conversion — ``__str__``, ``__repr__``, ``__len__``, ``__int__``,
``__float__``, ``__index__``, ``__bool__``, ``__eq__`` or ``__hash__`` raising, lone
surrogates, 10 MB strings, lists nested deeper than the recursion limit, huge ints, NaN and
infinite durations — and checks that the node's own result comes back unchanged, that the run
ends with its real status, and that what could not be read is counted.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

import odibi_observe as oo
from odibi_observe._active import active_runs
from odibi_observe._instrument import NodeRun, _NoRun, current_run
from odibi_observe.conventions import SELF_METRICS, RunStatus
from odibi_observe.record import RunRecord
from odibi_observe.testing import InMemorySink, capture_runs

INVALID = SELF_METRICS.invalid_input.prometheus


class Boom(Exception):
    """What every hostile method raises."""


def _boom(*args: object) -> Any:
    raise Boom("hostile")


def hostile(*methods: str, base: type = object, value: Any = None) -> Any:
    """An instance of a class whose ``methods`` all raise (``base(value)`` if given)."""
    cls = type("Hostile", (base,), dict.fromkeys(methods, _boom))
    return cls() if value is None else cls(value)


class EvilStr(str):
    __hash__ = _boom
    __eq__ = _boom
    __len__ = _boom
    __bool__ = _boom


class EvilTuple(tuple):  # type: ignore[type-arg]
    __getitem__ = _boom
    __iter__ = _boom
    __len__ = _boom


class EvilList(list):  # type: ignore[type-arg]
    __len__ = _boom


class NegativeLen(list):  # type: ignore[type-arg]
    def __len__(self) -> int:
        return -1  # noqa: PLE0303 - the point of the test


class HugeLen(list):  # type: ignore[type-arg]
    def __len__(self) -> int:
        return 2**70


def nested(depth: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(depth):
        value = [value]
    return value


LONE = "node-\ud800-x"
TEN_MB = "x" * 10_000_000


def _record(body: Callable[[NodeRun], None]) -> tuple[RunRecord, InMemorySink, float]:
    """Run ``body(current_run())`` inside a decorated node; the record, sink and invalid count.

    Asserts that the node's return value came back and that no run is left open.
    """
    with capture_runs() as sink:
        registry = oo.get_observer().registry

        @oo.observe_node(pipeline="p")
        def node() -> str:
            body(current_run())  # type: ignore[arg-type]
            return "result"

        assert node() == "result"
        assert active_runs() == []
        invalid = sum(s.value for m in registry.collect() for s in m.samples if s.name == INVALID)
    (rec,) = sink.finished
    assert rec.status is RunStatus.SUCCESS
    return rec, sink, invalid


ROWS_CASES: dict[str, Any] = {
    "__int__ raises": hostile("__int__"),
    "__index__ raises": hostile("__index__"),
    "__int__ and __repr__ raise": hostile("__int__", "__repr__", "__str__"),
    "huge negative int": -(10**5000),
    "nan": math.nan,
    "inf": math.inf,
    "bool": True,
}


@pytest.mark.parametrize("value", ROWS_CASES.values(), ids=ROWS_CASES.keys())
@pytest.mark.parametrize("how", ["set", "add"])
def test_unreadable_row_counts_are_unknown_and_counted(value: Any, how: str) -> None:
    def body(run: NodeRun) -> None:
        if how == "set":
            run.rows_processed = value
        else:
            run.add_rows(value)

    rec, _, invalid = _record(body)
    assert rec.rows_processed is None
    assert invalid >= 1


@pytest.mark.parametrize(
    "value",
    [
        hostile("__lt__", "__gt__", "__int__", "__index__", "__repr__", base=int, value=7),
        hostile("__float__", "__lt__", "__int__", "__repr__", base=float, value=7.9),
    ],
    ids=["int subclass", "float subclass"],
)
def test_number_subclasses_are_read_through_the_base_type(value: Any) -> None:
    rec, _, invalid = _record(lambda run: setattr(run, "rows_processed", value))
    assert (rec.rows_processed, invalid) == (7, 0)


def test_huge_row_count_is_clamped_to_int64() -> None:
    rec, _, invalid = _record(lambda run: setattr(run, "rows_processed", 10**30))
    assert rec.rows_processed == 2**63 - 1
    assert invalid == 1


KEY_CASES: dict[str, Any] = {
    "__str__ raises": hostile("__str__", "__repr__"),
    "str subclass whose __hash__/__eq__/__len__ raise": EvilStr("k"),
}


@pytest.mark.parametrize("key", KEY_CASES.values(), ids=KEY_CASES.keys())
def test_unreadable_attribute_keys_drop_the_attribute_only(key: Any) -> None:
    def body(run: NodeRun) -> None:
        run.set_attribute(key, 1)
        run.set_attribute("kept", 2)

    rec, _, _ = _record(body)
    assert rec.attributes.get("kept") == 2
    assert all(type(k) is str for k in rec.attributes)


VALUE_CASES: dict[str, Any] = {
    "tuple subclass with hostile __getitem__/__iter__/__len__": EvilTuple((1, 2)),
    "list nested 1 000 deep": nested(1_000),
    "list nested 100 000 deep": nested(100_000),
    "huge int (more digits than str() allows)": 10**5000,
    "object whose __repr__/__str__/__eq__/__hash__/__bool__ raise": hostile(
        "__repr__", "__str__", "__eq__", "__hash__", "__bool__"
    ),
    "str subclass with hostile methods": EvilStr("v"),
    "list holding a hostile object": [1, hostile("__repr__", "__str__")],
}


@pytest.mark.parametrize("value", VALUE_CASES.values(), ids=VALUE_CASES.keys())
def test_unreadable_attribute_values_keep_what_can_be_read(value: Any) -> None:
    rec, _, _ = _record(lambda run: run.set_attribute("v", value))
    stored = rec.attributes.get("v")
    # Whatever was kept is something every sink can write: a primitive or a flat tuple.
    assert (
        stored is None
        or isinstance(stored, (str, int, float, bool))
        or (
            isinstance(stored, tuple)
            and all(isinstance(v, (str, int, float, bool)) for v in stored)
        )
    )


def test_nested_list_is_kept_as_a_bounded_text() -> None:
    rec, _, _ = _record(lambda run: run.set_attribute("v", nested(1_000)))
    value = rec.attributes["v"]
    assert isinstance(value, tuple)
    (text,) = value
    assert isinstance(text, str) and text.startswith("[[[") and len(text) < 100


def test_huge_int_attribute_is_kept_as_text() -> None:
    rec, _, invalid = _record(lambda run: run.set_attribute("v", 10**5000))
    assert rec.attributes["v"] == f"<int of {(10**5000).bit_length()} bits>"
    assert invalid == 1


def test_tuple_subclass_attribute_is_read_through_tuple_itself() -> None:
    rec, _, _ = _record(lambda run: run.set_attribute("v", EvilTuple((1, 2))))
    assert rec.attributes["v"] == (1, 2)


def test_lone_surrogates_in_names_and_values_are_escaped_and_kept() -> None:
    with capture_runs() as sink:
        registry = oo.get_observer().registry
        with oo.node_run(LONE, LONE) as run:
            run.set_attribute(LONE, LONE)
            run.suggest(LONE)
            run.set_attribute("list", [LONE, "ok"])
        assert registry.get_sample_value(INVALID, {"field": "node"}) == 1
        assert registry.get_sample_value(INVALID, {"field": "attribute"}) == 3
        assert registry.get_sample_value(INVALID, {"field": "suggestion"}) == 1
    (rec,) = sink.finished
    clean = "node-\\ud800-x"  # escaped, still readable in every backend
    assert (rec.pipeline, rec.node, rec.suggestions) == (clean, clean, (clean,))
    assert rec.attributes == {clean: clean, "list": (clean, "ok")}
    rec.to_dict()  # and every text in it now encodes as UTF-8
    assert all(isinstance(v, str) for v in rec.to_dict().values() if isinstance(v, str))
    "".join([rec.pipeline, rec.node, *rec.suggestions]).encode("utf-8")


def test_ten_megabyte_strings_cost_little_and_are_cut() -> None:
    started = time.perf_counter()
    with capture_runs() as sink:
        with pytest.raises(ValueError), oo.node_run("p", "n") as run:
            run.set_attribute("big", TEN_MB)
            run.set_attribute(TEN_MB, 1)
            run.suggest(TEN_MB)
            raise ValueError(TEN_MB)
    elapsed = time.perf_counter() - started
    (rec,) = sink.finished
    big = rec.attributes["big"]
    assert isinstance(big, str) and len(big) <= 4096 and big.endswith("more characters]")
    assert len(rec.suggestions[0]) <= 1024
    assert rec.error_message is not None and len(rec.error_message) <= 8192
    assert elapsed < 2.0, f"10 MB strings took {elapsed:.2f} s on the node's path"


def test_cut_says_how_much_of_a_ten_megabyte_string_is_missing() -> None:
    rec, _, _ = _record(lambda run: run.set_attribute("big", TEN_MB))
    value = rec.attributes["big"]
    assert isinstance(value, str)
    kept = len(value) - len(value[value.index("…") :])
    assert value.endswith(f"… [{10_000_000 - kept} more characters]")


def test_unreadable_suggestions_are_dropped_others_kept() -> None:
    def body(run: NodeRun) -> None:
        run.suggest(hostile("__str__", "__repr__"))
        run.suggest(EvilStr("evil"))
        run.suggest("kept")

    rec, _, invalid = _record(body)
    assert rec.suggestions == ("evil", "kept")
    assert invalid == 1


DURATION_CASES: dict[str, Any] = {
    "__float__ raises": hostile("__float__", "__repr__"),
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "negative": -1.0,
    "huge int": 10**400,
    "text": "soon",
}


@pytest.mark.parametrize("value", DURATION_CASES.values(), ids=DURATION_CASES.keys())
def test_unusable_durations_keep_the_measured_one(value: Any) -> None:
    rec, _, invalid = _record(lambda run: run.set_duration(value))
    assert rec.duration_ns is not None and 0 <= rec.duration_ns < 10**9
    assert invalid == 1


def test_unusable_attempt_is_ignored_and_counted() -> None:
    def body(run: NodeRun) -> None:
        run.attempt = hostile("__index__", "__repr__", "__eq__")
        run.attempt = 0

    rec, _, invalid = _record(body)
    assert rec.attempt == 1
    assert invalid == 2


def test_many_hostile_calls_warn_once_per_field(caplog: pytest.LogCaptureFixture) -> None:
    def body(run: NodeRun) -> None:
        for _ in range(20):
            run.rows_processed = hostile("__int__")

    caplog.set_level("WARNING", logger="odibi_observe")
    _, _, invalid = _record(body)
    assert invalid == 20
    assert len([r for r in caplog.records if "rows_processed" in r.getMessage()]) == 1


# -- every run ends ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [EvilList([1]), NegativeLen([1]), HugeLen([1])],
    ids=["__len__ raises", "__len__ negative", "__len__ huge"],
)
def test_a_returned_list_whose_len_cannot_be_read_still_ends_the_run(result: list[int]) -> None:
    with capture_runs() as sink:
        node = oo.observe_node(pipeline="p")(lambda: result)
        assert node() is result
        assert active_runs() == []
    (rec,) = sink.finished
    assert (rec.status, rec.rows_processed) == (RunStatus.SUCCESS, None)


class BadSuggestions(Exception):
    @property
    def suggestions(self) -> list[str]:
        raise Boom("no suggestions for you")


class Unprintable(Exception):
    __str__ = _boom
    __repr__ = _boom
    __bool__ = _boom


class SuggestionsNotText(Exception):
    suggestions = [hostile("__str__", "__repr__"), None, "", "readable"]


@pytest.mark.parametrize(
    "exc",
    [BadSuggestions("real failure"), Unprintable(), SuggestionsNotText("real failure")],
    ids=[
        "suggestions property raises",
        "__str__/__bool__ raise",
        "a suggestion whose __str__ raises",
    ],
)
def test_an_unreadable_exception_still_ends_the_run_as_failure(exc: Exception) -> None:
    with capture_runs() as sink:

        @oo.observe_node(pipeline="p")
        def node() -> None:
            raise exc

        with pytest.raises(type(exc)) as info:
            node()
        assert info.value is exc
        assert active_runs() == []
    (rec,) = sink.finished
    assert rec.status is RunStatus.FAILURE
    assert rec.error_type is not None and rec.error_type.endswith(type(exc).__name__)
    assert rec.error_message in ("real failure", "<unprintable Unprintable>")


def test_suggestions_readable_beside_unreadable_ones_are_kept() -> None:
    with capture_runs() as sink, pytest.raises(SuggestionsNotText), oo.node_run("p", "n"):
        raise SuggestionsNotText("x")
    assert sink.finished[0].suggestions == ("readable",)


def test_an_exception_whose_cause_chain_is_hostile_ends_the_run() -> None:
    class EvilCause(Exception):
        @property
        def __cause__(self) -> BaseException:  # type: ignore[override]
            raise Boom("cause")

    with capture_runs() as sink, pytest.raises(EvilCause), oo.node_run("p", "n"):
        raise EvilCause("top")
    assert sink.finished[0].status is RunStatus.FAILURE


def test_fail_with_an_unreadable_message_keeps_the_error_type() -> None:
    with capture_runs() as sink:
        with oo.node_run("p", "n") as run:
            run.fail(ValueError("readable"), message=hostile("__str__"))
        assert active_runs() == []
    (rec,) = sink.finished
    assert (rec.status, rec.error_type, rec.error_message) == (
        RunStatus.FAILURE,
        "ValueError",
        "readable",
    )


def test_hostile_names_and_attributes_given_to_node_run() -> None:
    with capture_runs() as sink:
        evil_attributes = hostile("items")
        with oo.node_run(
            hostile("__str__", "__bool__"),
            hostile("__str__", "__bool__"),
            project=hostile("__bool__", "__str__"),
            attempt="two",  # type: ignore
            attributes=evil_attributes,
        ):
            pass
    (rec,) = sink.finished
    assert (rec.pipeline, rec.node, rec.project, rec.attempt) == (
        "unknown",
        "unknown",
        "unknown",
        1,
    )
    assert rec.status is RunStatus.SUCCESS and rec.source.value == "decorator"


# -- the null run and pipeline_run ----------------------------------------------------------


def _public(cls: type) -> dict[str, str]:
    return {
        name: "property"
        if isinstance(inspect.getattr_static(cls, name), property)
        or type(inspect.getattr_static(cls, name)).__name__ == "member_descriptor"
        else "method"
        for name in dir(cls)
        if not name.startswith("_")
    }


def test_the_null_run_has_the_real_runs_whole_public_surface() -> None:
    assert _public(_NoRun) == _public(NodeRun)
    for name, kind in _public(NodeRun).items():
        if kind == "method":
            assert inspect.signature(getattr(_NoRun, name)) == inspect.signature(
                getattr(NodeRun, name)
            ), name


def _protocol_members(protocol: type) -> dict[str, str]:
    members = {
        name: "property" if isinstance(value, property) else "method"
        for name, value in vars(protocol).items()
        if not name.startswith("_") or name == "__bool__"
    }
    members.pop("_is_protocol", None)
    return members


def _parameters(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("cls", [NodeRun, _NoRun], ids=["real run", "null run"])
def test_the_real_and_the_null_run_each_implement_every_member_of_run_handle(cls: type) -> None:
    members = _protocol_members(oo.RunHandle)
    assert {"run_id", "record", "add_rows", "fail", "__bool__"} <= members.keys()
    for name, kind in members.items():
        assert hasattr(cls, name), f"{cls.__name__} lacks {name}"
        if kind == "method":
            assert _parameters(getattr(cls, name)) == _parameters(getattr(oo.RunHandle, name)), name
        else:
            static = inspect.getattr_static(cls, name)
            assert isinstance(static, property) or type(static).__name__ == ("member_descriptor"), (
                name
            )
            protocol_setter = vars(oo.RunHandle)[name].fset is not None
            assert (
                not protocol_setter
                or type(static).__name__ == "member_descriptor"
                or static.fset is not None
            ), f"{cls.__name__}.{name} is not settable"
    # And the protocol is the whole public surface of the real run, nothing left out.
    assert _public(NodeRun).keys() == members.keys() - {"__bool__"}


def test_current_run_is_a_run_handle_inside_and_outside_a_run() -> None:
    outside = oo.current_run()
    assert not outside and outside.run_id is None and outside.record is None
    with capture_runs() as sink, oo.node_run("p", "n"):
        inside = oo.current_run()
        assert inside and inside.run_id is not None
        inside.add_rows(2)
        outside.add_rows(2)  # the null run still accepts it, and records nothing
    assert [r.rows_processed for r in sink.finished] == [2]


def test_the_null_run_accepts_everything_a_real_run_does() -> None:
    run = current_run()
    assert not run and run.record is None and run.run_id is None
    run.rows_processed = 5
    run.attempt = 2
    run.record = None  # type: ignore[misc]
    run.add_rows(1)
    run.set_attribute("k", "v")
    run.suggest("s")
    run.set_duration(1.0)
    run.fail(ValueError("x"))
    assert run.rows_processed is None and run.attempt is None


def test_a_degraded_block_runs_with_the_null_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import odibi_observe._instrument as instrument

    monkeypatch.setattr(instrument, "_start", _boom)
    with capture_runs() as sink, oo.node_run("p", "n") as run:
        assert run.record is None  # the attribute exists: integrations may read it
        run.attempt = 3
    assert sink.events == []


def test_pipeline_run_works_with_async_with() -> None:
    async def pipeline() -> str:
        async with oo.pipeline_run("nightly", project="lake") as pipeline_run_id:
            with oo.node_run(node="a"):
                await asyncio.sleep(0)

            @oo.observe_node
            async def b() -> None:
                await asyncio.sleep(0)

            await b()
        return pipeline_run_id

    with capture_runs() as sink:
        pipeline_run_id = asyncio.run(pipeline())
    assert {(r.pipeline, r.project, r.pipeline_run_id) for r in sink.finished} == {
        ("nightly", "lake", pipeline_run_id)
    }
    assert len(sink.finished) == 2


def test_pipeline_run_leaves_no_scope_behind_after_an_exception() -> None:
    with capture_runs() as sink:
        with pytest.raises(KeyError), oo.pipeline_run("outer"):
            raise KeyError("x")
        with oo.node_run(node="after"):
            pass
    assert sink.finished[0].pipeline == "default"


def test_a_pipeline_span_that_cannot_start_leaves_the_block_running() -> None:
    name = hostile("__format__", "__str__", "__bool__")
    with capture_runs() as sink:
        with oo.pipeline_run(name) as pipeline_run_id:
            with oo.node_run(node="inside"):
                pass
    (rec,) = sink.finished
    assert (rec.pipeline, rec.pipeline_run_id, rec.status) == (
        "unknown",
        pipeline_run_id,
        RunStatus.SUCCESS,
    )
