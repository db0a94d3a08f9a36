"""The run record and the events that carry it.

One :class:`RunRecord` describes one node run. It is immutable: each lifecycle step produces a
new snapshot (``RUNNING`` at start, a terminal status at the end), wrapped in a
:class:`RunEvent` and handed to the event bus. Every sink derives its output from the same
snapshot, which is what makes the catalog row, the span and the metrics agree: there is no
second place where status, rows or duration could be computed differently.

Times are integer nanoseconds since the Unix epoch (what OpenTelemetry uses), so the span's
start/end and the catalog's ``started_at``/``ended_at``/``duration_ms`` come from the very same
numbers. ``ended_ns - started_ns`` is measured with a monotonic clock, so a wall-clock jump
during a run cannot produce a negative duration.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from operator import attrgetter
from typing import Any, Final, Protocol, Union

from odibi_observe.conventions import (
    LABEL_SOURCES,
    PHASE_KEYS,
    UNCOMMITTED_STATUSES,
    UNCOMMITTED_WRITE,
    RunStatus,
    Source,
)

#: The keys of a write and of the checkpoint (``writes_json``, ``checkpoint_json``).
_K: Final = PHASE_KEYS

#: A value OpenTelemetry accepts as an attribute: a primitive or a homogeneous sequence.
AttributeValue = Union[  # noqa: UP007 - a runtime alias; `X | Y` of generics needs 3.10+ only
    str, bool, int, float, tuple[str, ...], tuple[int, ...], tuple[float, ...], tuple[bool, ...]
]


class EventKind(str, Enum):
    """What happened to a run. ``STARTED`` and ``FINISHED`` bracket every run.

    ``PHASE``: the run recorded a write or committed its checkpoint (``record_write``,
    ``record_checkpoint``); its record is the running snapshot with them, and like a heartbeat
    it is a sign of life (its ``heartbeat_ns`` is the moment of the call).

    ``PIPELINE`` is not a node run's event: it carries the record of a *pipeline run*, at its
    start (``RUNNING``) and at its end — a :class:`RunRecord` whose ``run_id`` (and
    ``pipeline_run_id``) is the pipeline run's id, whose ``node`` is empty and whose attributes
    are the node counts (``conventions.PIPELINE_COUNTS``). One record type means the bus, the
    spool, the pump and the dead letter carry it unchanged. Only sinks that ask for it in
    ``Sink.kinds`` receive it (the catalog, the spool, the Prometheus and OTel metrics).
    """

    STARTED = "started"
    HEARTBEAT = "heartbeat"
    FINISHED = "finished"
    PHASE = "phase"
    PIPELINE = "pipeline"


#: The event kinds of node runs: what a sink receives unless it asks for more.
NODE_EVENT_KINDS: Final = frozenset(
    {EventKind.STARTED, EventKind.HEARTBEAT, EventKind.PHASE, EventKind.FINISHED}
)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A snapshot of one node run, as every sink records it."""

    run_id: str
    project: str
    pipeline: str
    node: str
    environment: str
    status: RunStatus
    started_ns: int
    trace_id: str
    span_id: str
    host: str
    pid: int
    service_name: str = "odibi-observe"
    parent_span_id: str | None = None
    pipeline_run_id: str | None = None
    attempt: int = 1
    ended_ns: int | None = None
    rows_processed: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    suggestions: tuple[str, ...] = ()
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    heartbeat_ns: int | None = None
    source: Source = Source.DECORATOR
    # What the run used (odibi_observe._resources); None where unknown.
    peak_rss_bytes: int | None = None
    cpu_seconds: float | None = None
    memory_limit_bytes: int | None = None
    # The traceback of a FAILURE / CANCELLED run, redacted and bounded; None otherwise.
    error_stack: str | None = None
    # Phases of the run (``record_write`` / ``record_checkpoint``): its writes in order, each
    # ``{"target", "rows", "version", "at"}`` (``at`` in ns; ``"awaits_checkpoint": True`` when
    # the write is committed only by the run's checkpoint), and the checkpoint it committed,
    # ``{"key", "value", "previous", "at"}``. Plain JSON values, already made safe.
    writes: tuple[dict[str, Any], ...] = ()
    checkpoint: dict[str, Any] | None = None
    # Why a SKIPPED run never started (conventions.SKIP_REASONS); None otherwise.
    skip_reason: str | None = None

    @property
    def duration_ns(self) -> int | None:
        return None if self.ended_ns is None else self.ended_ns - self.started_ns

    @property
    def duration_ms(self) -> int | None:
        """Duration in whole milliseconds, rounded half-up (Odibi's ``duration_ms`` is a long)."""
        d = self.duration_ns
        return None if d is None else (d + 500_000) // 1_000_000

    @property
    def duration_seconds(self) -> float | None:
        d = self.duration_ns
        return None if d is None else d / 1e9

    @property
    def started_at(self) -> datetime:
        return ns_to_datetime(self.started_ns)

    @property
    def ended_at(self) -> datetime | None:
        return None if self.ended_ns is None else ns_to_datetime(self.ended_ns)

    @property
    def uncommitted_write(self) -> bool:
        """Whether this run left an uncommitted write: it recorded a write that waits for its
        checkpoint (and did not write 0 rows), committed none, and ended ``FAILURE``,
        ``CRASHED`` or ``CANCELLED``. The next run of the node re-reads (and re-writes) what it
        wrote. Reconciliation also flags runs whose writes did not say so, from the node's
        history (docs/exactly-once.md)."""
        return (
            bool(self.writes)
            and self.checkpoint is None
            and self.status in UNCOMMITTED_STATUSES
            and any(w.get(_K.awaits_checkpoint) and w.get(_K.rows) != 0 for w in self.writes)
        )

    def uncommitted_summary(self) -> str | None:
        """What an :attr:`uncommitted_write` run left, in one sentence (None if it is not
        one): the rows and targets of its writes that await a checkpoint, and that the next
        run re-reads them."""
        if not (self.writes and self.uncommitted_write):
            return None
        pending = [w for w in self.writes if w.get(_K.awaits_checkpoint)]
        rows = [w.get(_K.rows) for w in pending]
        known = sum(r for r in rows if type(r) is int)
        amount = f"{known} row(s)" if None not in rows else "rows (count unknown)"
        targets = ", ".join(dict.fromkeys(_write_target_text(w) for w in pending))
        return (
            f"{UNCOMMITTED_WRITE}: it wrote {amount} to {targets} and committed no "
            "checkpoint; the next run re-reads them"
        )

    def label_values(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        """Values of the metric ``labels`` (names from the conventions) for this run."""
        getter = _label_getters.get(labels)
        if getter is None:
            getter = _label_getters[labels] = _label_getter(labels)
        return getter(self)

    def finished(self, **changes: Any) -> RunRecord:
        """This record as the run ended: a copy with ``changes`` (``status``, ``ended_ns``, ...).

        The same copy as :meth:`replace`; the name says that the changes finish the run, so
        the places that end runs can be told from those that only amend a record.
        """
        return self.replace(**changes)

    def replace(self, **changes: Any) -> RunRecord:
        """A copy of this record with ``changes`` (a heartbeat time, an escaped name, ids).

        Equivalent to ``dataclasses.replace`` at a tenth of its cost: this runs on the caller's
        thread for every node run, and ``replace`` re-inspects the dataclass each time.
        """
        unknown = changes.keys() - _FIELD_NAMES_SET
        if unknown:
            raise TypeError(f"RunRecord has no field(s) {', '.join(sorted(unknown))}")
        return _copy_with(self, changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_dict` inverts it exactly."""
        return {
            "run_id": self.run_id,
            "project": self.project,
            "pipeline": self.pipeline,
            "node": self.node,
            "environment": self.environment,
            "status": self.status.value,
            "started_ns": self.started_ns,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "host": self.host,
            "pid": self.pid,
            "service_name": self.service_name,
            "parent_span_id": self.parent_span_id,
            "pipeline_run_id": self.pipeline_run_id,
            "attempt": self.attempt,
            "ended_ns": self.ended_ns,
            "rows_processed": self.rows_processed,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "suggestions": list(self.suggestions),
            "attributes": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.attributes.items()
            },
            "heartbeat_ns": self.heartbeat_ns,
            "source": self.source.value,
            "peak_rss_bytes": self.peak_rss_bytes,
            "cpu_seconds": self.cpu_seconds,
            "memory_limit_bytes": self.memory_limit_bytes,
            "error_stack": self.error_stack,
            "writes": [dict(w) for w in self.writes],
            "checkpoint": None if self.checkpoint is None else dict(self.checkpoint),
            "skip_reason": self.skip_reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_dict`; ``TypeError``/``ValueError`` on a malformed dict.

        Every value is checked against its field's type (``bool`` is not an ``int`` here):
        a record with a wrong type would otherwise fail in some sink on every retry (a
        string row count breaks the metric counters, a number as a node name breaks the
        catalog), so it is refused here, where the reason is clear, and the spool pump
        dead-letters it with that reason.

        Built field by field like :meth:`replace` rather than through ``__init__``: the
        sidecar decodes every spooled event with this, and the keyword call costs as much as
        the JSON parsing.
        """
        unknown = data.keys() - _FIELD_NAMES_SET
        if unknown:
            raise TypeError(f"RunRecord has no field(s) {', '.join(sorted(unknown))}")
        missing = _REQUIRED_FIELDS - data.keys()
        if missing:
            raise TypeError(f"RunRecord needs field(s) {', '.join(sorted(missing))}")
        try:
            status = _STATUSES[data["status"]]
            source = _SOURCES[data.get("source", "decorator")]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown status or source in {data.get('status')!r}, {data.get('source')!r}"
            ) from None
        _check_types(data)
        new = object.__new__(RunRecord)
        put = object.__setattr__
        for name, default in _DEFAULT_ITEMS:
            put(new, name, default)
        for name, value in data.items():
            put(new, name, value)
        put(new, "status", status)
        put(new, "source", source)
        suggestions = data.get("suggestions")
        put(new, "suggestions", tuple(suggestions) if suggestions else ())
        writes = data.get("writes")
        put(new, "writes", tuple(writes) if writes else ())
        attributes = data.get("attributes")
        put(
            new,
            "attributes",
            {k: tuple(v) if isinstance(v, list) else v for k, v in attributes.items()}
            if attributes
            else {},
        )
        return new


class RunHandle(Protocol):
    """What ``current_run()`` returns, and so what a node may call on its run.

    Inside a node run it is the real run (:class:`~odibi_observe._instrument.NodeRun`);
    outside one — a node function called directly, in a unit test, or a block odibi-observe
    could not start recording — it is a falsy null run whose ids are ``None`` and whose
    methods do nothing. Both implement every member here (a test checks it), so code written
    against a real run never fails on the null one: ``current_run().add_rows(n)`` is always
    safe, and ``if current_run():`` tells the two apart.
    """

    @property
    def run_id(self) -> str | None:
        """The run's id (``None`` outside a run)."""
        ...

    @property
    def trace_id(self) -> str | None:
        """The trace the run's span belongs to, 32 hex digits."""
        ...

    @property
    def span_id(self) -> str | None:
        """The run's span id, 16 hex digits, chosen before the node runs."""
        ...

    @property
    def pipeline(self) -> str | None: ...

    @property
    def node(self) -> str | None: ...

    @property
    def attempt(self) -> int | None:
        """The attempt number; settable while the run is in progress."""
        ...

    @attempt.setter
    def attempt(self, value: Any) -> None: ...

    @property
    def rows_processed(self) -> int | None:
        """Rows the node reports; settable (else taken from the return value)."""
        ...

    @rows_processed.setter
    def rows_processed(self, value: Any) -> None: ...

    @property
    def record(self) -> RunRecord | None:
        """The run's latest snapshot (``None`` outside a run)."""
        ...

    def add_rows(self, n: Any) -> None:
        """Add ``n`` to ``rows_processed``."""
        ...

    def set_attribute(self, key: str, value: Any) -> None:
        """Attach ``key=value`` to the run."""
        ...

    def suggest(self, text: str) -> None:
        """Record advice for whoever reads this run."""
        ...

    def set_duration(self, seconds: Any) -> None:
        """Record ``seconds`` as the duration instead of the measured time."""
        ...

    def fail(self, error: BaseException, *, message: str | None = None) -> None:
        """Record the run as ``FAILURE`` now, without raising."""
        ...

    def record_write(
        self, target: Any, *, rows: Any = None, version: Any = None, awaits_checkpoint: bool = False
    ) -> None:
        """Record a write of ``rows`` to ``target`` (``version``: the table version it made);
        spooled before it returns in sidecar mode. ``awaits_checkpoint``: committed only by
        the run's checkpoint (an append under a high-water mark)."""
        ...

    def record_checkpoint(self, key: Any, value: Any, *, previous: Any = None) -> None:
        """Record the checkpoint (high-water mark) ``key`` = ``value`` the run committed,
        replacing ``previous``."""
        ...

    def __bool__(self) -> bool:
        """True for a real run, False for the null run."""
        ...


#: The text fields of a :class:`RunRecord` that are always set.
TEXT_FIELDS: Final = (
    "run_id",
    "project",
    "pipeline",
    "node",
    "environment",
    "trace_id",
    "span_id",
    "host",
    "service_name",
)
#: The text fields of a :class:`RunRecord` that may be ``None``.
OPTIONAL_TEXT_FIELDS: Final = (
    "parent_span_id",
    "pipeline_run_id",
    "error_type",
    "error_message",
    "error_stack",
    "skip_reason",
)

_NONE: Final = type(None)
#: The classes ``from_dict`` accepts per field (status and source are looked up instead).
_FIELD_TYPES: Final[dict[str, tuple[type, ...]]] = {
    **dict.fromkeys(TEXT_FIELDS, (str,)),
    **dict.fromkeys(OPTIONAL_TEXT_FIELDS, (str, _NONE)),
    **dict.fromkeys(("started_ns", "pid", "attempt"), (int,)),
    **dict.fromkeys(
        ("ended_ns", "rows_processed", "heartbeat_ns", "peak_rss_bytes", "memory_limit_bytes"),
        (int, _NONE),
    ),
    "cpu_seconds": (float, int, _NONE),
    "suggestions": (list, tuple, _NONE),
    "attributes": (dict, _NONE),
    "writes": (list, tuple, _NONE),
    "checkpoint": (dict, _NONE),
    "status": (str,),
    "source": (str,),
}
_SCALARS: Final = (str, bool, int, float)


def _check_types(data: Mapping[str, Any]) -> None:
    """``TypeError`` naming the first field of ``data`` whose value has the wrong type.

    ``__class__ in`` rather than ``isinstance``: it is exact (``True`` is no row count) and
    the cheapest check there is; this runs for every event the sidecar decodes.
    """
    for name, value in data.items():
        if value.__class__ not in _FIELD_TYPES[name]:
            raise TypeError(
                f"RunRecord field {name!r} must be "
                f"{' or '.join(t.__name__ for t in _FIELD_TYPES[name])}, "
                f"not {type(value).__name__} ({value!r:.80})"
            )
    suggestions = data.get("suggestions")
    if suggestions and any(s.__class__ is not str for s in suggestions):
        raise TypeError("RunRecord field 'suggestions' must hold strings only")
    if "writes" in data or "checkpoint" in data:
        _check_phases(data)
    attributes = data.get("attributes")
    if attributes:
        for key, value in attributes.items():
            if key.__class__ is not str or not (
                value.__class__ in _SCALARS
                or (
                    value.__class__ in (list, tuple) and all(v.__class__ in _SCALARS for v in value)
                )
            ):
                raise TypeError(
                    f"RunRecord attribute {key!r} must be a string, bool, int, "
                    f"float or a list of them, not {type(value).__name__}"
                )


def _write_target_text(write: Mapping[str, Any]) -> str:
    """``target`` (``target@version`` when the write made a table version)."""
    version = write.get(_K.version)
    return str(write.get(_K.target)) + ("" if version is None else f" (version {version})")


def _check_phases(data: Mapping[str, Any]) -> None:
    """``TypeError`` unless ``writes`` holds objects with a text ``target`` and ``checkpoint``
    has a text ``key``: what every sink reads of them."""
    for write in data.get("writes") or ():
        if write.__class__ is not dict or write.get(_K.target).__class__ is not str:
            raise TypeError("RunRecord field 'writes' must hold objects with a 'target' string")
    checkpoint = data.get("checkpoint")
    if checkpoint is not None and checkpoint.get(_K.key).__class__ is not str:
        raise TypeError("RunRecord field 'checkpoint' must have a 'key' string")


def _label_getter(labels: tuple[str, ...]) -> Callable[[RunRecord], tuple[str, ...]]:
    """A function reading ``labels`` off a record: one C-level ``attrgetter`` for the values,
    then the status enum turned into its string value (metrics run this for every event)."""
    names = [LABEL_SOURCES[label] for label in labels]
    get: Callable[[RunRecord], Any] = attrgetter(*names)
    if len(names) == 1:
        return lambda record: (_plain(get(record)),)
    if "status" not in names:
        return get  # already a tuple of strings
    return lambda record: tuple([_plain(v) for v in get(record)])


def _plain(value: Any) -> str:
    return value.value if isinstance(value, Enum) else value  # type: ignore[no-any-return]


_label_getters: dict[tuple[str, ...], Callable[[RunRecord], tuple[str, ...]]] = {}

_FIELD_NAMES: Final = tuple(f.name for f in fields(RunRecord))
_FIELD_NAMES_SET: Final = frozenset(_FIELD_NAMES)


def _compile_copy_with() -> Callable[[RunRecord, Mapping[str, Any]], RunRecord]:
    """``(record, changes) -> a copy of record with changes``, as one straight-line function.

    Written out field by field through each slot's own descriptor: a loop over the fields with
    ``object.__setattr__`` costs twice as much, and this runs for every node run, on the node's
    thread. The source is generated from the dataclass's fields, so a new field is included.
    """
    setters = {f"_set_{name}": getattr(RunRecord, name).__set__ for name in _FIELD_NAMES}
    lines = ["def copy_with(record, changes):", "    new = _new(_cls)"]
    lines += [
        f"    _set_{name}(new, changes[{name!r}] if {name!r} in changes else record.{name})"
        for name in _FIELD_NAMES
    ]
    lines.append("    return new")
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": RunRecord, **setters}
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from the field names above
    copy_with: Callable[[RunRecord, Mapping[str, Any]], RunRecord] = namespace["copy_with"]
    return copy_with


_copy_with: Final = _compile_copy_with()
_DEFAULTS: Final = {f.name: f.default for f in fields(RunRecord) if f.default is not MISSING}
#: What ``from_dict`` presets before the dict's own values (the fields the compact JSON of
#: ``RunEvent.to_json`` may leave out).
_DEFAULT_ITEMS: Final = tuple(
    (name, default)
    for name, default in _DEFAULTS.items()
    if name not in ("suggestions", "attributes", "status", "source")
)
_REQUIRED_FIELDS: Final = frozenset(
    f.name for f in fields(RunRecord) if f.default is MISSING and f.default_factory is MISSING
)
_STATUSES: Final = {s.value: s for s in RunStatus}
_SOURCES: Final = {s.value: s for s in Source}


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One step of a run's life, delivered to every sink."""

    kind: EventKind
    record: RunRecord

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def to_json(self) -> str:
        """Compact JSON: unset fields (``None``, no suggestions, no attributes) are left out.

        This is the spool's frame payload, written on the node's path in sidecar mode and
        parsed by the sidecar for every sink; a start event has about half its fields unset,
        and leaving them out makes both ends cheaper. :meth:`from_json` restores the defaults.
        """
        record = {
            k: v for k, v in self.record.to_dict().items() if v is not None and v not in ([], {})
        }
        return json.dumps(
            {"kind": self.kind.value, "record": record}, separators=(",", ":"), allow_nan=False
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RunEvent:
        data = json.loads(text)
        return cls(EventKind(data["kind"]), RunRecord.from_dict(data["record"]))


_FINISHED_PREFIX: Final = b'{"kind":"finished","record":{"run_id":"'
_STARTED_PREFIX: Final = b'{"kind":"started","record":{"run_id":"'


def peek_event(payload: bytes) -> tuple[EventKind, str] | None:
    """``(kind, run_id)`` of a :meth:`RunEvent.to_json` payload without parsing it, or None.

    The pump uses it to skip decoding a start whose end is in the same batch (see
    ``Sink.coalesces_starts``). It relies on the key order ``to_json`` writes; any other
    layout (or an escaped run id) gives None and the payload is simply decoded in full.
    """
    for prefix, kind in (
        (_FINISHED_PREFIX, EventKind.FINISHED),
        (_STARTED_PREFIX, EventKind.STARTED),
    ):
        if payload.startswith(prefix):
            start = len(prefix)
            end = payload.find(b'"', start)
            if end < 0:
                return None
            run_id = payload[start:end]
            if b"\\" in run_id:
                return None
            return kind, run_id.decode("utf-8", "replace")
    return None


def ns_to_datetime(ns: int) -> datetime:
    """Nanoseconds since the epoch → aware UTC datetime (microsecond precision)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=rest // 1000)


def datetime_to_ns(value: datetime) -> int:
    """Aware or naive-UTC datetime → nanoseconds since the epoch."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
