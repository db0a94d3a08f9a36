"""Bring a catalog database to the current schema with Alembic.

Every process that writes the catalog calls :func:`upgrade` once at start-up, so the schema
follows the installed version of odibi-observe without a separate deployment step. That means
many processes may call it at the same moment against the same database:

* on PostgreSQL the migration runs in one transaction that first takes a transaction-scoped
  advisory lock (``pg_advisory_xact_lock``); the others wait, then find the work done;
* on SQLite an engine from :func:`~odibi_observe.catalog.engine.create_catalog_engine` starts
  the migration with ``BEGIN IMMEDIATE``, which serialises writers the same way; with any other
  engine a concurrent creator can still win a race (``table already exists``), so a failed
  attempt re-reads the version and, if it is not at head yet, tries again.

Within one process, upgrades are serialised by a lock: Alembic keeps the running migration in
module-level proxies (``alembic.context``, ``alembic.op``), so two threads migrating at once
would run each other's operations on each other's connections.

Alembic is configured in code (no ``alembic.ini``): the script location is this package's
``migrations`` directory and the version table is ``conventions.MIGRATIONS_VERSION_TABLE``.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from odibi_observe.catalog.engine import SQLITE_IMMEDIATE, create_catalog_engine
from odibi_observe.conventions import MIGRATIONS_VERSION_TABLE

MIGRATIONS_DIR: Final = Path(__file__).resolve().with_name("migrations")

#: Key of the PostgreSQL advisory lock held while migrating: a stable 64-bit number derived from
#: the version table's name, so that it cannot collide with a lock an unrelated tool takes.
MIGRATION_LOCK_ID: Final = int.from_bytes(
    hashlib.sha256(MIGRATIONS_VERSION_TABLE.encode()).digest()[:8], "big", signed=True
)

_SQLITE_ATTEMPTS: Final = 5

_process_lock = threading.Lock()


def _renew_process_lock() -> None:
    # A thread of the parent may have held the lock at fork time; the child has no such thread.
    global _process_lock
    _process_lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_process_lock)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic :class:`Config` for the catalog migrations, optionally bound to ``connection``."""
    config = Config()
    # ConfigParser interpolation: a literal % in the install path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration shipped with this version of odibi-observe."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return str(head)


def current_revision(engine: Engine | Connection) -> str | None:
    """The migration the database is at, or None if odibi-observe never migrated it."""
    if isinstance(engine, Connection):
        return _revision(engine)
    with engine.connect() as conn:
        return _revision(conn)


def _revision(conn: Connection) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table": MIGRATIONS_VERSION_TABLE})
    revision = context.get_current_revision()
    return None if revision is None else str(revision)


def take_migration_lock(connection: Connection) -> None:
    """Serialise concurrent migrations of one database (PostgreSQL; a no-op elsewhere).

    Must run inside the migration's transaction: the lock is released when it ends.
    """
    if connection.dialect.name == "postgresql":
        # Bounded wait, for the advisory lock and for table locks held by long queries: failing
        # (the caller retries later) beats queueing every query of the table behind our ALTER.
        connection.execute(sa.text("SET LOCAL lock_timeout = '60s'"))
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_ID)))


def upgrade(engine_or_url: Engine | str) -> str:
    """Migrate the catalog at ``engine_or_url`` to the newest schema; return its revision.

    A database already at head is left untouched (one read of the version table), so calling
    this at every start-up is cheap. Given a URL, the engine is created and disposed of here.
    """
    if isinstance(engine_or_url, str):
        engine = create_catalog_engine(engine_or_url)
        try:
            return _upgrade(engine)
        finally:
            engine.dispose()
    return _upgrade(engine_or_url)


def _upgrade(engine: Engine) -> str:
    head = head_revision()
    attempts = _SQLITE_ATTEMPTS if engine.dialect.name == "sqlite" else 1
    for attempt in range(1, attempts + 1):
        try:
            if current_revision(engine) == head:
                return head
            with _process_lock:
                return _upgrade_once(engine)
        except sa.exc.DBAPIError:
            # SQLite without BEGIN IMMEDIATE: another process created the table, an index or
            # the version row between our check and our DDL. Look again; the migration only
            # adds what is missing, so a second pass completes whatever the first one began.
            if attempt == attempts:
                raise
            time.sleep(random.uniform(0.05, 0.2) * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _upgrade_once(engine: Engine) -> str:
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.execution_options(**{SQLITE_IMMEDIATE: True})
        with conn.begin():
            command.upgrade(alembic_config(conn), "head")
            revision = _revision(conn)
    if revision is None:  # pragma: no cover - Alembic stamps the version in the transaction
        raise RuntimeError("catalog migration finished without recording its revision")
    return revision
