"""The OTLP/HTTP receiver over real HTTP, into a real ledger (SQLite and PostgreSQL).

Requests are sent with ``http.client`` exactly as an exporter sends them, and answers are
decoded with the OTLP protobuf messages, so these tests check the wire protocol, not our own
objects. The last tests point the OpenTelemetry SDK's own ``OTLPSpanExporter`` — and
odibi-observe's OTel sink — at the receiver.
"""

from __future__ import annotations

import gzip
import http.client
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from google.protobuf import json_format
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client import CollectorRegistry

import odibi_observe as oo
from odibi_observe._otlp_json import encode_request_json
from odibi_observe._selfmetrics import SelfMonitor
from odibi_observe.conventions import FIELDS, RunStatus
from odibi_observe.sidecar.ledger import SpanLedger
from odibi_observe.sidecar.receiver import TraceReceiver
from odibi_observe.sidecar.server import SidecarServer
from tests.helpers import Configure
from tests.test_ledger import export_request, ledger_rows, node_spans, other_span, terminal

PB = "application/x-protobuf"


class Sidecar:
    """A ledger, a receiver and the HTTP server on a free port, for one test."""

    def __init__(self, url: str, *, token: str | None = None, max_body: int = 1 << 20) -> None:
        self.registry = CollectorRegistry()
        self.monitor = SelfMonitor(self.registry)
        self.ledger = SpanLedger(url)
        self.receiver = TraceReceiver(
            self.ledger,
            registry=self.registry,
            monitor=self.monitor,
            token=token,
            max_body_bytes=max_body,
            retry_after=2,
        )
        self.server = SidecarServer(
            "127.0.0.1", 0, registry=self.registry, receiver=self.receiver
        ).start()

    def post(
        self,
        body: bytes | str,
        *,
        content_type: str = PB,
        path: str = "/v1/traces",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.request(
                "POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})}
            )
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def spans(self, outcome: str) -> float:
        return (
            self.registry.get_sample_value("odibi_observe_ledger_spans_total", {"outcome": outcome})
            or 0.0
        )

    def close(self) -> None:
        self.server.stop()
        self.ledger.dispose()


@pytest.fixture
def sidecar(catalog_url: str) -> Iterator[Sidecar]:
    s = Sidecar(catalog_url)
    yield s
    s.close()


def _response(body: bytes, content_type: str = PB) -> ExportTraceServiceResponse:
    response: ExportTraceServiceResponse = (
        ExportTraceServiceResponse.FromString(body)
        if content_type == PB
        else json_format.Parse(body, ExportTraceServiceResponse())
    )
    return response


def _status(body: bytes, content_type: str = PB) -> status_pb2.Status:
    if content_type == PB:
        return status_pb2.Status.FromString(body)
    return json_format.Parse(body, status_pb2.Status())


def test_protobuf_export_is_stored_and_answered_in_protobuf(sidecar: Sidecar) -> None:
    records = [terminal() for _ in range(3)]
    request = export_request(records, extra=[other_span()])
    status, headers, body = sidecar.post(request.SerializeToString())
    assert status == 200 and headers["Content-Type"] == PB
    assert not _response(body).HasField("partial_success")
    assert {r["run_id"] for r in ledger_rows(sidecar.ledger)} == {r.run_id for r in records}
    assert (sidecar.spans("stored"), sidecar.spans("ignored")) == (3, 1)

    # The exporter retries (its 200 was lost): same spans, stored once, counted as duplicates.
    assert sidecar.post(request.SerializeToString())[0] == 200
    assert sidecar.ledger.count() == 3 and sidecar.spans("duplicate") == 3


def test_json_export_with_gzip_is_stored_and_answered_in_json(sidecar: Sidecar) -> None:
    records = [terminal(status=RunStatus.FAILURE, error_type="ValueError")]
    line = encode_request_json(export_request(records)).encode()
    status, headers, body = sidecar.post(
        gzip.compress(line), content_type="application/json", headers={"Content-Encoding": "gzip"}
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {}
    (row,) = ledger_rows(sidecar.ledger)
    assert (row["run_id"], row["status"], row["error_type"]) == (
        records[0].run_id,
        "FAILURE",
        "ValueError",
    )
    assert row["trace_id"] == records[0].trace_id  # OTLP/JSON's hex ids decoded as ids


def test_rejected_and_mistyped_spans_are_reported_in_partial_success(sidecar: Sidecar) -> None:
    request = export_request([terminal(), terminal()])
    spans = request.resource_spans[0].scope_spans[0].spans
    for kv in spans[0].attributes:
        if kv.key == FIELDS.run_id.attribute:
            kv.value.int_value = 5  # run id of the wrong type: cannot be keyed
    for kv in spans[1].attributes:
        if kv.key == FIELDS.rows.attribute:
            kv.value.string_value = "ten"
    line = encode_request_json(request).encode()
    status, _, body = sidecar.post(line, content_type="application/json")
    assert status == 200
    partial = _response(body, "application/json").partial_success
    assert partial.rejected_spans == 1
    assert "odibi.run_id" in partial.error_message
    assert "odibi.rows_processed" in partial.error_message
    assert (sidecar.spans("stored"), sidecar.spans("rejected")) == (1, 1)
    assert (
        sidecar.registry.get_sample_value(
            "odibi_observe_invalid_input_total", {"field": "odibi.rows_processed"}
        )
        == 1
    )


@pytest.mark.parametrize("content_type", [PB, "application/json"])
def test_a_malformed_body_is_400_with_a_status_message(sidecar: Sidecar, content_type: str) -> None:
    status, headers, body = sidecar.post(b"\xff\x00 this is not OTLP {", content_type=content_type)
    assert status == 400 and headers["Content-Type"] == content_type
    message = _status(body, content_type)
    assert message.code == 3 and "ExportTraceServiceRequest" in message.message
    bad_gzip = sidecar.post(b"not gzip", headers={"Content-Encoding": "gzip"})
    assert bad_gzip[0] == 400 and "gzip" in _status(bad_gzip[2]).message
    assert sidecar.ledger.count() == 0


def test_unsupported_media_type_and_encoding_are_415(sidecar: Sidecar) -> None:
    assert sidecar.post(b"x", content_type="text/plain")[0] == 415
    assert sidecar.post(b"x", headers={"Content-Encoding": "br"})[0] == 415


def test_other_paths_and_methods(sidecar: Sidecar) -> None:
    assert sidecar.post(b"", path="/v1/metrics")[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.server.port, timeout=10)
    conn.request("GET", "/v1/traces")
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "POST"
    conn.close()


def test_a_body_over_the_limit_is_413_before_and_after_decompression(sqlite_url: str) -> None:
    s = Sidecar(sqlite_url, max_body=10_000)
    try:
        status, headers, _ = s.post(b"\x00" * 10_001)
        assert status == 413 and headers.get("Connection") == "close"
        # 20 KB of zeros compress to ~50 bytes: the limit holds on what the body expands to.
        bomb = gzip.compress(export_request([terminal()]).SerializeToString() + b"\x00" * 20_000)
        assert len(bomb) < 10_000
        assert s.post(bomb, headers={"Content-Encoding": "gzip"})[0] == 413
        # Chunked uploads are bounded too.
        conn = http.client.HTTPConnection("127.0.0.1", s.server.port, timeout=10)
        conn.request(
            "POST",
            "/v1/traces",
            body=iter([b"\x00" * 6_000] * 2),
            headers={"Content-Type": PB},
            encode_chunked=True,
        )
        assert conn.getresponse().status == 413
        conn.close()
        small = export_request([terminal()]).SerializeToString()
        conn = http.client.HTTPConnection("127.0.0.1", s.server.port, timeout=10)
        conn.request(
            "POST",
            "/v1/traces",
            body=iter([small[:10], small[10:]]),
            headers={"Content-Type": PB},
            encode_chunked=True,
        )
        assert conn.getresponse().status == 200
        conn.close()
        assert s.ledger.count() == 1
    finally:
        s.close()


def test_bearer_token_is_required_when_configured(sqlite_url: str) -> None:
    s = Sidecar(sqlite_url, token="s3cret-token")
    body = export_request([terminal()]).SerializeToString()
    try:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret-token"},
        ):
            status, answer, _ = s.post(body, headers=headers)
            assert status == 401 and answer["WWW-Authenticate"].startswith("Bearer")
        assert s.ledger.count() == 0
        assert s.post(body, headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        assert s.post(body, headers={"authorization": "bearer s3cret-token"})[0] == 200
        assert s.ledger.count() == 1
    finally:
        s.close()


def test_keep_alive_connection_serves_several_exports(sidecar: Sidecar) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.server.port, timeout=10)
    for _ in range(3):
        conn.request(
            "POST",
            "/v1/traces",
            body=export_request([terminal()]).SerializeToString(),
            headers={"Content-Type": PB},
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    conn.close()
    assert sidecar.ledger.count() == 3


# -- the database goes away and comes back ------------------------------------------------


def test_sqlite_ledger_down_is_503_with_retry_after_then_stored(
    sqlite_url: str, tmp_path: Path
) -> None:
    s = Sidecar(sqlite_url)
    db = Path(sa.engine.make_url(sqlite_url).database or "")
    try:
        assert s.post(export_request([terminal()]).SerializeToString())[0] == 200
        # Take the database away: the file is moved and a directory stands in its place, so
        # opening it fails. (Tests run as root, for whom a read-only file is still writable.)
        s.ledger.dispose()
        shutil.move(db, tmp_path / "away.db")
        for suffix in ("-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                shutil.move(f"{db}{suffix}", tmp_path / f"away.db{suffix}")
        db.mkdir()
        late = export_request([terminal(), terminal()]).SerializeToString()
        status, headers, body = s.post(late)
        assert status == 503 and headers["Retry-After"] == "2"
        assert _status(body).code == 14
        assert (
            s.registry.get_sample_value("odibi_observe_sink_errors_total", {"sink": "ledger"}) == 1
        )
        assert s.spans("stored") == 1  # nothing counted for what was not stored

        db.rmdir()
        shutil.move(tmp_path / "away.db", db)
        for suffix in ("-wal", "-shm"):
            if (tmp_path / f"away.db{suffix}").exists():
                shutil.move(tmp_path / f"away.db{suffix}", f"{db}{suffix}")
        assert s.post(late)[0] == 200  # the exporter's retry
        assert s.ledger.count() == 3
    finally:
        s.close()


@pytest.mark.postgres
def test_postgres_ledger_down_is_503_then_stored(pg_url: str, pg_server_url: str) -> None:
    """The test's own database is renamed away (never the cluster: others use it)."""
    s = Sidecar(pg_url)
    name = sa.engine.make_url(pg_url).database
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    try:
        assert s.post(export_request([terminal()]).SerializeToString())[0] == 200
        s.ledger.dispose()
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(sa.text(f'ALTER DATABASE "{name}" RENAME TO "{name}_away"'))
        late = export_request([terminal()]).SerializeToString()
        try:
            status, headers, _ = s.post(late)
            assert status == 503 and int(headers["Retry-After"]) > 0
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{name}_away" RENAME TO "{name}"'))
        assert s.post(late)[0] == 200
        assert s.ledger.count() == 2
    finally:
        s.close()
        admin.dispose()


# -- real exporters ------------------------------------------------------------------------


def test_the_sdk_otlp_exporter_delivers_node_spans_into_the_ledger(sidecar: Sidecar) -> None:
    exporter = OTLPSpanExporter(endpoint=f"{sidecar.server.url}/v1/traces", timeout=10)
    records = [terminal() for _ in range(4)]
    try:
        assert exporter.export([*node_spans(records), other_span()]) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]  # the exporter is not annotated
    assert {r["run_id"] for r in ledger_rows(sidecar.ledger)} == {r.run_id for r in records}
    assert sidecar.spans("ignored") == 1


def test_the_otel_sink_and_the_ledger_agree_on_every_run(
    sidecar: Sidecar, fresh_observer: Configure
) -> None:
    """Pipeline → odibi-observe's OTel sink → OTLP http/protobuf → sidecar → ledger: the
    ledger row says what the node run said (ids, status, rows, duration)."""
    from odibi_observe.testing import InMemorySink

    memory = InMemorySink()
    fresh_observer(
        mode="inline",
        otlp_endpoint=sidecar.server.url,
        extra_sinks=[memory],
        handle_sigterm=False,
        otel_metrics=False,
        strict=True,
    )

    @oo.observe_node(pipeline="daily_sales")
    def clean(rows: list[int]) -> list[int]:
        return rows[:-1]

    @oo.observe_node(pipeline="daily_sales")
    def broken() -> None:
        raise RuntimeError("no such column")

    clean(list(range(12)))
    with pytest.raises(RuntimeError):
        broken()
    assert oo.flush(10)
    finished = {e.record.run_id: e.record for e in memory.events if e.record.status.is_terminal}
    rows = {r["run_id"]: r for r in ledger_rows(sidecar.ledger)}
    assert rows.keys() == finished.keys()
    for run_id, record in finished.items():
        row = rows[run_id]
        assert (row["trace_id"], row["span_id"]) == (record.trace_id, record.span_id)
        assert row["status"] == record.status.value
        assert row["rows_processed"] == record.rows_processed
        assert row["duration_ms"] == record.duration_ms
        assert row["started_at"] == record.started_at


def test_concurrent_exports_are_all_stored(sidecar: Sidecar) -> None:
    bodies = [export_request([terminal() for _ in range(20)]).SerializeToString() for _ in range(8)]
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda b=b: answers.append(sidecar.post(b)[0])) for b in bodies
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == [200] * 8
    assert sidecar.ledger.count() == 160


def test_server_stop_is_prompt_with_an_idle_keep_alive_connection(sqlite_url: str) -> None:
    s = Sidecar(sqlite_url)
    conn = http.client.HTTPConnection("127.0.0.1", s.server.port, timeout=10)
    conn.request("GET", "/metrics")
    conn.getresponse().read()  # the connection stays open, its thread waiting for more
    start = time.monotonic()
    assert s.server.stop(timeout=5)
    assert time.monotonic() - start < 2
    conn.close()
    s.ledger.dispose()
