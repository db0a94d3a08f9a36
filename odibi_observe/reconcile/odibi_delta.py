"""Reading (and appending to) Odibi's own ``meta_runs`` Delta table.

Odibi (3.15) keeps its system catalog as Delta tables under ``<base>/_odibi_system``; its
``meta_runs`` has eleven columns — ``run_id, project, pipeline_name, node_name, status
("SUCCESS"/"FAILURE"), rows_processed (long), duration_ms (long), metrics_json, environment,
timestamp, date`` — partitioned by ``pipeline_name`` and ``date``. This module reads it as it
is, with :mod:`deltalake` (no Spark), so an existing Odibi deployment can be audited without
changing anything, and appends rows in exactly Odibi's schema.

What Odibi's rows do not have, and what follows from it:

* no start time: ``timestamp`` is when Odibi *logged* the row — it batch-logs a pipeline's
  node runs when the pipeline ends, so it is the pipeline's end, not the node's. Filters on
  time use ``timestamp`` (and ``date``, the partition column, to prune files);
* no trace or span ids: a row is joined to its span by ``run_id`` only;
* no RUNNING rows: Odibi writes a row once the run is over.

Reading streams record batches from a :mod:`pyarrow.dataset` scan with the time filter pushed
down, so memory follows the batch size, not the table size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any, Final

from odibi_observe.catalog.schema import ENDED_AT, STARTED_AT, row_to_record
from odibi_observe.conventions import ODIBI_META_RUNS_COLUMNS
from odibi_observe.record import RunRecord

#: Odibi's column types, as Arrow type names (``CatalogManager._get_schema_meta_runs``).
ODIBI_META_RUNS_TYPES: Final = {
    "run_id": "string",
    "project": "string",
    "pipeline_name": "string",
    "node_name": "string",
    "status": "string",
    "rows_processed": "int64",
    "duration_ms": "int64",
    "metrics_json": "string",
    "environment": "string",
    "timestamp": "timestamp[us, tz=UTC]",
    "date": "date32",
}
#: Odibi's partition columns for meta_runs.
ODIBI_PARTITION_COLUMNS: Final = ("pipeline_name", "date")
#: The directory Odibi puts its system tables in, below its base path.
ODIBI_SYSTEM_DIR: Final = "_odibi_system"

TIMESTAMP: Final = "timestamp"
DATE: Final = "date"
BATCH_ROWS: Final = 65_536

if tuple(ODIBI_META_RUNS_TYPES) != ODIBI_META_RUNS_COLUMNS:  # pragma: no cover
    raise RuntimeError("odibi_delta's schema and conventions.ODIBI_META_RUNS_COLUMNS disagree")


class OdibiDeltaError(Exception):
    """The path is not a readable Delta table in Odibi's ``meta_runs`` shape."""


def resolve_meta_runs_path(path: str | os.PathLike[str]) -> str:
    """``path`` itself if it is a Delta table, else its ``meta_runs`` or
    ``_odibi_system/meta_runs`` below it (so a project's base path works too)."""
    base = os.fspath(path)
    for candidate in (
        base,
        os.path.join(base, "meta_runs"),
        os.path.join(base, ODIBI_SYSTEM_DIR, "meta_runs"),
    ):
        if os.path.isdir(os.path.join(candidate, "_delta_log")):
            return candidate
    return base  # remote URIs (abfss://, s3://) are passed through as they are


def open_meta_runs(
    path: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None
) -> Any:
    """The ``deltalake.DeltaTable`` of Odibi's meta_runs at ``path``."""
    try:
        from deltalake import DeltaTable
    except ImportError as exc:  # pragma: no cover - the odibi extra installs it
        raise OdibiDeltaError(
            "reading Odibi's Delta catalog needs deltalake (pip install 'odibi-observe[odibi]')"
        ) from exc
    location = resolve_meta_runs_path(path)
    try:
        return DeltaTable(location, storage_options=dict(storage_options or {}) or None)
    except Exception as exc:  # deltalake raises its own TableNotFoundError, OSError, ...
        raise OdibiDeltaError(
            f"{location}: not a Delta table ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def table_columns(table: Any) -> list[str]:
    """The columns the Delta table has (Odibi versions differ; e.g. ``project`` is newer)."""
    return [field.name for field in table.schema().fields]


def iter_meta_runs(
    path: str | os.PathLike[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    columns: Sequence[str] | None = None,
    storage_options: Mapping[str, str] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[dict[str, Any]]:
    """The rows of Odibi's meta_runs logged in ``[since, until)``, as dicts, streamed.

    ``columns`` limits what is read (default: every column the table has). Times come back as
    aware UTC datetimes. Row order is the table's file order, not sorted.
    """
    import pyarrow as pa
    import pyarrow.dataset as pds

    table = open_meta_runs(path, storage_options)
    available = table_columns(table)
    wanted = [c for c in (columns or available) if c in available]
    dataset = table.to_pyarrow_dataset()
    condition = None
    if TIMESTAMP in available:
        time_type = dataset.schema.field(TIMESTAMP).type
        for bound, op in ((since, "ge"), (until, "lt")):
            if bound is None:
                continue
            scalar = (
                pa.scalar(_utc(bound), type=time_type)
                if getattr(time_type, "tz", None)
                else pa.scalar(_utc(bound).replace(tzinfo=None), type=time_type)
            )
            term = pds.field(TIMESTAMP) >= scalar if op == "ge" else pds.field(TIMESTAMP) < scalar
            condition = term if condition is None else condition & term
    if DATE in available and (since is not None or until is not None):
        # The partition column: lets the scan skip whole directories of other days.
        if since is not None:
            term = pds.field(DATE) >= pa.scalar(_utc(since).date(), type=pa.date32())
            condition = term if condition is None else condition & term
        if until is not None:
            term = pds.field(DATE) <= pa.scalar(_utc(until).date(), type=pa.date32())
            condition = term if condition is None else condition & term
    for batch in dataset.to_batches(columns=wanted, filter=condition, batch_size=batch_rows):
        yield from batch.to_pylist()


def odibi_row_to_record(row: Mapping[str, Any]) -> RunRecord:
    """The :class:`RunRecord` an Odibi meta_runs row describes.

    Odibi has no start time: the run is placed to *end* at its ``timestamp`` and start
    ``duration_ms`` before — an estimate, since Odibi logs a pipeline's rows together at its
    end. Trace ids, host and pid are empty, as :func:`~odibi_observe.catalog.schema.row_to_record`
    returns them for rows Odibi wrote.
    """
    values = dict(row)
    logged = values.get(TIMESTAMP)
    if isinstance(logged, datetime):
        duration = values.get("duration_ms") or 0
        values.setdefault(ENDED_AT, logged)
        values.setdefault(STARTED_AT, logged - timedelta(milliseconds=int(duration)))
    return row_to_record(values)


def write_meta_runs(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    storage_options: Mapping[str, str] | None = None,
) -> None:
    """Append ``rows`` to Odibi's meta_runs at ``path`` in Odibi's own schema and partitioning
    (creating the table if it does not exist). Missing ``timestamp`` means now; ``date`` is
    always the timestamp's UTC date."""
    import pyarrow as pa
    from deltalake import write_deltalake

    now = datetime.now(timezone.utc)
    data: dict[str, list[Any]] = {name: [] for name in ODIBI_META_RUNS_COLUMNS}
    for row in rows:
        logged = _utc(row.get(TIMESTAMP) or now)
        for name in ODIBI_META_RUNS_COLUMNS:
            if name == TIMESTAMP:
                data[name].append(logged)
            elif name == DATE:
                data[name].append(logged.date())
            else:
                data[name].append(row.get(name))
    schema = pa.schema(
        [
            (
                name,
                pa.timestamp("us", tz="UTC")
                if name == TIMESTAMP
                else pa.date32()
                if name == DATE
                else pa.int64()
                if kind == "int64"
                else pa.string(),
            )
            for name, kind in ODIBI_META_RUNS_TYPES.items()
        ]
    )
    write_deltalake(
        os.fspath(path),
        pa.Table.from_pydict(data, schema=schema),
        mode="append",
        partition_by=list(ODIBI_PARTITION_COLUMNS),
        storage_options=dict(storage_options or {}) or None,
    )


def _utc(value: datetime | date) -> datetime:
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return (
        value.replace(tzinfo=timezone.utc)
        if value.tzinfo is None
        else value.astimezone(timezone.utc)
    )


__all__ = [
    "ODIBI_META_RUNS_TYPES",
    "ODIBI_PARTITION_COLUMNS",
    "OdibiDeltaError",
    "iter_meta_runs",
    "odibi_row_to_record",
    "open_meta_runs",
    "resolve_meta_runs_path",
    "table_columns",
    "write_meta_runs",
]
