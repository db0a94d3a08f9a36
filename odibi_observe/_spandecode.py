"""The one decoder of odibi node spans: an OTLP span → the run's fields.

Three readers turn a node span back into a run: the sidecar's OTLP receiver (protobuf or
OTLP/JSON bodies, stored in the span ledger), reconciliation's OTLP-JSON files and Tempo
(JSON in any of the dialects trace stores write). They must agree on every fact of the run —
the same span cannot be ``SUCCESS`` with 7 rows in the ledger and something else in a file —
so they all decode through here, with one rule per field, and only what each *does* with a
decoded span (store a row, compare a run) differs.

Two input forms, one function each:

* :func:`decode_view` — a span of a protobuf ``ExportTraceServiceRequest`` as
  :func:`odibi_observe._otlp_json.iter_spans` presents it (what the receiver gets, whether the
  body was protobuf or OTLP/JSON);
* :func:`decode_json` — a span object of an OTLP-JSON document as :func:`iter_request_spans`
  yields it: hex ids (OTLP/JSON) or base64 ids (protobuf's JSON mapping, Tempo), integer enums
  or enum names.

Both map attributes to fields with the table in :mod:`~odibi_observe.conventions` and apply
the same rules:

* a span without ``odibi.run_id`` is not a node span (``None``);
* a span whose ``run_id``, ``traceId``/``spanId`` or start time is unusable cannot be keyed or
  placed in time: :class:`SpanProblem`, with a message that says why;
* an attribute of the wrong type (``odibi.rows_processed`` as a string, say) is left out
  (``None``) and described in :attr:`NodeSpan.wrong`; the rest of the span is kept. So is a
  malformed ``parentSpanId``. Integers must be integers, not booleans or decimal text: a
  guessed conversion would make one reader disagree with the catalog in ways reconciliation
  would report as the pipeline's fault;
* the status is ``odibi.status``, or — for a span without it — ``FAILURE`` when the OTLP
  status is ``ERROR``, else ``SUCCESS``; the error type is ``error.type``, else the
  ``exception`` event's type, and the message the event's, else the ERROR status message.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, NamedTuple

from odibi_observe._otlp_json import SpanView
from odibi_observe.conventions import (
    FIELDS,
    RESOURCE_HOST,
    RESOURCE_PID,
    RESOURCE_SERVICE_NAME,
    USER_ATTRIBUTE_PREFIX,
    Field,
    RunStatus,
)

__all__ = [
    "INT_FIELDS",
    "TEXT_FIELDS",
    "NodeSpan",
    "SpanProblem",
    "attribute_of",
    "decode_attributes",
    "decode_json",
    "decode_view",
    "describe_value",
    "iter_request_spans",
    "resource_identity",
]


def attribute_of(field: Field) -> str:
    """The span attribute that carries ``field`` (from the conventions table)."""
    if field.attribute is None:  # pragma: no cover - the conventions table is static
        raise LookupError(f"field {field!r} has no span attribute in the conventions")
    return field.attribute


#: The attribute that makes a span an odibi node span, and the run it records.
A_RUN_ID: Final = attribute_of(FIELDS.run_id)
#: The attributes decoded with a rule of their own (the others by TEXT_FIELDS, INT_FIELDS).
A_STATUS, A_ROWS, A_ERROR_TYPE, A_SUGGESTIONS = (
    attribute_of(field) for field in (FIELDS.status, FIELDS.rows, FIELDS.error, FIELDS.suggestions)
)
#: The resource attribute naming the service (OTel semantic conventions).
SERVICE_NAME: Final = RESOURCE_SERVICE_NAME
#: The OTLP field of the parent id, as :attr:`NodeSpan.wrong` names it when it is malformed.
PARENT_SPAN_ID: Final = "parentSpanId"

#: OTLP's status code for ERROR, as the integer and as protobuf's enum name.
_ERROR_CODES: Final = (2, "STATUS_CODE_ERROR")

#: The text fields of a node span: NodeSpan field name, and the conventions' Field (its span
#: attribute, its catalog column) — the one mapping the decoder, the ledger's writer and its
#: reader share.
TEXT_FIELDS: Final = (
    ("project", FIELDS.project),
    ("pipeline", FIELDS.pipeline),
    ("pipeline_run_id", FIELDS.pipeline_run_id),
    ("node", FIELDS.node),
    ("environment", FIELDS.environment),
)
#: The integer fields, likewise.
INT_FIELDS: Final = (
    ("rows", FIELDS.rows),
    ("duration_ms", FIELDS.duration),
    ("attempt", FIELDS.attempt),
)


class SpanProblem(ValueError):
    """A span that carries ``odibi.run_id`` but cannot be used at all (the message says why)."""


class NodeSpan(NamedTuple):
    """The run fields of one odibi node span, whatever form it arrived in.

    Ids are lower-case hex. A field is ``None`` when the span does not carry it *or* carried
    a value of the wrong type; ``wrong`` tells the two apart (attribute name → "is
    stringValue 'ten', expected intValue"). ``end_ns`` is as sent, even when it lies before
    ``start_ns`` (each reader says what that costs it). ``resource`` holds the decoded
    resource attributes.
    """

    run_id: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    start_ns: int
    end_ns: int
    status: str
    rows: int | None
    duration_ms: int | None
    attempt: int | None
    project: str | None
    pipeline: str | None
    pipeline_run_id: str | None
    node: str | None
    environment: str | None
    error_type: str | None
    error_message: str | None
    suggestions: tuple[str, ...]
    user_attributes: dict[str, Any]
    host: str
    pid: int
    service_name: str
    resource: Mapping[str, Any]
    wrong: Mapping[str, str]


# ------------------------------------------------------------------------ the two input forms


def decode_view(span: SpanView) -> NodeSpan | None:
    """The node span of one decoded protobuf span; None if it is not an odibi node span."""
    if span.attributes.get(A_RUN_ID) is None:
        return None
    exception = next((attributes for name, attributes in span.events if name == "exception"), None)
    return _node_span(
        span.attributes,
        span.resource,
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent=span.parent_span_id,
        start=span.start_ns,
        end=span.end_ns,
        failed=span.status_code in _ERROR_CODES,
        status_message=span.status_message,
        exception=exception,
        id_of=_hex_id,
    )


def decode_json(span: Mapping[str, Any], resource: Mapping[str, Any]) -> NodeSpan | None:
    """The node span of one OTLP-JSON span object (``resource``: its decoded resource
    attributes); None if it is not an odibi node span."""
    attributes = decode_attributes(span.get("attributes"))
    if attributes.get(A_RUN_ID) is None:
        return None
    exception = None
    for event in span.get("events") or ():
        if isinstance(event, dict) and event.get("name") == "exception":
            exception = decode_attributes(event.get("attributes"))
            break
    status = span.get("status") or {}
    failed = isinstance(status, dict) and status.get("code") in _ERROR_CODES
    message = status.get("message") if isinstance(status, dict) else None
    return _node_span(
        attributes,
        resource,
        trace_id=span.get("traceId"),
        span_id=span.get("spanId"),
        parent=span.get("parentSpanId") or None,
        start=span.get("startTimeUnixNano"),
        end=span.get("endTimeUnixNano"),
        failed=failed,
        status_message=message if isinstance(message, str) else "",
        exception=exception,
        id_of=decode_id,
    )


# ----------------------------------------------------------------------------- the mapping


def _node_span(
    attributes: Mapping[str, Any],
    resource: Mapping[str, Any],
    *,
    trace_id: Any,
    span_id: Any,
    parent: Any,
    start: Any,
    end: Any,
    failed: bool,
    status_message: str,
    exception: Mapping[str, Any] | None,
    id_of: Callable[[Any, int, str], str],
) -> NodeSpan:
    """The fields of a node span from its decoded parts; the rules are the module's."""
    run_id = attributes.get(A_RUN_ID)
    if not isinstance(run_id, str) or not run_id.strip():
        raise SpanProblem(
            f"{A_RUN_ID} is {describe_value(run_id)}, expected a non-empty "
            "stringValue; span skipped"
        )
    where = _where(run_id)
    ids = []
    for name, value, width in (("traceId", trace_id, 32), ("spanId", span_id, 16)):
        try:
            ids.append(id_of(value, width, name))
        except ValueError as exc:
            raise SpanProblem(f"{where}{exc}; span skipped") from None
    try:
        start_ns, end_ns = int(start or 0), int(end or 0)
    except (TypeError, ValueError):
        raise SpanProblem(f"{where}start/end time is not a number; span skipped") from None
    if start_ns <= 0:
        raise SpanProblem(f"{where}the span has no start time; span skipped")
    wrong: dict[str, str] = {}
    fields: dict[str, Any] = {}
    for name, field in TEXT_FIELDS:
        fields[name] = _typed(attributes, attribute_of(field), str, "stringValue", wrong)
    for name, field in INT_FIELDS:
        fields[name] = _typed(attributes, attribute_of(field), int, "intValue", wrong)
    parent_id = None
    if parent:
        try:
            parent_id = id_of(parent, 16, PARENT_SPAN_ID)
        except ValueError as exc:
            wrong[PARENT_SPAN_ID] = f"{exc}; parent left out"
    status = _typed(attributes, A_STATUS, str, "stringValue", wrong)
    if status is None and A_STATUS not in wrong:
        status = RunStatus.FAILURE.value if failed else RunStatus.SUCCESS.value
    error_type = _typed(attributes, A_ERROR_TYPE, str, "stringValue", wrong)
    message = None
    if exception is not None:
        error_type = error_type or _text_or_none(exception.get("exception.type"))
        message = exception.get("exception.message")
    if message is None and failed:
        message = status_message or None
    host, pid, service = resource_identity(resource)
    return NodeSpan(
        run_id=run_id,
        trace_id=ids[0],
        span_id=ids[1],
        parent_span_id=parent_id,
        start_ns=start_ns,
        end_ns=end_ns,
        status=status or "",
        error_type=error_type,
        error_message=None if message is None else str(getattr(message, "raw", message)),
        suggestions=_suggestions(attributes.get(A_SUGGESTIONS)),
        user_attributes={
            k[len(USER_ATTRIBUTE_PREFIX) :]: _plain(v)
            for k, v in attributes.items()
            if k.startswith(USER_ATTRIBUTE_PREFIX)
        },
        host=host,
        pid=pid,
        service_name=service,
        resource=resource,
        wrong=wrong,
        **fields,
    )


def _typed(
    attributes: Mapping[str, Any], attribute: str, kind: type, otlp: str, wrong: dict[str, str]
) -> Any:
    """The attribute's value if it has type ``kind`` (an int is never a bool), else None,
    describing a wrong value in ``wrong``."""
    value = attributes.get(attribute)
    if value is None or (type(value) is kind):
        return value
    wrong[attribute] = f"is {describe_value(value)}, expected {otlp}"
    return None


def resource_identity(resource: Mapping[str, Any]) -> tuple[str, int, str]:
    """``(host, pid, service name)`` of a resource: what joins a span to its process."""
    pid = resource.get(RESOURCE_PID, 0)
    return (
        str(resource.get(RESOURCE_HOST) or ""),
        pid if isinstance(pid, int) and not isinstance(pid, bool) else 0,
        str(resource.get(SERVICE_NAME) or ""),
    )


def _where(run_id: Any) -> str:
    if not isinstance(run_id, str):
        return ""
    return f"run {run_id if len(run_id) <= 40 else run_id[:39] + '…'}: "


def _text_or_none(value: Any) -> str | None:
    return str(getattr(value, "raw", value)) if value else None


def _suggestions(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, tuple):
        return tuple(str(s) for s in value)
    return (str(value),)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, _Wrong):
        return value.raw
    return value


# ------------------------------------------------------------------------------------ ids


def _hex_id(value: Any, width: int, name: str) -> str:
    """An id already in hex (a protobuf span's bytes as :class:`SpanView` shows them)."""
    if not isinstance(value, str) or len(value) != width or not _is_hex(value):
        raise ValueError(f"{name} {value!r} is not {width // 2} bytes in hex")
    return _nonzero(value.lower(), name)


def decode_id(value: Any, width: int, name: str = "id") -> str:
    """A trace or span id as lower-case hex: hex as OTLP/JSON writes it, or base64 as
    protobuf's JSON mapping (Tempo) writes it. Raises ``ValueError`` for anything else."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} {value!r} is not a string")
    if len(value) == width and _is_hex(value):
        return _nonzero(value.lower(), name)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) * 2 != width:
        raise ValueError(
            f"{name} {value!r} is neither {width} hex digits nor base64 of {width // 2} bytes"
        )
    return _nonzero(raw.hex(), name)


def _is_hex(value: str) -> bool:
    """Hex digits only (``int(value, 16)`` would also take ``0x``, signs and underscores)."""
    return not value.strip("0123456789abcdefABCDEF")


def _nonzero(hex_id: str, name: str) -> str:
    """An all-zero id is OTLP's "invalid id": it cannot key a span."""
    if hex_id.strip("0") == "":
        raise ValueError(f"{name} must be {len(hex_id) // 2} non-zero bytes")
    return hex_id


# ---------------------------------------------------------------------- the OTLP-JSON envelope


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
        attributes = decode_attributes(
            resource.get("attributes") if isinstance(resource, dict) else None
        )
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
            out[pair["key"]] = _decode_value(pair.get("value"))
    return out


def _decode_value(value: Any) -> Any:
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
        return tuple(_decode_value(v) for v in values)
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


def describe_value(value: Any) -> str:
    """How a wrong value is shown: its OTLP type and (a bounded repr of) the value."""
    if value is None:
        return "missing"
    if isinstance(value, _Wrong):
        return repr(value)[:80]
    text = repr(value)
    return f"{_otlp_type(value)} {text if len(text) <= 60 else text[:59] + '…'}"


#: The OTLP ``AnyValue`` kind of each Python type a decoded value can have (bool before int:
#: a bool is an int to ``isinstance``).
_OTLP_TYPES: Final = (
    (bool, "boolValue"),
    (int, "intValue"),
    (float, "doubleValue"),
    (str, "stringValue"),
    (bytes, "bytesValue"),
    (tuple, "arrayValue"),
    (dict, "kvlistValue"),
)


def _otlp_type(value: Any) -> str:
    return next(
        (name for kind, name in _OTLP_TYPES if isinstance(value, kind)), type(value).__name__
    )
