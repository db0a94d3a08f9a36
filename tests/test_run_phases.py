"""Phases of a run: the writes it recorded and the checkpoint it committed, in the record, the
catalog (migration 0006: ``writes_json``, ``checkpoint_json``), the span and the spool."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from alembic import command

from odibi_observe.catalog import CatalogStore
from odibi_observe.catalog.migrate import alembic_config, head_revision
from odibi_observe.catalog.schema import CHECKPOINT_JSON, WRITES_JSON, record_to_row
from odibi_observe.conventions import CATALOG_TABLE, RunStatus
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.testing.contracts import make_record

AT = 1_765_000_000_123_456_000
WRITE = {"target": "silver/orders", "rows": 15, "version": 1, "at": AT, "awaits_checkpoint": True}
CHECKPOINT = {"key": "orders_hwm", "value": "2024-01-03", "previous": "2024-01-02", "at": AT}


def test_migration_0006_adds_the_columns_to_a_0005_catalog(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)

    def columns() -> set[str]:
        return {c["name"] for c in sa.inspect(engine).get_columns(CATALOG_TABLE)}

    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0005_error_stack")
        assert not {WRITES_JSON, CHECKPOINT_JSON} & columns()
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        assert {WRITES_JSON, CHECKPOINT_JSON} <= columns()
        assert head_revision() == "0006_run_phases"
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0005_error_stack")
        assert not {WRITES_JSON, CHECKPOINT_JSON} & columns()
    finally:
        engine.dispose()


def test_record_round_trips_its_phases_through_json_and_the_row() -> None:
    record = make_record(
        status=RunStatus.CRASHED, writes=(WRITE, {**WRITE, "version": None}), checkpoint=None
    )
    assert RunEvent.from_json(RunEvent(EventKind.FINISHED, record).to_json()).record == record
    row = record_to_row(record, kind=EventKind.FINISHED)
    stored = json.loads(row[WRITES_JSON])
    assert stored[0] == {**WRITE, "at": "2025-12-06T05:46:40.123456Z"}
    assert row[CHECKPOINT_JSON] is None
    assert record.uncommitted_write
    done = record.replace(checkpoint=CHECKPOINT)
    assert json.loads(record_to_row(done, kind=EventKind.FINISHED)[CHECKPOINT_JSON])["key"] == (
        "orders_hwm"
    )
    assert not done.uncommitted_write
    assert not record.replace(status=RunStatus.SUCCESS).uncommitted_write
    # A write that does not wait for a checkpoint (a full overwrite) is never uncommitted.
    assert not record.replace(writes=({"target": "t", "at": AT},)).uncommitted_write


def test_from_dict_refuses_malformed_phases() -> None:
    data = make_record().to_dict()
    for bad in ({"writes": [{"rows": 1}]}, {"writes": ["t"]}, {"checkpoint": {"value": 1}}):
        with pytest.raises(TypeError, match=r"writes|checkpoint"):
            RunRecord.from_dict({**data, **bad})


def test_catalog_keeps_phases_of_a_running_row_and_of_its_end(catalog_url: str) -> None:
    """A phase event moves writes_json on the RUNNING row (as a heartbeat does its time); a
    later heartbeat in the same batch keeps them; the terminal row carries both."""
    store = CatalogStore(catalog_url)
    try:
        store.ensure_schema()
        start = make_record(status=RunStatus.RUNNING)
        store.upsert([RunEvent(EventKind.STARTED, start)])
        written = start.replace(writes=(WRITE,), heartbeat_ns=start.started_ns + 1_000)
        beat = written.replace(heartbeat_ns=start.started_ns + 2_000)
        store.upsert([RunEvent(EventKind.PHASE, written), RunEvent(EventKind.HEARTBEAT, beat)])
        got = store.get(start.run_id)
        assert got is not None and got.status is RunStatus.RUNNING
        assert [w["target"] for w in got.writes] == ["silver/orders"] and got.checkpoint is None
        assert got.writes[0]["at"] == AT
        # The same microsecond again (a second phase): still applied.
        both = written.replace(writes=(WRITE, WRITE))
        store.upsert([RunEvent(EventKind.PHASE, both.replace(heartbeat_ns=beat.heartbeat_ns))])
        got = store.get(start.run_id)
        assert got is not None and len(got.writes) == 2
        end = both.finished(
            status=RunStatus.SUCCESS, ended_ns=start.started_ns + 10**9, checkpoint=CHECKPOINT
        )
        store.upsert([RunEvent(EventKind.FINISHED, end)])
        got = store.get(start.run_id)
        assert got is not None and got.checkpoint == CHECKPOINT and len(got.writes) == 2
        # A run that recorded none has NULL in both columns.
        plain = make_record()
        store.upsert([RunEvent(EventKind.FINISHED, plain)])
        with store.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    f"SELECT {WRITES_JSON}, {CHECKPOINT_JSON} FROM {CATALOG_TABLE} "
                    "WHERE run_id = :r"
                ),
                {"r": plain.run_id},
            ).one()
        assert tuple(row) == (None, None)
    finally:
        store.dispose()
