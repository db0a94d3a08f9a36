"""``ledger:URL`` — the trace side as the sidecar's OTLP receiver recorded it.

The sidecar keeps one row per odibi node span in ``odibi_span_ledger``
(:data:`odibi_observe.catalog.schema.span_ledger`), keyed by the span's own ids, in any database
SQLAlchemy reaches. Reading it needs no trace store, and it is already a table: the query
filters on ``started_at`` (indexed) and sorts by ``run_id`` (indexed) in byte order, so the
source hands the engine a sorted stream and nothing is spilled. Spans that are not odibi node
spans never reach the ledger (the sidecar counts them), so this source ignores none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from odibi_observe._spandecode import TEXT_FIELDS, resource_identity
from odibi_observe.catalog import schema as col
from odibi_observe.catalog.store import create_catalog_engine
from odibi_observe.config import ConfigurationError, hide_password
from odibi_observe.conventions import SPAN_LEDGER_TABLE
from odibi_observe.reconcile import model
from odibi_observe.reconcile.model import ReadLog, ReadRange, TraceRun
from odibi_observe.reconcile.sources import SourceError, TraceSource
from odibi_observe.reconcile.sqlutil import as_int, byte_order, stream, table_columns, to_ns

#: Columns the ledger must have to be read at all.
REQUIRED = (col.RUN_ID, col.TRACE_ID, col.SPAN_ID, col.STARTED_AT)


class LedgerSource(TraceSource):
    """Spans from the sidecar's span ledger table; see the module docstring."""

    scheme: ClassVar[str] = "ledger"
    sorted_by_run_id: ClassVar[bool] = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._unchecked: list[str] = []
        try:
            self.engine = create_catalog_engine(url)
        except ConfigurationError as exc:
            raise SourceError(f"{self.describe()}: {exc}") from None

    def describe(self) -> str:
        return f"{self.scheme}:{hide_password(self.url)}"

    def close(self) -> None:
        self.engine.dispose()

    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[TraceRun]:
        source = self.describe()
        try:
            columns = table_columns(self.engine, SPAN_LEDGER_TABLE)
        except SQLAlchemyError as exc:
            raise SourceError(
                f"{source}: cannot connect: {type(exc).__name__}: "
                f"{str(getattr(exc, 'orig', None) or exc).splitlines()[0]}"
            ) from None
        if columns is None:
            raise SourceError(
                f"{source}: no table {SPAN_LEDGER_TABLE} (is the sidecar's "
                "ledger in this database? run 'odibi-observe catalog upgrade')"
            )
        missing = [name for name in REQUIRED if name not in columns]
        if missing:
            raise SourceError(f"{source}: {SPAN_LEDGER_TABLE} has no column {', '.join(missing)}")
        table = col.span_ledger
        present = [c for c in table.c if c.name in columns]
        absent = sorted(c.name for c in table.c if c.name not in columns)
        if absent:
            log.add_error(
                source,
                SPAN_LEDGER_TABLE,
                f"table has no column {', '.join(absent)}; those fields are not compared",
            )
        # Facts the table cannot hold are left out of the comparison, not compared as unknown.
        self._unchecked = [
            name
            for name, names in (
                ("status", (col.STATUS,)),
                ("rows", (col.ROWS,)),
                ("duration", (col.ENDED_AT, col.DURATION_MS)),
            )
            if not any(c in columns for c in names)
        ]
        started = table.c[col.STARTED_AT]
        query = (
            sa.select(*present)
            .where(started >= read_range.start, started < read_range.end)
            .order_by(byte_order(table.c[col.RUN_ID], self.engine.dialect.name))
        )
        future = read_range.now_ns + model.FUTURE_SKEW_NS
        try:
            for _, row in log.numbered(stream(self.engine, query), "reading span ledger", 50_000):
                run = self._run(row._mapping, source, log, future)
                if run is not None:
                    yield run
        except SQLAlchemyError as exc:
            log.add_error(
                source,
                SPAN_LEDGER_TABLE,
                f"reading stopped: {type(exc).__name__}: "
                f"{str(getattr(exc, 'orig', None) or exc).splitlines()[0]}",
            )

    def _run(self, row: Any, source: str, log: ReadLog, future: int) -> TraceRun | None:
        run_id = row[col.RUN_ID]
        where = f"{SPAN_LEDGER_TABLE} run {run_id}"
        unchecked = list(self._unchecked)
        try:
            start = to_ns(row[col.STARTED_AT]) or 0
            ended = row.get(col.ENDED_AT)
            if ended is not None:
                end = to_ns(ended) or start
            else:  # the ledger may hold only the duration
                duration = as_int(row.get(col.DURATION_MS)) or 0
                end = start + duration * 1_000_000
        except (TypeError, ValueError) as exc:
            log.add_error(source, where, f"unreadable time: {exc}; span skipped")
            return None
        if start > future:
            log.add_error(
                source, where, f"span starts in the future ({model.iso_ns(start)}); skipped"
            )
            return None
        try:
            rows = as_int(row.get(col.ROWS))
        except ValueError as exc:
            log.add_error(source, where, f"{col.ROWS}: {exc}; rows not compared")
            rows = None
            unchecked.append("rows")
        host, pid, service = "", 0, ""
        if row.get(col.RESOURCE_JSON):
            try:
                resource = json.loads(row[col.RESOURCE_JSON])
                host, pid, service = resource_identity(resource)
            except (ValueError, AttributeError):
                log.add_error(source, where, f"{col.RESOURCE_JSON} is not a JSON object")
        # The text fields by the same mapping the sidecar stored them with.
        text = {name: row.get(field.column) or "" for name, field in TEXT_FIELDS}
        return TraceRun(
            run_id=str(run_id),
            trace_id=str(row[col.TRACE_ID]),
            span_id=str(row[col.SPAN_ID]),
            start_ns=start,
            end_ns=end,
            status=model.normalize_status(row.get(col.STATUS)),
            rows=rows,
            pipeline=text["pipeline"],
            node=text["node"],
            project=text["project"],
            environment=text["environment"],
            parent_span_id=row.get(col.PARENT_SPAN_ID) or None,
            pipeline_run_id=text["pipeline_run_id"] or None,
            attempt=int(row.get(col.ATTEMPT) or 1),
            error_type=row.get(col.ERROR_TYPE) or None,
            error_message=None,
            suggestions=(),
            attributes_json=None,
            host=host,
            pid=pid,
            service_name=str(row.get(col.SERVICE_NAME) or "") or service,
            unchecked=",".join(unchecked),
            origin=SPAN_LEDGER_TABLE,
        )
