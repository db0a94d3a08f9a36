"""The OpenTelemetry CI/CD semantic conventions on our spans, read back from a real OTLP receiver.

Node spans carry ``cicd.pipeline.*`` beside ``odibi.*``; the pipeline span is ``RUN {pipeline}``
(kind SERVER) with ``cicd.pipeline.result``; every status maps to its semconv result; the link
setting ``task_run_url_template`` gives ``cicd.pipeline.task.run.url.full``, and an unusable
template is warned about once and left out without costing the span. The names are checked
against the ``opentelemetry-semantic-conventions`` package itself.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import cicd_attributes
from opentelemetry.semconv.attributes import error_attributes

from odibi_observe.conventions import (
    CICD_PIPELINE_NAME,
    CICD_PIPELINE_RESULT,
    CICD_PIPELINE_RUN_ID,
    CICD_TASK_NAME,
    CICD_TASK_RUN_ID,
    CICD_TASK_RUN_RESULT,
    CICD_TASK_RUN_URL,
    ERROR_TYPE_ATTRIBUTE,
    EXCEPTION_STACKTRACE,
    PIPELINE_RESULTS,
    PIPELINE_SPAN_NAME_FORMAT,
    TASK_RUN_RESULTS,
    RunStatus,
)
from odibi_observe.sinks.otel import OtelSink
from tests.helpers import finished, make_record
from tests.otlp_receiver import OtlpReceiver

ROOT = Path(__file__).resolve().parent.parent
STATUS_UNSET, STATUS_ERROR = 0, 2
SPAN_KIND_SERVER = 2  # OTLP's enum: INTERNAL = 1, SERVER = 2


@pytest.fixture(autouse=True)
def _no_global_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    """No application-configured OTel from other test modules: the sink exports itself."""
    import opentelemetry.metrics._internal as metrics_internal

    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", None)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def _sink(endpoint: str, template: str | None = None) -> OtelSink:
    return OtelSink(
        otlp_endpoint=endpoint, install_global=False, metrics=False, task_run_url_template=template
    )


def test_the_names_are_the_semconv_packages() -> None:
    assert (CICD_PIPELINE_NAME, CICD_PIPELINE_RUN_ID, CICD_PIPELINE_RESULT) == (
        cicd_attributes.CICD_PIPELINE_NAME,
        cicd_attributes.CICD_PIPELINE_RUN_ID,
        cicd_attributes.CICD_PIPELINE_RESULT,
    )
    assert (CICD_TASK_NAME, CICD_TASK_RUN_ID, CICD_TASK_RUN_RESULT, CICD_TASK_RUN_URL) == (
        cicd_attributes.CICD_PIPELINE_TASK_NAME,
        cicd_attributes.CICD_PIPELINE_TASK_RUN_ID,
        cicd_attributes.CICD_PIPELINE_TASK_RUN_RESULT,
        cicd_attributes.CICD_PIPELINE_TASK_RUN_URL_FULL,
    )
    assert ERROR_TYPE_ATTRIBUTE == error_attributes.ERROR_TYPE
    values = {v.value for v in cicd_attributes.CicdPipelineTaskRunResultValues}
    assert set(TASK_RUN_RESULTS.values()) <= values
    assert {s for s in RunStatus if s.is_terminal} == set(TASK_RUN_RESULTS) == set(PIPELINE_RESULTS)
    assert PIPELINE_SPAN_NAME_FORMAT.format(pipeline="sales") == "RUN sales"


@pytest.mark.parametrize(
    ("status", "result"),
    [
        (RunStatus.SUCCESS, "success"),
        (RunStatus.FAILURE, "failure"),
        (RunStatus.CRASHED, "error"),
        (RunStatus.CANCELLED, "cancellation"),
    ],
)
def test_each_status_arrives_with_its_semconv_result_and_the_run_link(
    receiver: OtlpReceiver, status: RunStatus, result: str
) -> None:
    template = (
        "https://grafana.example/d/odibi?var-pipeline={pipeline}&var-node={node}&run={run_id}"
    )
    error = (None, None) if status is RunStatus.SUCCESS else ("KeyboardInterrupt", "stop")
    rec = make_record(
        status=status, error_type=error[0], error_message=error[1], pipeline_run_id="prun-7"
    )
    sink = _sink(receiver.endpoint, template)
    sink.export([finished(rec)])
    sink.shutdown()

    [span] = receiver.wait_for_spans(1)
    attrs = span.attributes
    assert attrs[CICD_TASK_RUN_RESULT] == result
    assert attrs[CICD_PIPELINE_NAME] == rec.pipeline
    assert attrs[CICD_PIPELINE_RUN_ID] == "prun-7"
    assert attrs[CICD_TASK_NAME] == rec.node
    assert attrs[CICD_TASK_RUN_ID] == rec.run_id
    assert attrs[CICD_TASK_RUN_URL] == (
        f"https://grafana.example/d/odibi?var-pipeline={rec.pipeline}&var-node={rec.node}"
        f"&run={rec.run_id}"
    )
    assert attrs["odibi.status"] == status.value  # ours stay beside the standard ones
    if status is RunStatus.SUCCESS:
        assert ERROR_TYPE_ATTRIBUTE not in attrs
        assert (span.status_code, span.events) == (STATUS_UNSET, [])
    else:
        assert attrs[ERROR_TYPE_ATTRIBUTE] == "KeyboardInterrupt"
        assert [name for name, _ in span.events] == ["exception"]
        # An operator's abort is not an error of the node: no ERROR status for it.
        expected = STATUS_UNSET if status is RunStatus.CANCELLED else STATUS_ERROR
        assert span.status_code == expected


def test_no_pipeline_run_id_and_no_template_leave_their_attributes_out(
    receiver: OtlpReceiver,
) -> None:
    sink = _sink(receiver.endpoint)
    sink.export([finished(make_record(pipeline_run_id=None))])
    sink.shutdown()
    [span] = receiver.wait_for_spans(1)
    assert CICD_PIPELINE_RUN_ID not in span.attributes
    assert CICD_TASK_RUN_URL not in span.attributes
    assert CICD_TASK_RUN_ID in span.attributes


@pytest.mark.parametrize(
    "template",
    [
        "https://grafana.example/run/{run_id",
        "https://grafana.example/{user}/{run_id}",
        "https://grafana.example/{run_id!z}",
    ],
)
def test_an_unusable_template_is_warned_once_and_the_span_still_exported(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture, template: str
) -> None:
    caplog.set_level(logging.WARNING, logger="odibi_observe")
    first, second = _sink(receiver.endpoint, template), _sink(receiver.endpoint, template)
    first.export([finished(make_record())])
    second.export([finished(make_record())])
    first.shutdown()
    second.shutdown()

    spans = receiver.wait_for_spans(2)
    assert len(spans) == 2
    assert all(CICD_TASK_RUN_URL not in s.attributes for s in spans)
    assert all(CICD_TASK_RUN_RESULT in s.attributes for s in spans)
    warnings = [r for r in caplog.records if "task_run_url_template" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert template in warnings[0].getMessage()


PIPELINES = """
    import json, os
    import odibi_observe as oo

    oo.configure(otlp_endpoint=os.environ["ENDPOINT"], otel_metrics=False)

    @oo.observe_node
    def step(action):
        if action == "fail":
            raise ValueError("bad input")
        if action == "cancel":
            raise KeyboardInterrupt("operator pressed Ctrl-C")
        return [1, 2]

    ids = {}
    for action in ("ok", "fail", "cancel"):
        try:
            with oo.pipeline_run("sales_" + action) as pipeline_run_id:
                ids[action] = pipeline_run_id
                step(action)
        except (ValueError, KeyboardInterrupt):
            pass
    assert oo.shutdown(10)
    print(json.dumps(ids))
"""


def test_pipeline_spans_are_run_spans_of_kind_server_with_their_result(
    receiver: OtlpReceiver,
) -> None:
    env = {
        **os.environ,
        "ENDPOINT": receiver.endpoint,
        "PYTHONPATH": str(ROOT),
        "ODIBI_OBSERVE_TASK_RUN_URL_TEMPLATE": "https://ci.example/{pipeline_run_id}/{node}",
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PIPELINES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    ids: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])

    received = receiver.wait_for_spans(6)
    spans = {s.name: s for s in received}
    for action, result in (("ok", "success"), ("fail", "failure"), ("cancel", "cancellation")):
        pipeline = spans[PIPELINE_SPAN_NAME_FORMAT.format(pipeline=f"sales_{action}")]
        assert pipeline.kind == SPAN_KIND_SERVER
        assert pipeline.attributes[CICD_PIPELINE_NAME] == f"sales_{action}"
        assert pipeline.attributes[CICD_PIPELINE_RUN_ID] == ids[action]
        assert pipeline.attributes[CICD_PIPELINE_RESULT] == result
        assert pipeline.attributes["odibi.pipeline_run_id"] == ids[action]
        (node,) = [s for s in received if s.parent_span_id == pipeline.span_id]
        assert node.attributes[CICD_PIPELINE_RUN_ID] == ids[action]
        assert node.attributes[CICD_TASK_RUN_URL] == f"https://ci.example/{ids[action]}/step"
    ok, fail, cancel = (spans[f"RUN sales_{a}"] for a in ("ok", "fail", "cancel"))
    assert ERROR_TYPE_ATTRIBUTE not in ok.attributes and ok.events == []
    assert fail.status_code == STATUS_ERROR
    assert fail.attributes[ERROR_TYPE_ATTRIBUTE] == "ValueError"
    assert cancel.status_code == STATUS_UNSET
    assert cancel.attributes[ERROR_TYPE_ATTRIBUTE] == "KeyboardInterrupt"
    ((name, event),) = cancel.events
    assert name == "exception" and event["exception.type"] == "KeyboardInterrupt"
    stack = event[EXCEPTION_STACKTRACE]
    assert stack.startswith("Traceback (most recent call last):")
    assert ", in step\n" in stack and stack.endswith("KeyboardInterrupt: operator pressed Ctrl-C\n")
