"""How the migration scripts apply their DDL; never what DDL they apply.

The scripts in ``versions/`` are frozen snapshots: each spells out its own table names, column
names and types, and passes them to these helpers. What lives here is only the way a script
applies them so that running it again over a half-finished first attempt (a process killed
mid-way on a backend without transactional DDL) completes the work: create or add what is
missing, keep what is there. Every migration runs through these functions, so a change here
must leave the DDL each of them emits the same (``tests/test_catalog.py`` compares the
migrated database with :mod:`odibi_observe.catalog.schema`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def tz() -> sa.DateTime:
    """The type of every timestamp column: with a time zone."""
    return sa.DateTime(timezone=True)


def create_tables(*tables: sa.Table) -> None:
    """Create each of ``tables`` unless it exists, then whichever of its indexes is missing."""
    bind = op.get_bind()
    for table in tables:
        table.create(bind, checkfirst=True)
        present = {ix["name"] for ix in sa.inspect(bind).get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in present:
                index.create(bind)


def drop_tables(*tables: sa.Table) -> None:
    """Drop each of ``tables`` that exists, in the order given."""
    bind = op.get_bind()
    for table in tables:
        table.drop(bind, checkfirst=True)


def _column_names(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def add_columns(table: str, *columns: sa.Column[Any]) -> None:
    """Add each of ``columns`` that ``table`` does not have yet."""
    present = _column_names(table)
    for column in columns:
        if column.name not in present:
            op.add_column(table, column)


def drop_columns(table: str, *names: str) -> None:
    """Drop each of the columns ``names`` that ``table`` has (in batch mode: SQLite cannot
    drop a column in place on every version)."""
    present = _column_names(table)
    doomed = [name for name in names if name in present]
    if doomed:
        with op.batch_alter_table(table) as batch:
            for name in doomed:
                batch.drop_column(name)
