"""Instrumentation: ``@observe_node``, ``node_run()``, ``pipeline_run()``, ``current_run()``.

This is the hot path: it runs around every node call, so it only builds two immutable records
and appends them to the bus's in-memory queues. Everything slow happens in the sinks.

What a node run does, in order:

1. choose its ids: a fresh ``run_id``, a span id, and the caller's trace id (so the node span
   nests under the caller's current span, e.g. a pipeline span);
2. emit ``STARTED`` (the catalog writes the ``RUNNING`` row from it), then make a
   non-recording span with the run's ids current, so spans the node creates become children
   of the node span that the OTel sink will write with exactly those ids;
3. run the node;
4. emit the terminal ``FINISHED`` record *before* the return value is returned or the
   exception propagates — on return (``SUCCESS``), on ``Exception`` and on ``BaseException``
   (``KeyboardInterrupt``, ``SystemExit``, ``CancelledError``: ``FAILURE``), and from the
   ``atexit``/SIGTERM hooks for runs still active when the process goes (``CRASHED``).

The node's own behaviour is untouched: the wrapper returns what the function returns and
re-raises what it raises, and nothing in here raises into the node — invalid inputs (NaN row
counts, unserialisable attributes, megabyte strings) are clamped, counted in
``odibi_observe_invalid_input_total{field}`` and logged.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from odibi_observe.conventions import (
    FIELDS,
    INSTRUMENTATION_SCOPE,
    PIPELINE_SPAN_NAME_FORMAT,
    RunStatus,
)
from odibi_observe.record import AttributeValue, EventKind, RunEvent, RunRecord
from odibi_observe.redact import safe_text
from odibi_observe.runtime import Observer, get_observer
from odibi_observe.selfmetrics import log

P = ParamSpec("P")
R = TypeVar("R")

MAX_ATTRIBUTES: Final = 128
MAX_SUGGESTIONS: Final = 50
MAX_SUGGESTION_LENGTH: Final = 1_024
MAX_KEY_LENGTH: Final = 128
_INT64_MAX: Final = 2**63 - 1
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_ROW_FRAME_TYPES: Final = frozenset({
    ("pandas", "DataFrame"), ("polars", "DataFrame"), ("pyarrow", "Table"),
    ("pyarrow", "RecordBatch"),
})


@dataclass(frozen=True)
class _PipelineScope:
    pipeline: str
    pipeline_run_id: str
    project: str | None


_current_run: ContextVar[NodeRun | None] = ContextVar("odibi_observe_run", default=None)
_current_pipeline: ContextVar[_PipelineScope | None] = ContextVar(
    "odibi_observe_pipeline", default=None)
_active: dict[str, NodeRun] = {}
_active_lock = threading.Lock()
_pid = os.getpid()


class NodeRun:
    """The run in progress; what ``current_run()`` returns inside a node.

    ``rows_processed`` may be set (or ``add_rows`` called) by the node; otherwise it is taken
    from the return value (see :func:`rows_from_result`).
    """

    __slots__ = (
        "_attributes",
        "_count_int_return",
        "_done",
        "_duration_ns",
        "_observer",
        "_otel_token",
        "_rows",
        "_run_token",
        "_span_context",
        "_start_mono",
        "_suggestions",
        "record",
    )

    def __init__(
        self,
        observer: Observer,
        pipeline: str,
        node: str,
        *,
        project: str | None = None,
        attempt: int = 1,
        pipeline_run_id: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        count_int_return: bool = False,
    ) -> None:
        s = observer.settings
        self._observer = observer
        self._count_int_return = count_int_return
        self._rows: int | None = None
        self._attributes: dict[str, AttributeValue] = {}
        self._suggestions: list[str] = []
        self._done = False
        self._duration_ns: int | None = None
        self._run_token: Token[NodeRun | None] | None = None
        self._otel_token: object | None = None
        parent = trace.get_current_span().get_span_context()
        if parent.is_valid:
            trace_id, parent_span_id = parent.trace_id, f"{parent.span_id:016x}"
        else:
            trace_id, parent_span_id = random.getrandbits(128) or 1, None
        if attempt < 1:
            observer.monitor.invalid("attempt", f"attempt={attempt!r} is below 1; recorded as 1")
            attempt = 1
        span_id = random.getrandbits(64) or 1
        # Made current while the node runs (see _begin); kept as ints, not re-parsed from hex.
        self._span_context = SpanContext(trace_id, span_id, is_remote=False,
                                         trace_flags=_SAMPLED)
        self._start_mono = time.perf_counter_ns()
        self.record = RunRecord(
            # A version-4 UUID from the process's PRNG (reseeded after fork) rather than
            # uuid4()'s os.urandom: a run id must be unique, not unpredictable, and this path
            # runs once per node call.
            run_id=str(uuid.UUID(int=random.getrandbits(128), version=4)),
            project=self._name(project or s.project, "project"),
            pipeline=self._name(pipeline, "pipeline"),
            node=self._name(node, "node"),
            environment=s.environment,
            status=RunStatus.RUNNING,
            started_ns=time.time_ns(),
            trace_id=f"{trace_id:032x}",
            span_id=f"{span_id:016x}",
            parent_span_id=parent_span_id,
            host=s.host,
            pid=os.getpid(),
            service_name=s.service_name,
            pipeline_run_id=pipeline_run_id,
            attempt=attempt,
        )
        for key, value in (attributes or {}).items():
            self.set_attribute(key, value)

    # -- the public surface ------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def trace_id(self) -> str:
        return self.record.trace_id

    @property
    def span_id(self) -> str:
        return self.record.span_id

    @property
    def pipeline(self) -> str:
        return self.record.pipeline

    @property
    def node(self) -> str:
        return self.record.node

    @property
    def attempt(self) -> int:
        return self.record.attempt

    @attempt.setter
    def attempt(self, value: Any) -> None:
        """Set the attempt number when it is known only during the run (a framework's own
        retries inside one node run). Not a positive whole number: ignored and counted."""
        if type(value) is int and value >= 1:
            if value != self.record.attempt:
                self.record = self.record.finished(attempt=value)
            return
        self._observer.monitor.invalid(
            "attempt", f"attempt={value!r:.80} is not a positive whole number; kept "
            f"{self.record.attempt}")

    @property
    def rows_processed(self) -> int | None:
        return self._rows

    @rows_processed.setter
    def rows_processed(self, value: Any) -> None:
        self._rows = self._coerce_rows(value)

    def add_rows(self, n: Any) -> None:
        """Add ``n`` to ``rows_processed`` (for nodes that count as they stream)."""
        rows = self._coerce_rows(n)
        if rows is not None:
            self._rows = min((self._rows or 0) + rows, _INT64_MAX)

    def set_attribute(self, key: str, value: Any) -> None:
        """Attach ``key=value`` to the run (span ``odibi.attr.<key>``, catalog ``metrics_json``)."""
        name = str(key)[:MAX_KEY_LENGTH]
        if name not in self._attributes and len(self._attributes) >= MAX_ATTRIBUTES:
            self._observer.monitor.invalid(
                "attribute", f"more than {MAX_ATTRIBUTES} attributes; {name!r} dropped")
            return
        self._attributes[name] = self._coerce_attribute(name, value)

    def suggest(self, text: str) -> None:
        """Record advice for whoever reads this run (shown by ``odibi-observe runs``)."""
        if len(self._suggestions) < MAX_SUGGESTIONS:
            self._suggestions.append(safe_text(str(text), MAX_SUGGESTION_LENGTH))

    def set_duration(self, seconds: Any) -> None:
        """Record ``seconds`` as the run's duration instead of the time measured around it.

        For integrations whose framework timed the node itself (Odibi's
        ``NodeResult.duration``), so that the framework's records and ours agree exactly. The
        run keeps its start; it ends ``seconds`` later. A negative, non-finite or non-numeric
        value is ignored (counted as invalid input) and the measured duration is kept.
        """
        try:
            value = float(seconds)
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if not math.isfinite(value) or value < 0 or value * 1e9 > _INT64_MAX:
            self._observer.monitor.invalid(
                "duration", f"duration={seconds!r:.80} is not a usable number of seconds; "
                "the measured duration is kept")
            return
        self._duration_ns = int(value * 1e9)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return (f"NodeRun(run_id={self.run_id!r}, pipeline={self.pipeline!r}, "
                f"node={self.node!r})")

    # -- lifecycle (used by the decorator and the context managers) --------------------------
    def _begin(self) -> None:
        with _active_lock:
            _active[self.record.run_id] = self
        self._observer.bus.emit(RunEvent(EventKind.STARTED, self.record))
        self._run_token = _current_run.set(self)
        self._otel_token = otel_context.attach(
            trace.set_span_in_context(NonRecordingSpan(self._span_context)))

    def _leave(self) -> None:
        """Undo ``_begin``'s context changes (same thread/context as ``_begin``)."""
        if self._otel_token is not None:
            # Detaching fails only when user code left the context unbalanced; nothing to undo.
            with contextlib.suppress(Exception):
                otel_context.detach(self._otel_token)  # type: ignore[arg-type]
        if self._run_token is not None:
            try:
                _current_run.reset(self._run_token)
            except ValueError:  # reset from another context; nothing to restore there
                _current_run.set(None)

    def _succeed(self, result: Any) -> None:
        try:
            if self._rows is None:
                self._rows = rows_from_result(result, self._count_int_return)
            self._finish(RunStatus.SUCCESS)
        except Exception:  # never let a recording error replace the node's result
            log.exception("odibi-observe: could not record the end of run %s", self.run_id)

    def fail(self, error: BaseException, *, message: str | None = None) -> None:
        """Record the run as ``FAILURE`` now, without raising.

        For frameworks that report a failure as a return value rather than an exception
        (Odibi's ``NodeResult(success=False)``): the error's type, its message (or
        ``message``) and its suggestions are recorded as if it had been raised, and leaving
        the run's block afterwards records nothing more. Never raises.
        """
        try:
            for text in suggestions_of(error):
                self.suggest(text)
            self._finish(RunStatus.FAILURE, error_type=error_type_of(error),
                         error_message=error_message_of(error) if message is None else message)
        except Exception:  # never let a recording error replace the node's own behaviour
            log.exception("odibi-observe: could not record the failure of run %s", self.run_id)

    def _fail(self, exc: BaseException) -> None:
        self.fail(exc)

    def _finish(self, status: RunStatus, *, error_type: str | None = None,
                error_message: str | None = None) -> bool:
        """Emit the terminal record once; False if the run was already finished."""
        with _active_lock:
            if self._done:
                return False
            self._done = True
            _active.pop(self.record.run_id, None)
        duration = (time.perf_counter_ns() - self._start_mono if self._duration_ns is None
                    else self._duration_ns)
        limit = self._observer.settings.max_error_message_length
        final = self.record.finished(
            status=status,
            ended_ns=self.record.started_ns + max(duration, 0),
            rows_processed=self._rows,
            error_type=error_type,
            error_message=None if error_message is None else safe_text(error_message, limit),
            suggestions=tuple(self._suggestions),
            attributes=dict(self._attributes),
        )
        self.record = final
        self._observer.bus.emit(RunEvent(EventKind.FINISHED, final))
        return True

    # -- input hygiene ---------------------------------------------------------------------
    def _name(self, value: Any, field: str) -> str:
        limit = self._observer.settings.max_name_length
        if type(value) is str and 0 < len(value) <= limit:
            return value  # the common case, checked first: this runs three times per node call
        text = value if isinstance(value, str) else str(value)
        if not text:
            self._observer.monitor.invalid(field, f"empty {field} name recorded as 'unknown'")
            return "unknown"
        if len(text) > limit:
            self._observer.monitor.invalid(field, f"{field} name longer than {limit} cut")
            return text[:limit]
        return text

    def _coerce_rows(self, value: Any) -> int | None:
        monitor = self._observer.monitor
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = int(value)
            except (TypeError, ValueError, OverflowError):
                monitor.invalid("rows_processed", f"rows_processed={value!r:.80} is not a "
                                "number; recorded as unknown")
                return None
        if isinstance(value, float):
            if not math.isfinite(value):
                monitor.invalid("rows_processed",
                                f"rows_processed={value!r} is not finite; recorded as unknown")
                return None
            value = int(value)
        if value < 0:
            monitor.invalid("rows_processed",
                            f"rows_processed={value} is negative; recorded as unknown")
            return None
        if value > _INT64_MAX:
            monitor.invalid("rows_processed", "rows_processed exceeds int64; clamped")
            return _INT64_MAX
        return int(value)

    def _coerce_attribute(self, key: str, value: Any) -> AttributeValue:
        limit = self._observer.settings.max_attribute_length
        if isinstance(value, str):
            return safe_text(value, limit)
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if -_INT64_MAX - 1 <= value <= _INT64_MAX:
                return value
            return str(value)
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            self._observer.monitor.invalid("attribute",
                                           f"attribute {key!r} is {value}; stored as text")
            return str(value)
        if isinstance(value, (list, tuple)):
            items = [self._coerce_attribute(key, v) for v in value[:MAX_ATTRIBUTES]]
            kinds = {type(v) for v in items}
            if len(kinds) <= 1 and not any(isinstance(v, tuple) for v in items):
                return tuple(items)  # type: ignore[return-value]
            return tuple(safe_text(str(v), limit) for v in items)
        self._observer.monitor.invalid(
            "attribute", f"attribute {key!r} of type {type(value).__name__} is not a "
            "primitive; stored as its repr")
        try:
            text = repr(value)
        except Exception:
            text = f"<unprintable {type(value).__name__}>"
        return safe_text(text, limit)


class _NoRun:
    """What ``current_run()`` returns outside a node: accepts every call and records nothing.

    Code that calls ``current_run().add_rows(n)`` keeps working when the node function is
    called without instrumentation (in a unit test, say). It is falsy: ``if current_run():``.
    """

    run_id = None
    trace_id = None
    span_id = None
    pipeline = None
    node = None
    rows_processed = None
    attempt = None

    def add_rows(self, n: Any) -> None:
        """Ignored outside a node run."""

    def set_attribute(self, key: str, value: Any) -> None:
        """Ignored outside a node run."""

    def suggest(self, text: str) -> None:
        """Ignored outside a node run."""

    def set_duration(self, seconds: Any) -> None:
        """Ignored outside a node run."""

    def fail(self, error: BaseException, *, message: str | None = None) -> None:
        """Ignored outside a node run."""

    def __setattr__(self, name: str, value: Any) -> None:
        """Ignored outside a node run (``current_run().rows_processed = n``)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NoRun()"


NO_RUN: Final = _NoRun()


def current_run() -> NodeRun | _NoRun:
    """The node run active in this thread/task, or a falsy no-op run outside any node."""
    run = _current_run.get()
    return NO_RUN if run is None else run


# -- the public entry points ------------------------------------------------------------------

class node_run:
    """``with node_run(pipeline, node) as run:`` — record the block as one node run.

    Also usable as ``async with``. Exceptions propagate unchanged after the terminal record is
    emitted.
    """

    def __init__(
        self,
        pipeline: str | None = None,
        node: str | None = None,
        *,
        project: str | None = None,
        attempt: int = 1,
        pipeline_run_id: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self._args = (pipeline, node, project, attempt, pipeline_run_id, attributes)
        self._run: NodeRun | None = None

    def __enter__(self) -> NodeRun:
        pipeline, node, project, attempt, pipeline_run_id, attributes = self._args
        try:
            self._run = _start(pipeline, node or "block", project=project, attempt=attempt,
                               pipeline_run_id=pipeline_run_id, attributes=attributes)
        except Exception:
            log.exception("odibi-observe: could not start recording %r; running it unobserved",
                          node)
            # The block still runs; its ``run`` accepts every call and records nothing.
            return cast(NodeRun, NO_RUN)
        return self._run

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        run = self._run
        if run is None:
            return
        try:
            if exc is None:
                run._succeed(None)  # no return value: rows only if the block set them
            else:
                run._fail(exc)
        finally:
            run._leave()

    async def __aenter__(self) -> NodeRun:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


def _try_start(pipeline: str | None, node: str, project: str | None,
               count_int_return: bool) -> NodeRun | None:
    """``_start`` for the decorator: on an internal error, log and run the node unobserved."""
    try:
        return _start(pipeline, node, project=project, count_int_return=count_int_return)
    except Exception:
        log.exception("odibi-observe: could not start recording node %r; running it unobserved",
                      node)
        return None


def _start(
    pipeline: str | None,
    node: str,
    *,
    project: str | None = None,
    attempt: int = 1,
    pipeline_run_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    count_int_return: bool = False,
) -> NodeRun:
    scope = _current_pipeline.get()
    if scope is not None:
        pipeline = pipeline or scope.pipeline
        pipeline_run_id = pipeline_run_id or scope.pipeline_run_id
        project = project or scope.project
    run = NodeRun(get_observer(), pipeline or "default", node, project=project, attempt=attempt,
                  pipeline_run_id=pipeline_run_id, attributes=attributes,
                  count_int_return=count_int_return)
    run._begin()
    return run


@overload
def observe_node(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def observe_node(
    fn: None = None, /, *, pipeline: str | None = None, node: str | None = None,
    project: str | None = None, count_int_return: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def observe_node(
    fn: Callable[P, R] | None = None,
    /,
    *,
    pipeline: str | None = None,
    node: str | None = None,
    project: str | None = None,
    count_int_return: bool = False,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Record every call of the decorated function as one node run.

    ``@observe_node(pipeline="sales")`` on a sync or ``async def`` function. ``node`` defaults
    to the function's name; ``pipeline`` to the enclosing :func:`pipeline_run`, else
    ``"default"``. ``rows_processed`` comes from ``current_run()`` if the node sets it, else
    from the return value (``len()`` of a pandas/polars DataFrame, a pyarrow Table or a list;
    an ``int`` only with ``count_int_return=True``).
    """
    if pipeline is not None and not isinstance(pipeline, str):
        raise TypeError(
            f"observe_node(pipeline=...) must be a string, not {type(pipeline).__name__}")
    if node is not None and not isinstance(node, str):
        raise TypeError(f"observe_node(node=...) must be a string, not {type(node).__name__}")

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            # A generator's call returns at once; the work happens while it is consumed, and a
            # consumer that stops early is not a failure. Recording the call would be wrong.
            raise TypeError(
                f"observe_node cannot record the generator function {func.__qualname__!r}: "
                "its work happens while it is consumed. Wrap the code that consumes it in "
                "'with odibi_observe.node_run(pipeline, node):' instead.")
        node_name: str = node or str(getattr(func, "__name__", "node"))
        if inspect.iscoroutinefunction(func):
            return _wrap_async(  # type: ignore[return-value]
                func, pipeline, node_name, project, count_int_return)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            run = _try_start(pipeline, node_name, project, count_int_return)
            if run is None:
                return func(*args, **kwargs)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                run._fail(exc)
                raise
            finally:
                run._leave()
            run._succeed(result)
            return result

        return wrapper

    return decorate(fn) if fn is not None else decorate


def _wrap_async(func: Callable[P, Awaitable[R]], pipeline: str | None, node: str,
                project: str | None, count_int_return: bool) -> Callable[P, Awaitable[R]]:
    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        run = _try_start(pipeline, node, project, count_int_return)
        if run is None:
            return await func(*args, **kwargs)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            run._fail(exc)
            raise
        finally:
            run._leave()
        run._succeed(result)
        return result

    return wrapper


@contextmanager
def pipeline_run(
    pipeline: str, *, project: str | None = None, pipeline_run_id: str | None = None
) -> Iterator[str]:
    """Group node runs under one pipeline run (and one pipeline span, when tracing is on).

    Nodes inside inherit ``pipeline``, ``project`` and ``pipeline_run_id`` (a fresh uuid4
    unless given, yielded to the caller). The pipeline span comes from the global
    TracerProvider, so node spans become its children.
    """
    scope = _PipelineScope(pipeline, pipeline_run_id or str(uuid.uuid4()), project)
    token = _current_pipeline.set(scope)
    tracer = trace.get_tracer(INSTRUMENTATION_SCOPE)
    try:
        with tracer.start_as_current_span(
            PIPELINE_SPAN_NAME_FORMAT.format(pipeline=pipeline),
            attributes={FIELDS.pipeline.attribute or "": pipeline,
                        FIELDS.pipeline_run_id.attribute or "": scope.pipeline_run_id},
        ):
            yield scope.pipeline_run_id
    finally:
        _current_pipeline.reset(token)


# -- results, errors, exits -------------------------------------------------------------------

def rows_from_result(value: Any, count_int_return: bool = False) -> int | None:
    """Rows implied by a node's return value, or None when it says nothing about rows."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if count_int_return and value >= 0 else None
    if isinstance(value, list):
        return len(value)
    kind = type(value)
    if (kind.__module__.partition(".")[0], kind.__name__) in _ROW_FRAME_TYPES:
        try:
            return len(value)
        except Exception:
            return None
    return None


def error_type_of(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Class`` otherwise (OTel ``error.type``)."""
    kind = type(exc)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def error_message_of(exc: BaseException) -> str:
    try:
        return str(exc) or repr(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def suggestions_of(exc: BaseException) -> list[str]:
    """``suggestions`` carried by ``exc`` or its causes (Odibi's ``NodeExecutionError``)."""
    found: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 5:
        seen.add(id(current))
        raw = getattr(current, "suggestions", None)
        if isinstance(raw, str):
            raw = [raw]
        if isinstance(raw, (list, tuple)):
            found.extend(str(s) for s in raw if s)
        current = current.__cause__ or current.__context__
    return list(dict.fromkeys(found))


def active_runs() -> list[NodeRun]:
    """The runs in progress in this process (a snapshot; for heartbeats and exit hooks)."""
    with _active_lock:
        return [r for r in _active.values() if r.record.pid == os.getpid()]


def crash_active_runs(error_type: str, message: str) -> int:
    """Close every run still active in this process as ``CRASHED``; return how many."""
    runs = active_runs()
    closed = 0
    for run in runs:
        if run._finish(RunStatus.CRASHED, error_type=error_type, error_message=message):
            closed += 1
    return closed


def _after_fork_in_child() -> None:
    # Runs active in the parent are the parent's to finish; the child must not close them. The
    # lock is replaced, not taken: another thread may have held it at the moment of the fork.
    global _active_lock
    _active_lock = threading.Lock()
    _active.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
