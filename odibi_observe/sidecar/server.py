"""The sidecar's one HTTP listener: ``/metrics``, ``/healthz`` and ``POST /v1/traces``.

One port for everything a sidecar answers, because each extra port is one more thing to open
in a pod spec, a firewall and a ServiceMonitor. It binds to ``127.0.0.1`` unless told
otherwise: the pipeline and Prometheus agent on the same host (or pod) reach it; nothing else
does until an operator decides so.

* ``GET /metrics`` — the sidecar's registry in the Prometheus text format, or OpenMetrics when
  the scraper asks for it (``Accept``), gzip-compressed when it accepts gzip, and restricted
  to ``?name[]=...`` families when given: the same negotiation as ``prometheus_client``'s own
  server (:func:`prometheus_client.exposition.choose_encoder`, ``gzip_accepted``);
* ``GET /healthz`` — JSON from the health callback; ``200`` while every loop is alive,
  ``503`` when one is stuck (a liveness probe then restarts the container);
* ``POST /v1/traces`` — OTLP/HTTP, handled by :class:`~odibi_observe.sidecar.receiver.
  TraceReceiver` (which also decides 401/413/415 from the headers before the body is read).

HTTP/1.1 with keep-alive, so an exporter reuses its connection; every response carries a
``Content-Length``. At most :data:`MAX_CONCURRENT_EXPORTS` trace exports are read and stored
at once, which bounds the memory bodies and decoded spans take. Connections time out after
:data:`SOCKET_TIMEOUT` seconds of silence, so a client that opens a socket and sends nothing
cannot hold a thread forever.

Connections are capped too (one thread each): past :data:`MAX_CONNECTIONS`, a connection is
served by one of :data:`RESERVE_CONNECTIONS` short-lived reserve threads that answer only
``GET /metrics`` and ``/healthz`` (everything else gets ``503`` with ``Retry-After``), with a
:data:`RESERVE_TIMEOUT` socket timeout; past those, a connection is answered ``503`` at once
and closed. A flood of idle or slow connections therefore costs a bounded number of threads,
and Prometheus and the liveness probe still get their answers. A request whose framing is
wrong (a negative ``Content-Length``, a bad chunk size) is answered ``400`` and the connection
closed; an error in a handler is logged once a minute, never printed as a traceback.

:meth:`SidecarServer.stop` stops accepting, then waits (bounded) for the trace exports in
flight, so a sender never sees its connection cut after the ledger committed but before the
``200`` went out (it would resend; harmless, but noisy).
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import choose_encoder, gzip_accepted

from odibi_observe._redact import error_text, safe_text
from odibi_observe._selfmetrics import log, warn_once_per_minute
from odibi_observe.conventions import SIDECAR_METRICS
from odibi_observe.sidecar.options import DEFAULT_HOST, DEFAULT_PORT, TRACES_PATH, parse_listen
from odibi_observe.sidecar.receiver import ReceiverResponse, TraceReceiver

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "HealthCheck", "SidecarServer", "parse_listen"]

#: Seconds a connection may stay silent (idle keep-alive, or a stalled upload).
SOCKET_TIMEOUT: Final = 60.0
#: Trace exports decoded and stored at the same time. Each holds its body (up to the
#: receiver's limit), the decoded request and one chunk of rows — about 7x the body, measured
#: by benchmarks/bench_receiver_memory.py; the bound is what keeps a burst of large exports
#: from taking the sidecar's memory. Further exports wait for a slot. Two, because stores
#: into one database mostly queue on its write lock anyway: more slots add memory, not speed.
MAX_CONCURRENT_EXPORTS: Final = 2
#: How long an export waits for a slot before it is answered 503 (retryable).
EXPORT_SLOT_WAIT: Final = 30.0
#: Longest chunk-size line read from a chunked body.
_CHUNK_LINE_LIMIT: Final = 1024
#: A chunk size as HTTP/1.1 spells it: hex digits only (16 of them is already 16 EiB).
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: Connections served at once, each on its own thread (an idle keep-alive one included).
MAX_CONNECTIONS: Final = 64
#: Extra threads for connections past the cap: ``/metrics`` and ``/healthz`` only.
RESERVE_CONNECTIONS: Final = 8
#: Socket timeout of a reserve connection, so a slow client cycles out of the reserve fast.
RESERVE_TIMEOUT: Final = 2.0
#: Connections the kernel queues before :meth:`accept` (``socketserver``'s default is 5).
LISTEN_BACKLOG: Final = 128
_TOO_MANY: Final = "too_many_connections"
_BAD_REQUEST: Final = "bad_request"
_HANDLER_ERROR: Final = "handler_error"
_REFUSALS: Final = (_TOO_MANY, _BAD_REQUEST, _HANDLER_ERROR)
_OVERLOADED: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Retry-After: 5\r\nConnection: close\r\nContent-Length: 21\r\n\r\n"
    b"too many connections\n"
)

#: ``() -> (healthy, document)``: the ``/healthz`` answer.
HealthCheck = Callable[[], tuple[bool, Mapping[str, Any]]]


class _Server(ThreadingHTTPServer):
    # A request thread must never keep the process alive after stop(): in-flight exports are
    # waited for explicitly (SidecarServer.stop); idle keep-alive connections are not.
    daemon_threads = True
    block_on_close = False
    request_queue_size = LISTEN_BACKLOG
    owner: SidecarServer

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection up to the cap; then the reserve; then a quick 503."""
        owner = self.owner
        if owner._connections.acquire(blocking=False):
            handler: type[_Handler] = _Handler
            slots = owner._connections
        elif owner._reserve.acquire(blocking=False):
            handler, slots = _ReserveHandler, owner._reserve
            owner._over_cap("served by the reserve (/metrics and /healthz only)")
        else:
            owner._over_cap("answered 503")
            _refuse(request)
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve_one,
            args=(request, client_address, handler, slots),
            name="odibi-observe-sidecar-conn",
            daemon=True,
        )
        thread.start()

    def _serve_one(
        self,
        request: Any,
        client_address: Any,
        handler: type[_Handler],
        slots: threading.BoundedSemaphore,
    ) -> None:
        try:
            handler(request, client_address, self)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to stderr for every failing request.
        self.owner._handler_failed()


class _Server6(_Server):
    address_family = socket.AF_INET6


class SidecarServer:
    """``/metrics``, ``/healthz`` and ``/v1/traces`` on ``host:port`` (port 0: a free one).

    Binds in the constructor, so "address already in use" is an ``OSError`` there, before
    anything else starts. :meth:`start` serves on a daemon thread; :meth:`stop` shuts down.
    ``receiver=None`` answers ``/v1/traces`` with 404 (a sidecar without a span ledger).
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        registry: CollectorRegistry,
        receiver: TraceReceiver | None = None,
        health: HealthCheck | None = None,
    ) -> None:
        self.registry = registry
        self.receiver = receiver
        self.health = health
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _Handler)
        self._server.owner = self
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None
        self._inflight = 0
        self._inflight_cond = threading.Condition()
        self._export_slots = threading.BoundedSemaphore(MAX_CONCURRENT_EXPORTS)
        self._connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._reserve = threading.BoundedSemaphore(RESERVE_CONNECTIONS)
        metric = SIDECAR_METRICS.http_refused
        self.refused = Counter(
            metric.prometheus_base, metric.description, metric.labels, registry=registry
        )
        for reason in _REFUSALS:
            self.refused.labels(reason=reason)
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9464``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> SidecarServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.2,),
            name="odibi-observe-sidecar-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop accepting; wait up to ``timeout`` for trace exports in flight. Idempotent.

        True when none was still running at the end.
        """
        if self._stopped:
            return True
        self._stopped = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._inflight_cond:
            while self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._inflight_cond.wait(remaining)
            drained = self._inflight == 0
        self._server.server_close()
        return drained

    # -- used by the handler -------------------------------------------------------------

    def _enter(self) -> bool:
        with self._inflight_cond:
            if self._stopped:
                return False
            self._inflight += 1
            return True

    def _leave(self) -> None:
        with self._inflight_cond:
            self._inflight -= 1
            self._inflight_cond.notify_all()

    def _over_cap(self, outcome: str) -> None:
        self.refused.labels(reason=_TOO_MANY).inc()
        warn_once_per_minute(
            "sidecar:connections",
            "odibi-observe sidecar: more than %d connections at once; further ones are %s",
            MAX_CONNECTIONS,
            outcome,
        )

    def _handler_failed(self) -> None:
        self.refused.labels(reason=_HANDLER_ERROR).inc()
        exc = sys.exc_info()[1]
        warn_once_per_minute(
            "sidecar:handler",
            "odibi-observe sidecar: a request failed: %s: %s",
            type(exc).__name__,
            error_text(exc, 300) if exc is not None else "",
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "odibi-observe-sidecar"
    sys_version = ""
    timeout = SOCKET_TIMEOUT
    server: _Server

    # -- routing -------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._metrics()
        elif path in ("/healthz", "/health"):
            self._healthz()
        elif path == TRACES_PATH:
            self._plain(405, "use POST for /v1/traces\n", (("Allow", "POST"),))
        elif path == "/":
            self._plain(200, "odibi-observe sidecar: /metrics /healthz POST /v1/traces\n")
        else:
            self._plain(404, "not found\n")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        receiver = self.server.owner.receiver
        if path != TRACES_PATH or receiver is None:
            self.close_connection = True  # the body is not read
            self._plain(404 if path != "/metrics" else 405, "not found\n")
            return
        owner = self.server.owner
        if not owner._enter():
            self.close_connection = True
            self._plain(503, "shutting down\n", (("Retry-After", "5"),))
            return
        try:
            self._export(receiver)
        finally:
            owner._leave()

    # -- endpoints -----------------------------------------------------------------------

    def _export(self, receiver: TraceReceiver) -> None:
        early = receiver.check_headers(self.headers)
        if early is not None:
            self._answer(early)
            return
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        if self.headers.get("Content-Length") is None and not chunked:
            self.close_connection = True
            self._plain(411, "Content-Length required\n")
            return
        slots = self.server.owner._export_slots
        if not slots.acquire(timeout=EXPORT_SLOT_WAIT):
            # Every slot is busy for long: the database is slow. Retryable, like a down one.
            self.close_connection = True
            self._plain(503, "busy, retry later\n", (("Retry-After", "5"),))
            return
        try:
            self._receive(receiver, chunked)
        finally:
            slots.release()

    def _receive(self, receiver: TraceReceiver, chunked: bool) -> None:
        try:
            body = (
                self._read_chunked(receiver.max_body_bytes)
                if chunked
                else self._read_exact(int(self.headers["Content-Length"]))
            )
        except _TooLarge:
            self._answer(receiver.too_large(self.headers.get("Content-Type", "")))
            return
        except _BadFraming as exc:
            self.close_connection = True
            self.server.owner.refused.labels(reason=_BAD_REQUEST).inc()
            self._plain(400, f"{exc}\n")
            return
        except (OSError, ValueError) as exc:
            # The client went away or stalled mid-body: there is nobody to answer.
            self.close_connection = True
            log.debug("odibi-observe sidecar: reading a request body failed: %s", exc)
            return
        self._answer(receiver.export(self.headers, body))

    def _metrics(self) -> None:
        registry = self.server.owner.registry
        names = parse_qs(urlsplit(self.path).query).get("name[]")
        source = registry.restricted_registry(names) if names else registry
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            output = encoder(source)
        except Exception:  # a collector raising must not kill the scrape thread silently
            log.exception("odibi-observe sidecar: rendering /metrics failed")
            self._plain(500, "error rendering metrics\n")
            return
        headers: list[tuple[str, str]] = []
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            output = gzip.compress(output, compresslevel=6)
            headers.append(("Content-Encoding", "gzip"))
        self._send(200, output, content_type, headers)

    def _healthz(self) -> None:
        check = self.server.owner.health
        document: Mapping[str, Any]
        if check is None:
            healthy, document = True, {"status": "ok"}
        else:
            try:
                healthy, document = check()
            except Exception as exc:
                log.exception("odibi-observe sidecar: health check failed")
                healthy, document = False, {"status": "error", "error": type(exc).__name__}
        body = (json.dumps(document, sort_keys=True, default=str) + "\n").encode("utf-8")
        self._send(200 if healthy else 503, body, "application/json")

    # -- body reading --------------------------------------------------------------------

    def _read_exact(self, length: int) -> bytes:
        if length < 0:
            raise _BadFraming("negative Content-Length")
        data = self.rfile.read(length)
        if len(data) != length:
            raise ValueError("connection closed before the whole body arrived")
        return data

    def _read_chunked(self, limit: int) -> bytes:
        """A ``Transfer-Encoding: chunked`` body (some exporters stream), bounded by ``limit``."""
        out = bytearray()
        while True:
            line = self.rfile.readline(_CHUNK_LINE_LIMIT)
            if not line:
                raise ValueError("connection closed inside a chunked body")
            digits = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(digits):  # int(..., 16) would take "0x10", "-5", "1_0"
                raise _BadFraming(f"bad chunk size line {safe_text(repr(line), 60)}")
            size = int(digits, 16)
            if size == 0:
                while self.rfile.readline(_CHUNK_LINE_LIMIT) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)
            if len(out) + size > limit:
                self.close_connection = True
                raise _TooLarge
            out += self._read_exact(size)
            self.rfile.readline(_CHUNK_LINE_LIMIT)  # the CRLF after the chunk

    # -- responses -----------------------------------------------------------------------

    def _answer(self, response: ReceiverResponse) -> None:
        if response.close:
            self.close_connection = True
        self._send(response.status, response.body, response.content_type, list(response.headers))

    def _plain(self, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(status, text.encode("utf-8"), "text/plain; charset=utf-8", list(headers))

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers or ():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except OSError as exc:  # the client went away; nothing to answer
            self.close_connection = True
            log.debug("odibi-observe sidecar: writing a response failed: %s", exc)

    def log_message(self, format: str, *args: Any) -> None:
        # Per-request access logs would drown the sidecar's own log at scrape and export
        # rates; failures are logged where they happen and counted in the metrics.
        log.debug("odibi-observe sidecar http: " + format, *args)


class _ReserveHandler(_Handler):
    """A connection past :data:`MAX_CONNECTIONS`: cheap reads only, one request, short timeout.

    ``/metrics`` and ``/healthz`` are what must keep answering under a connection flood (a
    scrape gap looks like an outage, a failed probe restarts the container); a trace export
    is retryable, so it is told to come back.
    """

    timeout = RESERVE_TIMEOUT

    def handle(self) -> None:
        self.handle_one_request()

    def do_POST(self) -> None:
        self.close_connection = True
        self._plain(503, "too many connections, retry later\n", (("Retry-After", "5"),))


def _refuse(request: Any) -> None:
    """Answer 503 without reading the request and without blocking the accept loop."""
    try:
        request.setblocking(False)
        request.send(_OVERLOADED)
    except OSError:
        pass


class _TooLarge(Exception):
    """A chunked body went past the receiver's limit."""


class _BadFraming(ValueError):
    """The request's body framing is wrong: answered 400, the connection closed."""
