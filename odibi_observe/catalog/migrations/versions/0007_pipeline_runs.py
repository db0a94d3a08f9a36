"""The plan of a pipeline run: ``meta_pipeline_runs`` and ``meta_runs.skip_reason``.

Revision ID: 0007_pipeline_runs
Revises: 0006_run_phases
Create Date: 2026-12-07 03:00:00

``meta_pipeline_runs`` holds one row per pipeline run, keyed by its id (Odibi's own pipeline
run id for an Odibi run): status, start and end, and the node counts of its plan — planned,
ran, skipped, failed — with the trace of its ``RUN {pipeline}`` span. ``meta_runs`` gains one
nullable column, ``skip_reason``: why a ``SKIPPED`` run (a planned node that never started)
did not run; NULL for every other status, for Odibi's own writer and for every row before.

Independent of the other columns of ``meta_runs``: it adds and reads nothing else. A new
table nothing else writes (``checkfirst``) and a column added only where missing, so a re-run
over a half-finished first attempt (no transactional DDL on some backends) works, as in 0002
to 0006.

Frozen snapshot: names and types are spelled out on purpose; a change is a new migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_pipeline_runs"
down_revision: str | Sequence[str] | None = "0006_run_phases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNS = "meta_runs"
SKIP_REASON = "skip_reason"


def _table(metadata: sa.MetaData) -> sa.Table:
    def tz() -> sa.DateTime:
        return sa.DateTime(timezone=True)

    runs = sa.Table(
        "meta_pipeline_runs",
        metadata,
        sa.Column("pipeline_run_id", sa.String(100), nullable=False),
        sa.Column("project", sa.String(255)),
        sa.Column("pipeline_name", sa.String(255)),
        sa.Column("environment", sa.String(255)),
        sa.Column("status", sa.String(50), nullable=False),
        sa.Column("started_at", tz(), nullable=False),
        sa.Column("finished_at", tz()),
        sa.Column("nodes_planned", sa.Integer),
        sa.Column("nodes_ran", sa.Integer),
        sa.Column("nodes_skipped", sa.Integer),
        sa.Column("nodes_failed", sa.Integer),
        sa.Column("error_type", sa.String(255)),
        sa.Column("error_message", sa.Text),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("span_id", sa.String(16)),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("updated_at", tz()),
        sa.PrimaryKeyConstraint("pipeline_run_id", name="pk_meta_pipeline_runs"),
    )
    sa.Index("ix_meta_pipeline_runs_started_at", runs.c.started_at)
    sa.Index("ix_meta_pipeline_runs_pipeline_started", runs.c.pipeline_name, runs.c.started_at)
    return runs


def upgrade() -> None:
    bind = op.get_bind()
    table = _table(sa.MetaData())
    table.create(bind, checkfirst=True)
    present = {ix["name"] for ix in sa.inspect(bind).get_indexes(table.name)}
    for index in table.indexes:
        if index.name not in present:
            index.create(bind)
    columns = {c["name"] for c in sa.inspect(bind).get_columns(RUNS)}
    if SKIP_REASON not in columns:
        op.add_column(RUNS, sa.Column(SKIP_REASON, sa.String(50)))


def downgrade() -> None:
    bind = op.get_bind()
    columns = {c["name"] for c in sa.inspect(bind).get_columns(RUNS)}
    if SKIP_REASON in columns:
        with op.batch_alter_table(RUNS) as batch:
            batch.drop_column(SKIP_REASON)
    _table(sa.MetaData()).drop(bind, checkfirst=True)
