"""What an audit of an Odibi project reads and what it finds.

Three records come from Odibi's own files, none from odibi-observe: a target's Delta commits
(:class:`Commit`), the high-water mark updates of Odibi's ``meta_state`` (:class:`HwmUpdate`)
and the run rows Odibi writes to its ``meta_runs`` (:class:`OdibiRun`). An audit needs no
survivor: a run SIGKILLed between its write and its checkpoint left a commit, and no row, and
no HWM update — that absence is what :mod:`.detect` reads.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from odibi_observe.conventions import AUDIT_FINDING_KINDS, AUDIT_KEYS
from odibi_observe.reconcile.model import KindInfo, iso, kind_table

K: Final = AUDIT_KEYS


def as_dict(record: Any, *, skip: tuple[str, ...] = (), **renamed: str) -> dict[str, Any]:
    """A record dataclass as a JSON object: each field under its key in
    :data:`~odibi_observe.conventions.AUDIT_KEYS` (the field's own name unless ``renamed``),
    times as ISO 8601."""
    out: dict[str, Any] = {}
    for item in fields(record):
        if item.name in skip:
            continue
        value = getattr(record, item.name)
        key = renamed.get(item.name) or getattr(K, item.name)
        out[key] = iso(value) if isinstance(value, datetime) else value
    return out


class AuditInputError(Exception):
    """The audit cannot start: the project, or what it names, cannot be read. ``str()`` is the
    whole line to print."""


KINDS: Final = kind_table(
    AUDIT_FINDING_KINDS,
    KindInfo(
        "unclaimed_commit",
        "Commit claimed by no run",
        "a Delta version of the target that no row of Odibi's meta_runs names (its "
        "delta_info.version, or for rows without one the latest commit of the node before the "
        "row was logged)",
        "the run that wrote it ended before its pipeline logged its rows: SIGKILL, OOM kill, "
        "a lost host, or a write outside Odibi. Look at the scheduler's and the kernel's log "
        "at that time. If the HWM was saved after it the data and the checkpoint agree and "
        "only the run record is missing; if not, see hwm_not_saved.",
    ),
    KindInfo(
        "hwm_not_saved",
        "Data written, HWM not saved",
        "a commit with rows after which the node's HWM (meta_state) was not updated before "
        "the node's next commit (or until now)",
        "the next run reads the same window again and appends those rows a second time. "
        "Remove the duplicates from the target (the rows of the version named, e.g. by "
        "restoring the version before it, or deleting them by their HWM column range), or "
        "set the HWM to the value the run would have saved. Make the write idempotent "
        "(mode: append_once with keys, or upsert) so a re-read cannot duplicate.",
    ),
    KindInfo(
        "hwm_regressed",
        "HWM went backwards",
        "a value saved in meta_state that is older than the value saved before it for the "
        "same key (seen in meta_state's Delta history)",
        "every run after it re-reads from the older value: the commits that followed hold "
        "rows already in the target. If the state was reset on purpose, deduplicate the "
        "target; if not, find who wrote meta_state (a restore, a copied state, two "
        "environments sharing one key) and set the HWM back to the newest value.",
    ),
)


@dataclass(frozen=True)
class Commit:
    """One version of a target's Delta log."""

    version: int
    at: datetime
    operation: str
    #: ``numOutputRows`` (or delta-rs's ``num_added_rows``); None when the commit says nothing.
    rows: int | None
    #: A commit that writes rows (WRITE, MERGE, ...), not table maintenance (OPTIMIZE, VACUUM).
    data: bool

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self, skip=("data",), at=K.timestamp)


@dataclass(frozen=True)
class HwmUpdate:
    """One saved value of an HWM key: the ``meta_state`` version that saved it."""

    key: str
    state_version: int
    at: datetime
    value: Any
    previous: Any

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self, key=K.state_key, at=K.timestamp)


@dataclass(frozen=True)
class OdibiRun:
    """A row of Odibi's ``meta_runs``: logged when its pipeline ended."""

    run_id: str
    pipeline: str
    node: str
    status: str
    rows: int | None
    duration_ms: int | None
    logged_at: datetime
    #: ``metrics_json.delta_info.version``: the commit the run made, when it says.
    version: int | None
    hwm_pending: bool
    hwm_error: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> OdibiRun | None:
        """The run of one ``meta_runs`` row; None for a row without a time."""
        logged = row.get("timestamp")
        if not isinstance(logged, datetime):
            return None
        if logged.tzinfo is None:  # Spark writes naive UTC
            logged = logged.replace(tzinfo=timezone.utc)
        metrics = _json_object(row.get("metrics_json"))
        delta = metrics.get("delta_info")
        version = delta.get("version") if isinstance(delta, dict) else None
        error = metrics.get("hwm_error")
        return cls(
            run_id=str(row.get("run_id") or ""),
            pipeline=str(row.get("pipeline_name") or ""),
            node=str(row.get("node_name") or ""),
            status=str(row.get("status") or ""),
            rows=_int(row.get("rows_processed")),
            duration_ms=_int(row.get("duration_ms")),
            logged_at=logged,
            version=version if isinstance(version, int) and version >= 0 else None,
            hwm_pending=metrics.get("hwm_pending") is True,
            hwm_error=str(error) if error else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self, skip=("pipeline", "node"))


def _json_object(text: object) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else int(number)


@dataclass(frozen=True)
class Writer:
    """An incremental, stateful node and the target it writes."""

    pipeline: str
    node: str
    target: str
    state_key: str
    column: str
    mode: str

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self, skip=("column", "mode"))


@dataclass(frozen=True)
class ObservedRun:
    """What odibi-observe's own catalog (``--catalog``) has for a commit's run."""

    run_id: str
    status: str
    started_at: datetime | None
    ended_at: datetime | None
    error_type: str | None
    #: The run was in progress when the commit was made.
    covers: bool

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


@dataclass
class Finding:
    """One thing the audit found, about one node and one or more target versions."""

    kind: str
    writer: Writer
    #: When it happened: the commit's time, or for a regression the update's.
    at: datetime
    commits: list[Commit]
    detail: str
    #: The rows in question: the commit's, or for a regression those read again since.
    rows: int | None = None
    hwm: list[HwmUpdate] = field(default_factory=list)
    runs: list[OdibiRun] = field(default_factory=list)
    #: Filled by :func:`.observed.annotate` when ``--catalog`` is given; None: not looked up.
    observed: list[ObservedRun | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            K.kind: self.kind,
            **self.writer.to_dict(),
            K.versions: [c.version for c in self.commits],
            K.timestamp: iso(self.at),
            K.rows: self.rows,
            K.commits: [c.to_dict() for c in self.commits],
            K.hwm: [u.to_dict() for u in self.hwm],
            K.odibi_runs: [r.to_dict() for r in self.runs],
            K.our_catalog: None
            if self.observed is None
            else [o.to_dict() if o else None for o in self.observed],
            K.detail: self.detail,
            K.todo: KINDS[self.kind].todo,
        }


@dataclass
class NodeAudit:
    """What was read for one writer, and how much of it was judged."""

    writer: Writer
    commits: int = 0
    runs: int = 0
    hwm_updates: int = 0
    in_flight: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.writer.to_dict(),
            K.commits: self.commits,
            K.odibi_runs: self.runs,
            K.hwm: self.hwm_updates,
            K.commits_in_flight: self.in_flight,
        }


@dataclass
class AuditOptions:
    """What is judged: commits made in ``[since, until]`` (all when None), except those within
    ``grace`` of now, which may belong to a run still in progress."""

    since: datetime | None = None
    until: datetime | None = None
    grace: timedelta = timedelta(minutes=15)

    def to_dict(self) -> dict[str, Any]:
        return {
            K.since: iso(self.since),
            K.until: iso(self.until),
            K.grace_seconds: self.grace.total_seconds(),
        }


@dataclass
class AuditResult:
    """Everything one audit read and found."""

    project: str
    odibi_project: str
    meta_runs: str | None
    state: str | None
    options: AuditOptions
    nodes: list[NodeAudit] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    #: Input that could not be read: ``{source, message}``. Any makes the exit status 2.
    errors: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    catalog: str | None = None
    seconds: float = 0.0

    def error(self, source: str, message: str) -> None:
        self.errors.append({K.source: source, K.message: message})

    def by_kind(self) -> dict[str, int]:
        counts = Counter(f.kind for f in self.findings)
        return {kind: counts.get(kind, 0) for kind in AUDIT_FINDING_KINDS}

    def sorted_findings(self) -> list[Finding]:
        """Oldest first, so a story reads in order: the kill, then what it caused."""
        order = {kind: i for i, kind in enumerate(AUDIT_FINDING_KINDS)}
        return sorted(
            self.findings, key=lambda f: (f.writer.node, f.at, order[f.kind], f.writer.target)
        )

    @property
    def commits_audited(self) -> int:
        return sum(n.commits for n in self.nodes)

    @property
    def in_flight(self) -> int:
        return sum(n.in_flight for n in self.nodes)

    @property
    def exit_status(self) -> int:
        """2 when some input could not be read (the audit is incomplete), else 1 when it found
        something, else 0."""
        return 2 if self.errors else 1 if self.findings else 0
