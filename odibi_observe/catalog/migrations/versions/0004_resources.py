"""Resources per node run: peak memory, CPU time and the memory limit.

Revision ID: 0004_resources
Revises: 0003_health
Create Date: 2026-12-07 00:00:00

Three nullable columns on ``meta_runs``: ``peak_rss_bytes`` (the largest resident memory the
run's process was seen at while the node ran), ``cpu_seconds`` (process CPU time over the run)
and ``memory_limit_bytes`` (cgroup ``memory.max`` the process ran under). Nullable because
Odibi's own writer and every row written before do not know them: NULL is "unknown", never 0.

Added only where missing (``_ddl.add_columns``), so a re-run over a half-finished first attempt
works. No index: the health pass reads them in the scans it already makes by ``started_at``.

Frozen snapshot: names and types are spelled out on purpose; a change is a new migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from odibi_observe.catalog.migrations._ddl import add_columns, drop_columns

revision: str = "0004_resources"
down_revision: str | Sequence[str] | None = "0003_health"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "meta_runs"


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("peak_rss_bytes", sa.BigInteger),
        sa.Column("cpu_seconds", sa.Float),
        sa.Column("memory_limit_bytes", sa.BigInteger),
    ]


def upgrade() -> None:
    add_columns(TABLE, *_columns())


def downgrade() -> None:
    drop_columns(TABLE, *(column.name for column in _columns()))
