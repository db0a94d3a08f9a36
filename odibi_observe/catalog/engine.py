"""Catalog engines: a catalog URL parsed (with the installed PostgreSQL driver chosen) and
turned into an engine tuned for this workload (many small upserts from several processes,
reads from dashboards).

The bottom of the catalog package: the store, the migrations, the ledger and the read-only
views all create their engines here, so this module imports none of them.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from odibi_observe.config import ConfigurationError, hide_password

#: Execution option: start this connection's SQLite transactions with ``BEGIN IMMEDIATE``,
#: taking the write lock up front so that concurrent writers queue on ``busy_timeout``
#: instead of failing when a read lock cannot be upgraded.
SQLITE_IMMEDIATE: Final = "odibi_observe_sqlite_immediate"

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
POSTGRES_CONNECT_TIMEOUT_S: Final = 5
POSTGRES_EXTRA_HINT: Final = "pip install 'odibi-observe[postgres]'"


def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


_shown = hide_password  # parses the URL, or redacts its userinfo when it does not parse


def _parse_url(url: str) -> URL:
    """Parse ``url`` and pick the PostgreSQL driver that is installed.

    ``postgres://`` (Heroku and many PaaS) and a bare ``postgresql://`` both mean "PostgreSQL,
    default driver"; SQLAlchemy's default is psycopg2, but odibi-observe's ``postgres`` extra
    installs psycopg 3, so the driver is chosen by what is importable.
    """
    try:
        parsed = make_url(url)
    except Exception:
        # The parser's own message may quote the URL; ours hides the password.
        raise ConfigurationError(
            f"catalog_url {_shown(url)!r} is not a valid database URL "
            "(expected e.g. sqlite:///catalog.db or postgresql://user:***@host/db)"
        ) from None
    if parsed.drivername in ("postgres", "postgresql"):
        if _module_available("psycopg2"):
            parsed = parsed.set(drivername="postgresql")
        elif _module_available("psycopg"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        else:
            raise ConfigurationError(
                f"catalog_url {_shown(url)!r}: no PostgreSQL driver is installed; "
                f"{POSTGRES_EXTRA_HINT}"
            )
    return parsed


def _is_memory_sqlite(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def create_catalog_engine(url: str) -> Engine:
    """An engine for the catalog at ``url``, configured for concurrent small writes.

    Does not connect. Raises :class:`ConfigurationError` (with the password hidden) for a URL
    that cannot be parsed or whose driver is not installed.

    * SQLite: WAL (readers never block the writer), ``synchronous=NORMAL`` (durable at
      checkpoints; what WAL is designed for), a busy timeout so concurrent processes wait for
      the write lock instead of failing, and real transactions (SQLAlchemy emits ``BEGIN``, so
      DDL is transactional too). ``:memory:`` uses one shared connection, or every pooled
      connection would see its own empty database.
    * PostgreSQL: ``pool_pre_ping`` (connections dropped by a restart or a proxy are replaced
      instead of failing a batch) and a 5 s connect timeout (an unreachable catalog fails
      fast; the bus retries it later).

    Bound parameters are hidden from exception messages: they are run records (error messages,
    user attributes), which should not be copied into logs with other access rules.
    """
    parsed = _parse_url(url)
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {"hide_parameters": True}
    memory = backend == "sqlite" and _is_memory_sqlite(parsed)
    if backend == "sqlite":
        options["connect_args"] = {"check_same_thread": False}
        if memory:
            options["poolclass"] = StaticPool
    elif backend == "postgresql":
        options["pool_pre_ping"] = True
        options["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    else:
        options["pool_pre_ping"] = True
    try:
        engine = sa.create_engine(parsed, **options)
    except ImportError as exc:
        hint = (
            POSTGRES_EXTRA_HINT
            if backend == "postgresql"
            else (f"install the Python driver for {parsed.drivername}")
        )
        raise ConfigurationError(
            f"catalog_url {_shown(url)!r}: database driver not installed "
            f"({type(exc).__name__}: {exc.name or exc}); {hint}"
        ) from None
    except sa.exc.ArgumentError:
        raise ConfigurationError(f"catalog_url {_shown(url)!r}: unsupported database URL") from None
    if backend == "sqlite":
        _configure_sqlite(
            engine, file_db=not memory, transactional=parsed.get_driver_name() == "pysqlite"
        )
    return engine


def _configure_sqlite(engine: Engine, *, file_db: bool, transactional: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if transactional:
            # Take BEGIN away from the driver, which skips it before DDL and SELECT; the
            # "begin" listener below emits it for every transaction instead (the recipe from
            # SQLAlchemy's SQLite documentation).
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS:d}")
            if file_db:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    if transactional:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(SQLITE_IMMEDIATE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
