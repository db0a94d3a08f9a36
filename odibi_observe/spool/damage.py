"""What a reader found lost: damaged frames, missing segments, and the runs they may hit.

Damage must be counted once per Spool however many cursors read the same bytes, and the runs
whose end may be lost must be named (so reconciliation can explain a run that never finished).
:class:`DamageLedger` keeps that accounting for one Spool; the findings also go to a bounded
JSON-lines log in the spool directory (:data:`DAMAGE_LOG`), which outlives a sidecar restart.

The count is of frames lost (``stats().corrupt_frames``,
``odibi_observe_spool_corrupt_frames_total``): exact where a frame's header survived, else
estimated from the bytes skipped and the mean frame size; the damaged regions are counted too.
A segment deleted before it was read is found from the gap in its writer's sequence numbers
(``odibi_observe_spool_missing_segments_total``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from odibi_observe._selfmetrics import warn_once_per_minute
from odibi_observe.conventions import SIDECAR_METRICS
from odibi_observe.record import _FINISHED_PREFIX, _STARTED_PREFIX  # see record.peek_event
from odibi_observe.spool.frames import HEADER_SIZE, MAGIC, Parsed, header_length
from odibi_observe.spool.liveness import writer_dead
from odibi_observe.spool.metrics import SpoolMetrics
from odibi_observe.spool.segments import Segment, segment_base

#: Damage found by a reader, one JSON line per finding, for ``odibi-observe reconcile
#: --spool-dir``: the sidecar's counters start again at a restart, this file does not.
DAMAGE_LOG: Final = "damage.jsonl"
#: The damage log stops growing here (a spool damaged this often has a disk to replace).
DAMAGE_LOG_MAX_BYTES: Final = 2**20
#: Damage accounting bounds: run ids kept as affected, open runs tracked per writer, bytes of a
#: damaged region scanned for run ids, and the frame size assumed when none was seen.
_MAX_AFFECTED: Final = 1000
_MAX_OPEN_RUNS: Final = 10_000
_MAX_DAMAGE_SCAN: Final = 4 * 2**20
_DEFAULT_FRAME: Final = 512
_MAX_LOGGED_RUNS: Final = 100
_RUN_ID_RE: Final = re.compile(rb'"run_id":"([A-Za-z0-9_.:-]{1,200})"')


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
        return {
            "damaged_regions": self.damaged_regions,
            "frames_lost": self.frames_lost,
            "missing_segments": self.missing_segments,
            "runs_affected": list(self.runs_affected),
            "last": self.last,
        }


def read_damage_log(directory: str | os.PathLike[str]) -> list[dict[str, object]]:
    """The findings a reader of the spool in ``directory`` logged (:data:`DAMAGE_LOG`), oldest
    first; [] when there is none. Lines that do not parse are skipped."""
    try:
        with open(
            os.path.join(os.fspath(directory), DAMAGE_LOG), encoding="ascii", errors="replace"
        ) as handle:
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
        length = header_length(data, p)
        if length is not None:
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


class DamageLedger:
    """One Spool's account of what its reads found: runs open per writer, and every loss.

    Each frame and damaged region is taken once however many cursors read it (the furthest
    position per writer is remembered), so counts and the open runs agree.
    """

    def __init__(self, directory: str, metrics: SpoolMetrics) -> None:
        self.directory = directory
        self._metrics = metrics
        self._corrupt_seen: set[tuple[str, int, int]] = set()
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
        self.after_fork()

    def after_fork(self) -> None:
        """A fresh lock (at construction and in a forked child)."""
        self.lock = threading.Lock()

    def absorb(self, writer: str, seq: int, parsed: Parsed, fd: int) -> None:
        """Account for what a read found, in file order: runs started and ended, and damage.

        This is on the sidecar's read path: without damage it is a prefix test per frame.
        """
        if parsed.corrupt:
            self._absorb_damage(writer, seq, parsed, fd)
            return
        frames = parsed.frames
        if not frames:
            return
        with self.lock:
            mark = self._tracked.get(writer)
            if mark is not None and (seq, frames[0][0]) < mark:
                frames = [f for f in frames if (seq, f[0]) >= mark]
                if not frames:
                    return
            self._track_locked(writer, frames)
            self._tracked[writer] = (seq, frames[-1][1])
            self._mean_frame = 0.8 * self._mean_frame + 0.2 * (frames[-1][1] - frames[0][0]) / len(
                frames
            )

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
                run_id = payload[lf : payload.find(b'"', lf)]
                runs.pop(run_id, None)
                if watch:
                    # Its end turned up after all; only its own writer's counts (the
                    # sweeper's CRASHED for a run whose end was lost is no such end).
                    key = run_id.decode("utf-8", "replace")
                    if self._affected.get(key) == writer:
                        del self._affected[key]
            elif payload.startswith(started):
                runs[payload[ls : payload.find(b'"', ls)]] = None
        while len(runs) > _MAX_OPEN_RUNS:
            del runs[next(iter(runs))]

    def _absorb_damage(self, writer: str, seq: int, parsed: Parsed, fd: int) -> None:
        """:meth:`absorb` for a read that met damage: count it, name the runs it may hit."""
        new_regions = []
        with self.lock:
            for start, end in parsed.corrupt:
                key = (writer, seq, start)
                if key not in self._corrupt_seen:
                    self._corrupt_seen.add(key)
                    new_regions.append((start, end))
        frames = parsed.frames
        mean = sum(e - s for s, e, _ in frames) / len(frames) if frames else self._mean_frame
        damage = [
            (start, end, *_inspect_region(fd, start, end, mean)) for start, end in new_regions
        ]
        order = sorted(
            [(f[0], 0, i) for i, f in enumerate(frames)]
            + [(d[0], 1, i) for i, d in enumerate(damage)]
        )
        lost = 0
        with self.lock:
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
                self._last_damage = (
                    f"{len(damage)} damaged region(s) in "
                    f"{segment_base(writer, seq)}, first at byte {start} "
                    f"({end - start} bytes, ~{count} frame(s))"
                )
        if not damage:
            return
        self._metrics.corrupt.inc(lost)
        self._metrics.regions.inc(len(damage))
        start, end, _, _ = damage[0]
        self.log(
            f"{len(damage)} damaged region(s) in {segment_base(writer, seq)}, "
            f"first at byte {start}",
            frames_lost=lost,
            runs=[r for r, w in list(self._affected.items()) if w == writer],
        )
        warn_once_per_minute(
            "spool:corrupt",
            "odibi-observe: skipped %d damaged region(s), about %d frame(s), in %s (first at byte "
            "%d, %d bytes); the frames around them are kept (counted in "
            f"{SIDECAR_METRICS.spool_corrupt.prometheus})",
            len(damage),
            lost,
            segment_base(writer, seq),
            start,
            end - start,
        )

    def _suspect_locked(
        self, writer: str, open_runs: dict[bytes, None], run_ids: Sequence[str]
    ) -> None:
        """Runs whose end may be in a lost range: ids read in it, and runs still open."""
        self._suspect_writers.add(writer)
        for run_id in [*(r.decode("utf-8", "replace") for r in open_runs), *run_ids]:
            self._affected.pop(run_id, None)
            self._affected[run_id] = writer
        while len(self._affected) > _MAX_AFFECTED:
            del self._affected[next(iter(self._affected))]

    def note_missing(self, writer: str, first: int, stop: int) -> None:
        """Segments ``first..stop-1`` of ``writer`` are gone before this Spool read them."""
        with self.lock:
            new = [
                q
                for q in range(first, stop)
                if (writer, q) not in self._missing_seen and (writer, q) not in self._collected
            ]
            if not new:
                return
            self._missing_seen.update((writer, q) for q in new)
            self._missing_total += len(new)
            self._suspect_locked(writer, self._open_runs.get(writer, {}), [])
            self._last_damage = (
                f"{len(new)} segment(s) of writer {writer} missing (sequence {new[0]}..{new[-1]})"
            )
        self._metrics.missing.inc(len(new))
        self.log(
            f"{len(new)} segment(s) of writer {writer} missing (sequence {new[0]}..{new[-1]})",
            missing_segments=len(new),
            runs=[r for r, w in list(self._affected.items()) if w == writer],
        )
        warn_once_per_minute(
            f"spool:missing:{writer}",
            "odibi-observe: %d spool segment(s) of writer %s are missing (sequence %d..%d), "
            "deleted before they were read: their events are lost (counted in %s)",
            len(new),
            writer,
            new[0],
            new[-1],
            SIDECAR_METRICS.spool_missing_segments.prometheus,
        )

    def open_segment_deleted(self, name: str) -> None:
        """The writer's own open segment ``name`` was deleted under it: one missing segment."""
        with self.lock:
            self._missing_total += 1
            self._last_damage = f"open segment {name} deleted"
        self._metrics.missing.inc()
        self.log(f"open segment {name} deleted while its writer wrote to it", missing_segments=1)

    def note_collected(self, writer: str, seq: int) -> None:
        """gc deleted this segment after every cursor read it: its absence is no loss."""
        with self.lock:
            self._collected.add((writer, seq))

    def forget(self, listing: dict[str, list[Segment]]) -> None:
        """Drop the bookkeeping of segments no longer in ``listing``, and of writers gone
        for good (no segment left, process dead)."""
        live = {(s.writer, s.seq) for segs in listing.values() for s in segs}
        with self.lock:
            self._corrupt_seen = {k for k in self._corrupt_seen if (k[0], k[1]) in live}
            known = {w for w, _ in self._collected} | set(self._tracked) | set(self._open_runs)
            for writer in [w for w in known if w not in listing and writer_dead(w)]:
                self._collected = {k for k in self._collected if k[0] != writer}
                self._missing_seen = {k for k in self._missing_seen if k[0] != writer}
                self._tracked.pop(writer, None)
                self._open_runs.pop(writer, None)
                self._suspect_writers.discard(writer)

    def log(
        self,
        what: str,
        *,
        frames_lost: int = 0,
        missing_segments: int = 0,
        runs: Sequence[str] = (),
    ) -> None:
        """Append one finding to :data:`DAMAGE_LOG` (bounded); never raises."""
        path = os.path.join(self.directory, DAMAGE_LOG)
        line = (
            json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "what": what,
                    "frames_lost": frames_lost,
                    "missing_segments": missing_segments,
                    "runs_affected": list(dict.fromkeys(runs))[:_MAX_LOGGED_RUNS],
                },
                ensure_ascii=True,
            )
            + "\n"
        )
        try:
            if os.path.getsize(path) + len(line) > DAMAGE_LOG_MAX_BYTES:
                warn_once_per_minute(
                    "spool:damage-log",
                    "odibi-observe: %s is full (%d bytes); further damage is only counted",
                    path,
                    DAMAGE_LOG_MAX_BYTES,
                )
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
            warn_once_per_minute(
                "spool:damage-log", "odibi-observe: cannot write %s: %s", path, exc
            )

    def totals(self) -> tuple[int, int, int]:
        """Frames lost, damaged regions and missing segments counted so far."""
        with self.lock:
            return self._corrupt_total, self._regions_total, self._missing_total

    def damage(self) -> SpoolDamage:
        """What has been found lost so far (damaged frames, missing segments, runs)."""
        with self.lock:
            return SpoolDamage(
                self._regions_total,
                self._corrupt_total,
                self._missing_total,
                tuple(self._affected),
                self._last_damage,
            )
