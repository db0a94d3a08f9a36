"""What a node run used: its peak memory and CPU time, and the memory limit it ran under.

The seed failure this answers is the pandas node that loads a whole table and is OOM-killed
on production data: to see it coming, each run records how much memory it reached, and the
limit it reached it against.

**Peak memory (``peak_rss_bytes``)** is the largest resident set size of the process *seen
while the node ran*: one reading at every heartbeat tick (the heartbeat thread samples every
active run, see :mod:`odibi_observe._heartbeat`) and one at the end. A reading is
``/proc/self/statm``'s resident pages times the page size — the process's RSS *now*.
A run shorter than :data:`FINAL_READING_MIN_NS` takes no reading of its own: it records the
process's latest reading (the heartbeat's, or an earlier run's), because a ``pread`` gives the
interpreter lock away and, with the sinks' worker threads busy, getting it back costs far more
than a millisecond-long node (``benchmarks/bench_overhead.py`` measured the decorator's cost
doubling). Nothing is read at the start for the same reason: the start's RSS is never above the
peak the end or a tick sees unless the node freed memory, and then it is not the node's peak.
Not ``getrusage().ru_maxrss``: that is the high-water mark of the process's whole life, so in a
process that runs several nodes every node after the biggest one would inherit its peak.
The price of sampling: a spike shorter than the heartbeat interval that is freed before the
node returns is missed (the reading at the end sees what the node still holds). Nodes running
concurrently in one process share its RSS, so each sees the others' memory too: the figure is
"the process reached this while the node ran", which is what an OOM kill is about.

**CPU time (``cpu_seconds``)** is the process's CPU time (user + system, every thread,
``time.process_time``) at the end minus at the start. Process rather than thread CPU because
the heavy work of a data node is in native threads (pyarrow, polars, BLAS) that a thread
clock would not count; concurrent nodes in one process each count the others' CPU too.

**The memory limit (``memory_limit_bytes``)** is cgroup v2's ``memory.max`` of the process's
cgroup (``/proc/self/cgroup``), read once per process (a limit does not change under a
running process in practice; a forked child reads it again). ``max`` (no limit) and no cgroup
v2 give None. ``ODIBI_OBSERVE_CGROUP_ROOT`` points at another cgroup mount (tests use a
directory of fake counters).

Everything here is best effort and never raises: a platform without ``/proc`` records None.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Final

#: Where the cgroup v2 hierarchy is mounted (overridable for tests and unusual hosts).
CGROUP_ROOT_ENV: Final = "ODIBI_OBSERVE_CGROUP_ROOT"
DEFAULT_CGROUP_ROOT: Final = "/sys/fs/cgroup"

try:
    _PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
    _PAGE_SIZE = 4096


class _Statm:
    """``/proc/self/statm`` kept open: one ``pread`` per reading instead of open/read/close.

    Opened per process: an inherited descriptor would keep reading the parent's memory.
    """

    def __init__(self) -> None:
        self.pid = -1
        self.fd: int | None = None
        self.lock = threading.Lock()

    def read(self) -> int | None:
        pid = os.getpid()
        try:
            if self.fd is None or self.pid != pid:
                with self.lock:
                    if self.fd is None or self.pid != pid:
                        self.fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
                        self.pid = pid
            data = os.pread(self.fd, 128, 0)
            return int(data.split(None, 2)[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return None


_statm = _Statm()

#: Runs shorter than this (5 ms) record the process's latest reading instead of taking one.
FINAL_READING_MIN_NS: Final = 5_000_000

_latest: list[int | None] = [None]  # the process's latest reading, by any thread


def rss_bytes() -> int | None:
    """The resident set size of this process now, in bytes (None where /proc is missing)."""
    value = _statm.read()
    if value is not None:
        _latest[0] = value
    return value


def latest_rss_bytes() -> int | None:
    """The latest reading any thread took (one is taken if there is none yet)."""
    value = _latest[0]
    return value if value is not None else rss_bytes()


class ResourceMeter:
    """The resources of one node run: created at its start, sampled while it runs."""

    __slots__ = ("cpu_start_ns", "peak")

    def __init__(self) -> None:
        self.cpu_start_ns = time.process_time_ns()
        self.peak: int | None = None

    def sample(self, *, fresh: bool = True) -> int | None:
        """Take one RSS reading into the peak (or, not ``fresh``, the process's latest one);
        return the peak so far."""
        now = rss_bytes() if fresh else latest_rss_bytes()
        peak = self.peak
        if now is not None and (peak is None or now > peak):
            self.peak = peak = now
        return peak

    def cpu_seconds(self) -> float:
        return round((time.process_time_ns() - self.cpu_start_ns) / 1e9, 6)


def final_fields(meter: ResourceMeter, duration_ns: int) -> dict[str, int | float | None]:
    """The resource fields of ``meter``'s finished run, for ``RunRecord.finished``: its peak
    (with a last reading when the run lasted :data:`FINAL_READING_MIN_NS` or more), its CPU
    time and the process's memory limit."""
    return {
        "peak_rss_bytes": meter.sample(fresh=duration_ns >= FINAL_READING_MIN_NS),
        "cpu_seconds": meter.cpu_seconds(),
        "memory_limit_bytes": memory_limit_bytes(),
    }


# --- cgroup v2 ---------------------------------------------------------------------------------


def cgroup_root() -> Path:
    return Path(os.environ.get(CGROUP_ROOT_ENV) or DEFAULT_CGROUP_ROOT)


def cgroup_dir(pid: int | str = "self") -> Path | None:
    """The cgroup v2 directory of process ``pid`` (None without cgroup v2 or /proc)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            relative = line[3:].strip().lstrip("/")
            return cgroup_root() / relative
    return None


def read_limit(directory: Path | None) -> int | None:
    """``memory.max`` in ``directory``, or of the nearest ancestor (up to the root) that has
    one below ``max``: a limit set on a parent cgroup binds the child too."""
    if directory is None:
        return None
    root = cgroup_root()
    current = directory
    while True:
        try:
            text = (current / "memory.max").read_text(encoding="ascii").strip()
        except OSError:
            text = ""
        if text and text != "max":
            try:
                return int(text)
            except ValueError:
                return None
        if current == root or root not in current.parents:
            return None
        current = current.parent


_limit_pid = -1
_limit: int | None = None


def memory_limit_bytes() -> int | None:
    """This process's memory limit in bytes, read once per process (None: no limit)."""
    global _limit_pid, _limit
    pid = os.getpid()
    if _limit_pid != pid:
        _limit = read_limit(cgroup_dir())
        _limit_pid = pid
    return _limit


def forget_memory_limit() -> None:
    """Read the limit again at the next run (tests change ``ODIBI_OBSERVE_CGROUP_ROOT``)."""
    global _limit_pid
    _limit_pid = -1


def oom_kills(directory: Path | None) -> int | None:
    """The ``oom_kill`` count of ``memory.events`` in ``directory`` (None: unreadable)."""
    if directory is None:
        return None
    try:
        text = (directory / "memory.events").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# --- how a process ended ------------------------------------------------------------------------


def zombie_wait_status(pid: int) -> int | None:
    """The wait status of ``pid`` if it has exited and is not reaped yet (a zombie), else None.

    ``/proc/<pid>/stat``'s last field (``exit_code``, Linux 3.5+) holds it; a process that is
    still running, or gone, says nothing. This is what a sweeper that is not the parent can
    still learn of how a process ended, while its parent has not waited for it.
    """
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    if not fields or fields[0] != b"Z":
        return None
    try:
        return int(fields[-1])
    except ValueError:
        return None


__all__ = (
    "CGROUP_ROOT_ENV",
    "ResourceMeter",
    "cgroup_dir",
    "final_fields",
    "forget_memory_limit",
    "memory_limit_bytes",
    "oom_kills",
    "read_limit",
    "rss_bytes",
    "zombie_wait_status",
)
