"""Builders shared by the reconciliation tests (this module holds no tests).

Runs are written where the product writes them: the catalog through ``CatalogStore``, spans
through the real OTLP-JSON encoder (``record_to_span`` + ``encode_spans_json``), ledger rows into
the real ``odibi_span_ledger`` table. Tempo cannot run here, so :class:`TempoServer` is a local
``http.server`` on 127.0.0.1 that answers ``/api/search`` and ``/api/traces/<id>`` in the response
shapes Tempo's HTTP API documents (see ``tests/fixtures/tempo/README.md``).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import gzip
import io
import json
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from opentelemetry.sdk.resources import Resource

from odibi_observe._otlp_json import encode_spans_json
from odibi_observe.catalog import CatalogStore, create_catalog_engine, upgrade
from odibi_observe.catalog.schema import span_ledger
from odibi_observe.reconcile.model import ReadLog, ReadRange, TraceRun, Window
from odibi_observe.reconcile.sources import TraceSource
from odibi_observe.record import EventKind, RunEvent, RunRecord, ns_to_datetime
from odibi_observe.sinks.otel import record_to_span
from odibi_observe.testing import contracts

FIXTURES = Path(__file__).parent / "fixtures" / "tempo"
HOUR = 3_600 * 1_000_000_000
SECOND = 1_000_000_000
#: A start time two days back, on a whole second: runs are placed after it (the same as the
#: shipped conformance suites', so their runs and these share one window).
BASE_NS = contracts.BASE_NS
RESOURCE = Resource({"service.name": "etl-tests", "deployment.environment": "test"})


# The shipped conformance suites' builders: one window, one shape of run for both.
runs = contracts.runs
failed = contracts.failed


def window(
    start_ns: int = BASE_NS,
    hours: int = 24,
    *,
    grace: timedelta = timedelta(0),
    now_ns: int | None = None,
) -> Window:
    return Window.between(
        ns_to_datetime(start_ns),
        ns_to_datetime(start_ns + hours * HOUR),
        grace=grace,
        now=None if now_ns is None else ns_to_datetime(now_ns),
    )


def read_range(start_ns: int = BASE_NS, hours: int = 24) -> ReadRange:
    return ReadRange(start_ns, start_ns + hours * HOUR, time.time_ns())


# --- catalog --------------------------------------------------------------------------------------


def write_catalog(
    url: str, records: Iterable[RunRecord], *, kind: EventKind = EventKind.FINISHED
) -> CatalogStore:
    store = CatalogStore(url)
    store.ensure_schema()
    events = [RunEvent(kind, r) for r in records]
    if events:
        store.upsert(events)
    return store


def execute(url: str, sql: str, **params: Any) -> None:
    engine = create_catalog_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()


# --- spans ----------------------------------------------------------------------------------------


def span_lines(records: Sequence[RunRecord], *, per_line: int = 50) -> list[str]:
    """OTLP-JSON lines, exactly as odibi-observe's file exporter writes them."""
    return [
        encode_spans_json([record_to_span(r, RESOURCE) for r in records[i : i + per_line]])
        for i in range(0, len(records), per_line)
    ]


def write_spans(
    path: Path,
    records: Sequence[RunRecord],
    *,
    per_line: int = 50,
    gz: bool = False,
    extra_lines: Sequence[str] = (),
) -> Path:
    text = "".join(line + "\n" for line in [*span_lines(records, per_line=per_line), *extra_lines])
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def foreign_span_line(count: int = 3, start_ns: int = BASE_NS + 2 * HOUR) -> str:
    """A line of spans that are not odibi node spans (an HTTP client, a pipeline span)."""
    spans = []
    for i in range(count):
        spans.append(
            {
                "traceId": f"{i + 1:032x}",
                "spanId": f"{i + 1:016x}",
                "parentSpanId": "",
                "name": "GET",
                "kind": 3,
                "startTimeUnixNano": str(start_ns + i),
                "endTimeUnixNano": str(start_ns + i + 5_000_000),
                "attributes": [
                    {"key": "http.request.method", "value": {"stringValue": "GET"}},
                    {"key": "odibi.pipeline", "value": {"stringValue": "sales"}},
                ],
                "status": {},
                "flags": 256,
            }
        )
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": []},
                    "scopeSpans": [{"scope": {"name": "urllib3"}, "spans": spans}],
                }
            ]
        },
        separators=(",", ":"),
    )


# --- ledger ---------------------------------------------------------------------------------------


def write_ledger(url: str, records: Sequence[RunRecord]) -> None:
    """Ledger rows as the sidecar stores them (one per span, keyed by its ids)."""
    upgrade(url)
    engine = create_catalog_engine(url)
    now = ns_to_datetime(time.time_ns())
    rows = [
        {
            "trace_id": r.trace_id,
            "span_id": r.span_id,
            "parent_span_id": r.parent_span_id,
            "run_id": r.run_id,
            "project": r.project,
            "pipeline_name": r.pipeline,
            "pipeline_run_id": r.pipeline_run_id,
            "node_name": r.node,
            "attempt": r.attempt,
            "environment": r.environment,
            "status": r.status.value,
            "rows_processed": r.rows_processed,
            "duration_ms": r.duration_ms,
            "started_at": r.started_at,
            "ended_at": r.ended_at,
            "error_type": r.error_type,
            "service_name": r.service_name,
            "resource_json": json.dumps({"host.name": r.host, "process.pid": r.pid}),
            "received_at": now,
        }
        for r in records
    ]
    try:
        with engine.begin() as conn:
            if rows:
                conn.execute(span_ledger.insert(), rows)
    finally:
        engine.dispose()


# --- Tempo ----------------------------------------------------------------------------------------

_KINDS = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
]
_CODES = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]


def _b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def tempo_trace(records: Sequence[RunRecord], *, extra_spans: int = 0) -> dict[str, Any]:
    """A trace-by-id answer as Tempo's ``/api/traces/<id>`` gives it: protobuf's JSON
    mapping (base64 ids, enum names), resource spans under ``batches``."""
    request = json.loads(encode_spans_json([record_to_span(r, RESOURCE) for r in records]))
    for group in request["resourceSpans"]:
        for scope in group["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = _b64(span[key])
                    else:
                        span.pop(key, None)
                span.pop("flags", None)
                span["kind"] = _KINDS[span.get("kind", 0)]
                if "code" in span.get("status", {}):
                    span["status"]["code"] = _CODES[span["status"]["code"]]
            if extra_spans:
                first = scope["spans"][0]
                scope["spans"] = [
                    *scope["spans"],
                    *(
                        {
                            "traceId": first["traceId"],
                            "spanId": _b64(f"{k + 7:016x}"),
                            "name": "SELECT",
                            "kind": "SPAN_KIND_CLIENT",
                            "startTimeUnixNano": first["startTimeUnixNano"],
                            "endTimeUnixNano": first["endTimeUnixNano"],
                            "attributes": [
                                {"key": "db.system", "value": {"stringValue": "postgresql"}}
                            ],
                            "status": {},
                        }
                        for k in range(extra_spans)
                    ),
                ]
    return {"batches": request["resourceSpans"]}


class TempoServer:
    """Tempo's query API on 127.0.0.1, answering from trace documents held in memory.

    ``/api/search`` returns, in the shape of ``fixtures/tempo/search_response.json``, at most
    ``limit`` of the traces whose start is in ``[start, end)`` (seconds); ``/api/traces/<id>``
    returns the document. ``slow`` maps a search ``start`` second to a delay (for timeouts).
    """

    template: ClassVar[dict[str, Any]] = json.loads((FIXTURES / "search_response.json").read_text())

    def __init__(self) -> None:
        self.traces: dict[str, dict[str, Any]] = {}
        self.starts: dict[str, int] = {}
        self.requests: list[str] = []
        self.slow: dict[int, float] = {}
        self.fail_traces: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                if parts.path == "/api/search":
                    start, end = int(query["start"]), int(query["end"])
                    delay = server.slow.get(start)
                    if delay:
                        time.sleep(delay)
                    self._json(server.search(start, end, int(query.get("limit", 20))))
                elif parts.path.startswith("/api/traces/"):
                    # Tempo accepts ids with or without their leading zeros.
                    trace_id = parts.path.rsplit("/", 1)[1].rjust(32, "0")
                    if trace_id in server.fail_traces:
                        self.send_response(500)
                        self.end_headers()
                        self.wfile.write(b"querier: context deadline exceeded")
                        return
                    self._json(
                        server.traces.get(trace_id, {}), 200 if trace_id in server.traces else 404
                    )
                else:
                    self.send_response(404)
                    self.end_headers()

            def _json(self, data: Any, status: int = 200) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, document: dict[str, Any], trace_id: str | None = None) -> str:
        spans = [
            s
            for g in document.get("batches") or document["trace"]["resourceSpans"]
            for sc in g["scopeSpans"]
            for s in sc["spans"]
        ]
        raw = spans[0]["traceId"]
        trace_id = trace_id or (raw if len(raw) == 32 else base64.b64decode(raw).hex())
        self.traces[trace_id] = document
        self.starts[trace_id] = min(int(s["startTimeUnixNano"]) for s in spans)
        return trace_id

    def search(self, start: int, end: int, limit: int) -> dict[str, Any]:
        hits = sorted(
            (t for t, s in self.starts.items() if start * SECOND <= s < end * SECOND),
            key=lambda t: self.starts[t],
        )[:limit]
        answer = copy.deepcopy(self.template)
        example = answer["traces"][0]
        answer["traces"] = [
            {**example, "traceID": t.lstrip("0") or "0", "startTimeUnixNano": str(self.starts[t])}
            for t in hits
        ]
        return answer

    def __enter__(self) -> TempoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- a source from a list -------------------------------------------------------------------------


class ListSource(TraceSource):
    """Trace runs given as a list: for engine tests that are about judging, not reading."""

    scheme: ClassVar[str] = "list"

    def __init__(self, items: Sequence[TraceRun], *, sorted_by_run_id: bool = False) -> None:
        self.items = list(items)
        self.sorted_by_run_id = sorted_by_run_id  # type: ignore[misc]

    def describe(self) -> str:
        return f"list:{len(self.items)}"

    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[TraceRun]:
        items = sorted(self.items) if self.sorted_by_run_id else self.items
        return iter([i for i in items if read_range.start_ns <= i.start_ns < read_range.end_ns])


def trace_run(record: RunRecord, **changes: Any) -> TraceRun:
    """The TraceRun a source would read for ``record``'s span."""
    run = TraceRun(
        run_id=record.run_id,
        trace_id=record.trace_id,
        span_id=record.span_id,
        start_ns=record.started_ns,
        end_ns=record.ended_ns or record.started_ns,
        status=record.status.value,
        rows=record.rows_processed,
        pipeline=record.pipeline,
        node=record.node,
        project=record.project,
        environment=record.environment,
        parent_span_id=record.parent_span_id,
        pipeline_run_id=record.pipeline_run_id,
        attempt=record.attempt,
        error_type=record.error_type,
        error_message=record.error_message,
        suggestions=record.suggestions,
        attributes_json=None,
        host=record.host,
        pid=record.pid,
        service_name=record.service_name,
        unchecked="",
        origin="list",
    )
    return run._replace(**changes)


# --- the command line -----------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str, str]:
    """``odibi-observe ARGS`` in this process: (exit status, stdout, stderr)."""
    from odibi_observe.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def iso(ns: int) -> str:
    return ns_to_datetime(ns).isoformat()
