"""The phases of a node run: what it wrote, and the checkpoint it committed.

Revision ID: 0006_run_phases
Revises: 0005_error_stack
Create Date: 2026-12-07 03:00:00

Two nullable ``TEXT`` columns on ``meta_runs``:

* ``writes_json``: the run's writes in order, a JSON list of ``{target, rows, version, at}``
  (``record_write``; the Odibi integration records each engine write);
* ``checkpoint_json``: the checkpoint the run committed, ``{key, value, previous, at}``
  (``record_checkpoint``; Odibi's ``set_hwm``).

NULL when the run recorded none: most runs, Odibi's own writer and every row written before.
A run with writes and no checkpoint that did not succeed is an ``uncommitted_write``.

Added only where missing, so a re-run over a half-finished first attempt (no transactional DDL
on some backends) works, as in 0002 to 0005. No index: they are read with the run.

Frozen snapshot: names and types are spelled out on purpose; a change is a new migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_run_phases"
down_revision: str | Sequence[str] | None = "0005_error_stack"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "meta_runs"
COLUMNS = ("writes_json", "checkpoint_json")


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}
    for column in COLUMNS:
        if column not in present:
            op.add_column(TABLE, sa.Column(column, sa.Text))


def downgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}
    dropped = [column for column in COLUMNS if column in present]
    if dropped:
        with op.batch_alter_table(TABLE) as batch:
            for column in dropped:
                batch.drop_column(column)
