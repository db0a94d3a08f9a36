"""Engines and reads/writes of the ``meta_runs`` catalog.

:func:`create_catalog_engine` turns a catalog URL into an engine tuned for this workload (many
small upserts from several processes, reads from dashboards), and :class:`CatalogStore` holds
the only SQL that writes runs. The write is an idempotent upsert by ``run_id``: the event bus
delivers at least once and may replay a run's events out of order after a failure, and the
catalog must still end with exactly one row per run, never moved back from a terminal status
to RUNNING.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from odibi_observe.catalog.migrate import upgrade
from odibi_observe.catalog.schema import (
    HEARTBEAT_AT,
    NODE,
    PIPELINE,
    RUN_ID,
    STARTED_AT,
    STATUS,
    UPDATED_AT,
    meta_runs,
    record_to_row,
    row_to_record,
    utc,
)
from odibi_observe.config import ConfigurationError, hide_password
from odibi_observe.conventions import RunStatus
from odibi_observe.record import EventKind, RunEvent, RunRecord

#: Execution option: start this connection's SQLite transactions with ``BEGIN IMMEDIATE``,
#: taking the write lock up front so that concurrent writers queue on ``busy_timeout``
#: instead of failing when a read lock cannot be upgraded.
SQLITE_IMMEDIATE: Final = "odibi_observe_sqlite_immediate"

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
POSTGRES_CONNECT_TIMEOUT_S: Final = 5
POSTGRES_EXTRA_HINT: Final = "pip install 'odibi-observe[postgres]'"

_RUNNING: Final = RunStatus.RUNNING.value
_IN_CHUNK: Final = 500


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
    def rank(ev: RunEvent) -> int:
        if ev.record.status.is_terminal:
            return 2
        return 1 if ev.kind is EventKind.HEARTBEAT else 0

    winners: dict[str, RunEvent] = {}
    for ev in events:
        current = winners.get(ev.run_id)
        if current is None or rank(ev) >= rank(current):
            winners[ev.run_id] = ev
    full = [ev for ev in winners.values() if rank(ev) != 1]
    beats = [ev for ev in winners.values() if rank(ev) == 1]
    return full, beats


class CatalogStore:
    """The catalog's engine plus the reads and writes of run rows.

    Thread-safe: the engine's pool hands each call its own connection, except for an in-memory
    SQLite catalog, whose single shared connection is used by one call at a time.
    ``portable=True`` forces the dialect-neutral upsert (used automatically for backends other
    than SQLite and PostgreSQL); it exists so both code paths can be tested on both backends.
    """

    def __init__(self, engine_or_url: Engine | str, *, portable: bool = False) -> None:
        self.engine = (
            create_catalog_engine(engine_or_url) if isinstance(engine_or_url, str)
            else engine_or_url
        )
        self._schema_lock = threading.Lock()
        self._revision: str | None = None
        self._serial = self._new_serial()
        dialect = self.engine.dialect.name
        self._native: tuple[sa.Insert, sa.Insert] | None = None
        if not portable and dialect in ("sqlite", "postgresql"):
            self._native = _native_statements(dialect)

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
        (their ``ON CONFLICT`` updates differ), each a single executemany.
        """
        if not events:
            return
        full, beats = coalesce_events(events)
        now = datetime.now(timezone.utc)
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
        set_={HEARTBEAT_AT: excluded[HEARTBEAT_AT], UPDATED_AT: excluded[UPDATED_AT]},
        where=sa.and_(
            c[STATUS] == _RUNNING,
            sa.or_(c[HEARTBEAT_AT].is_(None), c[HEARTBEAT_AT] < excluded[HEARTBEAT_AT]),
        ),
    )
    return upsert_full, upsert_beat


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
            .values({HEARTBEAT_AT: _bind(HEARTBEAT_AT), UPDATED_AT: _bind(UPDATED_AT)})
        )
        conn.execute(beat_update, beats)
