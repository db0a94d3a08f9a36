"""Record → span: the finished span of a node run as a pure function of its terminal record.

The trace and span ids were chosen when the node started (see the package docstring), so the
span built here carries the ids its children and the catalog row already have. The attribute
names come from the conventions table. Imports nothing of the OTel sink package.
"""

from __future__ import annotations

from importlib import metadata
from typing import Final

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
    FIELDS,
    INSTRUMENTATION_SCOPE,
    RESOURCE_FIELDS,
    RESOURCE_HOST,
    RESOURCE_PID,
    SPAN_NAME_FORMAT,
    USER_ATTRIBUTE_PREFIX,
    Field,
    RunStatus,
)
from odibi_observe.record import RunRecord


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
    resource = base.merge(Resource({SERVICE_NAME: record.service_name,
                                    RESOURCE_HOST: record.host, RESOURCE_PID: record.pid}))
    if len(_resources) >= 1024:
        _resources.clear()
    _resources[key] = (base, resource)
    return resource


_resources: dict[tuple[int, str, str, int], tuple[Resource, Resource]] = {}


def record_to_span(record: RunRecord, resource: Resource) -> ReadableSpan:
    """Build the finished span of a terminal ``record``; the same record gives the same span.

    ``resource`` is the configured base resource; the record's ``service.name``, ``host.name``
    and ``process.pid`` are merged over it (:func:`record_resource`). Raises ``ValueError`` for
    a record that cannot be a finished span (not terminal, no end time, malformed ids).
    """
    if not record.status.is_terminal or record.ended_ns is None:
        raise ValueError(f"run {record.run_id}: a span needs a terminal record with ended_ns")
    trace_id = _parse_id(record.trace_id, 32, "trace_id")
    span_id = _parse_id(record.span_id, 16, "span_id")
    flags = TraceFlags(TraceFlags.SAMPLED)
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)
    parent = None
    if record.parent_span_id:
        parent = SpanContext(trace_id, _parse_id(record.parent_span_id, 16, "parent_span_id"),
                             is_remote=False, trace_flags=flags)

    status = Status(StatusCode.UNSET)
    events: list[Event] = []
    if record.status in (RunStatus.FAILURE, RunStatus.CRASHED):
        description = _error_description(record)
        status = Status(StatusCode.ERROR, description)
        exception: dict[str, AttributeValue] = {}
        if record.error_type:
            exception[EXCEPTION_TYPE] = record.error_type
        if record.error_message:
            exception[EXCEPTION_MESSAGE] = record.error_message
        if not exception:  # semantic conventions require a type or a message
            exception[EXCEPTION_MESSAGE] = description
        events.append(Event("exception", exception, timestamp=record.ended_ns))

    return ReadableSpan(
        name=SPAN_NAME_FORMAT.format(node=record.node),
        context=context,
        parent=parent,
        resource=record_resource(record, resource),
        attributes=span_attributes(record),
        events=events,
        kind=SpanKind.INTERNAL,
        status=status,
        start_time=record.started_ns,
        end_time=record.ended_ns,
        instrumentation_scope=SCOPE,
    )


def span_attributes(record: RunRecord) -> dict[str, AttributeValue]:
    """The span attributes of ``record``, every key taken from the conventions table."""
    attrs: dict[str, AttributeValue] = {
        _A_RUN_ID: record.run_id,
        _A_PROJECT: record.project,
        _A_PIPELINE: record.pipeline,
    }
    if record.pipeline_run_id:
        attrs[_A_PIPELINE_RUN_ID] = record.pipeline_run_id
    attrs[_A_NODE] = record.node
    attrs[_A_ATTEMPT] = record.attempt
    attrs[_A_STATUS] = record.status.value
    if record.rows_processed is not None:
        attrs[_A_ROWS] = record.rows_processed
    if record.duration_ms is not None:
        attrs[_A_DURATION_MS] = record.duration_ms
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
    for key, value in record.attributes.items():
        attrs[USER_ATTRIBUTE_PREFIX + key] = value
    return attrs


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
