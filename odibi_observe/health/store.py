"""Findings kept in ``meta_health_findings``: open while passes see them, then resolved.

A nightly pass that sees the same stale node ten nights in a row must page once, not ten
times. So a finding is a row per *episode*: the first pass that sees ``(kind, pipeline, node)``
inserts it ``open`` (the finding is ``new``); later passes that see it again move its
``last_seen_at``, count the pass and refresh the evidence (the finding is ``open``, opened on
its first night); the first pass that does not see it marks it ``resolved``. Alerting on
``new`` findings (or on the per-finding gauge) therefore fires once per episode.

Like reconciliation's tables, the table is used only where it exists: a health pass never
creates or migrates anything (``odibi-observe catalog upgrade`` does). One pass records in one
transaction, serialised against concurrent passes (PostgreSQL: an advisory transaction lock;
SQLite: ``BEGIN IMMEDIATE``), so two passes at once cannot open the same finding twice.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from odibi_observe.catalog.schema import NODE, PIPELINE, health_findings
from odibi_observe.catalog.store import SQLITE_IMMEDIATE
from odibi_observe.conventions import HEALTH_FINDINGS_TABLE
from odibi_observe.health.model import Finding, HealthResult, finite
from odibi_observe.reconcile.model import as_utc, iso

OPEN: Final = "open"
RESOLVED: Final = "resolved"

#: Key of the PostgreSQL advisory lock a recording pass holds (derived from the table name).
LOCK_ID: Final = int.from_bytes(
    hashlib.sha256(HEALTH_FINDINGS_TABLE.encode()).digest()[:8], "big", signed=True
)


def table_exists(engine: Engine) -> bool:
    """Whether the catalog has ``meta_health_findings`` (only read, never made)."""
    return bool(sa.inspect(engine).has_table(HEALTH_FINDINGS_TABLE))


def record(engine: Engine, result: HealthResult, *, now: datetime | None = None) -> bool:
    """Record the pass: open new findings, refresh open ones, resolve the rest; fill in each
    finding's ``state``, ``opened_at``, ``passes`` and ``finding_id`` and ``result.resolved``.
    False (nothing written) when the table does not exist."""
    if not table_exists(engine):
        return False
    now = as_utc(now or datetime.now(timezone.utc).replace(microsecond=0))
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.execution_options(**{SQLITE_IMMEDIATE: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_ID)))
            _record(conn, result, now)
    result.recorded = True
    return True


def _record(conn: Connection, result: HealthResult, now: datetime) -> None:
    t = health_findings
    rows = conn.execute(sa.select(t).where(t.c.state == OPEN)).mappings().all()
    open_rows: dict[tuple[str, str, str], Any] = {}
    duplicates = []
    for row in rows:
        key = (row["kind"], row[PIPELINE], row[NODE])
        if key in open_rows:  # written by something else than a pass: keep the oldest open
            duplicates.append(row["finding_id"])
            continue
        open_rows[key] = row
    for finding in result.findings:
        row = open_rows.pop(finding.key, None)
        values = _values(finding, now)
        if row is None:
            finding.finding_id = str(uuid.uuid4())
            finding.state, finding.opened_at, finding.passes = "new", now, 1
            conn.execute(
                t.insert().values(
                    finding_id=finding.finding_id,
                    kind=finding.kind,
                    **{PIPELINE: finding.pipeline, NODE: finding.node},
                    state=OPEN,
                    opened_at=now,
                    passes=1,
                    **values,
                )
            )
        else:
            finding.finding_id = str(row["finding_id"])
            finding.state, finding.passes = OPEN, int(row["passes"]) + 1
            finding.opened_at = as_utc(row["opened_at"])
            conn.execute(
                t.update()
                .where(t.c.finding_id == row["finding_id"])
                .values(passes=t.c.passes + 1, **values)
            )
    for (kind, pipeline, node), row in open_rows.items():
        conn.execute(
            t.update()
            .where(t.c.finding_id == row["finding_id"])
            .values(state=RESOLVED, resolved_at=now)
        )
        result.resolved.append(
            {
                "kind": kind,
                "pipeline": pipeline,
                "node": node,
                "finding_id": str(row["finding_id"]),
                "opened_at": iso(as_utc(row["opened_at"])),
                "last_seen_at": iso(as_utc(row["last_seen_at"])),
                "passes": int(row["passes"]),
                "detail": row["detail"],
            }
        )
    if duplicates:
        conn.execute(
            t.update().where(t.c.finding_id.in_(duplicates)).values(state=RESOLVED, resolved_at=now)
        )


def _values(finding: Finding, now: datetime) -> dict[str, Any]:
    return {
        "last_seen_at": now,
        "score": finite(finding.score),
        "baseline": finite(finding.baseline),
        "value": finite(finding.value),
        "detail": finding.detail,
        "evidence_json": json.dumps(
            {"evidence": finding.evidence, "runs": finding.runs, "runs_total": finding.runs_total},
            ensure_ascii=False,
            default=str,
        ),
    }


def findings(engine: Engine, *, state: str | None = None) -> list[dict[str, Any]]:
    """The recorded findings (newest first), for tests and for looking back."""
    t = health_findings
    query = sa.select(t).order_by(t.c.opened_at.desc(), t.c.kind, t.c[PIPELINE], t.c[NODE])
    if state is not None:
        query = query.where(t.c.state == state)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
