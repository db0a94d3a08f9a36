"""The OpenLineage sink with the real ``openlineage-python`` client and its real transports.

Events are posted by the client's http transport to a receiver on 127.0.0.1 started here, or
written by its file transport and read back; every event is checked against the OpenLineage
spec through the client's own models (their attrs validators: a UUID ``runId``, an ISO
``eventTime``, each facet's required fields and no unknown ones, its schema URL).
"""

from __future__ import annotations

import enum
import functools
import importlib
import json
import os
import pkgutil
import re
import threading
import time
import types
import typing
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attr
import pytest
from openlineage.client import OpenLineageClient, event_v2
from openlineage.client.facet_v2 import (
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
)

import odibi_observe as oo
from odibi_observe.conventions import (
    CRASH_HEARTBEAT_LOST,
    OPENLINEAGE_INTEGRATION_DEFAULT,
    OPENLINEAGE_OUTPUT_NAME_ATTRIBUTE,
    OPENLINEAGE_OUTPUT_NAMESPACE_ATTRIBUTE,
    OPENLINEAGE_PRODUCER,
    OPENLINEAGE_RUN_FACET,
    OPENLINEAGE_SINK,
    RunStatus,
)
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.base import RecordRejected, Sink, SinkUnavailable
from odibi_observe.sinks.openlineage import (
    OpenLineageSink,
    openlineage_configured,
    run_uuid,
)
from odibi_observe.testing.contracts import SinkContract, Summary, make_record

Configure = Callable[..., oo.Observer]

# -- an OpenLineage HTTP endpoint ----------------------------------------------------------------


class Receiver:
    """``POST /api/v1/lineage`` on 127.0.0.1: keeps each event; answers ``status`` (201)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self.status = 201
        self.lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests += 1
                    status = receiver.status
                    if status < 300 and self.path == "/api/v1/lineage":
                        receiver.events.append(json.loads(body))
                        receiver.headers = dict(self.headers)
                    receiver.lock.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.headers: dict[str, str] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        with self.lock:
            self.lock.wait_for(lambda: len(self.events) >= n, timeout)
            return list(self.events)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def ol_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """A clean OpenLineage environment: no variables, no ``openlineage.yml`` in reach; the
    client's own aliasing of ``OPENLINEAGE_URL`` into ``os.environ`` is undone afterwards."""
    before = {k: v for k, v in os.environ.items() if k.startswith("OPENLINEAGE")}
    for key in before:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    yield monkeypatch
    for key in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        del os.environ[key]
    os.environ.update(before)


def http_client(url: str, **transport: Any) -> OpenLineageClient:
    return OpenLineageClient(
        config={
            "transport": {
                "type": "http",
                "url": url,
                "retry": {"total": 0},
                "timeout": 2,
                **transport,
            }
        }
    )


# -- validation against the spec, with the client's models --------------------------------------
#
# openlineage-python ships no JSON schema files: its spec is the attrs models generated from
# them (``openlineage.client.generated``). An event is valid when it can be rebuilt from its
# JSON with those models, field by field and facet by facet (each facet's class found by its
# ``_schemaURL``), and the client's own serializer writes the rebuilt event back identically:
# a required field missing, a field the spec does not have, a value of the wrong type, a
# ``runId`` that is not a UUID, an ``eventTime`` without a time, an unknown facet — each fails.


class NotOpenLineage(AssertionError):
    """The event is not what the client's models say an OpenLineage event is."""


_SCALARS: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    bool: (bool,),
}


@functools.cache
def facet_classes() -> dict[str, type]:
    """Every facet class the client knows (and our ``odibi_run``), by its schema URL."""
    import openlineage.client.generated as generated
    from openlineage.client.generated.base import BaseFacet

    from odibi_observe.sinks.openlineage import odibi_run_facet_class

    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(generated.__path__):
        module = importlib.import_module(f"{generated.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and attr.has(value) and issubclass(value, BaseFacet):
                found[value._get_schema()] = value
    ours = odibi_run_facet_class()
    found[ours._get_schema()] = ours
    return found


def rebuild(tp: Any, value: Any, where: str) -> Any:
    """``value`` (decoded JSON) as an instance of the client's type ``tp``."""
    from openlineage.client.generated.base import BaseFacet

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        (tp,) = options  # the models use X | None only
        origin = typing.get_origin(tp)
    if value is None:
        raise NotOpenLineage(f"{where}: null where the spec has {tp}")
    if origin is list:
        if not isinstance(value, list):
            raise NotOpenLineage(f"{where}: not a list")
        (item,) = typing.get_args(tp)
        return [rebuild(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise NotOpenLineage(f"{where}: not an object")
        _, item = typing.get_args(tp)
        return {k: rebuild(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp in _SCALARS:
        if not isinstance(value, _SCALARS[tp]) or (tp is not bool and isinstance(value, bool)):
            raise NotOpenLineage(f"{where}: {value!r} is not a {tp.__name__}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError as exc:
            raise NotOpenLineage(f"{where}: {exc}") from exc
    if isinstance(tp, type) and issubclass(tp, BaseFacet):
        schema = value.get("_schemaURL") if isinstance(value, dict) else None
        cls = facet_classes().get(str(schema))
        if cls is None or not issubclass(cls, tp):
            raise NotOpenLineage(f"{where}: no {tp.__name__} has the schema {schema!r}")
        tp = cls
    if isinstance(tp, type) and attr.has(tp):
        return _rebuild_attrs(tp, value, where)
    raise NotOpenLineage(f"{where}: the models have no type {tp!r}")


def _rebuild_attrs(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise NotOpenLineage(f"{where}: not an object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attr.fields(cls)}
    unknown = set(value) - set(fields)
    if unknown:
        raise NotOpenLineage(f"{where}: {cls.__name__} has no field {sorted(unknown)}")
    kwargs = {
        f.alias: rebuild(hints.get(name, Any), value[name], f"{where}.{name}")
        for name, f in fields.items()
        if f.init and name in value
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a required field missing, a validator refusing
        raise NotOpenLineage(f"{where}: {cls.__name__}: {exc}") from exc


def validate(event: dict[str, Any]) -> None:
    """``event`` is a valid OpenLineage RunEvent by the client's models (see above), and each
    facet we send is under its standard key."""
    from openlineage.client.serde import Serde

    rebuilt = rebuild(event_v2.RunEvent, event, "event")
    written = Serde.to_dict(rebuilt)
    if written != event:
        raise NotOpenLineage(f"the client writes the event back differently: {written}")
    facets = {**event["run"]["facets"], **event["job"]["facets"]}
    for output in event["outputs"]:
        facets.update(output.get("outputFacets", {}))
    for name, facet in facets.items():
        assert facet["_producer"].startswith(("http://", "https://")), name
        cls = FACETS.get(name)
        assert cls is None or facet["_schemaURL"] == cls._get_schema(), name


FACETS: dict[str, Any] = {
    "parent": parent_run.ParentRunFacet,
    "errorMessage": error_message_run.ErrorMessageRunFacet,
    "processing_engine": processing_engine_run.ProcessingEngineRunFacet,
    "jobType": job_type_job.JobTypeJobFacet,
    "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet,
}


def _broken(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``event`` with the field at dotted ``path`` set to ``value`` (or removed)."""
    out = json.loads(json.dumps(event))
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _REMOVE:
        del node[last]
    else:
        node[last] = value
    return dict(out)


_REMOVE = object()


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("run.runId", "run-1", "badly formed hexadecimal UUID"),
        ("eventTime", "2026-12-07", "has to contain time"),
        ("eventType", "FINISHED", "is not a valid EventType"),
        ("job.name", _REMOVE, "missing 1 required"),
        ("job.owner", "etl", "has no field ['owner']"),
        ("run.facets.odibi_run.color", "red", "has no field ['color']"),
        ("run.facets.errorMessage.programmingLanguage", _REMOVE, "programmingLanguage"),
        ("run.facets.errorMessage.message", 42, "42 is not a str"),
        ("run.facets.parent.run.runId", "p-1", "badly formed hexadecimal UUID"),
        ("run.facets.processing_engine._schemaURL", "https://example.com/x.json", "no RunFacet"),
        ("outputs.0.outputFacets.outputStatistics.rowCount", "12", "'12' is not a int"),
    ],
)
def test_the_validation_refuses_what_the_spec_refuses(
    receiver: Receiver, path: str, value: Any, says: str
) -> None:
    """The check the other tests rely on fails where the spec says no (and passes the event
    it was given unchanged)."""
    sink = OpenLineageSink(http_client(receiver.url))
    rec = make_record(
        status=RunStatus.FAILURE,
        error_type="E",
        error_message="m",
        pipeline_run_id=str(uuid.uuid4()),
        attributes={
            OPENLINEAGE_OUTPUT_NAMESPACE_ATTRIBUTE: "postgres://db:5432",
            OPENLINEAGE_OUTPUT_NAME_ATTRIBUTE: "sales.public.orders",
        },
    )
    sink.export([finished(rec)])
    (event,) = receiver.wait(1)
    validate(event)
    with pytest.raises(NotOpenLineage, match=re.escape(says)):
        validate(_broken(event, path, value))


def started(record: RunRecord) -> RunEvent:
    return RunEvent(
        EventKind.STARTED,
        record.finished(status=RunStatus.RUNNING, ended_ns=None, rows_processed=None),
    )


def finished(record: RunRecord) -> RunEvent:
    return RunEvent(EventKind.FINISHED, record)


def by_type(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["run"]["runId"], e["eventType"]): e for e in events}


# -- the events ---------------------------------------------------------------------------------


def test_start_and_terminal_events_posted_and_valid(receiver: Receiver) -> None:
    sink = OpenLineageSink(http_client(receiver.url))
    ok = make_record(pipeline_run_id=str(uuid.uuid4()), rows=42)
    bad = make_record(
        status=RunStatus.FAILURE,
        error_type="ValueError",
        error_message="column 'amount' not found",
        rows=None,
    )
    crashed = make_record(
        status=RunStatus.CRASHED, error_type="SIGTERM", error_message="process ended"
    )
    sink.export([started(r) for r in (ok, bad, crashed)])
    sink.export([finished(r) for r in (ok, bad, crashed)])
    events = receiver.wait(6)
    assert len(events) == 6
    for event in events:
        validate(event)
    got = by_type(events)
    assert set(got) == {
        (ok.run_id, "START"),
        (ok.run_id, "COMPLETE"),
        (bad.run_id, "START"),
        (bad.run_id, "FAIL"),
        (crashed.run_id, "START"),
        (crashed.run_id, "FAIL"),
    }
    complete = got[(ok.run_id, "COMPLETE")]
    assert complete["job"] == {**complete["job"], "namespace": "proj", "name": "sales.clean"}
    assert complete["producer"] == OPENLINEAGE_PRODUCER
    facets = complete["run"]["facets"]
    assert facets["parent"]["run"]["runId"] == ok.pipeline_run_id
    assert facets["parent"]["job"] == {"namespace": "proj", "name": "sales", "facets": {}}
    assert facets["processing_engine"]["name"] == "odibi-observe"
    assert facets["processing_engine"]["version"] == oo.__version__
    job_type = complete["job"]["facets"]["jobType"]
    assert (job_type["processingType"], job_type["jobType"], job_type["integration"]) == (
        "BATCH",
        "TASK",
        OPENLINEAGE_INTEGRATION_DEFAULT,
    )
    assert facets[OPENLINEAGE_RUN_FACET]["rowsProcessed"] == 42
    assert facets[OPENLINEAGE_RUN_FACET]["durationMs"] == ok.duration_ms
    assert "errorMessage" not in facets
    assert complete["eventTime"] == ok.ended_at.isoformat()  # type: ignore[union-attr]
    assert got[(ok.run_id, "START")]["eventTime"] == ok.started_at.isoformat()
    error = got[(bad.run_id, "FAIL")]["run"]["facets"]["errorMessage"]
    assert error["message"] == "ValueError: column 'amount' not found"
    assert error["programmingLanguage"] == "python"
    assert "parent" not in got[(bad.run_id, "FAIL")]["run"]["facets"]
    crash = got[(crashed.run_id, "FAIL")]["run"]["facets"]
    assert crash[OPENLINEAGE_RUN_FACET]["status"] == "CRASHED"
    assert crash["errorMessage"]["message"] == "SIGTERM: process ended"
    sink.shutdown()


def test_a_cancelled_run_is_aborted(receiver: Receiver) -> None:
    sink = OpenLineageSink(http_client(receiver.url))
    rec = make_record(status=RunStatus.CANCELLED, error_type="KeyboardInterrupt")
    sink.export([started(rec), finished(rec)])
    events = receiver.wait(2)
    for event in events:
        validate(event)
    assert [e["eventType"] for e in events] == ["START", "ABORT"]


def test_the_stack_trace_is_bounded_and_redacted(receiver: Receiver) -> None:
    sink = OpenLineageSink(http_client(receiver.url), max_stack_length=300)
    stack = "Traceback (most recent call last):\n" + "  password=hunter2\n" * 200
    rec = make_record(
        status=RunStatus.FAILURE, error_type="E", error_message="m", error_stack=stack
    )
    sink.export([finished(rec)])
    (event,) = receiver.wait(1)
    validate(event)
    trace = event["run"]["facets"]["errorMessage"]["stackTrace"]
    assert len(trace) <= 300
    assert "hunter2" not in trace


def test_output_dataset_with_rows_when_the_run_names_it(receiver: Receiver) -> None:
    sink = OpenLineageSink(http_client(receiver.url))
    rec = make_record(
        rows=1234,
        attributes={
            OPENLINEAGE_OUTPUT_NAMESPACE_ATTRIBUTE: "postgres://db:5432",
            OPENLINEAGE_OUTPUT_NAME_ATTRIBUTE: "sales.public.orders",
        },
    )
    sink.export([started(rec), finished(rec)])
    start, complete = receiver.wait(2)
    validate(start)
    validate(complete)
    assert start["outputs"] == []
    (output,) = complete["outputs"]
    assert (output["namespace"], output["name"]) == ("postgres://db:5432", "sales.public.orders")
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == 1234


def test_a_run_id_that_is_not_a_uuid_maps_to_the_same_uuid() -> None:
    ours = str(uuid.uuid4())
    assert run_uuid(ours) == ours
    assert run_uuid("pr-1") == run_uuid("pr-1") != run_uuid("pr-2")
    uuid.UUID(run_uuid("pr-1"))


# -- failures -----------------------------------------------------------------------------------


def test_a_down_endpoint_is_unavailable_then_each_event_is_sent_once(receiver: Receiver) -> None:
    sink = OpenLineageSink(http_client(receiver.url))
    records = [make_record() for _ in range(3)]
    batch = [e for r in records for e in (started(r), finished(r))]
    receiver.status = 503
    with pytest.raises(SinkUnavailable, match="503"):
        sink.export(batch)
    receiver.status = 201
    sink.export(batch[:3])  # part of it, then all of it again: nothing twice
    sink.export(batch)
    sink.export(batch)
    events = receiver.wait(6)
    assert len(events) == 6
    assert len(by_type(events)) == 6


def test_an_unreachable_endpoint_raises_sink_unavailable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    sink = OpenLineageSink(http_client(f"http://127.0.0.1:{port}"))
    with pytest.raises(SinkUnavailable, match="ConnectionError"):
        sink.export([finished(make_record())])


def test_an_event_the_endpoint_refuses_is_rejected_alone(receiver: Receiver) -> None:
    sink = OpenLineageSink(http_client(receiver.url))
    receiver.status = 400
    event = finished(make_record())
    with pytest.raises(RecordRejected) as rejected:
        sink.export([event])
    assert rejected.value.events == (event,)
    assert "HTTP 400" in rejected.value.reason


def test_a_late_start_does_not_reopen_a_finished_run(receiver: Receiver) -> None:
    sink = OpenLineageSink(http_client(receiver.url))
    rec = make_record()
    sink.export([finished(rec)])
    sink.export([started(rec)])
    assert [e["eventType"] for e in receiver.wait(1)] == ["COMPLETE"]
    assert receiver.requests == 1


def test_a_start_behind_its_end_in_the_same_batch_is_still_sent_first(receiver: Receiver) -> None:
    """The sidecar's batches interleave the spool's writers: the sweeper's FAIL of a killed run
    can come before the pipeline's START of it. Both are sent, every START first; otherwise
    the batch's order is kept."""
    sink = OpenLineageSink(http_client(receiver.url))
    killed, other = make_record(status=RunStatus.CRASHED), make_record()
    sink.export([finished(killed), started(other), started(killed), finished(other)])
    events = receiver.wait(4)
    assert [(e["run"]["runId"], e["eventType"]) for e in events] == [
        (other.run_id, "START"),
        (killed.run_id, "START"),
        (killed.run_id, "FAIL"),
        (other.run_id, "COMPLETE"),
    ]


# -- configured the OpenLineage way, through configure() ----------------------------------------


def test_openlineage_url_turns_it_on_and_the_pipeline_records_through_it(
    ol_env: pytest.MonkeyPatch, receiver: Receiver, fresh_observer: Configure
) -> None:
    ol_env.setenv("OPENLINEAGE_URL", receiver.url)
    ol_env.setenv("OPENLINEAGE_API_KEY", "s3cret")
    observer = fresh_observer(project="lake", handle_sigterm=False)
    assert any(isinstance(s, OpenLineageSink) for s in observer.sinks)
    with oo.node_run("daily", "load") as run:
        run.add_rows(7)
    with pytest.raises(ZeroDivisionError), oo.node_run("daily", "divide"):
        _ = 1 / 0
    assert oo.flush(20)
    events = receiver.wait(4)
    for event in events:
        validate(event)
    assert sorted((e["job"]["name"], e["eventType"]) for e in events) == [
        ("daily.divide", "FAIL"),
        ("daily.divide", "START"),
        ("daily.load", "COMPLETE"),
        ("daily.load", "START"),
    ]
    assert {e["job"]["namespace"] for e in events} == {"lake"}
    assert receiver.headers.get("Authorization") == "Bearer s3cret"
    fail = next(e for e in events if e["eventType"] == "FAIL")
    error = fail["run"]["facets"]["errorMessage"]
    assert error["message"].startswith("ZeroDivisionError")
    assert error["stackTrace"].startswith("Traceback (most recent call last):")
    assert error["stackTrace"].rstrip().endswith("ZeroDivisionError: division by zero")


def test_the_file_transport_is_read_back(
    ol_env: pytest.MonkeyPatch, tmp_path: Path, fresh_observer: Configure
) -> None:
    path = tmp_path / "lineage.jsonl"
    ol_env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    ol_env.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    ol_env.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    fresh_observer(handle_sigterm=False, mode="inline")
    with oo.node_run("p", "n") as run:
        run.rows_processed = 3
        run_id = run.run_id
    assert oo.flush(10)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    for event in events:
        validate(event)
    assert [(e["eventType"], e["run"]["runId"]) for e in events] == [
        ("START", run_id),
        ("COMPLETE", run_id),
    ]
    assert events[1]["run"]["facets"][OPENLINEAGE_RUN_FACET]["rowsProcessed"] == 3


def test_openlineage_yml_in_the_working_directory_turns_it_on(
    ol_env: pytest.MonkeyPatch, tmp_path: Path, fresh_observer: Configure
) -> None:
    path = tmp_path / "events.jsonl"
    (tmp_path / "openlineage.yml").write_text(
        f"transport:\n  type: file\n  log_file_path: {path}\n  append: true\n"
    )
    assert openlineage_configured()
    fresh_observer(handle_sigterm=False, mode="inline")
    with oo.node_run("p", "n"):
        pass
    assert oo.flush(10)
    assert [json.loads(line)["eventType"] for line in path.read_text().splitlines()] == [
        "START",
        "COMPLETE",
    ]


def test_off_unless_configured_or_asked(
    ol_env: pytest.MonkeyPatch, fresh_observer: Configure, receiver: Receiver
) -> None:
    def has_sink(observer: oo.Observer) -> bool:
        return any(isinstance(s, OpenLineageSink) for s in observer.sinks)

    assert not openlineage_configured()
    assert not has_sink(fresh_observer(handle_sigterm=False))
    ol_env.setenv("OPENLINEAGE_URL", receiver.url)
    assert has_sink(fresh_observer(handle_sigterm=False))
    assert not has_sink(fresh_observer(handle_sigterm=False, openlineage=False))
    ol_env.setenv("ODIBI_OBSERVE_OPENLINEAGE", "false")
    assert not has_sink(fresh_observer(handle_sigterm=False))
    ol_env.delenv("ODIBI_OBSERVE_OPENLINEAGE")
    ol_env.setenv("OPENLINEAGE_DISABLED", "true")
    assert not has_sink(fresh_observer(handle_sigterm=False, openlineage=True))


# -- the Sink contract --------------------------------------------------------------------------


class TestOpenLineageSink(SinkContract):
    """Read back from the client's file transport; the status, rows and duration of each
    terminal event are in its ``odibi_run`` facet (FAIL alone cannot tell a crash)."""

    @pytest.fixture
    def sink(self, tmp_path: Path) -> Iterator[OpenLineageSink]:
        self.path = tmp_path / "lineage.jsonl"
        sink = OpenLineageSink(
            OpenLineageClient(
                config={
                    "transport": {"type": "file", "log_file_path": str(self.path), "append": True}
                }
            )
        )
        yield sink
        sink.shutdown()

    def summary(self, sink: Sink) -> Summary:
        out = Summary()
        if not self.path.exists():
            return out
        for line in self.path.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            validate(event)
            if event["eventType"] == "START":
                continue
            facet = event["run"]["facets"][OPENLINEAGE_RUN_FACET]
            out.runs[facet["status"]] += 1
            out.rows += facet.get("rowsProcessed") or 0
            out.duration_ms += facet.get("durationMs") or 0
        return out


# -- delivery through the bus, and runs of an Odibi project ---------------------------------------


def test_the_bus_retries_while_the_endpoint_is_down(
    ol_env: pytest.MonkeyPatch, receiver: Receiver, fresh_observer: Configure
) -> None:
    """A 503 endpoint: the run is not lost, the sink's errors are counted, and once the
    endpoint is back the bus delivers each event once."""
    ol_env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "http")
    ol_env.setenv("OPENLINEAGE__TRANSPORT__URL", receiver.url)
    ol_env.setenv("OPENLINEAGE__TRANSPORT__RETRY", '{"total": 0}')
    receiver.status = 503
    observer = fresh_observer(handle_sigterm=False, mode="background")
    with oo.node_run("p", "n") as run:
        run_id = run.run_id
    with receiver.lock:
        receiver.lock.wait_for(lambda: receiver.requests >= 1, 10)
    assert not oo.flush(1.0)  # still undelivered
    errors = observer.registry.get_sample_value(
        "odibi_observe_sink_errors_total", {"sink": "openlineage"}
    )
    assert errors is not None and errors >= 1
    receiver.status = 201
    assert oo.flush(30)
    events = receiver.wait(2)
    assert [(e["eventType"], e["run"]["runId"]) for e in events] == [
        ("START", run_id),
        ("COMPLETE", run_id),
    ]


def test_runs_of_an_odibi_project_say_so(ol_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.test_odibi_integration import SUCCESS_NODES, make_project, run_in_process

    path = tmp_path / "lineage.jsonl"
    ol_env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    ol_env.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    ol_env.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    outcome = run_in_process(make_project(tmp_path / "shop", SUCCESS_NODES).parent)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    records = outcome.records()
    assert len(events) == 2 * len(records)
    from odibi_observe.integrations.odibi import odibi_version

    for event in events:
        validate(event)
        assert event["job"]["namespace"] == "shop"
        assert event["job"]["facets"]["jobType"]["integration"] == "ODIBI"
        engine = event["run"]["facets"]["processing_engine"]
        assert (engine["name"], engine["version"]) == ("Odibi", odibi_version())
        assert engine["openlineageAdapterVersion"] == oo.__version__
        parent = event["run"]["facets"]["parent"]
        assert parent["run"]["runId"] == run_uuid(outcome.pipeline_run_id)
        assert parent["job"]["name"] == "sales"
    complete = {e["run"]["runId"]: e for e in events if e["eventType"] == "COMPLETE"}
    assert set(complete) == {r.run_id for r in records.values()}
    for record in records.values():
        facet = complete[record.run_id]["run"]["facets"][OPENLINEAGE_RUN_FACET]
        assert facet.get("rowsProcessed") == record.rows_processed
        assert facet["durationMs"] == record.duration_ms


def test_the_sidecar_sends_lineage_and_a_fail_for_a_killed_run(
    ol_env: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> None:
    """In ``mode="sidecar"`` the sidecar builds the OpenLineage sink from the same OpenLineage
    configuration and feeds it from its own spool cursor; the sweeper's CRASHED close of a
    SIGKILLed run is a FAIL with the run's original runId."""
    import signal

    from odibi_observe.sidecar.service import Sidecar
    from tests.helpers import wait_until
    from tests.test_sidecar_service import (
        catalog_rows,
        options,
        settings,
        start_hanging_pipeline,
    )

    path = tmp_path / "lineage.jsonl"
    ol_env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "file")
    ol_env.setenv("OPENLINEAGE__TRANSPORT__LOG_FILE_PATH", str(path))
    ol_env.setenv("OPENLINEAGE__TRANSPORT__APPEND", "true")
    spool = tmp_path / "spool"
    sidecar = Sidecar(
        options(sqlite_url, spool, sweep_interval=3600), settings=settings(sqlite_url)
    ).start()
    try:
        proc, hung, done = start_hanging_pipeline(spool)

        def events() -> list[dict[str, Any]]:
            if not path.exists():
                return []
            return [json.loads(line) for line in path.read_text().splitlines()]

        assert wait_until(lambda: len(events()) >= 3, 20)
        assert wait_until(lambda: hung in catalog_rows(sqlite_url), 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        swept = sidecar.sweep_once()
        assert swept is not None
        assert [r.run_id for r in swept.closed] == [hung]
        assert wait_until(lambda: len(events()) >= 4, 20)
        got = events()
        for event in got:
            validate(event)
        assert sorted((e["run"]["runId"], e["eventType"]) for e in got) == sorted(
            [(done[0], "START"), (done[0], "COMPLETE"), (hung, "START"), (hung, "FAIL")]
        )
        fail = next(e for e in got if e["eventType"] == "FAIL")
        assert fail["run"]["facets"][OPENLINEAGE_RUN_FACET]["status"] == "CRASHED"
        assert "errorMessage" in fail["run"]["facets"]
    finally:
        sidecar.stop(timeout=5)


def test_without_the_package_asked_is_an_error_configured_is_a_warning(
    ol_env: pytest.MonkeyPatch,
    receiver: Receiver,
    fresh_observer: Configure,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import sys

    from odibi_observe.config import ConfigurationError

    ol_env.setitem(sys.modules, "openlineage.client", None)  # import raises ImportError
    with pytest.raises(ConfigurationError, match=r"openlineage=true needs openlineage-python"):
        fresh_observer(handle_sigterm=False, openlineage=True, strict=True)
    ol_env.setenv("OPENLINEAGE_URL", receiver.url)
    observer = fresh_observer(handle_sigterm=False, strict=True)
    assert not any(isinstance(s, OpenLineageSink) for s in observer.sinks)
    assert "openlineage-python is not installed" in caplog.text


WITHOUT_THE_CLIENT = """
import sys
# Neither the OpenLineage client nor attrs (its dependency) is installed: imports of them fail.
for name in ("openlineage", "attr", "attrs"):
    sys.modules[name] = None
import odibi_observe as oo
oo.configure(catalog_url={url!r}, strict=True, handle_sigterm=False)
with oo.node_run("p", "n") as run:
    run.rows_processed = 3
assert oo.shutdown(timeout=10)
print("sinks", sorted(s.name for s in oo.get_observer().sinks))
"""


def test_without_the_client_installed_strict_configuration_works(tmp_path: Path) -> None:
    """The package's own install has no OpenLineage client: the built-in sink must not need it
    to be imported (a ``strict=True`` observer, as the demo and the sidecar build, failed)."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLINEAGE")}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_CLIENT.format(url=url)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "openlineage" not in done.stdout


# -- the composite transport, configured by OPENLINEAGE__TRANSPORT__* or openlineage.yml ---------


def _composite_env(ol_env: pytest.MonkeyPatch, url: str, path: Path) -> None:
    """Composite = http (``url``) + file (``path``), in the client's nested variables."""
    for key, value in {
        "TYPE": "composite",
        "TRANSPORTS__MARQUEZ__TYPE": "http",
        "TRANSPORTS__MARQUEZ__URL": url,
        "TRANSPORTS__MARQUEZ__RETRY": '{"total": 0}',
        "TRANSPORTS__ARCHIVE__TYPE": "file",
        "TRANSPORTS__ARCHIVE__LOG_FILE_PATH": str(path),
        "TRANSPORTS__ARCHIVE__APPEND": "true",
    }.items():
        ol_env.setenv(f"OPENLINEAGE__TRANSPORT__{key}", value)


def _pipeline_runs() -> list[str]:
    """One run that succeeds and one that fails, with no odibi-observe setting."""
    ids = []
    with oo.node_run("daily", "load") as run:
        run.add_rows(7)
        ids.append(str(run.run_id))
    with pytest.raises(ZeroDivisionError), oo.node_run("daily", "divide") as run:
        ids.append(str(run.run_id))
        _ = 1 / 0
    assert oo.flush(20)
    return ids


def test_the_composite_transport_sends_each_event_to_every_child(
    ol_env: pytest.MonkeyPatch, receiver: Receiver, tmp_path: Path, fresh_observer: Configure
) -> None:
    path = tmp_path / "archive.jsonl"
    _composite_env(ol_env, receiver.url, path)
    observer = fresh_observer(handle_sigterm=False, mode="inline")
    (sink,) = [s for s in observer.sinks if isinstance(s, OpenLineageSink)]
    assert sink.client.transport.kind == "composite"
    load, divide = _pipeline_runs()
    posted = receiver.wait(4)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    for event in (*posted, *written):
        validate(event)
    assert posted == written  # the same events, byte for byte once decoded
    assert sorted((e["run"]["runId"], e["eventType"]) for e in posted) == sorted(
        [(load, "START"), (load, "COMPLETE"), (divide, "START"), (divide, "FAIL")]
    )


def test_a_composite_whose_children_all_fail_is_retried_by_the_bus(
    ol_env: pytest.MonkeyPatch, receiver: Receiver, tmp_path: Path, fresh_observer: Configure
) -> None:
    """``openlineage.yml`` named by ``OPENLINEAGE_CONFIG``: http (503) + file (a directory
    that cannot be a file): the client raises, the bus keeps the events, and once the
    endpoint answers they are posted, each once."""
    blocked = tmp_path / "not-a-file"
    blocked.mkdir()
    config = tmp_path / "conf" / "openlineage.yml"
    config.parent.mkdir()
    config.write_text(
        "transport:\n"
        "  type: composite\n"
        "  transports:\n"
        f"    marquez: {{type: http, url: '{receiver.url}', retry: {{total: 0}}, timeout: 2}}\n"
        f"    archive: {{type: file, log_file_path: '{blocked}', append: true}}\n"
    )
    ol_env.setenv("OPENLINEAGE_CONFIG", str(config))
    receiver.status = 503
    fresh_observer(handle_sigterm=False, mode="background")
    with oo.node_run("p", "n") as run:
        run_id = str(run.run_id)
    with receiver.lock:
        receiver.lock.wait_for(lambda: receiver.requests >= 1, 10)
    assert not oo.flush(1.0)
    receiver.status = 201
    assert oo.flush(30)
    assert [(e["eventType"], e["run"]["runId"]) for e in receiver.wait(2)] == [
        ("START", run_id),
        ("COMPLETE", run_id),
    ]


def test_a_composite_with_one_child_taking_the_event_counts_it_as_sent(
    receiver: Receiver, tmp_path: Path
) -> None:
    """The client's default (``continue_on_failure: true``): an event one child took is
    delivered; the child that was down does not get it later (as docs/openlineage.md says)."""
    path = tmp_path / "archive.jsonl"
    sink = OpenLineageSink(
        OpenLineageClient(
            config={
                "transport": {
                    "type": "composite",
                    "transports": {
                        "marquez": {"type": "http", "url": receiver.url, "retry": {"total": 0}},
                        "archive": {"type": "file", "log_file_path": str(path), "append": True},
                    },
                }
            }
        )
    )
    receiver.status = 503
    rec = make_record()
    sink.export([started(rec), finished(rec)])  # no SinkUnavailable: the file took both
    receiver.status = 201
    sink.export([started(rec), finished(rec)])  # a replay: each event was sent once already
    assert [json.loads(line)["eventType"] for line in path.read_text().splitlines()] == [
        "START",
        "COMPLETE",
    ]
    assert receiver.requests == 2 and receiver.events == []


# -- sidecar mode over HTTP: the spool cursor of its own, SIGKILL ---------------------------------


def test_the_sidecar_s_lineage_has_its_own_cursor_and_a_killed_run_gets_its_fail(
    ol_env: pytest.MonkeyPatch, receiver: Receiver, sqlite_url: str, tmp_path: Path
) -> None:
    """The lineage endpoint is down (503) while a sidecar-mode pipeline runs and is SIGKILLed:
    the catalog gets every row meanwhile (its cursor is not held back), the ``openlineage``
    cursor keeps the events; once the endpoint is back each event is posted once, the killed
    run's FAIL (the sweeper's CRASHED close) with its original runId; a restarted sidecar
    posts nothing again (the cursor's position is on disk)."""
    import signal

    from odibi_observe.sidecar.service import Sidecar
    from tests.helpers import wait_until
    from tests.test_sidecar_service import (
        catalog_rows,
        options,
        settings,
        start_hanging_pipeline,
    )

    ol_env.setenv("OPENLINEAGE__TRANSPORT__TYPE", "http")
    ol_env.setenv("OPENLINEAGE__TRANSPORT__URL", receiver.url)
    ol_env.setenv("OPENLINEAGE__TRANSPORT__RETRY", '{"total": 0}')
    receiver.status = 503
    spool = tmp_path / "spool"

    def start() -> Sidecar:
        return Sidecar(
            options(sqlite_url, spool, sweep_interval=3600), settings=settings(sqlite_url)
        ).start()

    def lineage_backlog(sidecar: Sidecar) -> int:
        (cursor,) = [c for c in sidecar.spool.open_cursors() if c.name == OPENLINEAGE_SINK]
        return cursor.backlog()

    sidecar = start()
    try:
        proc, hung, done = start_hanging_pipeline(spool)
        assert wait_until(lambda: {hung, *done} <= set(catalog_rows(sqlite_url)), 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        swept = sidecar.sweep_once()
        assert swept is not None and [r.run_id for r in swept.closed] == [hung]
        assert catalog_rows(sqlite_url)[hung].status is RunStatus.CRASHED
        assert wait_until(lambda: receiver.requests >= 1, 20)
        assert receiver.events == []
        assert lineage_backlog(sidecar) >= 3  # START, COMPLETE, START at least; not acked
        receiver.status = 201
        # The pump's backoff after the failures above may be up to 30 s (sidecar defaults).
        delivered = wait_until(
            lambda: len(receiver.events) >= 4 and lineage_backlog(sidecar) == 0, 120
        )
        assert delivered, (
            [(e["run"]["runId"], e["eventType"]) for e in receiver.events],
            lineage_backlog(sidecar),
            receiver.requests,
        )
    finally:
        sidecar.stop(timeout=5)
    got = list(receiver.events)
    for event in got:
        validate(event)
    assert sorted((e["run"]["runId"], e["eventType"]) for e in got) == sorted(
        [(done[0], "START"), (done[0], "COMPLETE"), (hung, "START"), (hung, "FAIL")]
    )
    fail = next(e for e in got if e["eventType"] == "FAIL")
    assert fail["run"]["facets"][OPENLINEAGE_RUN_FACET]["status"] == "CRASHED"
    start_event = next(e for e in got if e["eventType"] == "START" and e["run"]["runId"] == hung)
    assert fail["job"] == start_event["job"] == {**fail["job"], "name": "nightly.hang"}
    message = fail["run"]["facets"]["errorMessage"]["message"]
    assert message.startswith(CRASH_HEARTBEAT_LOST + ": ") and "closed as CRASHED" in message
    again = start()
    try:
        assert wait_until(lambda: lineage_backlog(again) == 0, 20)
        time.sleep(1.0)  # a pump that re-read the spool would have posted by now
    finally:
        again.stop(timeout=5)
    assert len(receiver.events) == 4


# -- the events docs/openlineage.md shows ---------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "openlineage.md"


def _doc_blocks() -> list[dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return [json.loads(block) for block in blocks]


def _shape(value: Any, path: str = "") -> set[str]:
    """Every key path in ``value`` (list items as ``[]``): the structure, not the values."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{path}.{k}", *_shape(v, f"{path}.{k}")}}
    if isinstance(value, list):
        return {p for v in value for p in _shape(v, f"{path}[]")}
    return set()


def test_the_events_in_the_docs_are_what_the_sink_sends(tmp_path: Path) -> None:
    """Each full event the page shows is valid and has the shape of the event the sink sends
    now for such a run; each excerpt of facets is valid by the client's models."""
    from openlineage.client.generated.base import RunFacet

    blocks = _doc_blocks()
    full = [b for b in blocks if "run" in b and "job" in b]
    excerpts = [b for b in blocks if b not in full]
    assert [b["eventType"] for b in full] == ["COMPLETE"]
    assert [b["eventType"] for b in excerpts] == ["FAIL", "FAIL"]
    path = tmp_path / "lineage.jsonl"
    sink = OpenLineageSink(
        OpenLineageClient(
            config={"transport": {"type": "file", "log_file_path": str(path), "append": True}}
        )
    )
    sink.export([finished(make_record(pipeline_run_id=str(uuid.uuid4()), rows=1200))])
    (sent,) = [json.loads(line) for line in path.read_text().splitlines()]
    for event in full:
        validate(event)
        assert _shape(event) == _shape(sent)
    for excerpt in excerpts:
        for name, facet in excerpt.items():
            if isinstance(facet, dict):
                rebuild(RunFacet, facet, f"docs {name}")
                assert FACETS.get(name) is None or FACETS[name]._get_schema() == facet["_schemaURL"]
    failed, crashed = (e[OPENLINEAGE_RUN_FACET]["status"] for e in excerpts)
    assert (failed, crashed) == ("FAILURE", "CRASHED")
    # A raised exception's FAIL carries its stack trace; the sweeper's close has none.
    assert excerpts[0]["errorMessage"]["stackTrace"].startswith("Traceback")
    assert "stackTrace" not in excerpts[1]["errorMessage"]
