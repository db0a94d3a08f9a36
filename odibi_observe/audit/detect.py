"""The audit: Odibi's own records of each incremental node, set side by side.

For every stateful node with a Delta target (:mod:`.project`), three histories are read
(:mod:`.delta`) and compared:

* **claims** — each data commit of the target is claimed by the ``meta_runs`` row whose
  ``metrics_json.delta_info.version`` names it; a row that names no version (a write that did
  not report one) claims the latest unclaimed commit of its node made after the node's
  previous row was logged and before its own. A commit nobody claims is ``unclaimed_commit``.
  Odibi logs a pipeline's rows when the pipeline ends, so a run killed anywhere after its
  write — or a pipeline killed in a later node — leaves its commit unclaimed.
* **checkpoints** — after a commit with rows, the node's HWM must be saved (a new
  ``meta_state`` version for its key) before the node's next commit, or until now for the
  last one. If it is not, the next run reads the same window again: ``hwm_not_saved``. Two
  runs that overlap show the same way (two commits, then the HWM).
* **regressions** — consecutive saved values of a key compared as timestamps, numbers or
  text (the same kind only): a later one older than the one before is ``hwm_regressed``.

Every time compared is a Delta commit timestamp (the target's and meta_state's, both written
by the process that ran the node), except the time a ``meta_runs`` row was logged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from odibi_observe.audit.delta import (
    DeltaUnreadable,
    HwmHistory,
    exists,
    read_commits,
    read_hwm_history,
    read_meta_runs,
)
from odibi_observe.audit.model import (
    AuditOptions,
    AuditResult,
    Commit,
    Finding,
    HwmUpdate,
    NodeAudit,
    OdibiRun,
    Writer,
)
from odibi_observe.audit.project import Project
from odibi_observe.reconcile.model import iso


def audit(project: Project, options: AuditOptions, *, now: datetime | None = None) -> AuditResult:
    """Audit ``project``: read what Odibi recorded and find what does not add up."""
    started = time.monotonic()
    now = now or datetime.now(timezone.utc)
    result = AuditResult(
        project=str(project.path),
        odibi_project=project.name,
        meta_runs=project.meta_runs,
        state=project.meta_state,
        options=options,
        notes=list(project.notes),
    )
    if not project.writers:
        result.notes.append(
            "no node reads incrementally with a stateful HWM into a Delta table: nothing to audit"
        )
    runs = _runs(project, result)
    hwm = _hwm(project, result)
    by_target: dict[str, list[Writer]] = {}
    for writer in project.writers:
        by_target.setdefault(writer.target, []).append(writer)
    for target, writers in by_target.items():
        try:
            commits = read_commits(target)
        except DeltaUnreadable as exc:
            result.error(target, str(exc))
            continue
        if len(writers) > 1:
            result.notes.append(
                f"{', '.join(w.node for w in writers)} write one target {target}: commits "
                f"claimed by none of them are reported under {writers[0].node}"
            )
        others = {k for k, t in project.targets.items() if t == target} - {
            (w.pipeline, w.node) for w in writers
        }
        node_runs = [
            r
            for r in runs or ()
            if any(_same(r, w.pipeline, w.node) for w in writers)
            or any(_same(r, *other) for other in others)
        ]
        claims = claim(commits, node_runs)
        for writer in writers:
            _judge(
                result,
                writer,
                writers=writers,
                commits=commits,
                claims=claims,
                runs=runs,
                hwm=hwm,
                options=options,
                now=now,
            )
    result.seconds = time.monotonic() - started
    return result


def _same(run: OdibiRun, pipeline: str, node: str) -> bool:
    return run.node == node and run.pipeline in (pipeline, "", "unknown")


def _runs(project: Project, result: AuditResult) -> list[OdibiRun] | None:
    """Odibi's run rows of the audited nodes; None when they cannot be known."""
    if project.meta_runs is None:
        return None
    if not exists(project.meta_runs):
        result.notes.append(
            f"Odibi's meta_runs {project.meta_runs} does not exist: no run was ever logged, "
            "so every commit is unclaimed"
        )
        return []
    try:
        audited = {w.target for w in project.writers}
        nodes = {node for (_, node), target in project.targets.items() if target in audited}
        return read_meta_runs(project.meta_runs, nodes)
    except DeltaUnreadable as exc:
        result.error(project.meta_runs, str(exc))
        return None


def _hwm(project: Project, result: AuditResult) -> HwmHistory | None:
    """The saved values of every audited key, oldest first; None when they cannot be known."""
    keys = {w.state_key for w in project.writers}
    if not keys or project.meta_state is None:
        return None
    if not exists(project.meta_state):
        result.error(
            project.meta_state,
            f"HWM state (meta_state) {project.meta_state} does not exist: Odibi creates it "
            "with the system catalog, so it was deleted or the project points to another "
            "catalog; HWMs cannot be checked",
        )
        return None
    try:
        return read_hwm_history(project.meta_state, keys, result.notes)
    except DeltaUnreadable as exc:
        result.error(project.meta_state, str(exc))
        return None


def claim(commits: Sequence[Commit], runs: Sequence[OdibiRun]) -> dict[int, OdibiRun]:
    """Which run claims each data commit (by version); see the module docstring."""
    data = [c for c in commits if c.data]
    claims: dict[int, OdibiRun] = {}
    versions = {c.version for c in data}
    for run in runs:
        if run.version is not None and run.version in versions:
            claims.setdefault(run.version, run)
    previous: dict[str, datetime] = {}
    for run in runs:
        after = previous.get(run.node)
        previous[run.node] = run.logged_at
        if run.version is not None:
            continue
        window = [
            c
            for c in data
            if c.version not in claims and c.at <= run.logged_at and (after is None or c.at > after)
        ]
        if window:
            claims[window[-1].version] = run
    return claims


def _judge(
    result: AuditResult,
    writer: Writer,
    *,
    writers: Sequence[Writer],
    commits: Sequence[Commit],
    claims: dict[int, OdibiRun],
    runs: Sequence[OdibiRun] | None,
    hwm: HwmHistory | None,
    options: AuditOptions,
    now: datetime,
) -> None:
    first = writer is writers[0]
    mine = [
        c
        for c in commits
        if c.data and (claims[c.version].node == writer.node if c.version in claims else first)
    ]
    updates = hwm.updates.get(writer.state_key, []) if hwm is not None else None
    node = NodeAudit(
        writer,
        runs=sum(1 for r in runs or () if _same(r, writer.pipeline, writer.node)),
        hwm_updates=len(updates or ()),
    )
    result.nodes.append(node)
    horizon = now - options.grace
    # Nothing to judge a commit by: neither Odibi's run log nor an HWM history.
    judged = runs is not None or updates is not None
    for index, commit in enumerate(mine):
        if not judged or not _in_window(commit.at, options):
            continue
        if commit.at > horizon:
            node.in_flight += 1
            continue
        node.commits += 1
        following = mine[index + 1] if index + 1 < len(mine) else None
        run = claims.get(commit.version)
        saved = _saved_after(updates, commit, following) if updates is not None else None
        if runs is not None and run is None:
            result.findings.append(_unclaimed(writer, commit, saved, updates is not None))
        if (
            updates is not None
            and not saved
            and commit.rows != 0
            and not _blind(hwm, commit, following)
        ):
            result.findings.append(
                _not_saved(writer, commit, following=following, run=run, updates=updates, now=now)
            )
    for previous, update in zip(updates or (), (updates or [])[1:], strict=False):
        if _in_window(update.at, options) and older(update.value, previous.value):
            later = [c for c in mine if c.at >= update.at]
            result.findings.append(_regressed(writer, previous, update, later))


def _blind(hwm: HwmHistory | None, commit: Commit, following: Commit | None) -> bool:
    """An unreadable meta_state version falls after ``commit`` (and before the next one)."""
    return hwm is not None and any(
        t >= commit.at and (following is None or t < following.at) for t in hwm.blind
    )


def _in_window(at: datetime, options: AuditOptions) -> bool:
    return (options.since is None or at >= options.since) and (
        options.until is None or at <= options.until
    )


def _saved_after(
    updates: Sequence[HwmUpdate], commit: Commit, following: Commit | None
) -> list[HwmUpdate]:
    """The HWM updates made after ``commit`` and before the node's next commit."""
    return [u for u in updates if u.at >= commit.at and (following is None or u.at < following.at)]


def _before(updates: Sequence[HwmUpdate], at: datetime) -> HwmUpdate | None:
    earlier = [u for u in updates if u.at < at]
    return earlier[-1] if earlier else None


def _describe(commit: Commit) -> str:
    rows = "rows ?" if commit.rows is None else f"{commit.rows:,} rows"
    return f"version {commit.version} ({commit.operation}, {rows}) at {iso(commit.at)}"


def _unclaimed(
    writer: Writer, commit: Commit, saved: list[HwmUpdate] | None, known: bool
) -> Finding:
    detail = f"{_describe(commit)}: no row of Odibi's meta_runs claims it"
    if saved:
        last = saved[-1]
        detail += (
            f"; the HWM was saved after it (meta_state version {last.state_version} at "
            f"{iso(last.at)}: {last.value!r}), so data and checkpoint agree and only the run "
            "record is missing"
        )
    elif known and commit.rows != 0:
        detail += "; and no HWM was saved after it (see hwm_not_saved)"
    return Finding(
        "unclaimed_commit", writer, commit.at, [commit], detail, commit.rows, list(saved or ())
    )


def _not_saved(
    writer: Writer,
    commit: Commit,
    *,
    following: Commit | None,
    run: OdibiRun | None,
    updates: Sequence[HwmUpdate],
    now: datetime,
) -> Finding:
    before = _before(updates, commit.at)
    start = "the start" if before is None else repr(before.value)
    detail = f"{_describe(commit)} wrote rows, and HWM {writer.state_key} was not saved "
    appends = writer.mode in ("append", "")
    if following is not None:
        detail += (
            f"before the node's next commit ({_describe(following)}): that run read again "
            f"from {start}, "
            + (
                f"so the rows of version {commit.version} are in the target twice"
                if appends
                else f"and wrote them again ({writer.mode}: duplicated unless its keys match)"
            )
        )
    else:
        detail += f"since (until {iso(now)}): the next run will read again from {start} and " + (
            f"append the rows of version {commit.version} a second time"
            if appends
            else f"write the rows of version {commit.version} again ({writer.mode})"
        )
    # The run that made the commit logged success with its HWM saved: it was saved late.
    late = next((u for u in updates if u.at >= commit.at), None)
    saved_late = run is not None and not run.hwm_pending and not run.hwm_error
    if following is not None and late is not None and saved_late:
        detail += (
            f"; the HWM was next saved only after the node's next commit (meta_state version "
            f"{late.state_version} at {iso(late.at)}): two runs overlapped"
        )
    if run is None:
        detail += "; Odibi logged no run for it (the run ended before its pipeline logged)"
    elif run.hwm_error:
        detail += f"; Odibi's run {run.run_id} says hwm_error: {run.hwm_error}"
    elif run.hwm_pending:
        detail += f"; Odibi's run {run.run_id} says hwm_pending"
    return Finding(
        "hwm_not_saved",
        writer,
        commit.at,
        [commit] + ([following] if following else []),
        detail,
        commit.rows,
        hwm=[before] if before else [],
        runs=[run] if run else [],
    )


def _regressed(
    writer: Writer, previous: HwmUpdate, update: HwmUpdate, later: list[Commit]
) -> Finding:
    detail = (
        f"HWM {writer.state_key} went from {previous.value!r} (meta_state version "
        f"{previous.state_version}) back to {update.value!r} (version {update.state_version} "
        f"at {iso(update.at)})"
    )
    if later:
        detail += (
            f"; the commits after it re-read from the older value: versions "
            f"{', '.join(str(c.version) for c in later)}"
        )
    else:
        detail += "; no commit since: the next run will re-read from the older value"
    known = [c.rows for c in later if c.rows is not None]
    rows = sum(known) if known else None
    return Finding("hwm_regressed", writer, update.at, later, detail, rows, [previous, update])


def _order(value: Any) -> tuple[str, Any] | None:
    """A comparable form of an HWM value: ``("n", number)``, ``("t", datetime)``, ``("s", text)``;
    None for what has no order (objects, lists, booleans, null)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return ("n", float(value))
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return ("s", value)
    return ("t", moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))


def older(value: Any, than: Any) -> bool:
    """``value`` is before ``than`` (both of one kind; values of different kinds never are)."""
    a, b = _order(value), _order(than)
    if a is None or b is None or a[0] != b[0]:
        return False
    return bool(a[1] < b[1])
