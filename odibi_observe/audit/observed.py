"""What odibi-observe's own catalog knows of the runs behind the audit's findings.

Optional (``audit --catalog URL``): the audit needs no catalog of ours, but where there is one
it says whether a run was recorded for each commit found — by run id when Odibi's row claims
the commit (the integration shares its run id with Odibi's row), else the node's run that was
in progress when the commit was made. Only the columns named here are read, so a catalog at
any schema revision will do; the catalog is opened read-only.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Final

import sqlalchemy as sa

from odibi_observe.audit.model import AuditResult, Commit, Finding, ObservedRun
from odibi_observe.catalog.schema import (
    ENDED_AT,
    ERROR_TYPE,
    NODE,
    PIPELINE,
    RUN_ID,
    STARTED_AT,
    STATUS,
    meta_runs,
)

#: A run "covers" a commit made up to this long outside its times: the catalog's times and
#: the commit's are taken by different calls.
COVER_SLACK: Final = timedelta(seconds=2)
#: Runs whose recorded end is not when they stopped: a crashed run is closed at its last sign
#: of life (it died some time after), a running one has not ended.
_OPEN_ENDED: Final = frozenset({"RUNNING", "CRASHED"})
_COLUMNS: Final = (RUN_ID, STATUS, STARTED_AT, ENDED_AT, ERROR_TYPE)


def annotate(result: AuditResult, engine: sa.Engine) -> None:
    """Fill ``observed`` of every finding that names commits (one entry per commit)."""
    c = meta_runs.c
    columns = [c[name] for name in _COLUMNS]
    with engine.connect() as conn:
        for finding in result.findings:
            finding.observed = [
                _lookup(conn, columns, finding, commit) for commit in finding.commits
            ]


def _lookup(conn: Any, columns: list[Any], finding: Finding, commit: Commit) -> ObservedRun | None:
    c = meta_runs.c
    claimed = next((r for r in finding.runs if r.version == commit.version), None)
    if claimed is None and len(finding.runs) == 1 and finding.runs[0].version is None:
        claimed = finding.runs[0]
    if claimed is not None and claimed.run_id:
        row = conn.execute(sa.select(*columns).where(c[RUN_ID] == claimed.run_id)).first()
        if row is not None:
            return _observed(row, commit)
    row = conn.execute(
        sa.select(*columns)
        .where(c[NODE] == finding.writer.node)
        .where(c[PIPELINE] == finding.writer.pipeline)
        .where(c[STARTED_AT] <= commit.at + COVER_SLACK)
        .order_by(c[STARTED_AT].desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    observed = _observed(row, commit)
    return observed if observed.covers else None


def _utc(value: Any) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _observed(row: Any, commit: Commit) -> ObservedRun:
    values = dict(zip(_COLUMNS, row, strict=True))
    started, ended = _utc(values[STARTED_AT]), _utc(values[ENDED_AT])
    status = str(values[STATUS] or "")
    covers = (
        started is not None
        and started - COVER_SLACK <= commit.at
        and (status in _OPEN_ENDED or ended is None or commit.at <= ended + COVER_SLACK)
    )
    return ObservedRun(
        run_id=str(values[RUN_ID]),
        status=status,
        started_at=started,
        ended_at=ended,
        error_type=values[ERROR_TYPE],
        covers=covers,
    )
