"""Helpers of the fault tests: the invariant checker, the processes, a throwaway PostgreSQL.

The invariant every fault scenario ends with is :func:`assert_every_run_recorded`: every run a
pipeline process started is in the catalog exactly once with a terminal status, and has
exactly one odibi span whose ids, times and status are the catalog's.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from odibi_observe._otlp_json import SpanView, read_spans
from odibi_observe.conventions import FIELDS
from odibi_observe.record import datetime_to_ns

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = str(ROOT / "tests" / "fault_pipeline.py")
CLI = ["-c", "import sys; from odibi_observe.cli import main; sys.exit(main())"]
TERMINAL = {"SUCCESS", "FAILURE", "CRASHED"}
RUN_ID_ATTR = FIELDS.run_id.attribute or ""
STATUS_ATTR = FIELDS.status.attribute or ""
STATUS_CODE_ERROR = 2  # opentelemetry.proto Status.STATUS_CODE_ERROR

T = TypeVar("T")


# -- what the pipeline processes say they started ----------------------------------------------


@dataclass
class Started:
    """Parsed started files: ``S <run_id> <pid>`` and ``E <run_id> <STATUS>`` lines."""

    pids: dict[str, int] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    @property
    def run_ids(self) -> set[str]:
        return set(self.pids)


def read_started(paths: Iterable[str | os.PathLike[str]]) -> Started:
    out = Started()
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) != 3:
                    continue  # a line cut by SIGKILL mid-write cannot be whole; none expected
                kind, run_id, value = parts
                if kind == "S":
                    assert run_id not in out.pids, f"run id {run_id} started twice"
                    out.pids[run_id] = int(value)
                    out.order.append(run_id)
                elif kind == "E":
                    out.ended[run_id] = value
    return out


def read_started_glob(pattern: str) -> Started:
    return read_started(sorted(glob.glob(pattern)))


# -- the figures the fault summary prints ------------------------------------------------------


@dataclass
class FaultFigures:
    """What one fault test measured, for ``python -m tests.fault_summary``.

    ``runs``, ``lost`` (not in the catalog, or without a span), ``duplicated`` (two catalog
    rows, or two different spans) and ``false_crashes`` (CRASHED although the decorator had
    finished) are filled in by the last :func:`assert_every_run_recorded` of the test (the
    one that passed, when it passed);
    ``trials`` (faults injected) and ``time_to_crashed_s`` (fault → row CRASHED) by the test.
    """

    trials: int = 1
    runs: int = 0
    lost: int = 0
    duplicated: int = 0
    crashed: int = 0
    false_crashes: int = 0
    time_to_crashed_s: list[float] = field(default_factory=list)
    note: str = ""  # one line the summary prints under the table (a rate, a load figure)


#: The figures of the fault test running now (reset before each test of tests/test_faults.py).
FIGURES = FaultFigures()


def reset_figures() -> FaultFigures:
    global FIGURES
    FIGURES = FaultFigures()
    return FIGURES


def note_time_to_crashed(
    rows: Iterable[Mapping[str, Any]],
    killed_at: Mapping[int, float],
) -> list[float]:
    """Seconds from each kill (wall clock, by pid) to its run's row being closed as CRASHED
    (the row's ``updated_at``, written by the close), for the runs of the killed pids."""
    out = []
    for row in rows:
        at = killed_at.get(row["pid"])
        if at is None or row["status"] != "CRASHED" or row.get("updated_at") is None:
            continue
        out.append(round(datetime_to_ns(row["updated_at"]) / 1e9 - at, 3))
    FIGURES.time_to_crashed_s.extend(out)
    return out


# -- the invariant -----------------------------------------------------------------------------


def catalog_rows(catalog_url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            # An AssertionError, so that eventually() waits for the sink's first write.
            assert sa.inspect(conn).has_table("meta_runs"), "no meta_runs table (yet)"
            return [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM meta_runs"))]
    finally:
        engine.dispose()


def _ns(value: Any) -> int | None:
    return None if value is None else datetime_to_ns(value)


def _span_key(span: SpanView) -> tuple[Any, ...]:
    return (
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        span.name,
        span.start_ns,
        span.end_ns,
        repr(sorted(span.attributes.items(), key=lambda kv: kv[0])),
        span.status_code,
        span.status_message,
    )


def assert_every_run_recorded(
    catalog_url: str,
    spans: Sequence[SpanView],
    started_run_ids: Iterable[str],
    *,
    ended: Mapping[str, str] | None = None,
    pids: Mapping[str, int] | None = None,
    max_unlisted: int = 0,
    identical_span_replays: bool = False,
    context: str = "",
) -> dict[str, dict[str, Any]]:
    """Every started run is in the catalog once, terminal, with one span carrying its ids.

    * ``started_run_ids`` — what the pipeline processes said they started; none may be missing;
    * ``max_unlisted`` — catalog rows not in that list that are tolerated (a process killed
      between the run's start event and its started-file line leaves one); they must be
      recorded just as completely;
    * ``ended`` — run id → status the decorator had finished with (the record was handed to
      the sinks before it returned): the catalog must show exactly that status;
    * ``pids`` — run id → the process that ran it: the row's ``pid`` must be that;
    * ``identical_span_replays`` — at-least-once delivery across a SIGKILLed sidecar may write
      the *same* span twice (same ids, times, attributes); different spans for one run never.

    Returns the catalog rows by run id. Raises ``AssertionError`` listing every problem.
    """
    started = set(started_run_ids)
    rows = catalog_rows(catalog_url)
    problems: list[str] = []
    per_id = Counter(r["run_id"] for r in rows)
    problems += [f"{rid}: {n} catalog rows" for rid, n in per_id.items() if n > 1]
    by_id = {r["run_id"]: r for r in rows}
    missing = sorted(started - set(by_id))
    problems += [f"{rid}: started but not in the catalog" for rid in missing]
    unlisted = sorted(set(by_id) - started)
    if len(unlisted) > max_unlisted:
        problems.append(
            f"{len(unlisted)} catalog rows for runs nobody reported starting "
            f"(at most {max_unlisted} allowed): {unlisted[:5]}"
        )

    spans_by_run: dict[str, list[SpanView]] = {}
    for span in spans:
        rid = span.attributes.get(RUN_ID_ATTR)
        if rid is not None:
            spans_by_run.setdefault(str(rid), []).append(span)
    problems += [
        f"{rid}: {len(s)} span(s) but no catalog row"
        for rid, s in spans_by_run.items()
        if rid not in by_id
    ]

    for rid, row in by_id.items():
        status = row["status"]
        if status not in TERMINAL:
            problems.append(f"{rid}: status {status} ({row['node_name']}, pid {row['pid']})")
        if ended is not None and rid in ended and ended[rid] != status:
            problems.append(
                f"{rid}: the decorator finished with {ended[rid]} but the catalog "
                f"says {status} ({row.get('error_type')}: "
                f"{(row.get('error_message') or '')[:120]})"
            )
        if pids is not None and rid in pids and pids[rid] != row["pid"]:
            problems.append(f"{rid}: ran in pid {pids[rid]}, catalog says {row['pid']}")
        found = spans_by_run.get(rid, [])
        if not found:
            problems.append(f"{rid}: {status} in the catalog but no span")
            continue
        distinct = {_span_key(s) for s in found}
        if len(found) > 1 and not (identical_span_replays and len(distinct) == 1):
            problems.append(f"{rid}: {len(found)} spans ({len(distinct)} distinct)")
        span = found[0]
        if (span.trace_id, span.span_id) != (row["trace_id"], row["span_id"]):
            problems.append(
                f"{rid}: span ids {span.trace_id}/{span.span_id} != catalog "
                f"{row['trace_id']}/{row['span_id']}"
            )
        if span.attributes.get(STATUS_ATTR) != status:
            problems.append(
                f"{rid}: span status {span.attributes.get(STATUS_ATTR)} != catalog {status}"
            )
        if (span.status_code == STATUS_CODE_ERROR) != (status in ("FAILURE", "CRASHED")):
            problems.append(f"{rid}: span status code {span.status_code} for {status}")
        started_ns, ended_ns = _ns(row["started_at"]), _ns(row["ended_at"])
        if started_ns is None or span.start_ns // 1000 != started_ns // 1000:
            problems.append(f"{rid}: span start {span.start_ns} != catalog {started_ns}")
        if ended_ns is None or span.end_ns // 1000 != ended_ns // 1000:
            problems.append(f"{rid}: span end {span.end_ns} != catalog {ended_ns}")
    FIGURES.runs = len(started | set(by_id))
    FIGURES.lost = len(missing) + sum(1 for rid in by_id if rid not in spans_by_run)
    FIGURES.duplicated = sum(1 for n in per_id.values() if n > 1) + sum(
        1
        for found in spans_by_run.values()
        if len(
            {
                (s.trace_id, s.span_id, s.start_ns, s.end_ns, s.attributes.get(STATUS_ATTR))
                for s in found
            }
        )
        > 1
    )
    FIGURES.crashed = sum(1 for r in by_id.values() if r["status"] == "CRASHED")
    FIGURES.false_crashes = sum(
        1
        for rid, r in by_id.items()
        if r["status"] == "CRASHED" and ended is not None and ended.get(rid, "CRASHED") != "CRASHED"
    )
    if problems:
        head = f"{context}: " if context else ""
        raise AssertionError(
            f"{head}{len(problems)} problem(s) over {len(started)} started run(s), "
            f"{len(by_id)} catalog row(s), {sum(map(len, spans_by_run.values()))} span(s):\n  "
            + "\n  ".join(problems[:25])
        )
    return by_id


def eventually(check: Callable[[], T], timeout: float, interval: float = 0.2) -> T:
    """Call ``check`` until it stops raising ``AssertionError``; re-raise the last one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


def status_counts(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    return dict(Counter(r["status"] for r in rows.values()))


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ODIBI_OBSERVE_", "OTEL_"))}
    env["ODIBI_OBSERVE_TEST_PG_URL"] = os.environ.get("ODIBI_OBSERVE_TEST_PG_URL", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def pipeline(
    args: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None, stdin: bool = False
) -> subprocess.Popen[str]:
    """Start ``tests/fault_pipeline.py`` with ``args``; stderr goes to ``log``."""
    return subprocess.Popen(
        [sys.executable, PIPELINE, *args],
        env=dict(env or child_env()),
        text=True,
        stdout=subprocess.PIPE,
        stderr=open(log, "a"),
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        cwd=ROOT,
    )


def expect_line(proc: subprocess.Popen[str], prefix: str, log: Path) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(prefix):
        proc.kill()
        raise AssertionError(
            f"expected {prefix!r} from the pipeline, got {line!r}; "
            f"stderr:\n{log.read_text()[-3000:]}"
        )
    return line.strip()


def own_process(pid: int, *, parent: int) -> int:
    """A pidfd for ``pid``, after checking it is a live child of ``parent`` (ours).

    Signals then go through the pidfd: if the process has died meanwhile, they reach nobody,
    never a process that reused the pid.
    """
    fd = os.pidfd_open(pid)
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    if fields[0] in (b"Z", b"X") or int(fields[1]) != parent:
        os.close(fd)
        raise AssertionError(f"pid {pid} is not a live child of {parent}: {fields[:2]}")
    return fd


def kill_own(pidfd: int) -> None:
    """SIGKILL the process of ``pidfd`` (if it still runs) and close the pidfd."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def cli(
    args: Sequence[str], *, env: Mapping[str, str], log: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``odibi-observe ARGS`` to completion."""
    result = subprocess.run(
        [sys.executable, *CLI, *args],
        env=dict(env),
        text=True,
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    with open(log, "a") as handle:
        handle.write(f"$ odibi-observe {' '.join(args)}\n{result.stdout}{result.stderr}")
    return result


def sweep(
    catalog: str,
    *,
    log: Path,
    spool_dir: Path | None = None,
    traces_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """One ``odibi-observe sweep`` pass; returns its output (fails the test on error)."""
    args = ["sweep", "--catalog", catalog]
    if spool_dir is not None:
        args += ["--spool-dir", str(spool_dir)]
    extra = dict(env or {})
    if traces_file is not None:
        extra["ODIBI_OBSERVE_TRACES_FILE"] = str(traces_file)
    result = cli(args, env=child_env(**extra), log=log)
    assert result.returncode == 0, (
        f"sweep failed ({result.returncode}):\n{result.stdout}{result.stderr}"
    )
    return result.stdout + result.stderr


class Sidecar:
    """An ``odibi-observe sidecar`` process on a free port, with its output in a log file."""

    def __init__(
        self,
        catalog: str,
        spool_dir: Path,
        *,
        log: Path,
        traces_file: Path | None = None,
        otlp_endpoint: str | None = None,
        args: Sequence[str] = ("--sweep-interval", "0.5"),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.catalog = catalog
        self.spool_dir = spool_dir
        self.log = log
        self.args = list(args)
        extra = dict(env or {})
        if traces_file is not None:
            extra["ODIBI_OBSERVE_TRACES_FILE"] = str(traces_file)
        if otlp_endpoint is not None:
            extra["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
            extra.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            extra.setdefault("ODIBI_OBSERVE_OTLP_TIMEOUT", "2")
            extra.setdefault("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
        self.env = child_env(**extra)
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Sidecar:
        """Start on a port the kernel picks (``--listen 127.0.0.1:0``); the sidecar announces
        its URL on stdout once it serves."""
        with open(self.log, "a") as handle:
            handle.write("--- sidecar start\n")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *CLI,
                "sidecar",
                "--catalog",
                self.catalog,
                "--spool-dir",
                str(self.spool_dir),
                "--listen",
                "127.0.0.1:0",
                *self.args,
            ],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            stderr=open(self.log, "a"),  # noqa: SIM115
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if match is None:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"the sidecar did not start ({self.proc.returncode}): "
                f"{line!r}\n{self.log.read_text()[-3000:]}"
            )
        self.port = int(match.group(1))
        return self

    def get(self, path: str, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return str(response.read().decode())

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse_metrics(self.get("/metrics"))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Sidecar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_sum(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of ``name`` over every sample whose labels include ``labels``."""
    return sum(
        v
        for (n, lbls), v in samples.items()
        if n == name and all((k, val) in lbls for k, val in labels.items())
    )


def read_metrics_file(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse_metrics(path.read_text())


def spans_in(path: Path) -> list[SpanView]:
    return read_spans(path) if path.exists() else []


# -- a throwaway PostgreSQL server ---------------------------------------------------------------


def _pg_bindir() -> str | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(x) if x.isdigit() else x for x in p.split("/")],
    )
    if candidates:
        return os.path.dirname(candidates[-1])
    found = shutil.which("initdb")
    return os.path.dirname(found) if found else None


class ThrowawayPostgres:
    """A private PostgreSQL server in a temp directory, for tests that stop and start it.

    Never the shared cluster: this one belongs to the test session alone. As root it runs as
    the ``postgres`` user (the server refuses root); otherwise as the current user. Trust
    authentication on 127.0.0.1 only.
    """

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb) found")
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="oo-faults-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.sock.mkdir()
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            for path in (self.base, self.sock):
                os.chown(path, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.log = self.base / "server.log"
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        for attempt in range(3):  # the free port may be taken before the server binds it
            try:
                self.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                self.port = free_port()

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [*self.as_user, os.path.join(self.bindir, tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            server_log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}{server_log}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c shared_buffers=16MB -c max_connections=40"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def create_database(self, name: str) -> str:
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return str(
            sa.engine.make_url(self.url).set(database=name).render_as_string(hide_password=False)
        )

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def throwaway_postgres_or_skip() -> ThrowawayPostgres:
    try:
        return ThrowawayPostgres()
    except Exception as exc:
        problem = f"cannot run a private PostgreSQL server: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem}; the outage test must run in CI", pytrace=False)
        pytest.skip(problem)
        raise  # unreachable


# -- a tiny tmpfs -----------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[Callable[[str], None]]:
    """Mount a tmpfs of ``size`` on ``path`` (root only); yields a ``resize(size)`` function."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )

    def resize(new: str) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={new}", str(path)], check=True, capture_output=True
        )

    try:
        yield resize
    finally:
        for _ in range(20):
            if (
                subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode
                == 0
            ):
                break
            time.sleep(0.1)
