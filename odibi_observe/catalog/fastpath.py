"""The driver-level upsert: the ``ON CONFLICT`` statements compiled once and run as SQL text
on the DBAPI cursor, with times bound exactly as SQLAlchemy would bind them, and a ``COPY``
into a staging table for large PostgreSQL batches.

The catalog write is on every pipeline's path (in-process, under the GIL); see
:class:`_DriverUpsert` for what this saves and why it stays equivalent. Used by
:class:`~odibi_observe.catalog.store.CatalogStore`; imports only the schema and the record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.engine.default import DefaultDialect

from odibi_observe.catalog.schema import (
    COLUMNS,
    HEARTBEAT_AT,
    PEAK_RSS,
    PHASE_COLUMNS,
    RUN_ID,
    STATUS,
    UPDATED_AT,
    meta_runs,
    record_values,
)
from odibi_observe.conventions import RunStatus
from odibi_observe.record import RunEvent, ns_to_datetime

_RUNNING: Final = RunStatus.RUNNING.value

#: DBAPI drivers whose ``executemany`` is efficient by itself (sqlite3 steps one prepared
#: statement in C; psycopg 3 pipelines the rows), mapped to the positional paramstyle the driver
#: accepts. Only these get :class:`_DriverUpsert`. Other drivers keep SQLAlchemy's statement
#: execution: for psycopg2 it is what batches the rows ("insertmanyvalues") instead of a round
#: trip per row, and the rest are not worth a path of their own.
_DRIVER_PARAMSTYLES: Final[dict[str, Literal["qmark", "format"]]] = {
    "pysqlite": "qmark",
    "psycopg": "format",
}


def _native_statements(dialect: str) -> tuple[sa.Insert, sa.Insert]:
    """``INSERT ... ON CONFLICT (run_id) DO UPDATE`` for full rows and for heartbeats.

    Built once per store; SQLAlchemy caches their compiled form, and each batch runs as one
    executemany with bound parameters.
    """
    c = meta_runs.c
    insert = postgresql.insert(meta_runs) if dialect == "postgresql" else sqlite.insert(meta_runs)
    excluded = insert.excluded
    full_set: dict[str, Any] = {col.name: excluded[col.name] for col in c if not col.primary_key}
    # A replayed or terminal snapshot without a heartbeat keeps the one already recorded.
    full_set[HEARTBEAT_AT] = sa.func.coalesce(excluded[HEARTBEAT_AT], c[HEARTBEAT_AT])
    upsert_full = insert.on_conflict_do_update(
        index_elements=[c[RUN_ID]],
        set_=full_set,
        where=sa.or_(c[STATUS] == _RUNNING, excluded[STATUS] != _RUNNING),
    )
    upsert_beat = insert.on_conflict_do_update(
        index_elements=[c[RUN_ID]],
        set_={
            HEARTBEAT_AT: excluded[HEARTBEAT_AT],
            UPDATED_AT: excluded[UPDATED_AT],
            PEAK_RSS: sa.func.coalesce(excluded[PEAK_RSS], c[PEAK_RSS]),
            # A phase event (a write, a checkpoint) is written as a heartbeat carrying them.
            **{name: sa.func.coalesce(excluded[name], c[name]) for name in PHASE_COLUMNS},
        },
        where=sa.and_(
            c[STATUS] == _RUNNING,
            # <=: two phases within one microsecond; the later one holds both.
            sa.or_(c[HEARTBEAT_AT].is_(None), c[HEARTBEAT_AT] <= excluded[HEARTBEAT_AT]),
        ),
    )
    return upsert_full, upsert_beat


# --- the driver-level upsert -------------------------------------------------------------------


@dataclass(frozen=True)
class _TimeBinding:
    """How one driver is handed the catalog's times: what SQLAlchemy's bind processing hands it.

    ``instants()`` makes a converter from nanoseconds since the epoch, meant for one batch: it
    remembers each whole second it has rendered, because a batch's times share a few seconds
    and rendering the second is most of the cost. ``day`` takes such a value to its date.
    """

    instants: Callable[[], Callable[[int], Any]]
    day: Callable[[Any], Any]


def _instant_datetimes() -> Callable[[int], datetime]:
    """Aware UTC datetimes, equal to :func:`~odibi_observe.record.ns_to_datetime`'s."""
    seconds_start: dict[int, datetime] = {}

    def instant(ns: int) -> datetime:
        seconds, micros = divmod(ns // 1000, 1_000_000)
        start = seconds_start.get(seconds)
        if start is None:
            start = seconds_start[seconds] = ns_to_datetime(seconds * 1_000_000_000)
        return start.replace(microsecond=micros)

    return instant


def _instant_sqlite_texts() -> Callable[[int], str]:
    """UTC times as the text SQLAlchemy's SQLite ``DateTime`` stores (and parses back).

    ``YYYY-MM-DD HH:MM:SS.ffffff``, without an offset: that type drops it when binding, which
    is why times are converted to UTC first. Its first ten characters are the ``Date`` text.
    """
    seconds_template: dict[int, str] = {}  # a second → "YYYY-MM-DD HH:MM:SS.%06d"

    def instant(ns: int) -> str:
        seconds, micros = divmod(ns // 1000, 1_000_000)
        template = seconds_template.get(seconds)
        if template is None:
            start = ns_to_datetime(seconds * 1_000_000_000).replace(tzinfo=None)
            template = seconds_template[seconds] = start.isoformat(" ", "seconds") + ".%06d"
        return template % micros

    return instant


_DATETIMES: Final = _TimeBinding(_instant_datetimes, datetime.date)
_SQLITE_TEXTS: Final = _TimeBinding(_instant_sqlite_texts, itemgetter(slice(10)))

#: Times :func:`_time_binding` checks a binding on: whole and fractional seconds, a single-digit
#: microsecond, the epoch and the last microsecond of a century.
_PROBE_NS: Final = (
    0,
    1_700_000_000_000_000_000,
    1_700_000_000_123_456_789,
    1_714_564_984_000_005_000,
    4_102_444_799_999_999_999,
)


def _bind_processor(type_: sa.types.TypeEngine[Any], dialect: Dialect) -> Any:
    return type_.dialect_impl(dialect).bind_processor(dialect)


def _time_binding(dialect: Dialect) -> _TimeBinding | None:
    """The binding that hands ``dialect``'s driver exactly what SQLAlchemy would, or None.

    Checked rather than assumed: every other column must bind its value unchanged, and the
    time columns' bind processors (SQLite's render text; psycopg has none, it takes datetimes)
    must agree with the binding, value and type, on :data:`_PROBE_NS`. A SQLAlchemy that binds
    differently makes this None, and the store keeps SQLAlchemy's statement execution.
    """
    time_columns: list[tuple[bool, Callable[[Any], Any] | None]] = []
    for column in meta_runs.c:
        processor = _bind_processor(column.type, dialect)
        if isinstance(column.type, (sa.DateTime, sa.Date)):
            time_columns.append((isinstance(column.type, sa.Date), processor))
        elif processor is not None:
            return None

    def agrees(binding: _TimeBinding) -> bool:
        instant = binding.instants()
        for ns in _PROBE_NS:
            moment = ns_to_datetime(ns)
            for is_date, processor in time_columns:
                value = moment.date() if is_date else moment
                expected = value if processor is None else processor(value)
                ours = binding.day(instant(ns)) if is_date else instant(ns)
                if type(ours) is not type(expected) or ours != expected:
                    return False
        return True

    return next((b for b in (_DATETIMES, _SQLITE_TEXTS) if agrees(b)), None)


@dataclass(frozen=True)
class _DriverSQL:
    """An upsert compiled once to positional SQL text; a row's parameters are its values in
    :data:`~odibi_observe.catalog.schema.COLUMNS` order followed by ``constants``, the
    statement's own bound parameters (the ``'RUNNING'`` of its ``WHERE``)."""

    sql: str
    constants: tuple[Any, ...]

    def from_stage(self, stage: str) -> str:
        """The same upsert taking its rows from the table ``stage`` instead of ``VALUES``."""
        head, rest = self.sql.split(" VALUES (", 1)
        _, tail = rest.split(") ON CONFLICT ", 1)
        columns = head[head.index("(") + 1 : head.rindex(")")]
        return f"{head} SELECT {columns} FROM {stage} ON CONFLICT {tail}"  # noqa: S608 - names


#: Rows from which a PostgreSQL batch goes through ``COPY`` into a staging table and one
#: ``INSERT … SELECT … ON CONFLICT`` instead of one statement per row.
_COPY_MIN_ROWS: Final = 64
_STAGE: Final = "odibi_observe_stage"


@dataclass(frozen=True)
class _DriverUpsert:
    """The ``ON CONFLICT`` upserts run as SQL text straight on the DBAPI cursor.

    The write runs in the pipeline's process, under the GIL, so its CPU is the pipeline's.
    SQLAlchemy's statement execution spent, for every row, a parameter dict and its bind
    processing (on SQLite, ``%``-formatting every time and date): about a third of the CPU,
    more than SQLite's own insert of the row. Here each statement is compiled once, its rows
    are built by :func:`~odibi_observe.catalog.schema.record_values` as positional tuples
    already in the form SQLAlchemy would have bound (:func:`_time_binding`), and
    ``exec_driver_sql`` hands them to the driver's ``executemany`` as they are. Values stay
    bound parameters; SQLAlchemy still runs the transaction, its events and its error wrapping
    (``hide_parameters`` included).
    """

    full: _DriverSQL
    beat: _DriverSQL
    times: _TimeBinding

    @classmethod
    def for_dialect(
        cls, dialect: Dialect, upsert_full: sa.Insert, upsert_beat: sa.Insert
    ) -> _DriverUpsert | None:
        """The driver-level form of the two upserts, or None where it does not apply."""
        paramstyle = _DRIVER_PARAMSTYLES.get(str(dialect.driver))
        if paramstyle is None or not isinstance(dialect, DefaultDialect):
            return None
        times = _time_binding(dialect)
        if times is None:
            return None
        # The same SQL in a positional paramstyle (psycopg's own is named, which would cost a
        # dict per row and psycopg's reordering of it); paramstyle is the dialect's documented
        # constructor argument (``create_engine(paramstyle=...)``).
        positional = (
            dialect if dialect.paramstyle == paramstyle else type(dialect)(paramstyle=paramstyle)
        )
        full = _driver_sql(upsert_full, positional, dialect)
        beat = _driver_sql(upsert_beat, positional, dialect)
        if full is None or beat is None:
            return None
        return cls(full, beat, times)

    def execute(
        self,
        conn: Connection,
        full: Sequence[RunEvent],
        beats: Sequence[RunEvent],
        statements: list[tuple[str, list[tuple[Any, ...]]]],
    ) -> None:
        """Run the :meth:`statements` of one batch on ``conn`` (in the caller's transaction)."""
        used = [s for s, events in ((self.full, full), (self.beat, beats)) if events]
        for statement, (sql, rows) in zip(used, statements, strict=True):
            if conn.dialect.name == "postgresql" and len(rows) >= _COPY_MIN_ROWS:
                _copy_upsert(conn, statement, rows)
            else:
                conn.exec_driver_sql(sql, rows)

    def statements(
        self, full: Sequence[RunEvent], beats: Sequence[RunEvent], now_ns: int
    ) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """``(sql, rows)`` to execute, in order, for coalesced ``full`` rows and ``beats``."""
        instant = self.times.instants()
        written = instant(now_ns)
        day = self.times.day
        return [
            (
                statement.sql,
                [
                    record_values(ev.record, ev.kind, written=written, instant=instant, day=day)
                    + statement.constants
                    for ev in events
                ],
            )
            for statement, events in ((self.full, full), (self.beat, beats))
            if events
        ]


def _copy_upsert(conn: Connection, statement: _DriverSQL, rows: list[tuple[Any, ...]]) -> None:
    """A large PostgreSQL batch: ``COPY`` the rows into a session-local staging table, then one
    ``INSERT … SELECT … ON CONFLICT`` — the same statement, the same ``WHERE``, one statement
    for the batch instead of one per row (the sidecar's catch-up after an outage is all such
    batches). The staging table is ``TEMP … ON COMMIT DELETE ROWS``: private to the
    connection and emptied by the transaction that filled it. Values stay parameters: COPY
    carries data, never SQL."""
    width = len(COLUMNS)
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} "
            f"(LIKE {meta_runs.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        columns = ", ".join(COLUMNS)
        with cursor.copy(f"COPY {_STAGE} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row[:width])
        cursor.execute(statement.from_stage(_STAGE), statement.constants)


def _driver_sql(statement: sa.Insert, positional: Dialect, dialect: Dialect) -> _DriverSQL | None:
    """``statement`` as positional SQL whose parameters are a row's values, then constants."""
    compiled = statement.compile(dialect=positional)
    names = compiled.positiontup
    if names is None or tuple(names[: len(COLUMNS)]) != COLUMNS:
        return None
    constants = names[len(COLUMNS) :]
    if any(_bind_processor(compiled.binds[n].type, dialect) is not None for n in constants):
        return None
    return _DriverSQL(compiled.string, tuple(compiled.params[n] for n in constants))
