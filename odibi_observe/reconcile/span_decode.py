"""Decoded OTLP-JSON node spans (any dialect trace stores write) → TraceRuns.

The span itself is decoded by :mod:`odibi_observe._spandecode`, the decoder the sidecar's
receiver and span ledger use too, so a span reads the same in every reader. What is left here
is what reconciliation does with a decoded span: place it in the read range, and decide what
it can compare. A span that cannot be keyed is reported and skipped; a span whose
``odibi.rows_processed`` or ``odibi.status`` has the wrong type is kept, with that field left
out of the comparison (``TraceRun.unchecked``), and reported.

This is the general path. :mod:`~odibi_observe.reconcile.otlp_files` scans well-formed lines
of the common shape much faster and falls back to this decoder for everything else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from odibi_observe._spandecode import (
    A_ROWS,
    A_STATUS,
    NodeSpan,
    SpanProblem,
    decode_json,
)
from odibi_observe.reconcile import model

#: The field a wrong attribute takes out of the comparison, and what the report says.
_UNCHECKED: Final = {
    A_STATUS: ("status", "status not compared"),
    A_ROWS: ("rows", "rows not compared"),
}


def span_to_run(
    span: Mapping[str, Any],
    resource: Mapping[str, Any],
    *,
    origin: str,
    source: str,
    read_range: model.ReadRange,
    log: model.ReadLog,
) -> model.TraceRun | None:
    """The :class:`TraceRun` of one OTLP-JSON span, or None (counted or reported in ``log``).

    None for a span that is not an odibi node span (counted as ignored), that is outside the
    read range (counted), or that carries ``odibi.run_id`` but cannot be used (reported).
    """
    try:
        node = decode_json(span, resource)
    except SpanProblem as exc:
        log.add_error(source, origin, str(exc))
        return None
    if node is None:
        log.ignored_spans += 1
        return None
    return node_to_run(node, origin=origin, source=source, read_range=read_range, log=log)


def node_to_run(
    node: NodeSpan,
    *,
    origin: str,
    source: str,
    read_range: model.ReadRange,
    log: model.ReadLog,
) -> model.TraceRun | None:
    """The :class:`TraceRun` of a decoded node span in ``read_range``, else None."""
    where = f"run {node.run_id}"
    start, end = node.start_ns, node.end_ns
    if start > read_range.now_ns + model.FUTURE_SKEW_NS:
        log.add_error(
            source,
            origin,
            f"{where}: span starts in the future "
            f"({model.iso_ns(start)}); span skipped (check the producing host's "
            "clock)",
        )
        return None
    if not read_range.start_ns <= start < read_range.end_ns:
        log.outside_range += 1
        return None
    unchecked: list[str] = []
    for attribute, problem in node.wrong.items():
        field_name, consequence = _UNCHECKED.get(attribute, (None, ""))
        log.add_error(
            source,
            origin,
            f"{where}: {attribute} {problem}" + (f"; {consequence}" if consequence else ""),
        )
        if field_name:
            unchecked.append(field_name)
    if end < start:
        log.add_error(source, origin, f"{where}: span ends before it starts; duration not compared")
        unchecked.append("duration")
        end = start
    return model.TraceRun(
        run_id=node.run_id,
        trace_id=node.trace_id,
        span_id=node.span_id,
        start_ns=start,
        end_ns=end,
        status=model.normalize_status(node.status) if node.status else "",
        rows=node.rows,
        pipeline=node.pipeline or "",
        node=node.node or "",
        project=node.project or "",
        environment=node.environment or "",
        parent_span_id=node.parent_span_id,
        pipeline_run_id=node.pipeline_run_id or None,
        attempt=1 if node.attempt is None else node.attempt,
        error_type=node.error_type,
        error_message=node.error_message,
        suggestions=node.suggestions,
        attributes_json=json.dumps(node.user_attributes, ensure_ascii=False, default=str)
        if node.user_attributes
        else None,
        host=node.host,
        pid=node.pid,
        service_name=node.service_name,
        unchecked=",".join(unchecked),
        origin=origin,
    )
