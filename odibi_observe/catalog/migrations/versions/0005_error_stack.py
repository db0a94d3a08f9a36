"""The traceback of a failed or cancelled node run.

Revision ID: 0005_error_stack
Revises: 0004_resources
Create Date: 2026-12-07 01:00:00

One nullable ``TEXT`` column on ``meta_runs``: ``error_stack``, the Python traceback of a
``FAILURE`` or ``CANCELLED`` run, redacted and bounded by the writer (``max_error_stack_length``).
Nullable because successes, crashes (no traceback is seen), Odibi's own writer and every row
written before have none.

No index: it is read by run id only. Added only where missing (``_ddl.add_columns``), as in
0004.

Frozen snapshot: names and types are spelled out on purpose; a change is a new migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from odibi_observe.catalog.migrations._ddl import add_columns, drop_columns

revision: str = "0005_error_stack"
down_revision: str | Sequence[str] | None = "0004_resources"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "meta_runs"
COLUMN = "error_stack"


def upgrade() -> None:
    add_columns(TABLE, sa.Column(COLUMN, sa.Text))


def downgrade() -> None:
    drop_columns(TABLE, COLUMN)
