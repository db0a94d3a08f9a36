"""A PostgreSQL query for grafana-foundation-sdk, which ships no model for the SQL data sources.

Grafana's SQL data sources (PostgreSQL, MySQL, MSSQL) share one query model, ``SQLQuery``:
``rawSql`` with Grafana's macros (``$__timeFilter(col)``, ``$__timeGroupAlias(col, $__interval)``),
a result ``format`` (``table`` or ``time_series``), and the editor state (``editorMode: code``
with ``rawQuery: true`` makes Grafana open the query as text rather than in its builder, which
could not represent these queries).

:class:`SqlDataquery` implements the SDK's dataquery interface (a ``cogvariants.Dataquery``
with ``to_json``/``from_json``) and :class:`SqlQuery` its builder protocol
(``cogbuilder.Builder``), so panels take it with ``.with_target(...)`` like a Prometheus query.
:func:`register_variant` makes the SDK's from-JSON decoding return a :class:`SqlDataquery`
for targets of this data source instead of an opaque ``UnknownDataquery``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, replace
from enum import Enum
from typing import Final

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from odibi_observe.grafana.datasources import CATALOG


class SqlFormat(str, Enum):
    """How Grafana turns the result into data frames."""

    #: Rows as they are.
    TABLE = "table"
    #: A ``time`` column, one numeric column per series (or a ``metric`` column naming it).
    TIME_SERIES = "time_series"


@dataclass
class SqlDataquery(cogvariants.Dataquery):
    """The target of a panel reading the catalog: Grafana's ``SQLQuery`` in code mode."""

    #: The query, with Grafana macros and template variables still in it.
    raw_sql: str = ""
    _: KW_ONLY
    format_val: SqlFormat | None = None
    #: ``code`` (raw SQL) or ``builder``.
    editor_mode: str | None = None
    #: ``True`` for a raw SQL query (what ``code`` mode writes).
    raw_query: bool | None = None
    ref_id: str = ""
    hide: bool | None = None
    datasource: DataSourceRef | None = None

    def to_json(self) -> dict[str, object]:
        """The fields under Grafana's keys, in :data:`_JSON_FIELDS` order; unset ones left out."""
        payload: dict[str, object] = {}
        for spec in _JSON_FIELDS:
            value = getattr(self, spec.attr)
            if value is not None:
                payload[spec.key] = spec.encode(value)
        return payload

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> typing.Self:
        return cls(**{s.attr: s.decode(data[s.key]) for s in _JSON_FIELDS if s.key in data})


def _as_is(value: typing.Any) -> typing.Any:
    return value


@dataclass(frozen=True)
class _JsonField:
    """One field of :class:`SqlDataquery`: its key in Grafana's JSON and its conversions."""

    attr: str
    key: str
    encode: Callable[[typing.Any], typing.Any] = _as_is
    decode: Callable[[typing.Any], typing.Any] = _as_is


#: ``rawSql`` and ``refId`` first, as Grafana writes a target; the rest only when set.
_JSON_FIELDS: Final = (
    _JsonField("raw_sql", "rawSql"),
    _JsonField("ref_id", "refId"),
    _JsonField("format_val", "format", lambda fmt: fmt.value, SqlFormat),
    _JsonField("editor_mode", "editorMode"),
    _JsonField("raw_query", "rawQuery"),
    _JsonField("hide", "hide"),
    _JsonField("datasource", "datasource", DataSourceRef.to_json, DataSourceRef.from_json),
)


class SqlQuery(cogbuilder.Builder[SqlDataquery]):
    """Builder of a :class:`SqlDataquery`; defaults to the catalog data source in code mode."""

    _internal: SqlDataquery

    def __init__(self) -> None:
        self._internal = SqlDataquery(
            editor_mode="code",
            raw_query=True,
            format_val=SqlFormat.TABLE,
            datasource=CATALOG.ref(),
        )

    def build(self) -> SqlDataquery:
        return self._internal

    def raw_sql(self, raw_sql: str) -> typing.Self:
        return self._set(raw_sql=raw_sql)

    def format(self, format_val: SqlFormat) -> typing.Self:
        return self._set(format_val=format_val)

    def ref_id(self, ref_id: str) -> typing.Self:
        return self._set(ref_id=ref_id)

    def _set(self, **change: typing.Any) -> typing.Self:
        """``dataclasses.replace`` refuses a field the dataquery does not have."""
        self._internal = replace(self._internal, **change)
        return self


def variant_config() -> cogruntime.DataqueryConfig:
    """The SDK's registration record of this dataquery, keyed by the data source type."""
    return cogruntime.DataqueryConfig(
        identifier=CATALOG.type, from_json_hook=SqlDataquery.from_json
    )


def register_variant() -> None:
    """Register the SDK's own dataquery and panel variants, and this one.

    The SDK's decoding picks a target's class from the panel's (or the target's) data source
    type; registered here, a catalog target decodes to :class:`SqlDataquery`.
    """
    from grafana_foundation_sdk.cog.plugins import register_default_plugins

    register_default_plugins()
    cogruntime.register_dataquery_variant(variant_config())
