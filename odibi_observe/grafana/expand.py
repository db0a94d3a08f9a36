"""Grafana's interpolation of template variables and SQL macros, for running panel queries
outside Grafana: in the tests (against a real Prometheus and PostgreSQL) and the benchmark.

It follows what Grafana does before a query reaches the data source:

* template variables — a multi-value variable becomes ``(a|b)`` (regex-escaped, the backslash
  doubled for the PromQL string) in PromQL and
  ``'a','b'`` in SQL; a single value is inserted as it is (SQL doubles its quotes);
* ``$__interval``, ``$__rate_interval``, ``$__range`` — the values given;
* the PostgreSQL macros, as ``pkg/tsdb/grafana-postgresql-datasource/macros.go`` expands them:
  ``$__timeFilter(col)`` is ``col BETWEEN '<from>' AND '<to>'`` (RFC 3339, UTC),
  ``$__timeFrom()``/``$__timeTo()`` the quoted bounds, ``$__timeGroup(col, 5m)``
  ``floor(extract(epoch from col)/300)*300`` and ``$__timeGroupAlias`` the same
  ``AS "time"``.

Only the subset the dashboards use is implemented; an unknown macro raises ``ValueError``
rather than reaching the database half-expanded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Final

#: ``${name}``, ``${name:format}`` or ``$name`` — but not a macro call ``$__name(...)``.
_VARIABLE: Final = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)\b(?!\()")
_MACRO: Final = re.compile(r"\$(__\w+)\(([^)]*)\)")
_DURATION: Final = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_REGEX_SPECIAL: Final = re.compile(r"[\\^$*+?.()|{}\[\]]")
_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}

#: A variable's value: one string, or several (a multi-value or "All" selection).
Value = str | Sequence[str]


def seconds(duration: str) -> float:
    """``"5m"`` → 300.0 (Grafana's and Prometheus' duration syntax)."""
    parts = _DURATION.findall(duration.strip().strip("'\""))
    if not parts or "".join(n + u for n, u in parts) != duration.strip().strip("'\""):
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def _substitute(text: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"no value for ${name} in {text!r}")
        return values[name]

    return _VARIABLE.sub(replace, text)


def promql(
    expr: str, variables: Mapping[str, Value], *, interval: str, rate_interval: str, range_: str
) -> str:
    """``expr`` as Grafana's Prometheus data source sends it."""
    values = {
        "__interval": interval,
        "__rate_interval": rate_interval,
        "__range": range_,
    }
    for name, value in variables.items():
        if isinstance(value, str):
            values[name] = value
        else:
            values[name] = "(" + "|".join(_regex_escape(v) for v in value) + ")"
    return _substitute(expr, values)


def _regex_escape(value: str) -> str:
    """Grafana's escape of a value in a PromQL regex: the backslash is doubled because the
    regex sits in a PromQL string literal, where ``\\.`` would be an invalid escape."""
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql(
    query: str,
    variables: Mapping[str, Value],
    *,
    time_from: datetime,
    time_to: datetime,
    interval: str,
) -> str:
    """``query`` as Grafana's PostgreSQL data source runs it."""
    values = {"__interval": interval}
    for name, value in variables.items():
        values[name] = (
            value.replace("'", "''")
            if isinstance(value, str)
            else ",".join(_quote(v) for v in value)
        )
    text = _substitute(query, values)

    def macro(match: re.Match[str]) -> str:
        name = match.group(1)
        args = [a.strip() for a in match.group(2).split(",")] if match.group(2).strip() else []
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(time_from)}' AND '{_rfc3339(time_to)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(time_from)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(time_to)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            step = seconds(args[1])
            step_text = f"{step:g}"
            group = f"floor(extract(epoch from {args[0]})/{step_text})*{step_text}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise ValueError(f"macro ${name} is not supported here")

    return _MACRO.sub(macro, text)
