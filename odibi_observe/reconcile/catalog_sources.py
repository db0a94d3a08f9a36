"""The catalog side of reconciliation: ``meta_runs`` in a SQL database or Odibi's Delta table.

The two built-in :class:`~odibi_observe.reconcile.sources.CatalogSource` implementations (the
contract, and :func:`~odibi_observe.reconcile.sources.open_catalog_source`, live in
:mod:`.sources`; both names are importable from here too). Specs:

=======================  ============================================================
``URL``                  any SQLAlchemy URL (``sqlite:///catalog.db``,
                         ``postgresql://user@host/db``): ``meta_runs``, as odibi-observe
                         writes it or as Odibi created it
``odibi-delta:PATH``     Odibi's own Delta ``meta_runs`` (the table, or the project's
                         system directory), read with ``deltalake``
=======================  ============================================================

``sql:URL`` names the SQL catalog explicitly; a spec whose prefix is no registered catalog
scheme is read as a SQLAlchemy URL.

A SQL catalog is read with one query — window filter on the indexed ``started_at``,
``ORDER BY run_id`` in byte order, streamed — so the database does the sorting. The table is
inspected first: a catalog without ``run_id`` or ``status`` is not a run catalog (an error); a
table without odibi-observe's columns (Odibi's own, never migrated) is read for what it has —
placed in time by ``timestamp``, matched by ``run_id``, compared on status, rows and duration
where recorded — with one note (not an error: the table is as Odibi made it) naming what is
missing. Rows Odibi wrote itself are read as Odibi means them: ``rows_processed = 0`` on a
failed run is "unknown", and a row whose ``metrics_json`` marks a dry run or a skipped node is
a run that did not execute (no span expected). Odibi's Delta table has no order
at all, so its rows go through the same external sort as trace files.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any, ClassVar, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from odibi_observe.catalog.schema import (
    CHECKPOINT_JSON,
    COLUMNS,
    DURATION_MS,
    HEARTBEAT_AT,
    METRICS_JSON,
    NODE,
    PIPELINE,
    ROWS,
    RUN_ID,
    SKIP_REASON,
    SOURCE,
    SPAN_ID,
    STARTED_AT,
    STATUS,
    TIMESTAMP,
    TRACE_ID,
    WRITES_JSON,
    meta_runs,
    row_to_record,
)
from odibi_observe.catalog.store import CatalogStore, create_catalog_engine
from odibi_observe.config import ConfigurationError, hide_password
from odibi_observe.conventions import CATALOG_TABLE, RunStatus
from odibi_observe.reconcile import odibi_delta
from odibi_observe.reconcile.model import (
    EXACT_MARGIN,
    FUTURE_SKEW_NS,
    CatalogRun,
    PipelineRunSide,
    ReadLog,
    ReadRange,
    iso_ns,
    new_catalog_run,
    normalize_status,
    odibi_not_run,
    odibi_rows,
)
from odibi_observe.reconcile.pipelines import sql_pipeline_runs
from odibi_observe.reconcile.sources import (
    CatalogSource,
    SourceError,
    SourceOptions,
    open_catalog_source,
)
from odibi_observe.reconcile.spill import ExternalSorter
from odibi_observe.reconcile.sqlutil import (
    YIELD_PER,
    TimeReader,
    as_int,
    byte_order,
    table_columns,
    to_ns,
)
from odibi_observe.record import RunRecord, ns_to_datetime

__all__ = [
    "ODIBI_DELTA_SCHEME",
    "CatalogSource",
    "OdibiDeltaCatalog",
    "SqlCatalog",
    "open_catalog_source",
]

#: How far Odibi's ``timestamp`` may be from a node's start: Odibi logs a pipeline's rows when
#: the pipeline ends, so the margin is the longest pipeline it allows for.
ODIBI_MARGIN: Final = timedelta(hours=6)

#: The catalog columns reconciliation reads, in the order of the query's result.
READ_COLUMNS: Final = (
    RUN_ID,
    STATUS,
    ROWS,
    DURATION_MS,
    STARTED_AT,
    TIMESTAMP,
    TRACE_ID,
    SPAN_ID,
    PIPELINE,
    NODE,
    HEARTBEAT_AT,
    METRICS_JSON,
)

#: Substrings of ``metrics_json`` worth parsing: the flags of a node Odibi did not execute.
#: The query returns ``metrics_json`` only where one occurs, so ordinary rows cost nothing.
NOT_RUN_MARKERS: Final = ('"dry_run"', '"skipped"')

ODIBI_DELTA_SCHEME: Final = "odibi-delta"

TIME_COLUMNS: Final = frozenset({STARTED_AT, TIMESTAMP, HEARTBEAT_AT})
#: Latest checkpoints of a node read from before a window: the last one committed is among
#: them unless that many runs of the node overlapped it (runs commit in start order but for
#: overlaps, which are few).
LATEST_CHECKPOINT_ROWS: Final = 20


class SqlCatalog(CatalogSource):
    """``meta_runs`` in a SQL database; see the module docstring."""

    scheme: ClassVar[str] = "sql"

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine: Engine = create_catalog_engine(url)
        except ConfigurationError as exc:
            raise SourceError(str(exc)) from None
        self._columns: dict[str, Any] | None = None
        self._holds_plans: bool | None = None

    def describe(self) -> str:
        return hide_password(self.url)

    def sql_url(self) -> str | None:
        return self.url

    def close(self) -> None:
        self.engine.dispose()

    def columns(self) -> dict[str, Any]:
        """The table's columns; :class:`SourceError` when it cannot be a run catalog."""
        if self._columns is None:
            try:
                columns = table_columns(self.engine, CATALOG_TABLE)
            except SQLAlchemyError as exc:
                raise SourceError(
                    f"catalog {self.describe()}: cannot connect: {_first_line(exc)}"
                ) from None
            if columns is None:
                raise SourceError(f"catalog {self.describe()}: no table {CATALOG_TABLE}")
            missing = [c for c in (RUN_ID, STATUS) if c not in columns]
            if STARTED_AT not in columns and TIMESTAMP not in columns:
                missing.append(f"{STARTED_AT} or {TIMESTAMP}")
            if missing:
                raise SourceError(
                    f"catalog {self.describe()}: {CATALOG_TABLE} has no column "
                    f"{', '.join(missing)}: not a run catalog"
                )
            self._columns = columns
        return self._columns

    def margin(self) -> timedelta:
        return EXACT_MARGIN if STARTED_AT in self.columns() else ODIBI_MARGIN

    def pipeline_runs(
        self, read_range: ReadRange, log: ReadLog
    ) -> Iterator[PipelineRunSide] | None:
        return sql_pipeline_runs(self.engine, read_range, log, f"catalog {self.describe()}")

    def holds_plans(self) -> bool:
        """A catalog odibi-observe writes (migration 0007 or later, and rows with their
        ``source``); Odibi's own table in SQL — even once ``catalog upgrade`` added the
        columns — has only rows Odibi wrote, which name no source."""
        columns = self.columns()
        if SKIP_REASON not in columns or SOURCE not in columns:
            return False
        if self._holds_plans is None:
            table = sa.table(CATALOG_TABLE, sa.column(SOURCE))
            query = sa.select(sa.literal(1)).where(table.c[SOURCE].is_not(None)).limit(1)
            try:
                with self.engine.connect() as conn:
                    self._holds_plans = conn.execute(query).first() is not None
            except SQLAlchemyError:
                self._holds_plans = False
        return self._holds_plans

    def store(self) -> CatalogStore | None:
        columns = self.columns()
        if any(name not in columns for name in COLUMNS):
            return None  # never migrated: `odibi-observe catalog upgrade` first
        return CatalogStore(self.engine)

    def phase_runs(self, read_range: ReadRange, log: ReadLog) -> Iterator[RunRecord]:
        c = meta_runs.c
        query = (
            sa.select(meta_runs)
            .where(
                sa.or_(c[WRITES_JSON].is_not(None), c[CHECKPOINT_JSON].is_not(None)),
                c[STARTED_AT] >= read_range.start,
                c[STARTED_AT] < read_range.end,
            )
            .order_by(c[STARTED_AT], c[RUN_ID])
        )
        yield from self._records(query, log, WRITES_JSON, "the runs' writes")

    def node_runs(
        self, pipeline: str, node: str, read_range: ReadRange, log: ReadLog
    ) -> Iterator[RunRecord]:
        c = meta_runs.c
        query = _of_node(
            pipeline,
            node,
            c[STATUS] != RunStatus.SKIPPED.value,
            c[STARTED_AT] >= read_range.start,
            c[STARTED_AT] < read_range.end,
        ).order_by(c[STARTED_AT], c[RUN_ID])
        yield from self._records(query, log, STATUS, f"the runs of {pipeline}/{node}")

    def checkpoints_before(
        self, pipeline: str, node: str, before_ns: int, log: ReadLog
    ) -> Iterator[RunRecord]:
        c = meta_runs.c
        query = (
            _of_node(
                pipeline,
                node,
                c[CHECKPOINT_JSON].is_not(None),
                c[STARTED_AT] < ns_to_datetime(before_ns),
            )
            .order_by(c[STARTED_AT].desc(), c[RUN_ID])
            .limit(LATEST_CHECKPOINT_ROWS)
        )
        yield from self._records(query, log, CHECKPOINT_JSON, "the checkpoints before the window")

    def _records(self, query: Any, log: ReadLog, column: str, what: str) -> Iterator[RunRecord]:
        """The rows of ``query`` as records; what cannot be read goes to ``log``. None from a
        table never migrated (Odibi's own): no run of it recorded a phase."""
        if self.store() is None:
            return
        source = f"catalog {self.describe()}"
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            log.add_error(source, column, f"cannot read {what}: {_first_line(exc)}")
            return
        for row in rows:
            try:
                yield row_to_record(row)
            except (TypeError, ValueError) as exc:
                log.add_error(source, f"{RUN_ID}={row.get(RUN_ID)!r}", str(exc))

    def checkpointed_before(self, pipeline: str, node: str, before_ns: int) -> bool:
        c = meta_runs.c
        query = (
            sa.select(c[RUN_ID])
            .where(
                c[PIPELINE] == pipeline,
                c[NODE] == node,
                c[CHECKPOINT_JSON].is_not(None),
                c[STARTED_AT] < ns_to_datetime(before_ns),
            )
            .limit(1)
        )
        try:
            with self.engine.connect() as conn:
                return conn.execute(query).first() is not None
        except SQLAlchemyError:
            return False

    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[CatalogRun]:
        columns = self.columns()
        source = f"catalog {self.describe()}"
        absent = [name for name in READ_COLUMNS if name not in columns]
        exact_times = STARTED_AT in columns
        unchecked = ",".join(
            name
            for name, column in (("rows", ROWS), ("duration", DURATION_MS))
            if column not in columns
        )
        if [name for name in absent if name not in (TIMESTAMP, METRICS_JSON)]:
            # Odibi's own table, as Odibi made it: a fact about the input, not a read error.
            log.add_note(
                source,
                f"{CATALOG_TABLE} has no column "
                f"{', '.join(n for n in absent if n not in (TIMESTAMP, METRICS_JSON))}"
                ": runs are matched by run_id only and compared on what the table "
                "records ('odibi-observe catalog upgrade' adds them)",
            )
        table = sa.table(
            CATALOG_TABLE,
            *(sa.column(name, columns[name].type) for name in READ_COLUMNS if name in columns),
        )
        window_column = table.c[STARTED_AT if exact_times else TIMESTAMP]
        sqlite = self.engine.dialect.name == "sqlite"

        def selected_column(name: str) -> Any:
            if name not in columns:
                return sa.null().label(name)
            if name == METRICS_JSON:
                text = sa.type_coerce(table.c[name], sa.String())
                return sa.case(
                    (sa.or_(*(text.contains(m, autoescape=True) for m in NOT_RUN_MARKERS)), text),
                    else_=sa.null(),
                ).label(name)
            if sqlite and name in TIME_COLUMNS:
                # Read SQLite's stored text as it is (see sqlutil.TimeReader).
                return sa.type_coerce(table.c[name], sa.String()).label(name)
            return table.c[name]

        selected = [selected_column(name) for name in READ_COLUMNS]
        query = (
            sa.select(*selected)
            .where(window_column >= read_range.start, window_column < read_range.end)
            .order_by(byte_order(table.c[RUN_ID], self.engine.dialect.name))
        )
        self._report_future(table, window_column, read_range, log, source)
        number = 0
        times = TimeReader()
        try:
            with self.engine.connect() as conn:
                rows = conn.execution_options(stream_results=True, yield_per=YIELD_PER).execute(
                    query
                )
                # ``number`` outlives the loop: the error below says how far the read got.
                for number, row in log.numbered(rows, "reading catalog", 100_000):  # noqa: B007
                    run = _sql_run(row, exact_times, unchecked, times, log=log, source=source)
                    if run is not None:
                        yield run
        except SQLAlchemyError as exc:
            log.add_error(
                source, CATALOG_TABLE, f"reading stopped after {number} rows: {_first_line(exc)}"
            )

    def _report_future(
        self, table: Any, column: Any, read_range: ReadRange, log: ReadLog, source: str
    ) -> None:
        """Rows placed in the future are a clock or data problem: report them once."""
        limit = ns_to_datetime(read_range.now_ns + FUTURE_SKEW_NS)
        query = sa.select(sa.func.count(), sa.func.min(table.c[RUN_ID])).where(column > limit)
        try:
            with self.engine.connect() as conn:
                count, example = conn.execute(query).one()
        except SQLAlchemyError:
            return
        if count:
            log.add_error(
                source,
                CATALOG_TABLE,
                f"{count} rows are dated in the future (e.g. run {example}): a writer's "
                "clock is wrong; they are outside every window",
            )


def _of_node(pipeline: str, node: str, *where: Any) -> Any:
    """The ``meta_runs`` rows of ``pipeline``/``node`` where ``where`` holds (the index on
    pipeline, node and start serves it)."""
    c = meta_runs.c
    return sa.select(meta_runs).where(c[PIPELINE] == pipeline, c[NODE] == node, *where)


def _sql_run(
    row: Any, exact_times: bool, unchecked: str, times: TimeReader, *, log: ReadLog, source: str
) -> CatalogRun | None:
    (
        run_id,
        status,
        rows,
        duration,
        started,
        logged,
        trace_id,
        span_id,
        pipeline,
        node,
        heartbeat,
        metrics_json,
    ) = row
    try:
        started_ns = None if started is None else times.ns(started)
        window_ns = started_ns if exact_times else times.ns(logged)
        heartbeat_ns = None if heartbeat is None else times.ns(heartbeat)
    except (TypeError, ValueError) as exc:
        log.add_error(
            source, f"{CATALOG_TABLE} run {run_id}", f"unreadable time: {exc}; row skipped"
        )
        return None
    if window_ns is None:
        log.add_error(source, f"{CATALOG_TABLE} run {run_id}", "row has no time; skipped")
        return None
    if (rows is not None and rows.__class__ is not int) or (
        duration is not None and duration.__class__ is not int
    ):
        rows, duration, unchecked = _numbers(
            run_id, rows, duration, unchecked, log=log, source=source
        )
    exact = exact_times and trace_id is not None
    status = normalize_status(status)
    if not exact:
        rows = odibi_rows(status, rows, exact)
    return new_catalog_run(
        (  # CatalogRun's fields, in order
            run_id if run_id.__class__ is str else str(run_id),
            status,
            rows,
            duration,
            window_ns,
            started_ns,
            trace_id,
            span_id,
            pipeline or "",
            node or "",
            heartbeat_ns,
            exact,
            unchecked,
            CATALOG_TABLE,
            "" if exact or metrics_json is None else odibi_not_run(metrics_json),
        )
    )


def _numbers(
    run_id: Any, rows: Any, duration: Any, unchecked: str, *, log: ReadLog, source: str
) -> tuple[int | None, int | None, str]:
    fields = [unchecked] if unchecked else []
    out = []
    for name, column, value in (("rows", ROWS, rows), ("duration", DURATION_MS, duration)):
        try:
            out.append(as_int(value))
        except ValueError as exc:
            log.add_error(source, f"{CATALOG_TABLE} run {run_id}", f"{column}: {exc}; not compared")
            fields.append(name)
            out.append(None)
    return out[0], out[1], ",".join(fields)


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# --- Odibi's Delta table ------------------------------------------------------------------------


class OdibiDeltaCatalog(CatalogSource):
    """Odibi's own ``meta_runs`` Delta table (read-only); see :mod:`.odibi_delta`."""

    scheme: ClassVar[str] = ODIBI_DELTA_SCHEME

    def __init__(self, path: str, *, spill_dir: str | None = None) -> None:
        self.path = path
        self.spill_dir = spill_dir

    @classmethod
    def from_spec(cls, location: str, options: SourceOptions) -> OdibiDeltaCatalog:
        if not location:
            raise SourceError(
                "--catalog odibi-delta: needs a path, e.g. "
                "odibi-delta:/data/project/_odibi_system/meta_runs"
            )
        return cls(location, spill_dir=options.spill_dir)

    def describe(self) -> str:
        return f"{ODIBI_DELTA_SCHEME}:{self.path}"

    def holds_plans(self) -> bool:
        return False  # Odibi writes no row for a node it did not run, nor pipeline runs

    def margin(self) -> timedelta:
        # Asked before anything is read: a path that is not a table fails here, before the
        # traces are read for nothing.
        try:
            odibi_delta.open_meta_runs(self.path)
        except odibi_delta.OdibiDeltaError as exc:
            raise SourceError(f"catalog {self.describe()}: {exc}") from None
        return ODIBI_MARGIN

    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[CatalogRun]:
        source = f"catalog {self.describe()}"
        try:
            table = odibi_delta.open_meta_runs(self.path)
            available = odibi_delta.table_columns(table)
        except odibi_delta.OdibiDeltaError as exc:
            raise SourceError(f"{source}: {exc}") from None
        missing = [c for c in (RUN_ID, STATUS, TIMESTAMP) if c not in available]
        if missing:
            raise SourceError(f"{source}: meta_runs has no column {', '.join(missing)}")
        absent = [c for c in (ROWS, DURATION_MS, PIPELINE, NODE) if c not in available]
        if absent:
            log.add_error(source, "meta_runs", f"no column {', '.join(absent)}; not compared")
        unchecked = ",".join(
            name
            for name, column in (("rows", ROWS), ("duration", DURATION_MS))
            if column not in available
        )
        future = read_range.now_ns + FUTURE_SKEW_NS
        sorter = ExternalSorter(directory=self.spill_dir)
        try:
            rows = odibi_delta.iter_meta_runs(
                self.path,
                since=read_range.start,
                until=read_range.end,
                columns=[
                    RUN_ID,
                    STATUS,
                    ROWS,
                    DURATION_MS,
                    TIMESTAMP,
                    PIPELINE,
                    NODE,
                    METRICS_JSON,
                ],
            )
            for number, row in enumerate(rows, start=1):
                run = self._run(row, unchecked, future, log, source)
                if run is not None:
                    sorter.add(run)
                if number % 100_000 == 0:
                    log.tick("reading Odibi meta_runs", number, None)
            yield from (CatalogRun._make(t) for t in sorter.sorted())
        except odibi_delta.OdibiDeltaError as exc:
            raise SourceError(f"{source}: {exc}") from None
        except OSError as exc:
            log.add_error(source, "meta_runs", f"reading stopped: {type(exc).__name__}: {exc}")
        finally:
            sorter.close()

    @staticmethod
    def _run(
        row: dict[str, Any], unchecked: str, future: int, log: ReadLog, source: str
    ) -> CatalogRun | None:
        run_id = row.get(RUN_ID)
        if not run_id:
            log.add_error(source, "meta_runs", "a row has no run_id; skipped")
            return None
        logged = to_ns(row.get(TIMESTAMP))
        if logged is None:
            log.add_error(source, f"meta_runs run {run_id}", "row has no timestamp; skipped")
            return None
        if logged > future:
            log.add_error(
                source,
                f"meta_runs run {run_id}",
                f"logged in the future ({iso_ns(logged)}); skipped",
            )
            return None
        status = normalize_status(row.get(STATUS))
        metrics = row.get(METRICS_JSON)
        return CatalogRun(
            run_id=str(run_id),
            status=status,
            rows=odibi_rows(status, row.get(ROWS), False),
            duration_ms=row.get(DURATION_MS),
            window_ns=logged,
            started_ns=None,
            trace_id=None,
            span_id=None,
            pipeline=row.get(PIPELINE) or "",
            node=row.get(NODE) or "",
            heartbeat_ns=None,
            exact=False,
            unchecked=unchecked,
            origin="meta_runs (Delta)",
            not_run=odibi_not_run(metrics)
            if isinstance(metrics, str) and any(m in metrics for m in NOT_RUN_MARKERS)
            else "",
        )
