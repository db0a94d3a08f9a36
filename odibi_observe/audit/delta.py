"""Reading Odibi's Delta tables as they are, with ``deltalake`` (what Odibi's pandas engine
writes them with): a target's commit history, the versions of ``meta_state`` and the rows of
``meta_runs``. Nothing is written, no table is created.

A table that cannot be read raises :class:`DeltaUnreadable` with one line that names the
table and, where a log entry is damaged, the file and line (``deltalake`` says only "Json
error"). A table that does not exist yet is not an error for a target (the node never wrote)
and is for the state (the HWMs are gone, or the project points elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from odibi_observe.audit.model import Commit, HwmUpdate, OdibiRun
from odibi_observe.conventions import ODIBI_META_RUNS_COLUMNS

#: Operations that write rows, as Delta (Spark) and delta-rs name them. Anything else
#: (OPTIMIZE, VACUUM, SET TBLPROPERTIES, DELETE, RESTORE, ...) is not an incremental load.
DATA_OPERATIONS: Final = frozenset(
    {
        "WRITE",
        "MERGE",
        "STREAMING UPDATE",
        "COPY INTO",
        "CREATE TABLE AS SELECT",
        "CREATE OR REPLACE TABLE AS SELECT",
        "REPLACE TABLE AS SELECT",
    }
)
#: Where a commit says how many rows it wrote: Spark's name first, then delta-rs's.
ROW_METRICS: Final = (
    "numOutputRows",
    "num_added_rows",
    "numTargetRowsInserted",
    "num_target_rows_inserted",
    "num_output_rows",
)


class DeltaUnreadable(Exception):
    """A Delta table exists and cannot be read. ``str()`` is the line to print."""


def exists(path: str) -> bool:
    """A Delta table is at ``path`` (it has a ``_delta_log``)."""
    return (Path(path) / "_delta_log").is_dir()


def _open(path: str, what: str) -> Any:
    try:
        from deltalake import DeltaTable
    except ImportError:
        raise DeltaUnreadable(
            f"{what} {path}: reading Delta tables needs deltalake: pip install "
            "'odibi-observe[odibi]'"
        ) from None
    try:
        return DeltaTable(path)
    except Exception as exc:
        raise DeltaUnreadable(_unreadable(path, what, exc)) from None


def _unreadable(path: str, what: str, exc: BaseException) -> str:
    """One line: the table, the damaged log entry when one is, and deltalake's reason."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    damaged = damaged_log_entry(path)
    where = f" (damaged log entry {damaged})" if damaged else ""
    return f"{what} {path} cannot be read{where}: {reason}"


def damaged_log_entry(path: str) -> str | None:
    """``_delta_log/<version>.json:<line>`` of the first log line that is not JSON, if any."""
    log = Path(path) / "_delta_log"
    try:
        entries = sorted(log.glob("*.json"))
    except OSError:
        return None
    for entry in entries:
        try:
            lines = entry.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return f"{entry.relative_to(log.parent)}"
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError:
                return f"{entry.relative_to(log.parent)}:{number}"
    return None


def _at(ms: object) -> datetime | None:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _rows(metrics: object) -> int | None:
    if not isinstance(metrics, dict):
        return None
    for name in ROW_METRICS:
        value = metrics.get(name)
        if value is None:
            continue
        try:
            return int(value)
        except (TypeError, ValueError):
            continue
    return None


def read_commits(path: str) -> list[Commit]:
    """The commits of the target at ``path``, oldest first (empty: no table yet)."""
    if not exists(path):
        return []
    table = _open(path, "target")
    try:
        history = table.history()
    except Exception as exc:
        raise DeltaUnreadable(_unreadable(path, "target", exc)) from None
    commits = []
    for entry in history:
        at, version = _at(entry.get("timestamp")), entry.get("version")
        if at is None or not isinstance(version, int):
            continue
        operation = str(entry.get("operation") or "")
        commits.append(
            Commit(
                version=version,
                at=at,
                operation=operation,
                rows=_rows(entry.get("operationMetrics")),
                data=operation.upper() in DATA_OPERATIONS,
            )
        )
    return sorted(commits, key=lambda c: c.version)


def _decode(value: object) -> Any:
    """An HWM value as Odibi stored it (``json.dumps(value, default=str)``)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


_STATE_COLUMNS: Final = ["key", "value", "updated_at"]


@dataclass
class HwmHistory:
    """The saved values of each key, oldest first, and when meta_state could not be read."""

    updates: dict[str, list[HwmUpdate]]
    #: Commit times of the versions that could not be read: an HWM may have been saved then.
    blind: list[datetime] = field(default_factory=list)


def read_hwm_history(path: str, keys: Iterable[str], notes: list[str]) -> HwmHistory:
    """Every saved value of each of ``keys`` in ``meta_state`` at ``path``, oldest first.

    Odibi saves an HWM with a ``MERGE`` on ``key``, one Delta version per ``set_hwm``, so a
    key's value counts as saved in the first version where its ``(value, updated_at)``
    differs from what was seen before. Each version is read from the files its commit added
    (a merge rewrites the rows it matched into a new file): about a millisecond a version,
    where loading every version as a table costs twenty. A version whose commit entry is gone
    (log retention) or names files that are gone (vacuum) is read as a snapshot if it can be,
    and what could not be seen is said in ``notes``.
    """
    wanted = set(keys)
    table = _open(path, "HWM state (meta_state)")
    try:
        history = sorted(table.history(), key=lambda h: int(h.get("version", -1)))
    except Exception as exc:
        raise DeltaUnreadable(_unreadable(path, "HWM state (meta_state)", exc)) from None
    seen: dict[str, tuple[Any, Any]] = {}
    updates: dict[str, list[HwmUpdate]] = {k: [] for k in wanted}
    unreadable: list[int] = []
    blind: list[datetime] = []
    for entry in history:
        version, at = entry.get("version"), _at(entry.get("timestamp"))
        if not isinstance(version, int) or at is None:
            continue
        rows = _added_rows(path, version)
        if rows is None:
            try:
                table.load_as_version(version)
                rows = table.to_pyarrow_table(columns=_STATE_COLUMNS).to_pylist()
            except Exception:
                unreadable.append(version)
                blind.append(at)
                continue
        for row in _latest_per_key(rows, wanted):
            key = str(row["key"])
            state = (row.get("value"), row.get("updated_at"))
            previous = seen.get(key)
            if previous == state:
                continue
            seen[key] = state
            updates[key].append(
                HwmUpdate(
                    key=key,
                    state_version=version,
                    at=at,
                    value=_decode(state[0]),
                    previous=_decode(previous[0]) if previous else None,
                )
            )
    if unreadable:
        notes.append(
            f"meta_state {path}: {len(unreadable)} version(s) could not be read (files "
            f"vacuumed?), first {unreadable[0]}: HWM updates in them are not seen, and "
            "commits an HWM may have been saved after then are not judged hwm_not_saved"
        )
    return HwmHistory(updates, blind)


def _added_rows(path: str, version: int) -> list[dict[str, Any]] | None:
    """The rows of the files commit ``version`` added; None when they cannot be read so
    (no commit entry, a file elsewhere than under the table, a file gone)."""
    from urllib.parse import unquote

    import pyarrow.parquet as pq

    entry = Path(path) / "_delta_log" / f"{version:020d}.json"
    rows: list[dict[str, Any]] = []
    try:
        for line in entry.read_text(encoding="utf-8").splitlines():
            action = json.loads(line) if line.strip() else {}
            added = action.get("add") if isinstance(action, dict) else None
            if not isinstance(added, dict):
                continue
            name = unquote(str(added.get("path", "")))
            if "://" in name or added.get("deletionVector"):
                return None
            rows += pq.read_table(Path(path) / name, columns=_STATE_COLUMNS).to_pylist()
    except (OSError, ValueError, KeyError):
        return None
    return rows


def _latest_per_key(rows: Sequence[dict[str, Any]], wanted: set[str]) -> list[dict[str, Any]]:
    """One row per wanted key: the newest ``updated_at`` (Odibi's own latest-wins rule)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row.get("key")
        if key not in wanted:
            continue
        current = best.get(str(key))
        if current is None or _later(row.get("updated_at"), current.get("updated_at")):
            best[str(key)] = row
    return list(best.values())


def _later(a: object, b: object) -> bool:
    if isinstance(a, datetime) and isinstance(b, datetime):
        try:
            return a > b
        except TypeError:
            return False
    return b is None and a is not None


def read_meta_runs(path: str, nodes: Iterable[str]) -> list[OdibiRun]:
    """The rows of Odibi's ``meta_runs`` for ``nodes``, oldest first (empty: no table)."""
    if not exists(path):
        return []
    table = _open(path, "meta_runs")
    try:
        import pyarrow.compute as pc

        dataset = table.to_pyarrow_dataset()
        names = set(dataset.schema.names)
        columns = [c for c in ODIBI_META_RUNS_COLUMNS if c in names]
        if "node_name" not in names or "timestamp" not in names:
            raise DeltaUnreadable(
                f"meta_runs {path} has no node_name or timestamp column: not Odibi's meta_runs"
            )
        rows = dataset.to_table(
            columns=columns, filter=pc.field("node_name").isin(sorted(set(nodes)))
        ).to_pylist()
    except DeltaUnreadable:
        raise
    except Exception as exc:
        raise DeltaUnreadable(_unreadable(path, "meta_runs", exc)) from None
    runs = [run for run in (OdibiRun.from_row(row) for row in rows) if run is not None]
    return sorted(runs, key=lambda r: r.logged_at)
