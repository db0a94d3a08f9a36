"""The files of a spool directory: segment names, listing, opening, and whether one is final.

Writer, cursors and gc all find segments by name in a directory other processes change at the
same time; this module is the one place that knows the names (``<writer>.<seq:012d>.open`` and
``.seg``), the race rules of a listing, and when an ``.open`` segment can no longer grow.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import Final, Literal

from odibi_observe.spool.frames import read_segment
from odibi_observe.spool.liveness import DEFAULT_WRITER_RE, HOST, process_alive
from odibi_observe.spool.locks import flock_held

FsyncPolicy = Literal["always", "interval", "never"]

FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_SEGMENT_RE: Final = re.compile(r"^(?P<writer>.+)\.(?P<seq>\d{12})\.(?P<suffix>open|seg)$")


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment file as a listing saw it."""

    writer: str
    seq: int
    sealed: bool
    size: int
    name: str


def segment_base(writer: str, seq: int) -> str:
    """The file name of a segment without its suffix."""
    return f"{writer}.{seq:012d}"


def fsync_dir(path: str) -> None:
    """fsync a directory, so the names created or renamed in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_segments(directory: str) -> dict[str, list[Segment]]:
    """Segments in ``directory`` by writer, in sequence order.

    A listing is a snapshot of a directory other processes change: callers open segments
    by name and tolerate their absence.
    """
    found: dict[str, dict[int, Segment]] = {}
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return {}
    with entries:
        for entry in entries:
            m = _SEGMENT_RE.match(entry.name)
            if m is None:
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
            writer, seq = m["writer"], int(m["seq"])
            segment = Segment(writer, seq, m["suffix"] == "seg", size, entry.name)
            by_seq = found.setdefault(writer, {})
            if seq not in by_seq or segment.sealed:  # renamed during the listing
                by_seq[seq] = segment
    return {w: [by_seq[s] for s in sorted(by_seq)] for w, by_seq in found.items()}


def open_segment(directory: str, writer: str, seq: int) -> tuple[int, bool, str] | None:
    """Open segment ``seq`` of ``writer`` for reading: (fd, sealed, path), None if absent.

    ``.open`` is tried first: a writer renames only ``.open`` to ``.seg``, so when ``.open``
    is missing the ``.seg`` attempt is conclusive.
    """
    base = os.path.join(directory, segment_base(writer, seq))
    for suffix, sealed in ((".open", False), (".seg", True)):
        try:
            return os.open(base + suffix, os.O_RDONLY | O_CLOEXEC), sealed, base + suffix
        except FileNotFoundError:
            continue
    return None


def segment_final(writer: str, fd: int) -> bool:
    """Will this ``.open`` segment never grow again (its writer is dead)?

    A held flock means a writer lives (possibly in another pid namespace). Otherwise a
    default writer id is judged by pid and start time; any other id by the flock alone.
    """
    held = flock_held(fd)
    if held:
        return False
    m = DEFAULT_WRITER_RE.match(writer)
    if m is not None and m["host"] == HOST:
        return not process_alive(int(m["pid"]), int(m["start"]))
    return held is False


class FrameCounts:
    """Valid frames per segment after an offset, cached and extended as the segment grows.

    Backlog gauges ask for this at every scrape; a segment is scanned once, then only its new
    bytes.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._counts: dict[tuple[str, int], tuple[int, int, int]] = {}
        self.after_fork()

    def after_fork(self) -> None:
        """A fresh lock (at construction and in a forked child)."""
        self._lock = threading.Lock()

    def count(self, segment: Segment, start: int) -> int:
        """Valid frames of ``segment`` at or after ``start``."""
        key = (segment.writer, segment.seq)
        with self._lock:
            cached = self._counts.get(key)
        scanned, count = start, 0
        if cached is not None and cached[0] == start:
            scanned, count = cached[1], cached[2]
            if scanned >= segment.size:
                return count
        opened = open_segment(self.directory, segment.writer, segment.seq)
        if opened is None:
            return 0
        fd, sealed, _ = opened
        try:
            parsed = read_segment(fd, scanned, final=sealed, limit=sys.maxsize, payloads=False)
        finally:
            os.close(fd)
        count += len(parsed.frames)
        with self._lock:
            self._counts[key] = (start, parsed.resume, count)
        return count

    def keep(self, live: set[tuple[str, int]]) -> None:
        """Forget the segments not in ``live`` (collected)."""
        with self._lock:
            self._counts = {k: v for k, v in self._counts.items() if k in live}
