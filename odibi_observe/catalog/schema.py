"""The ``meta_runs`` table, and the one mapping between a :class:`RunRecord` and its row.

The table is a strict superset of Odibi's own ``meta_runs`` (its eleven columns come first, with
Odibi's meaning), so Odibi's readers, dashboards and ``odibi catalog runs`` keep working on a
catalog written by odibi-observe. Every column name is looked up in
:mod:`odibi_observe.conventions`; this module never spells one, so a rename there is a rename
everywhere (and a typo is an ``AttributeError`` at import, not a silently empty column).

This module describes the *current* schema. The database is brought to it by the Alembic
migrations next to it (:mod:`odibi_observe.catalog.migrate`); ``tests/test_catalog.py`` proves
the two agree with ``alembic.autogenerate.compare_metadata``.

:func:`record_values` (with :func:`record_to_row`, its dict form) and :func:`row_to_record` are
the only translation between records and rows, so the catalog sink, the sweeper and the
reconciler cannot disagree about, say, how a duration is rounded or which time ``timestamp``
holds.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from typing import Any, Final, TypeVar

import sqlalchemy as sa

from odibi_observe._redact import clamp
from odibi_observe._textsafe import encodable_text
from odibi_observe.conventions import (
    CATALOG_TABLE,
    ERROR_STACK_FIELD,
    FIELDS,
    HEALTH_FINDINGS_TABLE,
    ODIBI_META_RUNS_COLUMNS,
    PHASE_FIELDS,
    PHASE_KEYS,
    PIPELINE_COUNTS,
    PIPELINE_FINISHED_AT,
    PIPELINE_RUNS_TABLE,
    RECONCILIATION_ITEMS_TABLE,
    RECONCILIATION_TABLE,
    RESOURCE_FIELDS,
    SKIP_REASON_FIELD,
    SPAN_LEDGER_TABLE,
    RunStatus,
    Source,
)
from odibi_observe.record import (
    AttributeValue,
    EventKind,
    RunRecord,
    datetime_to_ns,
    ns_to_datetime,
)

# --- column names, all from the conventions ---------------------------------------------------
#
# A field with several columns is unpacked into exactly as many names, so a column added to or
# removed from the conventions fails here, at import, instead of leaving a column unmapped.

RUN_ID: Final = FIELDS.run_id.column
PROJECT: Final = FIELDS.project.column
PIPELINE: Final = FIELDS.pipeline.column
NODE: Final = FIELDS.node.column
STATUS: Final = FIELDS.status.column
ROWS: Final = FIELDS.rows.column
DURATION_MS, STARTED_AT, ENDED_AT = FIELDS.duration.columns
METRICS_JSON: Final = FIELDS.attributes.column
ENVIRONMENT: Final = FIELDS.environment.column
PIPELINE_RUN_ID: Final = FIELDS.pipeline_run_id.column
ATTEMPT: Final = FIELDS.attempt.column
ERROR_TYPE, ERROR_MESSAGE = FIELDS.error.columns
SUGGESTIONS_JSON: Final = FIELDS.suggestions.column
TRACE_ID, SPAN_ID, PARENT_SPAN_ID = FIELDS.trace_ids.columns
HOST, PID, HEARTBEAT_AT = FIELDS.liveness.columns
SOURCE, UPDATED_AT = FIELDS.provenance.columns
PEAK_RSS: Final = RESOURCE_FIELDS.peak_rss.column
CPU_SECONDS: Final = RESOURCE_FIELDS.cpu.column
MEMORY_LIMIT: Final = RESOURCE_FIELDS.memory_limit.column
ERROR_STACK: Final = ERROR_STACK_FIELD.column
WRITES_JSON: Final = PHASE_FIELDS.writes.column
CHECKPOINT_JSON: Final = PHASE_FIELDS.checkpoint.column
#: The columns a phase event (``EventKind.PHASE``) moves on a running row, with its heartbeat.
PHASE_COLUMNS: Final = (WRITES_JSON, CHECKPOINT_JSON)
SKIP_REASON: Final = SKIP_REASON_FIELD.column


def _odibi_only_columns() -> tuple[str, str]:
    """Odibi's columns that no field owns: its row time and its partition date, in that order.

    Unpacking into exactly two names makes a change in the conventions fail here, at import,
    instead of producing a table without them.
    """
    owned = {column for f in FIELDS for column in f.columns}
    row_time, partition_date = (c for c in ODIBI_META_RUNS_COLUMNS if c not in owned)
    return row_time, partition_date


#: ``timestamp``: when the row's status was reached (``ended_at``, or ``started_at`` while
#: RUNNING). ``date``: its UTC date, Odibi's partition column.
TIMESTAMP, DATE = _odibi_only_columns()

# --- the table --------------------------------------------------------------------------------

#: Named constraints, so that the primary key a migration adds to an existing Odibi table has
#: the same name as the one a fresh ``CREATE TABLE`` gets.
NAMING_CONVENTION: Final = {
    "pk": "pk_%(table_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
}

metadata: Final = sa.MetaData(naming_convention=NAMING_CONVENTION)


class Seconds(sa.Float):  # type: ignore[type-arg]
    """A ``FLOAT`` bound as it is: values are Python floats already (the record's), and a bind
    processor (SQLite's ``to_float``) would keep the catalog off its driver-level upsert."""

    cache_ok = True

    def bind_processor(self, dialect: sa.Dialect) -> None:
        return None


meta_runs: Final = sa.Table(
    CATALOG_TABLE,
    metadata,
    # Odibi's columns, in Odibi's order.
    sa.Column(RUN_ID, sa.String(100), primary_key=True),
    sa.Column(PROJECT, sa.String(255)),
    sa.Column(PIPELINE, sa.String(255)),
    sa.Column(NODE, sa.String(255)),
    sa.Column(STATUS, sa.String(50)),
    sa.Column(ROWS, sa.BigInteger),
    sa.Column(DURATION_MS, sa.BigInteger),
    sa.Column(METRICS_JSON, sa.Text),
    sa.Column(ENVIRONMENT, sa.String(255)),
    sa.Column(TIMESTAMP, sa.DateTime(timezone=True)),
    sa.Column(DATE, sa.Date),
    # odibi-observe's columns. Nullable unless every writer (including Odibi itself, which does
    # not know them) can always fill them.
    sa.Column(PIPELINE_RUN_ID, sa.String(100)),
    sa.Column(ATTEMPT, sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Column(STARTED_AT, sa.DateTime(timezone=True), nullable=False),
    sa.Column(ENDED_AT, sa.DateTime(timezone=True)),
    sa.Column(ERROR_TYPE, sa.String(255)),
    sa.Column(ERROR_MESSAGE, sa.Text),
    sa.Column(SUGGESTIONS_JSON, sa.Text),
    sa.Column(TRACE_ID, sa.String(32)),
    sa.Column(SPAN_ID, sa.String(16)),
    sa.Column(PARENT_SPAN_ID, sa.String(16)),
    sa.Column(HOST, sa.String(255)),
    sa.Column(PID, sa.Integer),
    sa.Column(HEARTBEAT_AT, sa.DateTime(timezone=True)),
    sa.Column(SOURCE, sa.String(16)),
    sa.Column(UPDATED_AT, sa.DateTime(timezone=True)),
    # What the run used (migration 0004): NULL where unknown (Odibi's rows, older writers).
    sa.Column(PEAK_RSS, sa.BigInteger),
    sa.Column(CPU_SECONDS, Seconds()),
    sa.Column(MEMORY_LIMIT, sa.BigInteger),
    # The traceback of a failed or cancelled run (migration 0005), already bounded by the writer.
    sa.Column(ERROR_STACK, sa.Text),
    # The run's writes and the checkpoint it committed (migration 0006): NULL when none.
    sa.Column(WRITES_JSON, sa.Text),
    sa.Column(CHECKPOINT_JSON, sa.Text),
    # Why a SKIPPED run never started (migration 0007); NULL for every other status.
    sa.Column(SKIP_REASON, sa.String(50)),
)


def _index(table: sa.Table, *columns: str, suffix: str | None = None) -> sa.Index:
    """The index ``ix_<table>_<suffix>`` on ``columns`` (suffix: the columns' names joined).

    Explicit names: they are part of the migration snapshot and of what operators see in
    EXPLAIN output. Built from the table's and columns' constants, so no name is spelled twice;
    the migrations spell theirs out on purpose (they are history, and must not change when a
    constant here does).
    """
    name = f"ix_{table.name}_{suffix or '_'.join(columns)}"
    return sa.Index(name, *(table.c[column] for column in columns))


# The indexes behind the queries dashboards and the sweeper run.
_index(meta_runs, STARTED_AT)
_index(meta_runs, PIPELINE, NODE, STARTED_AT, suffix="pipeline_node_started")
_index(meta_runs, STATUS, STARTED_AT, suffix="status_started")
_index(meta_runs, PROJECT, PIPELINE, DATE, suffix="project_pipeline_date")
_index(meta_runs, TRACE_ID)

# --- the span ledger: the trace side, as the sidecar's OTLP receiver saw it ----------------------
#
# One row per odibi node span (a span carrying ``odibi.run_id``), keyed by the span's own ids so
# that a span delivered twice (an exporter retry) is stored once while two *different* spans
# claiming the same run_id stay visible as a ``duplicate_in_traces``. Same column names as
# ``meta_runs`` for the same facts, so reconciliation compares like with like.

SERVICE_NAME: Final = "service_name"
RESOURCE_JSON: Final = "resource_json"
RECEIVED_AT: Final = "received_at"


def _as_in_meta_runs(name: str, **options: Any) -> sa.Column[Any]:
    """Column ``name`` with the type it has in ``meta_runs``: the same fact, the same type,
    so the two sides compare like with like. Nullable unless ``options`` say otherwise."""
    return sa.Column(name, meta_runs.c[name].type, **options)


span_ledger: Final = sa.Table(
    SPAN_LEDGER_TABLE,
    metadata,
    _as_in_meta_runs(TRACE_ID, primary_key=True),
    _as_in_meta_runs(SPAN_ID, primary_key=True),
    _as_in_meta_runs(PARENT_SPAN_ID),
    _as_in_meta_runs(RUN_ID, nullable=False),
    *map(
        _as_in_meta_runs,
        (PROJECT, PIPELINE, PIPELINE_RUN_ID, NODE, ATTEMPT, ENVIRONMENT, STATUS, ROWS, DURATION_MS),
    ),
    _as_in_meta_runs(STARTED_AT, nullable=False),
    _as_in_meta_runs(ENDED_AT),
    _as_in_meta_runs(ERROR_TYPE),
    sa.Column(SERVICE_NAME, sa.String(255)),
    sa.Column(RESOURCE_JSON, sa.Text),
    sa.Column(RECEIVED_AT, sa.DateTime(timezone=True), nullable=False),
)
_index(span_ledger, RUN_ID)
_index(span_ledger, STARTED_AT)

# --- reconciliation results ---------------------------------------------------------------------
#
# One row per report (what dashboards chart over time) and one per discrepancy of that report
# (the "last report's runs" table). Counts by kind are kept as JSON: the kinds are a closed,
# documented list (conventions.DISCREPANCY_KINDS), and a new kind must not need a migration.

REPORT_ID: Final = "report_id"
CREATED_AT: Final = "created_at"
#: Columns both result tables have: a discrepancy's or a finding's kind, its detail, and
#: whether (or how many) were repaired.
KIND: Final = "kind"
DETAIL: Final = "detail"
REPAIRED: Final = "repaired"
#: A report's counts, all known once it is made: runs on each side, matched, discrepancies.
REPORT_COUNTS: Final = ("catalog_runs", "trace_runs", "matched", "discrepancies")

reconciliation: Final = sa.Table(
    RECONCILIATION_TABLE,
    metadata,
    sa.Column(REPORT_ID, sa.String(100), primary_key=True),
    sa.Column(CREATED_AT, sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("grace_seconds", sa.Float, nullable=False),
    sa.Column("catalog_source", sa.Text),
    sa.Column("trace_sources", sa.Text),
    *(sa.Column(count, sa.BigInteger, nullable=False) for count in REPORT_COUNTS),
    sa.Column("discrepancies_json", sa.Text, nullable=False),
    sa.Column("completeness_ratio", sa.Float),
    sa.Column(REPAIRED, sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("errors", sa.BigInteger, nullable=False, server_default=sa.text("0")),
)
_index(reconciliation, CREATED_AT)

reconciliation_items: Final = sa.Table(
    RECONCILIATION_ITEMS_TABLE,
    metadata,
    sa.Column(REPORT_ID, sa.String(100), primary_key=True),
    sa.Column("item", sa.Integer, primary_key=True),
    sa.Column(KIND, sa.String(50), nullable=False),
    sa.Column(RUN_ID, sa.String(100)),
    sa.Column(PIPELINE, sa.String(255)),
    sa.Column(NODE, sa.String(255)),
    sa.Column(STARTED_AT, sa.DateTime(timezone=True)),
    sa.Column(TRACE_ID, sa.String(32)),
    sa.Column(DETAIL, sa.Text),
    sa.Column(REPAIRED, sa.Boolean, nullable=False, server_default=sa.false()),
)
_index(reconciliation_items, RUN_ID)

# --- data-health findings -------------------------------------------------------------------------
#
# One row per finding of ``odibi-observe health``: a (kind, pipeline, node) that a pass saw. It
# stays ``open`` (``last_seen_at`` and ``passes`` move) while passes keep seeing it, and becomes
# ``resolved`` at the first pass that does not: one row per episode, not one per pass.

STATE: Final = "state"
LAST_SEEN_AT: Final = "last_seen_at"

health_findings: Final = sa.Table(
    HEALTH_FINDINGS_TABLE,
    metadata,
    sa.Column("finding_id", sa.String(100), primary_key=True),
    sa.Column(KIND, sa.String(50), nullable=False),
    sa.Column(PIPELINE, sa.String(255), nullable=False),
    sa.Column(NODE, sa.String(255), nullable=False),
    sa.Column(STATE, sa.String(16), nullable=False),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column(LAST_SEEN_AT, sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("passes", sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Column("score", sa.Float),
    sa.Column("baseline", sa.Float),
    sa.Column("value", sa.Float),
    sa.Column(DETAIL, sa.Text),
    sa.Column("evidence_json", sa.Text),
)
_index(health_findings, KIND, PIPELINE, NODE, STATE, suffix="node")
_index(health_findings, STATE, LAST_SEEN_AT, suffix="state_seen")

# --- pipeline runs ----------------------------------------------------------------------------
#
# One row per pipeline run, keyed by its id (Odibi's own pipeline run id, the ``run_id`` of its
# ``meta_pipeline_runs``, when the run is Odibi's): written ``RUNNING`` when the run starts and
# updated once when it ends, with the node counts of its plan (planned = ran + skipped).

NODES_PLANNED, NODES_RAN, NODES_SKIPPED, NODES_FAILED = (f.column for f in PIPELINE_COUNTS)

pipeline_runs: Final = sa.Table(
    PIPELINE_RUNS_TABLE,
    metadata,
    sa.Column(PIPELINE_RUN_ID, sa.String(100), primary_key=True),
    sa.Column(PROJECT, sa.String(255)),
    sa.Column(PIPELINE, sa.String(255)),
    sa.Column(ENVIRONMENT, sa.String(255)),
    sa.Column(STATUS, sa.String(50), nullable=False),
    sa.Column(STARTED_AT, sa.DateTime(timezone=True), nullable=False),
    sa.Column(PIPELINE_FINISHED_AT, sa.DateTime(timezone=True)),
    sa.Column(NODES_PLANNED, sa.Integer),
    sa.Column(NODES_RAN, sa.Integer),
    sa.Column(NODES_SKIPPED, sa.Integer),
    sa.Column(NODES_FAILED, sa.Integer),
    sa.Column(ERROR_TYPE, sa.String(255)),
    sa.Column(ERROR_MESSAGE, sa.Text),
    sa.Column(TRACE_ID, sa.String(32)),
    sa.Column(SPAN_ID, sa.String(16)),
    sa.Column(HOST, sa.String(255)),
    sa.Column(PID, sa.Integer),
    sa.Column(UPDATED_AT, sa.DateTime(timezone=True)),
)
_index(pipeline_runs, STARTED_AT)
_index(pipeline_runs, PIPELINE, STARTED_AT, suffix="pipeline_started")

#: The counts' columns, by the key the pipeline run's record carries them under.
_COUNT_COLUMNS: Final = {f.key: f.column for f in PIPELINE_COUNTS}


def pipeline_record_to_row(record: RunRecord, *, now: datetime) -> dict[str, Any]:
    """The ``meta_pipeline_runs`` row of a pipeline run's record (``EventKind.PIPELINE``).

    Text is made storable as in ``meta_runs`` (:func:`db_text`); a count the record does not
    carry (the ``RUNNING`` record carries none) is NULL.
    """
    counts = {
        column: value if type(value := record.attributes.get(key)) is int else None
        for key, column in _COUNT_COLUMNS.items()
    }
    return {
        PIPELINE_RUN_ID: record.run_id,
        PROJECT: db_text(record.project, 255),
        PIPELINE: db_text(record.pipeline, 255),
        ENVIRONMENT: db_text(record.environment, 255),
        STATUS: record.status.value,
        STARTED_AT: ns_to_datetime(record.started_ns),
        PIPELINE_FINISHED_AT: None if record.ended_ns is None else ns_to_datetime(record.ended_ns),
        **counts,
        ERROR_TYPE: db_text(record.error_type, 255),
        ERROR_MESSAGE: db_text(record.error_message, None),
        TRACE_ID: record.trace_id or None,
        SPAN_ID: record.span_id or None,
        HOST: db_text(record.host, 255),
        PID: record.pid,
        UPDATED_AT: utc(now),
    }


#: Index name → its columns, for migrations and tests that check the database has them.
INDEXES: Final = {
    str(ix.name): tuple(c.name for c in ix.columns)
    for ix in sorted(meta_runs.indexes, key=lambda ix: str(ix.name))
}

#: The table's columns in order: the order of the values :func:`record_values` returns, and so
#: of the positional parameters of the catalog's upserts.
COLUMNS: Final = tuple(meta_runs.c.keys())

#: ``(position in COLUMNS, maximum length)`` of every text column, the values
#: :func:`record_values` makes storable; ``sys.maxsize`` for an unbounded ``TEXT``. Looked up
#: once here instead of through ``meta_runs.c[name].type`` for every value of every row.
_TEXT_SLOTS: Final = tuple(
    (i, getattr(column.type, "length", None) or sys.maxsize)
    for i, column in enumerate(meta_runs.c)
    if isinstance(column.type, sa.String)
)

#: Odibi's status for a failed run in some of its versions; read as FAILURE.
_LEGACY_STATUSES: Final = {"FAILED": RunStatus.FAILURE}

_RUNNING: Final = RunStatus.RUNNING

#: ``metrics_json`` of a run without attributes (most runs): ``json.dumps({})``, not recomputed.
_NO_ATTRIBUTES: Final = "{}"

# --- record <-> row ---------------------------------------------------------------------------


def utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already.

    SQLite stores datetimes without an offset (SQLAlchemy drops it when binding), and
    PostgreSQL returns ``timestamptz`` in the session's time zone. Converting on the way in and
    out makes both backends store and return the same instant.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def db_text(value: str | None, limit: int | None) -> str | None:
    """Make ``value`` storable in any catalog backend, bounded to the column's length.

    A value a backend refuses (PostgreSQL rejects NUL characters and ``VARCHAR(n)`` overflows;
    both drivers reject lone surrogates) would make the whole batch fail on every retry and
    stall the sink for good, so it is repaired here instead: NUL becomes U+FFFD, an unencodable
    character is escaped (:mod:`odibi_observe._textsafe`, the rule of every sink), and an
    over-long value is cut with a note of how much was cut.
    """
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    value = encodable_text(value)  # lone surrogates escaped, as in every other backend
    if limit is not None and len(value) > limit:
        value = clamp(value, limit)
    return value


def _json_value(value: Any) -> Any:
    """Attribute values as JSON: tuples become arrays, non-finite floats become strings.

    ``NaN`` is not JSON, and a catalog column other tools parse must hold valid JSON.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    return value


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


_T = TypeVar("_T")


def record_values(
    record: RunRecord,
    kind: EventKind,
    *,
    written: _T,
    instant: Callable[[int], _T],
    day: Callable[[_T], object],
) -> tuple[Any, ...]:
    """The ``meta_runs`` row for one event of ``record``: its values in :data:`COLUMNS` order.

    This is the record-to-row mapping itself; :func:`record_to_row` is it with datetimes, as a
    dict. The catalog's write path binds these tuples to the database driver as they are
    (:class:`odibi_observe.catalog.store._DriverUpsert`), so times come in the form the driver
    is handed: ``instant`` turns nanoseconds since the epoch into that form, ``day`` turns such
    a time into the row's partition date, and ``written`` (the time of the write, in that form)
    is the row's ``updated_at``. A tuple rather than a dict because the driver takes positional
    parameters; a 26-key dict per row, and SQLAlchemy's per-row processing of it, cost more
    CPU than SQLite's insert of the row.

    ``kind`` matters for heartbeats: a HEARTBEAT event whose record carries no heartbeat time
    is still proof the run was alive, so its ``heartbeat_at`` is ``written``. ``duration_ms``
    is the record's rounded :attr:`RunRecord.duration_ms`, so the catalog shows what the span
    and metrics show.
    """
    # This runs for every row the catalog writes, so it avoids what costs a Python call per
    # row: ``status is not RUNNING`` is ``RunStatus.is_terminal`` without the property, and
    # ``_value_`` is where an Enum keeps the value its ``.value`` descriptor returns.
    started = instant(record.started_ns)
    ended = None if record.ended_ns is None else instant(record.ended_ns)
    row_time = ended if record.status is not _RUNNING and ended is not None else started
    if record.heartbeat_ns is not None:
        heartbeat: _T | None = instant(record.heartbeat_ns)
    elif kind is EventKind.HEARTBEAT:
        heartbeat = written
    else:
        heartbeat = None
    metrics_json = (
        _to_json({str(k): _json_value(v) for k, v in record.attributes.items()})
        if record.attributes
        else _NO_ATTRIBUTES
    )
    suggestions = _to_json(list(record.suggestions)) if record.suggestions else None
    row = [  # in the order of _VALUE_ORDER, which is checked against the table's below
        record.run_id,  # RUN_ID
        record.project,  # PROJECT
        record.pipeline,  # PIPELINE
        record.node,  # NODE
        record.status._value_,  # STATUS
        record.rows_processed,  # ROWS
        record.duration_ms,  # DURATION_MS
        metrics_json,  # METRICS_JSON
        record.environment,  # ENVIRONMENT
        row_time,  # TIMESTAMP: when the row's status was reached
        day(row_time),  # DATE: its UTC date
        record.pipeline_run_id,  # PIPELINE_RUN_ID
        record.attempt,  # ATTEMPT
        started,  # STARTED_AT
        ended,  # ENDED_AT
        record.error_type,  # ERROR_TYPE
        record.error_message,  # ERROR_MESSAGE
        suggestions,  # SUGGESTIONS_JSON
        record.trace_id,  # TRACE_ID
        record.span_id,  # SPAN_ID
        record.parent_span_id,  # PARENT_SPAN_ID
        record.host,  # HOST
        record.pid,  # PID
        heartbeat,  # HEARTBEAT_AT
        record.source._value_,  # SOURCE
        written,  # UPDATED_AT
        record.peak_rss_bytes,  # PEAK_RSS
        record.cpu_seconds,  # CPU_SECONDS
        record.memory_limit_bytes,  # MEMORY_LIMIT
        record.error_stack,  # ERROR_STACK
        phases_json(record.writes) if record.writes else None,  # WRITES_JSON
        None if record.checkpoint is None else phases_json(record.checkpoint),  # CHECKPOINT_JSON
        record.skip_reason,  # SKIP_REASON
    ]
    for i, limit in _TEXT_SLOTS:
        value = row[i]
        if value is None:
            continue
        # The common case, decided by C-level checks: ASCII (so encodable) text without NUL
        # that fits. Anything else takes the full repair.
        if (
            value.__class__ is str
            and value.isascii()
            and "\x00" not in value
            and len(value) <= limit
        ):
            continue
        if isinstance(value, str):
            row[i] = db_text(value, limit)
    return tuple(row)


#: The order :func:`record_values` lists its values in, spelled with the column constants; a
#: change to the table that is not made there too fails here, at import.
_VALUE_ORDER: Final = (
    RUN_ID,
    PROJECT,
    PIPELINE,
    NODE,
    STATUS,
    ROWS,
    DURATION_MS,
    METRICS_JSON,
    ENVIRONMENT,
    TIMESTAMP,
    DATE,
    PIPELINE_RUN_ID,
    ATTEMPT,
    STARTED_AT,
    ENDED_AT,
    ERROR_TYPE,
    ERROR_MESSAGE,
    SUGGESTIONS_JSON,
    TRACE_ID,
    SPAN_ID,
    PARENT_SPAN_ID,
    HOST,
    PID,
    HEARTBEAT_AT,
    SOURCE,
    UPDATED_AT,
    PEAK_RSS,
    CPU_SECONDS,
    MEMORY_LIMIT,
    ERROR_STACK,
    WRITES_JSON,
    CHECKPOINT_JSON,
    SKIP_REASON,
)
if _VALUE_ORDER != COLUMNS:  # pragma: no cover - guards edits of the table or of record_values
    raise RuntimeError(f"record_values lists {_VALUE_ORDER}, the table has {COLUMNS}")


def record_to_row(
    record: RunRecord, *, kind: EventKind, now: datetime | None = None
) -> dict[str, Any]:
    """The ``meta_runs`` row for one event of ``record``, as a dict of column → value.

    Times are aware UTC datetimes and ``date`` a date; ``now`` (default: the current time) is
    the row's ``updated_at``, and the ``heartbeat_at`` of a HEARTBEAT event whose record carries
    no heartbeat time. See :func:`record_values`.
    """
    written = utc(now) if now is not None else datetime.now(timezone.utc)
    values = record_values(record, kind, written=written, instant=ns_to_datetime, day=datetime.date)
    return dict(zip(COLUMNS, values, strict=True))


def _datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # a raw SQLite read, or a legacy row written as text
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    raise TypeError(f"not a datetime: {value!r}")


def _status(value: Any) -> RunStatus:
    text = str(value).strip().upper()
    if text in _LEGACY_STATUSES:
        return _LEGACY_STATUSES[text]
    try:
        return RunStatus(text)
    except ValueError:
        raise ValueError(
            f"{STATUS}={value!r} is not one of {', '.join(s.value for s in RunStatus)}"
        ) from None


#: Keys of a write or checkpoint whose value is a time: nanoseconds in the record, ISO-8601 UTC
#: text in the catalog's JSON (what people and SQL read).
_PHASE_TIMES: Final = (PHASE_KEYS.at,)


def phases_json(value: Mapping[str, Any] | tuple[Mapping[str, Any], ...]) -> str:
    """``writes_json`` / ``checkpoint_json`` of a record's writes or checkpoint."""

    def stored(item: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: ns_to_datetime(v).isoformat().replace("+00:00", "Z")
            if k in _PHASE_TIMES and type(v) is int
            else _json_value(v)
            for k, v in item.items()
        }

    if isinstance(value, tuple):
        return _to_json([stored(item) for item in value])
    return _to_json(stored(value))


def _phases(text: Any, shape: type) -> list[dict[str, Any]]:
    """The writes (``shape`` list) or the checkpoint (dict) a JSON column holds, times back in
    nanoseconds; nothing for NULL, and for text another writer left that is not of that
    shape (a row must stay readable)."""
    try:
        value = json.loads(text) if isinstance(text, str) and text else None
    except ValueError:
        return []
    items = value if shape is list and isinstance(value, list) else [value]
    found = []
    for item in items:
        if isinstance(item, dict) and isinstance(
            item.get(PHASE_KEYS.target, item.get(PHASE_KEYS.key)), str
        ):
            for key in _PHASE_TIMES:
                if isinstance(item.get(key), str):
                    try:
                        item[key] = datetime_to_ns(datetime.fromisoformat(item[key]))
                    except ValueError:
                        item[key] = None
            found.append(item)
    return found


def _attribute(value: Any) -> AttributeValue:
    return tuple(value) if isinstance(value, list) else value


def row_to_record(row: Mapping[Any, Any]) -> RunRecord:
    """The :class:`RunRecord` a ``meta_runs`` row describes; inverts :func:`record_to_row`.

    What the catalog does not store comes back as the record's default (``service_name``), and
    times come back at the catalog's microsecond precision. Rows Odibi wrote itself (no trace
    ids, host or pid) come back with empty strings and pid 0 rather than failing, and Odibi's
    ``FAILED`` reads as FAILURE, so history from before odibi-observe stays queryable.
    """
    started = _datetime(row.get(STARTED_AT)) or _datetime(row.get(TIMESTAMP))
    if started is None:
        raise ValueError(f"row {row.get(RUN_ID)!r} has neither {STARTED_AT} nor {TIMESTAMP}")
    ended = _datetime(row.get(ENDED_AT))
    heartbeat = _datetime(row.get(HEARTBEAT_AT))
    raw_attributes = json.loads(row[METRICS_JSON]) if row.get(METRICS_JSON) else {}
    attributes = (
        {str(k): _attribute(v) for k, v in raw_attributes.items()}
        if isinstance(raw_attributes, dict)
        else {}
    )
    suggestions = json.loads(row[SUGGESTIONS_JSON]) if row.get(SUGGESTIONS_JSON) else []
    rows_processed = row.get(ROWS)
    source = row.get(SOURCE)
    peak, cpu, limit = row.get(PEAK_RSS), row.get(CPU_SECONDS), row.get(MEMORY_LIMIT)
    return RunRecord(
        run_id=str(row[RUN_ID]),
        project=row.get(PROJECT) or "",
        pipeline=row.get(PIPELINE) or "",
        node=row.get(NODE) or "",
        environment=row.get(ENVIRONMENT) or "",
        status=_status(row.get(STATUS)),
        started_ns=datetime_to_ns(started),
        trace_id=row.get(TRACE_ID) or "",
        span_id=row.get(SPAN_ID) or "",
        host=row.get(HOST) or "",
        pid=int(row.get(PID) or 0),
        parent_span_id=row.get(PARENT_SPAN_ID),
        pipeline_run_id=row.get(PIPELINE_RUN_ID),
        attempt=int(row.get(ATTEMPT) or 1),
        ended_ns=None if ended is None else datetime_to_ns(ended),
        rows_processed=None if rows_processed is None else int(rows_processed),
        error_type=row.get(ERROR_TYPE),
        error_message=row.get(ERROR_MESSAGE),
        suggestions=tuple(str(s) for s in suggestions),
        attributes=attributes,
        heartbeat_ns=None if heartbeat is None else datetime_to_ns(heartbeat),
        source=Source(source) if source else Source.DECORATOR,
        peak_rss_bytes=None if peak is None else int(peak),
        cpu_seconds=None if cpu is None else float(cpu),
        memory_limit_bytes=None if limit is None else int(limit),
        error_stack=row.get(ERROR_STACK),
        writes=tuple(_phases(row.get(WRITES_JSON), list)),
        checkpoint=next(iter(_phases(row.get(CHECKPOINT_JSON), dict)), None),
        skip_reason=row.get(SKIP_REASON),
    )
