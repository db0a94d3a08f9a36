"""Decoded OTLP spans (JSON objects, in any of the dialects trace stores write) → TraceRuns.

OTLP/JSON has cousins: the Collector's ``file`` exporter writes hex ids and integer enums
(``resourceSpans``/``scopeSpans``); Tempo's trace-by-id API answers in protobuf's JSON mapping,
with base64 ids, enum *names* and ``batches`` instead of ``resourceSpans``; older writers say
``instrumentationLibrarySpans``. Reconciliation must read all of them, so this decoder is
lenient about the envelope and strict about what it compares: a span whose ``odibi.run_id``
is not a string cannot be matched and is reported; a span whose ``odibi.rows_processed`` is not
an integer is kept, with rows left out of the comparison (``TraceRun.unchecked``), and reported.

This is the general path. :mod:`~odibi_observe.reconcile.otlp_files` scans well-formed lines
of the common shape much faster and falls back to this decoder for everything else.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from typing import Any, Final

from odibi_observe.conventions import FIELDS, RESOURCE_HOST, RESOURCE_PID, USER_ATTRIBUTE_PREFIX
from odibi_observe.reconcile.model import (
    FUTURE_SKEW_NS,
    ReadLog,
    ReadRange,
    TraceRun,
    iso_ns,
    normalize_status,
)


def _attr(field: Any) -> str:
    name = field.attribute
    assert isinstance(name, str)
    return name


A_RUN_ID: Final = _attr(FIELDS.run_id)
A_PROJECT: Final = _attr(FIELDS.project)
A_PIPELINE: Final = _attr(FIELDS.pipeline)
A_PIPELINE_RUN_ID: Final = _attr(FIELDS.pipeline_run_id)
A_NODE: Final = _attr(FIELDS.node)
A_ATTEMPT: Final = _attr(FIELDS.attempt)
A_STATUS: Final = _attr(FIELDS.status)
A_ROWS: Final = _attr(FIELDS.rows)
A_DURATION: Final = _attr(FIELDS.duration)
A_ENVIRONMENT: Final = _attr(FIELDS.environment)
A_SUGGESTIONS: Final = _attr(FIELDS.suggestions)
A_ERROR_TYPE: Final = _attr(FIELDS.error)
SERVICE_NAME: Final = "service.name"

#: OTLP's status code for ERROR, as the integer and as protobuf's enum name.
_ERROR_CODES: Final = (2, "STATUS_CODE_ERROR")


class SpanProblem(ValueError):
    """A span that carries ``odibi.run_id`` but cannot be used at all (the message says why)."""


# ------------------------------------------------------------------------------ the envelope


def iter_request_spans(
    data: Any,
) -> Iterator[tuple[dict[str, Any], Mapping[str, Any]]]:
    """``(resource attributes, span object)`` for every span of an OTLP trace document.

    Accepts an ``ExportTraceServiceRequest`` (``resourceSpans``), Tempo's v1 trace response
    (``batches``), its v2 response (``{"trace": {...}}``) and the pre-1.0 scope key
    ``instrumentationLibrarySpans``. Raises ``ValueError`` for anything that is not one.
    """
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if "trace" in data and isinstance(data["trace"], dict):
        data = data["trace"]
    resource_spans = data.get("resourceSpans", data.get("batches"))
    if resource_spans is None:
        if not data:
            return  # Tempo answers {} for a trace it does not have
        raise ValueError("no resourceSpans (or batches) in the document")
    if not isinstance(resource_spans, list):
        raise ValueError("resourceSpans is not a list")
    for group in resource_spans:
        if not isinstance(group, dict):
            raise ValueError("a resourceSpans entry is not an object")
        resource = group.get("resource") or {}
        attributes = decode_attributes(resource.get("attributes") if isinstance(
            resource, dict) else None)
        scopes = group.get("scopeSpans", group.get("instrumentationLibrarySpans")) or []
        if not isinstance(scopes, list):
            raise ValueError("scopeSpans is not a list")
        for scope in scopes:
            spans = scope.get("spans") if isinstance(scope, dict) else None
            if not isinstance(spans, list):
                continue
            for span in spans:
                if isinstance(span, dict):
                    yield attributes, span


def decode_attributes(pairs: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` objects → ``{key: python value}`` (ints from decimal strings too)."""
    out: dict[str, Any] = {}
    if not isinstance(pairs, list):
        return out
    for pair in pairs:
        if isinstance(pair, dict) and isinstance(pair.get("key"), str):
            out[pair["key"]] = decode_value(pair.get("value"))
    return out


def decode_value(value: Any) -> Any:
    """One OTLP ``AnyValue`` in JSON form → a Python value (arrays as tuples)."""
    if not isinstance(value, dict) or not value:
        return None
    kind, raw = next(iter(value.items()))
    if kind == "stringValue":
        return raw if isinstance(raw, str) else _Wrong("stringValue", raw)
    if kind == "intValue":
        try:
            return int(raw) if not isinstance(raw, bool) else _Wrong("intValue", raw)
        except (TypeError, ValueError):
            return _Wrong("intValue", raw)
    if kind == "boolValue":
        return bool(raw)
    if kind == "doubleValue":
        try:
            return float(raw)
        except (TypeError, ValueError):
            return _Wrong("doubleValue", raw)
    if kind == "arrayValue":
        values = raw.get("values", []) if isinstance(raw, dict) else []
        return tuple(decode_value(v) for v in values)
    if kind == "kvlistValue":
        return decode_attributes(raw.get("values") if isinstance(raw, dict) else None)
    if kind == "bytesValue":
        return raw
    return None


class _Wrong:
    """A value whose JSON does not match its declared OTLP type (``{"intValue": "ten"}``)."""

    __slots__ = ("kind", "raw")

    def __init__(self, kind: str, raw: Any) -> None:
        self.kind, self.raw = kind, raw

    def __repr__(self) -> str:
        return f"{self.kind} {self.raw!r}"


def decode_id(value: Any, width: int) -> str:
    """A trace or span id as lower-case hex: hex as OTLP/JSON writes it, or base64 as
    protobuf's JSON mapping (Tempo) writes it. Raises ``ValueError`` for anything else."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"id {value!r} is not a string")
    if len(value) == width:
        try:
            int(value, 16)
            return value.lower()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) * 2 != width:
        raise ValueError(f"id {value!r} is neither {width} hex digits nor base64 of "
                         f"{width // 2} bytes")
    return raw.hex()


def _type_name(value: Any) -> str:
    """How a wrong value is shown: its OTLP type and (a bounded repr of) the value."""
    if isinstance(value, _Wrong):
        return repr(value)[:80]
    text = repr(value)
    return f"{_otlp_type(value)} {text if len(text) <= 60 else text[:59] + '…'}"


def _otlp_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolValue"
    if isinstance(value, int):
        return "intValue"
    if isinstance(value, float):
        return "doubleValue"
    if isinstance(value, str):
        return "stringValue"
    if isinstance(value, tuple):
        return "arrayValue"
    return type(value).__name__


# -------------------------------------------------------------------------------- the span


def span_to_run(
    span: Mapping[str, Any],
    resource: Mapping[str, Any],
    *,
    origin: str,
    source: str,
    read_range: ReadRange,
    log: ReadLog,
) -> TraceRun | None:
    """The :class:`TraceRun` of one decoded span, or None (counted or reported in ``log``).

    None for a span that is not an odibi node span (counted as ignored), that is outside the
    read range (counted), or that carries ``odibi.run_id`` but cannot be used (reported).
    """
    attributes = decode_attributes(span.get("attributes"))
    run_id = attributes.get(A_RUN_ID)
    if run_id is None:
        log.ignored_spans += 1
        return None
    try:
        return _to_run(span, resource, attributes, run_id, origin=origin, source=source,
                       read_range=read_range, log=log)
    except SpanProblem as exc:
        log.add_error(source, origin, str(exc))
        return None


def _to_run(
    span: Mapping[str, Any],
    resource: Mapping[str, Any],
    attributes: dict[str, Any],
    run_id: Any,
    *,
    origin: str,
    source: str,
    read_range: ReadRange,
    log: ReadLog,
) -> TraceRun | None:
    if not isinstance(run_id, str) or not run_id:
        raise SpanProblem(f"{A_RUN_ID} is {_type_name(run_id)}, expected a non-empty "
                          "stringValue; span skipped")
    where = f"run {run_id}"
    try:
        trace_id = decode_id(span.get("traceId"), 32)
        span_id = decode_id(span.get("spanId"), 16)
        parent_raw = span.get("parentSpanId")
        parent = decode_id(parent_raw, 16) if parent_raw else None
    except ValueError as exc:
        raise SpanProblem(f"{where}: {exc}; span skipped") from None
    try:
        start = int(span.get("startTimeUnixNano") or 0)
        end = int(span.get("endTimeUnixNano") or 0)
    except (TypeError, ValueError):
        raise SpanProblem(f"{where}: start/end time is not a number; span skipped") from None
    if start <= 0 or end <= 0:
        raise SpanProblem(f"{where}: span has no start or end time; span skipped")
    if start > read_range.now_ns + FUTURE_SKEW_NS:
        raise SpanProblem(f"{where}: span starts in the future ({iso_ns(start)}); "
                          "span skipped (check the producing host's clock)")
    if not read_range.start_ns <= start < read_range.end_ns:
        log.outside_range += 1
        return None

    unchecked: list[str] = []

    def problem(message: str, field_name: str | None) -> None:
        log.add_error(source, origin, f"{where}: {message}")
        if field_name:
            unchecked.append(field_name)

    raw_status = attributes.get(A_STATUS)
    if raw_status is None:
        status_code = (span.get("status") or {}).get("code")
        status = "FAILURE" if status_code in _ERROR_CODES else "SUCCESS"
    elif isinstance(raw_status, str):
        status = normalize_status(raw_status)
    else:
        problem(f"{A_STATUS} is {_type_name(raw_status)}, expected stringValue; status not "
                "compared", "status")
        status = ""

    raw_rows = attributes.get(A_ROWS)
    rows: int | None = None
    if isinstance(raw_rows, int) and not isinstance(raw_rows, bool):
        rows = raw_rows
    elif raw_rows is not None:
        problem(f"{A_ROWS} is {_type_name(raw_rows)}, expected intValue; rows not compared",
                "rows")

    if end < start:
        problem("span ends before it starts; duration not compared", "duration")
        end = start

    def text(key: str, default: str = "") -> str:
        value = attributes.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            problem(f"{key} is {_type_name(value)}, expected stringValue", None)
            return str(getattr(value, "raw", value))
        return value

    attempt_raw = attributes.get(A_ATTEMPT, 1)
    attempt = attempt_raw if isinstance(attempt_raw, int) and not isinstance(
        attempt_raw, bool) else 1

    error_type, error_message = _error(span, attributes)
    suggestions_raw = attributes.get(A_SUGGESTIONS) or ()
    suggestions = tuple(str(s) for s in suggestions_raw) if isinstance(
        suggestions_raw, tuple) else (str(suggestions_raw),)
    user = {k[len(USER_ATTRIBUTE_PREFIX):]: _plain(v) for k, v in attributes.items()
            if k.startswith(USER_ATTRIBUTE_PREFIX)}
    pid_raw = resource.get(RESOURCE_PID, 0)
    return TraceRun(
        run_id=run_id, trace_id=trace_id, span_id=span_id, start_ns=start, end_ns=end,
        status=status, rows=rows, pipeline=text(A_PIPELINE), node=text(A_NODE),
        project=text(A_PROJECT), environment=text(A_ENVIRONMENT),
        parent_span_id=parent, pipeline_run_id=text(A_PIPELINE_RUN_ID) or None,
        attempt=attempt, error_type=error_type, error_message=error_message,
        suggestions=suggestions,
        attributes_json=json.dumps(user, ensure_ascii=False, default=str) if user else None,
        host=str(resource.get(RESOURCE_HOST) or ""),
        pid=pid_raw if isinstance(pid_raw, int) and not isinstance(pid_raw, bool) else 0,
        service_name=str(resource.get(SERVICE_NAME) or ""),
        unchecked=",".join(unchecked), origin=origin,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, _Wrong):
        return value.raw
    return value


def _error(span: Mapping[str, Any], attributes: Mapping[str, Any]) -> tuple[str | None,
                                                                            str | None]:
    """The error type and message: from the ``exception`` event (what the OTel sink writes),
    else ``error.type`` and the span status message."""
    error_type = attributes.get(A_ERROR_TYPE)
    message = None
    for event in span.get("events") or ():
        if isinstance(event, dict) and event.get("name") == "exception":
            event_attributes = decode_attributes(event.get("attributes"))
            error_type = error_type or event_attributes.get("exception.type")
            message = event_attributes.get("exception.message")
            break
    if message is None:
        status = span.get("status") or {}
        if isinstance(status, dict) and status.get("code") in _ERROR_CODES:
            message = status.get("message") or None
    return (str(error_type) if error_type else None,
            str(message) if message is not None else None)
