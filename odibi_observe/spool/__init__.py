"""The write-ahead spool: run events on local disk, safe from the death of the process.

The event bus makes delivery survive a *sink* (a dead collector, a hung database); it cannot make
it survive the *process*: a pipeline killed by SIGKILL or the OOM killer takes its queues with
it. The spool closes that gap. Pipeline processes append each event to a file on local disk
before anything else happens to it, and a consumer (the per-host sidecar) reads the files at its
own pace, one durable cursor per sink, so a sink that is down for an hour only delays itself.

Layout of a spool directory (one per host, shared by every pipeline process on it)::

    <dir>/<writer_id>.<seq:012d>.open   the segment a live writer appends to
    <dir>/<writer_id>.<seq:012d>.seg    a sealed segment (renamed from .open on roll/close)
    <dir>/cursors/<name>.json           one durable cursor per consumer (sink)
    <dir>/cursors/.reserve              room kept for cursor files on a full filesystem

Writers never share a file, so no cross-process write lock exists and a writer that dies holds
nothing another process waits for. ``writer_id`` defaults to ``<host>-<pid>-<process start
ns>``: the pid and the start time tell a reader whether the writer is still running (see
:func:`process_alive`), which decides whether a short last frame is *still being written* or
*torn for ever*. A writer additionally holds a ``flock`` on its ``.open`` segment; the kernel
drops it when the process dies, which guards the pid test against pid namespaces (a sidecar in
another container) and wall-clock steps.

Frame format (integers little-endian), one frame per event::

    offset  size  field
    0       4     magic b"\\xa7OSF"  (0xA7 never occurs in ASCII or UTF-8 text)
    4       4     payload length n (u32, at most MAX_PAYLOAD)
    8       4     CRC-32 of the payload
    12      4     CRC-32 of bytes 0..11 (the header check)
    16      n     payload

The header has its own CRC so that a reader can trust the length *before* the payload is
complete: a valid header whose payload runs past the end of a live writer's segment is a frame
in progress (re-read later), not damage. A damaged frame (bad header or payload CRC, a torn tail
of a sealed or dead segment) is skipped, counted once per Spool and logged; the reader
resynchronises on the next offset that holds a valid magic + header + payload CRC, so the good
frames before *and* after the damage are kept. The count is of frames lost
(``stats().corrupt_frames``, ``odibi_observe_spool_corrupt_frames_total``): exact where a
frame's header survived, else estimated from the bytes skipped and the mean frame size; the
damaged regions are counted too. A segment deleted before it was read is found from the gap in
its writer's sequence numbers (``odibi_observe_spool_missing_segments_total``). Runs whose end
may be lost are named in :meth:`Spool.damage`.

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

Delivery is at least once: a cursor acknowledges by writing its position atomically (temporary
file + ``os.replace``); frames read but not acknowledged are read again when the cursor is
re-opened (or :meth:`SpoolCursor.rewind` is called). An acknowledgement is a watermark per
writer: acking a frame acknowledges every earlier frame of the same writer, as sinks consume in
order. Segments are deleted by :meth:`Spool.gc` only when every cursor in the directory has
acknowledged all their frames and they are sealed or their writer is dead; with no cursor at all
nothing is deleted (events wait for their first consumer).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from prometheus_client import CollectorRegistry

from odibi_observe.conventions import SIDECAR_METRICS
from odibi_observe.record import _FINISHED_PREFIX, _STARTED_PREFIX  # see record.peek_event
from odibi_observe.selfmetrics import log, warn_once_per_minute
from odibi_observe.spool.frames import HEADER as _HEADER
from odibi_observe.spool.frames import HEADER_SIZE, MAGIC, MAX_PAYLOAD, encode_frame
from odibi_observe.spool.frames import Parsed as _Parsed
from odibi_observe.spool.frames import read_segment as _read_segment
from odibi_observe.spool.liveness import DEFAULT_WRITER_RE as _DEFAULT_WRITER_RE
from odibi_observe.spool.liveness import HOST as _HOST
from odibi_observe.spool.liveness import default_writer_id as _default_writer_id
from odibi_observe.spool.liveness import process_alive, process_start_ns, writer_pid
from odibi_observe.spool.liveness import writer_dead as _writer_dead
from odibi_observe.spool.locks import flock_held as _flock_held
from odibi_observe.spool.locks import lock_segment as _lock_segment
from odibi_observe.spool.metrics import SpoolStats
from odibi_observe.spool.metrics import metrics_for as _metrics_for

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_PAYLOAD",
    "FsyncPolicy",
    "Spool",
    "SpoolCursor",
    "SpoolDamage",
    "SpoolEntry",
    "SpoolFullError",
    "SpoolPosition",
    "SpoolStats",
    "encode_frame",
    "process_alive",
    "process_start_ns",
    "writer_pid",
]

FsyncPolicy = Literal["always", "interval", "never"]

_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_SEGMENT_RE: Final = re.compile(r"^(?P<writer>.+)\.(?P<seq>\d{12})\.(?P<suffix>open|seg)$")
_WRITER_ID_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
_CURSOR_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CURSOR_VERSION: Final = 1
#: Bytes held in ``cursors/.reserve`` for cursor files: a spool whose filesystem fills before
#: its first consumer starts must still let that consumer write its cursors (see
#: :meth:`Spool._ensure_reserve`). Tens of cursor files fit, at a page each.
CURSOR_RESERVE: Final = 32 * 2**10
_RESERVE_NAME: Final = ".reserve"
#: Damage accounting bounds: run ids kept as affected, open runs tracked per writer, bytes of a
#: damaged region scanned for run ids, and the frame size assumed when none was seen.
_MAX_AFFECTED: Final = 1000
_MAX_OPEN_RUNS: Final = 10_000
_MAX_DAMAGE_SCAN: Final = 4 * 2**20
_DEFAULT_FRAME: Final = 512
#: Damage found by a reader, one JSON line per finding, for ``odibi-observe reconcile
#: --spool-dir``: the sidecar's counters start again at a restart, this file does not.
DAMAGE_LOG: Final = "damage.jsonl"
#: The damage log stops growing here (a spool damaged this often has a disk to replace).
DAMAGE_LOG_MAX_BYTES: Final = 2**20
_MAX_LOGGED_RUNS: Final = 100
_RUN_ID_RE: Final = re.compile(rb'"run_id":"([A-Za-z0-9_.:-]{1,200})"')
#: Directory total is re-read this often normally, and more often near the limit.
_USAGE_REFRESH: Final = 1.0
_USAGE_REFRESH_NEAR_FULL: Final = 0.05
_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)


# --------------------------------------------------------------------------------------------
# Public value types


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


@dataclass(frozen=True, slots=True)
class SpoolDamage:
    """What this Spool has found lost, since it was made (see :meth:`Spool.damage`).

    ``frames_lost`` counts frames in damaged regions: exact for frames whose header survived,
    otherwise estimated from the bytes skipped and the mean frame size around them. Frames in
    ``missing_segments`` cannot be counted (the file is gone). ``runs_affected`` are the runs
    whose terminal event may have been lost: a run id readable in damaged bytes, or a run whose
    start was read before the loss and whose end has not been read since (bounded, newest
    last; a run leaves the list when its end turns up after all).
    """

    damaged_regions: int
    frames_lost: int
    missing_segments: int
    runs_affected: tuple[str, ...]
    last: str | None

    def as_dict(self) -> dict[str, object]:
        return {"damaged_regions": self.damaged_regions, "frames_lost": self.frames_lost,
                "missing_segments": self.missing_segments,
                "runs_affected": list(self.runs_affected), "last": self.last}


def read_damage_log(directory: str | os.PathLike[str]) -> list[dict[str, object]]:
    """The findings a reader of the spool in ``directory`` logged (:data:`DAMAGE_LOG`), oldest
    first; [] when there is none. Lines that do not parse are skipped."""
    try:
        with open(os.path.join(os.fspath(directory), DAMAGE_LOG), encoding="ascii",
                  errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Segments


@dataclass(frozen=True, slots=True)
class _Segment:
    writer: str
    seq: int
    sealed: bool
    size: int
    name: str


def _segment_base(writer: str, seq: int) -> str:
    return f"{writer}.{seq:012d}"


#: Sequence numbers already used in this process, per (directory, writer id): a writer that
#: re-opens a spool whose segments were all collected must not reuse a number a cursor has seen.
_next_seq: dict[tuple[str, str], int] = {}
_next_seq_lock = threading.Lock()
_spools: weakref.WeakSet[Spool] = weakref.WeakSet()


class Spool:
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
        self.directory = os.path.abspath(os.fspath(directory))
        self._cursor_dir = os.path.join(self.directory, "cursors")
        os.makedirs(self._cursor_dir, exist_ok=True)
        self.cursor_reserve = max(0, cursor_reserve)
        self._reserve_path = os.path.join(self._cursor_dir, _RESERVE_NAME)
        self._ensure_reserve()
        self.writer_id = writer_id if writer_id is not None else _default_writer_id()
        self.fsync: FsyncPolicy = fsync
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = _metrics_for(self.registry)
        self._metrics.gauges.spools.add(self)
        self._cursors: weakref.WeakValueDictionary[str, SpoolCursor] = (
            weakref.WeakValueDictionary())
        self._corrupt_seen: set[tuple[str, int, int]] = set()
        self._frame_counts: dict[tuple[str, int], tuple[int, int, int]] = {}
        self._corrupt_total = 0
        self._regions_total = 0
        self._missing_total = 0
        self._missing_seen: set[tuple[str, int]] = set()
        self._collected: set[tuple[str, int]] = set()
        self._tracked: dict[str, tuple[int, int]] = {}
        self._open_runs: dict[str, dict[bytes, None]] = {}
        self._suspect_writers: set[str] = set()
        self._affected: dict[str, str] = {}  # run id -> the writer that lost its end
        self._last_damage: str | None = None
        self._mean_frame = float(_DEFAULT_FRAME)
        self._rejected_total = 0
        self._reset_writer_state()
        _spools.add(self)

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
                if (self._fd < 0 or size > self._budget
                        or self._offset + size > self.segment_bytes
                        or time.monotonic() >= self._usage_due):
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
                    self._write_locked(frames[i] if j == i + 1 else b"".join(frames[i:j]),
                                       j - i)
                    i = j
                if refused is not None:
                    raise refused
            except SpoolFullError as exc:
                exc.stored = i
                self._rejected(exc.reason, len(payloads) - i)
                raise

    def _prefix_that_fits_locked(self, frames: list[bytes], total: int
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
            usage = sum(s.size for segs in self._list_segments().values() for s in segs)
            self._budget = self.max_bytes - usage
            self._usage_due = now + (_USAGE_REFRESH if usage + size < 0.9 * self.max_bytes
                                     else _USAGE_REFRESH_NEAR_FULL)
        if size > self._budget:
            raise SpoolFullError(
                "size_limit", f"spool {self.directory} would exceed max_bytes="
                f"{self.max_bytes} (about {self.max_bytes - self._budget} bytes held)")

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
        log.error("odibi-observe: spool segment %s was deleted while this process wrote to it; "
                  "those of its %d event(s) no consumer had read are lost (counted in %s)",
                  self._open_path, self._segment_frames,
                  SIDECAR_METRICS.spool_missing_segments.prometheus)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd, self._offset, self._dirty = -1, 0, False
        if self._seq is not None:
            self._seq += 1
        with self._stats_lock:
            self._missing_total += 1
            self._last_damage = f"open segment {os.path.basename(self._open_path)} deleted"
        self._metrics.missing.inc()
        self._log_damage(f"open segment {os.path.basename(self._open_path)} deleted while "
                         f"its writer wrote to it", missing_segments=1)

    def _ensure_segment_locked(self, size: int) -> None:
        if self._fd >= 0 and (self._must_roll or (
                self._offset > 0 and self._offset + size > self.segment_bytes)):
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
            path = os.path.join(self.directory, _segment_base(self.writer_id, self._seq) + ".open")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | _O_CLOEXEC,
                             0o644)
            except FileExistsError:
                self._seq += 1
                continue
            except OSError as exc:
                if exc.errno in _FULL_ERRNOS:
                    raise SpoolFullError("disk_full", f"cannot create a spool segment: {exc}"
                                         ) from exc
                raise
            break
        with _next_seq_lock:
            _next_seq[key] = max(_next_seq.get(key, 0), self._seq + 1)
        _lock_segment(fd)
        self._fd, self._offset, self._open_path, self._must_roll = fd, 0, path, False
        self._segment_frames = 0
        self._new_dir_entry_locked()
        if self.fsync == "interval" and self._fsync_thread is None:
            self._start_fsync_thread()

    def _first_seq(self) -> int:
        """A sequence number above every one this writer id used in segments or cursors."""
        seq = 0
        for s in self._list_segments().get(self.writer_id, []):
            seq = max(seq, s.seq + 1)
        for acked in self._cursor_states(own=False).values():
            wm = acked.get(self.writer_id)
            if wm is not None:
                seq = max(seq, wm[0] + 1)
        return seq

    def _new_dir_entry_locked(self) -> None:
        if self.fsync == "always":
            _fsync_dir(self.directory)
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
            if exc.errno in _FULL_ERRNOS:
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
            warn_once_per_minute("spool:seal", "odibi-observe: cannot seal spool segment %s: %s",
                                  path, exc)
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
            "odibi_observe_spool_rejected_total)", self.directory, count, reason)

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
                _fsync_dir(self.directory)
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
            target=_fsync_loop, args=(weakref.ref(self), stop, self.fsync_interval),
            name="odibi-observe-spool-fsync", daemon=True)
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

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def after_fork(self) -> None:
        """In a forked child: a new writer id, a new segment (at the next append), new locks.

        The parent's segment stays the parent's: the child closes its inherited descriptor
        (the parent's flock lives on through the parent's own descriptor). Called by an
        at-fork hook; a no-op in the process that made the Spool.
        """
        if self._pid == os.getpid():
            return
        inherited = self._fd
        self._reset_writer_state()
        if inherited >= 0:
            with contextlib.suppress(OSError):
                os.close(inherited)
        self.writer_id = _default_writer_id()
        for cursor in list(self._cursors.values()):
            cursor._lock = threading.Lock()

    # ---------------------------------------------------------------- reading

    def cursor(self, name: str) -> SpoolCursor:
        """Open (creating if needed) the durable cursor ``name``, at its acknowledged position.

        Its state file exists from now on, so :meth:`gc` keeps every frame it has not
        acknowledged. Use one cursor object per name at a time (one consumer per sink).
        """
        if not _CURSOR_NAME_RE.match(name):
            raise ValueError(f"cursor name {name!r} must match {_CURSOR_NAME_RE.pattern}")
        cursor = SpoolCursor(self, name)
        self._cursors[name] = cursor
        return cursor

    def open_cursors(self) -> list[SpoolCursor]:
        """Cursors opened through this Spool that are still referenced."""
        return list(self._cursors.values())

    def drop_cursor(self, name: str) -> bool:
        """Delete cursor ``name`` (a sink removed for good) so it no longer holds segments."""
        self._cursors.pop(name, None)
        try:
            os.unlink(os.path.join(self._cursor_dir, f"{name}.json"))
        except FileNotFoundError:
            return False
        return True

    def _list_segments(self) -> dict[str, list[_Segment]]:
        """Segments in the directory by writer, in sequence order.

        A listing is a snapshot of a directory other processes change: callers open segments
        by name and tolerate their absence.
        """
        found: dict[str, dict[int, _Segment]] = {}
        try:
            entries = os.scandir(self.directory)
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
                segment = _Segment(writer, seq, m["suffix"] == "seg", size, entry.name)
                by_seq = found.setdefault(writer, {})
                if seq not in by_seq or segment.sealed:  # renamed during the listing
                    by_seq[seq] = segment
        return {w: [by_seq[s] for s in sorted(by_seq)] for w, by_seq in found.items()}

    def _open_segment(self, writer: str, seq: int) -> tuple[int, bool, str] | None:
        """Open segment ``seq`` of ``writer`` for reading: (fd, sealed, path), None if absent.

        ``.open`` is tried first: a writer renames only ``.open`` to ``.seg``, so when ``.open``
        is missing the ``.seg`` attempt is conclusive.
        """
        base = os.path.join(self.directory, _segment_base(writer, seq))
        for suffix, sealed in ((".open", False), (".seg", True)):
            try:
                return os.open(base + suffix, os.O_RDONLY | _O_CLOEXEC), sealed, base + suffix
            except FileNotFoundError:
                continue
        return None

    def _final(self, writer: str, fd: int) -> bool:
        """Will this ``.open`` segment never grow again (its writer is dead)?

        A held flock means a writer lives (possibly in another pid namespace). Otherwise a
        default writer id is judged by pid and start time; any other id by the flock alone.
        """
        held = _flock_held(fd)
        if held:
            return False
        m = _DEFAULT_WRITER_RE.match(writer)
        if m is not None and m["host"] == _HOST:
            return not process_alive(int(m["pid"]), int(m["start"]))
        return held is False

    def _absorb(self, writer: str, seq: int, parsed: _Parsed, fd: int) -> None:
        """Account for what a read found, in file order: runs started and ended, and damage.

        Each frame and damaged region is taken once per Spool however many cursors read it
        (the furthest position per writer is remembered), so counts and the open runs agree.
        This is on the sidecar's read path: without damage it is a prefix test per frame.
        """
        if parsed.corrupt:
            self._absorb_damage(writer, seq, parsed, fd)
            return
        frames = parsed.frames
        if not frames:
            return
        with self._stats_lock:
            mark = self._tracked.get(writer)
            if mark is not None and (seq, frames[0][0]) < mark:
                frames = [f for f in frames if (seq, f[0]) >= mark]
                if not frames:
                    return
            self._track_locked(writer, frames)
            self._tracked[writer] = (seq, frames[-1][1])
            self._mean_frame = (0.8 * self._mean_frame
                                + 0.2 * (frames[-1][1] - frames[0][0]) / len(frames))

    def _track_locked(self, writer: str, frames: Sequence[tuple[int, int, bytes]]) -> None:
        """Runs of ``writer`` started and not ended yet, from the frames' payload prefixes."""
        runs = self._open_runs.get(writer)
        if runs is None:
            runs = self._open_runs[writer] = {}
        watch = writer in self._suspect_writers
        started, finished = _STARTED_PREFIX, _FINISHED_PREFIX
        ls, lf = len(started), len(finished)
        for _, _, payload in frames:
            if payload.startswith(finished):
                run_id = payload[lf:payload.find(b'"', lf)]
                runs.pop(run_id, None)
                if watch:
                    # Its end turned up after all; only its own writer's counts (the
                    # sweeper's CRASHED for a run whose end was lost is no such end).
                    key = run_id.decode("utf-8", "replace")
                    if self._affected.get(key) == writer:
                        del self._affected[key]
            elif payload.startswith(started):
                runs[payload[ls:payload.find(b'"', ls)]] = None
        while len(runs) > _MAX_OPEN_RUNS:
            del runs[next(iter(runs))]

    def _absorb_damage(self, writer: str, seq: int, parsed: _Parsed, fd: int) -> None:
        """:meth:`_absorb` for a read that met damage: count it, name the runs it may hit."""
        new_regions = []
        with self._stats_lock:
            for start, end in parsed.corrupt:
                key = (writer, seq, start)
                if key not in self._corrupt_seen:
                    self._corrupt_seen.add(key)
                    new_regions.append((start, end))
        frames = parsed.frames
        mean = (sum(e - s for s, e, _ in frames) / len(frames) if frames else self._mean_frame)
        damage = [(start, end, *self._inspect_region(fd, start, end, mean))
                  for start, end in new_regions]
        order = sorted([(f[0], 0, i) for i, f in enumerate(frames)]
                       + [(d[0], 1, i) for i, d in enumerate(damage)])
        lost = 0
        with self._stats_lock:
            mark = self._tracked.get(writer)
            for _, is_damage, i in order:
                if is_damage:
                    lost += damage[i][2]
                    self._suspect_locked(writer, self._open_runs.get(writer, {}), damage[i][3])
                    continue
                frame = frames[i]
                if mark is not None and (seq, frame[0]) < mark:
                    continue
                mark = (seq, frame[1])
                self._track_locked(writer, [frame])
            if mark is not None:
                self._tracked[writer] = mark
            self._corrupt_total += lost
            self._regions_total += len(damage)
            if damage:
                start, end, count, _ = damage[0]
                self._last_damage = (f"{len(damage)} damaged region(s) in "
                                     f"{_segment_base(writer, seq)}, first at byte {start} "
                                     f"({end - start} bytes, ~{count} frame(s))")
        if not damage:
            return
        self._metrics.corrupt.inc(lost)
        self._metrics.regions.inc(len(damage))
        start, end, _, _ = damage[0]
        self._log_damage(f"{len(damage)} damaged region(s) in {_segment_base(writer, seq)}, "
                         f"first at byte {start}", frames_lost=lost,
                         runs=[r for r, w in list(self._affected.items()) if w == writer])
        warn_once_per_minute(
            "spool:corrupt",
            "odibi-observe: skipped %d damaged region(s), about %d frame(s), in %s (first at byte "
            "%d, %d bytes); the frames around them are kept (counted in "
            "odibi_observe_spool_corrupt_frames_total)",
            len(damage), lost, _segment_base(writer, seq), start, end - start)

    def _suspect_locked(self, writer: str, open_runs: dict[bytes, None],
                        run_ids: Sequence[str]) -> None:
        """Runs whose end may be in a lost range: ids read in it, and runs still open."""
        self._suspect_writers.add(writer)
        for run_id in [*(r.decode("utf-8", "replace") for r in open_runs), *run_ids]:
            self._affected.pop(run_id, None)
            self._affected[run_id] = writer
        while len(self._affected) > _MAX_AFFECTED:
            del self._affected[next(iter(self._affected))]

    @staticmethod
    def _inspect_region(fd: int, start: int, end: int, mean: float) -> tuple[int, list[str]]:
        """(frames lost, run ids readable) in the damaged bytes ``start..end`` of ``fd``.

        Frames whose header survived (magic and header CRC) are counted one each and skipped
        by their length; the rest of the bytes are divided by the mean frame size.
        """
        try:
            data = os.pread(fd, min(end - start, _MAX_DAMAGE_SCAN), start)
        except OSError:
            data = b""
        exact, covered, p = 0, 0, 0
        while (p := data.find(MAGIC, p)) >= 0:
            if len(data) - p >= HEADER_SIZE:
                _, length, _, header_crc = _HEADER.unpack_from(data, p)
                if length <= MAX_PAYLOAD and zlib.crc32(data[p:p + 12]) == header_crc:
                    exact += 1
                    span = min(HEADER_SIZE + length, end - start - p)
                    covered += span
                    p += max(span, 1)
                    continue
            p += 1
        rest = max(end - start - covered, 0)
        estimate = exact + (round(rest / mean) if mean > 0 else 0)
        run_ids = list(dict.fromkeys(m.decode() for m in _RUN_ID_RE.findall(data)))
        return max(1, estimate), run_ids

    def _note_missing(self, writer: str, first: int, stop: int) -> None:
        """Segments ``first..stop-1`` of ``writer`` are gone before this Spool read them."""
        with self._stats_lock:
            new = [q for q in range(first, stop) if (writer, q) not in self._missing_seen
                   and (writer, q) not in self._collected]
            if not new:
                return
            self._missing_seen.update((writer, q) for q in new)
            self._missing_total += len(new)
            self._suspect_locked(writer, self._open_runs.get(writer, {}), [])
            self._last_damage = (f"{len(new)} segment(s) of writer {writer} missing "
                                 f"(sequence {new[0]}..{new[-1]})")
        self._metrics.missing.inc(len(new))
        self._log_damage(f"{len(new)} segment(s) of writer {writer} missing (sequence "
                         f"{new[0]}..{new[-1]})", missing_segments=len(new),
                         runs=[r for r, w in list(self._affected.items()) if w == writer])
        warn_once_per_minute(
            f"spool:missing:{writer}",
            "odibi-observe: %d spool segment(s) of writer %s are missing (sequence %d..%d), "
            "deleted before they were read: their events are lost (counted in %s)",
            len(new), writer, new[0], new[-1], SIDECAR_METRICS.spool_missing_segments.prometheus)

    def _log_damage(self, what: str, *, frames_lost: int = 0, missing_segments: int = 0,
                    runs: Sequence[str] = ()) -> None:
        """Append one finding to :data:`DAMAGE_LOG` (bounded); never raises."""
        path = os.path.join(self.directory, DAMAGE_LOG)
        line = json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "what": what,
            "frames_lost": frames_lost, "missing_segments": missing_segments,
            "runs_affected": list(dict.fromkeys(runs))[:_MAX_LOGGED_RUNS],
        }, ensure_ascii=True) + "\n"
        try:
            if os.path.getsize(path) + len(line) > DAMAGE_LOG_MAX_BYTES:
                warn_once_per_minute("spool:damage-log", "odibi-observe: %s is full (%d bytes); "
                                      "further damage is only counted", path,
                                      DAMAGE_LOG_MAX_BYTES)
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as exc:
            warn_once_per_minute("spool:damage-log", "odibi-observe: cannot write %s: %s",
                                  path, exc)

    def damage(self) -> SpoolDamage:
        """What this Spool has found lost so far (damaged frames, missing segments, runs)."""
        with self._stats_lock:
            return SpoolDamage(self._regions_total, self._corrupt_total, self._missing_total,
                               tuple(self._affected), self._last_damage)

    def _cursor_states(self, own: bool = True) -> dict[str, dict[str, tuple[int, int]]]:
        """Acknowledged positions of every cursor in the directory, by cursor name.

        An unreadable state file counts as "nothing acknowledged" (it holds everything back
        rather than losing events). With ``own``, this Spool's live cursors contribute their
        in-memory state, which is never behind their file (an ack whose write failed, e.g. on
        a full disk, still lets gc free space).
        """
        states: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            names = [n for n in os.listdir(self._cursor_dir)
                     if n.endswith(".json") and not n.startswith(".")]
        except FileNotFoundError:
            names = []
        for filename in names:
            name = filename[: -len(".json")]
            loaded = _load_cursor_file(os.path.join(self._cursor_dir, filename))
            states[name] = loaded if loaded is not None else {}
        if own:
            # Every live cursor of this Spool counts, with or without its file: one whose file
            # could not be written yet (a full disk) must neither be ignored (gc would delete
            # what it has not read) nor stop gc from freeing what it has read.
            for name, cursor in list(self._cursors.items()):
                with cursor._lock:
                    states[name] = dict(cursor._acked)
        return states

    def _ensure_reserve(self) -> None:
        """Hold :data:`CURSOR_RESERVE` bytes in ``cursors/.reserve`` if it is missing.

        Writers fill the filesystem; a consumer that has never run then could not create the
        cursor files that gc needs before it deletes anything, and the spool would stay full
        for ever. The reserve is made while there is room (a new directory, or after gc freed
        some) and given up by the first cursor write that meets ENOSPC. A reserve that cannot
        be made (the disk is full already) is simply not there; nothing else depends on it.
        """
        if not self.cursor_reserve or os.path.exists(self._reserve_path):
            return
        tmp = f"{self._reserve_path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
            try:
                data = memoryview(b"\0" * self.cursor_reserve)
                while data:  # real blocks, not a sparse file: the room must be taken
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
            os.replace(tmp, self._reserve_path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _release_reserve(self) -> bool:
        """Free the cursor reserve (a cursor write met a full disk); False if there was none."""
        try:
            os.unlink(self._reserve_path)
        except OSError:
            return False
        log.warning("odibi-observe: spool %s is full; released the %d-byte cursor reserve so "
                    "the consumer can record its position and collect segments",
                    self.directory, self.cursor_reserve)
        return True

    def _write_cursor_file(self, name: str, acked: dict[str, tuple[int, int]]) -> None:
        """Replace ``cursors/<name>.json`` atomically; on ENOSPC use the reserve, once."""
        try:
            self._write_cursor_file_once(name, acked)
        except OSError as exc:
            if exc.errno not in _FULL_ERRNOS or not self._release_reserve():
                raise
            self._write_cursor_file_once(name, acked)

    def _write_cursor_file_once(self, name: str, acked: dict[str, tuple[int, int]]) -> None:
        """Replace ``cursors/<name>.json`` atomically (temp file, fsync per policy, rename)."""
        data = json.dumps({"version": _CURSOR_VERSION, "acked": {w: list(p) for w, p in
                                                                 sorted(acked.items())}},
                          separators=(",", ":")).encode()
        final = os.path.join(self._cursor_dir, f"{name}.json")
        tmp = os.path.join(self._cursor_dir,
                           f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync != "never":
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.fsync == "always":
            _fsync_dir(self._cursor_dir)

    def _count_frames(self, segment: _Segment, start: int) -> int:
        """Valid frames of ``segment`` at or after ``start``, cached and extended incrementally."""
        key = (segment.writer, segment.seq)
        with self._stats_lock:
            cached = self._frame_counts.get(key)
        scanned, count = start, 0
        if cached is not None and cached[0] == start:
            scanned, count = cached[1], cached[2]
            if scanned >= segment.size:
                return count
        opened = self._open_segment(segment.writer, segment.seq)
        if opened is None:
            return 0
        fd, sealed, _ = opened
        try:
            parsed = _read_segment(fd, scanned, final=sealed, limit=sys.maxsize, payloads=False)
        finally:
            os.close(fd)
        count += len(parsed.frames)
        with self._stats_lock:
            self._frame_counts[key] = (start, parsed.resume, count)
        return count

    # ---------------------------------------------------------------- maintenance

    def gc(self) -> int:
        """Delete segments every cursor has fully acknowledged; returns the bytes freed.

        Only sealed segments and ``.open`` segments of dead writers are candidates. "Fully
        acknowledged" means no valid frame lies after any cursor's watermark, so damaged bytes
        at the end of a segment do not keep it for ever. With no cursor, nothing is deleted.
        """
        states = self._cursor_states()
        listing = self._list_segments()
        freed = 0
        if states:
            for segments in listing.values():
                for segment in segments:
                    freed += self._collect(segment, states)
        after = self._list_segments()
        live = {(s.writer, s.seq) for segs in after.values() for s in segs}
        with self._stats_lock:
            self._corrupt_seen = {k for k in self._corrupt_seen if (k[0], k[1]) in live}
            self._frame_counts = {k: v for k, v in self._frame_counts.items() if k in live}
            self._prune_writers_locked(after)
        with self._lock:
            self._usage_due = float("-inf")  # appends see the freed space at once
        self._remove_stale_temp_files()
        if freed:
            self._ensure_reserve()  # taken back while there is room, for the next time
        return freed

    def _prune_writers_locked(self, listing: dict[str, list[_Segment]]) -> None:
        """Forget the per-writer damage bookkeeping of writers that are gone for good."""
        known = {w for w, _ in self._collected} | set(self._tracked) | set(self._open_runs)
        for writer in [w for w in known if w not in listing and _writer_dead(w)]:
            self._collected = {k for k in self._collected if k[0] != writer}
            self._missing_seen = {k for k in self._missing_seen if k[0] != writer}
            self._tracked.pop(writer, None)
            self._open_runs.pop(writer, None)
            self._suspect_writers.discard(writer)

    def _collect(self, segment: _Segment, states: dict[str, dict[str, tuple[int, int]]]) -> int:
        """Delete ``segment`` if it is final and no cursor has a frame left in it."""
        start = sys.maxsize  # the lowest acknowledged offset inside the segment, over cursors
        for acked in states.values():
            wm = acked.get(segment.writer)
            if wm is None or wm[0] < segment.seq:
                start = 0
                break
            if wm[0] == segment.seq:
                start = min(start, wm[1])
        opened = self._open_segment(segment.writer, segment.seq)
        if opened is None:
            return 0
        fd, sealed, path = opened
        try:
            if not sealed and not self._final(segment.writer, fd):
                return 0
            size = os.fstat(fd).st_size  # after the liveness test: the size cannot change now
            if start < size and _read_segment(fd, start, final=True, limit=1,
                                              payloads=False).frames:
                return 0
            try:
                os.unlink(path)
            except FileNotFoundError:  # another process collected it
                return 0
            with self._stats_lock:
                self._collected.add((segment.writer, segment.seq))
            return size
        finally:
            os.close(fd)

    def _remove_stale_temp_files(self) -> None:
        """Temporary cursor files left by a process that died between write and rename."""
        try:
            names = os.listdir(self._cursor_dir)
        except FileNotFoundError:
            return
        for name in names:
            parts = name.split(".")
            if name.startswith(".") and name.endswith(".tmp") and len(parts) >= 4:
                try:
                    pid = int(parts[-3])
                except ValueError:
                    continue
                if not process_alive(pid, None):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self._cursor_dir, name))

    def end_positions(self) -> dict[str, tuple[int, int]]:
        """Where each writer's frames end now: (last segment, its size), by writer.

        A mark in the spool: a cursor that has :meth:`SpoolCursor.reached` it has everything
        spooled before it was taken, while writers go on appending after it.
        """
        return {writer: (segments[-1].seq, segments[-1].size)
                for writer, segments in self._list_segments().items() if segments}

    def stats(self) -> SpoolStats:
        """Bytes and segments in the directory now; corrupt frames and rejections counted here."""
        segments = [s for segs in self._list_segments().values() for s in segs]
        with self._stats_lock:
            return SpoolStats(sum(s.size for s in segments), len(segments),
                              self._corrupt_total, self._rejected_total, self._regions_total,
                              self._missing_total)


def _fsync_loop(ref: weakref.ref[Spool], stop: threading.Event, interval: float) -> None:
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


def _load_cursor_file(path: str) -> dict[str, tuple[int, int]] | None:
    """A cursor's acknowledged positions; {} when the file is missing, None when unreadable."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
        acked = data["acked"]
        return {str(w): (int(p[0]), int(p[1])) for w, p in acked.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        warn_once_per_minute(f"spool:cursor:{path}",
                              "odibi-observe: unreadable spool cursor %s (%s); it holds back "
                              "garbage collection until rewritten", path, exc)
        return None


class SpoolCursor:
    """One consumer's durable position in the spool: read, deliver, acknowledge.

    ``read`` continues after the frames it has returned; ``ack`` makes positions durable. A
    re-opened cursor (``Spool.cursor(name)`` again, e.g. after a restart) starts after what was
    acknowledged, so unacknowledged frames are delivered again: at least once.
    """

    def __init__(self, spool: Spool, name: str) -> None:
        self.name = name
        self._spool = spool
        self._lock = threading.Lock()
        path = os.path.join(spool._cursor_dir, f"{name}.json")
        loaded = _load_cursor_file(path)
        self._acked: dict[str, tuple[int, int]] = dict(loaded or {})
        self._next: dict[str, tuple[int, int]] = dict(self._acked)
        self._loaded: dict[str, tuple[int, int]] = dict(self._acked)
        self._pruned = False
        self._turn = 0
        if not os.path.exists(path):
            try:
                spool._write_cursor_file(name, self._acked)
            except OSError as exc:
                # A full disk must not stop the consumer that would free it: the state is kept
                # in memory and written with the next acknowledgement.
                self._pruned = True
                warn_once_per_minute(
                    f"spool:cursor:{name}", "odibi-observe: cannot write spool cursor %r yet "
                    "(%s); kept in memory until it can be", name, exc)

    def read(self, max_frames: int = 1000, writer: str | None = None) -> list[SpoolEntry]:
        """Up to ``max_frames`` frames after this cursor, from every writer (or only ``writer``).

        Each writer's frames come in the order written; writers take turns being first so one
        busy writer cannot starve the others. Damaged frames are skipped and counted; an
        incomplete last frame of a live writer is left for a later call.
        """
        if max_frames <= 0:
            return []
        spool = self._spool
        listing = spool._list_segments()
        with self._lock:
            writers = sorted(listing) if writer is None else [writer]
            if len(writers) > 1:
                self._turn = (self._turn + 1) % len(writers)
                writers = writers[self._turn:] + writers[:self._turn]
            out: list[SpoolEntry] = []
            for w in writers:
                if len(out) >= max_frames:
                    break
                self._read_writer(w, listing.get(w, []), max_frames - len(out), out)
            if writer is None:
                for gone in [w for w in self._acked.keys() | self._next.keys()
                             if w not in listing and _writer_dead(w)]:
                    self._acked.pop(gone, None)
                    self._next.pop(gone, None)
                    self._pruned = True
            return out

    def _read_writer(self, writer: str, segments: list[_Segment], budget: int,
                     out: list[SpoolEntry]) -> None:
        spool = self._spool
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
            opened = spool._open_segment(writer, seq)
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
                    final = spool._final(writer, fd)
                parsed = _read_segment(fd, offset, final=final, limit=budget)
                spool._absorb(writer, seq, parsed, fd)
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
        spool = self._spool
        # Files, and the other live cursors' memory read without their locks (this cursor's
        # lock is held; a membership test needs no lock, and taking theirs could deadlock).
        if any(writer in acked for acked in spool._cursor_states(own=False).values()):
            return
        if any(writer in c._acked for c in list(spool._cursors.values()) if c is not self):
            return
        spool._note_missing(writer, 0, first)

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
        self._spool._note_missing(writer, first, found)

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
                self._spool._write_cursor_file(self.name, self._acked)
            except OSError as exc:
                # Kept in memory (this process will not re-deliver); written at the next ack.
                # Only a restart before then re-delivers, which idempotent sinks absorb.
                self._pruned = True
                warn_once_per_minute(
                    f"spool:cursor:{self.name}", "odibi-observe: cannot write spool cursor %r "
                    "(%s); position kept in memory until it can be", self.name, exc)
                return
            self._pruned = False

    def rewind(self) -> None:
        """Read again from the acknowledged position (frames read but not acked come back)."""
        with self._lock:
            self._next = dict(self._acked)

    def backlog(self, writers: Callable[[str], bool] | None = None) -> int:
        """Frames not acknowledged yet, over all writers or those ``writers`` accepts (damaged
        frames are not counted)."""
        spool = self._spool
        with self._lock:
            acked = dict(self._acked)
        total = 0
        for writer, segments in spool._list_segments().items():
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
                    total += spool._count_frames(segment, start)
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


def _fork_child() -> None:
    global _next_seq_lock
    _next_seq_lock = threading.Lock()
    for spool in list(_spools):
        spool.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_child)

