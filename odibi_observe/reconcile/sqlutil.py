"""SQL helpers shared by the database-backed sources: streaming, ordering, times, columns.

Two details decide whether a sort-merge over a database is correct and memory-bounded:

* **Order.** The engine merges streams by comparing ``run_id`` strings in Python, which is
  code-point (= UTF-8 byte) order. SQLite's default collation is byte order, but PostgreSQL
  sorts text by the database's locale (``en_US.UTF-8`` puts ``a-1`` and ``a_1`` in an order
  Python does not), so PostgreSQL queries sort ``COLLATE "C"``: :func:`byte_order`.
* **Streaming.** Rows are fetched with ``stream_results`` and ``yield_per``: a server-side
  cursor on PostgreSQL, the natural row-by-row cursor on SQLite, so neither the driver nor
  SQLAlchemy buffers the whole result.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row

#: Rows fetched per round trip.
YIELD_PER: Final = 10_000

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


#: The binary collation of the dialects whose default text order is not byte order. (SQL
#: Server's BIN2 compares UTF-16 code units: the same order for every character below
#: U+10000, which run ids are.)
_BINARY_COLLATIONS: Final = {
    "postgresql": "C",
    "mssql": "Latin1_General_BIN2",
    "mysql": "utf8mb4_bin",
    "mariadb": "utf8mb4_bin",
}


def byte_order(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """``column`` for ``ORDER BY`` in byte order on ``dialect`` (see the module docstring)."""
    collation = _BINARY_COLLATIONS.get(dialect)
    return column.collate(collation) if collation else column


def stream(engine: Engine, query: sa.Select[Any]) -> Iterator[Row[Any]]:
    """The rows of ``query``, fetched :data:`YIELD_PER` at a time."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=YIELD_PER).execute(query)
        yield from result


def table_columns(engine: Engine, table: str) -> dict[str, sa.Column[Any]] | None:
    """The columns ``table`` really has (reflected), or None if it does not exist."""
    inspector = sa.inspect(engine)
    if not inspector.has_table(table):
        return None
    reflected = sa.Table(table, sa.MetaData(), autoload_with=engine)
    return {c.name: c for c in reflected.columns}


def to_ns(value: Any) -> int | None:
    """A database time (aware, naive-UTC, a date or ISO text) → nanoseconds since the epoch."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta: timedelta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if isinstance(value, date):
        midnight = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
        return (midnight - _EPOCH).days * 86_400 * 1_000_000_000
    raise TypeError(f"not a time: {value!r}")


def as_int(value: Any) -> int | None:
    """An integer column's value; ``None`` stays ``None``. Raises ``ValueError`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{value!r} is not a whole number")


class TimeReader:
    """Database times → nanoseconds, fast for SQLite's text form.

    SQLAlchemy stores SQLite times as text (``2024-05-01 06:00:00.123456``) and parses every
    value back into a ``datetime``; converting that to nanoseconds again cost more than the rest
    of a catalog row. Read as text, the same value is its day (looked up in a small cache) plus
    hours, minutes, seconds and microseconds read off fixed positions. Anything else — a
    ``datetime`` from PostgreSQL, text in another format — goes through :func:`to_ns`.
    """

    __slots__ = ("_days",)

    def __init__(self) -> None:
        self._days: dict[str, int] = {}

    def ns(self, value: Any) -> int | None:
        if value.__class__ is str and len(value) == 26 and value[19] == "." and value[10] == " ":
            day = value[:10]
            base = self._days.get(day)
            if base is None:
                parsed = to_ns(day)
                assert parsed is not None
                base = self._days[day] = parsed
            try:
                seconds = int(value[11:13]) * 3600 + int(value[14:16]) * 60 + int(value[17:19])
                return base + seconds * 1_000_000_000 + int(value[20:]) * 1000
            except ValueError:
                pass
        return to_ns(value)
