"""Pipeline runs against their spans: each ``meta_pipeline_runs`` row has its ``RUN
{pipeline}`` span, with the same status and node counts.

A pipeline run is recorded twice from one plan (``odibi_observe._instrument.PipelinePlan``):
the row the catalog sink writes, and the pipeline span whose ``odibi.nodes_*`` attributes and
``cicd.pipeline.result`` are set as it ends. This module reads both sides through the source
contracts (``pipeline_runs``; a source that cannot read pipeline runs answers None and is left
out), joins them by pipeline run id and reports, with the node-run kinds where they fit:

* ``missing_in_traces`` — a finished row without its span (the span was lost or dropped);
  a ``RUNNING`` row has no span yet (the span is exported when the pipeline run ends): in
  flight, until no end came for ``crash_after`` (``stale_running``: the process died);
* ``missing_in_catalog`` — a span without its row (the catalog write was lost);
* ``status_mismatch`` — the two disagree on the pipeline run's status;
* ``count_mismatch`` — they disagree on how many nodes were planned, ran, were skipped or
  failed.

Pipeline runs are few (one per pipeline per schedule), so both sides are held in memory for
the window; only spans that carry the counts are pipeline-run spans (pipeline spans written
before the plan existed have none and are not pipeline runs on record).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from odibi_observe._otlp_json import decode_request_json, iter_spans
from odibi_observe.conventions import (
    CICD_PIPELINE_RESULT,
    FIELDS,
    PIPELINE_COUNTS,
    PIPELINE_RESULTS,
    RunStatus,
)
from odibi_observe.reconcile.model import (
    Discrepancy,
    PipelineRunSide,
    ReadLog,
    ReadRange,
    Window,
    iso_ns,
)
from odibi_observe.reconcile.sources import CatalogSource, SourceError, TraceSource
from odibi_observe.record import datetime_to_ns

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: Present in every OTLP-JSON line that holds a pipeline-run span: lines without it are not
#: decoded at all.
_MARKER: Final = (PIPELINE_COUNTS.planned.attribute or "").encode()
_RESULT_STATUS: Final = {result: status.value for status, result in PIPELINE_RESULTS.items()}
_RUN_ID: Final = FIELDS.run_id.attribute or ""
_PIPELINE_RUN_ID: Final = FIELDS.pipeline_run_id.attribute or ""
_PIPELINE: Final = FIELDS.pipeline.attribute or ""
_GZIP_MAGIC: Final = b"\x1f\x8b"
_RUNNING: Final = RunStatus.RUNNING.value


def _count(value: Any) -> int | None:
    return value if type(value) is int else None


# -- reading the two sides -------------------------------------------------------------------


def otlp_pipeline_runs(
    files: Sequence[Path], read_range: ReadRange, log: ReadLog, source: str
) -> Iterator[PipelineRunSide]:
    """The pipeline-run spans of OTLP-JSON lines files (plain or gzip) started in range."""
    for file in files:
        try:
            raw: IO[bytes] = open(file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            log.add_error(source, str(file), f"cannot open: {exc.strerror}")
            continue
        try:
            stream: IO[bytes] = raw
            if raw.read(2) == _GZIP_MAGIC:
                raw.seek(0)
                stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
            else:
                raw.seek(0)
            for number, line in enumerate(stream, start=1):
                if _MARKER in line:
                    yield from _spans_of(line, f"{file}:{number}", read_range, log, source)
        except (EOFError, OSError) as exc:
            log.add_error(source, str(file), f"reading stopped: {exc}")
        finally:
            raw.close()


def _spans_of(
    line: bytes, origin: str, read_range: ReadRange, log: ReadLog, source: str
) -> Iterator[PipelineRunSide]:
    try:
        request = decode_request_json(line)
    except ValueError as exc:
        log.add_error(source, origin, f"not OTLP-JSON: {exc}")
        return
    for span in iter_spans(request):
        attrs = span.attributes
        run_id = attrs.get(_PIPELINE_RUN_ID)
        planned = attrs.get(PIPELINE_COUNTS.planned.attribute or "")
        if _RUN_ID in attrs or not isinstance(run_id, str) or planned is None:
            continue  # a node span, or a pipeline span without a plan
        if not read_range.start_ns <= span.start_ns < read_range.end_ns:
            continue
        yield PipelineRunSide(
            run_id,
            str(attrs.get(_PIPELINE, "")),
            span.start_ns,
            _RESULT_STATUS.get(str(attrs.get(CICD_PIPELINE_RESULT)), "?"),
            tuple(_count(attrs.get(f.attribute or "")) for f in PIPELINE_COUNTS),
            origin,
        )


def sql_pipeline_runs(
    engine: Engine, read_range: ReadRange, log: ReadLog, source: str
) -> Iterator[PipelineRunSide] | None:
    """The ``meta_pipeline_runs`` rows started in range; None when the table is absent."""
    import sqlalchemy as sa

    from odibi_observe.catalog.schema import PIPELINE, PIPELINE_RUN_ID, STATUS, pipeline_runs
    from odibi_observe.catalog.schema import STARTED_AT as STARTED
    from odibi_observe.catalog.schema import utc as as_utc

    inspector = sa.inspect(engine)
    if not inspector.has_table(pipeline_runs.name):
        return None
    present = {c["name"] for c in inspector.get_columns(pipeline_runs.name)}
    if not {PIPELINE_RUN_ID, PIPELINE_COUNTS.planned.column} <= present:
        return None  # a table of that name that is not ours (Odibi's own, in SQL)
    c = pipeline_runs.c
    query = sa.select(pipeline_runs).where(
        c[STARTED] >= read_range.start, c[STARTED] < read_range.end
    )

    def rows() -> Iterator[PipelineRunSide]:
        try:
            with engine.connect() as conn:
                for row in conn.execute(query).mappings():
                    yield PipelineRunSide(
                        str(row[PIPELINE_RUN_ID]),
                        str(row[PIPELINE] or ""),
                        datetime_to_ns(as_utc(row[STARTED])),
                        str(row[STATUS]),
                        tuple(_count(row[f.column]) for f in PIPELINE_COUNTS),
                        pipeline_runs.name,
                    )
        except sa.exc.SQLAlchemyError as exc:
            log.add_error(source, pipeline_runs.name, f"reading stopped: {exc}")

    return rows()


# -- comparing them --------------------------------------------------------------------------


def compare_pipeline_runs(
    catalog: CatalogSource,
    traces: Iterable[TraceSource],
    read_range: ReadRange,
    window: Window,
    log: ReadLog,
    *,
    stale_before_ns: int,
) -> list[Discrepancy] | None:
    """The discrepancies between the catalog's pipeline runs and the traces' that started in
    ``window``; None when either side cannot read pipeline runs (nothing was compared). A
    ``RUNNING`` row without its span that started at or after ``stale_before_ns`` is in
    flight (counted in a note), an older one ``stale_running``."""
    rows = catalog.pipeline_runs(read_range, log) if catalog.holds_plans() else None
    if rows is None:
        return None
    readable = []
    for source in traces:
        try:
            stream = source.pipeline_runs(read_range, log)
        except SourceError:  # unreadable as a whole: already reported by the node-run read
            continue
        if stream is not None:
            readable.append(stream)
    if not readable:
        return None
    in_window = range(window.since_ns, window.end_ns)
    by_id = {r.pipeline_run_id: r for r in rows if r.started_ns in in_window}
    spans: dict[str, PipelineRunSide] = {}
    for stream in readable:
        for span in stream:
            if span.started_ns in in_window:
                spans[span.pipeline_run_id] = span  # the same span twice is one span
    in_flight = {
        key
        for key, row in by_id.items()
        if row.status == _RUNNING and key not in spans and row.started_ns >= stale_before_ns
    }
    found = [
        *(_judge(row, spans.get(key)) for key, row in by_id.items() if key not in in_flight),
        *(_judge(None, span) for key, span in spans.items() if key not in by_id),
    ]
    compared = len(by_id.keys() | spans.keys()) - len(in_flight)
    if compared:
        log.add_note("pipeline runs", f"{compared:,} compared with their RUN spans")
    if in_flight:
        log.add_note("pipeline runs", f"{len(in_flight):,} in flight (RUNNING, no RUN span yet)")
    return [d for group in found for d in group]


def _side(run: PipelineRunSide) -> dict[str, Any]:
    return {
        "pipeline_run": True,
        "status": run.status,
        **{f.key: n for f, n in zip(PIPELINE_COUNTS, run.counts, strict=True)},
        "origin": run.origin,
    }


def _judge(row: PipelineRunSide | None, span: PipelineRunSide | None) -> list[Discrepancy]:
    some = row or span
    assert some is not None

    def found(kind: str, detail: str) -> Discrepancy:
        return Discrepancy(
            kind,
            some.pipeline_run_id,
            some.pipeline,
            "",
            some.started_ns,
            None if row is None else _side(row),
            None if span is None else _side(span),
            f"pipeline run: {detail}",
        )

    if span is None and row is not None and row.status == _RUNNING:
        return [
            found(
                "stale_running",
                f"RUNNING with no RUN span since {iso_ns(row.started_ns)}: the process died "
                "before the pipeline run ended",
            )
        ]
    if span is None:
        return [found("missing_in_traces", "meta_pipeline_runs row has no RUN span")]
    if row is None:
        return [found("missing_in_catalog", f"RUN span in {span.origin} has no row")]
    out = []
    if row.status != span.status:
        out.append(found("status_mismatch", f"catalog {row.status}, span {span.status}"))
    differ = [
        f"{f.key} {a} vs {b}"
        for f, a, b in zip(PIPELINE_COUNTS, row.counts, span.counts, strict=True)
        if a != b
    ]
    if differ:
        out.append(found("count_mismatch", "catalog vs span: " + ", ".join(differ)))
    return out
