"""The marked command blocks of the docs are the output of real runs (scripts/regen_docs.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "regen_docs.py"


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


#: What the ``catalog upgrade`` block of cli.md is made to say: a catalog revision long past.
PLANTED = "meta_runs is at revision 0001"


@dataclass(frozen=True)
class Checked:
    """One ``--check`` over a copy of the docs with one block planted out of date."""

    done: subprocess.CompletedProcess[str]
    real: str  # the catalog revision cli.md shows


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Checked:
    """The check regenerates every marked block from real runs (most of a minute), so it runs
    once: over a copy of the docs where cli.md shows an old catalog revision. The diff must
    then hold that block and nothing else, which shows both that the check catches a drifted
    block and that no other block has drifted."""
    copy = tmp_path_factory.mktemp("docs-check")
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "README.md", copy / "README.md")
    cli = copy / "docs" / "cli.md"
    text = cli.read_text(encoding="utf-8")
    found = re.search(r"meta_runs is at revision (\S+)", text)
    assert found, "cli.md shows the catalog revision"
    real = found.group(1)
    cli.write_text(
        text.replace(f"meta_runs is at revision {real}", PLANTED),
        encoding="utf-8",
    )
    return Checked(_check(copy), real)


def _changed_lines(diff: str) -> list[str]:
    """The lines a unified diff removes or adds (not its file headers)."""
    return [
        line
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++ ", "--- "))
    ]


def test_docs_have_not_drifted(checked: Checked) -> None:
    assert _changed_lines(checked.done.stdout) == [
        f"-sqlite:///catalog.db: {PLANTED}",
        f"+sqlite:///catalog.db: meta_runs is at revision {checked.real}",
    ], checked.done.stdout[-4000:] + checked.done.stderr[-2000:]


def test_a_drifted_block_fails_the_check_with_a_diff(checked: Checked) -> None:
    assert checked.done.returncode == 1, checked.done.stderr[-2000:]
    assert "--- docs/cli.md\n+++ docs/cli.md (regenerated)\n" in checked.done.stdout


#: Blocks that show ``odibi-observe`` output but cannot come from a run of
#: scripts/regen_docs.py here, by (file, first command), with the reason. Any other block
#: showing a ``$ odibi-observe`` command must be marked ``<!-- run: ... -->``.
UNMARKED: dict[tuple[str, str], str] = {
    **{
        ("docs/exactly-once.md", command): "an Odibi run SIGKILLed inside set_hwm "
        "(tests/test_odibi_phases.py): not built by the script"
        for command in (
            "$ odibi-observe sweep --catalog sqlite:////tmp/phases_doc/run/catalog.db",
            "$ odibi-observe runs --catalog sqlite:////tmp/phases_doc/run/catalog.db",
            "$ odibi-observe reconcile --catalog sqlite:////tmp/phases_doc/run/catalog.db "
            "--traces otlp-json:/tmp/phases_doc/run/traces.jsonl --since 2000-01-01T00:00:00 "
            "--grace 0s --out /tmp/phases_doc/run/report",
        )
    },
    (
        "docs/audit.md",
        "$ odibi-observe audit odibi.yaml --grace 0s --catalog catalog.db --out audit",
    ): "a real Odibi project with a run SIGKILLed inside set_hwm; tests/test_audit.py builds it",
    (
        "docs/audit.md",
        "$ odibi-observe audit odibi.yaml --grace 0s --out audit",
    ): "the same project after its HWM was set back",
    (
        "docs/health.md",
        "$ odibi-observe health --catalog sqlite:///catalog.db --metrics-textfile health.prom",
    ): "memory_growth on a history of nodes with planted leaks and a limit: not built yet",
    (
        "docs/health.md",
        "$ odibi-observe runs --catalog sqlite:///catalog.db",
    ): "nodes holding 200 MiB and killed by SIGKILL/SIGTERM: not built by the script yet",
    (
        "docs/cli.md",
        "$ odibi-observe dashboards build --check",
    ): "checks the checkout's dashboards/ directory, not the scratch directory",
    (
        "docs/odibi.md",
        "$ odibi-observe run --catalog sqlite:///catalog.db --traces-file traces.jsonl odibi.yaml",
    ): "runs a real Odibi project (pandas engine, its own files); not built by the script yet",
    (
        "docs/odibi.md",
        "$ odibi-observe run --catalog sqlite:///catalog.db --traces-file "
        "traces.jsonl odibi.yaml --node revenue",
    ): "the same Odibi project, one node",
    (
        "docs/odibi.md",
        "$ odibi-observe runs --catalog sqlite:///catalog.db",
    ): "the runs of that Odibi project (the table predates the grouped runs view)",
    (
        "docs/odibi.md",
        "$ odibi-observe reconcile --catalog odibi-delta:lake/_system/meta_runs "
        "--traces otlp-json:traces.jsonl --last 1h --grace 0s --out "
        "reconcile-report",
    ): "reads Odibi's own Delta table, written by a real Odibi run",
    (
        "docs/odibi.md",
        "$ odibi-observe run --catalog sqlite:///catalog.db --traces-file "
        "traces.jsonl odibi.yaml --parallel --on-error fail_fast",
    ): "the same Odibi project, one node more, stopped by fail_fast",
    (
        "docs/odibi.md",
        "$ odibi-observe reconcile --catalog sqlite:///catalog.db "
        "--traces otlp-json:traces.jsonl --last 1h --grace 0s --out reconcile-report",
    ): "the records of that fail-fast Odibi run",
    (
        "docs/odibi.md",
        "$ odibi-observe run --catalog sqlite:///catalog.db --traces-file "
        "traces.jsonl odibi.yaml --node revenue_reprot",
    ): "the same Odibi project, a node name Odibi does not know",
    (
        "docs/odibi.md",
        '$ cp catalog.db tampered.db && sqlite3 tampered.db "UPDATE meta_pipeline_runs SET '
        'nodes_skipped = 2"',
    ): "the records of that fail-fast Odibi run, one count changed",
    (
        "docs/exactly-once.md",
        "$ odibi-observe runs --catalog sqlite:///catalog.db --status SKIPPED",
    ): "the skipped runs of the fail-fast Odibi run of docs/odibi.md",
    (
        "docs/operations.md",
        "$ odibi-observe sweep --catalog sqlite:///sweep.db --spool-dir spool",
    ): "a sidecar-mode pipeline killed with its ending still spooled",
    (
        "docs/reconciliation.md",
        "$ odibi-observe reconcile --catalog sqlite:///odibi/odibi.db "
        "--traces otlp-json:odibi/traces.jsonl --last 1h --grace 0s "
        "--out odibi/report",
    ): "Odibi's own SQL meta_runs, written by a real Odibi run and dry run",
}

FENCE = re.compile(
    r"^(?P<marks>(?:<!-- run: .+? -->\n)*)```[a-z]*\n(?P<body>.*?)^```\n", re.MULTILINE | re.DOTALL
)


def _unmarked_blocks(root: Path) -> set[tuple[str, str]]:
    """(file, first command) of each fenced block with a ``$ odibi-observe`` line and no
    run marker."""
    found = set()
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for match in FENCE.finditer(path.read_text(encoding="utf-8")):
            lines = match.group("body").splitlines()
            if match.group("marks") or not any(
                line.lstrip().startswith("$ odibi-observe") for line in lines
            ):
                continue
            first = next(line.strip() for line in lines if line.lstrip().startswith("$ "))
            found.add((str(path.relative_to(root)), first))
    return found


def test_every_block_of_command_output_is_marked_or_allowed() -> None:
    unmarked = _unmarked_blocks(ROOT)
    assert unmarked <= set(UNMARKED), (
        "blocks showing odibi-observe output must be marked <!-- run: COMMAND --> (or be "
        f"allowed, with a reason, in UNMARKED): {sorted(unmarked - set(UNMARKED))}"
    )
    assert set(UNMARKED) <= unmarked, f"allowed but gone: {sorted(set(UNMARKED) - unmarked)}"


def test_a_new_unmarked_block_is_refused(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    with (tmp_path / "docs" / "cli.md").open("a", encoding="utf-8") as out:
        out.write("\n```text\n$ odibi-observe runs --catalog x.db\nmade up\n```\n")
    assert ("docs/cli.md", "$ odibi-observe runs --catalog x.db") in _unmarked_blocks(tmp_path)


def test_readme_quickstart_is_the_two_scripts_and_install_from_a_checkout() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = quick.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]
    for script in commands:
        assert (ROOT / script).is_file() and os.access(ROOT / script, os.X_OK), script
    assert '"$VENV/bin/odibi-observe" demo' in (ROOT / "scripts" / "demo.sh").read_text()
    assert "<!-- run: .venv/bin/odibi-observe demo -->" in quick
    install = readme.split("## Installing", 1)[1].split("\n## ", 1)[0]
    assert "from a checkout" in install and "pip install ." in install
