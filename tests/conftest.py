"""Shared fixtures: the real PostgreSQL server, fresh databases, fresh observers.

``fresh_observer`` is how a test configures odibi-observe: it starts from no observer and the
observer (with its heartbeat thread) is shut down after the test, whatever the test did. An
autouse guard also shuts down an observer a test left behind (one configured from the
environment on a first ``node_run``, say), so no test inherits another's.

PostgreSQL is the Debian server started by ``scripts/test.sh`` (which exports
``ODIBI_OBSERVE_TEST_PG_URL``). Outside CI a missing server skips the PostgreSQL tests with the
reason; with ``CI=true`` it is an error, so CI can never go green without them.
"""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import odibi_observe as oo
from odibi_observe import _runtime as runtime

PG_URL_ENV = "ODIBI_OBSERVE_TEST_PG_URL"


@pytest.fixture
def fresh_observer() -> Iterator[Callable[..., oo.Observer]]:
    """``odibi_observe.configure`` for one test, from a clean start, shut down afterwards.

    Call it as ``configure`` (same keywords); calling it again replaces the observer, as
    ``configure()`` does. Before the test any current observer is shut down; after it, the
    last one is, so its threads, servers and files do not reach the next test.
    """
    oo.shutdown()

    def configure(**settings: Any) -> oo.Observer:
        return oo.configure(**settings)

    yield configure
    oo.shutdown()


@pytest.fixture(autouse=True)
def _no_observer_left_behind() -> Iterator[None]:
    """Shut down an observer (and its heartbeat thread) a test left current."""
    yield
    if runtime.current_observer() is not None:
        oo.shutdown(timeout=10.0)


def _pg_admin_url() -> str | None:
    return os.environ.get(PG_URL_ENV)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of the test PostgreSQL server (a database the test role owns)."""
    url = _pg_admin_url()
    problem = None
    if not url:
        problem = f"{PG_URL_ENV} is not set (run the suite with scripts/test.sh)"
    else:
        try:
            engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            engine.dispose()
        except Exception as exc:
            problem = f"PostgreSQL at {PG_URL_ENV} is unreachable: {type(exc).__name__}"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem}; PostgreSQL tests must run in CI", pytrace=False)
        pytest.skip(problem)
    assert url is not None
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # left behind by an interrupted earlier run
        names = (
            conn.execute(
                sa.text(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'oo\\_test\\_%' "
                    "AND pg_get_userbyid(datdba) = current_user"
                )
            )
            .scalars()
            .all()
        )
    for name in names:
        if _session_gone(name):
            _drop_database(admin, name)
    admin.dispose()
    return url


def _session_gone(name: str) -> bool:
    """Whether the test session that created database ``name`` has ended.

    Names carry the creating pytest process's pid (``oo_test_<pid>_<hex>``), so a session only
    removes the leftovers of sessions that are over, never a database another session running
    at the same time is using. Names without a pid (older runs) are leftovers.
    """
    parts = name.split("_")
    if len(parts) < 4 or not parts[2].isdigit():
        return True
    pid = int(parts[2])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"oo_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(pg_server_url).set(database=name)
    yield url.render_as_string(hide_password=False)
    _drop_database(admin, name)
    admin.dispose()


def _drop_database(admin: sa.Engine, name: str) -> None:
    """Drop a test database, waiting out a server process still attached to it.

    ``WITH (FORCE)`` ends our own leftover connections, but not an autovacuum worker (it is not
    the test role's to end), so the drop is retried briefly. A database that still cannot be
    dropped is left with a warning rather than failing the test that used it; the next session
    removes it (see ``pg_server_url``).
    """
    for attempt in range(20):
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except sa.exc.DBAPIError:
            time.sleep(0.05 * (attempt + 1))
    warnings.warn(f"test database {name} could not be dropped", stacklevel=2)


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """A fresh SQLite catalog file for one test."""
    return f"sqlite:///{os.fspath(tmp_path)}/catalog.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest) -> str:
    """Both catalog backends, for tests that must hold on each."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))
