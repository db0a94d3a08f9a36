"""Regenerate the marked command blocks of README.md and docs/*.md from real runs.

A marked block is one or more lines ``<!-- run: COMMAND -->`` directly followed by a fenced
``text`` block; the block is rewritten as ``$ COMMAND`` and its output, for each command in
turn. A command runs in bash (pipes work; ``odibi-observe`` is this checkout's CLI); ``echo
$?`` prints the exit status of the command before it. Commands run, file after file and in
the order written, in one fresh temporary directory (the working directory) that
:func:`prepare` fills with the scenarios the docs show (see :data:`SCENARIOS`), with a fixed
environment (``NO_COLOR=1``, ``COLUMNS=100``, ``TZ=UTC``, no ``ODIBI_OBSERVE_*``/``OTEL_*``
settings; ``$RUN_ID`` is the run id of the demo's failed ``enrich_customers``).

Volatile parts are replaced (documented substitutions, :data:`SUBSTITUTIONS`): UUIDs by
``<uuid>``, trace and span ids by ``<trace_id>``/``<span_id>``, ISO and ``YYYY-MM-DD
HH:MM:SS`` times by ``<time>``, the temporary directory by ``.``, process ids by ``<pid>``,
this machine's host name by ``<host>``, this checkout's path and the line numbers in a
stack trace by ``<checkout>`` and ``<n>``, and durations by ``<n> ms``/``in <n> s``. In tables
(the short ``MM-DD HH:MM:SS`` start, the 8-digit short run id, a duration in its column) the
placeholder keeps the width of what it replaces, so the columns stay aligned.

    python scripts/regen_docs.py           # rewrite the blocks
    python scripts/regen_docs.py --check   # exit 1 and print a diff when a block drifted
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(
    r"^(?P<cmds>(?:<!-- run: .+? -->\n)+)```text\n(?P<body>.*?)^```\n", re.MULTILINE | re.DOTALL
)
COMMAND = re.compile(r"^<!-- run: (?P<cmd>.+?) -->$", re.MULTILINE)

#: (pattern, replacement, alignment), applied in order to every output. An alignment ("<" or
#: ">") pads the replacement to the width of what it replaced, so a table's columns stay put.
SUBSTITUTIONS: tuple[tuple[str, str, str], ...] = (
    (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", ""),
    (r"\b[0-9a-f]{32}\b", "<trace_id>", ""),
    (r"\b[0-9a-f]{16}\b", "<span_id>", ""),
    # (not the example time of the --help texts)
    (r"(?!2024-05-01T06:00:00Z)\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?Z?", "<time>", ""),
    (r"\b\d{2}-\d{2} \d{2}:\d{2}:\d{2}\b", "<time>", "<"),
    (r"(?<= )\b[0-9a-f]{8}\b", "<id>", "<"),
    # bash pads the pid of a killed job to its own width
    (r"(?<=: ) *\d+(?= Killed )", "<pid>", ""),
    (r"(?<=\bpid[ =])\d+|(?<=\bprocess )\d+|(?<=\"pid\": )\d+", "<pid>", ""),
    (r" *\b\d[\d,]*(\.\d+)? ms\b", " <n> ms", ">"),
    (r"\bin \d+(\.\d+)? s\b", "in <n> s", ""),
    # the demo's table: its "ms" column holds bare numbers
    (r"(?m)[ \d]{6}\d(?=  yes  )", "<n>", ">"),
    # a stack trace's file names: the same whichever directory the checkout is in
    (re.escape(str(ROOT)) + r"(?=/)", "<checkout>", ""),
    # and their line numbers, which move with every edit of the file
    (r'(?<=\.py", line )\d+', "<n>", ""),
)

#: What :func:`prepare` builds in the working directory, for the docs to run commands on.
SCENARIOS = {
    ".venv/bin/odibi-observe": "this checkout's CLI where scripts/demo.sh installs it",
    "odibi-observe-demo": "odibi-observe demo (its default --out), as a new user runs it",
    "demo": "odibi-observe demo --out demo, then catalog upgrade",
    "other/catalog.db": "a file the demo did not write (the demo refuses to replace it)",
    "sample": "scripts/sample_catalog.py: the demo on top of 15 days of history",
    "faults": "the demo with four planted faults (see plant_faults)",
    "night": "the same four faults, for the walk-through in reconciliation.md",
    "partial": "the same four faults, repaired without a trace destination",
    "killed.py": "a pipeline that SIGKILLs itself inside its second node (KILLED_PY)",
    "health": "the sample's catalog with its findings table emptied (a first health pass)",
    "today": "odibi-observe demo --out today: runs still within the default grace period",
    "lineage": "four node runs in a catalog and an OpenLineage file, three faults (LINEAGE_PY)",
}


def _host_pattern() -> str:
    return r"(?P<pre>\bhost(?: +|=|\": \"| '|\.name ))" + re.escape(socket.gethostname()) + r"\b"


def _substitute(text: str) -> str:
    for pattern, replacement, align in (*SUBSTITUTIONS, (_host_pattern(), "<host>", "")):

        def one(match: re.Match[str], new: str = replacement, how: str = align) -> str:
            width = len(match.group(0))
            if "pre" in match.groupdict():
                return match.group("pre") + new
            if how == "<":
                return new.ljust(width)
            return new.rjust(width) if how == ">" else new

        text = re.sub(pattern, one, text)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ODIBI_OBSERVE_", "OTEL_"))}
    env.update(
        NO_COLOR="1",
        COLUMNS="100",
        TZ="UTC",
        HOME=str(work),
        LC_ALL="C.UTF-8",
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    demo = work / "odibi-observe-demo" / "catalog.db"
    if demo.exists():  # read each time: a block may run the demo again
        with contextlib.closing(sqlite3.connect(demo)) as db:
            found = db.execute(
                "SELECT run_id FROM meta_runs WHERE node_name = 'enrich_customers'"
            ).fetchone()
        if found:
            env["RUN_ID"] = str(found[0])
    return env


class Runner:
    """Runs the commands of the docs in ``work``, remembering the last exit status."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.status = 0

    def __call__(self, command: str) -> str:
        if command.strip() == "echo $?":
            text = f"{self.status}\n"
        else:
            script = (
                f'odibi-observe() {{ "{sys.executable}" -m odibi_observe.cli "$@"; }}\n{command}\n'
            )
            done = subprocess.run(  # noqa: S603
                ["bash", "-c", script],  # noqa: S607
                cwd=self.work,
                env=environment(self.work),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            self.status = done.returncode
            text = done.stdout + done.stderr
            text = text.replace(str(self.work) + "/", "").replace(str(self.work), ".")
            text = _substitute(text)
        return f"$ {command}\n{text}" + ("" if text.endswith("\n") or not text else "\n")


def run(command: str, work: Path) -> str:
    """``$ COMMAND`` and its (normalised) output."""
    return Runner(work)(command)


def _cli(work: Path, *args: str) -> None:
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "odibi_observe.cli", *args],
        cwd=work,
        env=environment(work),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def plant_faults(out: Path) -> None:
    """The demo in ``out``, then four faults, each one a discrepancy kind reconcile finds:
    the catalog row of ``clean_orders`` deleted (``missing_in_catalog``), the span of
    ``aggregate_revenue`` dropped from the traces (``missing_in_traces``), the row count of
    ``fetch_fx_rates`` edited to 1000 (``rows_mismatch``), and a ``load_warehouse`` run left
    RUNNING by a process that is gone, with no heartbeat since and no span
    (``stale_running``)."""
    sys.path.insert(0, str(ROOT))
    from odibi_observe.catalog import CatalogStore
    from odibi_observe.conventions import CATALOG_TABLE, RunStatus
    from odibi_observe.record import EventKind, RunEvent, RunRecord

    work = out.parent
    _cli(work, "demo", "--out", out.name)
    url = f"sqlite:///{out / 'catalog.db'}"
    _cli(work, "catalog", "upgrade", "--catalog", url)
    with contextlib.closing(sqlite3.connect(out / "catalog.db")) as db, db:
        db.execute(f"DELETE FROM {CATALOG_TABLE} WHERE node_name = 'clean_orders'")  # noqa: S608
        db.execute(
            f"UPDATE {CATALOG_TABLE} SET rows_processed = 1000 "  # noqa: S608
            "WHERE node_name = 'fetch_fx_rates'"
        )
        (pipeline_run, started) = db.execute(
            f"SELECT pipeline_run_id, min(started_at) FROM {CATALOG_TABLE}"  # noqa: S608
        ).fetchone()
    traces = out / "traces.jsonl"
    kept = []
    for line in traces.read_text(encoding="utf-8").splitlines():
        batch = json.loads(line)
        for resource in batch["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                scope["spans"] = [
                    s
                    for s in scope["spans"]
                    if '"aggregate_revenue"' not in json.dumps(s["attributes"])
                ]
        kept.append(json.dumps(batch, separators=(",", ":")))
    traces.write_text("\n".join(kept) + "\n", encoding="utf-8")
    from datetime import datetime, timezone

    start = datetime.fromisoformat(str(started)).replace(tzinfo=timezone.utc)
    started_ns = int(start.timestamp() * 1e9) - 120 * 10**9
    gone = subprocess.run(["true"], check=True)  # noqa: S607
    del gone
    record = RunRecord(
        run_id="54a26d71-d15f-4bd4-8543-eafbe9fbd57c",
        project="demo",
        pipeline="daily_sales",
        node="load_warehouse",
        environment="local",
        status=RunStatus.RUNNING,
        started_ns=started_ns,
        trace_id="4cb7d46e67a41b191dfdbd2169895eff",
        span_id="9d0b2c1e8f7a6b5c",
        host=socket.gethostname(),
        pid=2**22 - 7,
        pipeline_run_id=str(pipeline_run),
        heartbeat_ns=started_ns,
    )
    store = CatalogStore(url)
    try:
        store.upsert([RunEvent(EventKind.STARTED, dataclasses.replace(record))])
    finally:
        store.dispose()


#: ``killed.py``: the pipeline docs/cli.md kills to show ``sweep``.
KILLED_PY = '''\
"""A nightly pipeline whose process is SIGKILLed inside its second node."""
import os
import signal
import time

import odibi_observe as oo

# Inline: each heartbeat is in the catalog when it returns, so the run's last sign of life is
# always a heartbeat (with background delivery it could still be queued at the kill).
oo.configure(catalog_url="sqlite:///sweep.db", heartbeat_interval=0.2, mode="inline")


@oo.observe_node(pipeline="nightly")
def load_orders() -> None:
    oo.current_run().add_rows(1_250_000)


@oo.observe_node(pipeline="nightly")
def build_marts() -> None:
    time.sleep(1.0)  # five heartbeats
    os.kill(os.getpid(), signal.SIGKILL)


with oo.pipeline_run("nightly"):
    load_orders()
    build_marts()
'''


#: Four node runs recorded in ``catalog.db`` and, through the OpenLineage client's file
#: transport, ``lineage.jsonl``; then the lineage loses ``clean_orders``' terminal event and
#: all of ``publish``, one line is cut short, and ``load_orders``' row is rewritten to FAILURE.
LINEAGE_PY = r"""
import json, sqlite3
import odibi_observe as oo

oo.configure(catalog_url="sqlite:///catalog.db", project="shop", environment="prod",
             mode="inline", handle_sigterm=False)
ids = []
with oo.pipeline_run("sales"):
    for node in ("load_orders", "clean_orders", "aggregate_revenue", "publish"):
        with oo.node_run("sales", node) as run:
            run.rows_processed = 1200
            ids.append(run.run_id)
oo.shutdown()
kept = []
for line in open("lineage.jsonl", encoding="utf-8"):
    event = json.loads(line)
    run_id, kind = event["run"]["runId"], event["eventType"]
    if not (run_id == ids[1] and kind != "START") and run_id != ids[3]:
        kept.append(line)
kept.insert(2, kept[2][:150] + "\n")  # a write cut short
with open("lineage.jsonl", "w", encoding="utf-8") as out:
    out.writelines(kept)
with sqlite3.connect("catalog.db") as db:
    db.execute("UPDATE meta_runs SET status = 'FAILURE' WHERE run_id = ?", (ids[0],))
"""


def lineage_scenario(out: Path) -> None:
    """:data:`LINEAGE_PY` run in ``out`` with the OpenLineage file transport configured."""
    out.mkdir()
    env = environment(out.parent)
    env.update(
        OPENLINEAGE__TRANSPORT__TYPE="file",
        OPENLINEAGE__TRANSPORT__LOG_FILE_PATH=str(out / "lineage.jsonl"),
        OPENLINEAGE__TRANSPORT__APPEND="true",
    )
    subprocess.run(  # noqa: S603
        [sys.executable, "-c", LINEAGE_PY],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _venv_shim(work: Path) -> None:
    """``.venv/bin/odibi-observe`` in ``work``, as ``scripts/demo.sh`` leaves it: this
    checkout's CLI under the path the README's commands use."""
    shim = work / ".venv" / "bin" / "odibi-observe"
    shim.parent.mkdir(parents=True)
    shim.write_text(
        f"#!{sys.executable}\nimport sys\nfrom odibi_observe.cli import main\nsys.exit(main())\n",
        encoding="utf-8",
    )
    shim.chmod(0o755)


def prepare(work: Path) -> None:
    """Build :data:`SCENARIOS` in ``work``."""
    _venv_shim(work)
    (work / "killed.py").write_text(KILLED_PY, encoding="utf-8")
    sys.path.insert(0, str(ROOT))
    from odibi_observe.conventions import HEALTH_FINDINGS_TABLE

    _cli(work, "demo")
    _cli(work, "demo", "--out", "demo")
    _cli(work, "catalog", "upgrade", "--catalog", "sqlite:///demo/catalog.db")
    (work / "other").mkdir()
    (work / "other" / "catalog.db").write_text("not the demo's\n", encoding="utf-8")
    sys.path.insert(0, str(ROOT / "scripts"))
    import sample_catalog

    sample_catalog.build(work / "sample")
    plant_faults(work / "faults")
    plant_faults(work / "night")
    plant_faults(work / "partial")
    _cli(work, "demo", "--out", "today")
    (work / "health").mkdir()
    shutil.copy(work / "sample" / "demo" / "catalog.db", work / "health" / "catalog.db")
    with contextlib.closing(sqlite3.connect(work / "health" / "catalog.db")) as db, db:
        db.execute(f"DELETE FROM {HEALTH_FINDINGS_TABLE}")  # noqa: S608
    lineage_scenario(work / "lineage")


def regenerate(path: Path, work: Path, runner: Runner | None = None) -> str:
    text = path.read_text(encoding="utf-8")
    runner = runner or Runner(work)

    def block(match: re.Match[str]) -> str:
        cmds = COMMAND.findall(match.group("cmds"))
        body = "".join(runner(cmd) for cmd in cmds)
        return match.group("cmds") + f"```text\n{body}```\n"

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
        runner = Runner(work)
        for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
            old = path.read_text(encoding="utf-8")
            if "<!-- run: " not in old:
                continue
            new = regenerate(path, work, runner)
            if new == old:
                continue
            drift = True
            if args.check:
                sys.stdout.writelines(
                    difflib.unified_diff(
                        old.splitlines(True),
                        new.splitlines(True),
                        str(path.relative_to(root)),
                        str(path.relative_to(root)) + " (regenerated)",
                    )
                )
            else:
                path.write_text(new, encoding="utf-8")
                print(f"rewrote {path.relative_to(root)}")
    return 1 if drift and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
