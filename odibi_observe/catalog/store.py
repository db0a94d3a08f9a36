"""Engines and reads/writes of the ``meta_runs`` catalog.

:func:`create_catalog_engine` turns a catalog URL into an engine tuned for this workload (many
small upserts from several processes, reads from dashboards), and :class:`CatalogStore` holds
the only SQL that writes runs. The write is an idempotent upsert by ``run_id``: the event bus
delivers at least once and may replay a run's events out of order after a failure, and the
catalog must still end with exactly one row per run, never moved back from a terminal status
to RUNNING.

The write is on every pipeline's path (in-process, under the GIL), so on the drivers that allow
it the upsert skips SQLAlchemy's per-row work: see :class:`_DriverUpsert`.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.pool import StaticPool

from odibi_observe.catalog.migrate import upgrade
from odibi_observe.catalog.schema import (
    COLUMNS,
    HEARTBEAT_AT,
    HOST,
    NODE,
    PEAK_RSS,
    PIPELINE,
    RUN_ID,
    STARTED_AT,
    STATUS,
    UPDATED_AT,
    meta_runs,
    record_to_row,
    record_values,
    row_to_record,
    utc,
)
from odibi_observe.config import ConfigurationError, hide_password
from odibi_observe.conventions import RunStatus
from odibi_observe.record import EventKind, RunEvent, RunRecord, ns_to_datetime

#: Execution option: start this connection's SQLite transactions with ``BEGIN IMMEDIATE``,
#: taking the write lock up front so that concurrent writers queue on ``busy_timeout``
#: instead of failing when a read lock cannot be upgraded.
SQLITE_IMMEDIATE: Final = "odibi_observe_sqlite_immediate"

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
POSTGRES_CONNECT_TIMEOUT_S: Final = 5
POSTGRES_EXTRA_HINT: Final = "pip install 'odibi-observe[postgres]'"

_RUNNING: Final = RunStatus.RUNNING.value
_IN_CHUNK: Final = 500

#: DBAPI drivers whose ``executemany`` is efficient by itself (sqlite3 steps one prepared
#: statement in C; psycopg 3 pipelines the rows), mapped to the positional paramstyle the driver
#: accepts. Only these get :class:`_DriverUpsert`. Other drivers keep SQLAlchemy's statement
#: execution: for psycopg2 it is what batches the rows ("insertmanyvalues") instead of a round
#: trip per row, and the rest are not worth a path of their own.
_DRIVER_PARAMSTYLES: Final[dict[str, Literal["qmark", "format"]]] = {
    "pysqlite": "qmark", "psycopg": "format",
}


def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


_shown = hide_password  # parses the URL, or redacts its userinfo when it does not parse


def _parse_url(url: str) -> URL:
    """Parse ``url`` and pick the PostgreSQL driver that is installed.

    ``postgres://`` (Heroku and many PaaS) and a bare ``postgresql://`` both mean "PostgreSQL,
    default driver"; SQLAlchemy's default is psycopg2, but odibi-observe's ``postgres`` extra
    installs psycopg 3, so the driver is chosen by what is importable.
    """
    try:
        parsed = make_url(url)
    except Exception:
        # The parser's own message may quote the URL; ours hides the password.
        raise ConfigurationError(
            f"catalog_url {_shown(url)!r} is not a valid database URL "
            "(expected e.g. sqlite:///catalog.db or postgresql://user:***@host/db)"
        ) from None
    if parsed.drivername in ("postgres", "postgresql"):
        if _module_available("psycopg2"):
            parsed = parsed.set(drivername="postgresql")
        elif _module_available("psycopg"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        else:
            raise ConfigurationError(
                f"catalog_url {_shown(url)!r}: no PostgreSQL driver is installed; "
                f"{POSTGRES_EXTRA_HINT}"
            )
    return parsed


def _is_memory_sqlite(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def create_catalog_engine(url: str) -> Engine:
    """An engine for the catalog at ``url``, configured for concurrent small writes.

    Does not connect. Raises :class:`ConfigurationError` (with the password hidden) for a URL
    that cannot be parsed or whose driver is not installed.

    * SQLite: WAL (readers never block the writer), ``synchronous=NORMAL`` (durable at
      checkpoints; what WAL is designed for), a busy timeout so concurrent processes wait for
      the write lock instead of failing, and real transactions (SQLAlchemy emits ``BEGIN``, so
      DDL is transactional too). ``:memory:`` uses one shared connection, or every pooled
      connection would see its own empty database.
    * PostgreSQL: ``pool_pre_ping`` (connections dropped by a restart or a proxy are replaced
      instead of failing a batch) and a 5 s connect timeout (an unreachable catalog fails
      fast; the bus retries it later).

    Bound parameters are hidden from exception messages: they are run records (error messages,
    user attributes), which should not be copied into logs with other access rules.
    """
    parsed = _parse_url(url)
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {"hide_parameters": True}
    memory = backend == "sqlite" and _is_memory_sqlite(parsed)
    if backend == "sqlite":
        options["connect_args"] = {"check_same_thread": False}
        if memory:
            options["poolclass"] = StaticPool
    elif backend == "postgresql":
        options["pool_pre_ping"] = True
        options["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    else:
        options["pool_pre_ping"] = True
    try:
        engine = sa.create_engine(parsed, **options)
    except ImportError as exc:
        hint = POSTGRES_EXTRA_HINT if backend == "postgresql" else (
            f"install the Python driver for {parsed.drivername}"
        )
        raise ConfigurationError(
            f"catalog_url {_shown(url)!r}: database driver not installed "
            f"({type(exc).__name__}: {exc.name or exc}); {hint}"
        ) from None
    except sa.exc.ArgumentError:
        raise ConfigurationError(
            f"catalog_url {_shown(url)!r}: unsupported database URL"
        ) from None
    if backend == "sqlite":
        _configure_sqlite(engine, file_db=not memory,
                          transactional=parsed.get_driver_name() == "pysqlite")
    return engine


def _configure_sqlite(engine: Engine, *, file_db: bool, transactional: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if transactional:
            # Take BEGIN away from the driver, which skips it before DDL and SELECT; the
            # "begin" listener below emits it for every transaction instead (the recipe from
            # SQLAlchemy's SQLite documentation).
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS:d}")
            if file_db:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    if transactional:
        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(SQLITE_IMMEDIATE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def coalesce_events(events: Sequence[RunEvent]) -> tuple[list[RunEvent], list[RunEvent]]:
    """One event per run: ``(full, heartbeats)``, the rows to upsert and the liveness updates.

    A terminal event beats a heartbeat, which beats a start; among equals the later one wins.
    This keeps a batch to one row per ``run_id`` (PostgreSQL refuses to update the same row
    twice in one statement) and means a batch holding a run's start *and* end writes the end
    once instead of writing the row twice.
    """
    # The rank is inlined (``status is not RUNNING`` is ``RunStatus.is_terminal``): this runs
    # for every event, and a ``rank()`` call plus the property per event made coalescing cost
    # four times what it does now.
    heartbeat = EventKind.HEARTBEAT
    running = RunStatus.RUNNING
    winners: dict[str, tuple[int, RunEvent]] = {}
    for ev in events:
        record = ev.record
        rank = 2 if record.status is not running else 1 if ev.kind is heartbeat else 0
        current = winners.get(record.run_id)
        if current is None or rank >= current[0]:
            winners[record.run_id] = (rank, ev)
    full = [ev for rank, ev in winners.values() if rank != 1]
    beats = [ev for rank, ev in winners.values() if rank == 1]
    return full, beats


class CatalogStore:
    """The catalog's engine plus the reads and writes of run rows.

    Thread-safe: the engine's pool hands each call its own connection, except for an in-memory
    SQLite catalog, whose single shared connection is used by one call at a time.
    ``portable=True`` forces the dialect-neutral upsert (used automatically for backends other
    than SQLite and PostgreSQL); ``driver_sql=False`` runs the ``ON CONFLICT`` upsert through
    SQLAlchemy's statement execution even where :class:`_DriverUpsert` applies (as it does with
    other drivers). Both exist so that every code path can be tested on both backends.
    """

    def __init__(
        self, engine_or_url: Engine | str, *, portable: bool = False, driver_sql: bool = True
    ) -> None:
        self.engine = (
            create_catalog_engine(engine_or_url) if isinstance(engine_or_url, str)
            else engine_or_url
        )
        self._schema_lock = threading.Lock()
        self._revision: str | None = None
        self._serial = self._new_serial()
        dialect = self.engine.dialect
        self._native: tuple[sa.Insert, sa.Insert] | None = None
        self._driver: _DriverUpsert | None = None
        if not portable and dialect.name in ("sqlite", "postgresql"):
            self._native = _native_statements(dialect.name)
            if driver_sql:
                self._driver = _DriverUpsert.for_dialect(dialect, *self._native)

    # -- schema ----------------------------------------------------------------------------

    def ensure_schema(self) -> str:
        """Migrate the database to head, once for this store; return the revision.

        Thread-safe: concurrent first calls run the migration once and all wait for it. A
        failure is not remembered, so the next call (the bus's retry) tries again.
        """
        if self._revision is not None:
            return self._revision
        with self._schema_lock:
            if self._revision is None:
                with self._serial:
                    self._revision = upgrade(self.engine)
            return self._revision

    # -- writes ----------------------------------------------------------------------------

    def upsert(self, events: Sequence[RunEvent]) -> None:
        """Record ``events`` in one transaction: all of them, or none (and raise).

        Idempotent by ``run_id``; a RUNNING row never overwrites a terminal one; a heartbeat
        only moves ``heartbeat_at`` (forward) of a run that is still RUNNING, inserting the
        RUNNING row if the start never arrived. Full rows and heartbeats are two statements
        (their ``ON CONFLICT`` updates differ), each a single executemany: as SQL text on the
        driver where :class:`_DriverUpsert` applies, else through SQLAlchemy.
        """
        if not events:
            return
        full, beats = coalesce_events(events)
        now_ns = time.time_ns()
        if self._driver is not None:
            # Rows are built before the transaction, which on SQLite holds the write lock.
            statements = self._driver.statements(full, beats, now_ns)
            with self._write_transaction() as conn:
                self._driver.execute(conn, full, beats, statements)
            return
        now = ns_to_datetime(now_ns)
        full_rows = [record_to_row(ev.record, kind=ev.kind, now=now) for ev in full]
        beat_rows = [record_to_row(ev.record, kind=ev.kind, now=now) for ev in beats]
        with self._write_transaction() as conn:
            if self._native is not None:
                upsert_full, upsert_beat = self._native
                if full_rows:
                    conn.execute(upsert_full, full_rows)
                if beat_rows:
                    conn.execute(upsert_beat, beat_rows)
            else:
                _upsert_portable(conn, full_rows, beat_rows)

    def close_running(self, records: Sequence[RunRecord]) -> list[str]:
        """Write each terminal ``record`` only where its row is still ``RUNNING``.

        This is how a sweeper or a reconciler closes a run it believes dead: unlike
        :meth:`upsert`, it never overwrites a terminal row, so a run whose real ending arrives
        between the check and the write keeps its real ending. Returns the run ids that were
        closed here (the caller emits spans and metrics for exactly those).
        """
        self.ensure_schema()
        c = meta_runs.c
        now = ns_to_datetime(time.time_ns())
        closed: list[str] = []
        with self._write_transaction() as conn:
            for record in records:
                if not record.status.is_terminal:
                    raise ValueError(f"close_running needs a terminal record, not {record.status}")
                row = record_to_row(record, kind=EventKind.FINISHED, now=now)
                values = {k: v for k, v in row.items() if k != RUN_ID}
                result = conn.execute(
                    meta_runs.update()
                    .where(c[RUN_ID] == record.run_id, c[STATUS] == RunStatus.RUNNING.value)
                    .values(**values)
                )
                if result.rowcount == 1:
                    closed.append(record.run_id)
        return closed

    def _new_serial(self) -> AbstractContextManager[Any]:
        # One DBAPI connection serves every thread of a StaticPool (":memory:"); two
        # transactions on it at once would interleave, so calls take turns.
        return threading.Lock() if isinstance(self.engine.pool, StaticPool) else nullcontext()

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        with self._serial, self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _write_transaction(self) -> Iterator[Connection]:
        with self._connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.execution_options(**{SQLITE_IMMEDIATE: True})
            with conn.begin():
                yield conn

    # -- reads -----------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        """The run ``run_id`` as the catalog has it, or None."""
        query = sa.select(meta_runs).where(meta_runs.c[RUN_ID] == run_id)
        with self._connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else row_to_record(row)

    def recent_runs(
        self,
        *,
        limit: int = 20,
        pipeline: str | None = None,
        node: str | None = None,
        status: RunStatus | str | None = None,
        statuses: Sequence[RunStatus | str] | None = None,
        since: datetime | None = None,
    ) -> list[RunRecord]:
        """The newest runs first (by ``started_at``), optionally filtered.

        ``status`` keeps one status, ``statuses`` any of several (both may be given; a run
        must match both). ``since`` is inclusive; a naive datetime is taken as UTC.
        """
        c = meta_runs.c
        query = sa.select(meta_runs)
        if pipeline is not None:
            query = query.where(c[PIPELINE] == pipeline)
        if node is not None:
            query = query.where(c[NODE] == node)
        if status is not None:
            query = query.where(c[STATUS] == RunStatus(status).value)
        if statuses is not None:
            query = query.where(c[STATUS].in_([RunStatus(s).value for s in statuses]))
        if since is not None:
            query = query.where(c[STARTED_AT] >= utc(since))
        query = query.order_by(c[STARTED_AT].desc(), c[RUN_ID].desc()).limit(limit)
        with self._connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [row_to_record(row) for row in rows]

    def running(self, *, host: str | None = None, limit: int = 10_000) -> list[RunRecord]:
        """Runs still ``RUNNING`` (oldest first), optionally only those on ``host``.

        The sweeper's query; served by the ``(status, started_at)`` index, so its cost follows
        the number of open runs, not the size of the catalog.
        """
        c = meta_runs.c
        query = sa.select(meta_runs).where(c[STATUS] == RunStatus.RUNNING.value)
        if host is not None:
            query = query.where(c[HOST] == host)
        query = query.order_by(c[STARTED_AT], c[RUN_ID]).limit(limit)
        with self._connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [row_to_record(row) for row in rows]

    def count(self) -> int:
        """Number of rows in the catalog."""
        with self._connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(meta_runs)).scalar_one())

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()

    def after_fork(self) -> None:
        """Forget the parent's pooled connections without closing them; the parent still uses
        them, and one connection used by two processes corrupts the protocol stream of both.
        Locks are renewed because another thread may have held one at the fork.
        """
        self.engine.dispose(close=False)
        self._schema_lock = threading.Lock()
        self._serial = self._new_serial()


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
        set_={HEARTBEAT_AT: excluded[HEARTBEAT_AT], UPDATED_AT: excluded[UPDATED_AT],
              PEAK_RSS: sa.func.coalesce(excluded[PEAK_RSS], c[PEAK_RSS])},
        where=sa.and_(
            c[STATUS] == _RUNNING,
            sa.or_(c[HEARTBEAT_AT].is_(None), c[HEARTBEAT_AT] < excluded[HEARTBEAT_AT]),
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
    0, 1_700_000_000_000_000_000, 1_700_000_000_123_456_789, 1_714_564_984_000_005_000,
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
        columns = head[head.index("(") + 1: head.rindex(")")]
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

    def execute(self, conn: Connection, full: Sequence[RunEvent], beats: Sequence[RunEvent],
                statements: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
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
            (statement.sql, [
                record_values(ev.record, ev.kind, written=written, instant=instant, day=day)
                + statement.constants
                for ev in events
            ])
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
            f"(LIKE {meta_runs.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
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
    constants = names[len(COLUMNS):]
    if any(_bind_processor(compiled.binds[n].type, dialect) is not None for n in constants):
        return None
    return _DriverSQL(compiled.string, tuple(compiled.params[n] for n in constants))


def _bind(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(f"b_{name}", type_=meta_runs.c[name].type)


def _bound(row: Mapping[str, Any]) -> dict[str, Any]:
    return {f"b_{k}": v for k, v in row.items()}


def _upsert_portable(
    conn: Connection, full_rows: list[dict[str, Any]], beat_rows: list[dict[str, Any]]
) -> None:
    """The same upsert without ``ON CONFLICT``: look up which runs exist, update, insert.

    All in the caller's transaction. A concurrent insert of the same new run by another
    process makes this batch fail with an integrity error; the bus retries it, and the retry
    finds the row and updates it.
    """
    c = meta_runs.c
    ids = [row[RUN_ID] for row in (*full_rows, *beat_rows)]
    existing: set[str] = set()
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i : i + _IN_CHUNK]
        existing.update(conn.execute(sa.select(c[RUN_ID]).where(c[RUN_ID].in_(chunk))).scalars())

    new_rows = [row for row in (*full_rows, *beat_rows) if row[RUN_ID] not in existing]
    if new_rows:
        conn.execute(meta_runs.insert(), new_rows)

    values: dict[str, Any] = {col.name: _bind(col.name) for col in c if not col.primary_key}
    values[HEARTBEAT_AT] = sa.func.coalesce(_bind(HEARTBEAT_AT), c[HEARTBEAT_AT])
    update = meta_runs.update().where(c[RUN_ID] == _bind(RUN_ID)).values(values)
    terminal = [_bound(r) for r in full_rows if r[RUN_ID] in existing and r[STATUS] != _RUNNING]
    running = [_bound(r) for r in full_rows if r[RUN_ID] in existing and r[STATUS] == _RUNNING]
    if terminal:
        conn.execute(update, terminal)
    if running:
        conn.execute(update.where(c[STATUS] == _RUNNING), running)

    beats = [_bound(r) for r in beat_rows if r[RUN_ID] in existing]
    if beats:
        beat_update = (
            meta_runs.update()
            .where(
                c[RUN_ID] == _bind(RUN_ID),
                c[STATUS] == _RUNNING,
                sa.or_(c[HEARTBEAT_AT].is_(None), c[HEARTBEAT_AT] < _bind(HEARTBEAT_AT)),
            )
            .values({HEARTBEAT_AT: _bind(HEARTBEAT_AT), UPDATED_AT: _bind(UPDATED_AT),
                     PEAK_RSS: sa.func.coalesce(_bind(PEAK_RSS), c[PEAK_RSS])})
        )
        conn.execute(beat_update, beats)
