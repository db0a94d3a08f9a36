"""The marked command blocks of the docs are the output of real runs (scripts/regen_docs.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from odibi_observe.catalog.migrate import head_revision

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "regen_docs.py"


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--root", str(root)],
                          capture_output=True, text=True, timeout=600, check=False)


def test_docs_have_not_drifted() -> None:
    done = _check(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_a_drifted_block_fails_the_check_with_a_diff(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    cli = tmp_path / "docs" / "cli.md"
    text = cli.read_text(encoding="utf-8")
    current = f"meta_runs is at revision {head_revision()}"
    assert current in text
    cli.write_text(text.replace(current, "meta_runs is at revision 0001"), encoding="utf-8")
    done = _check(tmp_path)
    assert done.returncode == 1
    assert "-sqlite:///catalog.db: meta_runs is at revision 0001" in done.stdout
    assert f"+sqlite:///catalog.db: {current}" in done.stdout
