"""The code stays ``ruff``-clean, ``ruff format``-ted and ``mypy --strict`` clean (the package,
the tests and the benchmarks): checked here so CI enforces it.

Both run as the project configures them in ``pyproject.toml`` (rules, strictness, the
packages mypy checks), from the interpreter running the tests, on the checkout under test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_ruff_format_changes_nothing() -> None:
    """One layout for every file: ``ruff format`` is the formatter, and CI holds it."""
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_mypy_strict_finds_nothing() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
