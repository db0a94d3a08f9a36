"""The three Grafana data sources the dashboards read, and where the deployment finds them.

Dashboards refer to a data source by ``uid`` (stable across Grafana instances) and the
provisioning file creates the data sources with exactly these uids, so the two cannot drift:
both are generated from the objects below. Connection details (URLs, database, the read-only
user and its password) are *not* here: provisioning reads them from environment variables, so a
deployment never carries a default password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from grafana_foundation_sdk.models.dashboard import DataSourceRef


@dataclass(frozen=True)
class Datasource:
    """One provisioned data source: its display name, stable uid and plugin type."""

    name: str
    uid: str
    type: str

    def ref(self) -> DataSourceRef:
        """The reference panels and queries carry."""
        return DataSourceRef(type_val=self.type, uid=self.uid)


#: Metrics: the sidecar's /metrics (node, self, sidecar and reconciliation metrics).
PROMETHEUS: Final = Datasource("Prometheus", "odibi-prometheus", "prometheus")
#: Traces: every node span, looked up by the ``trace_id`` the catalog row carries.
TEMPO: Final = Datasource("Tempo", "odibi-tempo", "tempo")
#: The run catalog (``meta_runs`` and the reconciliation tables), read with a read-only role.
#: ``grafana-postgresql-datasource`` is the core plugin's id since Grafana 10.3 (``postgres``
#: before, still accepted as an alias).
CATALOG: Final = Datasource("odibi catalog", "odibi-catalog", "grafana-postgresql-datasource")

ALL: Final = (PROMETHEUS, TEMPO, CATALOG)


@dataclass(frozen=True)
class Deployment:
    """Names the generated Prometheus configuration and alert rules share with compose."""

    #: Scrape job of the sidecar's /metrics; ``up{job=...}`` is what the staleness alert reads.
    sidecar_job: str = "odibi-observe-sidecar"
    #: Where Prometheus reaches the sidecar inside the compose network.
    sidecar_target: str = "sidecar:9464"
    #: Scrape and rule evaluation interval. Grafana's ``$__rate_interval`` needs to know it
    #: (``timeInterval`` of the Prometheus data source), so both are generated from here.
    scrape_interval: str = "15s"


DEPLOYMENT: Final = Deployment()

#: Environment variables the provisioned data sources read. No defaults: Grafana substitutes
#: an empty string for an unset variable, and the PostgreSQL data source then fails to log in
#: rather than using a well-known password.
ENV_PROMETHEUS_URL: Final = "ODIBI_PROMETHEUS_URL"
ENV_TEMPO_URL: Final = "ODIBI_TEMPO_URL"
ENV_CATALOG_HOST: Final = "ODIBI_CATALOG_DB_HOST"
ENV_CATALOG_DATABASE: Final = "ODIBI_CATALOG_DB_NAME"
ENV_CATALOG_USER: Final = "ODIBI_GRAFANA_DB_USER"
ENV_CATALOG_PASSWORD: Final = "ODIBI_GRAFANA_DB_PASSWORD"  # noqa: S105 - a variable name
#: SSL mode of the catalog connection. Compose's private network uses ``disable``; a
#: deployment reaching PostgreSQL over a network it does not own sets ``verify-full``.
ENV_CATALOG_SSLMODE: Final = "ODIBI_CATALOG_DB_SSLMODE"
