"""The traceback of a failed or cancelled node run.

Revision ID: 0005_error_stack
Revises: 0004_resources
Create Date: 2026-12-07 01:00:00

One nullable ``TEXT`` column on ``meta_runs``: ``error_stack``, the Python traceback of a
``FAILURE`` or ``CANCELLED`` run, redacted and bounded by the writer (``max_error_stack_length``).
Nullable because successes, crashes (no traceback is seen), Odibi's own writer and every row
written before have none.

Added only where missing, so a re-run over a half-finished first attempt (no transactional DDL
on some backends) works, as in 0002 to 0004. No index: it is read by run id only.

Frozen snapshot: names and types are spelled out on purpose; a change is a new migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_error_stack"
down_revision: str | Sequence[str] | None = "0004_resources"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "meta_runs"
COLUMN = "error_stack"


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}
    if COLUMN not in present:
        op.add_column(TABLE, sa.Column(COLUMN, sa.Text))


def downgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}
    if COLUMN in present:
        with op.batch_alter_table(TABLE) as batch:
            batch.drop_column(COLUMN)
