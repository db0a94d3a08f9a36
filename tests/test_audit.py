"""``odibi-observe audit`` against real Odibi 3.15 projects, with nothing of odibi-observe in them.

Each project (built with ``tests/test_odibi_integration.make_project``: pandas engine, Odibi's
system catalog in Delta) has one incremental node, ``ingest_orders``: a CSV read with a
stateful HWM on ``updated_at`` and appended to a Delta table. Every finding is provoked for
real: a run SIGKILLed between its Delta commit and its ``set_hwm`` (made deterministic by
the project's own ``transforms.py``, which Odibi loads in the child: with
``AUDIT_BLOCK_SET_HWM=MARKER`` set, the state backend's ``set_hwm`` writes MARKER and waits to
be killed), a pipeline killed in a later node (commit and HWM saved, no run row), an HWM
edited back in ``meta_state`` as an operator resetting it would. Damaged input is real damage:
a truncated Delta log entry, a deleted ``meta_state``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from odibi_observe._cliargs import REPORT_FORMATS
from odibi_observe.audit.detect import claim, older
from odibi_observe.audit.model import Commit, OdibiRun
from odibi_observe.conventions import AUDIT_FINDING_KINDS, AUDIT_KEYS, AUDIT_REPORT_STEM
from tests.test_reconcile_support import cli

pytest.importorskip("odibi", reason="the audit reads real Odibi projects")
pytest.importorskip("deltalake", reason="Odibi's targets and system tables are Delta tables")

from tests.test_odibi_integration import chdir, make_project, step_node

K = AUDIT_KEYS
UNCLAIMED, NOT_SAVED, REGRESSED = AUDIT_FINDING_KINDS
KEY = "ingest_orders_hwm"

INCREMENTAL: dict[str, Any] = {
    "name": "ingest_orders",
    "read": {
        "connection": "raw",
        "format": "csv",
        "path": "events.csv",
        "incremental": {"mode": "stateful", "column": "updated_at"},
    },
    "write": {"connection": "lake", "format": "delta", "path": "bronze/orders", "mode": "append"},
}

#: Appended to the project's transforms.py, which Odibi imports in the process that runs the
#: pipeline: the window between the Delta commit and the HWM save, held open on request (until
#: the process is killed, or until the release file exists).
BLOCKER = """

import os as _os
import threading as _threading

if _os.environ.get("AUDIT_BLOCK_SET_HWM"):
    import time as _time

    import odibi.state as _state

    _set_hwm = _state.CatalogStateBackend.set_hwm

    def _blocked_set_hwm(self: Any, key: str, value: Any) -> None:
        Path(_os.environ["AUDIT_BLOCK_SET_HWM"]).write_text(f"{key}={value}\\n")
        release = Path(_os.environ.get("AUDIT_RELEASE_SET_HWM") or "/nonexistent/never")
        deadline = _time.monotonic() + 120
        while not release.exists() and _time.monotonic() < deadline:
            _time.sleep(0.02)
        _set_hwm(self, key, value)

    _state.CatalogStateBackend.set_hwm = _blocked_set_hwm
"""


def add_orders(project: Path, count: int) -> None:
    """``count`` new orders in the source, each updated one minute after the last."""
    path = project / "data" / "events.csv"
    existing = path.exists()
    start = sum(1 for _ in path.open()) - 1 if existing else 0
    with path.open("a", newline="") as file:
        writer = csv.writer(file)
        if not existing:
            writer.writerow(["order_id", "amount", "updated_at"])
        for i in range(start, start + count):
            writer.writerow([f"O{i:04d}", 10 + i, f"2026-01-01 {10 + i // 60:02d}:{i % 60:02d}:00"])


def new_project(root: Path, *extra: dict[str, Any]) -> Path:
    project = make_project(root, [INCREMENTAL, *extra]).parent
    with (project / "transforms.py").open("a") as file:
        file.write(BLOCKER)
    add_orders(project, 15)
    return project


def run_odibi(project: Path) -> None:
    """One pipeline run, in this process, as ``odibi run`` runs it (nothing instrumented)."""
    from odibi.pipeline import PipelineManager

    with chdir(project):
        results = PipelineManager.from_yaml(str(project / "odibi.yaml")).run()
    assert not results.failed, results.failed


def _command(name: str) -> list[str]:
    exe = shutil.which(name, path=os.path.dirname(sys.executable))
    assert exe, f"{name} is not installed next to {sys.executable}"
    return [exe]


def kill_when(project: Path, marker: Path, command: list[str], env: dict[str, str]) -> None:
    """Run ``command`` in ``project`` and SIGKILL it as soon as ``marker`` exists."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ODIBI_OBSERVE_", "OTEL_"))}
    child = subprocess.Popen(
        command,
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**clean, **env},
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the window never opened"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
        child.stderr.close()  # type: ignore[union-attr]
    assert child.returncode == -signal.SIGKILL


def target_rows(project: Path) -> tuple[int, int]:
    """(rows, distinct order ids) in the target."""
    from deltalake import DeltaTable

    frame = DeltaTable(str(project / "lake" / "bronze" / "orders")).to_pandas()
    return len(frame), frame["order_id"].nunique()


@dataclass
class Audit:
    code: int
    out: str
    err: str
    report: dict[str, Any]
    markdown: str
    html: str

    def kinds(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(f[K.kind], tuple(f[K.versions])) for f in self.report[K.findings]]

    def finding(self, kind: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [f for f in self.report[K.findings] if f[K.kind] == kind]
        assert len(found) == 1, found
        return found[0]


def audit(project: Path, out: Path, *args: str) -> Audit:
    code, stdout, stderr = cli(
        "audit", str(project / "odibi.yaml"), "--grace", "0s", "--out", str(out), *args
    )
    assert "Traceback" not in stdout + stderr
    files = {fmt: out / f"{AUDIT_REPORT_STEM}.{fmt}" for fmt in REPORT_FORMATS}
    return Audit(
        code,
        stdout,
        stderr,
        json.loads(files["json"].read_text()) if files["json"].exists() else {},
        files["md"].read_text() if files["md"].exists() else "",
        files["html"].read_text() if files["html"].exists() else "",
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project run twice, 15 then 5 new orders: two commits, each with its HWM saved."""
    project = new_project(tmp_path_factory.mktemp("audit") / "shop")
    run_odibi(project)
    add_orders(project, 5)
    run_odibi(project)
    return project


@pytest.fixture
def copy(two_runs: Path, tmp_path: Path) -> Path:
    """A copy of ``two_runs`` to damage or extend."""
    project = tmp_path / "shop"
    shutil.copytree(two_runs, project)
    config = (project / "odibi.yaml").read_text().replace(str(two_runs), str(project))
    (project / "odibi.yaml").write_text(config)
    return project


# -- findings -----------------------------------------------------------------------------------


def test_a_run_killed_between_its_commit_and_its_hwm_is_found_without_any_catalog(
    copy: Path, tmp_path: Path
) -> None:
    """Odibi records nothing of the killed run; its commit and the missing HWM say it all,
    and the next run's duplicates prove the finding right."""
    add_orders(copy, 5)
    marker = tmp_path / "in-set-hwm"
    kill_when(
        copy,
        marker,
        [*_command("odibi"), "run", "odibi.yaml"],
        {"AUDIT_BLOCK_SET_HWM": str(marker)},
    )
    assert marker.read_text().startswith(f"{KEY}=")

    found = audit(copy, tmp_path / "report")
    assert found.code == 1, found.out + found.err
    assert found.kinds() == [(UNCLAIMED, (2,)), (NOT_SAVED, (2,))]
    not_saved = found.finding(NOT_SAVED)
    assert not_saved[K.node] == "ingest_orders" and not_saved[K.rows] == 5
    assert not_saved[K.target] == str(copy / "lake" / "bronze" / "orders")
    assert not_saved[K.commits][0][K.operation] == "WRITE"
    assert not_saved[K.hwm][0][K.value] == "2026-01-01 10:19:00"  # what the next run reads from
    assert "the next run will read again from '2026-01-01 10:19:00'" in not_saved[K.detail]
    assert "Odibi logged no run for it" in not_saved[K.detail]
    assert found.finding(UNCLAIMED)[K.odibi_runs] == []
    assert found.report[K.summary][K.findings] == {UNCLAIMED: 1, NOT_SAVED: 1, REGRESSED: 0}

    # What the finding warns of: the next run appends the five rows again.
    run_odibi(copy)
    assert target_rows(copy) == (30, 25)
    again = audit(copy, tmp_path / "again")
    assert again.kinds() == [(UNCLAIMED, (2,)), (NOT_SAVED, (2, 3))]
    assert again.finding(NOT_SAVED)[K.rows] == 5
    assert "overlapped" not in again.finding(NOT_SAVED)[K.detail]
    assert (
        "before the node's next commit (version 3 (WRITE, 5 rows)"
        in again.finding(NOT_SAVED)[K.detail]
    )


def files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    }


def test_a_project_whose_every_commit_is_claimed_and_checkpointed_is_clean(
    two_runs: Path, tmp_path: Path
) -> None:
    before = files(two_runs)
    found = audit(two_runs, tmp_path / "report")
    assert files(two_runs) == before  # nothing of the project was written, nothing created
    assert found.code == 0, found.out + found.err
    assert found.report[K.findings] == [] and found.report[K.errors] == []
    summary = found.report[K.summary]
    assert summary[K.nodes_audited] == 1 and summary[K.commits_audited] == 2
    (node,) = found.report[K.nodes]
    assert (node[K.node], node[K.state_key], node[K.odibi_runs], node[K.hwm]) == (
        "ingest_orders",
        KEY,
        2,
        2,
    )
    assert "clean" in found.markdown and "CLEAN" in found.html
    assert "findings       0" in found.out


def test_two_runs_that_overlap_read_one_window_and_the_first_commit_is_hwm_not_saved(
    copy: Path, tmp_path: Path
) -> None:
    """The natural race: a second run starts while the first is between its commit and its
    HWM save, reads from the same HWM and appends the same rows; both runs succeed."""
    add_orders(copy, 5)
    marker, release = tmp_path / "in-set-hwm", tmp_path / "release"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ODIBI_OBSERVE_", "OTEL_"))}
    first = subprocess.Popen(
        [*_command("odibi"), "run", "odibi.yaml"],
        cwd=copy,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**clean, "AUDIT_BLOCK_SET_HWM": str(marker), "AUDIT_RELEASE_SET_HWM": str(release)},
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        run_odibi(copy)  # the second run, start to end, inside the first one's window
    finally:
        release.write_text("go\n")
        first.wait(90)
    assert target_rows(copy) == (30, 25)

    found = audit(copy, tmp_path / "report")
    assert found.code == 1, found.out + found.err
    assert found.kinds() == [(NOT_SAVED, (2, 3))]
    overlap = found.finding(NOT_SAVED)
    assert "next saved only after the node's next commit" in overlap[K.detail]
    assert "two runs overlapped" in overlap[K.detail]
    assert [r[K.version] for r in overlap[K.odibi_runs]] == [2]


def test_commits_another_node_makes_to_the_same_target_are_its_own(tmp_path: Path) -> None:
    """A full reload node appends to the incremental node's target: its commits are claimed
    by its own runs and judged neither unclaimed nor as the incremental node's."""
    reload = {
        "name": "reload_orders",
        "depends_on": ["ingest_orders"],
        "read": {"connection": "raw", "format": "csv", "path": "events.csv"},
        "write": INCREMENTAL["write"],
    }
    project = new_project(tmp_path / "shop", reload)
    run_odibi(project)
    found = audit(project, tmp_path / "report")
    assert found.code == 0, found.out + found.err
    assert found.report[K.summary][K.commits_audited] == 1
    assert target_rows(project) == (30, 15)


def test_a_pipeline_killed_after_the_hwm_leaves_a_commit_no_run_claims(tmp_path: Path) -> None:
    """Odibi logs a pipeline's rows when the pipeline ends: killed in a later node, the
    incremental node's commit and HWM are both saved and only its run row is missing."""
    marker = tmp_path / "publishing"
    project = new_project(
        tmp_path / "shop", step_node("publish", "hang", after="ingest_orders", marker=str(marker))
    )
    kill_when(project, marker, [*_command("odibi"), "run", "odibi.yaml"], {})
    found = audit(project, tmp_path / "report")
    assert found.code == 1, found.out + found.err
    assert found.kinds() == [(UNCLAIMED, (0,))]
    unclaimed = found.finding(UNCLAIMED)
    assert unclaimed[K.rows] == 15
    assert [u[K.value] for u in unclaimed[K.hwm]] == ["2026-01-01 10:14:00"]
    assert "data and checkpoint agree and only the run record is missing" in unclaimed[K.detail]


def test_an_hwm_edited_back_is_a_regression_and_the_rows_read_again_are_named(
    copy: Path, tmp_path: Path
) -> None:
    """An operator 'resets' the HWM to the first run's value with Odibi's own state backend;
    the next run re-reads what the second run had read."""
    from odibi.state import CatalogStateBackend

    system = copy / "lake" / "_system"
    backend = CatalogStateBackend(str(system / "meta_runs"), str(system / "meta_state"))
    backend.set_hwm(KEY, "2026-01-01 10:14:00")
    found = audit(copy, tmp_path / "report")
    assert found.code == 1, found.out + found.err
    assert found.kinds() == [(REGRESSED, ())]
    regressed = found.finding(REGRESSED)
    assert [u[K.value] for u in regressed[K.hwm]] == ["2026-01-01 10:19:00", "2026-01-01 10:14:00"]
    assert "no commit since: the next run will re-read from the older value" in regressed[K.detail]

    run_odibi(copy)
    assert target_rows(copy) == (25, 20)
    again = audit(copy, tmp_path / "again")
    assert again.kinds() == [(REGRESSED, (2,))]
    assert "re-read from the older value: versions 2" in again.finding(REGRESSED)[K.detail]


def test_with_our_catalog_each_finding_names_the_run_odibi_observe_recorded(
    copy: Path, tmp_path: Path, catalog_url: str
) -> None:
    """The same kill, under ``odibi-observe run`` in sidecar mode: the sweep closes the killed
    run as CRASHED, and ``--catalog`` puts that run beside the commit it left."""
    add_orders(copy, 5)
    marker, spool = tmp_path / "in-set-hwm", tmp_path / "spool"
    kill_when(
        copy,
        marker,
        [*_command("odibi-observe"), "run", "odibi.yaml"],
        {
            "AUDIT_BLOCK_SET_HWM": str(marker),
            "ODIBI_OBSERVE_MODE": "sidecar",
            "ODIBI_OBSERVE_SPOOL_DIR": str(spool),
        },
    )
    code, out, err = cli("sweep", "--catalog", catalog_url, "--spool-dir", str(spool))
    assert code == 0, out + err

    found = audit(copy, tmp_path / "report", "--catalog", catalog_url)
    assert found.code == 1, found.out + found.err
    assert found.kinds() == [(UNCLAIMED, (2,)), (NOT_SAVED, (2,))]
    (ours,) = found.finding(UNCLAIMED)[K.our_catalog]
    assert ours[K.status] == "CRASHED" and ours[K.covers] is True
    assert f"our catalog: run {ours[K.run_id]} CRASHED" in found.out
    assert ours[K.run_id] in found.markdown and ours[K.run_id] in found.html
    # The runs before it were not recorded by odibi-observe: nothing else is named.
    assert found.report[K.catalog] and "://" in found.report[K.catalog]


def test_without_a_run_in_our_catalog_the_finding_says_so(
    copy: Path, tmp_path: Path, sqlite_url: str
) -> None:
    from odibi_observe.catalog import CatalogStore

    CatalogStore(sqlite_url).ensure_schema()
    add_orders(copy, 5)
    marker = tmp_path / "in-set-hwm"
    kill_when(
        copy,
        marker,
        [*_command("odibi"), "run", "odibi.yaml"],
        {"AUDIT_BLOCK_SET_HWM": str(marker)},
    )
    found = audit(copy, tmp_path / "report", "--catalog", sqlite_url)
    assert found.finding(UNCLAIMED)[K.our_catalog] == [None]
    assert "our catalog: no run recorded" in found.out


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "what"),
    [
        ("bronze/orders", "target"),
        ("_system/meta_runs", "meta_runs"),
        ("_system/meta_state", "HWM state (meta_state)"),
    ],
)
def test_a_truncated_delta_log_entry_is_named_and_the_exit_status_is_2(
    copy: Path, tmp_path: Path, table: str, what: str
) -> None:
    entry = copy / "lake" / table / "_delta_log" / "00000000000000000001.json"
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    found = audit(copy, tmp_path / "report")
    assert found.code == 2, found.out + found.err
    (error,) = found.report[K.errors]
    assert error[K.message].startswith(f"{what} {copy / 'lake' / table} cannot be read")
    assert re.search(r"\(damaged log entry _delta_log/0{19}1\.json:\d+\): ", error[K.message])
    assert error[K.message] in found.err
    assert "Unreadable" in found.markdown and "damaged log entry" in found.html


def test_a_missing_meta_state_is_reported_not_mistaken_for_unsaved_hwms(
    copy: Path, tmp_path: Path
) -> None:
    shutil.rmtree(copy / "lake" / "_system" / "meta_state")
    found = audit(copy, tmp_path / "report")
    assert found.code == 2, found.out + found.err
    assert [f[K.kind] for f in found.report[K.findings]] == []
    (error,) = found.report[K.errors]
    assert "meta_state" in error[K.message] and "does not exist" in error[K.message]


def test_a_project_that_cannot_be_read_is_a_usage_error(tmp_path: Path) -> None:
    code, out, err = cli("audit", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r"))
    assert (code, out) == (2, "")
    assert err.startswith("odibi-observe: error: project") and "no such file" in err
    broken = tmp_path / "odibi.yaml"
    broken.write_text("project: [unclosed\n")
    code, _, err = cli("audit", str(broken), "--out", str(tmp_path / "r"))
    assert code == 2 and "cannot be read" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_help_says_what_is_found_and_shows_an_example() -> None:
    code, out, _ = cli("audit", "--help")
    assert code == 0
    for text in (
        *AUDIT_FINDING_KINDS,
        "examples:",
        "odibi-observe audit odibi.yaml",
        "exit status",
    ):
        assert text in out


def test_commits_within_the_grace_period_are_in_flight_not_judged(
    two_runs: Path, tmp_path: Path
) -> None:
    """Run during a pipeline, the audit must not call a commit whose HWM is about to be
    saved (or whose row is logged only when the pipeline ends) a finding."""
    code, out, err = cli("audit", str(two_runs / "odibi.yaml"), "--out", str(tmp_path / "r"))
    assert code == 0, out + err
    report = json.loads((tmp_path / "r" / "audit.json").read_text())
    assert report[K.summary][K.commits_in_flight] == 2
    assert report[K.summary][K.commits_audited] == 0
    assert "2 left in flight (grace)" in out
    later = audit(two_runs, tmp_path / "later", "--since", "2999-01-01")
    assert later.code == 0 and later.report[K.summary][K.commits_audited] == 0
    assert "nothing audited" in later.markdown


def test_every_key_of_the_report_is_a_named_convention(copy: Path, tmp_path: Path) -> None:
    """``audit.json`` and ``--json`` speak only the names of ``conventions.AUDIT_KEYS``."""
    add_orders(copy, 5)
    marker = tmp_path / "in-set-hwm"
    kill_when(
        copy,
        marker,
        [*_command("odibi"), "run", "odibi.yaml"],
        {"AUDIT_BLOCK_SET_HWM": str(marker)},
    )
    code, out, _ = cli(
        "audit",
        str(copy / "odibi.yaml"),
        "--grace",
        "0s",
        "--json",
        "--format",
        "json",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 1
    printed = json.loads(out)
    names = set(dataclasses.asdict(AUDIT_KEYS).values())
    kinds_by_name = set(AUDIT_FINDING_KINDS)

    def keys(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for key, item in value.items():
                yield key
                # finding counts are keyed by kind
                if key != K.findings or not isinstance(item, dict):
                    yield from keys(item)
        elif isinstance(value, list):
            for item in value:
                yield from keys(item)

    assert set(keys(printed)) <= names
    assert set(printed[K.summary][K.findings]) == kinds_by_name
    assert printed[K.written] == [str(tmp_path / "r" / "audit.json")]
    assert (
        json.loads((tmp_path / "r" / "audit.json").read_text())[K.findings] == printed[K.findings]
    )


def test_a_vacuumed_meta_state_version_is_a_note_not_a_false_alarm(
    copy: Path, tmp_path: Path
) -> None:
    """The file the first HWM save added is gone: that save cannot be seen, and the commit
    before it is left unjudged (and said so) rather than called hwm_not_saved."""
    state = copy / "lake" / "_system" / "meta_state"
    first_save = (state / "_delta_log" / "00000000000000000001.json").read_text().splitlines()
    (added,) = [json.loads(x)["add"]["path"] for x in first_save if '"add"' in x]
    (state / added).unlink()
    found = audit(copy, tmp_path / "report")
    assert found.code == 0, found.out + found.err
    assert found.report[K.findings] == []
    (note,) = [n for n in found.report[K.notes] if "could not be read" in n]
    assert "first 1" in note and "not judged hwm_not_saved" in note


# -- the rules, one by one ----------------------------------------------------------------------


def _commit(version: int, minute: int, rows: int | None = 5) -> Commit:
    return Commit(
        version, datetime(2026, 1, 1, 10, minute, tzinfo=timezone.utc), "WRITE", rows, True
    )


def _run(node: str, minute: int, version: int | None) -> OdibiRun:
    return OdibiRun(
        run_id=f"r{minute}",
        pipeline="sales",
        node=node,
        status="SUCCESS",
        rows=5,
        duration_ms=100,
        logged_at=datetime(2026, 1, 1, 10, minute, 30, tzinfo=timezone.utc),
        version=version,
        hwm_pending=False,
        hwm_error=None,
    )


def test_a_row_without_a_version_claims_the_nodes_latest_commit_since_its_previous_row() -> None:
    commits = [_commit(0, 1), _commit(1, 2), _commit(2, 3), _commit(3, 5)]
    runs = [_run("a", 1, None), _run("a", 3, None), _run("a", 5, 3)]
    claims = claim(commits, runs)
    # Version 1 (minute 2) is the killed run's: the row logged at 10:03:30 claims version 2.
    assert {v: r.run_id for v, r in claims.items()} == {0: "r1", 2: "r3", 3: "r5"}


def test_hwm_values_compare_only_as_one_kind() -> None:
    assert older("2026-01-01 10:14:00", "2026-01-01T10:19:00Z")
    assert not older("2026-01-01 10:19:00", "2026-01-01 10:14:00")
    assert older(99, 100) and not older(100, 99.5)
    assert older("O0099", "O0100")
    assert not older(99, "2026-01-01") and not older({"a": 1}, {"a": 2}) and not older(None, 1)
