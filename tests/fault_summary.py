"""Run the fault-injection suite and print what it proved: ``python -m tests.fault_summary``.

Runs ``tests/test_faults.py`` (real processes, signals, PostgreSQL, sidecar, OTLP receiver)
under pytest with ``ODIBI_OBSERVE_FAULT_SUMMARY`` set: each test appends its figures — faults
injected (trials), runs checked, runs lost, runs duplicated, runs CRASHED, runs CRASHED
although their decorator had finished (false crashes), seconds from a kill to the row being
CRASHED — to a JSON-lines file. Outcomes come from pytest's JUnit XML. Then prints one table
and the totals, and exits with pytest's status.

Figures are only as good as the test that wrote them: a test that failed still reports what
its last check saw, and the table says it failed.

Usage::

    python -m tests.fault_summary                 # the whole fault suite
    python -m tests.fault_summary -k sigkill      # extra arguments go to pytest
    python -m tests.fault_summary --json out.json -- -k busy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = (
    "test",
    "result",
    "trials",
    "runs",
    "lost",
    "dup",
    "crashed",
    "false",
    "to CRASHED s",
    "secs",
)


def outcomes(junit: Path) -> dict[str, str]:
    """``test name`` → passed/failed/skipped, from pytest's JUnit XML."""
    if not junit.exists():
        return {}
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            out[name] = "FAILED"
        elif case.find("skipped") is not None:
            out[name] = "skipped"
        else:
            out[name] = "passed"
    return out


def _times(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} med, {max(values):.2f} max"


def rows(figures: list[dict[str, Any]], results: dict[str, str]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for f in figures:
        name = f["test"].split("::", 1)[-1]
        out.append(
            (
                name,
                results.get(name, "?"),
                str(f["trials"]),
                str(f["runs"]),
                str(f["lost"]),
                str(f["duplicated"]),
                str(f["crashed"]),
                str(f["false_crashes"]),
                _times(f["time_to_crashed_s"]),
                f"{f['seconds']:.0f}",
            )
        )
    return out


def totals(figures: list[dict[str, Any]], results: dict[str, str]) -> dict[str, Any]:
    passed = sum(1 for f in figures if results.get(f["test"].split("::", 1)[-1]) == "passed")
    times = [t for f in figures for t in f["time_to_crashed_s"]]
    return {
        "tests": len(figures),
        "passed": passed,
        **{
            k: sum(f[k] for f in figures)
            for k in ("trials", "runs", "lost", "duplicated", "crashed", "false_crashes")
        },
        "time_to_crashed_s": {
            "n": len(times),
            "median": statistics.median(times) if times else None,
            "max": max(times, default=None),
        },
    }


def table(lines: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [COLUMNS, *lines]) for i in range(len(COLUMNS))]
    numeric = range(2, len(COLUMNS))

    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([fmt(COLUMNS), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fault_summary", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures and totals here")
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    with tempfile.TemporaryDirectory(prefix="oo-fault-summary-") as tmp:
        figures_file, junit = Path(tmp) / "figures.jsonl", Path(tmp) / "junit.xml"
        env = {**os.environ, "ODIBI_OBSERVE_FAULT_SUMMARY": str(figures_file)}
        command = [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_faults.py",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *pytest_args,
        ]
        print("$ " + " ".join(command[2:]), flush=True)
        status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        figures = (
            [json.loads(line) for line in figures_file.read_text().splitlines()]
            if figures_file.exists()
            else []
        )
        results = outcomes(junit)
    lines = rows(figures, results)
    total = totals(figures, results)
    t = total["time_to_crashed_s"]
    times = "-" if not t["n"] else f"{t['median']:.2f} med, {t['max']:.2f} max (n={t['n']})"
    print()
    print(table(lines))
    notes = [(f["test"].split("::", 1)[-1], f["note"]) for f in figures if f.get("note")]
    for name, note in notes:
        print(f"  {name}: {note}")
    print(
        f"\n{total['passed']}/{total['tests']} fault tests passed; {total['trials']} faults "
        f"injected; {total['runs']} runs checked: {total['lost']} lost, "
        f"{total['duplicated']} duplicated, {total['crashed']} CRASHED "
        f"({total['false_crashes']} of them runs that had finished); "
        f"kill → CRASHED: {times} s"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"tests": figures, "results": results, "totals": total}, indent=2) + "\n"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
