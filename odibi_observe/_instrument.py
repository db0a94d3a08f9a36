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
   (``SystemExit``, ``CancelledError``: ``FAILURE``; ``KeyboardInterrupt``: ``CANCELLED``), and
   from the ``atexit``/SIGTERM hooks for runs still active when the process goes (``CRASHED``).

The node's own behaviour is untouched: the wrapper returns what the function returns and
re-raises what it raises, and nothing in here raises into the node — invalid inputs (NaN row
counts, unserialisable attributes, megabyte strings, objects whose ``__str__``/``__int__``/
``__len__`` raise) are clamped or dropped, counted in
``odibi_observe_invalid_input_total{field}`` and logged once a minute per field. Every
conversion of a user value is inside ``try``: the common case (a plain ``int``, a ``str``) is
checked first and costs nothing extra, and whatever a hostile object raises ends in a clamp,
never in the node. A run that has begun always ends: the terminal record is built from what
could be read, and if even that fails, from the status and the times alone.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import math
import numbers
import operator
import os
import random
import reprlib
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    ParamSpec,
    Self,
    TypeGuard,
    TypeVar,
    cast,
    overload,
)

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from odibi_observe import _active as active
from odibi_observe._redact import MAX_MESSAGE_SCAN, safe_text, sanitize, valid_unicode
from odibi_observe._resources import ResourceMeter, final_fields
from odibi_observe._runtime import Observer, get_observer
from odibi_observe._selfmetrics import log
from odibi_observe.conventions import (
    CICD_PIPELINE_NAME,
    CICD_PIPELINE_RESULT,
    CICD_PIPELINE_RUN_ID,
    ERROR_TYPE_ATTRIBUTE,
    EXCEPTION_STACKTRACE,
    FAILED_STATUSES,
    FIELDS,
    INSTRUMENTATION_SCOPE,
    PHASE_KEYS,
    PIPELINE_COUNTS,
    PIPELINE_RESULTS,
    PIPELINE_SPAN_NAME_FORMAT,
    SKIP_ABORTED,
    SKIP_DEPENDENCY_FAILED,
    SKIP_FAIL_FAST,
    SKIP_REASONS,
    RunStatus,
)
from odibi_observe.record import AttributeValue, EventKind, RunEvent, RunHandle, RunRecord

#: The keys of a write and of the checkpoint (``writes_json``, ``checkpoint_json``).
_K: Final = PHASE_KEYS

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

MAX_ATTRIBUTES: Final = 128
MAX_SUGGESTIONS: Final = 50
MAX_SUGGESTION_LENGTH: Final = 1_024
MAX_KEY_LENGTH: Final = 128
#: Writes one run records at most, and the length of a target, key or value of a phase.
MAX_WRITES: Final = 100
MAX_PHASE_TEXT: Final = 1_024
_INT64_MAX: Final = 2**63 - 1
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_SURROGATES: Final = (
    "a {field} text contained lone surrogates (not encodable as UTF-8); "
    "they were escaped, e.g. \\udce9 for the byte 0xe9"
)
_ROW_FRAME_TYPES: Final = frozenset(
    {
        ("pandas", "DataFrame"),
        ("polars", "DataFrame"),
        ("pyarrow", "Table"),
        ("pyarrow", "RecordBatch"),
    }
)


#: Renders nested values to a bounded depth and length (a list nested 1 000 deep, a huge
#: mapping) without the recursion the builtin ``repr`` does.
_REPR: Final = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxstring = 200
_REPR.maxother = 200
_REPR.maxlong = 200


def _type_name(value: Any) -> str:
    try:
        return str.__str__(type(value).__name__)
    except Exception:
        return "object"


def _describe(value: Any, limit: int = 80) -> str:
    """A short description of ``value`` for a warning; never raises."""
    try:
        text = _REPR.repr(value)
        if type(text) is not str:
            text = str.__str__(text)
    except Exception:
        return f"<unprintable {_type_name(value)}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(exc: BaseException) -> str:
    """``Type: first words`` of an exception a user object raised; never raises."""
    return f"{_type_name(exc)}: {_describe_error(exc)}"


def _describe_error(exc: BaseException) -> str:
    try:
        text = str.__str__(str(exc))
    except Exception:
        return "<unprintable>"
    return text if len(text) <= 80 else text[:79] + "…"


def _text_of(value: Any) -> str:
    """``value`` as a plain ``str`` (never a subclass, whose methods may be hostile).

    Raises whatever ``str()`` of the object raises; callers catch it.
    """
    if type(value) is str:
        return value
    text = str(value)
    return text if type(text) is str else str.__str__(text)


def _given(value: T | None) -> TypeGuard[T]:
    """Whether an optional argument was given: not None and not ``""``, without calling the
    object's ``__bool__`` (which may raise)."""
    return value is not None and not (type(value) is str and not value)


def _count_invalid(observer: Observer, field: str, message: str) -> None:
    """Count an unusable value and warn (once a minute per field); never raises."""
    try:
        observer.monitor.invalid(field, message)
    except Exception:  # pragma: no cover - counting must not be what breaks the node
        log.debug("odibi-observe: could not count invalid input", exc_info=True)


@dataclass(frozen=True)
class _PipelineScope:
    pipeline: str
    pipeline_run_id: str
    project: str | None
    plan: PipelinePlan | None = None


_current_run: ContextVar[NodeRun | None] = ContextVar("odibi_observe_run", default=None)
_current_pipeline: ContextVar[_PipelineScope | None] = ContextVar(
    "odibi_observe_pipeline", default=None
)


class _ReadOnly(property, Generic[T]):
    """A read-only property built from a getter, typed for mypy as returning ``T``.

    NodeRun's ids and names are each just a field of its record: one getter apiece
    (``operator.attrgetter``, which runs in C, so reading ``run.run_id`` costs no more than a
    hand-written property) instead of the same five-line property written out per field. It
    stays a ``property`` so introspection (and the RunHandle surface test) sees one.
    """

    def __init__(self, fget: Callable[[Any], T], doc: str) -> None:
        super().__init__(fget)
        # Python 3.11's property() keeps a subclass's class docstring over ``doc``.
        self.__doc__ = doc

    if TYPE_CHECKING:

        @overload
        def __get__(self, instance: None, owner: type | None = None, /) -> Self: ...
        @overload
        def __get__(self, instance: object, owner: type | None = None, /) -> T: ...
        def __get__(self, instance: object, owner: type | None = None, /) -> Any: ...


def _nothing(_run: object) -> None:
    """The null run's ids and names: there are none outside a run."""


class NodeRun:
    """The run in progress; what ``current_run()`` returns inside a node.

    ``rows_processed`` may be set (or ``add_rows`` called) by the node; otherwise it is taken
    from the return value (see :func:`rows_from_result`). No method raises: a value that
    cannot be read is dropped or clamped, counted and warned about (see the module docstring).
    """

    __slots__ = (
        "_attributes",
        "_count_int_return",
        "_duration_ns",
        "_ended",
        "_meter",
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
        # Taken once, by whichever ending comes first (the node's thread, or the exit hooks
        # on another): a lock's non-blocking acquire is an atomic test-and-set, and a copy
        # inherited through fork keeps its state, so a child never ends a run twice either.
        self._ended = threading.Lock()
        self._duration_ns: int | None = None
        self._run_token: Token[NodeRun | None] | None = None
        self._otel_token: object | None = None
        parent = trace.get_current_span().get_span_context()
        if parent.is_valid:
            trace_id, parent_span_id = parent.trace_id, f"{parent.span_id:016x}"
        else:
            trace_id, parent_span_id = random.getrandbits(128) or 1, None
        if type(attempt) is not int or attempt < 1:
            attempt = self._coerce_attempt(attempt, 1)
        span_id = random.getrandbits(64) or 1
        # Made current while the node runs (see _begin); kept as ints, not re-parsed from hex.
        self._span_context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)
        self._start_mono = time.perf_counter_ns()
        self._meter = ResourceMeter()
        self.record = RunRecord(
            # A version-4 UUID from the process's PRNG (reseeded after fork) rather than
            # uuid4()'s os.urandom: a run id must be unique, not unpredictable, and this path
            # runs once per node call.
            run_id=str(uuid.UUID(int=random.getrandbits(128), version=4)),
            project=self._name(project if _given(project) else s.project, "project"),
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
            pipeline_run_id=(
                pipeline_run_id
                if pipeline_run_id is None or type(pipeline_run_id) is str
                else self._name(pipeline_run_id, "pipeline_run_id")
            ),
            attempt=attempt,
        )
        if attributes is not None:
            self._set_attributes(attributes)

    # -- the public surface ------------------------------------------------------------------
    run_id = _ReadOnly[str](operator.attrgetter("record.run_id"), "The run's id.")
    trace_id = _ReadOnly[str](operator.attrgetter("record.trace_id"), "The run's trace id.")
    span_id = _ReadOnly[str](operator.attrgetter("record.span_id"), "The run's span id.")
    pipeline = _ReadOnly[str](operator.attrgetter("record.pipeline"), "The pipeline's name.")
    node = _ReadOnly[str](operator.attrgetter("record.node"), "The node's name.")

    @property
    def attempt(self) -> int:
        return self.record.attempt

    @attempt.setter
    def attempt(self, value: Any) -> None:
        """Set the attempt number when it is known only during the run (a framework's own
        retries inside one node run). Not a positive whole number: ignored and counted."""
        value = self._coerce_attempt(value, self.record.attempt)
        if value != self.record.attempt:
            self.record = self.record.replace(attempt=value)

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
        try:
            name = self._key(key)
        except Exception as exc:
            self._invalid(
                "attribute",
                f"an attribute key could not be read as text "
                f"({_reason(exc)}); the attribute was dropped",
            )
            return
        try:
            if name not in self._attributes and len(self._attributes) >= MAX_ATTRIBUTES:
                self._invalid(
                    "attribute", f"more than {MAX_ATTRIBUTES} attributes; {name!r} dropped"
                )
                return
            self._attributes[name] = self._coerce_attribute(name, value)
        except Exception as exc:
            self._invalid(
                "attribute", f"attribute {name!r} could not be read ({_reason(exc)}); dropped"
            )

    def suggest(self, text: str) -> None:
        """Record advice for whoever reads this run (shown by ``odibi-observe runs``)."""
        if len(self._suggestions) >= MAX_SUGGESTIONS:
            self._invalid(
                "suggestion", f"more than {MAX_SUGGESTIONS} suggestions; further ones dropped"
            )
            return
        try:
            self._suggestions.append(
                self._safe(_text_of(text), MAX_SUGGESTION_LENGTH, "suggestion")
            )
        except Exception as exc:
            self._invalid(
                "suggestion", f"a suggestion could not be read as text ({_reason(exc)}); dropped"
            )

    def set_duration(self, seconds: Any) -> None:
        """Record ``seconds`` as the run's duration instead of the time measured around it.

        For integrations whose framework timed the node itself (Odibi's
        ``NodeResult.duration``), so that the framework's records and ours agree exactly. The
        run keeps its start; it ends ``seconds`` later. A negative, non-finite or non-numeric
        value is ignored (counted as invalid input) and the measured duration is kept.
        """
        try:
            value = seconds if type(seconds) is float else float(seconds)
        except Exception:
            value = math.nan
        if not math.isfinite(value) or value < 0 or value * 1e9 > _INT64_MAX:
            self._invalid(
                "duration",
                f"duration={_describe(seconds)} is not a usable number "
                "of seconds; the measured duration is kept",
            )
            return
        self._duration_ns = int(value * 1e9)

    def fail(self, error: BaseException, *, message: str | None = None) -> None:
        """Record the run as ``FAILURE`` now, without raising.

        For frameworks that report a failure as a return value rather than an exception
        (Odibi's ``NodeResult(success=False)``): the error's type, its message (or
        ``message``) and its suggestions are recorded as if it had been raised, and leaving
        the run's block afterwards records nothing more. Never raises, and always ends the
        run: what cannot be read from ``error`` is left out (and counted).
        """
        self._end_with_error(error, message, RunStatus.FAILURE)

    def record_write(
        self, target: Any, *, rows: Any = None, version: Any = None, awaits_checkpoint: bool = False
    ) -> None:
        """Record that the run wrote ``rows`` to ``target`` (a path, a table), producing
        ``version`` (a Delta table version) if there is one.

        In sidecar mode the write is in the spool before this returns, so a run killed right
        after its write still has the write on record. ``awaits_checkpoint=True`` says the
        write is committed only by the run's checkpoint (an append under a high-water mark):
        a run that ends without :meth:`record_checkpoint` is then an ``uncommitted_write``.
        Never raises; what cannot be read is bounded or left out (and counted).
        """
        try:
            if len(self.record.writes) >= MAX_WRITES:
                self._invalid("write", f"more than {MAX_WRITES} writes in one run; dropped")
                return
            write: dict[str, Any] = {
                _K.target: self._phase_text(target, "write"),
                _K.rows: self._coerce_rows(rows),
                _K.version: self._phase_value(version, "write"),
                _K.at: time.time_ns(),
            }
            if awaits_checkpoint is True:
                write[_K.awaits_checkpoint] = True
            self._phase("write", writes=(*self.record.writes, write))
        except Exception as exc:  # pragma: no cover - a bug here must not reach the node
            self._invalid("write", f"a write could not be recorded ({_reason(exc)})")

    def record_checkpoint(self, key: Any, value: Any, *, previous: Any = None) -> None:
        """Record that the run committed its checkpoint ``key`` = ``value`` (a high-water
        mark), replacing ``previous``. Durable at once like :meth:`record_write`; a second
        call replaces the first (a run commits one checkpoint). Never raises."""
        try:
            checkpoint = {
                _K.key: self._phase_text(key, "checkpoint"),
                _K.value: self._phase_value(value, "checkpoint"),
                _K.previous: self._phase_value(previous, "checkpoint"),
                _K.at: time.time_ns(),
            }
            self._phase("checkpoint", checkpoint=checkpoint)
        except Exception as exc:  # pragma: no cover - a bug here must not reach the node
            self._invalid("checkpoint", f"a checkpoint could not be recorded ({_reason(exc)})")

    def _phase(self, field: str, **changes: Any) -> None:
        """Keep ``changes`` on the running record and emit it as a ``PHASE`` event (a sign of
        life: its heartbeat time is now). After the run ended there is nothing to add to."""
        if self._ended.locked():
            self._invalid(field, f"run {self.run_id} has ended; a {field} after it is ignored")
            return
        self.record = record = self.record.replace(**changes)
        self._observer.bus.emit(
            RunEvent(EventKind.PHASE, record.replace(heartbeat_ns=time.time_ns()))
        )

    def _phase_text(self, value: Any, field: str) -> str:
        """A target or key as bounded, redacted, valid text; ``unknown`` if unreadable."""
        if type(value) is str and value.isascii() and 0 < len(value) <= MAX_PHASE_TEXT:
            return value
        try:
            text = _text_of(os.fsdecode(value) if isinstance(value, os.PathLike) else value)
        except Exception as exc:
            self._invalid(field, f"a {field} name could not be read ({_reason(exc)}); 'unknown'")
            return "unknown"
        return self._phase_bounded(text, field) if text else "unknown"

    def _phase_bounded(self, text: str, field: str) -> str:
        """``text`` redacted, valid and cut to :data:`MAX_PHASE_TEXT` (a cut is counted)."""
        if len(text) > MAX_PHASE_TEXT:
            self._invalid(field, f"a {field} text longer than {MAX_PHASE_TEXT} characters cut")
        return self._safe(text, MAX_PHASE_TEXT, field)

    def _phase_value(self, value: Any, field: str) -> Any:
        """``value`` as a JSON value: ``None``, a bool, an int64, a finite float or bounded
        text (a time as ISO-8601, anything else as its ``str``). Never raises."""
        kind = type(value)
        if value is None or kind is bool:
            return value
        if kind is int and -_INT64_MAX - 1 <= value <= _INT64_MAX:
            return value
        if kind is float and math.isfinite(value):
            return value
        if kind is str:
            return self._phase_bounded(value, field)
        try:
            if isinstance(value, (datetime.datetime, datetime.date)):
                text = _text_of(value.isoformat())  # pandas' Timestamp too
            elif isinstance(value, str):  # a subclass: its own value, not its methods
                text = str.__str__(value)
            elif isinstance(value, (int, numbers.Integral)):  # numpy's integers too
                number = int.__int__(value) if isinstance(value, int) else operator.index(value)
                if -_INT64_MAX - 1 <= number <= _INT64_MAX:
                    return number
                self._invalid(field, f"a {field} value is an integer beyond int64; kept as text")
                text = str(number) if number.bit_length() < 10_000 else "<huge int>"
            elif isinstance(value, (float, numbers.Real)):
                real = float.__float__(value) if isinstance(value, float) else float(value)
                if math.isfinite(real):
                    return real
                self._invalid(field, f"a {field} value is {real}; kept as text")
                text = str(real)
            else:
                text = _text_of(value)
        except Exception as exc:
            self._invalid(field, f"a {field} value could not be read ({_reason(exc)}); left out")
            return None
        return self._phase_bounded(text, field)

    def _end_with_error(self, error: BaseException, message: str | None, status: RunStatus) -> None:
        """End the run as ``status`` with ``error``'s type, message and suggestions."""
        problems: list[str] = []
        for text in _suggestions_of(error, problems):
            self.suggest(text)
        if message is None:
            text = error_message_of(error)
        else:
            try:
                text = _text_of(message)
            except Exception as exc:
                problems.append(f"the message could not be read as text ({_reason(exc)})")
                text = error_message_of(error)
        for problem in problems:
            self._invalid("error", f"run {self.run_id}: {problem}; left out")
        self._finish(
            status,
            error_type=error_type_of(error),
            error_message=text,
            error_stack=self._stack(error),
        )

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"NodeRun(run_id={self.run_id!r}, pipeline={self.pipeline!r}, node={self.node!r})"

    # -- lifecycle (used by the decorator and the context managers) --------------------------
    def _begin(self) -> None:
        active.add(_LiveNodeRun(self))
        self._observer.bus.emit(RunEvent(EventKind.STARTED, self.record))
        self._run_token = _current_run.set(self)
        self._otel_token = otel_context.attach(
            trace.set_span_in_context(NonRecordingSpan(self._span_context))
        )

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
        """Record ``SUCCESS``; rows from ``result`` unless the node set them. Never raises."""
        if self._rows is None:
            try:
                rows = _rows_from_result(result, self._count_int_return)
            except Exception as exc:
                self._invalid(
                    "rows_processed",
                    f"the row count of the returned "
                    f"{_type_name(result)} could not be read ({_reason(exc)}); "
                    "recorded as unknown",
                )
            else:
                if rows is not None:
                    self._rows = self._coerce_rows(rows)
        self._finish(RunStatus.SUCCESS)

    def _fail(self, exc: BaseException) -> None:
        """End the run for an exception leaving the node: ``KeyboardInterrupt`` (Ctrl-C,
        SIGINT's default handler) is an operator's abort, so ``CANCELLED``; anything else
        is a ``FAILURE``."""
        self._end_with_error(exc, None, status_of_exception(exc))

    def _stack(self, error: BaseException) -> str | None:
        """``error``'s traceback, redacted and bounded by ``max_error_stack_length``; None
        when it cannot be formatted. Never raises."""
        try:
            return stack_of(error, self._observer.settings.max_error_stack_length)
        except Exception:
            return None

    def _finish(
        self,
        status: RunStatus,
        *,
        error_type: str | None = None,
        error_message: str | None = None,
        error_stack: str | None = None,
    ) -> bool:
        """Emit the terminal record once; False if the run was already finished.

        Never raises. If the full record cannot be built (a bug here, not the user's value:
        those were converted when they were set), the run still ends, with its status and
        times, and the error is logged.
        """
        if not self._ended.acquire(blocking=False):
            return False
        active.discard(self.record.run_id)
        duration = (
            time.perf_counter_ns() - self._start_mono
            if self._duration_ns is None
            else self._duration_ns
        )
        ended_ns = self.record.started_ns + max(duration, 0)
        used = final_fields(self._meter, duration)
        try:
            limit = self._observer.settings.max_error_message_length
            final = self.record.finished(
                status=status,
                ended_ns=ended_ns,
                rows_processed=self._rows,
                error_type=error_type,
                error_message=(
                    None if error_message is None else self._safe(error_message, limit, "error")
                ),
                error_stack=error_stack,
                suggestions=tuple(self._suggestions),
                attributes=dict(self._attributes),
                **used,
            )
        except Exception:
            log.exception(
                "odibi-observe: could not build the record of run %s; recorded "
                "with its status and times only",
                self.record.run_id,
            )
            final = self.record.finished(status=status, ended_ns=ended_ns, **used)
        self.record = final
        self._observer.bus.emit(RunEvent(EventKind.FINISHED, final))
        return True

    # -- input hygiene ---------------------------------------------------------------------
    def _invalid(self, field: str, message: str) -> None:
        """Count an unusable value and warn (once a minute per field); never raises."""
        _count_invalid(self._observer, field, message)

    def _safe(self, text: str, limit: int, field: str) -> str:
        """Redacted, bounded, valid Unicode (lone surrogates replaced, and counted)."""
        clean, replaced = sanitize(text, limit)
        if replaced:
            self._invalid(field, _SURROGATES.format(field=field))
        return clean

    def _name(self, value: Any, field: str) -> str:
        limit = self._observer.settings.max_name_length
        if type(value) is str and 0 < len(value) <= limit and value.isascii():
            return value  # the common case, checked first: this runs three times per node call
        try:
            text = _text_of(value)
        except Exception as exc:
            self._invalid(
                field,
                f"the {field} name could not be read as text "
                f"({_reason(exc)}); recorded as 'unknown'",
            )
            return "unknown"
        if not text:
            self._invalid(field, f"empty {field} name recorded as 'unknown'")
            return "unknown"
        if len(text) > limit:
            self._invalid(field, f"{field} name longer than {limit} cut")
            text = text[:limit]
        return self._valid(text, field)

    def _valid(self, text: str, field: str) -> str:
        """``text`` with lone surrogates escaped (and counted)."""
        clean, escaped = valid_unicode(text)
        if escaped:
            self._invalid(field, _SURROGATES.format(field=field))
        return clean

    def _key(self, key: Any) -> str:
        """An attribute key as a bounded, plain, valid ``str``; raises if it is unreadable."""
        return self._valid(_text_of(key)[:MAX_KEY_LENGTH], "attribute")

    def _set_attributes(self, attributes: Mapping[str, Any]) -> None:
        try:
            items = list(attributes.items())
        except Exception as exc:
            self._invalid(
                "attribute",
                f"the attributes mapping could not be read "
                f"({_reason(exc)}); no attributes recorded from it",
            )
            return
        for item in items:
            try:
                key, value = item
            except Exception:  # an items() that yields something other than pairs
                self._invalid("attribute", "an attribute item is not a (key, value) pair; dropped")
                continue
            self.set_attribute(key, value)

    def _coerce_attempt(self, value: Any, keep: int) -> int:
        """``value`` as an attempt number (a whole number >= 1), else ``keep`` (counted)."""
        if type(value) is int and value >= 1:
            return value
        try:
            if isinstance(value, float) and value.is_integer():
                number = int(value)
            elif isinstance(value, bool):
                raise TypeError("a bool is not an attempt number")
            else:
                number = operator.index(value)
            if number >= 1:
                return number
        except Exception:  # noqa: S110 - not a number: counted just below
            pass
        self._invalid(
            "attempt",
            f"attempt={_describe(value)} is not a positive whole number; recorded as {keep}",
        )
        return keep

    def _coerce_rows(self, value: Any) -> int | None:
        if type(value) is int and 0 <= value <= _INT64_MAX:
            return value  # the common case, checked first
        if value is None:
            return None
        try:
            return self._coerce_rows_slow(value)
        except Exception as exc:
            self._invalid(
                "rows_processed",
                f"rows_processed={_describe(value)} could not be "
                f"read ({_reason(exc)}); recorded as unknown",
            )
            return None

    def _coerce_rows_slow(self, value: Any) -> int | None:
        """Anything but a plain in-range int; may raise (``_coerce_rows`` catches)."""
        if type(value) is float:
            if not math.isfinite(value):
                self._invalid(
                    "rows_processed", f"rows_processed={value!r} is not finite; recorded as unknown"
                )
                return None
            number = int(value)
        elif type(value) is int:
            number = value
        elif isinstance(value, bool):
            self._invalid(
                "rows_processed", "rows_processed is a bool, not a number; recorded as unknown"
            )
            return None
        elif isinstance(value, float):  # a float subclass: its own value, not its methods
            return self._coerce_rows_slow(float.__float__(value))
        elif isinstance(value, int):  # an int subclass (numpy's are not): likewise
            return self._coerce_rows_slow(int.__int__(value))
        else:
            try:
                number = int(value)
            except (TypeError, ValueError) as exc:
                self._invalid(
                    "rows_processed",
                    f"rows_processed={_describe(value)} is not a "
                    f"number ({_reason(exc)}); recorded as unknown",
                )
                return None
            if type(number) is not int:
                number = int.__int__(number)
        if number < 0:
            self._invalid(
                "rows_processed",
                f"rows_processed={_describe(number)} is negative; recorded as unknown",
            )
            return None
        if number > _INT64_MAX:
            self._invalid("rows_processed", "rows_processed exceeds int64; clamped")
            return _INT64_MAX
        return number

    def _coerce_attribute(self, key: str, value: Any) -> AttributeValue:
        """``value`` as an OTel attribute value; may raise (``set_attribute`` catches)."""
        kind = type(value)
        if kind is str:
            return self._safe(value, self._observer.settings.max_attribute_length, "attribute")
        if kind is bool:
            return value  # type: ignore[no-any-return]
        if kind is int or kind is float:
            return self._scalar(key, value)
        if isinstance(value, (list, tuple)):
            return self._coerce_sequence(key, value)
        if isinstance(value, (str, int, float)):  # a subclass: its plain value
            plain = (
                str.__str__(value)
                if isinstance(value, str)
                else int.__int__(value)
                if isinstance(value, int)
                else float.__float__(value)
            )
            return self._coerce_attribute(key, plain)
        self._invalid(
            "attribute",
            f"attribute {key!r} of type {_type_name(value)} is not a primitive; stored as its repr",
        )
        try:
            text = _text_of(repr(value))
        except Exception:
            text = f"<unprintable {_type_name(value)}>"
        return self._safe(text, self._observer.settings.max_attribute_length, "attribute")

    def _scalar(self, key: str, value: int | float) -> AttributeValue:
        """A plain int or float as an attribute value: in range, finite, else as text."""
        if type(value) is int:
            if -_INT64_MAX - 1 <= value <= _INT64_MAX:
                return value
            self._invalid(
                "attribute", f"attribute {key!r} is an integer beyond int64; stored as text"
            )
            try:
                return str(value)
            except ValueError:  # more digits than int->str conversion allows
                return f"<int of {value.bit_length()} bits>"
        if math.isfinite(value):
            return value
        self._invalid("attribute", f"attribute {key!r} is {value}; stored as text")
        return str(value)

    def _coerce_sequence(self, key: str, value: list[Any] | tuple[Any, ...]) -> AttributeValue:
        """A list or tuple as a homogeneous tuple of primitives, one level deep.

        The items are read through ``list``/``tuple``'s own slicing, not the object's
        (a subclass may override it); an item that is not a primitive (a nested list, an
        object) becomes a bounded repr, and then every item is text.
        """
        items = (
            list.__getitem__(value, slice(0, MAX_ATTRIBUTES))
            if isinstance(value, list)
            else tuple.__getitem__(value, slice(0, MAX_ATTRIBUTES))
        )
        limit = self._observer.settings.max_attribute_length
        out: list[Any] = []
        kinds: set[type] = set()
        for item in items:
            kind = type(item)
            if kind is str:
                out.append(self._safe(item, limit, "attribute"))
            elif kind is bool:
                out.append(item)
            elif kind is int or kind is float:
                scalar = self._scalar(key, item)
                kind = type(scalar)
                out.append(scalar)
            else:
                out.append(self._safe(_describe(item, limit), limit, "attribute"))
                kind = str
                kinds.add(tuple)  # marks "not homogeneous": every item becomes text
            kinds.add(kind)
        if len(kinds) <= 1:
            return tuple(out)
        return tuple(v if type(v) is str else str(v) for v in out)


class _LiveNodeRun:
    """A :class:`NodeRun` as the heartbeat and the exit hooks see it (an
    :class:`~odibi_observe._active.LiveRun`), without widening the run's public surface."""

    __slots__ = ("_run",)

    def __init__(self, run: NodeRun) -> None:
        self._run = run

    @property
    def run_id(self) -> str:
        return self._run.record.run_id

    @property
    def pid(self) -> int:
        return self._run.record.pid

    def heartbeat(self, now_ns: int) -> None:
        run = self._run
        run._observer.bus.emit(
            RunEvent(
                EventKind.HEARTBEAT,
                run.record.replace(heartbeat_ns=now_ns, peak_rss_bytes=run._meter.sample()),
            )
        )

    def crash(self, error_type: str, message: str) -> bool:
        return self._run._finish(RunStatus.CRASHED, error_type=error_type, error_message=message)


class _NoRun:
    """What ``current_run()`` returns outside a node, and what a block runs with when
    odibi-observe could not start recording it: accepts every call and records nothing.

    It has the whole public surface of :class:`NodeRun` (a test compares them), so code
    written against a real run never fails on this one. Code that calls
    ``current_run().add_rows(n)`` keeps working when the node function is called without
    instrumentation (in a unit test, say). It is falsy: ``if current_run():``.
    """

    __slots__ = ()

    run_id = trace_id = span_id = pipeline = node = _ReadOnly[None](_nothing, "None: no run.")

    @property
    def attempt(self) -> None:
        return None

    @attempt.setter
    def attempt(self, value: Any) -> None:
        """Ignored outside a node run."""

    @property
    def rows_processed(self) -> None:
        return None

    @rows_processed.setter
    def rows_processed(self, value: Any) -> None:
        """Ignored outside a node run (``current_run().rows_processed = n``)."""

    @property
    def record(self) -> None:
        """No record: nothing is being recorded."""
        return None

    @record.setter
    def record(self, value: Any) -> None:
        """Ignored outside a node run."""

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

    def record_write(
        self, target: Any, *, rows: Any = None, version: Any = None, awaits_checkpoint: bool = False
    ) -> None:
        """Ignored outside a node run."""

    def record_checkpoint(self, key: Any, value: Any, *, previous: Any = None) -> None:
        """Ignored outside a node run."""

    def __setattr__(self, name: str, value: Any) -> None:
        """Ignored outside a node run (any other attribute)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NoRun()"


NO_RUN: Final = _NoRun()


def current_run() -> RunHandle:
    """The node run active in this thread/task, or a falsy no-op run outside any node
    (both are :class:`~odibi_observe.record.RunHandle`)."""
    run = _current_run.get()
    return NO_RUN if run is None else run


# -- the public entry points ------------------------------------------------------------------


class _AlsoAsync:
    """Lets a synchronous context manager be entered with ``async with`` as well, doing
    exactly what ``with`` does (one implementation, so the two forms cannot drift apart)."""

    async def __aenter__(self: AbstractContextManager[T]) -> T:
        return self.__enter__()

    async def __aexit__(self: AbstractContextManager[object], *exc_info: Any) -> None:
        self.__exit__(*exc_info)


class node_run(_AlsoAsync):
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
            self._run = _start(
                pipeline,
                node if _given(node) else "block",
                project=project,
                attempt=attempt,
                pipeline_run_id=pipeline_run_id,
                attributes=attributes,
            )
        except Exception:
            log.exception(
                "odibi-observe: could not start recording %r; running it unobserved", node
            )
            # The block still runs; its ``run`` accepts every call and records nothing.
            return cast(NodeRun, NO_RUN)
        return self._run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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


def _try_start(
    pipeline: str | None, node: str, project: str | None, count_int_return: bool
) -> NodeRun | None:
    """``_start`` for the decorator: on an internal error, log and run the node unobserved."""
    try:
        return _start(pipeline, node, project=project, count_int_return=count_int_return)
    except Exception:
        log.exception(
            "odibi-observe: could not start recording node %r; running it unobserved", node
        )
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
        pipeline = pipeline if _given(pipeline) else scope.pipeline
        pipeline_run_id = pipeline_run_id if _given(pipeline_run_id) else scope.pipeline_run_id
        project = project if _given(project) else scope.project
    run = NodeRun(
        get_observer(),
        pipeline if _given(pipeline) else "default",
        node,
        project=project,
        attempt=attempt,
        pipeline_run_id=pipeline_run_id,
        attributes=attributes,
        count_int_return=count_int_return,
    )
    run._begin()
    if scope is not None and scope.plan is not None:
        scope.plan.started(run)
    return run


@overload
def observe_node(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def observe_node(
    fn: None = None,
    /,
    *,
    pipeline: str | None = None,
    node: str | None = None,
    project: str | None = None,
    count_int_return: bool = False,
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
            f"observe_node(pipeline=...) must be a string, not {type(pipeline).__name__}"
        )
    if node is not None and not isinstance(node, str):
        raise TypeError(f"observe_node(node=...) must be a string, not {type(node).__name__}")

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            # A generator's call returns at once; the work happens while it is consumed, and a
            # consumer that stops early is not a failure. Recording the call would be wrong.
            raise TypeError(
                f"observe_node cannot record the generator function {func.__qualname__!r}: "
                "its work happens while it is consumed. Wrap the code that consumes it in "
                "'with odibi_observe.node_run(pipeline, node):' instead."
            )
        node_name: str = node or str(getattr(func, "__name__", "node"))
        if inspect.iscoroutinefunction(func):
            return _wrap_async(  # type: ignore[return-value]
                func, pipeline, node_name, project, count_int_return
            )

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


def _wrap_async(
    func: Callable[P, Awaitable[R]],
    pipeline: str | None,
    node: str,
    project: str | None,
    count_int_return: bool,
) -> Callable[P, Awaitable[R]]:
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


class pipeline_run(_AlsoAsync):
    """``with pipeline_run(pipeline) as pipeline_run_id:`` — group node runs under one
    pipeline run (and one pipeline span, when tracing is on). Also usable as ``async with``.

    Nodes inside inherit ``pipeline``, ``project`` and ``pipeline_run_id`` (a fresh uuid4
    unless given, which ``with`` hands to the caller). The pipeline span comes from the global
    TracerProvider, so node spans become its children. An exception leaving the block marks
    the span as an error with the *redacted* message, then propagates unchanged; a span that
    cannot be started is logged and the block runs without it.

    **The plan.** ``plan=`` (node names in the order they would run) and ``depends_on=``
    (node → the names it needs) declare what the run is going to run; :meth:`plan`,
    :meth:`skip` and :meth:`stop` do the same from inside the block. When the block ends,
    each planned node that never started is recorded as a ``SKIPPED`` run with its reason
    (see :class:`PipelinePlan`), and the pipeline run itself — status, times, node counts —
    as a row of ``meta_pipeline_runs`` and on its span.
    """

    def __init__(
        self,
        pipeline: str,
        *,
        project: str | None = None,
        pipeline_run_id: str | None = None,
        plan: Any = None,
        depends_on: Mapping[str, Any] | None = None,
    ) -> None:
        self._args = (pipeline, project, pipeline_run_id)
        self._planned = (plan, depends_on)
        self._token: Token[_PipelineScope | None] | None = None
        self._span: contextlib.AbstractContextManager[Any] | None = None
        self._otel_span: trace.Span | None = None
        self._plan: PipelinePlan | None = None

    @property
    def pipeline_run_id(self) -> str | None:
        """The pipeline run's id, inside the block (None before it)."""
        return None if self._plan is None else self._plan.pipeline_run_id

    def plan(self, nodes: Any, depends_on: Mapping[str, Any] | None = None) -> None:
        """Declare more planned nodes (inside the block; see :meth:`PipelinePlan.plan`)."""
        if self._plan is not None:
            self._plan.plan(nodes, depends_on)

    def skip(self, node: str, reason: str) -> None:
        """Record that planned ``node`` will not run, for ``reason`` (``not_selected``, ...)."""
        if self._plan is not None:
            self._plan.skip(node, reason)

    def stop(self, reason: str) -> None:
        """The run stops early for ``reason``: the nodes that never start are skipped for it."""
        if self._plan is not None:
            self._plan.stop(reason)

    def __enter__(self) -> str:
        pipeline, project, pipeline_run_id = self._args
        run_id = pipeline_run_id if _given(pipeline_run_id) else str(uuid.uuid4())
        try:
            self._plan = PipelinePlan(pipeline, project=project, pipeline_run_id=run_id)
            nodes, depends_on = self._planned
            if nodes is not None:
                self._plan.plan(nodes, depends_on)
        except Exception:
            log.exception(
                "odibi-observe: could not start the plan of pipeline run %s; its nodes are "
                "recorded without it",
                run_id,
            )
            self._plan = None
        scope = _PipelineScope(pipeline, run_id, project, self._plan)
        self._token = _current_pipeline.set(scope)
        try:
            span = trace.get_tracer(INSTRUMENTATION_SCOPE).start_as_current_span(
                PIPELINE_SPAN_NAME_FORMAT.format(pipeline=pipeline),
                kind=trace.SpanKind.SERVER,
                attributes={
                    FIELDS.pipeline.attribute or "": pipeline,
                    FIELDS.pipeline_run_id.attribute or "": scope.pipeline_run_id,
                    **pipeline_span_attributes(pipeline, scope.pipeline_run_id),
                },
                # Recorded here instead, with the message redacted (see __exit__).
                record_exception=False,
                set_status_on_exception=False,
            )
            self._otel_span = span.__enter__()
            self._span = span
        except Exception:
            log.exception(
                "odibi-observe: could not start the span of pipeline run %s; its "
                "nodes are recorded without it",
                scope.pipeline_run_id,
            )
        if self._plan is not None:
            if self._otel_span is not None:
                self._plan.trace_from(self._otel_span)
            self._plan.begin()
        return scope.pipeline_run_id

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        counts = {} if self._plan is None else self._plan.finish(exc)
        try:
            if self._span is not None:
                if self._otel_span is not None:
                    end_pipeline_span(self._otel_span, exc, counts=counts)
                self._span.__exit__(exc_type, exc, tb)
        except Exception:
            log.exception("odibi-observe: could not end the pipeline span")
        finally:
            self._span = self._otel_span = None
            if self._token is not None:
                try:
                    _current_pipeline.reset(self._token)
                except ValueError:  # left in another context; nothing to restore there
                    _current_pipeline.set(None)
                self._token = None


def pipeline_span_attributes(pipeline: str, pipeline_run_id: str | None) -> dict[str, str]:
    """The OTel CI/CD attributes a pipeline span starts with (``odibi.*`` ones go beside)."""
    attrs = {CICD_PIPELINE_NAME: pipeline}
    if pipeline_run_id:
        attrs[CICD_PIPELINE_RUN_ID] = pipeline_run_id
    return attrs


def end_pipeline_span(
    span: trace.Span,
    exc: BaseException | None,
    failed_nodes: int = 0,
    *,
    counts: Mapping[str, int] | None = None,
) -> None:
    """Set ``cicd.pipeline.result`` (and, on an exception, what ``record_exception`` and
    ``set_status_on_exception`` do, with redacted text) before the pipeline span ends;
    ``counts`` (:meth:`PipelinePlan.finish`) become the ``odibi.nodes_*`` attributes, what
    reconciliation compares with the ``meta_pipeline_runs`` row.

    A ``KeyboardInterrupt`` is a cancellation, like the node it interrupted: an ``exception``
    event and ``error.type``, but no ERROR status. Never raises."""
    try:
        for f in PIPELINE_COUNTS:
            if counts and f.key in counts and f.attribute:
                span.set_attribute(f.attribute, counts[f.key])
        failed_nodes = max(failed_nodes, (counts or {}).get(PIPELINE_COUNTS.failed.key, 0))
        status = (
            RunStatus.SUCCESS
            if exc is None and not failed_nodes
            else RunStatus.FAILURE
            if exc is None
            else status_of_exception(exc)
        )
        span.set_attribute(CICD_PIPELINE_RESULT, PIPELINE_RESULTS[status])
        if exc is None:
            return
        kind, message = error_type_of(exc), safe_text(error_message_of(exc), 8_192)
        span.set_attribute(ERROR_TYPE_ATTRIBUTE, kind)
        event: dict[str, str] = {"exception.type": kind, "exception.message": message}
        stack = stack_of(exc, 8_192)
        if stack:
            event[EXCEPTION_STACKTRACE] = stack
        span.add_event("exception", event)
        if status is not RunStatus.CANCELLED:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{kind}: {message}"[:256]))
    except Exception:
        log.exception("odibi-observe: could not record the end of the pipeline span")


# -- the plan of a pipeline run ----------------------------------------------------------------

_SKIP_REASONS: Final = frozenset(SKIP_REASONS)
#: Node statuses a dependent is skipped after: the dependency did not produce its output.
_BROKEN: Final = frozenset(FAILED_STATUSES)


class PipelinePlan:
    """The nodes one pipeline run is going to run, and what became of each.

    A pipeline run declares its plan (:meth:`plan`: node names in the order they would run,
    and optionally what each depends on); node runs of the pipeline run are noted as they
    start (:meth:`started`). When the pipeline run ends (:meth:`finish`) every planned node
    that never started is recorded as a ``SKIPPED`` run — a terminal record through the bus
    to every sink, like any run, with the reason in ``skip_reason`` — and the pipeline run
    itself as an ``EventKind.PIPELINE`` record with the counts (planned = ran + skipped).

    The reason of a node that never started is the first that holds of: the one given with
    :meth:`skip` (say ``not_selected``); ``dependency_failed`` when a node it depends on
    failed, crashed or was itself skipped for that; the ``stop_reason`` the pipeline run was
    stopped with (:meth:`stop`, e.g. ``fail_fast``); ``fail_fast`` when a node of the run
    failed; else ``aborted`` (the run ended, by an exception, an interrupt or a return, before
    the node's turn).

    Thread-safe (nodes of a parallel pipeline start on worker threads); no method raises:
    a name that cannot be used is counted as invalid input and left out.
    """

    __slots__ = (
        "_counts_final",
        "_depends",
        "_forgotten",
        "_lock",
        "_observer",
        "_order",
        "_runs",
        "_skips",
        "_stop_reason",
        "_trace",
        "pipeline",
        "pipeline_run_id",
        "project",
        "started_ns",
    )

    def __init__(
        self,
        pipeline: str,
        *,
        project: str | None = None,
        pipeline_run_id: str | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._observer = observer or get_observer()
        self.pipeline = pipeline
        self.project = project if _given(project) else self._observer.settings.project
        self.pipeline_run_id = pipeline_run_id
        self.started_ns = time.time_ns()
        self._lock = threading.Lock()
        self._order: dict[str, None] = {}  # planned nodes, in order (a dict keeps it)
        self._depends: dict[str, tuple[str, ...]] = {}
        self._runs: dict[str, NodeRun] = {}
        self._skips: dict[str, str] = {}
        self._forgotten: set[str] = set()
        self._stop_reason: str | None = None
        self._counts_final: dict[str, int] | None = None
        self._trace: tuple[str, str | None] | None = None  # (trace_id, pipeline span id)

    # -- what the pipeline declares ------------------------------------------------------------
    def plan(self, nodes: Any, depends_on: Mapping[str, Any] | None = None) -> None:
        """Declare ``nodes`` (names, in the order they would run) as planned; ``depends_on``
        maps a node to the names it needs. May be called more than once (adds)."""
        try:
            names = [n for n in (self._node_name(node) for node in nodes) if n is not None]
            deps = {
                name: tuple(n for n in (self._node_name(d) for d in needs) if n is not None)
                for name, needs in (depends_on or {}).items()
            }
        except Exception as exc:
            self._invalid(f"the plan could not be read ({_reason(exc)}); left as it was")
            return
        with self._lock:
            for name in names:
                self._order.setdefault(name, None)
            self._depends.update(deps)

    def skip(self, node: str, reason: str) -> None:
        """Plan ``node`` and record now that it will not run, for ``reason`` (one of
        ``SKIP_REASONS``); written with the others when the pipeline run ends."""
        name = self._node_name(node)
        if name is None:
            return
        if reason not in _SKIP_REASONS:
            self._invalid(f"skip reason {reason!r} is not one of {', '.join(SKIP_REASONS)}")
            return
        with self._lock:
            self._order.setdefault(name, None)
            self._skips[name] = reason

    def forget(self, node: str) -> None:
        """Take ``node`` out of the plan: neither run nor skipped (a framework restored its
        output from an earlier run instead)."""
        with self._lock:
            self._forgotten.add(node)

    def stop(self, reason: str) -> None:
        """The pipeline run stops early for ``reason`` (``fail_fast``, ``aborted``): the
        planned nodes that never start are skipped for it (unless a dependency failed)."""
        if reason in _SKIP_REASONS:
            self._stop_reason = reason
        else:
            self._invalid(f"stop reason {reason!r} is not one of {', '.join(SKIP_REASONS)}")

    def started(self, run: NodeRun) -> None:
        """Note that ``run`` (a node of this pipeline run) started. Called for every node run
        of a ``pipeline_run`` block; integrations call it for runs on other threads."""
        if not run:
            return
        with self._lock:
            self._runs[run.record.node] = run

    def failed_nodes(self) -> list[str]:
        """The nodes of this run that have ended ``FAILURE`` or ``CRASHED`` so far."""
        with self._lock:
            return [name for name, run in self._runs.items() if run.record.status in _BROKEN]

    def trace_from(self, span: Any) -> None:
        """Take the trace id and parent of the skipped runs' spans from the pipeline span."""
        try:
            context = span.get_span_context()
            if context.is_valid:
                self._trace = (f"{context.trace_id:032x}", f"{context.span_id:016x}")
        except Exception:
            log.debug("odibi-observe: no pipeline span context", exc_info=True)

    # -- the pipeline run's records ------------------------------------------------------------
    def begin(self, pipeline_run_id: str | None = None) -> None:
        """Emit the pipeline run's ``RUNNING`` record (once its id is known). Never raises."""
        if pipeline_run_id is not None:
            self.pipeline_run_id = pipeline_run_id
        try:
            self._emit(self._record(RunStatus.RUNNING, None, {}))
        except Exception:
            log.exception("odibi-observe: could not record the start of a pipeline run")

    def finish(self, exc: BaseException | None = None, *, failed: int = 0) -> dict[str, int]:
        """End the pipeline run: a ``SKIPPED`` record for each planned node that never
        started, then the pipeline run's terminal record. ``exc`` is what left the pipeline,
        ``failed`` the failures it reported without raising. Returns the counts (once; a
        second call records nothing and returns them again). Never raises."""
        try:
            return self._finish(exc, failed)
        except Exception:
            log.exception(
                "odibi-observe: could not record the end of pipeline run %s", self.pipeline_run_id
            )
            return {}

    def _finish(self, exc: BaseException | None, reported_failed: int) -> dict[str, int]:
        with self._lock:
            if self._counts_final is not None:
                return self._counts_final
            self._counts_final = {}
            runs = dict(self._runs)
            order = [n for n in (*self._order, *runs) if n not in self._forgotten]
            order = list(dict.fromkeys(order))
        statuses = {name: run.record.status for name, run in runs.items()}
        failed_any = reported_failed > 0 or any(s in _BROKEN for s in statuses.values())
        fallback = self._stop_reason or (SKIP_FAIL_FAST if failed_any else SKIP_ABORTED)
        reasons: dict[str, str] = {}
        for name in order:
            if name not in runs:
                reasons[name] = self._skips.get(name) or self._reason_of(
                    name, statuses, reasons, fallback
                )
        now = time.time_ns()
        for name, reason in reasons.items():
            self._emit_skip(name, reason, now)
        counts = self._counts(statuses, len(reasons), reported_failed)
        status = (
            status_of_exception(exc)
            if exc is not None
            else RunStatus.FAILURE
            if counts[PIPELINE_COUNTS.failed.key]
            else RunStatus.SUCCESS
        )
        self._emit(self._record(status, exc, counts, ended_ns=now))
        self._counts_final = counts
        return counts

    def _reason_of(
        self,
        name: str,
        statuses: Mapping[str, RunStatus],
        reasons: Mapping[str, str],
        fallback: str,
    ) -> str:
        for dep in self._depends.get(name, ()):
            if statuses.get(dep) in _BROKEN or reasons.get(dep) == SKIP_DEPENDENCY_FAILED:
                return SKIP_DEPENDENCY_FAILED
        return fallback

    def _counts(
        self, statuses: Mapping[str, RunStatus], skipped: int, reported_failed: int = 0
    ) -> dict[str, int]:
        ran = len(statuses)
        failed = max(sum(1 for s in statuses.values() if s in _BROKEN), reported_failed)
        return {
            PIPELINE_COUNTS.planned.key: ran + skipped,
            PIPELINE_COUNTS.ran.key: ran,
            PIPELINE_COUNTS.skipped.key: skipped,
            PIPELINE_COUNTS.failed.key: failed,
        }

    def _ids(self) -> tuple[str, str | None]:
        if self._trace is None:
            self._trace = (f"{random.getrandbits(128) or 1:032x}", None)
        return self._trace

    def _record(
        self,
        status: RunStatus,
        exc: BaseException | None,
        counts: Mapping[str, int],
        *,
        ended_ns: int | None = None,
    ) -> RunRecord:
        s = self._observer.settings
        trace_id, span_id = self._ids()
        run_id = self.pipeline_run_id or ""
        return RunRecord(
            run_id=run_id,
            project=self.project,
            pipeline=self.pipeline,
            node="",
            environment=s.environment,
            status=status,
            started_ns=self.started_ns,
            trace_id=trace_id,
            span_id=span_id or "",
            host=s.host,
            pid=os.getpid(),
            service_name=s.service_name,
            pipeline_run_id=run_id,
            ended_ns=ended_ns,
            error_type=None if exc is None else error_type_of(exc),
            error_message=None
            if exc is None
            else safe_text(error_message_of(exc), s.max_error_message_length),
            attributes=dict(counts),
        )

    def _emit(self, record: RunRecord) -> None:
        if record.run_id:  # a pipeline run whose id never became known has no row to key
            self._observer.bus.emit(RunEvent(EventKind.PIPELINE, record))

    def _emit_skip(self, node: str, reason: str, now: int) -> None:
        s = self._observer.settings
        trace_id, parent = self._ids()
        record = RunRecord(
            run_id=str(uuid.UUID(int=random.getrandbits(128), version=4)),
            project=self.project,
            pipeline=self.pipeline,
            node=node,
            environment=s.environment,
            status=RunStatus.SKIPPED,
            started_ns=now,
            ended_ns=now,
            trace_id=trace_id,
            span_id=f"{random.getrandbits(64) or 1:016x}",
            parent_span_id=parent,
            host=s.host,
            pid=os.getpid(),
            service_name=s.service_name,
            pipeline_run_id=self.pipeline_run_id,
            skip_reason=reason,
        )
        self._observer.bus.emit(RunEvent(EventKind.FINISHED, record))

    def _node_name(self, value: Any) -> str | None:
        if type(value) is str and value:
            return value
        self._invalid(f"a planned node name {_describe(value)} is not a non-empty string; left out")
        return None

    def _invalid(self, message: str) -> None:
        _count_invalid(self._observer, "plan", message)


#: Characters read before the kept tail of a long traceback (so that redaction, which shortens
#: text, still leaves ``limit`` characters), and the head of them always dropped after it: a
#: secret the first cut split in two is not kept.
_STACK_MARGIN: Final = 4_096
_STACK_CUT_HEAD: Final = 256


def stack_of(exc: BaseException, limit: int) -> str | None:
    """``exc``'s traceback as Python prints it, redacted and bounded to ``limit`` characters
    (the end kept: the innermost frames and the exception line say what broke). Never
    raises: None when it cannot be formatted."""
    try:
        text = "".join(traceback.format_exception(exc))
        window = len(text) > limit + _STACK_MARGIN
        if window:
            text = text[-(limit + _STACK_MARGIN) :]
        text = safe_text(text, len(text))  # redacted whole, then cut (never half a secret)
        if window:
            text = text[_STACK_CUT_HEAD:]
        if window or len(text) > limit:
            text = "…" + text[-(limit - 1) :]
        return text
    except Exception:
        return None


# -- results, errors, exits -------------------------------------------------------------------


def rows_from_result(value: Any, count_int_return: bool = False) -> int | None:
    """Rows implied by a node's return value, or None when it says nothing about rows (or
    its size cannot be read: a ``__len__`` that raises). Never raises."""
    try:
        return _rows_from_result(value, count_int_return)
    except Exception:
        return None


def _rows_from_result(value: Any, count_int_return: bool) -> int | None:
    """:func:`rows_from_result`, raising what ``len()`` of the value raises."""
    kind = type(value)
    if kind is list:
        return len(value)
    if kind is bool or value is None:
        return None
    if kind is int:
        return value if count_int_return and value >= 0 else None
    if isinstance(value, list):
        return len(value)  # a subclass's own __len__: it may raise, or be negative or huge
    if isinstance(value, int) and not isinstance(value, bool):
        number = int.__int__(value)
        return number if count_int_return and number >= 0 else None
    if (kind.__module__.partition(".")[0], kind.__name__) in _ROW_FRAME_TYPES:
        return len(value)
    return None


def status_of_exception(exc: BaseException) -> RunStatus:
    """``CANCELLED`` for a ``KeyboardInterrupt`` (an operator's abort), else ``FAILURE``."""
    return RunStatus.CANCELLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILURE


def error_type_of(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Class`` otherwise (OTel ``error.type``).

    Never raises (a class may carry a strange ``__module__``)."""
    kind = type(exc)
    try:
        module, name = kind.__module__, kind.__qualname__
        if module == "builtins":
            return str.__str__(name)
        return f"{str.__str__(module)}.{str.__str__(name)}"
    except Exception:
        return _type_name(exc)


def error_message_of(exc: BaseException) -> str:
    """The exception's message, redacted, read up to :data:`MAX_MESSAGE_SCAN` characters
    (longer ones are cut, saying so). Never raises: an exception whose ``__str__`` raises
    gives ``<unprintable Type>``."""
    try:
        text = _text_of(exc)
        if not text:
            text = _text_of(repr(exc))
    except Exception:
        return f"<unprintable {_type_name(exc)}>"
    return safe_text(text, MAX_MESSAGE_SCAN)


def suggestions_of(exc: BaseException) -> list[str]:
    """``suggestions`` carried by ``exc`` or its causes (Odibi's ``NodeExecutionError``).

    Never raises: a ``suggestions`` that cannot be read, or an item whose ``str()`` raises,
    is left out."""
    return _suggestions_of(exc, [])


def _suggestions_of(exc: BaseException, problems: list[str]) -> list[str]:
    """:func:`suggestions_of`, noting in ``problems`` what could not be read."""
    found: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 5:
        seen.add(id(current))
        try:
            raw = getattr(current, "suggestions", None)
            if isinstance(raw, str):
                raw = [raw]
            if isinstance(raw, (list, tuple)):
                items = (
                    list.__getitem__(raw, slice(0, MAX_SUGGESTIONS))
                    if isinstance(raw, list)
                    else tuple.__getitem__(raw, slice(0, MAX_SUGGESTIONS))
                )
                for item in items:
                    if item is None:
                        continue
                    try:
                        text = _text_of(item)
                    except Exception as error:
                        problems.append(f"a suggestion could not be read ({_reason(error)})")
                        continue
                    if text:
                        found.append(text)
        except Exception as error:
            problems.append(
                f"the suggestions of {_type_name(current)} could not be read ({_reason(error)})"
            )
        try:
            cause = current.__cause__
            current = cause if cause is not None else current.__context__
        except Exception:
            current = None
    return list(dict.fromkeys(found))
