"""The SQL run catalog: the ``meta_runs`` table, its migrations and its store.

``meta_runs`` is a strict superset of Odibi's own table (Odibi's readers keep working) with one
row per node run, upserted by ``run_id``.
"""

from odibi_observe.catalog.migrate import current_revision, upgrade
from odibi_observe.catalog.schema import meta_runs, metadata
from odibi_observe.catalog.store import CatalogStore, create_catalog_engine

__all__ = [
    "CatalogStore",
    "create_catalog_engine",
    "current_revision",
    "meta_runs",
    "metadata",
    "upgrade",
]
