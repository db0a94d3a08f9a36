"""The sidecar's HTTP listener under hostile input: every request gets a quick, clear answer.

Real sockets against the real :class:`SidecarServer` with a real SQLite span ledger. Each test
provokes one corner that used to close the connection without an answer, print a traceback,
burn seconds of CPU, or let a flood of connections starve ``/metrics`` and ``/healthz``.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sidecar import receiver as receiver_module
from odibi_observe.sidecar import server as server_module
from odibi_observe.sidecar import service as service_module
from odibi_observe.sidecar.service import Sidecar as SidecarService
from odibi_observe.sinks.spool import SpoolSink
from odibi_observe.spool import Spool
from tests.helpers import make_record, wait_until
from tests.test_ledger import export_request, ledger_rows
from tests.test_sidecar_receiver import Sidecar
from tests.test_sidecar_service import get, options, settings


@pytest.fixture
def sidecar(sqlite_url: str) -> Iterator[Sidecar]:
    s = Sidecar(sqlite_url, max_body=8 << 20)
    yield s
    s.close()


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> bytes:
    """Send bytes as they are and read the answer until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except TimeoutError:
            pass
    return b"".join(chunks)


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def status_of(answer: bytes) -> int:
    assert answer, "the server closed the connection without an answer"
    return int(answer.split(b" ", 2)[1])


def post_head(length: int | str, content_type: str = "application/json", extra: str = "") -> bytes:
    return (
        f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def refused(sidecar: Sidecar, reason: str) -> float:
    return (
        sidecar.registry.get_sample_value(
            "odibi_observe_sidecar_http_refused_total", {"reason": reason}
        )
        or 0.0
    )


def test_json_nested_100000_deep_is_a_400_not_a_traceback(
    sidecar: Sidecar, capfd: pytest.CaptureFixture[str]
) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    answer = raw_request(sidecar.server.port, post_head(len(body)), body)
    assert status_of(answer) == 400
    assert b"nested too deeply" in answer
    assert "Traceback" not in capfd.readouterr().err
    status, _, _ = sidecar.post(export_request([make_record()]).SerializeToString())
    assert status == 200


def test_a_negative_content_length_is_answered_400(sidecar: Sidecar) -> None:
    answer = raw_request(sidecar.server.port, post_head(-1), b"{}")
    assert status_of(answer) == 400
    assert b"negative" in answer


@pytest.mark.parametrize("size_line", [b"zz\r\n", b"-5\r\n", b"\r\n", b"0x10\r\n"])
def test_a_bad_chunk_size_is_answered_400(sidecar: Sidecar, size_line: bytes) -> None:
    head = (
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    answer = raw_request(sidecar.server.port, head, size_line + b"{}\r\n0\r\n\r\n")
    assert status_of(answer) == 400
    assert b"chunk size" in answer
    assert refused(sidecar, "bad_request") == 1


def test_a_body_of_200000_empty_gzip_members_is_refused(sidecar: Sidecar) -> None:
    member = gzip.compress(b"")
    body = member * 200_000
    answer = raw_request(
        sidecar.server.port, post_head(len(body), extra="Content-Encoding: gzip\r\n"), body
    )
    assert status_of(answer) == 400
    assert f"more than {receiver_module.MAX_GZIP_MEMBERS} gzip members".encode() in answer


def test_a_few_concatenated_gzip_members_are_still_one_valid_body(sidecar: Sidecar) -> None:
    data = export_request([make_record()]).SerializeToString()
    body = gzip.compress(data[:10]) + gzip.compress(data[10:])
    status, _, _ = sidecar.post(body, headers={"Content-Encoding": "gzip"})
    assert status == 200
    assert sidecar.spans("stored") == 1


def test_a_flood_of_idle_connections_leaves_metrics_and_healthz_answering(sidecar: Sidecar) -> None:
    port = sidecar.server.port
    cap = server_module.MAX_CONNECTIONS + server_module.RESERVE_CONNECTIONS
    idle = []
    try:
        for _ in range(server_module.MAX_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        # Every regular slot is held by a silent client; the reserve still answers reads.
        wait_until(
            lambda: (
                refused(sidecar, "too_many_connections") == 0
                and sidecar.server._connections._value == 0
            ),
            timeout=10,
        )
        metrics = raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(metrics) == 200
        assert b"odibi_observe_ledger_spans_total" in metrics
        health = raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(health) == 200
        body = export_request([make_record()]).SerializeToString()
        export = raw_request(port, post_head(len(body), "application/x-protobuf"), body)
        assert status_of(export) == 503
        assert b"Retry-After: 5" in export
        # Past the reserve too: answered 503 at once, without reading the request.
        for _ in range(cap - len(idle)):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        extra = raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        assert status_of(extra) in (200, 503)
        assert refused(sidecar, "too_many_connections") >= 3
    finally:
        for sock in idle:
            sock.close()
    # The slots come back when the clients leave: a normal export is served again.
    wait_until(
        lambda: sidecar.server._connections._value == server_module.MAX_CONNECTIONS, timeout=10
    )
    status, _, _ = sidecar.post(export_request([make_record()]).SerializeToString())
    assert status == 200


def test_an_export_larger_than_one_store_chunk_is_stored_whole(sidecar: Sidecar) -> None:
    runs = [make_record() for _ in range(receiver_module.SPANS_PER_STORE * 2 + 7)]
    status, _, _ = sidecar.post(export_request(runs).SerializeToString())
    assert status == 200
    assert sidecar.spans("stored") == len(runs)
    assert len(ledger_rows(sidecar.ledger)) == len(runs)
    again, _, _ = sidecar.post(export_request(runs).SerializeToString())
    assert again == 200
    assert sidecar.spans("duplicate") == len(runs)


def test_healthz_spool_numbers_are_at_most_a_tick_old(sqlite_url: str, tmp_path: Path) -> None:
    """The spool's size on ``/healthz`` is re-read every maintenance tick (1 s), as the
    operations guide says; it used to be every 5 s. The backlog says how old it is."""
    spool_dir = tmp_path / "spool"
    sidecar = SidecarService(options(sqlite_url, spool_dir), settings=settings(sqlite_url)).start()
    try:

        def spool_doc() -> dict[str, float]:
            _, _, body = get(sidecar.url, "/healthz")
            return dict(json.loads(body)["spool"])

        before = spool_doc()
        writer = Spool(spool_dir, fsync="never", registry=CollectorRegistry())
        SpoolSink(writer).export([RunEvent(EventKind.STARTED, make_record())])
        writer.close()
        ages = []
        for _ in range(12):
            doc = spool_doc()
            ages.append(doc["read_seconds_ago"])
            assert doc["backlog_read_seconds_ago"] <= service_module.BACKLOG_SECONDS + 2
            time.sleep(0.25)
        assert max(ages) < 2.5, ages
        assert spool_doc()["bytes"] > before["bytes"]
    finally:
        sidecar.stop(timeout=2)


def test_listening_beyond_loopback_without_a_token_warns(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is sent to the wildcard address; binding it is enough for the warning."""
    caplog.set_level(logging.WARNING, logger="odibi_observe")
    sidecar = SidecarService(
        options(sqlite_url, tmp_path / "a", listen_host="0.0.0.0"), settings=settings(sqlite_url)
    ).start()
    sidecar.stop(timeout=2)
    assert "takes spans from anyone" in caplog.text
    caplog.clear()
    local = SidecarService(
        options(sqlite_url, tmp_path / "b"), settings=settings(sqlite_url)
    ).start()
    local.stop(timeout=2)
    assert "takes spans from anyone" not in caplog.text
