"""OTLP/JSON: the span encoding of the OpenTelemetry Collector's ``file`` exporter.

The embedded default writes traces to a local file instead of a collector, and the reconciler
later reads traces back from such files (ours, or ones a real Collector wrote). Both only work
if the file is byte-for-byte the format the Collector writes, so this module follows the
OTLP/JSON rules of the OTLP specification exactly rather than inventing a log format:

* one ``ExportTraceServiceRequest`` JSON object per line (JSON Lines, no newline inside);
* lowerCamelCase field names (``resourceSpans``, ``scopeSpans``, ``startTimeUnixNano``);
* ``traceId`` / ``spanId`` / ``parentSpanId`` as lower-case **hex** strings — the one place
  where OTLP/JSON deviates from the standard protobuf JSON mapping, which would use base64;
* enums as integers (``"kind": 1``, ``"code": 2``), 64-bit integers as decimal strings.

Spans render to exactly what the protobuf JSON mapping makes of the SDK's own OTLP message for
them (a test compares the two on varied spans); the JSON is built directly for speed.

:class:`SpanView` is a plain, decoded view of one span (hex ids, Python attribute values). Tests
and the reconciliation engine compare spans through it, whatever transport delivered them.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import math
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = [
    "OtlpJsonFileSpanExporter",
    "OtlpJsonHttpSpanExporter",
    "SpanView",
    "decode_request_json",
    "encode_request_json",
    "encode_spans_json",
    "iter_spans",
    "parse_otlp_json",
    "read_spans",
]

log = logging.getLogger(__name__)

#: OTLP fields that hold trace/span ids. OTLP/JSON writes them as hex, protobuf JSON as base64.
#: The names are unique to ids across every OTLP message (spans, links, exemplars, log records),
#: so converting them wherever they occur is safe.
_ID_FIELDS: Final = frozenset({"traceId", "spanId", "parentSpanId"})

_M = TypeVar("_M", bound=Message)


# --------------------------------------------------------------------------------- encoding


def encode_spans_json(spans: Sequence[ReadableSpan]) -> str:
    """Encode ``spans`` as one OTLP/JSON ``ExportTraceServiceRequest`` line (no trailing newline).

    Spans are grouped by resource and instrumentation scope exactly as the SDK's OTLP encoder
    groups them, and each span renders to exactly what ``json_format`` makes of the SDK's
    protobuf message (``tests/test_otlp_json.py`` compares the two on generated spans).

    Why not simply protobuf and ``json_format``: that round trip cost ~90 µs per span, more
    than everything else odibi-observe does for a node run together. Building dicts for
    ``json.dumps`` still cost ~20 µs. So a span is written as text: the fixed fields by
    concatenation, string values through the ``json`` module's own C string encoder, and each
    attribute key's text from a cache (keys recur from run to run; most values do not).
    """
    return _request_text(spans)


def _request_text(spans: Sequence[ReadableSpan], end: str = "") -> str:
    """The request line of :func:`encode_spans_json` with ``end`` after it, in one string."""
    # Grouped by resource equality, as the SDK groups them, but without Resource.__hash__: it
    # serialises the attributes to JSON, which cost more than encoding the span itself. The
    # key of a resource object is computed once per call (the spans keep it alive meanwhile).
    grouped: dict[Hashable, dict[InstrumentationScope | None, list[str]]] = {}
    resources: dict[Hashable, Resource] = {}
    keys: dict[int, Hashable] = {}
    # Consecutive spans nearly always share their resource and scope objects (a sink's batch
    # shares both): the list of the previous span is then reused without any lookup (the
    # first span, with no list yet, always looks up).
    last_resource: Resource | None = None
    last_scope: InstrumentationScope | None = None
    encoded: list[str] = []
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        if resource is not last_resource or scope is not last_scope or not encoded:
            key = keys.get(id(resource))
            if key is None:
                key = keys[id(resource)] = (
                    frozenset(resource.attributes.items()),
                    resource.schema_url,
                )
            if key not in grouped:
                grouped[key], resources[key] = {}, resource
            encoded = grouped[key].setdefault(scope, [])
            last_resource, last_scope = resource, scope
        encoded.append(_span_text(span))
    # The request is assembled as one list of pieces and joined once: a batch of 512 node
    # spans is about 0.6 MB of text, and each nested join or f-string around it was another
    # copy of all of it (together more than a microsecond per span).
    pieces = ['{"resourceSpans":[']
    for number, (key, scopes) in enumerate(grouped.items()):
        resource = resources[key]
        pieces.append(
            f'{"," if number else ""}{{"resource":{_resource_text(resource)},"scopeSpans":['
        )
        for scope_number, (scope, texts) in enumerate(scopes.items()):
            schema = (
                f',"schemaUrl":{_str(scope.schema_url)}'
                if scope is not None and scope.schema_url
                else ""
            )
            pieces.append(
                f'{"," if scope_number else ""}{{"scope":{_dumps(_scope_json(scope))},"spans":['
            )
            pieces += _comma_separated(texts)
            pieces.append(f"]{schema}}}")
        schema = f',"schemaUrl":{_str(resource.schema_url)}' if resource.schema_url else ""
        pieces.append(f"]{schema}}}")
    pieces.append(f"]}}{end}")
    # A string without U+2028/U+2029 comes back from str.replace unchanged, not copied.
    return _one_line("".join(pieces))


def _comma_separated(texts: list[str]) -> list[str]:
    """``texts`` with a ``","`` between each two, by slice assignment (no loop in Python)."""
    out = [","] * (2 * len(texts) - 1)
    out[::2] = texts
    return out


#: The ``json`` module's string encoder (its C implementation where available): quotes and
#: escapes exactly as ``json.dumps(..., ensure_ascii=False)`` does.
_str: Final[Callable[[str], str]] = json.encoder.encode_basestring


#: One encoder for every call: ``json.dumps`` with options builds a new encoder each time.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_dumps: Final = _ENCODER.encode


def _one_line(text: str) -> str:
    # json.dumps escapes \n and \r but not U+2028/U+2029, which str.splitlines() (and some JSON
    # Lines readers) treat as line breaks. Escape them the way Go's encoding/json does, so one
    # request is always one line for every reader.
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


_SPAN_KINDS: Final = {kind: kind.value + 1 for kind in SpanKind}  # OTLP enum: INTERNAL = 1
_FLAGS_HAS_IS_REMOTE: Final = 0x100
_FLAGS_IS_REMOTE: Final = 0x200


def _span_text(span: ReadableSpan) -> str:
    """One span as the protobuf JSON mapping renders the SDK's OTLP message (defaults omitted).

    Each property of the span is read once (they are Python calls; ``attributes``,
    ``events`` and ``links`` build a new view or tuple per read); the common values — no trace
    state, an ``INTERNAL`` span, an unset status — are decided by identity, without the Python
    ``__hash__`` of an enum member.
    """
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    # The Collector always writes parentSpanId, empty for a root span; protobuf JSON would omit
    # it. Matching the Collector keeps our files and its files the same shape.
    parts = [f'{{"traceId":"{ctx.trace_id:032x}","spanId":"{ctx.span_id:016x}"']
    state = ctx.trace_state
    trace_state = ",".join(f"{k}={v}" for k, v in state.items()) if state else ""
    if trace_state:
        parts.append(f',"traceState":{_str(trace_state)}')
    parts.append(f',"parentSpanId":"{parent.span_id:016x}"' if parent else ',"parentSpanId":""')
    name = span.name
    if name:
        parts.append(f',"name":{_str(name)}')
    kind = span.kind
    parts.append(f',"kind":{1 if kind is SpanKind.INTERNAL else _SPAN_KINDS[kind]}')
    start, end = span.start_time, span.end_time
    if start:
        parts.append(f',"startTimeUnixNano":"{start}"')
    if end:
        parts.append(f',"endTimeUnixNano":"{end}"')
    attributes = span.attributes
    if attributes:
        parts.append(f',"attributes":[{_attributes_text(attributes)}]')
    if span.dropped_attributes:  # read twice only when something was dropped
        parts.append(f',"droppedAttributesCount":{span.dropped_attributes}')
    events = span.events
    if events:
        parts.append(f',"events":{_dumps([_event_json(e) for e in events])}')
    if span.dropped_events:  # read twice only when something was dropped
        parts.append(f',"droppedEventsCount":{span.dropped_events}')
    links = span.links
    if links:
        parts.append(f',"links":{_dumps([_link_json(link) for link in links])}')
    if span.dropped_links:  # read twice only when something was dropped
        parts.append(f',"droppedLinksCount":{span.dropped_links}')
    parts.append(f',"status":{_status_text(span.status)},"flags":{_flags(parent)}}}')
    return "".join(parts)


def _status_text(status: Status) -> str:
    description, status_code = status.description, status.status_code
    if status_code is StatusCode.UNSET and not description:
        return "{}"
    code = status_code.value
    if description and code:
        return f'{{"message":{_str(description)},"code":{code}}}'
    if code:
        return f'{{"code":{code}}}'
    return f'{{"message":{_str(description)}}}' if description else "{}"


#: The encoded ``{"key":<key>,"value":`` opening of each attribute key seen. Keys recur (the
#: conventions' names, a project's own attributes) while values mostly do not (run ids,
#: timings), so the key's text is what is worth keeping. Bounded by clearing: keys of user
#: attributes are the user's.
_key_openings: dict[str, str] = {}
_KEY_CACHE_SIZE: Final = 4096


def _key_opening(key: str) -> str:
    if len(_key_openings) >= _KEY_CACHE_SIZE:
        _key_openings.clear()
    text = _key_openings[key] = f'{{"key":{_str(key)},"value":'
    return text


def _attributes_text(attributes: Mapping[str, Any]) -> str:
    """The attributes as the comma-separated ``KeyValue`` objects of OTLP/JSON.

    One loop, no call per attribute for the four exact scalar types (what nearly every span
    attribute is): the text is what ``_dumps`` of :func:`_any_value_json` would give — a
    string through the ``json`` module's encoder, an int as a decimal string, a finite float
    by ``float.__repr__`` (as ``json`` writes it). Anything else (subclasses, sequences,
    non-finite floats, bytes) goes through :func:`_any_value_json` as before.
    """
    texts = []
    for key, value in attributes.items():
        opening = _key_openings.get(key) or _key_opening(key)
        kind = type(value)
        if kind is str:
            texts.append(f'{opening}{{"stringValue":{_str(value)}}}}}')
        elif kind is int:
            texts.append(f'{opening}{{"intValue":"{value}"}}}}')
        elif kind is bool:
            texts.append(f'{opening}{{"boolValue":{"true" if value else "false"}}}}}')
        elif kind is float and math.isfinite(value):
            texts.append(f'{opening}{{"doubleValue":{value!r}}}}}')
        else:
            texts.append(_dumps({"key": key, "value": _any_value_json(value)}))
    return ",".join(texts)


_resource_cache: dict[tuple[tuple[str, Any], ...], str] = {}


def _resource_text(resource: Resource) -> str:
    # Resources are few and immutable, so each is encoded once. The key is the attribute items
    # in order (Resource equality ignores order, and the encoding must not).
    key = tuple(resource.attributes.items())
    cached = _resource_cache.get(key)
    if cached is None:
        if len(_resource_cache) > 1024:
            _resource_cache.clear()
        cached = _resource_cache[key] = _dumps(
            {"attributes": _attributes_json(resource.attributes)} if key else {}
        )
    return cached


def _flags(parent: Any) -> int:
    if parent is not None and parent.is_remote:
        return _FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE
    return _FLAGS_HAS_IS_REMOTE


def _event_json(event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if event.timestamp:
        out["timeUnixNano"] = str(event.timestamp)
    if event.name:
        out["name"] = event.name
    if event.attributes:
        out["attributes"] = _attributes_json(event.attributes)
    if event.dropped_attributes:
        out["droppedAttributesCount"] = event.dropped_attributes
    return out


def _link_json(link: Any) -> dict[str, Any]:
    ctx = link.context
    out: dict[str, Any] = {"traceId": f"{ctx.trace_id:032x}", "spanId": f"{ctx.span_id:016x}"}
    if link.attributes:
        out["attributes"] = _attributes_json(link.attributes)
    if link.dropped_attributes:
        out["droppedAttributesCount"] = link.dropped_attributes
    out["flags"] = _flags(ctx)
    return out


def _scope_json(scope: InstrumentationScope | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if scope is None:
        return out
    if scope.name:
        out["name"] = scope.name
    if scope.version:
        out["version"] = scope.version
    if scope.attributes:
        out["attributes"] = _attributes_json(scope.attributes)
    return out


def _attributes_json(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _any_value_json(value)} for key, value in attributes.items()]


def _any_value_json(value: Any) -> dict[str, Any]:
    """An attribute value as an OTLP ``AnyValue`` in JSON (int64 as a decimal string)."""
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        return {
            "doubleValue": "NaN"
            if math.isnan(value)
            else ("Infinity" if value > 0 else "-Infinity")
        }
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        pairs = [{"key": str(k), "value": _any_value_json(v)} for k, v in value.items()]
        return {"kvlistValue": {"values": pairs} if pairs else {}}
    if isinstance(value, Sequence):
        items = [_any_value_json(v) for v in value]
        return {"arrayValue": {"values": items} if items else {}}  # protobuf omits empty lists
    return {}


def encode_request_json(message: Message) -> str:
    """Render any OTLP export request as one OTLP/JSON line.

    ``json_format`` produces the protobuf JSON mapping (camelCase, int64 as strings); the id
    fields are then rewritten from base64 to hex as OTLP/JSON requires.
    """
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    _convert_ids(data, _b64_to_hex)
    for resource_spans in data.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            spans = scope_spans.get("spans", ())
            scope_spans["spans"] = [_with_parent_field(span) for span in spans]
    return _one_line(_dumps(data))


def decode_request_json(line: str | bytes) -> ExportTraceServiceRequest:
    """Parse one OTLP/JSON line back into an ``ExportTraceServiceRequest`` (hex ids → bytes).

    Unknown fields are ignored, as the OTLP specification requires of receivers, so files from
    newer Collectors still decode.
    """
    return parse_otlp_json(line, ExportTraceServiceRequest())


def parse_otlp_json(text: str | bytes, message: _M) -> _M:
    """Merge the OTLP/JSON ``text`` into ``message`` (any OTLP export request) and return it.

    Every malformed input raises ``ValueError`` (protobuf's own ``ParseError`` is not one), so
    callers handle bad lines with one ``except``.
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("an OTLP/JSON request must be a JSON object")
    _convert_ids(data, _hex_to_b64)
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(f"not an OTLP/JSON {type(message).__name__}: {exc}") from exc
    return message


def _with_parent_field(span: dict[str, Any]) -> dict[str, Any]:
    """Give a root span ``"parentSpanId": ""`` right after its ids, as the Collector writes it.

    Protobuf JSON omits empty fields; the Collector's marshaller always writes the parent id.
    Keeping that shape means a root span looks the same in our files and in the Collector's.
    """
    if "parentSpanId" in span:
        return span
    out: dict[str, Any] = {}
    for key, value in span.items():
        if "parentSpanId" not in out and key not in ("traceId", "spanId", "traceState"):
            out["parentSpanId"] = ""
        out[key] = value
    out.setdefault("parentSpanId", "")
    return out


def _convert_ids(node: Any, convert: Any) -> None:
    """Rewrite every id field below ``node`` in place with ``convert``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = convert(value)
            else:
                _convert_ids(value, convert)
    elif isinstance(node, list):
        for item in node:
            _convert_ids(item, convert)


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _hex_to_b64(value: str) -> str:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"OTLP/JSON id {value!r} is not a hex string") from None
    return base64.b64encode(raw).decode("ascii")


# --------------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class SpanView:
    """One decoded span, with ids as lower-case hex and attribute values as Python values.

    Array attributes are tuples (the form ``RunRecord.attributes`` uses), key-value lists are
    dicts. ``events`` pairs each event's name with its attributes; ``event_times_ns`` holds their
    timestamps in the same order. ``parent_span_id`` is ``None`` for a root span.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]
    scope_name: str
    scope_version: str = ""
    kind: int = 0
    event_times_ns: tuple[int, ...] = field(default=())


def iter_spans(request: ExportTraceServiceRequest) -> Iterator[SpanView]:
    """Yield a :class:`SpanView` per span of ``request``, in request order."""
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            for span in scope_spans.spans:
                yield SpanView(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex() or None,
                    name=span.name,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes=_attributes(span.attributes),
                    status_code=span.status.code,
                    status_message=span.status.message,
                    events=[(e.name, _attributes(e.attributes)) for e in span.events],
                    resource=dict(resource),
                    scope_name=scope.name,
                    scope_version=scope.version,
                    kind=span.kind,
                    event_times_ns=tuple(e.time_unix_nano for e in span.events),
                )


def read_spans(path: str | os.PathLike[str], *, strict: bool = False) -> list[SpanView]:
    """Every span of an OTLP/JSON lines file (ours or a Collector's), in file order.

    A line that does not decode is skipped with a warning (a disk that filled up mid-write
    leaves one), unless ``strict``, which raises ``ValueError`` naming the line instead.
    """
    spans: list[SpanView] = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                request = decode_request_json(line)
            except ValueError as exc:  # json and protobuf parse errors are ValueErrors
                if strict:
                    raise ValueError(f"{os.fspath(path)}:{number}: {exc}") from exc
                log.warning(
                    "skipping undecodable OTLP/JSON line %s:%d: %s", os.fspath(path), number, exc
                )
                continue
            spans.extend(iter_spans(request))
    return spans


def _attributes(pairs: Sequence[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


# -------------------------------------------------------------------------------- exporters


class OtlpJsonFileSpanExporter(SpanExporter):
    """Append one OTLP/JSON line per export to a file — the Collector ``file`` exporter format.

    Each line is written with a single ``O_APPEND`` write, so several processes (the pipeline
    and a sidecar, say) can append to the same file without interleaving their lines. The file
    is opened per call rather than kept open, which keeps the exporter safe across ``fork`` and
    lets external tools rotate the file. Nothing is buffered, so ``force_flush`` has nothing to
    do. An ``OSError`` (full disk, permissions) becomes ``FAILURE`` so callers can retry.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            log.warning("OTLP/JSON file exporter for %s is shut down; batch refused", self.path)
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        data = _request_text(spans, "\n").encode("utf-8")  # the line and its end in one copy
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
                fd = os.open(self.path, flags, 0o666)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
        except OSError as exc:
            log.warning("could not append spans to %s: %s", self.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class OtlpJsonHttpSpanExporter(SpanExporter):
    """OTLP/HTTP with JSON bodies (protocol ``http/json``), which the SDK does not ship.

    ``endpoint`` is the full signal URL (``http://collector:4318/v1/traces``). One POST per
    export, no retries inside: the caller (the event bus) owns retries with backoff, so a
    non-2xx answer or a connection error simply returns ``FAILURE``, with the reason in
    :attr:`last_error` (and at DEBUG in the log: the caller reports it, once, with counts).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        compression: str | None = None,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"OTLP/HTTP endpoint must be an http(s) URL, got {endpoint!r}")
        if compression not in (None, "none", "gzip"):
            raise ValueError(f"unsupported compression {compression!r}: use 'gzip' or None")
        self.endpoint = endpoint
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.compression = None if compression == "none" else compression
        self._shutdown = False
        #: Why the last export failed (``None`` after a success).
        self.last_error: str | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            self.last_error = "the exporter is shut down"
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        body = encode_spans_json(spans).encode("utf-8")
        headers = {**self.headers, "Content-Type": "application/json"}
        if self.compression == "gzip":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.endpoint, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            return self._failed(f"HTTP {exc.code}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # URLError, timeouts and refused connections are OSError subclasses; a peer that
            # answers garbage raises HTTPException.
            return self._failed(str(getattr(exc, "reason", None) or exc) or type(exc).__name__)
        if not 200 <= status < 300:
            return self._failed(f"HTTP {status}")
        self.last_error = None
        return SpanExportResult.SUCCESS

    def _failed(self, reason: str) -> SpanExportResult:
        self.last_error = reason
        log.debug("OTLP/JSON export to %s failed: %s", self.endpoint, reason)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
