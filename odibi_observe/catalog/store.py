"""Reads and writes of the ``meta_runs`` catalog.

:class:`CatalogStore` holds the only SQL that writes runs. The write is an idempotent upsert by
``run_id``: the event bus delivers at least once and may replay a run's events out of order
after a failure, and the catalog must still end with exactly one row per run, never moved back
from a terminal status to RUNNING.

The write is on every pipeline's path (in-process, under the GIL), so on the drivers that allow
it the upsert skips SQLAlchemy's per-row work: see :mod:`~odibi_observe.catalog.fastpath`.
Engines come from :mod:`~odibi_observe.catalog.engine`; :func:`create_catalog_engine` and the
engine constants are re-exported here, where their importers have always found them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from odibi_observe.catalog.engine import (
    POSTGRES_CONNECT_TIMEOUT_S,
    POSTGRES_EXTRA_HINT,
    SQLITE_BUSY_TIMEOUT_MS,
    SQLITE_IMMEDIATE,
    create_catalog_engine,
)
from odibi_observe.catalog.fastpath import _RUNNING, _DriverUpsert, _native_statements
from odibi_observe.catalog.migrate import upgrade
from odibi_observe.catalog.schema import (
    HEARTBEAT_AT,
    HOST,
    NODE,
    PEAK_RSS,
    PHASE_COLUMNS,
    PIPELINE,
    PIPELINE_RUN_ID,
    RUN_ID,
    STARTED_AT,
    STATUS,
    UPDATED_AT,
    meta_runs,
    pipeline_record_to_row,
    pipeline_runs,
    record_to_row,
    row_to_record,
    utc,
)
from odibi_observe.conventions import RunStatus
from odibi_observe.record import EventKind, RunEvent, RunRecord, ns_to_datetime

__all__ = [
    "POSTGRES_CONNECT_TIMEOUT_S",
    "POSTGRES_EXTRA_HINT",
    "SQLITE_BUSY_TIMEOUT_MS",
    "SQLITE_IMMEDIATE",
    "CatalogStore",
    "coalesce_events",
    "create_catalog_engine",
]

_IN_CHUNK: Final = 500
_PIPELINE: Final = EventKind.PIPELINE


def coalesce_events(events: Sequence[RunEvent]) -> tuple[list[RunEvent], list[RunEvent]]:
    """One event per run: ``(full, heartbeats)``, the rows to upsert and the liveness updates.

    A terminal event beats a heartbeat or a phase (a write or checkpoint of the running run:
    written like a heartbeat, which also carries the run's phases), which beats a start; among
    equals the later one wins.
    This keeps a batch to one row per ``run_id`` (PostgreSQL refuses to update the same row
    twice in one statement) and means a batch holding a run's start *and* end writes the end
    once instead of writing the row twice.
    """
    # The rank is inlined (``status is not RUNNING`` is ``RunStatus.is_terminal``): this runs
    # for every event, and a ``rank()`` call plus the property per event made coalescing cost
    # four times what it does now.
    heartbeat, phase = EventKind.HEARTBEAT, EventKind.PHASE
    running = RunStatus.RUNNING
    winners: dict[str, tuple[int, RunEvent]] = {}
    for ev in events:
        record = ev.record
        kind = ev.kind
        rank = 2 if record.status is not running else 1 if kind is heartbeat or kind is phase else 0
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
    SQLAlchemy's statement execution even where the driver-level upsert
    (:class:`~odibi_observe.catalog.fastpath._DriverUpsert`) applies (as it does with other
    drivers). Both exist so that every code path can be tested on both backends.
    """

    def __init__(
        self, engine_or_url: Engine | str, *, portable: bool = False, driver_sql: bool = True
    ) -> None:
        self.engine = (
            create_catalog_engine(engine_or_url)
            if isinstance(engine_or_url, str)
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
        pipelines = [ev for ev in events if ev.kind is _PIPELINE]
        if pipelines:  # rare: two per pipeline run
            self.upsert_pipeline_runs(pipelines)
            events = [ev for ev in events if ev.kind is not _PIPELINE]
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

    def upsert_pipeline_runs(self, events: Sequence[RunEvent]) -> None:
        """Record pipeline runs (``EventKind.PIPELINE``) in ``meta_pipeline_runs``, in one
        transaction. Idempotent by pipeline run id; a ``RUNNING`` record never overwrites a
        finished row. Portable statements: a pipeline run writes two rows in its life, so
        this is not worth a driver-level path."""
        latest: dict[str, RunEvent] = {}
        for ev in events:  # one per pipeline run: the terminal beats the start
            current = latest.get(ev.run_id)
            if (
                current is None
                or ev.record.status.is_terminal
                or not current.record.status.is_terminal
            ):
                latest[ev.run_id] = ev
        now = ns_to_datetime(time.time_ns())
        rows = [pipeline_record_to_row(ev.record, now=now) for ev in latest.values()]
        c = pipeline_runs.c
        with self._write_transaction() as conn:
            existing = {
                str(run_id): str(status)
                for run_id, status in conn.execute(
                    sa.select(c[PIPELINE_RUN_ID], c[STATUS]).where(
                        c[PIPELINE_RUN_ID].in_(list(latest))
                    )
                )
            }
            for row in rows:
                key = row[PIPELINE_RUN_ID]
                if key not in existing:
                    conn.execute(pipeline_runs.insert(), row)
                elif row[STATUS] != _RUNNING or existing[key] == _RUNNING:
                    values = {k: v for k, v in row.items() if k != PIPELINE_RUN_ID}
                    conn.execute(
                        pipeline_runs.update().where(c[PIPELINE_RUN_ID] == key).values(values)
                    )

    def pipeline_run(self, pipeline_run_id: str) -> dict[str, Any] | None:
        """The ``meta_pipeline_runs`` row of ``pipeline_run_id`` (column → value), or None."""
        query = sa.select(pipeline_runs).where(pipeline_runs.c[PIPELINE_RUN_ID] == pipeline_run_id)
        with self._connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else dict(row)

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
                sa.or_(c[HEARTBEAT_AT].is_(None), c[HEARTBEAT_AT] <= _bind(HEARTBEAT_AT)),
            )
            .values(
                {
                    HEARTBEAT_AT: _bind(HEARTBEAT_AT),
                    UPDATED_AT: _bind(UPDATED_AT),
                    PEAK_RSS: sa.func.coalesce(_bind(PEAK_RSS), c[PEAK_RSS]),
                    **{name: sa.func.coalesce(_bind(name), c[name]) for name in PHASE_COLUMNS},
                }
            )
        )
        conn.execute(beat_update, beats)
