"""The writer: this process's own segments, appended to on the pipeline's path.

Kept apart from reading because it is the part that runs on the caller's thread for every
event: one frame encoding, one lock and one ``os.write`` in the common case, with the size
check, segment roll and fsync policy looked at only when due.

Durability: each append is one ``os.write`` on an ``O_APPEND`` descriptor, with no Python
buffer in between. When ``append()`` returns, the frame is in the kernel's page cache, so the
death of the process loses nothing; only a power loss or kernel crash can, and ``fsync`` bounds
that: ``"always"`` fsyncs before ``append()`` returns, ``"interval"`` (default) has a daemon
thread fsync at most every ``fsync_interval`` seconds (and at every segment seal), ``"never"``
leaves it to the kernel.

Size policy: **reject new events, keep old ones.** When the directory would exceed
``max_bytes``, or the filesystem reports ENOSPC/EDQUOT, ``append`` raises
:class:`SpoolFullError` (counted in ``odibi_observe_spool_rejected_total{reason}``) and the
caller decides what to do; the refusal also seals the writer's open segment, so that space can
be collected once read. ``append_many(partial=True)`` stores the oldest payloads that fit and
refuses the rest, so a backlog drains in pieces. Nothing is ever dropped silently, and nothing
already stored is evicted: the oldest events include the ``RUNNING`` markers the sweeper needs
to close runs whose process died, and evicting them would turn a crash into a run that never
existed. The limit is
checked against a directory total refreshed at least once a second (every 50 ms near the limit),
so concurrent writers can overshoot it by what they append in that time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Final

from odibi_observe._selfmetrics import log, warn_once_per_minute
from odibi_observe.conventions import SIDECAR_METRICS
from odibi_observe.spool.cursor_files import CursorFiles
from odibi_observe.spool.damage import DamageLedger
from odibi_observe.spool.frames import encode_frame
from odibi_observe.spool.liveness import default_writer_id
from odibi_observe.spool.locks import lock_segment
from odibi_observe.spool.metrics import SpoolMetrics
from odibi_observe.spool.segments import (
    FULL_ERRNOS,
    O_CLOEXEC,
    FsyncPolicy,
    fsync_dir,
    list_segments,
    segment_base,
)

_WRITER_ID_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
#: Directory total is re-read this often normally, and more often near the limit.
USAGE_REFRESH: Final = 1.0
USAGE_REFRESH_NEAR_FULL: Final = 0.05

#: Sequence numbers already used in this process, per (directory, writer id): a writer that
#: re-opens a spool whose segments were all collected must not reuse a number a cursor has seen.
_next_seq: dict[tuple[str, str], int] = {}
_next_seq_lock = threading.Lock()


class SpoolFullError(Exception):
    """An event the spool could not store: ``reason`` is ``"size_limit"`` or ``"disk_full"``.

    ``stored`` is how many payloads of an :meth:`Spool.append_many` call were stored before the
    failure (the size limit is checked for the whole batch, so it is 0 then; a disk that fills
    between two segments of a large batch can leave a prefix stored).
    """

    def __init__(self, reason: str, message: str | None = None, *, stored: int = 0) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.stored = stored


def check_writer_options(
    *, writer_id: str | None, fsync: str, fsync_interval: float, segment_bytes: int, max_bytes: int
) -> None:
    """Raise ValueError for an option no writer can work with (before anything is created)."""
    if fsync not in ("always", "interval", "never"):
        raise ValueError(f"fsync must be 'always', 'interval' or 'never', not {fsync!r}")
    if not fsync_interval > 0:
        raise ValueError("fsync_interval must be > 0")
    if segment_bytes < 64:
        raise ValueError("segment_bytes must be at least 64")
    if max_bytes <= 0:
        raise ValueError("max_bytes must be > 0")
    if writer_id is not None and not _WRITER_ID_RE.match(writer_id):
        raise ValueError(f"writer_id {writer_id!r} must match {_WRITER_ID_RE.pattern}")


class SpoolWriter:
    """Appends this process's events to its own segments of a spool directory.

    Created lazily: the first append opens a segment. Appends are thread-safe; a fork gives
    the child its own writer id and segment (:meth:`after_fork`).
    """

    def __init__(
        self,
        directory: str,
        *,
        writer_id: str | None,
        fsync: FsyncPolicy,
        fsync_interval: float,
        segment_bytes: int,
        max_bytes: int,
        metrics: SpoolMetrics,
        ledger: DamageLedger,
        files: CursorFiles,
    ) -> None:
        self.directory = directory
        self.writer_id = writer_id if writer_id is not None else default_writer_id()
        self.fsync: FsyncPolicy = fsync
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._ledger = ledger
        self._files = files
        self._rejected_total = 0
        self._reset_writer_state()

    def _reset_writer_state(self) -> None:
        """Fresh locks and no open segment: at construction and in a forked child."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._fd = -1
        self._seq: int | None = None
        self._offset = 0
        self._segment_frames = 0
        self._open_path = ""
        self._must_roll = False
        self._dirty = False
        self._dir_dirty = False
        self._budget = 0
        self._usage_due = float("-inf")
        self._fsync_stop = threading.Event()
        self._fsync_thread: threading.Thread | None = None

    # ---------------------------------------------------------------- writing

    def append(self, payload: bytes) -> None:
        """Store one event. Returns once it is in the kernel (fsynced too under ``"always"``).

        Raises :class:`SpoolFullError` when it cannot be stored; nothing is dropped silently.
        This is on the pipeline's path, so the common case is one frame encoding, one lock and
        one ``os.write``: the directory total and segment roll are looked at only when due.
        """
        frame = encode_frame(payload)
        size = len(frame)
        if self._pid != os.getpid():  # forked without the at-fork hook
            self.after_fork()
        with self._lock:
            try:
                if self._must_roll:
                    self._seal_locked()  # before the room check, which may keep failing
                if (
                    self._fd < 0
                    or size > self._budget
                    or self._offset + size > self.segment_bytes
                    or time.monotonic() >= self._usage_due
                ):
                    self._check_room_locked(size)
                    self._ensure_segment_locked(size)
                self._write_locked(frame)
            except SpoolFullError as exc:
                self._rejected(exc.reason, 1)
                raise

    def append_many(self, payloads: Sequence[bytes], *, partial: bool = False) -> None:
        """Store several events with as few writes as segment boundaries allow.

        The size limit is checked for the whole batch (all or nothing) unless ``partial``:
        then the longest prefix that fits is stored before :class:`SpoolFullError` is raised
        (its ``stored`` says how many), so a backlog larger than the room left drains piece by
        piece, oldest first, instead of being refused whole for ever. See
        :class:`SpoolFullError` for a disk that fills in the middle.
        """
        frames = [encode_frame(p) for p in payloads]
        if not frames:
            return
        if self._pid != os.getpid():
            self.after_fork()
        with self._lock:
            i = 0
            try:
                if self._must_roll:
                    self._seal_locked()
                total = sum(len(f) for f in frames)
                if partial:
                    frames, refused = self._prefix_that_fits_locked(frames, total)
                else:
                    self._check_room_locked(total)
                    refused = None
                while i < len(frames):
                    first = len(frames[i])
                    self._ensure_segment_locked(first)
                    room = max(self.segment_bytes - self._offset, first)
                    j, size = i + 1, first
                    while j < len(frames) and size + len(frames[j]) <= room:
                        size += len(frames[j])
                        j += 1
                    self._write_locked(frames[i] if j == i + 1 else b"".join(frames[i:j]), j - i)
                    i = j
                if refused is not None:
                    raise refused
            except SpoolFullError as exc:
                exc.stored = i
                self._rejected(exc.reason, len(payloads) - i)
                raise

    def _prefix_that_fits_locked(
        self, frames: list[bytes], total: int
    ) -> tuple[list[bytes], SpoolFullError | None]:
        """The frames that fit the size limit, and the error for the rest (None: all fit)."""
        try:
            self._check_room_locked(total)
            return frames, None
        except SpoolFullError as exc:
            refused = exc
        room, k = self._budget, 0
        while k < len(frames) and len(frames[k]) <= room:
            room -= len(frames[k])
            k += 1
        return frames[:k], refused

    def _check_room_locked(self, size: int) -> None:
        """Raise unless ``size`` more bytes keep the directory within ``max_bytes``.

        ``_budget`` is what is left by the last directory scan minus what this writer wrote
        since; other writers' growth is seen at the next scan (every second, every 50 ms near
        the limit, and at once after this Spool's gc).
        """
        now = time.monotonic()
        if now >= self._usage_due:
            self._check_linked_locked()
            usage = sum(s.size for segs in list_segments(self.directory).values() for s in segs)
            self._budget = self.max_bytes - usage
            self._usage_due = now + (
                USAGE_REFRESH if usage + size < 0.9 * self.max_bytes else USAGE_REFRESH_NEAR_FULL
            )
        if size > self._budget:
            raise SpoolFullError(
                "size_limit",
                f"spool {self.directory} would exceed max_bytes="
                f"{self.max_bytes} (about {self.max_bytes - self._budget} bytes held)",
            )

    def _check_linked_locked(self) -> None:
        """Leave an open segment that was deleted under this writer (at most once a second).

        Appends to a deleted file succeed and reach nobody. Its frames that no consumer had
        read are lost: say so, count the segment as missing, and go on in a new segment, whose
        sequence number (one higher) tells consumers where the loss is.
        """
        if self._fd < 0:
            return
        try:
            linked = os.fstat(self._fd).st_nlink > 0
        except OSError:
            return
        if linked:
            return
        log.error(
            "odibi-observe: spool segment %s was deleted while this process wrote to it; "
            "those of its %d event(s) no consumer had read are lost (counted in %s)",
            self._open_path,
            self._segment_frames,
            SIDECAR_METRICS.spool_missing_segments.prometheus,
        )
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd, self._offset, self._dirty = -1, 0, False
        if self._seq is not None:
            self._seq += 1
        self._ledger.open_segment_deleted(os.path.basename(self._open_path))

    def _ensure_segment_locked(self, size: int) -> None:
        if self._fd >= 0 and (
            self._must_roll or (self._offset > 0 and self._offset + size > self.segment_bytes)
        ):
            self._seal_locked()
        if self._fd < 0:
            self._open_locked()

    def _open_locked(self) -> None:
        key = (self.directory, self.writer_id)
        if self._seq is None:
            self._seq = self._first_seq()
        with _next_seq_lock:
            self._seq = max(self._seq, _next_seq.get(key, 0))
        while True:
            path = os.path.join(self.directory, segment_base(self.writer_id, self._seq) + ".open")
            try:
                fd = os.open(
                    path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | O_CLOEXEC, 0o644
                )
            except FileExistsError:
                self._seq += 1
                continue
            except OSError as exc:
                if exc.errno in FULL_ERRNOS:
                    raise SpoolFullError(
                        "disk_full", f"cannot create a spool segment: {exc}"
                    ) from exc
                raise
            break
        with _next_seq_lock:
            _next_seq[key] = max(_next_seq.get(key, 0), self._seq + 1)
        lock_segment(fd)
        self._fd, self._offset, self._open_path, self._must_roll = fd, 0, path, False
        self._segment_frames = 0
        self._new_dir_entry_locked()
        if self.fsync == "interval" and self._fsync_thread is None:
            self._start_fsync_thread()

    def _first_seq(self) -> int:
        """A sequence number above every one this writer id used in segments or cursors."""
        seq = 0
        for s in list_segments(self.directory).get(self.writer_id, []):
            seq = max(seq, s.seq + 1)
        for acked in self._files.states().values():
            wm = acked.get(self.writer_id)
            if wm is not None:
                seq = max(seq, wm[0] + 1)
        return seq

    def _new_dir_entry_locked(self) -> None:
        if self.fsync == "always":
            fsync_dir(self.directory)
        elif self.fsync == "interval":
            self._dir_dirty = True

    def _write_locked(self, data: bytes, frames: int = 1) -> None:
        fd, start = self._fd, self._offset
        try:
            written = os.write(fd, data)
            while written < len(data):  # a short write is followed by the real error
                more = os.write(fd, memoryview(data)[written:])
                if more <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                written += more
            if self.fsync == "always":
                os.fsync(fd)
        except OSError as exc:
            self._undo_locked(start)
            if exc.errno in FULL_ERRNOS:
                raise SpoolFullError("disk_full", f"spool {self.directory}: {exc}") from exc
            raise
        self._offset = start + len(data)
        self._segment_frames += frames
        self._budget -= len(data)
        self._dirty = self.fsync != "always"

    def _undo_locked(self, start: int) -> None:
        """Cut a partly written frame off, so no torn frame is followed by good ones."""
        try:
            os.ftruncate(self._fd, start)
        except OSError:
            self._must_roll = True  # readers will count the torn tail; start a clean segment

    def _seal_locked(self) -> None:
        # A segment deleted under this writer is not sealed (its rename would fail with a
        # misleading "cannot seal"): it is reported as deleted, and the next one starts.
        self._check_linked_locked()
        fd, path = self._fd, self._open_path
        if fd < 0:
            return
        self._fd = -1
        reuse = False
        try:
            if self._offset == 0:
                os.unlink(path)
                reuse = True  # nothing was in it: its number is used again (no false gap)
            else:
                if self.fsync != "never" and self._dirty:
                    os.fsync(fd)
                os.rename(path, path[: -len(".open")] + ".seg")
                self._new_dir_entry_locked()
        except OSError as exc:
            warn_once_per_minute(
                "spool:seal", "odibi-observe: cannot seal spool segment %s: %s", path, exc
            )
        finally:
            os.close(fd)
            self._dirty = False
            self._offset = 0
            if self._seq is not None:
                if reuse:
                    self._release_seq_locked(self._seq)
                else:
                    self._seq += 1

    def _release_seq_locked(self, seq: int) -> None:
        """Let the next segment take ``seq`` again: a gap in a writer's numbers means loss."""
        key = (self.directory, self.writer_id)
        with _next_seq_lock:
            if _next_seq.get(key) == seq + 1:
                _next_seq[key] = seq

    def _rejected(self, reason: str, count: int) -> None:
        # Seal what this writer has written so far, now (the caller holds the lock): gc only
        # collects sealed segments (or a dead writer's), so a long-lived writer that kept its
        # open segment would hold its space for ever and stay rejected even after every
        # consumer has caught up. Sealing needs no room: a rename, and the fsync of data that
        # is already written.
        if self._offset > 0 or self._must_roll:
            self._seal_locked()
        with self._stats_lock:
            self._rejected_total += count
        self._metrics.rejected.labels(reason=reason).inc(count)
        warn_once_per_minute(
            f"spool:reject:{reason}",
            "odibi-observe: spool %s rejected %d event(s): %s (old events are kept; counted in "
            f"{SIDECAR_METRICS.spool_rejected.prometheus})",
            self.directory,
            count,
            reason,
        )

    def rejected_total(self) -> int:
        """Events this writer refused since it was made."""
        with self._stats_lock:
            return self._rejected_total

    def space_freed(self) -> None:
        """Look at the directory total again at the next append (gc has just freed some)."""
        with self._lock:
            self._usage_due = float("-inf")

    # ---------------------------------------------------------------- durability

    def sync(self) -> None:
        """fsync what this writer has written (whatever the policy), and new directory entries.

        The descriptor is duplicated under the lock and fsynced outside it, so appends from
        other threads never wait for the disk.
        """
        if self._pid != os.getpid():
            self.after_fork()
        with self._lock:
            fd = os.dup(self._fd) if self._fd >= 0 and self._dirty else -1
            dir_dirty = self._dir_dirty
            self._dirty = self._dir_dirty = False
        try:
            if fd >= 0:
                os.fsync(fd)
            if dir_dirty:
                fsync_dir(self.directory)
        except OSError:
            with self._lock:
                self._dirty = self._dirty or fd >= 0
                self._dir_dirty = self._dir_dirty or dir_dirty
            raise
        finally:
            if fd >= 0:
                os.close(fd)

    def _start_fsync_thread(self) -> None:
        stop = self._fsync_stop = threading.Event()
        self._fsync_thread = threading.Thread(
            target=_fsync_loop,
            args=(weakref.ref(self), stop, self.fsync_interval),
            name="odibi-observe-spool-fsync",
            daemon=True,
        )
        self._fsync_thread.start()

    def close(self) -> None:
        """Seal this writer's open segment and stop the fsync thread. Idempotent.

        Reading stays possible, and a later append opens a new segment.
        """
        if self._pid != os.getpid():
            self.after_fork()
        with self._lock:
            self._seal_locked()
            thread, self._fsync_thread = self._fsync_thread, None
            self._fsync_stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def after_fork(self) -> None:
        """In a forked child: a new writer id, a new segment (at the next append), new locks.

        The parent's segment stays the parent's: the child closes its inherited descriptor
        (the parent's flock lives on through the parent's own descriptor). Called by an
        at-fork hook; a no-op in the process that made the writer.
        """
        if self._pid == os.getpid():
            return
        inherited = self._fd
        self._reset_writer_state()
        if inherited >= 0:
            with contextlib.suppress(OSError):
                os.close(inherited)
        self.writer_id = default_writer_id()


def _fsync_loop(ref: weakref.ref[SpoolWriter], stop: threading.Event, interval: float) -> None:
    """The ``"interval"`` policy: fsync a dirty segment at most every ``interval`` seconds."""
    while not stop.wait(interval):
        spool = ref()
        if spool is None:
            return
        try:
            if spool._pid == os.getpid():
                spool.sync()
        except OSError as exc:
            warn_once_per_minute("spool:fsync", "odibi-observe: spool fsync failed: %s", exc)
        del spool


def after_fork_in_child() -> None:
    """A fresh lock for the sequence numbers in a forked child (called at fork by the Spool)."""
    global _next_seq_lock
    _next_seq_lock = threading.Lock()
