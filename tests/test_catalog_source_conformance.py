"""Every built-in catalog source through the shipped suite
(:class:`~odibi_observe.testing.contracts.CatalogSourceContract`): the SQL catalog on SQLite and
PostgreSQL, as odibi-observe writes it (exact rows, writable), and Odibi's own Delta
``meta_runs`` as Odibi's ``write_meta_runs`` layout holds it (logged times, read-only).

The catalogs are opened from their specs, through the extension registry, as ``--catalog``
opens them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from odibi_observe.reconcile.sources import CatalogSource, open_catalog_source
from odibi_observe.record import RunRecord, ns_to_datetime
from odibi_observe.testing.contracts import CatalogSourceContract
from tests.test_reconcile_support import write_catalog


class _SqlContract(CatalogSourceContract):
    url: str

    def make_source(self, tmp_path: Path, records: list[RunRecord]) -> CatalogSource:
        write_catalog(self.url, records).dispose()
        return open_catalog_source(self.url)


class TestSqliteCatalogSource(_SqlContract):
    @pytest.fixture(autouse=True)
    def _url(self, sqlite_url: str) -> None:
        self.url = sqlite_url

    def make_unreadable(self, tmp_path: Path) -> CatalogSource:
        """A database without ``meta_runs``."""
        return open_catalog_source(f"sqlite:///{tmp_path}/empty.db")


@pytest.mark.postgres
class TestPostgresCatalogSource(_SqlContract):
    @pytest.fixture(autouse=True)
    def _url(self, pg_url: str) -> None:
        self.url = pg_url

    def make_unreadable(self, tmp_path: Path) -> CatalogSource:
        """A server that refuses the connection (nothing listens on port 9)."""
        return open_catalog_source("postgresql+psycopg://nobody@127.0.0.1:9/none")


class TestOdibiDeltaCatalogSource(CatalogSourceContract):
    exact = False  # Odibi logs rows without trace ids, placed by ``timestamp``
    writable = False  # odibi-observe never writes Odibi's table

    @pytest.fixture(autouse=True)
    def _deltalake(self) -> None:
        pytest.importorskip("deltalake")

    def make_source(self, tmp_path: Path, records: list[RunRecord]) -> CatalogSource:
        from odibi_observe.reconcile.odibi_delta import write_meta_runs

        path = tmp_path / "meta_runs"
        write_meta_runs(
            path,
            [
                {
                    "run_id": r.run_id,
                    "pipeline_name": r.pipeline,
                    "node_name": r.node,
                    "status": r.status.value,
                    "rows_processed": r.rows_processed,
                    "duration_ms": r.duration_ms,
                    "metrics_json": "{}",
                    "timestamp": ns_to_datetime(r.started_ns),
                }
                for r in records
            ],
        )
        return open_catalog_source(f"odibi-delta:{path}", spill_dir=str(tmp_path))

    def make_unreadable(self, tmp_path: Path) -> CatalogSource:
        (tmp_path / "not-a-table").mkdir()
        return open_catalog_source(f"odibi-delta:{tmp_path / 'not-a-table'}")
