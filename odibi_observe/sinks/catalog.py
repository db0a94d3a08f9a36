"""The catalog sink: every run event becomes an upsert of its ``meta_runs`` row.

Construction only parses the URL and builds an (unconnected) engine, so a catalog that is down
when the pipeline starts costs nothing at start-up: the first :meth:`CatalogSink.export`
connects, migrates the schema and writes, and if that fails the event bus keeps the batch and
retries it with backoff. Errors are not handled here beyond making sure their messages never
carry the catalog's password, because the bus logs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from odibi_observe._redact import REDACTED
from odibi_observe.catalog.store import CatalogStore, create_catalog_engine
from odibi_observe.record import EventKind, RunEvent
from odibi_observe.sinks.base import Sink, SinkExportError, SinkUnavailable


class CatalogSink(Sink):
    """Writes runs to the SQL catalog at ``url`` (SQLite or PostgreSQL, any SQLAlchemy URL).

    ``create=False`` skips the schema migration, for deployments where the database user may
    not run DDL and the schema is managed by ``odibi-observe`` migrations run separately.

    Raises :class:`~odibi_observe.config.ConfigurationError` for a URL that cannot be parsed or
    whose driver is missing; never connects in the constructor.
    """

    name = "catalog"
    scheme = "catalog"  # its key in odibi_observe.extensions
    coalesces_starts = True
    #: Node runs (``meta_runs``) and pipeline runs (``meta_pipeline_runs``).
    kinds = frozenset(EventKind)

    def __init__(self, url: str, *, create: bool = True) -> None:
        self._create = create
        self._secrets = _password_forms(url)
        self.store = CatalogStore(create_catalog_engine(url))

    def export(self, events: Sequence[RunEvent]) -> None:
        """Upsert ``events``; raise (password-free) to have the batch retried."""
        if not events:
            return
        try:
            if self._create:
                self.store.ensure_schema()
            self.store.upsert(events)
        except Exception as exc:
            message = str(exc)
            # The database is unreachable, locked, read-only or full: no record is at fault.
            unavailable = isinstance(exc, OperationalError) or getattr(
                exc, "connection_invalidated", False
            )
            error = SinkUnavailable if unavailable else SinkExportError
            if any(secret in message for secret in self._secrets):
                for secret in self._secrets:
                    message = message.replace(secret, REDACTED)
                # Not chained: the original would print the password with the traceback.
                raise error(f"{type(exc).__name__}: {message}") from None
            if unavailable:
                raise SinkUnavailable(f"{type(exc).__name__}: {message}") from exc
            raise

    def force_flush(self, timeout: float | None = None) -> bool:
        """Nothing is buffered here: each export commits before it returns."""
        return True

    def shutdown(self) -> None:
        self.store.dispose()

    def after_fork(self) -> None:
        self.store.after_fork()


def _password_forms(url: str) -> tuple[str, ...]:
    """The URL's password as it may appear in a message: raw and URL-encoded."""
    try:
        password = make_url(url).password
    except Exception:
        return ()
    if not password:
        return ()
    text = str(password)
    return tuple({text, quote(text, safe=""), quote_plus(text)})
