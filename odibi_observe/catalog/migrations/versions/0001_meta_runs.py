"""meta_runs: create it, or extend the table Odibi already has.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

Odibi creates ``meta_runs`` itself, with eleven columns and sometimes without a primary key.
Replacing that table would break Odibi's readers and lose its history, so when the table exists
this migration only *adds*: the missing columns, the primary key on ``run_id`` that upserts need,
and the indexes. Existing columns keep their types. For rows already there, ``started_at`` and
``ended_at`` are derived from Odibi's ``timestamp`` (the end of the run) and ``duration_ms``.

Because it only adds what is missing, running it again over a half-finished first attempt (a
process killed mid-way on a backend without transactional DDL) completes the work.

Frozen snapshot: the names and types below are spelled out on purpose and must not follow
later changes of ``odibi_observe.catalog.schema``; a change is a new migration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "meta_runs"
PRIMARY_KEY = "pk_meta_runs"
RUN_ID_UNIQUE = "uq_meta_runs_run_id"
RUNNING = "RUNNING"

INDEXES: dict[str, tuple[str, ...]] = {
    "ix_meta_runs_started_at": ("started_at",),
    "ix_meta_runs_pipeline_node_started": ("pipeline_name", "node_name", "started_at"),
    "ix_meta_runs_status_started": ("status", "started_at"),
    "ix_meta_runs_project_pipeline_date": ("project", "pipeline_name", "date"),
    "ix_meta_runs_trace_id": ("trace_id",),
}


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("run_id", sa.String(100), nullable=False),
        sa.Column("project", sa.String(255)),
        sa.Column("pipeline_name", sa.String(255)),
        sa.Column("node_name", sa.String(255)),
        sa.Column("status", sa.String(50)),
        sa.Column("rows_processed", sa.BigInteger),
        sa.Column("duration_ms", sa.BigInteger),
        sa.Column("metrics_json", sa.Text),
        sa.Column("environment", sa.String(255)),
        sa.Column("timestamp", sa.DateTime(timezone=True)),
        sa.Column("date", sa.Date),
        sa.Column("pipeline_run_id", sa.String(100)),
        sa.Column("attempt", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("error_type", sa.String(255)),
        sa.Column("error_message", sa.Text),
        sa.Column("suggestions_json", sa.Text),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("span_id", sa.String(16)),
        sa.Column("parent_span_id", sa.String(16)),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("source", sa.String(16)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    ]


def upgrade() -> None:
    bind = op.get_bind()
    if sa.inspect(bind).has_table(TABLE):
        _extend_existing(bind)
    else:
        op.create_table(TABLE, *_columns(), sa.PrimaryKeyConstraint("run_id", name=PRIMARY_KEY))
    present = {ix["name"] for ix in sa.inspect(bind).get_indexes(TABLE)}
    for name, columns in INDEXES.items():
        if name not in present:
            op.create_index(name, TABLE, list(columns))


def downgrade() -> None:
    # Dropping the table (or our columns) would destroy run history and, for a table Odibi
    # created, Odibi's own data. A catalog is rolled back by restoring a backup, not by this.
    raise RuntimeError("the meta_runs catalog cannot be downgraded; restore a backup instead")


def _extend_existing(bind: sa.engine.Connection) -> None:
    inspector = sa.inspect(bind)
    reflected = {c["name"]: c for c in inspector.get_columns(TABLE)}
    if "run_id" not in reflected:
        raise RuntimeError(
            f"table {TABLE!r} exists but has no run_id column: it is not an Odibi or "
            "odibi-observe catalog table; rename it or point the catalog at another database"
        )
    primary_key = inspector.get_pk_constraint(TABLE).get("constrained_columns") or []
    unique_run_id = any(
        ix.get("unique") and list(ix["column_names"]) == ["run_id"]
        for ix in inspector.get_indexes(TABLE)
    )

    for column in _columns():
        if column.name in reflected:
            continue
        # started_at is NOT NULL, but existing rows get their value only from the backfill.
        nullable = True if column.name == "started_at" else column.nullable
        op.add_column(
            TABLE,
            sa.Column(
                column.name,
                column.type,
                nullable=nullable,
                server_default=column.server_default,
            ),
        )
    # started_at still nullable means the table was never (fully) migrated: derive the times
    # of the rows already there before the column becomes NOT NULL.
    started_nullable = reflected["started_at"]["nullable"] if "started_at" in reflected else True
    if started_nullable:
        _backfill_times(bind, reflected)
    add_primary_key = not primary_key
    if bind.dialect.name == "sqlite":
        # SQLite cannot change nullability or add a primary key in place; batch mode copies
        # the table into a new one with the changes (keeping its rows and other indexes).
        if started_nullable or add_primary_key:
            with op.batch_alter_table(TABLE, recreate="always") as batch:
                if started_nullable:
                    batch.alter_column(
                        "started_at",
                        existing_type=sa.DateTime(timezone=True),
                        nullable=False,
                    )
                if add_primary_key:
                    batch.alter_column(
                        "run_id",
                        existing_type=reflected["run_id"]["type"],
                        nullable=False,
                    )
                    batch.create_primary_key(PRIMARY_KEY, ["run_id"])
    else:
        if started_nullable:
            op.alter_column(
                TABLE,
                "started_at",
                existing_type=sa.DateTime(timezone=True),
                nullable=False,
            )
        if add_primary_key:
            op.alter_column(
                TABLE,
                "run_id",
                existing_type=reflected["run_id"]["type"],
                nullable=False,
            )
            op.create_primary_key(PRIMARY_KEY, TABLE, ["run_id"])
    if primary_key and primary_key != ["run_id"] and not unique_run_id:
        # Some other primary key (a surrogate id): upserts by run_id still need it unique.
        op.create_index(RUN_ID_UNIQUE, TABLE, ["run_id"], unique=True)


def _backfill_times(bind: sa.engine.Connection, reflected: dict[str, Any]) -> None:
    """Derive ``started_at``/``ended_at`` of existing rows from Odibi's columns.

    Odibi writes ``timestamp`` when a node finishes, so it is the end time; the start is that
    minus ``duration_ms``. A row without a usable ``timestamp`` gets the migration time (the
    column is NOT NULL, and "unknown" must not sort as the oldest run ever).
    """
    had_timestamp = "timestamp" in reflected
    timestamp_type = reflected["timestamp"]["type"] if had_timestamp else sa.DateTime(True)
    table = sa.table(
        TABLE,
        sa.column("timestamp", timestamp_type),
        sa.column("duration_ms", sa.BigInteger),
        sa.column("status", sa.String),
        sa.column("started_at", sa.DateTime(timezone=True)),
        sa.column("ended_at", sa.DateTime(timezone=True)),
    )
    timestamp = table.c.timestamp
    duration = table.c.duration_ms
    dialect = bind.dialect.name
    started: Any
    ended: Any
    if dialect == "sqlite":
        # Same text format SQLAlchemy writes (microseconds), so comparisons and ordering hold.
        def fmt(*args: Any) -> Any:
            return sa.func.strftime("%Y-%m-%d %H:%M:%f", *args).concat("000")

        now: Any = fmt("now")
    else:
        now = sa.func.current_timestamp()
    if not had_timestamp:
        started, ended = now, None
    elif dialect == "postgresql":
        utc: Any
        if isinstance(timestamp_type, sa.DateTime):
            # A TIMESTAMP WITHOUT TIME ZONE from Odibi holds UTC wall time.
            utc = timestamp if timestamp_type.timezone else sa.func.timezone("UTC", timestamp)
        else:
            utc = sa.cast(timestamp, sa.DateTime(timezone=True))
        started = sa.func.coalesce(
            utc - sa.func.make_interval(0, 0, 0, 0, 0, 0, duration / 1000.0),
            utc,
            now,
        )
        ended = utc
    elif dialect == "sqlite":
        modifier = sa.literal("-").concat(sa.cast(duration / 1000.0, sa.Text)).concat(" seconds")
        started = sa.func.coalesce(fmt(timestamp, modifier), fmt(timestamp), now)
        ended = fmt(timestamp)
    else:
        started = sa.func.coalesce(timestamp, now)
        ended = timestamp

    op.execute(table.update().where(table.c.started_at.is_(None)).values(started_at=started))
    if ended is not None:
        op.execute(
            table.update()
            .where(table.c.ended_at.is_(None), table.c.status != RUNNING)
            .values(ended_at=ended)
        )
