"""Record every node run of an Odibi project, without editing Odibi or the project.

::

    from odibi.pipeline import PipelineManager
    from odibi_observe.integrations import odibi as observe_odibi

    observe_odibi.instrument()           # once per process, before the pipelines run
    PipelineManager.from_yaml("odibi.yaml").run()

or with no code at all: ``odibi-observe run odibi.yaml [odibi run options]``, or
``ODIBI_OBSERVE_INSTRUMENT=1 odibi run odibi.yaml`` through Odibi's plugin discovery (see
:mod:`odibi_observe.integrations.odibi_plugin` and ``docs/odibi.md``).

Where it hooks in
-----------------
Odibi (3.15.x) has no hook around node execution — its one plugin mechanism, the
``odibi.connections`` entry-point group, registers connection types — so :func:`instrument`
wraps these methods. Each wrapper calls the original with the same arguments and returns or
raises exactly what it returned or raised; recording errors are logged, never raised.

``Node._execute_with_retries`` — **the node run.**
    Odibi calls it inside its own ``node_execution`` span, and it contains every attempt of the
    node, so it is recorded as one :func:`~odibi_observe.node_run` whose span is a *child* of
    Odibi's span. It returns Odibi's ``NodeResult``: ``success`` gives the status,
    ``rows_processed`` the rows, ``rows_read``/``rows_written`` become attributes, a failed
    result's ``error`` (a ``NodeExecutionError``) gives the error and its ``suggestions``
    (the recorded message starts with the root cause, see :func:`odibi_error_message`), and
    ``duration`` the duration — the value Odibi's own ``meta_runs`` gets, so the two agree to
    its truncation to whole milliseconds. An exception that escapes it — a
    ``KeyboardInterrupt`` from a ``@transform`` step, which Odibi's ``except Exception``
    blocks do not catch — is recorded as ``FAILURE`` before it propagates; Odibi itself then
    writes no ``meta_runs`` row for any node of the pipeline.
``NodeExecutor.execute`` — one call per attempt: counted (the ``attempt`` of a run
    interrupted in the middle of its retries), and a failed attempt's error summarised.
``Node.execute`` — after it returns, Odibi's own ``meta_runs`` row for the run (built in its
    ``finally`` block, written when the pipeline ends) gets *our* ``run_id`` instead of the
    random uuid4 Odibi draws for it and uses nowhere else, so both catalogs and the trace share
    one key (``share_run_id=False`` leaves Odibi's id alone). In a worker thread of a
    ``parallel`` run it also makes the pipeline span current, so the node spans nest under it.
``Pipeline.run`` — a ``RUN <name>`` span (scope ``odibi_observe``) around the pipeline
    run, carrying Odibi's pipeline run id as ``odibi.pipeline_run_id``, and **the plan** of
    the run (:class:`~odibi_observe._instrument.PipelinePlan`): the nodes Odibi is going to
    run, selected as ``Pipeline.run`` selects them (disabled nodes and their dependents are
    never planned; what ``--tag``/``--node`` leaves out is ``not_selected``). At the end each
    planned node that never started is a ``SKIPPED`` run — ``dependency_failed`` (Odibi's own
    skip, or a failed dependency), ``fail_fast`` (a failure under that strategy stopped the
    run), ``aborted`` (an exception or ``KeyboardInterrupt`` left ``Pipeline.run``) — and the
    pipeline run is a ``meta_pipeline_runs`` row under Odibi's pipeline run id (the ``run_id``
    of Odibi's own ``meta_pipeline_runs``).
``PandasEngine.write`` (and Polars', Spark's) — **the run's writes**: each write that returns
    is ``record_write(target, rows, version)``: the connection's full path (or the table), the
    rows from Delta's commit metrics (else the in-memory frame's length), Delta's version.
    For a node that reads incrementally in ``stateful`` mode and appends, the write awaits its
    checkpoint (``awaits_checkpoint``).
``StateManager.set_hwm`` — **the run's checkpoint**: the node's HWM key set (after reading
    the value it replaces from the state backend) is ``record_checkpoint(key, value,
    previous)``. A run killed between the two is an ``uncommitted_write``
    (``docs/exactly-once.md``); when ``set_hwm`` raises, Odibi's ``data_write_committed``,
    ``hwm_error`` and ``hwm_update`` in the result's metadata are recorded too.

Retries are one record per node run, not one per attempt: Odibi writes one ``meta_runs`` row
per node run (status of the last attempt, total duration), and the record must match it. The
record's ``attempt`` is the number of attempts made (Odibi's own count), and the errors of the
attempts that failed before are kept in the attribute ``retry_errors``.

Join with Odibi's trace: the run's span is a child of Odibi's ``node_execution`` span, so the
catalog row's ``trace_id`` and ``parent_span_id`` are Odibi's span. Odibi's span itself is not
annotated: exactly one span per run carries ``odibi.run_id`` — the run's own (scope
``odibi_observe``, name ``node <node>``) — which is how trace readers count runs. (Odibi's
spans are recorded when an SDK tracer provider is installed, e.g. the one odibi-observe
installs for ``traces_file``.)

Dry runs (``odibi run --dry-run``) execute nothing and are not recorded.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from odibi_observe._instrument import (
    NodeRun,
    PipelinePlan,
    end_pipeline_span,
    error_message_of,
    node_run,
    pipeline_span_attributes,
    rows_from_result,
    suggestions_of,
)
from odibi_observe._runtime import get_observer
from odibi_observe._selfmetrics import log
from odibi_observe.config import parse_bool
from odibi_observe.conventions import (
    CICD_PIPELINE_RUN_ID,
    FIELDS,
    INSTRUMENTATION_SCOPE,
    PIPELINE_SPAN_NAME_FORMAT,
    SKIP_ABORTED,
    SKIP_DEPENDENCY_FAILED,
    SKIP_FAIL_FAST,
    SKIP_NOT_SELECTED,
    Field,
)

#: The Odibi releases whose internals the wrappers were written against (pip specifier).
SUPPORTED_ODIBI: Final = ">=3.15,<3.16"
_SUPPORTED_SERIES: Final = frozenset({(3, 15)})

#: ``ErrorStrategy.FAIL_FAST.value``: stop the pipeline at its first failure.
_FAIL_FAST_STRATEGY: Final = "fail_fast"

#: ``1``/``true``/``yes``/``on`` instruments Odibi when its plugins load (``odibi run``).
ENV_INSTRUMENT: Final = "ODIBI_OBSERVE_INSTRUMENT"

#: The methods wrapped, as (module, class, method); all must exist for instrument() to proceed.
_TARGETS: Final = (
    ("odibi.node", "Node", "execute"),
    ("odibi.node", "Node", "_execute_with_retries"),
    ("odibi.node", "NodeExecutor", "execute"),
    ("odibi.pipeline", "Pipeline", "run"),
    ("odibi.state", "StateManager", "set_hwm"),
)
#: The engines' ``write`` (the phases of a run: what it wrote). An engine whose module does not
#: import here (its dataframe library is not installed) cannot run, so it is left out.
_ENGINE_TARGETS: Final = (
    ("odibi.engine.pandas_engine", "PandasEngine", "write"),
    ("odibi.engine.polars_engine", "PolarsEngine", "write"),
    ("odibi.engine.spark_engine", "SparkEngine", "write"),
)


class UnsupportedOdibiVersion(RuntimeError):
    """The installed Odibi is not one whose node execution this integration knows how to wrap.

    Raised by :func:`instrument` (and :func:`check_version`) before anything is changed.
    """


# -- version -------------------------------------------------------------------------------


def odibi_version() -> str:
    """The installed Odibi's version; :class:`UnsupportedOdibiVersion` if it is not installed."""
    try:
        return importlib.metadata.version("odibi")
    except importlib.metadata.PackageNotFoundError:
        raise UnsupportedOdibiVersion(
            "Odibi is not installed; install it with: pip install 'odibi-observe[odibi]'"
        ) from None


def check_version(version: str | None = None) -> str:
    """Return ``version`` (default: the installed Odibi's) if it is supported, else raise.

    The wrappers depend on Odibi internals (method names, the ``NodeResult`` fields, where the
    ``meta_runs`` row is built), which may change in any minor release, so only the minor
    series they were written and tested against is accepted.
    """
    found = odibi_version() if version is None else version
    parts = found.split(".")
    try:
        series: tuple[int, int] | None = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        series = None
    if series not in _SUPPORTED_SERIES:
        from odibi_observe import __version__

        raise UnsupportedOdibiVersion(
            f"odibi-observe {__version__} instruments Odibi 3.15.x ({SUPPORTED_ODIBI}), but "
            f"Odibi {found} is installed. Install a supported Odibi "
            f"(pip install 'odibi{SUPPORTED_ODIBI}') or an odibi-observe release that supports "
            f"Odibi {found}. Nothing was instrumented."
        )
    return found


# -- instrument / uninstrument ---------------------------------------------------------------


@dataclass(frozen=True)
class _Patch:
    owner: Any
    name: str
    original: Callable[..., Any]
    wrapper: Callable[..., Any]


_lock = threading.Lock()
_patches: list[_Patch] = []
_active = False
_share_run_id = True


def instrument(*, share_run_id: bool = True) -> None:
    """Record every Odibi node run in this process with odibi-observe. Idempotent.

    Records go to the current observer (:func:`odibi_observe.configure`, or the
    ``ODIBI_OBSERVE_*`` environment on first use). ``share_run_id`` gives Odibi's own
    ``meta_runs`` row the same ``run_id`` as odibi-observe's record.

    Raises :class:`UnsupportedOdibiVersion` — and changes nothing — when the installed Odibi is
    not 3.15.x or lacks a method the integration wraps.
    """
    global _active, _share_run_id
    with _lock:
        _share_run_id = share_run_id
        if _patches:
            _active = True
            return
        version = check_version()
        found: list[tuple[Any, str, Callable[..., Any]]] = []
        for module_name, class_name, method in _TARGETS:
            owner = getattr(importlib.import_module(module_name), class_name, None)
            original = None if owner is None else vars(owner).get(method)
            if not callable(original):
                raise UnsupportedOdibiVersion(
                    f"Odibi {version} has no {class_name}.{method} in {module_name}; this "
                    f"build of Odibi cannot be instrumented. Nothing was instrumented."
                )
            found.append((owner, method, original))
        found += _engine_writes()
        for owner, method, original in found:
            wrapper = _WRAPPERS[method, owner.__name__](original)
            setattr(owner, method, wrapper)
            _patches.append(_Patch(owner, method, original, wrapper))
        _active = True


def _engine_writes() -> list[tuple[Any, str, Callable[..., Any]]]:
    """The ``write`` methods of the engines that import here."""
    found = []
    for module_name, class_name, method in _ENGINE_TARGETS:
        try:
            owner = getattr(importlib.import_module(module_name), class_name, None)
        except Exception:  # its dataframe library is missing: the engine cannot run either
            log.debug("odibi-observe: %s not importable; its writes are not wrapped", module_name)
            continue
        original = None if owner is None else vars(owner).get(method)
        if callable(original):
            found.append((owner, method, original))
    return found


def uninstrument() -> None:
    """Undo :func:`instrument`: Odibi's methods are restored and nothing more is recorded.

    A method that someone else wrapped after us is left in place (restoring ours would drop
    their wrapper); our wrapper inside it then only calls through.
    """
    global _active
    with _lock:
        _active = False
        for patch in reversed(_patches):
            if vars(patch.owner).get(patch.name) is patch.wrapper:
                setattr(patch.owner, patch.name, patch.original)
        _patches.clear()


def is_instrumented() -> bool:
    """Whether Odibi node runs are being recorded."""
    return _active


def instrument_from_environment(environ: Mapping[str, str] | None = None) -> bool:
    """:func:`instrument` if ``ODIBI_OBSERVE_INSTRUMENT`` is true; return whether it did.

    Never raises: an unsupported Odibi or an unreadable value is logged as an error and the
    pipelines run unobserved (observability never stops a pipeline).
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV_INSTRUMENT, "").strip().lower()
    try:
        if not raw or not parse_bool(raw):
            return False
    except ValueError:
        log.error(
            "odibi-observe: %s=%r is not true or false; Odibi is not instrumented",
            ENV_INSTRUMENT,
            raw,
        )
        return False
    try:
        instrument()
    except UnsupportedOdibiVersion as exc:
        log.error("odibi-observe: %s", exc)
        return False
    # The environment is the whole configuration here, and no code of the user's runs before
    # the pipelines: install the observer (and with it the tracer provider) now.
    _ensure_observer()
    return True


def _ensure_observer() -> None:
    """Make sure the observer exists before an Odibi span is started. Never raises.

    The observer is otherwise built lazily by the first node run — *inside* the pipeline span
    and the first node's ``node_execution`` span, both of which were then started before any
    tracer provider was installed: non-recording and without a trace id, so the first pipeline
    lost its span and its nodes were scattered over several traces. Building it first (from
    the ``ODIBI_OBSERVE_*`` environment unless :func:`odibi_observe.configure` ran) installs
    the tracer provider the spans need. Once built this is one global read.
    """
    try:
        get_observer()
    except Exception:
        log.exception("odibi-observe: could not configure from the environment")


def run_odibi_cli(
    argv: Sequence[str], *, background_timeout: float = 120.0, interrupted_timeout: float = 30.0
) -> int:
    """Run Odibi's own command line, ``odibi ARGV...``, in this process, instrumented.

    Returns Odibi's exit code. A ``KeyboardInterrupt`` (or any ``BaseException``) from the
    pipeline propagates after the interrupted node run has been recorded.

    On every way out — a return, ``SystemExit``, a ``KeyboardInterrupt`` — it first waits for
    the daemon threads Odibi started and left running: its ``DerivedUpdater``
    (``system.async_derived_updates``, on by default) and catalog sync; at most
    ``background_timeout`` seconds, or ``interrupted_timeout`` after an exception (an operator
    who pressed Ctrl-C is waiting; a second Ctrl-C stops the wait). Odibi returns before they
    finish, and an interpreter that exits under them aborts in pyarrow (``FATAL: exception
    not rethrown``, exit status 134) or hangs, the same with ``odibi run``.
    """
    instrument()
    odibi_main: Callable[[], Any] = importlib.import_module("odibi.cli.main").main
    before = {thread.ident for thread in threading.enumerate()}
    saved = sys.argv
    sys.argv = ["odibi", *argv]  # Odibi's CLI parses sys.argv itself
    finished = False
    try:
        try:
            code = odibi_main()
        except SystemExit as exc:  # argparse errors and --help inside Odibi's CLI
            code = exc.code
        finished = True
    finally:
        sys.argv = saved
        _wait_for_odibi_threads_interruptibly(
            before, background_timeout if finished else interrupted_timeout
        )
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _wait_for_odibi_threads_interruptibly(before: set[int | None], timeout: float) -> None:
    """:func:`wait_for_odibi_threads`, where a (further) Ctrl-C ends the wait, not the run."""
    try:
        wait_for_odibi_threads(before, timeout)
    except KeyboardInterrupt:
        log.warning(
            "odibi-observe: interrupted while waiting for Odibi's background threads; "
            "not waiting any longer"
        )


def wait_for_odibi_threads(before: set[int | None], timeout: float) -> bool:
    """Join the daemon threads Odibi started since ``before``; False if some outlive ``timeout``."""
    deadline = time.monotonic() + timeout
    pending = [
        t
        for t in threading.enumerate()
        if t.ident not in before and t.daemon and _runs_odibi_code(t)
    ]
    for thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in pending if t.is_alive()]
    if left:
        log.warning(
            "odibi-observe: Odibi's background thread(s) %s still running after %.0f s",
            ", ".join(left),
            timeout,
        )
    return not left


def _runs_odibi_code(thread: threading.Thread) -> bool:
    # CPython keeps a thread's target until its run() returns; the name is Odibi's own.
    target = getattr(thread, "_target", None)
    module = getattr(target, "__module__", None) or ""
    return thread.name == "DerivedUpdater" or module.partition(".")[0] == "odibi"


# -- what one node run carries between the wrappers ------------------------------------------


@dataclass
class _NodeCall:
    """One ``Node.execute`` call: the attempts counted and the run id recorded for it."""

    node: Any
    attempts: int = 0
    run_id: str | None = None
    failed_attempts: list[tuple[int, str]] = field(default_factory=list)
    #: The node's high-water-mark key when it reads incrementally in ``stateful`` mode: its
    #: appends are committed only by ``set_hwm`` of that key (docs/exactly-once.md).
    hwm_key: str | None = None
    #: The run recording this call (None: not recorded).
    run: NodeRun | None = None
    #: The node's write target, ``(path, table)`` of its ``write`` config: the engine writes
    #: to it are the node's (Odibi's own system-catalog writes during the run are not).
    target: tuple[Any, Any] | None = None


@dataclass(frozen=True)
class _Identity:
    pipeline: str
    node: str
    project: str | None
    pipeline_run_id: str | None


@dataclass
class _PipelineContexts:
    """OTel contexts and plans of running pipelines, by ``id()`` of the Odibi ``Context``
    they share with their nodes: a worker thread of a parallel run starts with an empty
    context, and its node runs are noted in the plan from there."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    by_key: dict[int, otel_context.Context] = field(default_factory=dict)
    plans: dict[int, PipelinePlan] = field(default_factory=dict)

    def plan_of(self, node: Any) -> PipelinePlan | None:
        with self.lock:
            return self.plans.get(id(getattr(node, "context", node)))


_current_call: ContextVar[_NodeCall | None] = ContextVar("odibi_observe_odibi_call", default=None)
_pipelines = _PipelineContexts()


def _attr(f: Field) -> str:
    assert f.attribute is not None
    return f.attribute


_PROJECT: Final = _attr(FIELDS.project)
_PIPELINE: Final = _attr(FIELDS.pipeline)
_PIPELINE_RUN_ID: Final = _attr(FIELDS.pipeline_run_id)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _identity(node: Any) -> _Identity:
    """Pipeline, node, project and pipeline run id of an Odibi ``Node`` (never raises)."""
    config = getattr(node, "config", None)
    pipeline = _text(getattr(node, "pipeline_name", None))
    if pipeline is None:  # Odibi's own fallback for meta_runs.pipeline_name
        tags = getattr(config, "tags", None)
        pipeline = _text(tags[0]) if isinstance(tags, list) and tags else None
    return _Identity(
        pipeline=pipeline or "unknown",
        node=_text(getattr(config, "name", None)) or "unknown",
        project=_text(getattr(getattr(node, "project_config", None), "project", None)),
        pipeline_run_id=_text(getattr(node, "run_id", None)),
    )


# -- the wrappers ------------------------------------------------------------------------------


def _wrap_node_execute(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active:
            return original(self, *args, **kwargs)
        _ensure_observer()  # before Odibi starts its node_execution span
        call = _NodeCall(self)
        token = _current_call.set(call)
        context_token = _adopt_pipeline_context(self)
        try:
            result = original(self, *args, **kwargs)
        finally:
            if context_token is not None:
                otel_context.detach(context_token)
            _current_call.reset(token)
        if _share_run_id and call.run_id is not None:
            _share_run_id_with_odibi(result, call.run_id)
        return result

    return execute


def _wrap_execute_with_retries(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _execute_with_retries(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active or getattr(self, "dry_run", False) is True:
            return original(self, *args, **kwargs)
        call = _current_call.get()
        if call is not None and call.node is self:
            return _observe(self, call, original, args, kwargs)
        # Called without Node.execute (by a caller's own loop): still one run.
        call = _NodeCall(self)
        token = _current_call.set(call)
        try:
            return _observe(self, call, original, args, kwargs)
        finally:
            _current_call.reset(token)

    return _execute_with_retries


def _wrap_executor_execute(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _current_call.get()
        if call is None:
            return original(self, *args, **kwargs)
        call.attempts += 1
        result = original(self, *args, **kwargs)
        if getattr(result, "success", None) is False:
            try:
                call.failed_attempts.append(
                    (call.attempts, _attempt_summary(call.attempts, result))
                )
            except Exception:
                log.exception("odibi-observe: could not summarise a failed attempt")
        return result

    return execute


def _wrap_pipeline_run(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active:
            return original(self, *args, **kwargs)
        _ensure_observer()  # before the pipeline span: it needs the tracer provider
        options = _run_options(signature, self, args, kwargs)
        name = _text(getattr(getattr(self, "config", None), "pipeline", None)) or "unknown"
        attributes = {_PIPELINE: name}
        project = _text(getattr(getattr(self, "project_config", None), "project", None))
        if project is not None:
            attributes[_PROJECT] = project
        tracer = trace.get_tracer(INSTRUMENTATION_SCOPE)
        attributes.update(pipeline_span_attributes(name, None))
        with tracer.start_as_current_span(
            PIPELINE_SPAN_NAME_FORMAT.format(pipeline=name),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            key = id(getattr(self, "context", self))
            plan = None if options.get("dry_run") is True else _start_plan(self, name, options)
            if plan is not None:
                plan.trace_from(span)
            with _pipelines.lock:
                _pipelines.by_key[key] = otel_context.get_current()
                if plan is not None:
                    _pipelines.plans[key] = plan
            try:
                results = original(self, *args, **kwargs)
            except BaseException as exc:
                counts = _end_plan(plan, self, options, None, exc)
                # Recorded here rather than by OTel (which marks only Exception, unredacted):
                # an interrupted pipeline was cancelled, like its node; any other one failed.
                end_pipeline_span(span, exc, counts=counts)
                raise
            finally:
                with _pipelines.lock:
                    _pipelines.by_key.pop(key, None)
                    _pipelines.plans.pop(key, None)
                # Odibi draws the pipeline run id inside run(); it is known only now.
                run_id = _text(getattr(self, "_current_run_id", None))
                if run_id is not None:
                    span.set_attribute(_PIPELINE_RUN_ID, run_id)
                    span.set_attribute(CICD_PIPELINE_RUN_ID, run_id)
            failed = getattr(results, "failed", None)
            failed = failed if isinstance(failed, list) else []
            counts = _end_plan(plan, self, options, results, None)
            end_pipeline_span(span, None, len(failed), counts=counts)
            if failed:
                span.set_status(
                    Status(
                        StatusCode.ERROR,
                        f"{len(failed)} node(s) failed: {', '.join(map(str, failed))}",
                    )
                )
            return results

    return run


def _recording() -> _NodeCall | None:
    """The node call being recorded on this thread, if a run records it."""
    call = _current_call.get() if _active else None
    return call if call is not None and call.run is not None else None


def _wrap_engine_write(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _recording()
        if call is None or call.target is None:
            return original(self, *args, **kwargs)
        result = original(self, *args, **kwargs)
        _record_engine_write(call, args, kwargs, result)  # written: one that raised wrote nothing
        return result

    return write


def _wrap_set_hwm(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def set_hwm(self: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        call = _recording()
        if call is None or (call.hwm_key is not None and key != call.hwm_key):
            return original(self, key, value, *args, **kwargs)
        previous = _previous_hwm(self, key)
        result = original(self, key, value, *args, **kwargs)
        if call.run is not None:  # set (a set_hwm that raised committed nothing)
            call.run.record_checkpoint(key, value, previous=previous)
        return result

    return set_hwm


# -- the plan of an Odibi pipeline run ---------------------------------------------------------


def _run_options(
    signature: inspect.Signature, pipeline: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``Pipeline.run``'s arguments by name (``tag``, ``node``, ``on_error``, ...); never raises."""
    try:
        bound = signature.bind(pipeline, *args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)
    except Exception:
        return dict(kwargs)


def _start_plan(pipeline: Any, name: str, options: Mapping[str, Any]) -> PipelinePlan | None:
    """The plan of an Odibi pipeline run: its nodes in Odibi's order, the way ``Pipeline.run``
    selects them — disabled nodes and their dependents left out (Odibi never runs them),
    then ``--tag`` / ``--node`` (with the nodes they need); what the selection leaves out is
    ``not_selected``. Never raises: a graph that cannot be read gives an empty plan."""
    try:
        project = _text(getattr(getattr(pipeline, "project_config", None), "project", None))
        plan = PipelinePlan(name, project=project)
    except Exception:
        log.exception("odibi-observe: could not start the plan of pipeline %s", name)
        return None
    try:
        graph = pipeline.graph
        order = [n for n in graph.topological_sort() if isinstance(n, str)]
        disabled = {n for n in order if not getattr(graph.nodes[n], "enabled", True)}
        for n in list(disabled):
            disabled |= set(graph.get_dependents(n))
        order = [n for n in order if n not in disabled]
        selected = set(order)
        tag, chosen = options.get("tag"), options.get("node")
        if isinstance(tag, str) and tag:
            selected = {n for n in selected if tag in (getattr(graph.nodes[n], "tags", None) or ())}
        names = [chosen] if isinstance(chosen, str) else list(chosen or ())
        if names and all(n in graph.nodes for n in names):
            # (A name Odibi does not know makes it raise before any node: nothing is then
            # "not selected", the whole plan is aborted.)
            selected = set(names)
            for n in names:
                selected |= set(graph.get_dependencies(n))
        depends = {n: tuple(getattr(graph.nodes[n], "depends_on", None) or ()) for n in order}
        plan.plan([n for n in order if n in selected], depends)
        for n in order:
            if n not in selected:
                plan.skip(n, SKIP_NOT_SELECTED)
    except Exception:
        log.exception("odibi-observe: could not read the nodes of pipeline %s", name)
    return plan


def _end_plan(
    plan: PipelinePlan | None,
    pipeline: Any,
    options: Mapping[str, Any],
    results: Any,
    exc: BaseException | None,
) -> dict[str, int]:
    """Decide why the planned nodes that never ran did not, from Odibi's results, and end
    the plan (SKIPPED runs, the pipeline run's record). Never raises.

    Odibi's own ``dependency_failed`` skips are taken as they are; a node Odibi restored with
    ``--resume`` was neither run nor skipped, and leaves the plan. A failure under the
    ``fail_fast`` strategy (``--on-error fail_fast`` or the node's ``on_error``) stopped the
    rest — also when Odibi 3.15's parallel runner then raises ``RuntimeError: cannot schedule
    new futures after shutdown`` out of ``Pipeline.run``; any other exception (or a
    ``KeyboardInterrupt``) aborted it.
    """
    if plan is None:
        return {}
    try:
        plan.pipeline_run_id = _text(getattr(pipeline, "_current_run_id", None))
        node_results = getattr(results, "node_results", None)
        for node, result in (node_results if isinstance(node_results, dict) else {}).items():
            metadata = getattr(result, "metadata", None)
            if not isinstance(metadata, dict) or metadata.get("skipped") is not True:
                continue
            if metadata.get("reason") == SKIP_DEPENDENCY_FAILED:
                plan.skip(node, SKIP_DEPENDENCY_FAILED)
            else:  # restored by --resume, or disabled: Odibi's own skip, not a planned run
                plan.forget(node)
        if _failed_fast(pipeline, options, plan):
            plan.stop(SKIP_FAIL_FAST)
        elif exc is not None:
            plan.stop(SKIP_ABORTED)
        failed = getattr(results, "failed", None)
        return plan.finish(exc, failed=len(failed) if isinstance(failed, list) else 0)
    except Exception:
        log.exception("odibi-observe: could not end the plan of a pipeline run")
        return {}


def _failed_fast(pipeline: Any, options: Mapping[str, Any], plan: PipelinePlan) -> bool:
    """Whether a node of this run failed under the ``fail_fast`` strategy."""
    override = options.get("on_error")
    override = getattr(override, "value", override)
    nodes = getattr(getattr(pipeline, "graph", None), "nodes", {})
    for node in plan.failed_nodes():
        strategy = override or getattr(getattr(nodes.get(node), "on_error", None), "value", None)
        if strategy == _FAIL_FAST_STRATEGY:
            return True
    return False


_WRAPPERS: Final[Mapping[tuple[str, str], Callable[[Callable[..., Any]], Callable[..., Any]]]] = {
    ("execute", "Node"): _wrap_node_execute,
    ("_execute_with_retries", "Node"): _wrap_execute_with_retries,
    ("execute", "NodeExecutor"): _wrap_executor_execute,
    ("run", "Pipeline"): _wrap_pipeline_run,
    ("set_hwm", "StateManager"): _wrap_set_hwm,
    **{("write", class_name): _wrap_engine_write for _, class_name, _ in _ENGINE_TARGETS},
}


# -- the phases of a run: the engine's write and set_hwm --------------------------------------

#: Write modes whose rows a second run writes again (the idempotent ones, ``upsert``,
#: ``append_once`` and ``merge``, do not; ``overwrite`` replaces the target).
_APPENDING_MODES: Final = frozenset({"append"})
#: The engine ``write`` parameters the write's target and mode are read from, by position.
_WRITE_PARAMETERS: Final = (
    "df",
    "connection",
    "format",
    "table",
    "path",
    "register_table",
    "mode",
    "options",
    "streaming_config",
)


def hwm_key_of(config: Any) -> str | None:
    """The high-water-mark key of a node that reads incrementally in ``stateful`` mode
    (Odibi's own default: ``<node>_hwm``), else None. Never raises."""
    try:
        incremental = getattr(getattr(config, "read", None), "incremental", None)
        mode = getattr(incremental, "mode", None)
        if getattr(mode, "value", mode) != "stateful":
            return None
        key = getattr(incremental, "state_key", None)
        return key if isinstance(key, str) and key else f"{getattr(config, 'name', '')}_hwm"
    except Exception:
        return None


def _record_engine_write(
    call: _NodeCall, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
) -> None:
    """``record_write`` for one engine write: target, rows, Delta version. Never raises."""
    run = call.run
    if run is None:
        return
    try:
        given = {**dict(zip(_WRITE_PARAMETERS, args, strict=False)), **kwargs}
        if (given.get("path"), given.get("table")) != call.target:
            return  # not the node's target: Odibi's system catalog, its schema history
        mode = given.get("mode")
        mode = getattr(mode, "value", mode)
        info = result if isinstance(result, dict) else {}
        run.record_write(
            _write_target(given),
            rows=_written_rows(given.get("df"), info),
            version=info.get("version"),
            awaits_checkpoint=call.hwm_key is not None and mode in _APPENDING_MODES,
        )
    except Exception:
        log.exception("odibi-observe: could not record the write of run %s", run.run_id)


def _write_target(given: Mapping[str, Any]) -> str:
    """Where the engine wrote: the connection's full path of ``path`` (or the table name)."""
    where = given.get("path") or given.get("table")
    if not isinstance(where, str) or not where:
        return "unknown"
    get_path = getattr(given.get("connection"), "get_path", None)
    if given.get("path") and callable(get_path):
        try:
            full = get_path(where)
            if isinstance(full, str) and full:
                return full
        except Exception:  # noqa: S110 - the relative path is still a target
            pass
    return where


def _written_rows(df: Any, info: Mapping[str, Any]) -> int | None:
    """Rows the write added: Delta's commit metrics, else the size of an in-memory frame
    (never a count that would run a lazy plan again)."""
    metrics = info.get("operation_metrics")
    if isinstance(metrics, dict):
        for key in ("numOutputRows", "numTargetRowsInserted"):
            try:
                return int(metrics[key])
            except (KeyError, TypeError, ValueError):
                continue
    return rows_from_result(df)


def _previous_hwm(manager: Any, key: Any) -> Any:
    """The value ``set_hwm(key, ...)`` is about to replace, from the state backend; None if
    it cannot be read (a first run has none either)."""
    try:
        return manager.get_hwm(key)
    except Exception:
        log.debug("odibi-observe: could not read the HWM %r before setting it", key, exc_info=True)
        return None


def _apply_odibi_phases(run: NodeRun, node: Any, metadata: Mapping[str, Any]) -> None:
    """Odibi's own account of the HWM commit, from the result's metadata.

    ``data_write_committed`` with ``hwm_error``: the write happened and ``set_hwm`` failed.
    If no engine write was seen (an engine this integration does not wrap), the write is
    recorded from the node's write config. ``hwm_pending`` / ``hwm_update`` (the checkpoint
    that was to be committed) become attributes.
    """
    if metadata.get("data_write_committed") is True and not (run.record and run.record.writes):
        write = getattr(getattr(node, "config", None), "write", None)
        target = getattr(write, "path", None) or getattr(write, "table", None)
        run.record_write(target or "unknown", awaits_checkpoint=True)
    error = metadata.get("hwm_error")
    if error is not None:
        run.set_attribute("hwm_error", error)
    if metadata.get("hwm_pending") is True:
        run.set_attribute("hwm_pending", True)
        update = metadata.get("hwm_update")
        if isinstance(update, dict):
            run.set_attribute("hwm_update_key", update.get("key"))
            run.set_attribute("hwm_update_value", str(update.get("value")))


# -- recording one node run ----------------------------------------------------------------------


def _observe(
    node: Any,
    call: _NodeCall,
    original: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run ``original`` (Odibi's ``_execute_with_retries``) as one recorded node run."""
    who = _identity(node)
    # Odibi's node_execution span is current here, so the run's span becomes its child.
    with node_run(
        who.pipeline, who.node, project=who.project, pipeline_run_id=who.pipeline_run_id
    ) as started:
        run = started if started else None  # a falsy no-op run if recording could not start
        if run is not None:
            call.run_id = run.run_id
            call.run = run
            config = getattr(node, "config", None)
            call.hwm_key = hwm_key_of(config)
            write = getattr(config, "write", None)
            if write is not None:
                call.target = (getattr(write, "path", None), getattr(write, "table", None))
            plan = _pipelines.plan_of(node)
            if plan is not None:
                if plan.pipeline_run_id is None and who.pipeline_run_id is not None:
                    plan.begin(who.pipeline_run_id)  # Odibi's id, known from its first node
                plan.started(run)
        try:
            result = original(node, *args, **kwargs)
        except BaseException:
            call.run = None
            if run is not None:
                _set_attempt(run, call.attempts)
            raise  # node_run records it as FAILURE, then it propagates unchanged
        call.run = None  # what Odibi writes or sets after the run is not the run's
        if run is not None:
            _apply_result(run, result, call)
    return result


def _apply_result(run: NodeRun, result: Any, call: _NodeCall) -> None:
    """Take status, rows, attempts and error from Odibi's ``NodeResult``. Never raises."""
    succeeded = getattr(result, "success", None) is True
    try:
        metadata = getattr(result, "metadata", None)
        metadata = metadata if isinstance(metadata, dict) else {}
        attempts = metadata.get("attempts")
        attempts = attempts if isinstance(attempts, int) else call.attempts
        _set_attempt(run, attempts)
        run.rows_processed = getattr(result, "rows_processed", None)
        duration = getattr(result, "duration", None)
        if isinstance(duration, (int, float)) and not isinstance(duration, bool):
            run.set_duration(duration)  # the value Odibi writes to its own meta_runs
        for key in ("rows_read", "rows_written"):
            value = getattr(result, key, None)
            if value is not None:
                run.set_attribute(key, value)
        # The errors of the attempts before the one that decided the run (whose own error,
        # if it failed, is the run's error).
        earlier = [text for number, text in call.failed_attempts if succeeded or number != attempts]
        if earlier:
            run.set_attribute("retry_errors", tuple(earlier))
        if metadata.get("data_write_committed") is True:  # written, then the HWM commit failed
            run.set_attribute("data_write_committed", True)
        _apply_odibi_phases(run, call.node, metadata)
    except Exception:
        log.exception("odibi-observe: could not read Odibi's result for run %s", run.run_id)
    if not succeeded:
        _record_failure(run, getattr(result, "error", None))


def _attempt_summary(attempt: int, result: Any) -> str:
    """``attempt 1: NodeExecutionError: ConnectionError: reset by peer`` for a failed attempt."""
    error = getattr(result, "error", None)
    if not isinstance(error, BaseException):
        return f"attempt {attempt}: failed without an error"
    message = odibi_error_message(error).strip()
    first = message.splitlines()[0] if message else ""
    return f"attempt {attempt}: {type(error).__name__}: {first}"


class OdibiNodeFailed(Exception):
    """Stands in for the error of a failed ``NodeResult`` that carries none."""


def _record_failure(run: NodeRun, error: Any) -> None:
    """Record a failure Odibi *returned* (a ``NodeResult`` with ``success=False``).

    ``node_run`` records a failure when an exception leaves its block; Odibi reports most
    failures as a return value instead, which must reach its caller unchanged, so the run is
    finished with ``NodeRun.fail``, which records without raising.
    """
    if not isinstance(error, BaseException):
        error = OdibiNodeFailed("Odibi reported the node as failed without an error")
    try:
        cause = getattr(error, "original_error", None)
        if not suggestions_of(error) and isinstance(cause, BaseException):
            for text in suggestions_of(cause):  # as Odibi's CLI does: the cause's advice
                run.suggest(text)
        message = odibi_error_message(error)
    except Exception:
        log.exception("odibi-observe: could not read the error of run %s", run.run_id)
        message = error_message_of(error)
    run.fail(error, message=message)  # never raises: Odibi's result goes back unchanged


def odibi_error_message(error: BaseException) -> str:
    """The message recorded for an Odibi error: its root cause first, then Odibi's report.

    A ``NodeExecutionError`` reads "[X] Node execution failed: <node>" on its first line —
    the line ``odibi-observe runs`` shows — and the cause (say "BinderException: Referenced
    column ... not found") further down. The cause's type and first line are put in front;
    Odibi's whole report (location, step, available columns, suggestions) follows unchanged.
    """
    text = error_message_of(error)
    cause = getattr(error, "original_error", None)
    if not isinstance(cause, BaseException):
        return text
    detail = error_message_of(cause).strip()
    headline = f"{type(cause).__name__}: {detail.splitlines()[0] if detail else ''}".rstrip()
    return f"{headline}\n{text}"


def _set_attempt(run: NodeRun, attempts: int) -> None:
    """Make the run's ``attempt`` the number of attempts made (known only at the end)."""
    if attempts > 1:
        run.attempt = attempts


def _share_run_id_with_odibi(result: Any, run_id: str) -> None:
    """Give the ``meta_runs`` row Odibi will write for this run our ``run_id``."""
    try:
        metadata = getattr(result, "metadata", None)
        row = metadata.get("_run_record") if isinstance(metadata, dict) else None
        if isinstance(row, dict) and "run_id" in row:
            row["run_id"] = run_id
    except Exception:
        log.exception("odibi-observe: could not share run id %s with Odibi", run_id)


def _adopt_pipeline_context(node: Any) -> Token[otel_context.Context] | None:
    """In a parallel run's worker thread, make the pipeline span current for this node."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    with _pipelines.lock:
        context = _pipelines.by_key.get(id(getattr(node, "context", node)))
    return None if context is None else otel_context.attach(context)
