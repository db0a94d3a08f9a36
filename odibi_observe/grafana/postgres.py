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
from enum import Enum

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


class SqlDataquery(cogvariants.Dataquery):
    """The target of a panel reading the catalog: Grafana's ``SQLQuery`` in code mode."""

    #: The query, with Grafana macros and template variables still in it.
    raw_sql: str
    format_val: SqlFormat | None
    #: ``code`` (raw SQL) or ``builder``.
    editor_mode: str | None
    #: ``True`` for a raw SQL query (what ``code`` mode writes).
    raw_query: bool | None
    ref_id: str
    hide: bool | None
    datasource: DataSourceRef | None

    def __init__(
        self,
        raw_sql: str = "",
        *,
        format_val: SqlFormat | None = None,
        editor_mode: str | None = None,
        raw_query: bool | None = None,
        ref_id: str = "",
        hide: bool | None = None,
        datasource: DataSourceRef | None = None,
    ) -> None:
        self.raw_sql = raw_sql
        self.format_val = format_val
        self.editor_mode = editor_mode
        self.raw_query = raw_query
        self.ref_id = ref_id
        self.hide = hide
        self.datasource = datasource

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {"rawSql": self.raw_sql, "refId": self.ref_id}
        if self.format_val is not None:
            payload["format"] = self.format_val.value
        if self.editor_mode is not None:
            payload["editorMode"] = self.editor_mode
        if self.raw_query is not None:
            payload["rawQuery"] = self.raw_query
        if self.hide is not None:
            payload["hide"] = self.hide
        if self.datasource is not None:
            payload["datasource"] = self.datasource.to_json()
        return payload

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> typing.Self:
        args: dict[str, typing.Any] = {}
        if "rawSql" in data:
            args["raw_sql"] = data["rawSql"]
        if "format" in data:
            args["format_val"] = SqlFormat(data["format"])
        if "editorMode" in data:
            args["editor_mode"] = data["editorMode"]
        if "rawQuery" in data:
            args["raw_query"] = data["rawQuery"]
        if "refId" in data:
            args["ref_id"] = data["refId"]
        if "hide" in data:
            args["hide"] = data["hide"]
        if "datasource" in data:
            args["datasource"] = DataSourceRef.from_json(data["datasource"])
        return cls(**args)


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
        self._internal.raw_sql = raw_sql
        return self

    def format(self, format_val: SqlFormat) -> typing.Self:
        self._internal.format_val = format_val
        return self

    def ref_id(self, ref_id: str) -> typing.Self:
        self._internal.ref_id = ref_id
        return self

    def hide(self, hide: bool) -> typing.Self:
        self._internal.hide = hide
        return self

    def datasource(self, datasource: DataSourceRef) -> typing.Self:
        self._internal.datasource = datasource
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
