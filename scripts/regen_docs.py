"""Regenerate the marked command blocks of README.md and docs/*.md from real runs.

A marked block is a line ``<!-- run: COMMAND -->`` directly followed by a fenced ``text``
block; the block is rewritten as ``$ COMMAND`` and the command's output. Commands run in a
fresh temporary directory (the working directory) holding a demo catalog (``odibi-observe
demo --out demo``, then ``catalog upgrade``), with a fixed environment (``NO_COLOR=1``,
``COLUMNS=100``, ``TZ=UTC``, no ``ODIBI_OBSERVE_*``/``OTEL_*`` settings).

Volatile parts are replaced (documented substitutions, :data:`SUBSTITUTIONS`): UUIDs by
``<uuid>``, ISO and ``YYYY-MM-DD HH:MM:SS`` times by ``<time>``, the temporary directory by
``.``, and durations in ms/s by ``<n> ms``/``<n> s``.

    python scripts/regen_docs.py           # rewrite the blocks
    python scripts/regen_docs.py --check   # exit 1 and print a diff when a block drifted
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"^<!-- run: (?P<cmd>.+?) -->\n```text\n(?P<body>.*?)^```\n",
                  re.MULTILINE | re.DOTALL)

#: (pattern, replacement), applied in order to every output.
SUBSTITUTIONS = (
    (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>"),
    (r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?Z?", "<time>"),
    (r"\b\d+(\.\d+)? ms\b", "<n> ms"),
    (r"\bin \d+(\.\d+)? s\b", "in <n> s"),
)


def environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ODIBI_OBSERVE_", "OTEL_"))}
    env.update(NO_COLOR="1", COLUMNS="100", TZ="UTC", HOME=str(work), LC_ALL="C.UTF-8")
    return env


def run(command: str, work: Path) -> str:
    argv = shlex.split(command)
    if argv and argv[0] == "odibi-observe":
        argv = [sys.executable, "-m", "odibi_observe.cli", *argv[1:]]
    done = subprocess.run(argv, cwd=work, env=environment(work), capture_output=True,  # noqa: S603
                          text=True, timeout=300, check=False)
    text = done.stdout + done.stderr
    text = text.replace(str(work) + "/", "").replace(str(work), ".")
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    return f"$ {command}\n{text}" + ("" if text.endswith("\n") or not text else "\n")


def prepare(work: Path) -> None:
    for command in ("odibi-observe demo --out demo",
                    "odibi-observe catalog upgrade --catalog sqlite:///demo/catalog.db"):
        run(command, work)


def regenerate(path: Path, work: Path) -> str:
    text = path.read_text(encoding="utf-8")

    def block(match: re.Match[str]) -> str:
        cmd = match.group("cmd")
        return f"<!-- run: {cmd} -->\n```text\n{run(cmd, work)}```\n"

    return MARK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on drift, with a diff")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this one)")
    args = parser.parse_args(argv)
    root: Path = args.root
    drift = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work)
        for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
            old = path.read_text(encoding="utf-8")
            if "<!-- run: " not in old:
                continue
            new = regenerate(path, work)
            if new == old:
                continue
            drift = True
            if args.check:
                sys.stdout.writelines(difflib.unified_diff(
                    old.splitlines(True), new.splitlines(True),
                    str(path.relative_to(root)), str(path.relative_to(root)) + " (regenerated)"))
            else:
                path.write_text(new, encoding="utf-8")
                print(f"rewrote {path.relative_to(root)}")
    return 1 if drift and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
