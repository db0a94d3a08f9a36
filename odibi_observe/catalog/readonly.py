"""Opening a catalog for commands that only read it, without creating anything.

SQLite creates a database file on first connect, so a mistyped ``--catalog`` path given to a
read-only command (``odibi-observe runs``, ``odibi-observe reconcile``) used to leave an empty
file behind and fail with a raw ``OperationalError``. Here:

* a bare filesystem path is accepted and means ``sqlite:///PATH``;
* a SQLite file that does not exist is refused with "the file does not exist" before any
  connection is made, and :func:`open_readonly_engine` opens an existing one with
  ``mode=ro``, so nothing is ever written;
* any other URL is connected to once; a failure is one line, password hidden, and the caller
  exits 2.

Both commands go through :func:`readable_catalog_url` so they say the same thing.
"""

from __future__ import annotations

import os
import re
import sqlite3
from typing import Final
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from odibi_observe.catalog.engine import create_catalog_engine
from odibi_observe.config import ConfigurationError, hide_password

#: ``scheme:`` at the start of a spec (two letters at least, so ``C:\\x`` stays a path).
_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")


class CatalogUnreadable(Exception):
    """The catalog cannot be read. ``str()`` is the whole line to print (password hidden)."""


def catalog_url(spec: str) -> str:
    """``spec`` as a URL: a bare filesystem path becomes ``sqlite:///PATH``.

    Anything with a scheme (``postgresql://…``, ``sqlite:///…``, ``odibi-delta:/…``) is
    returned unchanged.
    """
    if "://" in spec or _SCHEME.match(spec):
        return spec
    return "sqlite:///" + spec


def sqlite_path(url: URL) -> str | None:
    """The file a SQLite URL names, or None (not SQLite, or an in-memory database)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):  # a URI filename (?uri=true): its path part
        database = database[len("file:") :].split("?", 1)[0]
    return database


def readable_catalog_url(spec: str) -> str:
    """The catalog URL for ``spec``, once it is known to be readable; else
    :class:`CatalogUnreadable`. Creates nothing.

    Specs of another registered catalog source (``odibi-delta:PATH``, a third party's) are
    returned unchanged for the caller to open; ``sql:URL`` is checked as ``URL``.
    """
    from odibi_observe import extensions

    scheme, location = extensions.split_spec(spec)
    if scheme == "sql":
        return readable_catalog_url(location)
    if scheme in extensions.schemes(extensions.CATALOG_SOURCES):
        return spec
    url = catalog_url(spec)
    if "://" not in url:
        return url
    open_readonly_engine(url).dispose()
    return url


def open_readonly_engine(spec: str) -> Engine:
    """An engine that reads the catalog ``spec`` names; :class:`CatalogUnreadable` if it
    cannot. A SQLite catalog is opened read-only (``mode=ro``); another database is connected
    to once, here, so an unreachable one fails now with one line.
    """
    url = catalog_url(spec)
    shown = hide_password(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise CatalogUnreadable(
            f"cannot read catalog {shown}: not a database URL or an "
            "existing file (e.g. sqlite:///catalog.db, catalog.db or "
            "postgresql://user@host/db)"
        ) from None
    path = sqlite_path(parsed)
    if path is not None:
        return _sqlite_readonly(path, shown)
    try:
        engine = create_catalog_engine(url)
    except ConfigurationError as exc:
        raise CatalogUnreadable(f"cannot read catalog {shown}: {exc}") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        engine.dispose()
        raise CatalogUnreadable(f"cannot read catalog {shown}: {_reason(exc)}") from None
    return engine


def _sqlite_readonly(path: str, shown: str) -> Engine:
    if not os.path.exists(path):
        raise CatalogUnreadable(
            f"cannot read catalog {shown}: the file {path} does not exist (nothing was created)"
        )
    if not os.path.isfile(path):
        raise CatalogUnreadable(f"cannot read catalog {shown}: {path} is not a file")
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    engine = sa.create_engine(
        "sqlite://", creator=connect, poolclass=NullPool, hide_parameters=True
    )
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1 FROM sqlite_master LIMIT 1")
    except SQLAlchemyError as exc:
        engine.dispose()
        raise CatalogUnreadable(f"cannot read catalog {shown}: {_reason(exc)}") from None
    return engine


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's own first line (without SQLAlchemy's wrapping and background link)."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    line = text.splitlines()[0] if text else type(original).__name__
    from odibi_observe._redact import redact

    return redact(line)
