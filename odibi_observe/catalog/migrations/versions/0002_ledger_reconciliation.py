"""The span ledger and the reconciliation tables.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00

``odibi_span_ledger`` holds the odibi node spans the sidecar's OTLP receiver was sent (the trace
side reconciliation reads); ``meta_reconciliation`` and ``meta_reconciliation_items`` hold one
row per reconciliation report and one per discrepancy, for dashboards and alerts.

These are new tables that nothing else writes, so unlike 0001 there is no existing table to
adapt; ``checkfirst`` keeps a re-run over a half-finished first attempt (no transactional DDL)
working.

Frozen snapshot: names and types are spelled out on purpose; a change is a new migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from odibi_observe.catalog.migrations._ddl import create_tables, drop_tables, tz

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tables(metadata: sa.MetaData) -> list[sa.Table]:
    ledger = sa.Table(
        "odibi_span_ledger",
        metadata,
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("parent_span_id", sa.String(16)),
        sa.Column("run_id", sa.String(100), nullable=False),
        sa.Column("project", sa.String(255)),
        sa.Column("pipeline_name", sa.String(255)),
        sa.Column("pipeline_run_id", sa.String(100)),
        sa.Column("node_name", sa.String(255)),
        sa.Column("attempt", sa.Integer),
        sa.Column("environment", sa.String(255)),
        sa.Column("status", sa.String(50)),
        sa.Column("rows_processed", sa.BigInteger),
        sa.Column("duration_ms", sa.BigInteger),
        sa.Column("started_at", tz(), nullable=False),
        sa.Column("ended_at", tz()),
        sa.Column("error_type", sa.String(255)),
        sa.Column("service_name", sa.String(255)),
        sa.Column("resource_json", sa.Text),
        sa.Column("received_at", tz(), nullable=False),
        sa.PrimaryKeyConstraint("trace_id", "span_id", name="pk_odibi_span_ledger"),
    )
    sa.Index("ix_odibi_span_ledger_run_id", ledger.c.run_id)
    sa.Index("ix_odibi_span_ledger_started_at", ledger.c.started_at)

    report = sa.Table(
        "meta_reconciliation",
        metadata,
        sa.Column("report_id", sa.String(100), nullable=False),
        sa.Column("created_at", tz(), nullable=False),
        sa.Column("window_start", tz(), nullable=False),
        sa.Column("window_end", tz(), nullable=False),
        sa.Column("grace_seconds", sa.Float, nullable=False),
        sa.Column("catalog_source", sa.Text),
        sa.Column("trace_sources", sa.Text),
        sa.Column("catalog_runs", sa.BigInteger, nullable=False),
        sa.Column("trace_runs", sa.BigInteger, nullable=False),
        sa.Column("matched", sa.BigInteger, nullable=False),
        sa.Column("discrepancies", sa.BigInteger, nullable=False),
        sa.Column("discrepancies_json", sa.Text, nullable=False),
        sa.Column("completeness_ratio", sa.Float),
        sa.Column("repaired", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("errors", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("report_id", name="pk_meta_reconciliation"),
    )
    sa.Index("ix_meta_reconciliation_created_at", report.c.created_at)

    items = sa.Table(
        "meta_reconciliation_items",
        metadata,
        sa.Column("report_id", sa.String(100), nullable=False),
        sa.Column("item", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("run_id", sa.String(100)),
        sa.Column("pipeline_name", sa.String(255)),
        sa.Column("node_name", sa.String(255)),
        sa.Column("started_at", tz()),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("detail", sa.Text),
        sa.Column("repaired", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("report_id", "item", name="pk_meta_reconciliation_items"),
    )
    sa.Index("ix_meta_reconciliation_items_run_id", items.c.run_id)
    return [ledger, report, items]


def upgrade() -> None:
    create_tables(*_tables(sa.MetaData()))


def downgrade() -> None:
    drop_tables(*reversed(_tables(sa.MetaData())))
