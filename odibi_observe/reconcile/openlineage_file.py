"""``openlineage-file:PATH`` — node runs as the OpenLineage client's file transport wrote them.

The OpenLineage sink (:mod:`odibi_observe.sinks.openlineage`) sends each node run as a
``START`` and one terminal event (``COMPLETE``, ``FAIL``, ``ABORT``) with ``runId`` = our
``run_id``; with ``transport: file`` the client appends them to a JSON-lines file (or, with
``append: false``, writes a file per event). This source pairs the events of each run back
into one :class:`~odibi_observe.reconcile.model.TraceRun`, so ``odibi-observe reconcile
--traces openlineage-file:PATH`` holds the lineage to the catalog exactly as it holds spans:

* a run with a terminal event: its status is the ``odibi_run`` facet's (it tells ``CRASHED``
  from ``FAILURE``), checked against the ``eventType`` (a facet that contradicts the event
  type is reported, and the event type's status is compared); start and end are the
  ``eventTime`` of ``START`` and of the terminal event; rows, attempt, environment, trace and
  span ids come from the facet (names: :data:`~odibi_observe.conventions.ODIBI_RUN_FACET_KEYS`);
* a run with a ``START`` and no terminal event reads as ``RUNNING``, which the engine reports
  as ``missing_terminal_event`` when the catalog has closed the run (and judges like a
  catalog-only ``RUNNING`` row when it has not);
* a run the lineage lacks is ``missing_in_traces``, one the catalog lacks
  ``missing_in_catalog``, a status that differs ``status_mismatch``, as for spans.

Events that are not ours (no ``odibi_run`` facet: another producer writing to the same file)
are counted as ignored. ``pipeline`` and ``node`` are read from ``job.name`` =
``pipeline.node``: split after the ``parent`` facet's job name (the pipeline) when the run has
one, else at the first dot. Host, pid, parent span, suggestions and user attributes are not in
lineage events, so a repair that backfills a catalog row from one leaves them empty.

Bad input never raises: a line that is not JSON (a write cut short), that is not UTF-8, or that
is longer than :data:`MAX_LINE_BYTES` (read in bounded pieces and skipped, never held in
memory whole) is reported with its file and line and skipped; so is an event without a
usable ``runId`` or ``eventTime``. Text that cannot be encoded (a lone surrogate written as a
JSON escape) is escaped as everywhere else (:mod:`odibi_observe._textsafe`). Gzip and rotated
files are read as by ``otlp-json:``, whose file listing this source shares.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Final

from odibi_observe._textsafe import encodable_text
from odibi_observe.conventions import ODIBI_RUN_FACET_KEYS as K
from odibi_observe.conventions import (
    OPENLINEAGE_EVENT_TYPES,
    OPENLINEAGE_FILE_SCHEME,
    OPENLINEAGE_RUN_FACET,
    RunStatus,
)
from odibi_observe.conventions import OPENLINEAGE_FACETS as FACETS
from odibi_observe.reconcile.model import (
    FUTURE_SKEW_NS,
    PipelineRunSide,
    ReadLog,
    ReadRange,
    TraceRun,
    iso_ns,
    normalize_status,
)
from odibi_observe.reconcile.otlp_files import OtlpJsonFileSource, read_lines
from odibi_observe.reconcile.sources import TraceSource
from odibi_observe.record import datetime_to_ns

#: Longest line read: an event of ours is a few kB (a stack trace is bounded); a longer line
#: is skipped and reported, read in pieces of this size so it never sits in memory whole.
MAX_LINE_BYTES: Final = 1 << 20
_START: Final = OPENLINEAGE_EVENT_TYPES[RunStatus.RUNNING.value]
#: OpenLineage's progress event: neither the start nor the end of the run.
_PROGRESS: Final = "RUNNING"
#: The status an event type means when the facet does not say (or contradicts it): the
#: first status the sink maps to that type.
_TYPE_STATUS: Final = {t: s for s, t in reversed(OPENLINEAGE_EVENT_TYPES.items())}
_RUNNING: Final = RunStatus.RUNNING.value


@dataclass
class _Run:
    """What the events of one run said so far."""

    start_ns: int | None = None
    start_origin: str = ""
    #: (time, event type, origin, odibi_run facet, the event) of the terminal event.
    end: tuple[int, str, str, Mapping[str, Any], Mapping[str, Any]] | None = None
    facet: Mapping[str, Any] = field(default_factory=dict)
    job: tuple[str, str, str | None] = ("", "", None)  # namespace, name, parent job name


class OpenLineageFileSource(OtlpJsonFileSource):
    """Node runs from OpenLineage file-transport output; see the module docstring.

    It shares the file listing of ``otlp-json:`` (a file, a directory of rotated or per-event
    files, or a glob; files modified before the read range are skipped) and reads the files in
    one process: the ``START`` and the terminal event of a run must meet in one reader.
    """

    scheme: ClassVar[str] = OPENLINEAGE_FILE_SCHEME
    holds: ClassVar[str] = "lineage"

    def split(self, parts: int, read_range: ReadRange, *, min_bytes: int = 0) -> list[TraceSource]:
        return [self]

    def pipeline_runs(
        self, read_range: ReadRange, log: ReadLog
    ) -> Iterator[PipelineRunSide] | None:
        """None: the sink sends node runs only (a pipeline run is their ``parent`` facet, with
        no events of its own), so ``meta_pipeline_runs`` is not compared against lineage. The
        ``otlp-json:`` reader this source shares its listing with would read no ``RUN`` span
        here, and every pipeline run would be reported missing."""
        return None

    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[TraceRun]:
        runs: dict[str, _Run] = {}
        todo = self._todo(read_range, log)
        total = sum(size for _, size in todo) or None
        done = 0
        for file, size in todo:
            for origin, event in self._events(file, log):
                self._take(event, origin, runs, log)
            done += size
            log.tick("reading lineage", done, total)
        for run_id, run in runs.items():
            trace_run = self._to_run(run_id, run, read_range, log)
            if trace_run is not None:
                yield trace_run

    # -- lines -------------------------------------------------------------------------------

    def _events(self, file: Path, log: ReadLog) -> Iterator[tuple[str, Any]]:
        """``(origin, decoded JSON)`` of every line of ``file``; bad lines are reported."""
        source = self.describe()
        for origin, line in read_lines(file, source, log, max_bytes=MAX_LINE_BYTES):
            decoded = _decode(line, source, origin, log)
            if decoded is not None:
                yield origin, decoded

    # -- events ------------------------------------------------------------------------------

    def _take(self, event: Any, origin: str, runs: dict[str, _Run], log: ReadLog) -> None:
        """Fold one event into the run it belongs to; count or report what is not usable."""
        source = self.describe()
        if not isinstance(event, dict):
            log.add_error(
                source, origin, f"not an OpenLineage event: a JSON {type(event).__name__}"
            )
            return
        run = event.get("run")
        run = run if isinstance(run, dict) else {}
        facets = run.get("facets")
        facets = facets if isinstance(facets, dict) else {}
        facet = facets.get(OPENLINEAGE_RUN_FACET)
        if not isinstance(facet, dict):
            log.ignored_spans += 1  # a dataset or job event, or another producer's run event
            return
        run_uuid = run.get("runId")
        if not isinstance(run_uuid, str) or not run_uuid.strip():
            log.add_error(source, origin, "odibi_run event without a runId: skipped")
            return
        original = facet.get(K.run_id)
        run_id = encodable_text(original if isinstance(original, str) and original else run_uuid)
        event_type = event.get("eventType")
        when = _event_ns(event.get("eventTime"))
        if when is None:
            log.add_error(
                source, origin, f"run {run_id}: eventTime {event.get('eventTime')!r} unreadable"
            )
            return
        state = runs.get(run_id)
        if state is None:
            state = runs[run_id] = _Run()
        if event_type == _START:
            if state.start_ns is None or when < state.start_ns:
                state.start_ns, state.start_origin = when, origin
        elif event_type == _PROGRESS:
            pass
        elif isinstance(event_type, str) and event_type:
            previous = state.end
            if previous is not None and previous[1] != event_type:
                log.add_error(
                    source,
                    origin,
                    f"run {run_id}: a second terminal event {event_type} after "
                    f"{previous[1]} ({previous[2]}); the later one is compared",
                )
            if previous is None or when >= previous[0]:
                state.end = (when, event_type, origin, facet, event)
        else:
            log.add_error(source, origin, f"run {run_id}: eventType {event_type!r} unknown")
            return
        if not state.facet or event_type != _START:
            state.facet = facet
            state.job = _job(event, facets)

    def _to_run(
        self, run_id: str, run: _Run, read_range: ReadRange, log: ReadLog
    ) -> TraceRun | None:
        source = self.describe()
        facet = run.facet
        unchecked: list[str] = []
        if run.end is None:
            if run.start_ns is None:
                return None  # only progress events: nothing to compare
            start = end = run.start_ns
            status, origin, error_message = _RUNNING, run.start_origin, None
        else:
            end, event_type, origin, facet, event = run.end
            status = self._status(run_id, event_type, facet, origin, log)
            duration = facet.get(K.duration)
            if run.start_ns is not None:
                start = run.start_ns
            elif type(duration) is int and duration >= 0:
                start = end - duration * 1_000_000  # the START line is gone: from the facet
            else:
                start = end
                unchecked.append("duration")
            error_message = _error_message(event, facet)
        if not read_range.start_ns <= start < read_range.end_ns:
            if start > read_range.now_ns + FUTURE_SKEW_NS:
                log.add_error(
                    source, origin, f"run {run_id}: starts in the future ({iso_ns(start)})"
                )
            else:
                log.outside_range += 1
            return None
        rows = facet.get(K.rows)
        if rows is not None and type(rows) is not int:
            log.add_error(source, origin, f"run {run_id}: {K.rows} {rows!r} is not an integer")
            rows = None
            unchecked.append("rows")
        if status == _RUNNING:
            rows = None
        attempt = facet.get(K.attempt)
        namespace, job_name, parent_job = run.job
        pipeline, node = _pipeline_node(job_name, parent_job)
        return TraceRun(
            run_id=run_id,
            trace_id=_text(facet.get(K.trace_id)),
            span_id=_text(facet.get(K.span_id)),
            start_ns=start,
            end_ns=max(end, start),
            status=status,
            rows=rows,
            pipeline=pipeline,
            node=node,
            project=namespace,
            environment=_text(facet.get(K.environment)),
            parent_span_id=None,
            pipeline_run_id=_text(facet.get(K.pipeline_run_id)) or None,
            attempt=attempt if type(attempt) is int and attempt >= 1 else 1,
            error_type=_text(facet.get(K.error_type)) or None,
            error_message=error_message,
            suggestions=(),
            attributes_json=None,
            host="",
            pid=0,
            service_name="",
            unchecked=",".join(unchecked),
            origin=origin,
        )

    def _status(
        self, run_id: str, event_type: str, facet: Mapping[str, Any], origin: str, log: ReadLog
    ) -> str:
        """The facet's status when the event type agrees with it, else the event type's."""
        said = facet.get(K.status)
        status = normalize_status(said) if isinstance(said, str) and said else ""
        if status and OPENLINEAGE_EVENT_TYPES.get(status, "OTHER") == event_type:
            return status
        by_type = _TYPE_STATUS.get(event_type, event_type)
        if status:
            log.add_error(
                self.describe(),
                origin,
                f"run {run_id}: {OPENLINEAGE_RUN_FACET}.{K.status} {status} contradicts "
                f"eventType {event_type}; {by_type} compared",
            )
        return by_type


def _decode(line: bytes, source: str, origin: str, log: ReadLog) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        log.add_error(source, origin, f"not UTF-8: {exc.reason} at byte {exc.start}")
    except ValueError as exc:  # JSONDecodeError, and a number too long to convert
        text = str(exc)
        log.add_error(source, origin, f"not a JSON event: {text[:200]}")
    return None


def _event_ns(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime_to_ns(datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        return None


def _text(value: Any) -> str:
    return encodable_text(value) if isinstance(value, str) else ""


def _job(event: Mapping[str, Any], facets: Mapping[str, Any]) -> tuple[str, str, str | None]:
    job = event.get("job")
    job = job if isinstance(job, dict) else {}
    parent = facets.get(FACETS.parent)
    parent_job = parent.get("job") if isinstance(parent, dict) else None
    parent_name = parent_job.get("name") if isinstance(parent_job, dict) else None
    return (
        _text(job.get("namespace")),
        _text(job.get("name")),
        _text(parent_name) or None,
    )


def _pipeline_node(job_name: str, parent_job: str | None) -> tuple[str, str]:
    """``job.name`` = ``pipeline.node`` split back; the parent job names the pipeline."""
    if parent_job and job_name.startswith(parent_job + "."):
        return parent_job, job_name[len(parent_job) + 1 :]
    pipeline, _, node = job_name.partition(".")
    return pipeline, node


def _error_message(event: Mapping[str, Any], facet: Mapping[str, Any]) -> str | None:
    """The record's error message: ``errorMessage.message`` is ``Type: message``."""
    run = event.get("run")
    facets = run.get("facets") if isinstance(run, dict) else None
    error = facets.get(FACETS.error_message) if isinstance(facets, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        return None
    error_type = facet.get(K.error_type)
    if isinstance(error_type, str) and error_type:
        if message == error_type:
            return None
        message = message.removeprefix(error_type + ": ")
    return encodable_text(message)


__all__ = ["MAX_LINE_BYTES", "OpenLineageFileSource"]
