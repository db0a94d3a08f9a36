"""Alembic environment of the odibi-observe catalog.

:func:`odibi_observe.catalog.migrate.upgrade` runs this with an open connection in
``config.attributes["connection"]`` (already inside a transaction it commits). Run from the
``alembic`` command line instead, it builds its own engine from ``sqlalchemy.url``.

The version table is odibi-observe's own (``conventions.MIGRATIONS_VERSION_TABLE``), so a user
database that is also managed by the user's own Alembic project never sees its
``alembic_version`` touched.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from odibi_observe.catalog.migrate import take_migration_lock
from odibi_observe.catalog.schema import metadata
from odibi_observe.conventions import MIGRATIONS_VERSION_TABLE


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=MIGRATIONS_VERSION_TABLE,
        compare_type=True,
    )
    with context.begin_transaction():
        # Inside the transaction and before Alembic reads the version table, so that of two
        # processes starting at once the second sees the first one's result.
        take_migration_lock(connection)
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url (or pass a connection) to migrate the catalog")
    from odibi_observe.catalog.engine import create_catalog_engine

    engine = create_catalog_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    # Migration 0001 inspects the live database (it extends an existing Odibi table), which
    # cannot be expressed as a static SQL script.
    raise RuntimeError("the odibi-observe catalog migrations cannot run in offline (--sql) mode")
run_migrations_online()
