"""The span ledger: the trace side of every node run, as the sidecar's OTLP receiver saw it.

Reconciliation compares what the catalog says with what the traces say. Asking a trace backend
(Tempo, Jaeger) for "every span with ``odibi.run_id`` in the last 24 hours" is slow, paginated,
and subject to the backend's retention and sampling; so the sidecar also accepts the spans
itself (a Collector ``otlphttp`` exporter pointed at it, or the pipeline's own OTLP exporter)
and keeps one row per odibi node span in ``odibi_span_ledger``, next to ``meta_runs``, with the
same column names for the same facts. Reconciliation is then a join.

What is stored, and why:

* only **odibi node spans**, the spans carrying ``odibi.run_id`` (``FIELDS.run_id.attribute``).
  A Collector usually forwards everything it has; the other spans are *ignored* (counted, not
  an error — the sender did nothing wrong);
* keyed by the span's own ``(trace_id, span_id)``, inserted with ``ON CONFLICT DO NOTHING``:
  an exporter that retries after a timeout re-sends spans the ledger already has, and they
  must be stored once (*duplicates*). Two *different* spans claiming the same ``run_id`` are
  both kept — that is a ``duplicate_in_traces`` reconciliation must see, not something to hide;
* one exception to "the first one stays": a ``CRASHED`` span is *replaced* by a ``SUCCESS`` or
  ``FAILURE`` span with the same ids. That pair is a run the sweeper judged dead by its
  heartbeats (its crash span, back-dated, with the run's ids) that then really ended; the
  real ending is the later truth, as in ``meta_runs`` (see docs/guarantees.md, "When a run
  is closed as CRASHED"). Keeping the crash would make reconciliation "repair" the catalog's
  real ending into the crash;
* attribute values of the wrong type (``odibi.rows_processed`` sent as a string, say) are left
  NULL and counted per attribute; the rest of the span is still stored. A span whose ids,
  start time or ``run_id`` are unusable is *rejected* (it cannot be keyed or placed in time).
  One bad span never fails the request: the sender cannot fix it by retrying.

Spans are decoded by :func:`odibi_observe._spandecode.decode_view`, the one decoder of node
spans (reconciliation's OTLP-JSON and Tempo readers use it too); this module only stores.
Its reader is reconciliation's ``ledger:`` source (:mod:`odibi_observe.reconcile.ledger`).

Every value is a bound parameter; text is bounded to its column and made storable in both
backends (NUL and lone surrogates replaced), because a value the database refuses would fail
the whole batch on every retry. Database errors are raised to the caller: the receiver turns
them into ``503 Service Unavailable`` so the sender retries later instead of losing spans.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from odibi_observe._otlp_json import SpanView
from odibi_observe._spandecode import INT_FIELDS, TEXT_FIELDS, SpanProblem, decode_view
from odibi_observe.catalog.migrate import upgrade
from odibi_observe.catalog.schema import (
    ATTEMPT,
    DURATION_MS,
    ENDED_AT,
    ERROR_TYPE,
    PARENT_SPAN_ID,
    RECEIVED_AT,
    RESOURCE_JSON,
    ROWS,
    RUN_ID,
    SERVICE_NAME,
    SPAN_ID,
    STARTED_AT,
    STATUS,
    TRACE_ID,
    db_text,
    span_ledger,
    utc,
)
from odibi_observe.catalog.store import SQLITE_IMMEDIATE, create_catalog_engine
from odibi_observe.conventions import FIELDS, RunStatus
from odibi_observe.record import ns_to_datetime

__all__ = ["LedgerResult", "SpanLedger", "span_to_row"]


def _attr(name: str | None) -> str:
    if name is None:  # pragma: no cover - the conventions table is static
        raise LookupError("a ledger field has no span attribute in the conventions")
    return name


#: The span attribute that makes a span an odibi node span, and the run it records.
RUN_ID_ATTRIBUTE: Final = _attr(FIELDS.run_id.attribute)

_INT32: Final = (-(2**31), 2**31 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)

#: The range each integer column can hold.
_INT_RANGES: Final = {ROWS: _INT64, DURATION_MS: _INT64, ATTEMPT: _INT32}

#: Maximum length of each text column (a ``TEXT`` column has none).
_LIMITS: Final = {column.name: getattr(column.type, "length", None) for column in span_ledger.c}

#: How many rejection reasons a result keeps (they go into one OTLP ``error_message``).
_MAX_ERRORS: Final = 5


@dataclass(frozen=True)
class LedgerResult:
    """What :meth:`SpanLedger.store` did with each span it was given.

    ``stored`` new rows; ``duplicates`` spans the ledger already had (or that appeared twice in
    the batch); ``ignored`` spans that are not odibi node spans; ``rejected`` odibi spans that
    could not be stored at all. ``invalid_attributes`` counts, per span attribute, the stored
    spans whose value for it had the wrong type and was left NULL; ``errors`` holds the first
    few rejection reasons, for the OTLP ``partial_success.error_message``.
    """

    stored: int = 0
    duplicates: int = 0
    ignored: int = 0
    rejected: int = 0
    invalid_attributes: Mapping[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    @property
    def received(self) -> int:
        """Spans examined in total."""
        return self.stored + self.duplicates + self.ignored + self.rejected


@dataclass
class _Batch:
    """The rows one call will insert, and the tally of the spans that will not be."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    ignored: int = 0
    rejected: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(reason)


class SpanLedger:
    """Stores odibi node spans in ``odibi_span_ledger``; reconciliation's ``ledger:`` reads them.

    ``url_or_engine`` is the catalog's URL or an engine (the sidecar shares the catalog sink's
    engine). Nothing connects in the constructor: the schema is migrated on first use
    (:meth:`ensure_schema`, the same Alembic migrations as ``meta_runs``), so a sidecar whose
    database is down at start still starts, and its receiver answers 503 until it is back.
    ``create=False`` skips the migration, for a database user that may not run DDL.

    Thread-safe: each call takes its own pooled connection. On SQLite, calls of this object
    run one at a time: SQLite has one writer, and concurrent exports storing chunk after chunk
    starved each other on its busy timeout (a 503 for an export that merely waited); a
    Python lock makes them queue instead.
    """

    def __init__(self, url_or_engine: str | Engine, *, create: bool = True) -> None:
        self.engine = (
            create_catalog_engine(url_or_engine)
            if isinstance(url_or_engine, str)
            else url_or_engine
        )
        self._create = create
        self._revision: str | None = None
        self._schema_lock = threading.Lock()
        self._serial: AbstractContextManager[Any] = (
            threading.Lock() if self.engine.dialect.name == "sqlite" else nullcontext()
        )
        self._insert = _insert_statement(self.engine.dialect.name)

    # -- schema --------------------------------------------------------------------------

    def ensure_schema(self) -> str | None:
        """Migrate the database to head once (None with ``create=False``); raise if it is down.

        A failure is not remembered: the next call tries again.
        """
        if not self._create:
            return None
        if self._revision is None:
            with self._schema_lock:
                if self._revision is None:
                    with self._serial:
                        self._revision = upgrade(self.engine)
        return self._revision

    # -- writes --------------------------------------------------------------------------

    def store(self, spans: Iterable[SpanView], *, now: datetime | None = None) -> LedgerResult:
        """Insert the odibi node spans among ``spans``; return what happened to each.

        Idempotent by ``(trace_id, span_id)``. All rows are written in one transaction, or
        none: a database error propagates (``sqlalchemy.exc.SQLAlchemyError``) and nothing
        is half-stored, so the sender's retry is safe.
        """
        received = utc(now) if now is not None else datetime.now(timezone.utc)
        batch = _Batch()
        seen: set[tuple[str, str]] = set()
        for span in spans:
            if span.attributes.get(RUN_ID_ATTRIBUTE) is None:
                batch.ignored += 1
                continue
            row, problem = span_to_row(span, received, batch.invalid)
            if row is None:
                batch.reject(problem or "unusable span")
                continue
            key = (row[TRACE_ID], row[SPAN_ID])
            if key in seen:
                batch.duplicates += 1
                continue
            seen.add(key)
            batch.rows.append(row)
        stored = self._insert_rows(batch.rows) if batch.rows else 0
        return LedgerResult(
            stored=stored,
            duplicates=batch.duplicates + len(batch.rows) - stored,
            ignored=batch.ignored,
            rejected=batch.rejected,
            invalid_attributes=dict(batch.invalid),
            errors=tuple(batch.errors),
        )

    def _insert_rows(self, rows: list[dict[str, Any]]) -> int:
        """Insert ``rows`` skipping keys already present; the number actually inserted."""
        self.ensure_schema()
        with self._serial, self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # Take the write lock up front: concurrent writers then queue on the busy
                # timeout instead of failing to upgrade a read lock.
                conn.execution_options(**{SQLITE_IMMEDIATE: True})
            with conn.begin():
                if self._insert is not None:
                    # RETURNING yields only the rows inserted: conflicts return nothing, so
                    # stored and duplicate counts are exact, whatever the driver's rowcount.
                    result = conn.execute(self._insert, rows)
                    return len(result.all())
                return _insert_portable(conn, rows)

    # -- reads ---------------------------------------------------------------------------

    def count(self) -> int:
        """Rows in the ledger."""
        self.ensure_schema()
        with self._serial, self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(span_ledger)
            return int(conn.execute(query).scalar_one())

    def dispose(self) -> None:
        """Close pooled connections (the next call opens new ones)."""
        self.engine.dispose()


#: Statuses of a real ending, which replace a CRASHED span with the same ids.
_REAL_ENDINGS: Final = (RunStatus.SUCCESS.value, RunStatus.FAILURE.value)


def _insert_statement(dialect: str) -> sa.Insert | None:
    """``INSERT ... ON CONFLICT (trace_id, span_id) DO UPDATE ... WHERE`` the stored span is
    CRASHED and the new one a real ending, ``RETURNING`` the keys; None for a backend without
    that syntax (then :func:`_insert_portable` is used). Any other conflict changes nothing.
    """
    c = span_ledger.c
    keys = [c[TRACE_ID], c[SPAN_ID]]
    if dialect == "postgresql":
        insert: Any = postgresql.insert(span_ledger)
    elif dialect == "sqlite":
        insert = sqlite.insert(span_ledger)
    else:
        return None
    excluded = insert.excluded
    return insert.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=keys,
        set_={col.name: excluded[col.name] for col in c if col not in keys},
        where=sa.and_(
            c[STATUS] == RunStatus.CRASHED.value,
            sa.or_(*(excluded[STATUS] == status for status in _REAL_ENDINGS)),
        ),
    ).returning(*keys)


def _insert_portable(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Look up which keys exist, insert the others (same transaction).

    A concurrent insert of the same span by another process makes this fail with an
    integrity error; the sender's retry then finds the span and counts it as a duplicate.
    """
    c = span_ledger.c
    existing: set[tuple[str, str]] = set()
    for i in range(0, len(rows), 500):
        chunk = rows[i : i + 500]
        keys = sa.tuple_(c[TRACE_ID], c[SPAN_ID]).in_([(r[TRACE_ID], r[SPAN_ID]) for r in chunk])
        existing.update(
            (t, s) for t, s in conn.execute(sa.select(c[TRACE_ID], c[SPAN_ID]).where(keys))
        )
    new = [r for r in rows if (r[TRACE_ID], r[SPAN_ID]) not in existing]
    if new:
        conn.execute(span_ledger.insert(), new)
    replaced = 0
    for row in rows:
        if (row[TRACE_ID], row[SPAN_ID]) in existing and row.get(STATUS) in _REAL_ENDINGS:
            replaced += conn.execute(
                span_ledger.update()
                .where(
                    c[TRACE_ID] == row[TRACE_ID],
                    c[SPAN_ID] == row[SPAN_ID],
                    c[STATUS] == RunStatus.CRASHED.value,
                )
                .values({k: v for k, v in row.items() if k not in (TRACE_ID, SPAN_ID)})
            ).rowcount
    return len(new) + replaced


# -- span → row ----------------------------------------------------------------------------


def span_to_row(
    span: SpanView, received_at: datetime, invalid: dict[str, int] | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """The ledger row of an odibi node span, or ``(None, reason)`` if it cannot be stored.

    The span is decoded by :func:`odibi_observe._spandecode.decode_view`, the decoder every
    reader of node spans uses; what is left here is storage. Values the decoder found of the
    wrong type, and integers beyond their column's range, are left NULL and counted in
    ``invalid`` (attribute name → spans).
    """
    tally = invalid if invalid is not None else {}
    try:
        node = decode_view(span)
    except SpanProblem as exc:
        return None, str(exc)
    if node is None:
        return None, f"{RUN_ID_ATTRIBUTE} is missing"
    if len(node.run_id) > (_LIMITS[RUN_ID] or len(node.run_id)):
        return None, f"{RUN_ID_ATTRIBUTE} is longer than {_LIMITS[RUN_ID]} characters"
    for attribute in node.wrong:
        tally[attribute] = tally.get(attribute, 0) + 1
    row: dict[str, Any] = {
        TRACE_ID: node.trace_id,
        SPAN_ID: node.span_id,
        PARENT_SPAN_ID: node.parent_span_id,
        RUN_ID: _text(node.run_id, RUN_ID),
        STARTED_AT: ns_to_datetime(node.start_ns),
        ENDED_AT: ns_to_datetime(node.end_ns) if node.end_ns >= node.start_ns else None,
        RECEIVED_AT: received_at,
        STATUS: _text(node.status or None, STATUS),
        ERROR_TYPE: _text(node.error_type, ERROR_TYPE),
        SERVICE_NAME: _text(node.service_name or None, SERVICE_NAME),
        RESOURCE_JSON: _text(_resource_json(node.resource), RESOURCE_JSON),
    }
    for name, text_field in TEXT_FIELDS:
        row[text_field.column] = _text(getattr(node, name), text_field.column)
    for name, int_field in INT_FIELDS:
        value = getattr(node, name)
        low, high = _INT_RANGES[int_field.column]
        if value is not None and not low <= value <= high:
            value = None
            attribute = _attr(int_field.attribute)
            tally[attribute] = tally.get(attribute, 0) + 1
        row[int_field.column] = value
    return row, None


def _text(value: str | None, column: str) -> str | None:
    """``value`` storable in any backend and bounded to the column (see module docstring)."""
    return db_text(value, _LIMITS.get(column))


def _resource_json(resource: Mapping[str, Any]) -> str | None:
    if not resource:
        return None
    return json.dumps(
        {str(k): _json_value(v) for k, v in resource.items()},
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
    )


def _json_value(value: Any) -> Any:
    """A decoded OTLP ``AnyValue`` as JSON: bytes as hex, non-finite floats as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value
