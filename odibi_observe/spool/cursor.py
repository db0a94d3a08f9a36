"""Reading: one durable cursor per consumer, and the set of cursors one Spool has open.

Delivery is at least once: a cursor acknowledges by writing its position atomically
(``cursor_files``); frames read but not acknowledged are read again when the cursor is
re-opened (or :meth:`SpoolCursor.rewind` is called). An acknowledgement is a watermark per
writer: acking a frame acknowledges every earlier frame of the same writer, as sinks consume in
order. What a read meets on the way (damage, missing segments, runs started and ended) goes to
the Spool's :class:`~odibi_observe.spool.damage.DamageLedger`.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from odibi_observe._selfmetrics import warn_once_per_minute
from odibi_observe.spool.cursor_files import Acked, CursorFiles
from odibi_observe.spool.damage import DamageLedger
from odibi_observe.spool.frames import read_segment
from odibi_observe.spool.liveness import writer_dead
from odibi_observe.spool.segments import (
    FrameCounts,
    Segment,
    list_segments,
    open_segment,
    segment_final,
)

_CURSOR_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, order=True, slots=True)
class SpoolPosition:
    """Where a frame is: writer, segment sequence number and byte offset of the frame.

    Ordered within one writer (segment, then offset). ``end`` is the offset after the frame,
    what an acknowledgement records; it does not take part in comparisons.
    """

    writer: str
    segment: int
    offset: int
    end: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One stored event: its position (what :meth:`SpoolCursor.ack` takes) and its bytes."""

    position: SpoolPosition
    payload: bytes


class Cursors:
    """The cursors one Spool has open, and what they share: the directory, its cursor files,
    the damage ledger and the frame counts.

    Live cursors are held weakly: a consumer that drops its cursor stops counting as open.
    """

    def __init__(
        self, directory: str, files: CursorFiles, ledger: DamageLedger, counts: FrameCounts
    ) -> None:
        self.directory = directory
        self.files = files
        self.ledger = ledger
        self.counts = counts
        self._live: weakref.WeakValueDictionary[str, SpoolCursor] = weakref.WeakValueDictionary()

    def open(self, name: str) -> SpoolCursor:
        """Open (creating if needed) the durable cursor ``name``, at its acknowledged position."""
        if not _CURSOR_NAME_RE.match(name):
            raise ValueError(f"cursor name {name!r} must match {_CURSOR_NAME_RE.pattern}")
        cursor = SpoolCursor(self, name)
        self._live[name] = cursor
        return cursor

    def live(self) -> list[SpoolCursor]:
        """Cursors opened here that are still referenced."""
        return list(self._live.values())

    def drop(self, name: str) -> bool:
        """Delete cursor ``name`` (a sink removed for good) so it no longer holds segments."""
        self._live.pop(name, None)
        return self.files.drop(name)

    def states(self) -> dict[str, Acked]:
        """Acknowledged positions of every cursor of the directory, by name.

        Every live cursor counts with its in-memory state, with or without its file: that is
        never behind the file (an ack whose write failed, e.g. on a full disk, still lets gc
        free space), and a cursor whose file could not be written yet must neither be ignored
        (gc would delete what it has not read) nor stop gc from freeing what it has read.
        """
        states = self.files.states()
        for name, cursor in list(self._live.items()):
            with cursor._lock:
                states[name] = dict(cursor._acked)
        return states

    def known_elsewhere(self, writer: str, asking: SpoolCursor) -> bool:
        """Does a cursor file, or a live cursor other than ``asking``, name ``writer``?

        The other live cursors' memory is read without their locks (``asking``'s lock is
        held; a membership test needs no lock, and taking theirs could deadlock).
        """
        if any(writer in acked for acked in self.files.states().values()):
            return True
        return any(writer in c._acked for c in list(self._live.values()) if c is not asking)

    def after_fork(self) -> None:
        """Fresh cursor locks in a forked child."""
        for cursor in list(self._live.values()):
            cursor._lock = threading.Lock()


class SpoolCursor:
    """One consumer's durable position in the spool: read, deliver, acknowledge.

    ``read`` continues after the frames it has returned; ``ack`` makes positions durable. A
    re-opened cursor (``Spool.cursor(name)`` again, e.g. after a restart) starts after what was
    acknowledged, so unacknowledged frames are delivered again: at least once.
    """

    def __init__(self, cursors: Cursors, name: str) -> None:
        self.name = name
        self._cursors = cursors
        self._lock = threading.Lock()
        files = cursors.files
        loaded = files.load(name)
        self._acked: Acked = dict(loaded or {})
        self._next: Acked = dict(self._acked)
        self._loaded: Acked = dict(self._acked)
        self._pruned = False
        self._turn = 0
        if not os.path.exists(files.path(name)):
            try:
                files.write(name, self._acked)
            except OSError as exc:
                # A full disk must not stop the consumer that would free it: the state is kept
                # in memory and written with the next acknowledgement.
                self._pruned = True
                warn_once_per_minute(
                    f"spool:cursor:{name}",
                    "odibi-observe: cannot write spool cursor %r yet "
                    "(%s); kept in memory until it can be",
                    name,
                    exc,
                )

    def read(self, max_frames: int = 1000, writer: str | None = None) -> list[SpoolEntry]:
        """Up to ``max_frames`` frames after this cursor, from every writer (or only ``writer``).

        Each writer's frames come in the order written; writers take turns being first so one
        busy writer cannot starve the others. Damaged frames are skipped and counted; an
        incomplete last frame of a live writer is left for a later call.
        """
        if max_frames <= 0:
            return []
        listing = list_segments(self._cursors.directory)
        with self._lock:
            writers = sorted(listing) if writer is None else [writer]
            if len(writers) > 1:
                self._turn = (self._turn + 1) % len(writers)
                writers = writers[self._turn :] + writers[: self._turn]
            out: list[SpoolEntry] = []
            for w in writers:
                if len(out) >= max_frames:
                    break
                self._read_writer(w, listing.get(w, []), max_frames - len(out), out)
            if writer is None:
                for gone in [
                    w
                    for w in self._acked.keys() | self._next.keys()
                    if w not in listing and writer_dead(w)
                ]:
                    self._acked.pop(gone, None)
                    self._next.pop(gone, None)
                    self._pruned = True
            return out

    def _read_writer(
        self, writer: str, segments: list[Segment], budget: int, out: list[SpoolEntry]
    ) -> None:
        directory, ledger = self._cursors.directory, self._cursors.ledger
        listed = [s.seq for s in segments]
        position = self._next.get(writer)
        if position is None:
            if not listed:
                return
            if listed[0] > 0:
                self._first_seen(writer, listed[0])
            position = (listed[0], 0)
        seq, offset = position
        while budget > 0:
            opened = open_segment(directory, writer, seq)
            if opened is None:
                # Collected (everything in it acknowledged) or not created yet: go to the
                # next segment that exists, if any.
                higher = [s for s in listed if s > seq]
                if not higher:
                    break
                self._skipped(writer, seq, offset, higher[0])
                seq, offset = higher[0], 0
                continue
            fd, sealed, _ = opened
            try:
                final = sealed
                if not sealed:
                    if os.fstat(fd).st_size <= offset:
                        break
                    # Decided before reading: a dead writer's file cannot change afterwards.
                    final = segment_final(writer, fd)
                parsed = read_segment(fd, offset, final=final, limit=budget)
                ledger.absorb(writer, seq, parsed, fd)
            finally:
                os.close(fd)
            for start, end, payload in parsed.frames:
                out.append(SpoolEntry(SpoolPosition(writer, seq, start, end), payload))
            budget -= len(parsed.frames)
            offset = parsed.resume
            if parsed.state != "eof" or not final:
                break
            seq, offset = seq + 1, 0
        self._next[writer] = (seq, offset)

    def _first_seen(self, writer: str, first: int) -> None:
        """A writer new to this cursor starts at segment ``first`` > 0: were 0.. lost?

        A writer numbers its segments from 0. Earlier ones may have been collected, but only
        once every cursor had acknowledged them, and then some cursor's state names the
        writer; if none does, nobody read them and they were deleted.
        """
        if not self._cursors.known_elsewhere(writer, self):
            self._cursors.ledger.note_missing(writer, 0, first)

    def _skipped(self, writer: str, seq: int, offset: int, found: int) -> None:
        """The cursor jumps from the missing segment ``seq`` to ``found``: was anything lost?

        Segments strictly between were never read, and gc deletes only what every cursor has
        acknowledged, so they were deleted by something else (only a segment without a single
        frame is collected unread). ``seq`` itself is lost too when the cursor had not begun
        it, or began it in this process's life and this Spool's gc did not collect it; a
        position loaded from the cursor file may be the end of a segment collected earlier.
        """
        first = seq + 1
        if offset == 0 or self._loaded.get(writer) != (seq, offset):
            first = seq
        self._cursors.ledger.note_missing(writer, first, found)

    def ack(self, entries: Sequence[SpoolEntry]) -> None:
        """Acknowledge ``entries`` (and every earlier frame of their writers), durably.

        The state file is replaced atomically, so a crash leaves the old or the new position,
        never a torn one.
        """
        with self._lock:
            changed = self._pruned
            for entry in entries:
                p = entry.position
                key = (p.segment, p.end)
                current = self._acked.get(p.writer)
                if current is None or key > current:
                    self._acked[p.writer] = key
                    changed = True
                ahead = self._next.get(p.writer)
                if ahead is None or key > ahead:
                    self._next[p.writer] = key
            if not changed:
                return
            try:
                self._cursors.files.write(self.name, self._acked)
            except OSError as exc:
                # Kept in memory (this process will not re-deliver); written at the next ack.
                # Only a restart before then re-delivers, which idempotent sinks absorb.
                self._pruned = True
                warn_once_per_minute(
                    f"spool:cursor:{self.name}",
                    "odibi-observe: cannot write spool cursor %r "
                    "(%s); position kept in memory until it can be",
                    self.name,
                    exc,
                )
                return
            self._pruned = False

    def rewind(self) -> None:
        """Read again from the acknowledged position (frames read but not acked come back)."""
        with self._lock:
            self._next = dict(self._acked)

    def backlog(self, writers: Callable[[str], bool] | None = None) -> int:
        """Frames not acknowledged yet, over all writers or those ``writers`` accepts (damaged
        frames are not counted)."""
        with self._lock:
            acked = dict(self._acked)
        total = 0
        for writer, segments in list_segments(self._cursors.directory).items():
            if writers is not None and not writers(writer):
                continue
            wm = acked.get(writer)
            for segment in segments:
                if wm is None or segment.seq > wm[0]:
                    start = 0
                elif segment.seq == wm[0]:
                    start = wm[1]
                else:
                    continue
                if start < segment.size:
                    total += self._cursors.counts.count(segment, start)
        return total

    def reached(self, marks: dict[str, tuple[int, int]]) -> bool:
        """Has this cursor acknowledged every frame written before ``marks``
        (:meth:`Spool.end_positions`)?

        Per writer: acknowledged up to its mark, or nothing left to acknowledge at all (the
        torn tail of a dead writer, or damage, is never acknowledged). Frames appended after
        the mark are not waited for: a busy writer cannot keep the answer at False.
        """
        with self._lock:
            acked = dict(self._acked)
        behind = {w for w, mark in marks.items() if acked.get(w, (-1, -1)) < mark}
        return not behind or self.backlog(behind.__contains__) == 0

    def positions(self) -> dict[str, tuple[int, int]]:
        """Acknowledged (segment, offset) per writer: for diagnostics and tests."""
        with self._lock:
            return dict(self._acked)
