"""The direct OTLP/JSON span encoder renders exactly what protobuf's JSON mapping renders."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from odibi_observe._otlp_json import decode_request_json, encode_request_json, encode_spans_json

ids = st.integers(min_value=1, max_value=2**64 - 1)
scalars = st.one_of(
    st.text(max_size=20),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
)
values = st.one_of(
    scalars,
    st.lists(st.text(max_size=5), max_size=3).map(tuple),
    st.lists(st.integers(-5, 5), max_size=3).map(tuple),
)
attributes = st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=5)


@st.composite
def spans(draw: st.DrawFn) -> ReadableSpan:
    trace_id = draw(st.integers(min_value=1, max_value=2**128 - 1))
    parent = draw(
        st.one_of(
            st.none(), ids.map(lambda i: SpanContext(trace_id, i, is_remote=draw(st.booleans())))
        )
    )
    start = draw(st.integers(min_value=1, max_value=2**62))
    status = draw(
        st.sampled_from(
            [Status(StatusCode.UNSET), Status(StatusCode.OK), Status(StatusCode.ERROR, "boom: x")]
        )
    )
    resource = Resource.create(
        draw(
            st.dictionaries(
                st.sampled_from(["a", "b", "service.name"]), st.text(max_size=5), max_size=2
            )
        )
    )
    return ReadableSpan(
        name=draw(st.text(max_size=10)),
        context=SpanContext(
            trace_id,
            draw(ids),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=TraceState([("k", "v")]) if draw(st.booleans()) else None,
        ),
        parent=parent,
        resource=resource,
        attributes=draw(attributes),
        events=[
            Event(draw(st.text(max_size=5)), draw(attributes), timestamp=start + 1)
            for _ in range(draw(st.integers(0, 2)))
        ],
        links=[
            Link(SpanContext(trace_id, draw(ids), is_remote=True), draw(attributes))
            for _ in range(draw(st.integers(0, 1)))
        ],
        kind=draw(st.sampled_from(list(SpanKind))),
        status=status,
        start_time=start,
        end_time=start + draw(st.integers(min_value=0, max_value=10**12)),
        instrumentation_scope=draw(
            st.sampled_from(
                [InstrumentationScope("odibi_observe", "0.1.0"), InstrumentationScope("app")]
            )
        ),
    )


def _normalise(data: object) -> object:
    """NaN != NaN; compare its rendering instead."""
    if isinstance(data, float) and math.isnan(data):
        return "NaN"
    if isinstance(data, dict):
        return {k: _normalise(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_normalise(v) for v in data]
    return data


@settings(max_examples=200, deadline=None)
@given(st.lists(spans(), min_size=1, max_size=4))
def test_direct_encoding_equals_the_protobuf_json_mapping(batch: list[ReadableSpan]) -> None:
    direct = encode_spans_json(batch)
    via_protobuf = encode_request_json(encode_spans(batch))
    assert _normalise(json.loads(direct)) == _normalise(json.loads(via_protobuf))
    assert "\n" not in direct
    decoded = decode_request_json(direct)  # and it parses back as an OTLP request
    assert sum(len(ss.spans) for rs in decoded.resource_spans for ss in rs.scope_spans) == len(
        batch
    )
