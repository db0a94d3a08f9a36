"""The SQL run catalog: schema, migrations, upserts and the catalog sink, on SQLite and PostgreSQL.

One conformance class, :class:`CatalogContract`, states what every catalog backend must do;
``TestSQLiteCatalog`` and ``TestPostgresCatalog`` run it against a fresh real database each.
Upsert behaviour is checked through every write path: the ``ON CONFLICT`` upsert run as SQL
text on the driver (the default on sqlite3 and psycopg), the same upsert through SQLAlchemy's
statement execution (other drivers), and the portable update-then-insert path.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql

from odibi_observe.catalog import (
    CatalogStore,
    create_catalog_engine,
    current_revision,
    meta_runs,
    metadata,
    upgrade,
)
from odibi_observe.catalog import engine as catalog_engine
from odibi_observe.catalog import fastpath as catalog_fastpath
from odibi_observe.catalog import schema as catalog_schema
from odibi_observe.catalog import store as catalog_store
from odibi_observe.catalog.migrate import head_revision
from odibi_observe.catalog.schema import COLUMNS, INDEXES, record_to_row, row_to_record
from odibi_observe.config import ConfigurationError
from odibi_observe.conventions import (
    CATALOG_TABLE,
    ERROR_STACK_FIELD,
    FIELDS,
    MIGRATIONS_VERSION_TABLE,
    ODIBI_META_RUNS_COLUMNS,
    PHASE_FIELDS,
    RESOURCE_FIELDS,
    SKIP_REASON_FIELD,
    RunStatus,
    Source,
)
from odibi_observe.record import EventKind, RunEvent, RunRecord, ns_to_datetime
from odibi_observe.sinks.base import SinkExportError
from odibi_observe.sinks.catalog import CatalogSink

SECRET = "s3cretpw"

#: Run by each of several interpreters started at once: wait for a common instant, migrate.
UPGRADE_IN_PROCESS = """
import sys, time
import sqlalchemy as sa
from odibi_observe.catalog import upgrade
url, start_at, own_engine = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "True"
target = url if own_engine else sa.create_engine(url)
time.sleep(max(0.0, start_at - time.time()))
print(upgrade(target))
"""
EVIL = "'; DROP TABLE meta_runs; --"

# --- helpers ----------------------------------------------------------------------------------


def make_record(**changes: Any) -> RunRecord:
    """A RUNNING record with fresh ids, as the decorator would build it."""
    record = RunRecord(
        run_id=str(uuid.uuid4()),
        project="proj",
        pipeline="daily_sales",
        node="load_orders",
        environment="test",
        status=RunStatus.RUNNING,
        started_ns=time.time_ns(),
        trace_id=secrets.token_hex(16),
        span_id=secrets.token_hex(8),
        host="worker-1",
        pid=os.getpid(),
    )
    return replace(record, **changes)


def finish(record: RunRecord, status: RunStatus = RunStatus.SUCCESS, **changes: Any) -> RunRecord:
    values: dict[str, Any] = {
        "status": status,
        "ended_ns": record.started_ns + 1_234_567_890,
        "rows_processed": 42,
    }
    values.update(changes)
    return record.finished(**values)


def started(record: RunRecord) -> RunEvent:
    return RunEvent(EventKind.STARTED, record)


def heartbeat(record: RunRecord, at_ns: int) -> RunEvent:
    return RunEvent(EventKind.HEARTBEAT, replace(record, heartbeat_ns=at_ns))


def finished(record: RunRecord) -> RunEvent:
    return RunEvent(EventKind.FINISHED, record)


def _us(ns: int) -> int:
    return ns // 1000 * 1000


def stored(record: RunRecord) -> RunRecord:
    """The record as the catalog gives it back: times at microsecond precision."""
    return replace(
        record,
        started_ns=_us(record.started_ns),
        ended_ns=None if record.ended_ns is None else _us(record.ended_ns),
        heartbeat_ns=None if record.heartbeat_ns is None else _us(record.heartbeat_ns),
    )


def raw_row(store: CatalogStore, run_id: str) -> dict[str, Any]:
    with store.engine.connect() as conn:
        row = (
            conn.execute(sa.select(meta_runs).where(meta_runs.c[FIELDS.run_id.column] == run_id))
            .mappings()
            .one()
        )
    return dict(row)


def varied_events() -> list[RunEvent]:
    """One batch touching every kind of value a row holds, including ones that need repair."""
    hostile = make_record(
        project='O\'Reilly "quoted" ; --',
        pipeline="数据 🚀\nline2",
        node=EVIL,
        environment="%s %(x)s ? :name $1",
        pipeline_run_id=str(uuid.uuid4()),
        attributes={
            "k'ey": 'v"al',
            "tags": ("a", "b"),
            "sizes": (1, 2),
            "nan": float("nan"),
            "ratio": 0.25,
            "dry_run": False,
            "emoji": "🚀",
        },
    )
    repaired = make_record(
        node="n" * 1000,
        project="nul\x00byte",
        environment="lone \ud800 surrogate",
        pipeline_run_id="p" * 300,
        attributes={"lone": "\udc00"},
    )
    whole_second = make_record(started_ns=1_700_000_000_000_000_000)
    return [
        started(make_record()),
        finished(
            finish(
                hostile,
                RunStatus.FAILURE,
                error_type="E" * 300,
                error_message=f"{EVIL}\x00\n",
                suggestions=("Check the credentials", "数据 \ud800"),
            )
        ),
        finished(finish(repaired)),
        heartbeat(make_record(), time.time_ns()),
        RunEvent(EventKind.HEARTBEAT, make_record()),  # no heartbeat time: stamped with "now"
        finished(finish(whole_second, ended_ns=whole_second.started_ns + 86_400 * 10**9)),
        finished(
            finish(
                make_record(
                    parent_span_id=secrets.token_hex(8),
                    attempt=3,
                    source=Source.SIDECAR,
                    heartbeat_ns=time.time_ns(),
                ),
                RunStatus.CRASHED,
                rows_processed=None,
                error_message="process died",
            )
        ),
        started(make_record(started_ns=1_700_000_000_000_000_001)),  # sub-microsecond
    ]


def _values(rows: list[Any]) -> list[tuple[Any, ...]]:
    """Rows (tuples, dicts or records) as tuples of values, for type-exact comparison."""
    return [
        tuple(row.values())
        if isinstance(row, dict)
        else tuple(row.to_dict().values())
        if isinstance(row, RunRecord)
        else tuple(row)
        for row in rows
    ]


def schema_diff(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": MIGRATIONS_VERSION_TABLE, "compare_type": True}
        )
        return list(compare_metadata(context, metadata))


def describe_table(engine: sa.Engine) -> str:
    """Columns, indexes and primary key of ``meta_runs`` as the database reports them."""
    inspector = sa.inspect(engine)
    return repr(
        (
            inspector.get_columns(CATALOG_TABLE),
            inspector.get_indexes(CATALOG_TABLE),
            inspector.get_pk_constraint(CATALOG_TABLE),
        )
    )


def run_concurrently(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released at the same moment; re-raise failures."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def odibi_table(timezone_aware: bool) -> sa.Table:
    """``meta_runs`` as Odibi creates it: its eleven columns and no primary key."""
    return sa.Table(
        CATALOG_TABLE,
        sa.MetaData(),
        sa.Column("run_id", sa.String(100)),
        sa.Column("project", sa.String(255)),
        sa.Column("pipeline_name", sa.String(255)),
        sa.Column("node_name", sa.String(255)),
        sa.Column("status", sa.String(50)),
        sa.Column("rows_processed", sa.BigInteger),
        sa.Column("duration_ms", sa.BigInteger),
        sa.Column("metrics_json", sa.Text),
        sa.Column("environment", sa.String(255)),
        sa.Column("timestamp", sa.DateTime(timezone=timezone_aware)),
        sa.Column("date", sa.Date),
    )


# --- the conformance suite --------------------------------------------------------------------


class CatalogContract:
    """What every catalog backend must do. Subclasses provide ``url`` and ``unreachable_url``."""

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def unreachable_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture(params=["driver", "statement", "portable"])
    def store(self, url: str, request: pytest.FixtureRequest) -> Iterator[CatalogStore]:
        store = CatalogStore(
            url, portable=request.param == "portable", driver_sql=request.param == "driver"
        )
        store.ensure_schema()
        yield store
        store.dispose()

    # -- upserts ---------------------------------------------------------------------------

    def test_running_row_then_terminal_upsert_is_one_row(self, store: CatalogStore) -> None:
        run = make_record()
        store.upsert([started(run)])
        assert store.count() == 1
        assert store.get(run.run_id) == stored(run)

        done = finish(run)
        store.upsert([finished(done)])
        assert store.count() == 1
        assert store.get(run.run_id) == stored(done)

    def test_replaying_the_same_events_changes_nothing(self, store: CatalogStore) -> None:
        run = make_record(attributes={"region": "eu"})
        events = [started(run), finished(finish(run))]
        store.upsert(events)
        first = raw_row(store, run.run_id)
        store.upsert(events)
        for event in events:
            store.upsert([event])
        again = raw_row(store, run.run_id)
        assert store.count() == 1
        updated_at = FIELDS.provenance.columns[1]
        assert {k: v for k, v in again.items() if k != updated_at} == {
            k: v for k, v in first.items() if k != updated_at
        }

    def test_running_replayed_after_terminal_does_not_undo_it(self, store: CatalogStore) -> None:
        run = make_record()
        done = finish(run, RunStatus.FAILURE, error_type="ValueError", error_message="bad")
        store.upsert([started(run)])
        store.upsert([finished(done)])
        store.upsert([started(run)])
        store.upsert([heartbeat(run, run.started_ns + 5_000_000_000)])
        assert store.get(run.run_id) == stored(done)

        other = make_record()
        store.upsert([finished(finish(other)), started(other)])  # out of order in one batch
        got = store.get(other.run_id)
        assert got is not None
        assert got.status is RunStatus.SUCCESS

    def test_a_later_terminal_status_replaces_an_earlier_one(self, store: CatalogStore) -> None:
        run = make_record()
        store.upsert([finished(finish(run, RunStatus.CRASHED))])
        store.upsert([finished(finish(run, RunStatus.FAILURE))])
        got = store.get(run.run_id)
        assert got is not None
        assert got.status is RunStatus.FAILURE

    def test_one_batch_holding_a_whole_run_writes_its_end(self, store: CatalogStore) -> None:
        run = make_record()
        done = finish(run)
        store.upsert([started(run), heartbeat(run, run.started_ns + 1), finished(done)])
        assert store.get(run.run_id) == stored(done)

    def test_batch_of_1000_runs_lands(self, store: CatalogStore) -> None:
        runs = [make_record(node=f"node_{i % 37}") for i in range(1000)]
        store.upsert([started(r) for r in runs])
        assert store.count() == 1000
        store.upsert([finished(finish(r)) for r in runs])
        assert store.count() == 1000
        assert len(store.recent_runs(status=RunStatus.SUCCESS, limit=5000)) == 1000
        assert store.recent_runs(status=RunStatus.RUNNING) == []

    def test_heartbeat_only_moves_heartbeat_of_running_rows(self, store: CatalogStore) -> None:
        run = make_record()
        store.upsert([started(run)])
        beat_ns = run.started_ns + 10_000_000_000
        # A heartbeat carries a whole snapshot, but only its time may change the row.
        noisy = replace(run, rows_processed=7, attributes={"changed": True})
        store.upsert([heartbeat(noisy, beat_ns)])
        assert store.get(run.run_id) == stored(replace(run, heartbeat_ns=beat_ns))

        store.upsert([heartbeat(run, beat_ns - 5_000_000_000)])  # older, replayed late
        got = store.get(run.run_id)
        assert got is not None
        assert got.heartbeat_ns == _us(beat_ns)

        done = finish(run)  # its snapshot has no heartbeat: the recorded one stays
        store.upsert([finished(done)])
        store.upsert([heartbeat(run, beat_ns + 10_000_000_000)])
        assert store.get(run.run_id) == stored(replace(done, heartbeat_ns=beat_ns))

    def test_heartbeat_of_an_unknown_run_inserts_it_running(self, store: CatalogStore) -> None:
        run = make_record()
        beat_ns = run.started_ns + 3_000_000_000
        store.upsert([heartbeat(run, beat_ns)])
        assert store.get(run.run_id) == stored(replace(run, heartbeat_ns=beat_ns))

    def test_hostile_names_are_stored_verbatim(self, store: CatalogStore) -> None:
        run = make_record(
            project='O\'Reilly "quoted" `back` ; --',
            pipeline="line1\nline2\r\n\ttabbed \\ backslash",
            node=EVIL,
            environment="%s %(x)s ? :name $1",
            pipeline_run_id="Robert'); DROP TABLE meta_runs;--",
            attributes={"k'ey": 'v"al\nue', EVIL: EVIL, "emoji": "数据 🚀"},
            suggestions=(EVIL, "multi\nline 'advice'"),
        )
        done = finish(run, RunStatus.FAILURE, error_type="Err'or", error_message=f"{EVIL}\n\x07")
        store.upsert([started(run)])
        store.upsert([finished(done)])
        assert store.get(run.run_id) == stored(done)
        assert [r.run_id for r in store.recent_runs(node=EVIL, pipeline=run.pipeline)] == [
            run.run_id
        ]
        assert sa.inspect(store.engine).has_table(CATALOG_TABLE)
        assert store.count() == 1

    def test_values_a_backend_would_refuse_are_repaired_not_fatal(
        self, store: CatalogStore
    ) -> None:
        run = make_record(
            node="n" * 1000,
            project="nul\x00byte",
            environment="lone \ud800 surrogate",
        )
        done = finish(run, RunStatus.FAILURE, error_type="E" * 300, error_message="a\x00b")
        store.upsert([started(run), finished(done)])
        got = store.get(run.run_id)
        assert got is not None
        assert len(got.node) == 255
        assert got.node.startswith("nnnn")
        assert got.project == "nul\ufffdbyte"
        assert "\ud800" not in got.environment
        assert got.error_type is not None
        assert len(got.error_type) == 255
        assert got.error_message == "a\ufffdb"

    def test_suggestions_and_attributes_round_trip_as_json(self, store: CatalogStore) -> None:
        attributes = {
            "region": "eu-west",
            "retries": 3,
            "ratio": 0.25,
            "dry_run": False,
            "tags": ("a", "b"),
            "sizes": (1, 2, 3),
            "nan": float("nan"),
        }
        run = make_record(attributes=attributes)
        done = finish(
            run,
            RunStatus.FAILURE,
            suggestions=("Check the credentials", "Retry later"),
        )
        store.upsert([finished(done)])
        row = raw_row(store, run.run_id)
        assert json.loads(row[FIELDS.attributes.column]) == {
            "region": "eu-west",
            "retries": 3,
            "ratio": 0.25,
            "dry_run": False,
            "tags": ["a", "b"],
            "sizes": [1, 2, 3],
            "nan": "nan",
        }
        assert json.loads(row[FIELDS.suggestions.column]) == [
            "Check the credentials",
            "Retry later",
        ]
        got = store.get(run.run_id)
        assert got is not None
        assert got.suggestions == done.suggestions
        assert got.attributes == {**attributes, "nan": "nan"}

    def test_record_round_trips_through_the_database(self, store: CatalogStore) -> None:
        run = make_record(
            parent_span_id=secrets.token_hex(8),
            pipeline_run_id=str(uuid.uuid4()),
            attempt=3,
            source=Source.SIDECAR,
            heartbeat_ns=time.time_ns(),
            attributes={"k": "v"},
        )
        done = finish(
            run,
            RunStatus.CRASHED,
            error_type="SIGKILL",
            error_message="process died",
            suggestions=("raise the memory limit",),
            rows_processed=None,
        )
        store.upsert([finished(done)])
        assert store.get(done.run_id) == stored(done)
        assert store.get("no-such-run") is None

    def test_odibi_columns_hold_odibi_meanings(self, store: CatalogStore) -> None:
        run = make_record(started_ns=1_700_000_000_123_456_789)
        store.upsert([started(run)])
        row = raw_row(store, run.run_id)
        timestamp, date = catalog_schema.TIMESTAMP, catalog_schema.DATE
        started_at = FIELDS.duration.columns[1]
        assert catalog_schema.utc(row[timestamp]) == catalog_schema.utc(row[started_at])
        assert row[date] == ns_to_datetime(run.started_ns).date()
        assert row[FIELDS.duration.column] is None

        # ends after midnight UTC: the date is the end's; the duration is rounded half-up
        done = finish(run, ended_ns=run.started_ns + 6_500_000_500_000)
        store.upsert([finished(done)])
        row = raw_row(store, run.run_id)
        assert catalog_schema.utc(row[timestamp]) == done.ended_at
        assert row[date] == ns_to_datetime(done.ended_ns or 0).date()
        assert row[date] != ns_to_datetime(run.started_ns).date()
        assert row[FIELDS.duration.column] == done.duration_ms == 6_500_001
        assert row[FIELDS.status.column] == RunStatus.SUCCESS.value

    def test_upserts_run_as_driver_sql_on_sqlite3_and_psycopg(self, url: str) -> None:
        store = CatalogStore(url)
        assert store._driver is not None  # the drivers of both test backends
        store.dispose()

    def test_driver_upsert_stores_exactly_what_sqlalchemy_stores(
        self, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Same bytes in the database (read raw, with SQLite's storage classes), same values
        read back by SQLAlchemy and by ``row_to_record``, whichever way the upsert runs."""
        events = varied_events()
        order = meta_runs.c[FIELDS.run_id.column]

        def write_and_read(driver_sql: bool) -> tuple[Any, ...]:
            store = CatalogStore(url, driver_sql=driver_sql)
            store.ensure_schema()
            assert (store._driver is not None) is driver_sql
            with store.engine.begin() as conn:
                conn.execute(meta_runs.delete())
            store.upsert(events)
            store.upsert([started(ev.record) for ev in events])  # conflicts: the update path
            with store.engine.connect() as conn:
                raw = conn.exec_driver_sql(
                    f"SELECT * FROM {CATALOG_TABLE} ORDER BY {order.name}"
                ).all()
                typed = conn.execute(sa.select(meta_runs).order_by(order)).mappings().all()
                storage: Sequence[Any] = []
                if conn.dialect.name == "sqlite":
                    storage = conn.execute(
                        sa.select(*(sa.func.typeof(c) for c in meta_runs.c)).order_by(order)
                    ).all()
            store.dispose()
            return (
                [tuple(r) for r in raw],
                [dict(r) for r in typed],
                storage,
                [row_to_record(r) for r in typed],
            )

        frozen_now = time.time_ns()  # updated_at, and the stamp of a heartbeat without a time
        monkeypatch.setattr(catalog_store, "time", SimpleNamespace(time_ns=lambda: frozen_now))
        through_driver = write_and_read(driver_sql=True)
        through_sqlalchemy = write_and_read(driver_sql=False)
        assert len(through_driver[0]) == len(events)
        for driver_part, sqlalchemy_part in zip(through_driver, through_sqlalchemy, strict=True):
            assert [[(type(v), v) for v in row] for row in _values(driver_part)] == [
                [(type(v), v) for v in row] for row in _values(sqlalchemy_part)
            ]

    def test_recent_runs_filters_and_orders_newest_first(self, store: CatalogStore) -> None:
        base = time.time_ns()
        runs = [
            make_record(started_ns=base + i * 1_000_000_000, node="a" if i % 2 else "b")
            for i in range(6)
        ]
        store.upsert([started(r) for r in runs])
        store.upsert([finished(finish(runs[5], RunStatus.FAILURE))])
        assert [r.run_id for r in store.recent_runs(limit=3)] == [
            runs[5].run_id,
            runs[4].run_id,
            runs[3].run_id,
        ]
        assert [r.run_id for r in store.recent_runs(node="a")] == [
            runs[5].run_id,
            runs[3].run_id,
            runs[1].run_id,
        ]
        assert [r.run_id for r in store.recent_runs(status="FAILURE")] == [runs[5].run_id]
        assert [
            r.run_id
            for r in store.recent_runs(
                statuses=[RunStatus.FAILURE, RunStatus.CRASHED],
                node="a",
            )
        ] == [runs[5].run_id]
        assert store.recent_runs(statuses=[]) == []
        since = ns_to_datetime(runs[4].started_ns).astimezone(timezone(timedelta(hours=-7)))
        assert [r.run_id for r in store.recent_runs(since=since)] == [
            runs[5].run_id,
            runs[4].run_id,
        ]
        assert store.recent_runs(pipeline="other") == []

    def test_concurrent_writers_all_land(self, url: str) -> None:
        upgrade(url)
        stores = [CatalogStore(url) for _ in range(4)]

        def write(i: int) -> None:
            for _ in range(25):
                batch = [make_record(node=f"w{i}") for _ in range(8)]
                stores[i].upsert([started(r) for r in batch])
                stores[i].upsert([finished(finish(r)) for r in batch])

        run_concurrently(4, write)
        assert stores[0].count() == 4 * 25 * 8
        for s in stores:
            s.dispose()

    # -- schema and migrations -------------------------------------------------------------

    def test_migration_creates_the_named_indexes(self, url: str) -> None:
        assert upgrade(url) == head_revision()
        engine = create_catalog_engine(url)
        indexes = {
            ix["name"]: tuple(ix["column_names"])
            for ix in sa.inspect(engine).get_indexes(CATALOG_TABLE)
        }
        assert indexes == INDEXES
        assert set(INDEXES) == {
            "ix_meta_runs_started_at",
            "ix_meta_runs_pipeline_node_started",
            "ix_meta_runs_status_started",
            "ix_meta_runs_project_pipeline_date",
            "ix_meta_runs_trace_id",
        }
        primary_key = sa.inspect(engine).get_pk_constraint(CATALOG_TABLE)
        assert primary_key["constrained_columns"] == [FIELDS.run_id.column]
        engine.dispose()

    def test_database_matches_schema_metadata_after_upgrade(self, url: str) -> None:
        upgrade(url)
        engine = create_catalog_engine(url)
        assert schema_diff(engine) == []
        engine.dispose()

    def test_upgrade_twice_is_a_no_op(self, url: str) -> None:
        engine = create_catalog_engine(url)
        assert current_revision(engine) is None
        assert upgrade(engine) == head_revision()
        store = CatalogStore(engine)
        run = make_record()
        store.upsert([started(run)])
        before = describe_table(engine)
        assert upgrade(engine) == head_revision()
        assert upgrade(url) == head_revision()
        assert describe_table(engine) == before
        assert store.get(run.run_id) == stored(run)
        with engine.connect() as conn:
            versions = (
                conn.execute(sa.text(f"SELECT version_num FROM {MIGRATIONS_VERSION_TABLE}"))
                .scalars()
                .all()
            )
        assert versions == [head_revision()]
        engine.dispose()

    def assert_migrated_once(self, url: str) -> None:
        engine = create_catalog_engine(url)
        assert schema_diff(engine) == []
        with engine.connect() as conn:
            count = conn.execute(
                sa.text(f"SELECT count(*) FROM {MIGRATIONS_VERSION_TABLE}")
            ).scalar_one()
        assert count == 1
        engine.dispose()

    @pytest.mark.parametrize("own_engines", [True, False], ids=["catalog-engine", "plain-engine"])
    def test_concurrent_first_upgrades_in_threads(self, url: str, own_engines: bool) -> None:
        def migrate(_: int) -> str:
            if own_engines:
                return upgrade(url)
            engine = sa.create_engine(url)
            try:
                return upgrade(engine)
            finally:
                engine.dispose()

        assert run_concurrently(6, migrate) == [head_revision()] * 6
        self.assert_migrated_once(url)

    @pytest.mark.slow
    @pytest.mark.parametrize("own_engines", [True, False], ids=["catalog-engine", "plain-engine"])
    def test_concurrent_first_upgrades_in_processes(self, url: str, own_engines: bool) -> None:
        start_at = time.time() + 3.0  # after every interpreter has imported SQLAlchemy
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", UPGRADE_IN_PROCESS, url, str(start_at), str(own_engines)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        outputs = [p.communicate(timeout=120) for p in processes]
        for process, (out, err) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, err
            assert out.strip() == head_revision()
        self.assert_migrated_once(url)

    def test_ensure_schema_migrates_once_across_threads(
        self, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls: list[int] = []
        real_upgrade = upgrade

        def counting(engine: sa.Engine) -> str:
            calls.append(1)
            time.sleep(0.05)
            return real_upgrade(engine)

        monkeypatch.setattr(catalog_store, "upgrade", counting)
        store = CatalogStore(url)
        assert run_concurrently(8, lambda _: store.ensure_schema()) == [head_revision()] * 8
        assert store.ensure_schema() == head_revision()
        assert len(calls) == 1
        store.dispose()

    @pytest.mark.parametrize("timezone_aware", [True, False], ids=["timestamptz", "timestamp"])
    def test_upgrade_extends_an_existing_odibi_table(self, url: str, timezone_aware: bool) -> None:
        plain = sa.create_engine(url)
        if plain.dialect.name == "postgresql":
            # Sessions away from UTC: Odibi's naive timestamps must still be taken as UTC.
            with plain.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql(
                    f"ALTER DATABASE \"{plain.url.database}\" SET timezone TO 'Asia/Kolkata'"
                )
            plain.dispose()
        legacy = odibi_table(timezone_aware)
        legacy.create(plain)
        ended = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=timezone.utc)
        odibi_row = {
            "run_id": "odibi-run-1",
            "project": "legacy",
            "pipeline_name": "nightly",
            "node_name": "extract",
            "status": "SUCCESS",
            "rows_processed": 10,
            "duration_ms": 1500,
            "metrics_json": '{"rows_read": 12}',
            "environment": "prod",
            "timestamp": ended if timezone_aware else ended.replace(tzinfo=None),
            "date": ended.date(),
        }
        failed_row = {**odibi_row, "run_id": "odibi-run-2", "status": "FAILED"}
        with plain.begin() as conn:
            conn.execute(legacy.insert(), [odibi_row, failed_row])

        assert upgrade(url) == head_revision()

        def odibi_reader(run_id: str) -> dict[str, Any]:
            with plain.connect() as conn:
                row = dict(
                    conn.execute(sa.select(legacy).where(legacy.c.run_id == run_id))
                    .mappings()
                    .one()
                )
            if timezone_aware:  # SQLite hands back naive UTC even for a timezone-aware type
                row["timestamp"] = catalog_schema.utc(row["timestamp"])
            return row

        assert odibi_reader("odibi-run-1") == odibi_row  # Odibi still reads its row unchanged
        columns = {c["name"] for c in sa.inspect(plain).get_columns(CATALOG_TABLE)}
        assert columns == set(meta_runs.c.keys())

        store = CatalogStore(url)
        old = store.get("odibi-run-1")
        assert old is not None
        assert old.status is RunStatus.SUCCESS
        assert old.ended_at == ended
        assert old.started_at == ended - timedelta(milliseconds=1500)
        assert old.attributes == {"rows_read": 12}
        assert old.rows_processed == 10
        legacy_failure = store.get("odibi-run-2")
        assert legacy_failure is not None
        assert legacy_failure.status is RunStatus.FAILURE

        run = make_record(project="legacy", pipeline="nightly")
        done = finish(run)
        store.upsert([started(run)])
        store.upsert([finished(done)])
        assert store.get(run.run_id) == stored(done)
        new_row = odibi_reader(run.run_id)  # and reads ours with its own columns
        assert new_row["status"] == "SUCCESS"
        assert new_row["duration_ms"] == done.duration_ms
        assert new_row["rows_processed"] == 42
        assert store.count() == 3
        if timezone_aware:
            assert schema_diff(store.engine) == []
        store.dispose()
        plain.dispose()

    def test_upgrade_refuses_a_foreign_meta_runs_table(self, url: str) -> None:
        plain = sa.create_engine(url)
        sa.Table(CATALOG_TABLE, sa.MetaData(), sa.Column("id", sa.Integer)).create(plain)
        with pytest.raises(RuntimeError, match="no run_id column"):
            upgrade(url)
        plain.dispose()

    # -- the sink --------------------------------------------------------------------------

    def test_sink_creates_the_schema_and_upserts(self, url: str) -> None:
        sink = CatalogSink(url)
        assert sink.name == "catalog"
        run = make_record()
        sink.export([started(run)])
        sink.export([finished(finish(run))])
        assert sink.force_flush() is True
        sink.export([finished(finish(run))])
        assert sink.store.count() == 1
        assert sink.store.get(run.run_id) == stored(finish(run))
        sink.shutdown()

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_sink_works_on_both_sides_of_a_fork(self, url: str) -> None:
        sink = CatalogSink(url)
        parent_run, child_run = make_record(), make_record()
        sink.export([started(parent_run)])

        def pooled_connection() -> int:
            with sink.store.engine.connect() as conn:
                return id(conn.connection.dbapi_connection)

        before = pooled_connection()
        pid = os.fork()
        if pid == 0:  # the child: new connections, the parent's left alone
            code = 1
            try:
                sink.after_fork()
                sink.export([started(child_run)])
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert pooled_connection() == before  # not closed or broken by the child
        sink.export([finished(finish(parent_run))])
        assert sink.store.get(child_run.run_id) == stored(child_run)
        assert sink.store.get(parent_run.run_id) == stored(finish(parent_run))
        sink.shutdown()

    def test_sink_without_create_leaves_ddl_to_the_operator(self, url: str) -> None:
        sink = CatalogSink(url, create=False)
        with pytest.raises(Exception) as caught:
            sink.export([started(make_record())])
        # SQLite says "no such table" as an OperationalError: the sink reports the catalog as
        # unavailable (no record is at fault), with the database's error as the cause.
        error = caught.value
        assert isinstance(error, sa.exc.DBAPIError) or isinstance(
            error.__cause__, sa.exc.DBAPIError
        ), repr(error)
        upgrade(url)
        sink.export([started(make_record())])
        assert sink.store.count() == 1
        sink.shutdown()

    def test_unreachable_catalog_fails_in_export_without_the_password(
        self, unreachable_url: str
    ) -> None:
        sink = CatalogSink(unreachable_url)  # no connection attempt yet
        with pytest.raises(Exception) as caught:
            sink.export([started(make_record())])
        rendered = "".join(traceback.format_exception(caught.value))
        assert SECRET not in str(caught.value)
        assert SECRET not in rendered
        sink.shutdown()

    def test_password_in_an_error_message_is_hidden(
        self, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sink = CatalogSink(url)
        leaky = f"postgresql://u:{SECRET}@db/x"

        def fail(events: Any) -> None:
            raise RuntimeError(f"could not reach {leaky}")

        sink._secrets = (SECRET,)
        monkeypatch.setattr(sink.store, "upsert", fail)
        with pytest.raises(SinkExportError) as caught:
            sink.export([started(make_record())])
        assert SECRET not in "".join(traceback.format_exception(caught.value))
        sink.shutdown()


class TestSQLiteCatalog(CatalogContract):
    @pytest.fixture
    def url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture
    def unreachable_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/no/such/dir/catalog.db"

    def test_file_catalog_uses_wal(self, url: str) -> None:
        engine = create_catalog_engine(url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
        engine.dispose()

    def test_in_memory_catalog_is_shared_across_threads(self) -> None:
        store = CatalogStore("sqlite://")
        store.ensure_schema()
        runs = [make_record() for _ in range(4)]
        run_concurrently(4, lambda i: store.upsert([started(runs[i])]))
        assert store.count() == 4
        store.dispose()


@pytest.mark.postgres
class TestPostgresCatalog(CatalogContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/x"

    def test_times_are_instants_whatever_the_session_time_zone(self, url: str) -> None:
        upgrade(url)
        run = make_record()
        done = finish(run)
        for zone in ("America/New_York", "Asia/Kolkata"):
            engine = sa.create_engine(url, connect_args={"options": f"-c timezone={zone}"})
            store = CatalogStore(engine)
            store.upsert([finished(done)])
            assert store.get(run.run_id) == stored(done)
            store.dispose()

    def test_large_batches_through_copy_store_exactly_what_row_statements_store(
        self, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Batches from ``_COPY_MIN_ROWS`` rows go through COPY into a staging table and one
        ``INSERT … SELECT … ON CONFLICT``; the rows, the conflict rules (a replayed start never
        undoes an end, heartbeats only move a running row forward) must be the same."""
        events = varied_events()
        running = make_record()
        later_beat = heartbeat(running, running.started_ns + 7_000_000_000)
        copies: list[int] = []
        real_copy = catalog_fastpath._copy_upsert

        def counting_copy(conn: Any, statement: Any, rows: list[Any]) -> None:
            copies.append(len(rows))
            real_copy(conn, statement, rows)

        monkeypatch.setattr(catalog_fastpath, "_copy_upsert", counting_copy)
        frozen_now = time.time_ns()
        monkeypatch.setattr(catalog_store, "time", SimpleNamespace(time_ns=lambda: frozen_now))

        def write_and_read(copy_from: int) -> list[tuple[Any, ...]]:
            monkeypatch.setattr(catalog_fastpath, "_COPY_MIN_ROWS", copy_from)
            store = CatalogStore(url)
            store.ensure_schema()
            with store.engine.begin() as conn:
                conn.execute(meta_runs.delete())
            store.upsert([*events, started(running)])
            store.upsert([started(ev.record) for ev in events])  # replayed starts: no effect
            store.upsert([later_beat, heartbeat(running, running.started_ns)])
            with store.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(meta_runs).order_by(meta_runs.c[FIELDS.run_id.column])
                ).all()
            store.dispose()
            return [tuple(r) for r in rows]

        through_copy = write_and_read(1)
        assert copies, "no batch went through COPY"
        copies.clear()
        one_by_one = write_and_read(10**9)
        assert not copies
        assert through_copy == one_by_one
        got = {r[0]: r for r in one_by_one}
        assert len(got) == len(events) + 1

    def test_dashboard_query_uses_the_pipeline_node_index(self, url: str) -> None:
        store = CatalogStore(url)
        store.ensure_schema()
        base = time.time_ns() - 86_400 * 10**9
        rows = [
            record_to_row(
                finish(
                    make_record(
                        pipeline=f"pipeline_{p}",
                        node=f"node_{n}",
                        started_ns=base + (p * 400 + n * 20 + i) * 60 * 10**9,
                    )
                ),
                kind=EventKind.FINISHED,
            )
            for p in range(50)
            for n in range(20)
            for i in range(20)
        ]
        with store.engine.begin() as conn:
            conn.execute(meta_runs.insert(), rows)
            conn.exec_driver_sql(f"ANALYZE {CATALOG_TABLE}")
        assert store.count() == 20_000
        with store.engine.connect() as conn:
            plan = "\n".join(
                conn.execute(
                    sa.text(
                        "EXPLAIN SELECT * FROM meta_runs WHERE pipeline_name = :p "
                        "AND node_name = :n AND started_at > :t ORDER BY started_at DESC LIMIT 50"
                    ),
                    {"p": "pipeline_7", "n": "node_3", "t": ns_to_datetime(base)},
                ).scalars()
            )
        assert "ix_meta_runs_pipeline_node_started" in plan, plan
        store.dispose()


# --- backend-independent ----------------------------------------------------------------------


def test_columns_are_odibis_first_then_ours_all_from_the_conventions() -> None:
    convention_columns = {
        column
        for f in (*FIELDS, *RESOURCE_FIELDS, ERROR_STACK_FIELD, *PHASE_FIELDS, SKIP_REASON_FIELD)
        for column in f.columns
    }
    assert set(meta_runs.c.keys()) == convention_columns | set(ODIBI_META_RUNS_COLUMNS)
    assert tuple(meta_runs.c.keys())[: len(ODIBI_META_RUNS_COLUMNS)] == ODIBI_META_RUNS_COLUMNS
    assert meta_runs.name == CATALOG_TABLE


def test_schema_module_spells_no_column_name() -> None:
    tree = ast.parse(Path(catalog_schema.__file__).read_text(encoding="utf-8"))
    literals = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert literals & set(meta_runs.c.keys()) == set()


_names = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
_attribute_values = st.one_of(
    _names,
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(_names, max_size=3).map(tuple),
    st.lists(st.integers(), max_size=3).map(tuple),
)


#: Instants from 2000 to 2100, in nanoseconds.
_epoch_ns = st.integers(946_684_800 * 10**9, 4_102_444_800 * 10**9)


@settings(max_examples=200, deadline=None)
@given(
    names=st.tuples(_names, _names, _names, _names),
    status=st.sampled_from(list(RunStatus)),
    started_ns=_epoch_ns,
    duration_ns=st.one_of(st.none(), st.integers(0, 10**15)),
    heartbeat_ns=st.one_of(st.none(), _epoch_ns),
    rows=st.one_of(st.none(), st.integers(0, 2**62)),
    error=st.one_of(st.none(), _names),
    suggestions=st.lists(_names, max_size=3).map(tuple),
    attributes=st.dictionaries(_names, _attribute_values, max_size=5),
    kind=st.sampled_from(list(EventKind)),
)
def test_row_to_record_inverts_record_to_row(
    names: tuple[str, str, str, str],
    status: RunStatus,
    started_ns: int,
    duration_ns: int | None,
    heartbeat_ns: int | None,
    rows: int | None,
    error: str | None,
    suggestions: tuple[str, ...],
    attributes: dict[str, Any],
    kind: EventKind,
) -> None:
    project, pipeline, node, environment = names
    record = make_record(
        project=project,
        pipeline=pipeline,
        node=node,
        environment=environment,
        status=status,
        started_ns=started_ns,
        heartbeat_ns=heartbeat_ns,
        rows_processed=rows,
        ended_ns=None if duration_ns is None else started_ns + duration_ns,
        error_type=error,
        error_message=error,
        suggestions=suggestions,
        attributes=attributes,
        source=Source.RECONCILER,
    )
    row = record_to_row(record, kind=kind)
    back = row_to_record(row)
    if kind is EventKind.HEARTBEAT and heartbeat_ns is None:
        back = replace(back, heartbeat_ns=None)  # a heartbeat without a time is stamped "now"
    assert back == stored(record)


_DRIVER_URLS = ("sqlite://", "postgresql+psycopg://u:p@db.example/x")


@functools.cache
def _unconnected_store(url: str) -> CatalogStore:
    """A store for ``url`` that is never connected: its statements and bindings only."""
    return CatalogStore(url)


_odd_texts = st.one_of(
    _names, st.sampled_from(["nul\x00", "lone \ud800", "数据 🚀", "x" * 300, "", EVIL])
)


@settings(max_examples=200, deadline=None)
@given(
    names=st.tuples(_odd_texts, _odd_texts, _odd_texts, _odd_texts),
    status=st.sampled_from(list(RunStatus)),
    started_ns=_epoch_ns,
    duration_ns=st.one_of(st.none(), st.integers(0, 10**15)),
    heartbeat_ns=st.one_of(st.none(), _epoch_ns),
    now_ns=_epoch_ns,
    rows=st.one_of(st.none(), st.integers(0, 2**62)),
    error=st.one_of(st.none(), _odd_texts),
    suggestions=st.lists(_odd_texts, max_size=3).map(tuple),
    attributes=st.dictionaries(_odd_texts, _attribute_values, max_size=5),
    kind=st.sampled_from(list(EventKind)),
)
def test_driver_upsert_binds_what_sqlalchemy_binds(
    names: tuple[str, str, str, str],
    status: RunStatus,
    started_ns: int,
    duration_ns: int | None,
    heartbeat_ns: int | None,
    now_ns: int,
    rows: int | None,
    error: str | None,
    suggestions: tuple[str, ...],
    attributes: dict[str, Any],
    kind: EventKind,
) -> None:
    """The driver-level upsert's parameters, value for value and type for type, are what
    SQLAlchemy's statement execution hands the same driver (its bind processors applied)."""
    project, pipeline, node, environment = names
    record = make_record(
        project=project,
        pipeline=pipeline,
        node=node,
        environment=environment,
        status=status,
        started_ns=started_ns,
        heartbeat_ns=heartbeat_ns,
        rows_processed=rows,
        ended_ns=None if duration_ns is None else started_ns + duration_ns,
        error_type=error,
        error_message=error,
        suggestions=suggestions,
        attributes=attributes,
        pipeline_run_id=error,
        parent_span_id=error,
    )
    event = RunEvent(kind, record)
    for url in _DRIVER_URLS:
        store = _unconnected_store(url)
        assert store._driver is not None and store._native is not None
        dialect = store.engine.dialect
        for upsert, as_beat in zip(store._native, (False, True), strict=True):
            compiled = upsert.compile(dialect=dialect)
            row = record_to_row(record, kind=kind, now=ns_to_datetime(now_ns))
            expected: dict[str, Any] = {}
            for name, value in compiled.construct_params(row).items():
                processor = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                expected[name] = value if processor is None else processor(value)
            ((_, [bound]),) = store._driver.statements(
                [] if as_beat else [event], [event] if as_beat else [], now_ns
            )
            constants = [v for k, v in expected.items() if k not in COLUMNS]
            assert [(type(v), v) for v in bound] == [
                (type(v), v) for v in (*(expected[c] for c in COLUMNS), *constants)
            ]


def test_driver_upsert_only_where_it_binds_like_sqlalchemy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # psycopg2 and other drivers keep SQLAlchemy's execution, which batches their rows.
    upserts = catalog_fastpath._native_statements("postgresql")
    driver_upsert = catalog_fastpath._DriverUpsert
    dialect = postgresql.psycopg2.dialect()  # type: ignore[no-untyped-call]  # not annotated
    assert driver_upsert.for_dialect(dialect, *upserts) is None

    # A SQLAlchemy that stored times differently would make the store fall back, not diverge.
    def seconds_only() -> Callable[[int], str]:
        full = catalog_fastpath._instant_sqlite_texts()
        return lambda ns: full(ns)[:19]

    monkeypatch.setattr(
        catalog_fastpath,
        "_SQLITE_TEXTS",
        replace(catalog_fastpath._SQLITE_TEXTS, instants=seconds_only),
    )
    store = CatalogStore("sqlite://")
    assert store._driver is None
    store.ensure_schema()
    run = make_record()
    store.upsert([started(run), finished(finish(run))])
    assert store.get(run.run_id) == stored(finish(run))
    store.dispose()


def test_coalescing_keeps_one_event_per_run_by_rank_then_order() -> None:
    a, b, c, d = (make_record() for _ in range(4))
    a_end, c_end = finish(a), finish(c, RunStatus.FAILURE)
    b_beat, b_later_beat = heartbeat(b, b.started_ns + 1), heartbeat(b, b.started_ns + 2)
    c_crash = finished(finish(c, RunStatus.CRASHED))
    events = [
        started(a),
        finished(a_end),
        heartbeat(a, a.started_ns + 1),
        started(a),
        b_beat,
        started(b),
        b_later_beat,
        c_crash,
        started(c),
        finished(c_end),
        started(d),
        started(d),
    ]
    full, beats = catalog_store.coalesce_events(events)
    assert full == [finished(a_end), finished(c_end), events[-1]]
    assert full[-1] is events[-1]  # among equals, the later one
    assert beats == [b_later_beat]
    assert catalog_store.coalesce_events([]) == ([], [])


def test_invalid_url_is_a_configuration_error_without_the_password() -> None:
    for url in (
        f"postgresql://u:{SECRET}@db.example:notaport/x",
        f"://u:{SECRET}@h/x",
        f"nosuchdialect://u:{SECRET}@h/x",
    ):
        with pytest.raises(ConfigurationError) as caught:
            create_catalog_engine(url)
        assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_postgres_urls_get_the_installed_driver() -> None:
    for url in ("postgres://u:p@db.example/x", "postgresql://u:p@db.example/x"):
        engine = create_catalog_engine(url)
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.dialect.name == "postgresql"
        engine.dispose()


def test_missing_postgres_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_engine, "_module_available", lambda name: False)
    with pytest.raises(ConfigurationError, match=r"odibi-observe\[postgres\]") as caught:
        CatalogSink(f"postgresql://u:{SECRET}@db.example/x")
    assert SECRET not in str(caught.value)

    with pytest.raises(ConfigurationError, match=r"odibi-observe\[postgres\]"):
        create_catalog_engine(f"postgresql+psycopg2://u:{SECRET}@db.example/x")
