"""Garbage collection: deleting the segments every cursor of the directory has finished with.

Kept on its own because it is the one place that destroys data, so its rules stay in one
short module: only sealed segments and ``.open`` segments of dead writers are candidates;
"finished" means no valid frame lies after any cursor's watermark (so damaged bytes at the end
of a segment do not keep it for ever); with no cursor at all nothing is deleted.
"""

from __future__ import annotations

import os
import sys

from odibi_observe.spool.cursor_files import Acked
from odibi_observe.spool.damage import DamageLedger
from odibi_observe.spool.frames import read_segment
from odibi_observe.spool.segments import Segment, open_segment, segment_final


def collect(
    directory: str,
    listing: dict[str, list[Segment]],
    states: dict[str, Acked],
    ledger: DamageLedger,
) -> int:
    """Delete the segments of ``listing`` no cursor in ``states`` needs; the bytes freed."""
    if not states:
        return 0
    return sum(
        _collect(directory, segment, states, ledger)
        for segments in listing.values()
        for segment in segments
    )


def _collect(
    directory: str, segment: Segment, states: dict[str, Acked], ledger: DamageLedger
) -> int:
    """Delete ``segment`` if it is final and no cursor has a frame left in it."""
    start = sys.maxsize  # the lowest acknowledged offset inside the segment, over cursors
    for acked in states.values():
        wm = acked.get(segment.writer)
        if wm is None or wm[0] < segment.seq:
            start = 0
            break
        if wm[0] == segment.seq:
            start = min(start, wm[1])
    opened = open_segment(directory, segment.writer, segment.seq)
    if opened is None:
        return 0
    fd, sealed, path = opened
    try:
        if not sealed and not segment_final(segment.writer, fd):
            return 0
        size = os.fstat(fd).st_size  # after the liveness test: the size cannot change now
        if start < size and read_segment(fd, start, final=True, limit=1, payloads=False).frames:
            return 0
        try:
            os.unlink(path)
        except FileNotFoundError:  # another process collected it
            return 0
        ledger.note_collected(segment.writer, segment.seq)
        return size
    finally:
        os.close(fd)
