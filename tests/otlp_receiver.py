"""Real OTLP receivers for tests: they speak the OTLP wire protocol over TCP on 127.0.0.1.

Mocking the exporter would only prove that we call a mock. These receivers are what a
Collector is to the exporters: :class:`OtlpReceiver` is an OTLP/HTTP server
(``POST /v1/traces`` and ``/v1/metrics``, binary protobuf or JSON bodies, optional gzip or
deflate ``Content-Encoding``) and :class:`OtlpGrpcReceiver` an OTLP/gRPC ``TraceService``. Both
decode what they receive with ``opentelemetry-proto`` and keep the spans as
:class:`~odibi_observe._otlp_json.SpanView`, so a test asserts on what actually crossed the wire.

Setting ``down = True`` makes a receiver refuse exports the way an overloaded collector does
(HTTP 503 / gRPC ``UNAVAILABLE``), to simulate an outage without closing the port.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from odibi_observe._otlp_json import SpanView, iter_spans, parse_otlp_json


class _Store:
    """What a receiver received, shared by its request threads."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.spans: list[SpanView] = []
        self.trace_requests: list[ExportTraceServiceRequest] = []
        self.metric_requests: list[ExportMetricsServiceRequest] = []
        self.content_types: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.refused = 0
        self.down = False
        #: While set, export requests are read and never answered (a hung collector).
        self.hang = False
        self.hung = 0
        self.release = threading.Event()

    def add_traces(self, request: ExportTraceServiceRequest) -> None:
        with self.cond:
            self.trace_requests.append(request)
            self.spans.extend(iter_spans(request))
            self.cond.notify_all()

    def add_metrics(self, request: ExportMetricsServiceRequest) -> None:
        with self.cond:
            self.metric_requests.append(request)
            self.cond.notify_all()

    def wait(self, predicate: Any, timeout: float) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(predicate, timeout))


class _ReceiverBase:
    _store: _Store

    @property
    def spans(self) -> list[SpanView]:
        with self._store.cond:
            return list(self._store.spans)

    @property
    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        with self._store.cond:
            return list(self._store.trace_requests)

    @property
    def metric_requests(self) -> list[ExportMetricsServiceRequest]:
        with self._store.cond:
            return list(self._store.metric_requests)

    @property
    def refused(self) -> int:
        """Export requests answered with 503 / UNAVAILABLE while ``down``."""
        return self._store.refused

    @property
    def down(self) -> bool:
        return self._store.down

    @down.setter
    def down(self, value: bool) -> None:
        self._store.down = value

    @property
    def hang(self) -> bool:
        """Accept and read export requests but never answer them (until :meth:`stop`)."""
        return self._store.hang

    @hang.setter
    def hang(self, value: bool) -> None:
        self._store.hang = value

    @property
    def hung(self) -> int:
        """Export requests left unanswered while ``hang``."""
        return self._store.hung

    def wait_for_spans(self, n: int, timeout: float = 10.0) -> list[SpanView]:
        """Wait until at least ``n`` spans arrived; return them (fail the test on timeout)."""
        if not self._store.wait(lambda: len(self._store.spans) >= n, timeout):
            raise AssertionError(
                f"expected {n} span(s) within {timeout}s, got {len(self._store.spans)}"
            )
        return self.spans

    def wait_for_metrics(self, n: int = 1, timeout: float = 10.0) -> list[Any]:
        if not self._store.wait(lambda: len(self._store.metric_requests) >= n, timeout):
            raise AssertionError(f"expected {n} metric request(s) within {timeout}s")
        return self.metric_requests


class OtlpReceiver(_ReceiverBase):
    """An OTLP/HTTP receiver on ``127.0.0.1`` (a free port), run in a background thread.

    Use it as a context manager; :attr:`endpoint` is the base URL (``http://127.0.0.1:PORT``)
    that exporters append ``/v1/traces`` or ``/v1/metrics`` to.
    """

    def __init__(self) -> None:
        self._store = _Store()
        store = self._store

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if store.hang:
                    with store.cond:
                        store.hung += 1
                        store.cond.notify_all()
                    store.release.wait()
                    return
                if store.down:
                    store.refused += 1
                    self._answer(503, b"", "text/plain")
                    return
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                is_json = content_type == "application/json"
                if self.path == "/v1/traces":
                    request: Any = ExportTraceServiceRequest()
                    response: Any = ExportTraceServiceResponse()
                elif self.path == "/v1/metrics":
                    request = ExportMetricsServiceRequest()
                    response = ExportMetricsServiceResponse()
                else:
                    self._answer(404, b"", "text/plain")
                    return
                try:
                    if is_json:
                        parse_otlp_json(body, request)
                    else:
                        request.ParseFromString(body)
                except Exception as exc:
                    self._answer(400, str(exc).encode(), "text/plain")
                    return
                with store.cond:
                    store.content_types.append(content_type)
                    store.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path == "/v1/traces":
                    store.add_traces(request)
                else:
                    store.add_metrics(request)
                if is_json:
                    self._answer(200, b"{}", "application/json")
                else:
                    self._answer(200, response.SerializeToString(), "application/x-protobuf")

            def _answer(self, code: int, payload: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="otlp-receiver", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def content_types(self) -> list[str]:
        """The Content-Type of every accepted export request, in arrival order."""
        with self._store.cond:
            return list(self._store.content_types)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """The headers (lower-cased names) of every accepted export request."""
        with self._store.cond:
            return list(self._store.headers)

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._store.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class OtlpGrpcReceiver(_ReceiverBase):
    """An OTLP/gRPC ``TraceService`` on ``127.0.0.1`` (a free port), plaintext.

    :attr:`endpoint` is ``http://127.0.0.1:PORT``, the form the gRPC exporter treats as
    insecure.
    """

    def __init__(self) -> None:
        import grpc  # type: ignore[import-untyped]
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        self._store = _Store()
        store = self._store

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: ExportTraceServiceRequest, context: Any) -> Any:
                if store.down:
                    store.refused += 1
                    context.abort(grpc.StatusCode.UNAVAILABLE, "receiver is down")
                store.add_traces(request)
                return ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            Service(), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpGrpcReceiver:
        self._server.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.stop(grace=None).wait(5)
