"""Phases of a run: the writes it recorded and the checkpoint it committed, in the record, the
catalog (migration 0006: ``writes_json``, ``checkpoint_json``), the span and the spool."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

import odibi_observe as oo
from odibi_observe._instrument import MAX_WRITES
from odibi_observe._otlp_json import read_spans
from odibi_observe.catalog import CatalogStore
from odibi_observe.catalog.migrate import alembic_config
from odibi_observe.catalog.schema import CHECKPOINT_JSON, WRITES_JSON, record_to_row
from odibi_observe.conventions import (
    CATALOG_TABLE,
    CHECKPOINT_EVENT,
    CHECKPOINT_KEY_ATTRIBUTE,
    SELF_METRICS,
    UNCOMMITTED_WRITE,
    WRITE_EVENT,
    WRITE_TARGET_ATTRIBUTE,
    RunStatus,
)
from odibi_observe.record import EventKind, RunEvent, RunRecord
from odibi_observe.testing import capture_runs
from odibi_observe.testing.contracts import make_record
from tests.fault_helpers import CLI
from tests.helpers import reconcile_argv

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
            command.upgrade(alembic_config(conn), "0006_run_phases")
        assert {WRITES_JSON, CHECKPOINT_JSON} <= columns()
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")  # the later migrations keep them
        assert {WRITES_JSON, CHECKPOINT_JSON} <= columns()
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


# --- the API on the run handle ----------------------------------------------------------------

INVALID = SELF_METRICS.invalid_input.prometheus


class Boom(Exception):
    """What every hostile method raises."""


class Unprintable:
    def __str__(self) -> str:
        raise Boom("no str")

    __repr__ = __str__


def test_decorated_node_records_its_write_and_checkpoint_on_both_catalogs(
    fresh_observer: Callable[..., oo.Observer], catalog_url: str, tmp_path: Path
) -> None:
    traces = tmp_path / "traces.jsonl"
    fresh_observer(catalog_url=catalog_url, traces_file=str(traces), mode="inline")

    @oo.observe_node(pipeline="orders")
    def load() -> None:
        run = oo.current_run()
        run.record_write("silver/orders", rows=15, version=3, awaits_checkpoint=True)
        run.record_checkpoint("orders_hwm", "2024-01-03T00:00:00", previous="2024-01-02")

    @oo.observe_node(pipeline="orders")
    def crashes_after_write() -> None:
        oo.current_run().record_write("silver/orders", rows=7, awaits_checkpoint=True)
        raise ValueError("set_hwm failed")

    @oo.observe_node(pipeline="orders")
    def plain() -> int:
        return 1

    load()
    with pytest.raises(ValueError, match="set_hwm"):
        crashes_after_write()
    plain()
    oo.current_run().record_write("outside", rows=1)  # the null run: nothing, no error
    oo.current_run().record_checkpoint("k", 1)
    oo.flush()
    store = CatalogStore(catalog_url)
    try:
        runs = {r.node: r for r in store.recent_runs(limit=10)}
    finally:
        store.dispose()
    ok, failed, other = runs["load"], runs["crashes_after_write"], runs["plain"]
    assert [(w["target"], w["rows"], w["version"]) for w in ok.writes] == [("silver/orders", 15, 3)]
    assert ok.checkpoint is not None
    assert (ok.checkpoint["key"], ok.checkpoint["value"], ok.checkpoint["previous"]) == (
        "orders_hwm",
        "2024-01-03T00:00:00",
        "2024-01-02",
    )
    assert ok.started_ns <= ok.writes[0]["at"] <= ok.checkpoint["at"]
    assert not ok.uncommitted_write
    assert failed.status is RunStatus.FAILURE and failed.checkpoint is None
    assert failed.uncommitted_write and failed.writes[0]["rows"] == 7
    assert other.writes == () and other.checkpoint is None
    spans = {s.attributes.get("odibi.node"): s for s in read_spans(traces)}
    events = spans["load"].events
    assert [name for name, _ in events] == [WRITE_EVENT, CHECKPOINT_EVENT]
    assert events[0][1] == {
        WRITE_TARGET_ATTRIBUTE: "silver/orders",
        "odibi.write.rows": 15,
        "odibi.write.version": 3,
        "odibi.write.awaits_checkpoint": True,
    }
    assert events[1][1][CHECKPOINT_KEY_ATTRIBUTE] == "orders_hwm"
    assert [name for name, _ in spans["crashes_after_write"].events] == [
        WRITE_EVENT,
        "exception",
    ]
    assert spans["plain"].events == []
    report = reconcile(catalog_url, traces, tmp_path / "report")
    (finding,) = [d for d in report["discrepancies"] if d["kind"] == UNCOMMITTED_WRITE]
    assert finding["run_id"] == failed.run_id and finding["catalog"]["rows_to_reread"] == 7
    assert report["summary"]["discrepancies"][UNCOMMITTED_WRITE] == 1
    assert "re-reads those 7 row(s)" in finding["detail"]


def reconcile(
    catalog_url: str, traces: Path, out: Path, *, since: str = "2000-01-01T00:00:00"
) -> dict[str, Any]:
    """``odibi-observe reconcile`` of ``catalog_url`` against ``traces`` (runs that started
    from ``since``): its JSON report."""
    result = subprocess.run(
        [
            sys.executable,
            *CLI,
            *reconcile_argv(catalog_url, traces, out, since=since),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def test_hostile_phase_values_never_reach_the_node_and_are_counted() -> None:
    huge = "x" * 10_000_000
    with capture_runs() as sink:
        registry = oo.get_observer().registry
        with oo.node_run("p", "n") as run:
            run.record_write(Unprintable(), rows=Unprintable(), version=Unprintable())
            run.record_write("bad-\ud800-name", rows=math.nan, version=huge)
            run.record_write(Path("/data/t"), rows=2**70, version=10**30)
            run.record_checkpoint(huge, {"not": {"json": object()}}, previous=b"\xff")
        writes_invalid = registry.get_sample_value(INVALID, {"field": "write"})
        checkpoint_invalid = registry.get_sample_value(INVALID, {"field": "checkpoint"})
    (rec,) = sink.finished
    assert rec.status is RunStatus.SUCCESS
    first, second, third = rec.writes
    assert first["target"] == "unknown" and first["version"] is None
    assert second["target"] == "bad-\\ud800-name" and second["rows"] is None
    assert len(second["version"]) < 2_000
    assert third["target"] == "/data/t" and third["version"] == str(10**30)
    assert rec.checkpoint is not None and len(rec.checkpoint["key"]) < 2_000
    assert isinstance(rec.checkpoint["value"], str) and isinstance(rec.checkpoint["previous"], str)
    assert writes_invalid is not None and writes_invalid >= 3
    assert checkpoint_invalid is not None and checkpoint_invalid >= 1
    json.dumps(rec.to_dict()).encode("utf-8")  # every value is JSON, and encodes
    record_to_row(rec, kind=EventKind.FINISHED)


def test_writes_are_bounded_and_a_phase_after_the_end_is_ignored() -> None:
    with capture_runs() as sink:
        with oo.node_run("p", "n") as run:
            for i in range(MAX_WRITES + 5):
                run.record_write(f"t{i}", rows=i)
        run.record_write("late", rows=1)
        run.record_checkpoint("late", 1)
        registry = oo.get_observer().registry
        assert registry.get_sample_value(INVALID, {"field": "write"}) == 6
        assert registry.get_sample_value(INVALID, {"field": "checkpoint"}) == 1
    (rec,) = sink.finished
    assert len(rec.writes) == MAX_WRITES and rec.checkpoint is None
    phases = [e for e in sink.events if e.kind is EventKind.PHASE]
    assert len(phases) == MAX_WRITES
    assert all(e.record.heartbeat_ns is not None for e in phases)


def test_checkpoints_are_ordered_only_when_they_can_be() -> None:
    """Numbers and ISO times are ordered; other values, mixed kinds and a naive time against
    an aware one are not: never flagged as a regression, but returned as not ordered (the
    report's note), and never an exception."""
    from odibi_observe.reconcile.phases import regressed_checkpoints

    def committed(value: object, at: int, previous: object = None) -> RunRecord:
        return make_record(checkpoint={"key": "k", "value": value, "previous": previous, "at": at})

    cases: list[tuple[object, object, bool, bool]] = [  # later, earlier, flagged, unordered
        (5, 7, True, False),
        (7.5, 7, False, False),
        ("2024-01-01 14:00:00", "2024-01-01 19:00:00", True, False),
        ("2024-01-02", "2024-01-01T23:00:00", False, False),
        ("b", "a", False, True),  # not times: no order
        ("a", "b", False, True),
        ("a", "a", False, False),  # the same value, whatever it is
        ("2024-01-01T00:00:00+00:00", "2024-01-02T00:00:00", False, True),  # aware vs naive
        (1, "2024-01-01", False, True),
        (True, 5, False, True),
        (math.nan, 5, False, True),
        ({"offset": 3}, [1, 2], False, True),
    ]
    for later, earlier, flagged, unordered in cases:
        found, unclear = regressed_checkpoints([committed(earlier, AT), committed(later, AT + 1)])
        assert bool(found) is flagged, (later, earlier)
        assert [(u.value, u.against) for u in unclear] == (
            [(later, earlier)] if unordered else []
        ), (later, earlier)
    # Against the value it replaced, with no earlier commit in the range.
    assert regressed_checkpoints([committed(3, AT, previous=4)])[0]
    assert not regressed_checkpoints([committed(4, AT, previous=3)])[0]
