"""The Spool: one object per directory and process, the writer and every reader's entry point.

The parts (writer, cursors, gc, damage accounting, metrics) each live in their own module;
this one puts them together behind the one object callers hold, so that a pipeline process
(which appends), the sidecar (which reads and collects) and the tools (which inspect) use the
same type with the same defaults.

Layout of a spool directory (one per host, shared by every pipeline process on it)::

    <dir>/<writer_id>.<seq:012d>.open   the segment a live writer appends to
    <dir>/<writer_id>.<seq:012d>.seg    a sealed segment (renamed from .open on roll/close)
    <dir>/cursors/<name>.json           one durable cursor per consumer (sink)
    <dir>/cursors/.reserve              room kept for cursor files on a full filesystem
    <dir>/damage.jsonl                  what readers found lost

Writers never share a file, so no cross-process write lock exists and a writer that dies holds
nothing another process waits for. ``writer_id`` defaults to ``<host>-<pid>-<process start
ns>``: the pid and the start time tell a reader whether the writer is still running (see
:func:`~odibi_observe.spool.liveness.process_alive`), which decides whether a short last frame
is *still being written* or *torn for ever*. A writer additionally holds a ``flock`` on its
``.open`` segment; the kernel drops it when the process dies, which guards the pid test against
pid namespaces (a sidecar in another container) and wall-clock steps.

Segments are deleted by :meth:`Spool.gc` only when every cursor in the directory has
acknowledged all their frames and they are sealed or their writer is dead; with no cursor at all
nothing is deleted (events wait for their first consumer).
"""

from __future__ import annotations

import os
import weakref
from typing import Self

from prometheus_client import CollectorRegistry

from odibi_observe.spool import gc as _gc
from odibi_observe.spool import metrics, writer
from odibi_observe.spool.cursor import Cursors, SpoolCursor
from odibi_observe.spool.cursor_files import CURSOR_RESERVE, CursorFiles
from odibi_observe.spool.damage import DamageLedger, SpoolDamage
from odibi_observe.spool.metrics import SpoolStats, metrics_for
from odibi_observe.spool.segments import FrameCounts, FsyncPolicy, list_segments
from odibi_observe.spool.writer import SpoolWriter, check_writer_options

_spools: weakref.WeakSet[Spool] = weakref.WeakSet()


class Spool(SpoolWriter):
    """A directory of segment files that this process appends to and consumers read from.

    One ``Spool`` object is both the writer of this process's segments (created lazily at the
    first append) and the entry point for reading every writer's segments (:meth:`cursor`).
    Appends are thread-safe; a fork gives the child its own writer id and segment.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        writer_id: str | None = None,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        segment_bytes: int = 8 * 2**20,
        max_bytes: int = 512 * 2**20,
        registry: CollectorRegistry | None = None,
        cursor_reserve: int = CURSOR_RESERVE,
    ) -> None:
        check_writer_options(
            writer_id=writer_id,
            fsync=fsync,
            fsync_interval=fsync_interval,
            segment_bytes=segment_bytes,
            max_bytes=max_bytes,
        )
        path = os.path.abspath(os.fspath(directory))
        files = CursorFiles(path, fsync=fsync, reserve=cursor_reserve)
        self.registry = registry if registry is not None else CollectorRegistry()
        metrics = metrics_for(self.registry)
        ledger = DamageLedger(path, metrics)
        super().__init__(
            path,
            writer_id=writer_id,
            fsync=fsync,
            fsync_interval=fsync_interval,
            segment_bytes=segment_bytes,
            max_bytes=max_bytes,
            metrics=metrics,
            ledger=ledger,
            files=files,
        )
        self.cursor_reserve = files.reserve
        self._counts = FrameCounts(path)
        self._cursors = Cursors(path, files, ledger, self._counts)
        metrics.gauges.spools.add(self)
        _spools.add(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def after_fork(self) -> None:
        """In a forked child: a new writer (see :meth:`SpoolWriter.after_fork`) and new locks
        for the reading side. A no-op in the process that made the Spool."""
        if self._pid == os.getpid():
            return
        super().after_fork()
        self._ledger.after_fork()
        self._counts.after_fork()
        self._cursors.after_fork()

    # ---------------------------------------------------------------- reading

    def cursor(self, name: str) -> SpoolCursor:
        """Open (creating if needed) the durable cursor ``name``, at its acknowledged position.

        Its state file exists from now on, so :meth:`gc` keeps every frame it has not
        acknowledged. Use one cursor object per name at a time (one consumer per sink).
        """
        return self._cursors.open(name)

    def open_cursors(self) -> list[SpoolCursor]:
        """Cursors opened through this Spool that are still referenced."""
        return self._cursors.live()

    def drop_cursor(self, name: str) -> bool:
        """Delete cursor ``name`` (a sink removed for good) so it no longer holds segments."""
        return self._cursors.drop(name)

    def damage(self) -> SpoolDamage:
        """What this Spool has found lost so far (damaged frames, missing segments, runs)."""
        return self._ledger.damage()

    # ---------------------------------------------------------------- maintenance

    def gc(self) -> int:
        """Delete segments every cursor has fully acknowledged; returns the bytes freed.

        Only sealed segments and ``.open`` segments of dead writers are candidates. "Fully
        acknowledged" means no valid frame lies after any cursor's watermark, so damaged bytes
        at the end of a segment do not keep it for ever. With no cursor, nothing is deleted.
        """
        states = self._cursors.states()
        freed = _gc.collect(self.directory, list_segments(self.directory), states, self._ledger)
        after = list_segments(self.directory)
        self._counts.keep({(s.writer, s.seq) for segs in after.values() for s in segs})
        self._ledger.forget(after)
        self.space_freed()  # appends see the freed space at once
        self._files.remove_stale_temp_files()
        if freed:
            self._files.ensure_reserve()  # taken back while there is room, for the next time
        return freed

    def end_positions(self) -> dict[str, tuple[int, int]]:
        """Where each writer's frames end now: (last segment, its size), by writer.

        A mark in the spool: a cursor that has :meth:`SpoolCursor.reached` it has everything
        spooled before it was taken, while writers go on appending after it.
        """
        return {
            writer: (segments[-1].seq, segments[-1].size)
            for writer, segments in list_segments(self.directory).items()
            if segments
        }

    def stats(self) -> SpoolStats:
        """Bytes and segments in the directory now; corrupt frames and rejections counted here."""
        segments = [s for segs in list_segments(self.directory).values() for s in segs]
        corrupt, regions, missing = self._ledger.totals()
        return SpoolStats(
            sum(s.size for s in segments),
            len(segments),
            corrupt,
            self.rejected_total(),
            regions,
            missing,
        )


def _fork_child() -> None:
    writer.after_fork_in_child()
    metrics.after_fork_in_child()
    for spool in list(_spools):
        spool.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_child)
