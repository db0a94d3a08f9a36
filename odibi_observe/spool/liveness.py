"""Is a writer still running? Process start times, pid checks and default writer ids.

A reader must tell a short last frame that is *still being written* from one *torn for ever*,
and gc must not delete the open segment of a live writer. Both come down to "is the process
that wrote this alive", answered here from the pid and start time a default writer id
(``<host>-<pid>-<process start ns>``) carries. (The flock a writer holds, in ``locks``, guards
this test against pid namespaces and wall-clock steps.)
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Final

#: Slack when comparing a process's start time from /proc with a recorded one: /proc has clock
#: tick resolution and ``btime`` whole seconds, and the wall clock may be stepped.
_START_SLACK_NS: Final = 1_000_000_000
#: This host's name as writer ids spell it.
HOST: Final = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()).lstrip(".") or "localhost"
DEFAULT_WRITER_RE: Final = re.compile(r"^(?P<host>.+)-(?P<pid>\d+)-(?P<start>\d+)$")
_HAVE_PROC: Final = os.path.exists("/proc/self/stat")


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - every Unix has it
        return 100


_CLK_TCK: Final = _clock_ticks()


def _proc_stat_fields(pid: int) -> list[bytes]:
    """Fields 3.. of /proc/<pid>/stat (the command name may hold spaces and parentheses)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 2 :].split()


def _boot_time_ns() -> int:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return int(line.split()[1]) * 1_000_000_000
    raise OSError("no btime line in /proc/stat")


def _start_ns_from(fields: list[bytes]) -> int:
    # Field 22 (index 19 after the command name): start time in clock ticks after boot.
    return _boot_time_ns() + int(fields[19]) * 1_000_000_000 // _CLK_TCK


def process_start_ns(pid: int) -> int | None:
    """Wall-clock start time of process ``pid`` in ns (clock-tick resolution); None if unknown.

    Computed from ``/proc/<pid>/stat`` (field 22) and ``/proc/stat`` ``btime``, the same way
    :func:`process_alive` computes it, so a value recorded from here compares exactly.
    """
    if not _HAVE_PROC:
        return None
    try:
        return _start_ns_from(_proc_stat_fields(pid))
    except (OSError, ValueError, IndexError):
        return None


def _kill_probe(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:  # pragma: no cover - EINVAL and the like: cannot tell, assume alive
        return True
    return True


def process_alive(pid: int, started_ns: int | None) -> bool:
    """Is the process that had ``pid`` and started at ``started_ns`` still running?

    False when no process has that pid, when it is a zombie (it has exited and only waits to be
    reaped), or when the process that has the pid now started *after* ``started_ns`` (plus one
    second of slack for /proc's resolution): then the pid was reused and the process we are
    asking about is gone. ``started_ns=None`` checks the pid only. Where /proc is unreadable
    (not Linux) only the pid can be checked. The answer is for the caller's pid namespace.
    """
    if pid <= 0:
        return False
    if not _HAVE_PROC:
        return _kill_probe(pid)
    try:
        fields = _proc_stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:  # e.g. /proc mounted with hidepid: fall back to the signal probe
        return _kill_probe(pid)
    if not fields or fields[0] in (b"Z", b"X", b"x"):
        return False
    if started_ns is None:
        return True
    try:
        actual = _start_ns_from(fields)
    except (OSError, ValueError, IndexError):
        return True
    return actual <= started_ns + _START_SLACK_NS


def _own_start_ns() -> int:
    started = process_start_ns(os.getpid())
    return started if started is not None else time.time_ns()


def default_writer_id() -> str:
    """``<host>-<pid>-<start ns>`` of this process: an id a reader can judge alive or dead."""
    return f"{HOST}-{os.getpid()}-{_own_start_ns()}"


def writer_pid(writer: str) -> int | None:
    """The pid in a default writer id (``<host>-<pid>-<start ns>``); None for a custom id."""
    m = DEFAULT_WRITER_RE.match(writer)
    return None if m is None else int(m["pid"])


def writer_dead(writer: str) -> bool:
    """True only when ``writer`` is a default id of this host whose process has gone.

    Custom ids and ids of other hosts cannot be judged by pid: they are never called dead here.
    """
    m = DEFAULT_WRITER_RE.match(writer)
    if m is None or m["host"] != HOST:
        return False
    return not process_alive(int(m["pid"]), int(m["start"]))
