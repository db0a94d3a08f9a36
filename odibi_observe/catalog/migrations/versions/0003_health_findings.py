"""The data-health findings table.

Revision ID: 0003_health
Revises: 0002
Create Date: 2026-12-06 00:00:00

``meta_health_findings`` holds one row per finding of ``odibi-observe health`` (a volume,
duration, freshness, failure-streak or flakiness problem of one node), open while passes keep
seeing it and resolved at the first pass that does not.

A new table nothing else writes; ``checkfirst`` keeps a re-run over a half-finished first
attempt (no transactional DDL) working, as in 0002.

Frozen snapshot: names and types are spelled out on purpose; a change is a new migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from odibi_observe.catalog.migrations._ddl import create_tables, drop_tables, tz

revision: str = "0003_health"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _table(metadata: sa.MetaData) -> sa.Table:
    findings = sa.Table(
        "meta_health_findings",
        metadata,
        sa.Column("finding_id", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("pipeline_name", sa.String(255), nullable=False),
        sa.Column("node_name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("opened_at", tz(), nullable=False),
        sa.Column("last_seen_at", tz(), nullable=False),
        sa.Column("resolved_at", tz()),
        sa.Column("passes", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("score", sa.Float),
        sa.Column("baseline", sa.Float),
        sa.Column("value", sa.Float),
        sa.Column("detail", sa.Text),
        sa.Column("evidence_json", sa.Text),
        sa.PrimaryKeyConstraint("finding_id", name="pk_meta_health_findings"),
    )
    sa.Index(
        "ix_meta_health_findings_node",
        findings.c.kind,
        findings.c.pipeline_name,
        findings.c.node_name,
        findings.c.state,
    )
    sa.Index("ix_meta_health_findings_state_seen", findings.c.state, findings.c.last_seen_at)
    return findings


def upgrade() -> None:
    create_tables(_table(sa.MetaData()))


def downgrade() -> None:
    drop_tables(_table(sa.MetaData()))
