"""Record → span: the finished span of a node run as a pure function of its terminal record.

The trace and span ids were chosen when the node started (see the package docstring), so the
span built here carries the ids its children and the catalog row already have. The attribute
names come from the conventions table. Imports nothing of the OTel sink package.
"""

from __future__ import annotations

import json
import logging
import string
from importlib import metadata
from typing import Any, Final

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from odibi_observe.conventions import (
    CHECKPOINT_EVENT,
    CHECKPOINT_KEY_ATTRIBUTE,
    CHECKPOINT_PREVIOUS_ATTRIBUTE,
    CHECKPOINT_VALUE_ATTRIBUTE,
    CICD_PIPELINE_NAME,
    CICD_PIPELINE_RUN_ID,
    CICD_TASK_NAME,
    CICD_TASK_RUN_ID,
    CICD_TASK_RUN_RESULT,
    CICD_TASK_RUN_URL,
    EXCEPTION_STACKTRACE,
    FIELDS,
    INSTRUMENTATION_SCOPE,
    PHASE_KEYS,
    RESOURCE_FIELDS,
    RESOURCE_HOST,
    RESOURCE_PID,
    SKIP_REASON_FIELD,
    SPAN_NAME_FORMAT,
    TASK_RUN_RESULTS,
    TASK_RUN_URL_PLACEHOLDERS,
    USER_ATTRIBUTE_PREFIX,
    WRITE_AWAITS_CHECKPOINT_ATTRIBUTE,
    WRITE_EVENT,
    WRITE_ROWS_ATTRIBUTE,
    WRITE_TARGET_ATTRIBUTE,
    WRITE_VERSION_ATTRIBUTE,
    Field,
    RunStatus,
)
from odibi_observe.record import RunRecord

#: The keys of a write and of the checkpoint (``writes_json``, ``checkpoint_json``).
_K: Final = PHASE_KEYS

log = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return metadata.version("odibi-observe")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


#: Instrumentation scope of node spans and OTel metrics: the package name and its version.
SCOPE: Final = InstrumentationScope(INSTRUMENTATION_SCOPE, _package_version())

#: Bound of the span status description. The error message is already redacted and bounded by
#: the instrumentation layer; this keeps "type: message" within the same order of size.
MAX_STATUS_DESCRIPTION: Final = 8_192


def _attribute(field: Field) -> str:
    if field.attribute is None:  # pragma: no cover - the conventions table is static
        raise LookupError(f"field {field.key!r} has no span attribute")
    return field.attribute


_A_RUN_ID: Final = _attribute(FIELDS.run_id)
_A_PROJECT: Final = _attribute(FIELDS.project)
_A_PIPELINE: Final = _attribute(FIELDS.pipeline)
_A_PIPELINE_RUN_ID: Final = _attribute(FIELDS.pipeline_run_id)
_A_NODE: Final = _attribute(FIELDS.node)
_A_ATTEMPT: Final = _attribute(FIELDS.attempt)
_A_STATUS: Final = _attribute(FIELDS.status)
_A_ROWS: Final = _attribute(FIELDS.rows)
_A_DURATION_MS: Final = _attribute(FIELDS.duration)
_A_ENVIRONMENT: Final = _attribute(FIELDS.environment)
_A_SUGGESTIONS: Final = _attribute(FIELDS.suggestions)
_A_ERROR_TYPE: Final = _attribute(FIELDS.error)
_A_PEAK_RSS: Final = _attribute(RESOURCE_FIELDS.peak_rss)
_A_CPU: Final = _attribute(RESOURCE_FIELDS.cpu)
_A_MEMORY_LIMIT: Final = _attribute(RESOURCE_FIELDS.memory_limit)
_A_SKIP_REASON: Final = _attribute(SKIP_REASON_FIELD)


# ------------------------------------------------------------------------ record → span


def record_resource(record: RunRecord, base: Resource) -> Resource:
    """The resource of ``record``'s span: ``base`` with the record's process identity over it.

    ``service.name``, ``host.name`` and ``process.pid`` come from the record, not from the
    exporting process, because a sidecar or sweeper emits spans for runs of other processes.
    Resources are cached by (base, service, host, pid): a process emits thousands of spans
    for a handful of distinct resources.
    """
    # Keyed by the base object's identity, not the Resource itself: hashing a Resource
    # serialises its attributes to JSON, which cost more than building the span. The cached
    # entry holds the base, so a key is only trusted while it is the very same object.
    key = (id(base), record.service_name, record.host, record.pid)
    cached = _resources.get(key)
    if cached is not None and cached[0] is base:
        return cached[1]
    resource = base.merge(
        Resource(
            {
                SERVICE_NAME: record.service_name,
                RESOURCE_HOST: record.host,
                RESOURCE_PID: record.pid,
            }
        )
    )
    if len(_resources) >= 1024:
        _resources.clear()
    _resources[key] = (base, resource)
    return resource


_resources: dict[tuple[int, str, str, int], tuple[Resource, Resource]] = {}


def record_to_span(
    record: RunRecord, resource: Resource, url: TaskRunUrl | None = None
) -> ReadableSpan:
    """Build the finished span of a terminal ``record``; the same record gives the same span.

    ``resource`` is the configured base resource; the record's ``service.name``, ``host.name``
    and ``process.pid`` are merged over it (:func:`record_resource`); ``url`` gives the
    ``cicd.pipeline.task.run.url.full`` attribute (none without it). Raises ``ValueError`` for
    a record that cannot be a finished span (not terminal, no end time, malformed ids).
    """
    run_status = record.status
    ended = record.ended_ns
    if run_status is RunStatus.RUNNING or ended is None:  # not run_status.is_terminal
        raise ValueError(f"run {record.run_id}: a span needs a terminal record with ended_ns")
    trace_id = _parse_id(record.trace_id, 32, "trace_id")
    context = SpanContext(
        trace_id, _parse_id(record.span_id, 16, "span_id"), is_remote=False, trace_flags=_SAMPLED
    )
    parent = None
    if record.parent_span_id:
        parent = SpanContext(
            trace_id,
            _parse_id(record.parent_span_id, 16, "parent_span_id"),
            is_remote=False,
            trace_flags=_SAMPLED,
        )

    status = _UNSET
    events: list[Event] = []
    if run_status in _WITH_EXCEPTION:
        description = _error_description(record)
        # A cancellation is an operator's abort, not an error of the node: its span keeps the
        # exception event (what was interrupted, and where) but not the ERROR status.
        if run_status is not RunStatus.CANCELLED:
            status = Status(StatusCode.ERROR, description)
        exception: dict[str, AttributeValue] = {}
        if record.error_type:
            exception[EXCEPTION_TYPE] = record.error_type
        if record.error_message:
            exception[EXCEPTION_MESSAGE] = record.error_message
        if not exception:  # semantic conventions require a type or a message
            exception[EXCEPTION_MESSAGE] = description
        if record.error_stack:
            exception[EXCEPTION_STACKTRACE] = record.error_stack
        events.append(Event("exception", exception, timestamp=ended))
    if record.writes or record.checkpoint is not None:
        events[:0] = phase_events(record)

    return ReadableSpan(
        name=_span_name(record.node),
        context=context,
        parent=parent,
        resource=record_resource(record, resource),
        attributes=span_attributes(record, url),
        events=events,
        kind=SpanKind.INTERNAL,
        status=status,
        start_time=record.started_ns,
        end_time=ended,
        instrumentation_scope=SCOPE,
    )


#: The flags and the status every node span without an error shares (both are immutable).
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_UNSET: Final = Status(StatusCode.UNSET)

#: Span names by node name: a process runs a handful of nodes thousands of times.
_span_names: dict[str, str] = {}


def _span_name(node: str) -> str:
    name = _span_names.get(node)
    if name is None:
        if len(_span_names) >= 1024:
            _span_names.clear()
        name = _span_names[node] = SPAN_NAME_FORMAT.format(node=node)
    return name


def phase_events(record: RunRecord) -> list[Event]:
    """The ``odibi.write`` event of each write and the ``odibi.checkpoint`` event, at the
    moments they were recorded (before the ``exception`` event, which is at the end)."""
    events = []
    for write in record.writes:
        attrs: dict[str, AttributeValue] = {WRITE_TARGET_ATTRIBUTE: str(write.get(_K.target))}
        for key, name in ((WRITE_ROWS_ATTRIBUTE, _K.rows), (WRITE_VERSION_ATTRIBUTE, _K.version)):
            if write.get(name) is not None:
                attrs[key] = _event_value(write[name])
        if write.get(_K.awaits_checkpoint):
            attrs[WRITE_AWAITS_CHECKPOINT_ATTRIBUTE] = True
        events.append(Event(WRITE_EVENT, attrs, timestamp=_event_time(write, record)))
    checkpoint = record.checkpoint
    if checkpoint is not None:
        attrs = {CHECKPOINT_KEY_ATTRIBUTE: str(checkpoint.get(_K.key))}
        for key, name in (
            (CHECKPOINT_VALUE_ATTRIBUTE, _K.value),
            (CHECKPOINT_PREVIOUS_ATTRIBUTE, _K.previous),
        ):
            if checkpoint.get(name) is not None:
                attrs[key] = _event_value(checkpoint[name])
        events.append(Event(CHECKPOINT_EVENT, attrs, timestamp=_event_time(checkpoint, record)))
    return events


def _event_value(value: Any) -> AttributeValue:
    """A phase value as an attribute: a string, bool, int or float as it is, else JSON."""
    if isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


def _event_time(item: dict[str, Any], record: RunRecord) -> int:
    at = item.get(_K.at)
    return at if type(at) is int else record.started_ns


def span_attributes(record: RunRecord, url: TaskRunUrl | None = None) -> dict[str, AttributeValue]:
    """The span attributes of ``record``, every key taken from the conventions table: ours
    (``odibi.*``) and the OpenTelemetry CI/CD conventions' (``cicd.pipeline.*``) beside them,
    so that tools that speak the standard read the run without knowing ours."""
    run_id, pipeline, node = record.run_id, record.pipeline, record.node
    pipeline_run_id = record.pipeline_run_id
    status_value, result = _STATUS_ATTRIBUTES[record.status]
    attrs: dict[str, AttributeValue] = {
        _A_RUN_ID: run_id,
        _A_PROJECT: record.project,
        _A_PIPELINE: pipeline,
    }
    if pipeline_run_id:
        attrs[_A_PIPELINE_RUN_ID] = pipeline_run_id
    attrs[_A_NODE] = node
    attrs[_A_ATTEMPT] = record.attempt
    attrs[_A_STATUS] = status_value
    if record.rows_processed is not None:
        attrs[_A_ROWS] = record.rows_processed
    duration_ms = record.duration_ms
    if duration_ms is not None:
        attrs[_A_DURATION_MS] = duration_ms
    attrs[_A_ENVIRONMENT] = record.environment
    if record.suggestions:
        attrs[_A_SUGGESTIONS] = tuple(str(s) for s in record.suggestions)
    if record.error_type:
        attrs[_A_ERROR_TYPE] = record.error_type
    if record.peak_rss_bytes is not None:
        attrs[_A_PEAK_RSS] = record.peak_rss_bytes
    if record.cpu_seconds is not None:
        attrs[_A_CPU] = record.cpu_seconds
    if record.memory_limit_bytes is not None:
        attrs[_A_MEMORY_LIMIT] = record.memory_limit_bytes
    if record.skip_reason is not None:
        attrs[_A_SKIP_REASON] = record.skip_reason
    if record.attributes:
        for key, value in record.attributes.items():
            attrs[USER_ATTRIBUTE_PREFIX + key] = value
    attrs[CICD_PIPELINE_NAME] = pipeline
    if pipeline_run_id:
        attrs[CICD_PIPELINE_RUN_ID] = pipeline_run_id
    attrs[CICD_TASK_NAME] = node
    attrs[CICD_TASK_RUN_ID] = run_id
    if result is not None:
        attrs[CICD_TASK_RUN_RESULT] = result
    if url is not None:
        link = url.render(record)
        if link is not None:
            attrs[CICD_TASK_RUN_URL] = link
    return attrs


#: Per run status, its ``odibi.status`` value and its CI/CD task run result (None for none):
#: one lookup instead of an enum ``value`` property and a second hash per span.
_STATUS_ATTRIBUTES: Final = {s: (s.value, TASK_RUN_RESULTS.get(s)) for s in RunStatus}


#: Statuses whose span carries an ``exception`` event.
_WITH_EXCEPTION: Final = frozenset({RunStatus.FAILURE, RunStatus.CRASHED, RunStatus.CANCELLED})


class TaskRunUrl:
    """The ``task_run_url_template`` setting, checked once: the link of a node run.

    Placeholders are :data:`~odibi_observe.conventions.TASK_RUN_URL_PLACEHOLDERS`
    (``https://grafana/d/odibi-node?var-node={node}&run={run_id}``). A template that cannot be
    used — bad ``{}`` syntax, an unknown placeholder — is warned about once, here, and no span
    gets the attribute: a broken link setting must not cost a span. Values are inserted as they
    are recorded; quoting them for a URL is the template's business (names are ASCII-safe in
    the common case).
    """

    def __init__(self, template: str | None) -> None:
        self.template: str | None = None
        self.problem: str | None = None
        if not template:
            return
        problem = _template_problem(template)
        if problem is not None:
            self.problem = problem
            if template in _warned_templates:
                return
            _warned_templates.add(template)
            log.warning(
                "odibi-observe: task_run_url_template=%r is unusable (%s); node spans "
                "are exported without %s",
                template,
                problem,
                CICD_TASK_RUN_URL,
            )
            return
        self.template = template

    def render(self, record: RunRecord) -> str | None:
        """The link of ``record``'s run, or None (no usable template). Never raises."""
        if self.template is None:
            return None
        try:
            return self.template.format(
                run_id=record.run_id,
                pipeline=record.pipeline,
                node=record.node,
                project=record.project,
                pipeline_run_id=record.pipeline_run_id or "",
                environment=record.environment,
            )
        except Exception:  # a format spec that fits the check's values but not this run's
            return None


#: Templates already warned about: once per process, however often sinks are rebuilt.
_warned_templates: set[str] = set()


def _template_problem(template: str) -> str | None:
    """Why ``template`` cannot be formatted with the placeholders, or None."""
    try:
        names = [
            field for _, field, _, _ in string.Formatter().parse(template) if field is not None
        ]
    except ValueError as exc:
        return str(exc)
    for name in names:
        base = name.split(".", 1)[0].split("[", 1)[0]
        if base not in TASK_RUN_URL_PLACEHOLDERS:
            return f"unknown placeholder {{{name}}}; use " + ", ".join(
                f"{{{p}}}" for p in TASK_RUN_URL_PLACEHOLDERS
            )
    try:
        template.format(**dict.fromkeys(TASK_RUN_URL_PLACEHOLDERS, "x"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _error_description(record: RunRecord) -> str:
    if record.error_type and record.error_message:
        text = f"{record.error_type}: {record.error_message}"
    else:
        text = record.error_type or record.error_message or f"node run {record.status.value}"
    if len(text) > MAX_STATUS_DESCRIPTION:
        text = text[: MAX_STATUS_DESCRIPTION - 1] + "…"
    return text


def _parse_id(value: str, width: int, name: str) -> int:
    try:
        number = int(value, 16)
    except ValueError:
        number = 0
    if len(value) != width or number == 0:
        raise ValueError(f"{name} {value!r} is not {width} hex digits (and non-zero)")
    return number
