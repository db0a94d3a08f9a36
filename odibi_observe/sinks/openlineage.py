"""OpenLineage run events for every node run, through the official ``openlineage-python`` client.

Each node run becomes one OpenLineage *run* of the job ``<pipeline>.<node>`` in the namespace
``<project>``: a ``START`` event when it starts and one terminal event when it ends
(``COMPLETE`` for ``SUCCESS``, ``FAIL`` for ``FAILURE`` and ``CRASHED``, ``ABORT`` for
``CANCELLED``; the table is :data:`~odibi_observe.conventions.OPENLINEAGE_EVENT_TYPES`, keyed
by the status's string). The ``runId`` is our ``run_id``, so a lineage tool, the catalog row and
the span share one key; an id that is not a UUID (the spec requires one) is mapped to a
name-based UUID (uuid5), the same each time.

Where events go is the OpenLineage client's business, configured the OpenLineage way
(``OPENLINEAGE_URL``/``OPENLINEAGE_API_KEY``, ``openlineage.yml``, ``OPENLINEAGE__TRANSPORT__*``,
``OPENLINEAGE_DISABLED``): its http, file, kafka and composite transports all work, and a
deployment that already has OpenLineage set up changes nothing. See ``docs/openlineage.md``.

Delivery follows the Sink contract (:mod:`odibi_observe.sinks.base`): the client's transports
are synchronous and raise on failure, so an unreachable endpoint raises
:class:`~odibi_observe.sinks.base.SinkUnavailable` and the bus keeps the batch and retries it;
an event the endpoint refuses as invalid (HTTP 400/413/422) is rejected alone
(:class:`~odibi_observe.sinks.base.RecordRejected`). Which events were already sent is
remembered by ``(run_id, event type)``, so a retried batch sends each event once, and a
``START`` that arrives after the run's terminal event was sent (in an earlier batch) is not
sent at all; within one batch every ``START`` is sent before any terminal event.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from odibi_observe._redact import safe_text
from odibi_observe._selfmetrics import log
from odibi_observe._textsafe import encodable_record
from odibi_observe._version import __version__
from odibi_observe.config import ConfigurationError
from odibi_observe.conventions import ODIBI_RUN_FACET_KEYS as K
from odibi_observe.conventions import (
    OPENLINEAGE_CONFIG_ENV,
    OPENLINEAGE_CONFIG_FILE,
    OPENLINEAGE_DISABLED_ENV,
    OPENLINEAGE_ENGINE_DEFAULT,
    OPENLINEAGE_ENGINE_ODIBI,
    OPENLINEAGE_EVENT_TYPES,
    OPENLINEAGE_INTEGRATION_DEFAULT,
    OPENLINEAGE_INTEGRATION_ODIBI,
    OPENLINEAGE_JOB_TYPE,
    OPENLINEAGE_LANGUAGE,
    OPENLINEAGE_OUTPUT_NAME_ATTRIBUTE,
    OPENLINEAGE_OUTPUT_NAMESPACE_ATTRIBUTE,
    OPENLINEAGE_PROCESSING_TYPE,
    OPENLINEAGE_PRODUCER,
    OPENLINEAGE_RUN_FACET,
    OPENLINEAGE_RUN_FACET_SCHEMA,
    OPENLINEAGE_SINK,
    OPENLINEAGE_TRANSPORT_ENV_PREFIX,
)
from odibi_observe.conventions import OPENLINEAGE_FACETS as FACETS
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.sinks.base import RecentKeys, RecordRejected, Sink, SinkContext, SinkUnavailable

if TYPE_CHECKING:
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import RunEvent as OLRunEvent

#: The events remembered as sent, for replays (two per run).
_SENT_CAPACITY: Final = 100_000
#: HTTP statuses that refuse one event, not the endpoint: the event is rejected, not retried.
_REFUSED_STATUSES: Final = frozenset({400, 413, 422})
#: Characters of the stack trace in ``errorMessage.stackTrace``.
DEFAULT_MAX_STACK_LENGTH: Final = 8_192
_UUID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, OPENLINEAGE_PRODUCER)


def openlineage_configured(
    environ: Mapping[str, str] | None = None, cwd: str | None = None, home: str | None = None
) -> bool:
    """Whether the OpenLineage client has a configuration of its own to follow:
    ``OPENLINEAGE_URL``, ``OPENLINEAGE_CONFIG``, an ``OPENLINEAGE__TRANSPORT*`` variable, or an
    ``openlineage.yml`` where the client looks for one (the working directory,
    ``~/.openlineage``)."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in OPENLINEAGE_CONFIG_ENV):
        return True
    if any(key.startswith(OPENLINEAGE_TRANSPORT_ENV_PREFIX) for key in env):
        return True
    places = (Path(cwd or os.getcwd()), Path(home or os.path.expanduser("~")) / ".openlineage")
    return any((place / OPENLINEAGE_CONFIG_FILE).is_file() for place in places)


def openlineage_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """``OPENLINEAGE_DISABLED=true``, the client's own off switch (read as the client does)."""
    env = os.environ if environ is None else environ
    return env.get(OPENLINEAGE_DISABLED_ENV, "").strip().lower() == "true"


def from_context(context: SinkContext) -> OpenLineageSink | None:
    """The sink when the settings ask for it (see the ``openlineage`` setting):

    * ``openlineage=false``, or ``OPENLINEAGE_DISABLED=true``: not built;
    * ``openlineage=true``: built; without the package, a
      :class:`~odibi_observe.config.ConfigurationError` (the sink is left out with that error);
    * unset: built when the OpenLineage client is configured
      (:func:`openlineage_configured`); configured but the package missing: one warning.
    """
    wanted = context.settings.openlineage
    if wanted is False or openlineage_disabled():
        return None
    if wanted is None and not openlineage_configured():
        return None
    try:
        from openlineage.client import OpenLineageClient
    except ImportError as exc:
        hint = "pip install 'odibi-observe[openlineage]'"
        if wanted:
            raise ConfigurationError(
                f"openlineage=true needs openlineage-python ({hint}): {exc}"
            ) from exc
        log.warning(
            "odibi-observe: OpenLineage is configured but openlineage-python is not "
            "installed (%s); no OpenLineage events are sent",
            hint,
        )
        return None
    return OpenLineageSink(
        OpenLineageClient(), max_stack_length=context.settings.max_error_message_length
    )


def run_uuid(run_id: str) -> str:
    """``run_id`` when it is a UUID (ours are), else the same name-based UUID every time."""
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return str(uuid.uuid5(_UUID_NAMESPACE, run_id))


def _from_odibi() -> bool:
    """Whether this process's runs come from an Odibi project: the Odibi integration is
    instrumented here (it is only imported when used, so this costs a dict lookup)."""
    import sys

    module = sys.modules.get("odibi_observe.integrations.odibi")
    return bool(module is not None and module.is_instrumented())


def _engine_version(odibi: bool) -> str:
    """Odibi's version when the run came from Odibi (the integration is loaded then), else ours."""
    import sys

    module = sys.modules.get("odibi_observe.integrations.odibi")
    if odibi and module is not None:
        try:
            return str(module.odibi_version())
        except Exception:
            return "unknown"
    return __version__


class OpenLineageSink(Sink):
    """Sends each run's ``START`` and terminal OpenLineage events through ``client``."""

    name = OPENLINEAGE_SINK
    scheme: ClassVar[str] = OPENLINEAGE_SINK
    kinds = frozenset({EventKind.STARTED, EventKind.FINISHED})

    @classmethod
    def from_context(cls, context: SinkContext) -> OpenLineageSink | None:
        return from_context(context)

    def __init__(
        self, client: OpenLineageClient, *, max_stack_length: int = DEFAULT_MAX_STACK_LENGTH
    ) -> None:
        from openlineage.client import event_v2

        self.client = client
        self.max_stack_length = max_stack_length
        self._ol = event_v2
        self._version = __version__
        self._sent = RecentKeys(_SENT_CAPACITY)
        self._finished = RecentKeys(_SENT_CAPACITY)
        self._facets = _facet_classes()
        self._constant: dict[bool, tuple[Any, Any]] = {}

    # -- the contract ------------------------------------------------------------------------

    def export(self, events: Sequence[RunEvent]) -> None:
        rejected: list[RunEvent] = []
        reasons: list[str] = []
        # A batch the sidecar reads interleaves the spool's writers (they take turns being
        # first), so a run's end from one writer (the sweeper's CRASHED close) can come before
        # its START from another (the pipeline's). Starts go first: a START is only ever
        # "late" when its run ended in an earlier batch, never because of where it sat in
        # this one. The sort is stable, so each writer's own order is kept.
        for event in sorted(events, key=lambda e: e.kind is not EventKind.STARTED):
            reason = self._send(event)
            if reason is not None:
                rejected.append(event)
                reasons.append(reason)
        if rejected:
            raise RecordRejected(rejected, "; ".join(dict.fromkeys(reasons)))

    def force_flush(self, timeout: float | None = None) -> bool:
        """The client's transports send synchronously (``emit`` returns once sent)."""
        return True

    def shutdown(self) -> None:
        try:
            self.client.close(5.0)
        except Exception as exc:  # closing must not raise into the process's exit
            log.warning(
                "odibi-observe: closing the OpenLineage client: %s: %s", type(exc).__name__, exc
            )

    # -- one event ---------------------------------------------------------------------------

    def _send(self, event: RunEvent) -> str | None:
        """Send ``event`` once; the reason when the endpoint refuses it, None otherwise.
        Raises :class:`SinkUnavailable` when it cannot be delivered now."""
        record = event.record
        if event.kind is EventKind.STARTED:
            if record.run_id in self._finished:
                return None  # the run has ended: a late START would reopen it
            event_type = OPENLINEAGE_EVENT_TYPES[record.status.value]
        elif event.kind is EventKind.FINISHED and record.status.is_terminal:
            event_type = OPENLINEAGE_EVENT_TYPES.get(record.status.value, "OTHER")
        else:
            return None
        key = (record.run_id, event_type)
        if key in self._sent:
            return None
        try:
            lineage_event = self.build_event(record, event_type)
        except (TypeError, ValueError) as exc:  # the client's models refuse the record
            return f"not a valid OpenLineage event: {type(exc).__name__}: {exc}"
        refused = self._emit(lineage_event)
        if refused is None:
            self._sent.add(key)
            if event_type != "START":
                self._finished.add(record.run_id)
        return refused

    def _emit(self, lineage_event: OLRunEvent) -> str | None:
        try:
            self.client.emit(lineage_event)
        except Exception as exc:
            status = _http_status(exc)
            if status in _REFUSED_STATUSES:
                return f"the OpenLineage endpoint refused the event: HTTP {status}"
            raise SinkUnavailable(
                f"OpenLineage transport {self._transport_kind()}: {type(exc).__name__}: {exc}"
            ) from exc
        return None

    def _transport_kind(self) -> str:
        return str(getattr(self.client.transport, "kind", "?"))

    # -- the event ---------------------------------------------------------------------------

    def build_event(self, record: RunRecord, event_type: str) -> OLRunEvent:
        """The OpenLineage ``RunEvent`` of ``record`` (validated by the client's models)."""
        ol = self._ol
        record = encodable_record(record)
        odibi = _from_odibi()
        start = event_type == "START"
        when = record.started_at if start or record.ended_at is None else record.ended_at
        f = self._facets
        engine, job_type = self._constant_facets(odibi)
        run_facets: dict[str, Any] = {
            FACETS.processing_engine: engine,
            OPENLINEAGE_RUN_FACET: odibi_run_facet(record),
        }
        if record.pipeline_run_id:
            run_facets[FACETS.parent] = f.parent(
                run=f.parent_run(runId=run_uuid(record.pipeline_run_id)),
                job=f.parent_job(namespace=record.project, name=record.pipeline),
                producer=OPENLINEAGE_PRODUCER,
            )
        if not start and (record.error_type or record.error_message):
            run_facets[FACETS.error_message] = self._error_facet(record)
        job_facets = {FACETS.job_type: job_type}
        lineage_event: OLRunEvent = ol.RunEvent(
            eventType=ol.RunState(event_type),
            eventTime=when.isoformat(),
            run=ol.Run(runId=run_uuid(record.run_id), facets=run_facets),
            job=ol.Job(
                namespace=record.project, name=f"{record.pipeline}.{record.node}", facets=job_facets
            ),
            inputs=[],
            outputs=[] if start else self._outputs(record),
            producer=OPENLINEAGE_PRODUCER,
        )
        return lineage_event

    def _constant_facets(self, odibi: bool) -> tuple[Any, Any]:
        """The ``processing_engine`` and ``jobType`` facets, the same for every run of this
        process (Odibi's or not): built once, as the client's models validate each field on
        construction (a third of an event's cost). Shared across events, never mutated: the
        client adds its own facets to each event's fresh facet dicts, not to these."""
        built = self._constant.get(odibi)
        if built is None:
            f = self._facets
            built = self._constant[odibi] = (
                f.engine(
                    version=_engine_version(odibi),
                    producer=OPENLINEAGE_PRODUCER,
                    name=OPENLINEAGE_ENGINE_ODIBI if odibi else OPENLINEAGE_ENGINE_DEFAULT,
                    openlineageAdapterVersion=self._version,
                ),
                f.job_type(
                    processingType=OPENLINEAGE_PROCESSING_TYPE,
                    jobType=OPENLINEAGE_JOB_TYPE,
                    integration=OPENLINEAGE_INTEGRATION_ODIBI
                    if odibi
                    else OPENLINEAGE_INTEGRATION_DEFAULT,
                    producer=OPENLINEAGE_PRODUCER,
                ),
            )
        return built

    def _error_facet(self, record: RunRecord) -> Any:
        message = ": ".join(p for p in (record.error_type, record.error_message) if p)
        stack = getattr(record, "error_stack", None)  # the catalog's error_stack, if recorded
        return self._facets.error(
            message=message,
            programmingLanguage=OPENLINEAGE_LANGUAGE,
            stackTrace=safe_text(stack, self.max_stack_length)
            if isinstance(stack, str) and stack
            else None,
            producer=OPENLINEAGE_PRODUCER,
        )

    def _outputs(self, record: RunRecord) -> list[Any]:
        """The node's output dataset, when the run names it (the ``lineage.output.*``
        attributes), with the rows as its ``outputStatistics``."""
        namespace = record.attributes.get(OPENLINEAGE_OUTPUT_NAMESPACE_ATTRIBUTE)
        name = record.attributes.get(OPENLINEAGE_OUTPUT_NAME_ATTRIBUTE)
        if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
            return []
        facets: dict[str, Any] = {}
        if record.rows_processed is not None:
            facets[FACETS.output_statistics] = self._facets.output_statistics(
                rowCount=record.rows_processed, producer=OPENLINEAGE_PRODUCER
            )
        return [self._ol.OutputDataset(namespace=namespace, name=name, outputFacets=facets)]


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a ``requests`` error, if it has one."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


@dataclass(frozen=True)
class _Facets:
    """The OpenLineage facet classes the sink builds, imported once per sink."""

    engine: Any
    parent: Any
    parent_run: Any
    parent_job: Any
    error: Any
    job_type: Any
    output_statistics: Any


def _facet_classes() -> _Facets:
    from openlineage.client.facet_v2 import (
        error_message_run,
        job_type_job,
        output_statistics_output_dataset,
        parent_run,
        processing_engine_run,
    )

    return _Facets(
        engine=processing_engine_run.ProcessingEngineRunFacet,
        parent=parent_run.ParentRunFacet,
        parent_run=parent_run.Run,
        parent_job=parent_run.Job,
        error=error_message_run.ErrorMessageRunFacet,
        job_type=job_type_job.JobTypeJobFacet,
        output_statistics=output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet,
    )


@functools.cache
def odibi_run_facet_class() -> Any:
    """The ``odibi_run`` custom run facet class, built on first use so that importing this
    module does not import the OpenLineage client (the factory says when it is missing).

    Its fields are named by :data:`~odibi_observe.conventions.ODIBI_RUN_FACET_KEYS`, the table
    the ``openlineage-file:`` reconciliation source reads them back by. It is our record on
    the run: what a lineage tool otherwise lacks to tell a crash from a failure, the rows and
    duration when no output dataset is named, and the trace to open."""
    import attr
    from openlineage.client.facet_v2 import RunFacet

    fields = {
        K.status: attr.ib(default=""),
        K.environment: attr.ib(default=""),
        K.attempt: attr.ib(default=1),
        K.rows: attr.ib(default=None),
        K.duration: attr.ib(default=None),
        K.trace_id: attr.ib(default=""),
        K.span_id: attr.ib(default=""),
        K.pipeline_run_id: attr.ib(default=None),
        K.error_type: attr.ib(default=None),
        K.run_id: attr.ib(default=None),
    }
    return attr.make_class(
        "OdibiRunFacet",
        fields,
        bases=(RunFacet,),
        slots=True,
        class_body={"_get_schema": staticmethod(lambda: OPENLINEAGE_RUN_FACET_SCHEMA)},
    )


def odibi_run_facet(record: RunRecord) -> Any:
    """The ``odibi_run`` facet of ``record``."""
    values: dict[str, Any] = {
        K.status: record.status.value,
        K.environment: record.environment,
        K.attempt: record.attempt,
        K.rows: record.rows_processed,
        K.duration: record.duration_ms,
        K.trace_id: record.trace_id,
        K.span_id: record.span_id,
        K.pipeline_run_id: record.pipeline_run_id,
        K.error_type: record.error_type,
        K.run_id: None if run_uuid(record.run_id) == record.run_id else record.run_id,
    }
    return odibi_run_facet_class()(producer=OPENLINEAGE_PRODUCER, **values)
