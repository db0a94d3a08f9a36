"""Grafana provisioning and the Prometheus configuration, generated beside the dashboards.

They are generated rather than written by hand because they share names with the dashboards
and rules: the data source uids panels refer to, the scrape interval ``$__rate_interval``
depends on, the sidecar's scrape job the staleness alerts select. One source, no drift.
"""

from __future__ import annotations

from typing import Final

from odibi_observe.conventions import EXEMPLAR_TRACE_ID_LABEL
from odibi_observe.grafana.dashboards import TAG
from odibi_observe.grafana.datasources import (
    CATALOG,
    DEPLOYMENT,
    ENV_CATALOG_DATABASE,
    ENV_CATALOG_HOST,
    ENV_CATALOG_PASSWORD,
    ENV_CATALOG_SSLMODE,
    ENV_CATALOG_USER,
    ENV_PROMETHEUS_URL,
    ENV_TEMPO_URL,
    PROMETHEUS,
    TEMPO,
)
from odibi_observe.grafana.yamltext import Yaml

#: Where the compose file mounts ``dashboards/`` inside the Grafana container.
GRAFANA_DASHBOARDS_PATH: Final = "/var/lib/grafana/dashboards/odibi-observe"
#: Where the reconciliation's gauges are scraped (node_exporter serving its text file).
RECONCILE_JOB: Final = "odibi-reconcile"
RECONCILE_TARGET: Final = "reconcile-metrics:9100"


def _env(name: str) -> str:
    """Grafana expands ``${NAME}`` in provisioning files from its environment."""
    return "${" + name + "}"


def datasources_document() -> dict[str, Yaml]:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": PROMETHEUS.name,
                "uid": PROMETHEUS.uid,
                "type": PROMETHEUS.type,
                "access": "proxy",
                "url": _env(ENV_PROMETHEUS_URL),
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    # Must equal the scrape interval, or $__rate_interval is computed wrongly.
                    "timeInterval": DEPLOYMENT.scrape_interval,
                    "httpMethod": "POST",
                    # A duration exemplar's trace_id label opens that run's trace in Tempo.
                    "exemplarTraceIdDestinations": [
                        {"name": EXEMPLAR_TRACE_ID_LABEL, "datasourceUid": TEMPO.uid}
                    ],
                },
            },
            {
                "name": TEMPO.name,
                "uid": TEMPO.uid,
                "type": TEMPO.type,
                "access": "proxy",
                "url": _env(ENV_TEMPO_URL),
                "editable": False,
                "jsonData": {"nodeGraph": {"enabled": True}, "search": {"hide": False}},
            },
            {
                "name": CATALOG.name,
                "uid": CATALOG.uid,
                "type": CATALOG.type,
                "access": "proxy",
                "url": _env(ENV_CATALOG_HOST),
                # A role that can only SELECT (deploy/postgres/): the dashboards never write,
                # and a panel query cannot change the catalog even if someone edits it.
                "user": _env(ENV_CATALOG_USER),
                "editable": False,
                "jsonData": {
                    "database": _env(ENV_CATALOG_DATABASE),
                    "sslmode": _env(ENV_CATALOG_SSLMODE),
                    "postgresVersion": 1500,
                    "timescaledb": False,
                    # A dashboard opens several panels at once; a small pool bounds the load
                    # it can put on the catalog the pipelines write to.
                    "maxOpenConns": 5,
                    "maxIdleConns": 2,
                    "connMaxLifetime": 14400,
                },
                # No default: an unset variable leaves the password empty and the login fails.
                "secureJsonData": {"password": _env(ENV_CATALOG_PASSWORD)},
            },
        ],
    }


def dashboard_provider_document() -> dict[str, Yaml]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": TAG,
                "orgId": 1,
                "folder": TAG,
                "folderUid": TAG,
                "type": "file",
                # The JSON in the repository is the source: edits in the UI are not saved over it.
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": GRAFANA_DASHBOARDS_PATH, "foldersFromFilesStructure": False},
            }
        ],
    }


def prometheus_document() -> dict[str, Yaml]:
    interval = DEPLOYMENT.scrape_interval
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": DEPLOYMENT.sidecar_job,
                "static_configs": [{"targets": [DEPLOYMENT.sidecar_target]}],
            },
            # The reconciliation's gauges, from node_exporter's textfile collector.
            {"job_name": RECONCILE_JOB, "static_configs": [{"targets": [RECONCILE_TARGET]}]},
            {
                "job_name": "otel-collector",
                "static_configs": [{"targets": ["otel-collector:8888"]}],
            },
            {"job_name": "tempo", "static_configs": [{"targets": ["tempo:3200"]}]},
            {"job_name": "prometheus", "static_configs": [{"targets": ["localhost:9090"]}]},
        ],
    }
