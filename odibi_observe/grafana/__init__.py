"""Dashboards as code: Grafana dashboards, provisioning and alert rules from the conventions.

``odibi-observe dashboards build`` writes, under ``dashboards/``:

* five dashboards (:mod:`.dashboards`), built with grafana-foundation-sdk from the queries in
  :mod:`.queries`, which take every metric, label, table and column from
  :mod:`odibi_observe.conventions` and :mod:`odibi_observe.catalog.schema`;
* Grafana provisioning for the Prometheus, Tempo and PostgreSQL data sources and the dashboard
  provider, and the Prometheus configuration (:mod:`.provisioning`);
* Prometheus alerting rules (:mod:`.alerts`).

PostgreSQL panels use :class:`~.postgres.SqlQuery`, a dataquery for the SQL data sources that
the SDK does not ship, written against the SDK's dataquery and builder interfaces.

This package needs the ``grafana`` extra (``grafana-foundation-sdk``); importing it does not,
so the CLI stays usable without it. The names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BuiltDashboard",
    "SqlDataquery",
    "SqlQuery",
    "build_dashboards",
    "generated_files",
    "load_dashboard",
    "stale",
    "write",
]

_HOMES = {
    "BuiltDashboard": "odibi_observe.grafana.dashboards",
    "build_dashboards": "odibi_observe.grafana.dashboards",
    "SqlDataquery": "odibi_observe.grafana.postgres",
    "SqlQuery": "odibi_observe.grafana.postgres",
    "generated_files": "odibi_observe.grafana.render",
    "load_dashboard": "odibi_observe.grafana.render",
    "stale": "odibi_observe.grafana.render",
    "write": "odibi_observe.grafana.render",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
