"""The write-ahead spool: frames, cursors, corruption, limits, gc, fsync, liveness, processes."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from odibi_observe._bus import EventBus
from odibi_observe.record import RunEvent
from odibi_observe.sinks.spool import SpoolSink
from odibi_observe.spool import (
    HEADER_SIZE,
    Spool,
    SpoolCursor,
    SpoolEntry,
    SpoolFullError,
    encode_frame,
    liveness,
    process_alive,
    process_start_ns,
)
from odibi_observe.spool import writer as spool_writer
from tests.helpers import finished, make_record
from tests.helpers import started as started_event

ROOT = Path(__file__).resolve().parents[1]
FORK = multiprocessing.get_context("fork")

#: A pipeline process in miniature: append, optionally leave half a frame, die by SIGKILL.
CHILD = """
import os, signal, sys
from odibi_observe.spool import Spool, encode_frame
directory, n, segment_bytes, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
spool = Spool(directory, fsync="never", segment_bytes=segment_bytes)
for i in range(n):
    spool.append(b"frame-%d" % i)
if mode == "torn":
    os.write(spool._fd, encode_frame(b"a frame the kill tears in half")[:23])
print(spool.writer_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def drain(cursor: SpoolCursor, **kwargs: object) -> list[SpoolEntry]:
    out: list[SpoolEntry] = []
    while True:
        got = cursor.read(**kwargs)  # type: ignore[arg-type]
        if not got:
            return out
        out += got


def payloads(entries: list[SpoolEntry]) -> list[bytes]:
    return [e.payload for e in entries]


def by_writer(entries: list[SpoolEntry]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for e in entries:
        out.setdefault(e.position.writer, []).append(e.payload)
    return out


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".open", ".seg"))


def run_killed_child(
    directory: Path, n: int, *, segment_bytes: int = 4096, mode: str = "clean"
) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(directory), str(n), str(segment_bytes), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def spool(spool_dir: Path, registry: CollectorRegistry) -> Iterator[Spool]:
    s = Spool(spool_dir, writer_id="w1", fsync="never", segment_bytes=1024, registry=registry)
    yield s
    s.close()


# ------------------------------------------------------------------------------ round trips


def test_round_trip_in_order_across_segments(spool: Spool, spool_dir: Path) -> None:
    sent = [f"event-{i}".encode() * (i % 7) for i in range(300)]  # includes empty payloads
    for p in sent[:200]:
        spool.append(p)
    spool.append_many(sent[200:])
    assert len(segment_files(spool_dir)) > 5
    got = drain(spool.cursor("sink"), max_frames=37)
    assert payloads(got) == sent
    positions = [e.position for e in got]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    assert spool.stats().corrupt_frames == 0


def test_frame_format_is_the_documented_one() -> None:
    frame = encode_frame(b"hello")
    assert frame[:4] == b"\xa7OSF"
    assert int.from_bytes(frame[4:8], "little") == 5
    assert len(frame) == HEADER_SIZE + 5
    assert frame[HEADER_SIZE:] == b"hello"


def test_read_never_returns_a_frame_twice_and_continues_with_new_ones(spool: Spool) -> None:
    cursor = spool.cursor("sink")
    spool.append(b"a")
    assert payloads(cursor.read()) == [b"a"]
    assert cursor.read() == []
    spool.append(b"b")
    assert payloads(cursor.read()) == [b"b"]


def _write_in_child(directory: str, tag: str, n: int) -> None:
    s = Spool(directory, fsync="never", segment_bytes=512)
    for i in range(n):
        s.append(f"{tag}:{i}".encode())
    s.close()


def test_several_writer_processes_share_one_directory(spool_dir: Path) -> None:
    children = [
        FORK.Process(target=_write_in_child, args=(str(spool_dir), f"p{k}", 150)) for k in range(3)
    ]
    for c in children:
        c.start()
    for c in children:
        c.join(30)
        assert c.exitcode == 0
    reader = Spool(spool_dir, registry=CollectorRegistry())
    got = by_writer(drain(reader.cursor("sink")))
    assert len(got) == 3
    pids = {str(c.pid) for c in children}
    for writer, frames in got.items():
        assert writer.split("-")[-2] in pids  # default id: host-pid-start
        tag = frames[0].split(b":")[0]
        assert frames == [b"%s:%d" % (tag, i) for i in range(150)]
    assert all(name.endswith(".seg") for name in segment_files(spool_dir))


def test_read_of_one_writer_only(spool_dir: Path) -> None:
    a = Spool(spool_dir, writer_id="a", fsync="never", registry=CollectorRegistry())
    b = Spool(spool_dir, writer_id="b", fsync="never", registry=CollectorRegistry())
    a.append(b"from a")
    b.append(b"from b")
    cursor = a.cursor("sink")
    assert payloads(cursor.read(writer="b")) == [b"from b"]
    assert payloads(cursor.read()) == [b"from a"]
    a.close()
    b.close()


def _fork_child_appends(s: Spool) -> None:
    s.append(b"child")
    s.close()


def test_fork_gives_the_child_its_own_writer_and_segment(spool_dir: Path) -> None:
    parent = Spool(spool_dir, fsync="interval", registry=CollectorRegistry())
    parent.append(b"parent-0")
    child = FORK.Process(target=_fork_child_appends, args=(parent,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    parent.append(b"parent-1")
    got = by_writer(drain(parent.cursor("sink")))
    assert got[parent.writer_id] == [b"parent-0", b"parent-1"]
    (child_writer,) = set(got) - {parent.writer_id}
    assert got[child_writer] == [b"child"]
    assert child_writer.split("-")[-2] == str(child.pid)
    parent.close()


# ------------------------------------------------------------------------------ cursors


def test_two_cursors_progress_independently(spool: Spool) -> None:
    up, down = spool.cursor("otel"), spool.cursor("catalog")
    for i in range(10):
        spool.append(b"%d" % i)
    up.ack(up.read())
    for i in range(10, 15):
        spool.append(b"%d" % i)
    # the "down" sink never reads: the other one still gets exactly the new frames
    assert payloads(up.read()) == [b"%d" % i for i in range(10, 15)]
    assert up.backlog() == 5
    assert down.backlog() == 15
    assert payloads(drain(down)) == [b"%d" % i for i in range(15)]


def test_ack_survives_reopening_and_unacked_frames_come_back(spool_dir: Path) -> None:
    writer = Spool(
        spool_dir, writer_id="w", fsync="always", segment_bytes=256, registry=CollectorRegistry()
    )
    for i in range(20):
        writer.append(b"e%d" % i)
    cursor = writer.cursor("sink")
    first = cursor.read(max_frames=12)
    cursor.ack(first[:8])
    assert cursor.read(max_frames=100)  # read, never acknowledged
    writer.close()

    reopened = Spool(spool_dir, registry=CollectorRegistry()).cursor("sink")
    again = drain(reopened)
    assert payloads(again) == [b"e%d" % i for i in range(8, 20)]  # at least once
    assert reopened.backlog() == 12
    reopened.rewind()
    assert payloads(drain(reopened)) == payloads(again)
    reopened.ack(again)
    assert reopened.backlog() == 0
    assert drain(Spool(spool_dir, registry=CollectorRegistry()).cursor("sink")) == []


def test_cursor_and_writer_names_are_validated(spool: Spool, spool_dir: Path) -> None:
    with pytest.raises(ValueError):
        spool.cursor("../escape")
    with pytest.raises(ValueError):
        Spool(spool_dir, writer_id="a/b")
    with pytest.raises(ValueError):
        Spool(spool_dir, fsync="sometimes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ process death


def test_every_frame_survives_a_sigkill_right_after_append(spool_dir: Path) -> None:
    writer = run_killed_child(spool_dir, 500)
    assert any(n.startswith(writer) and n.endswith(".open") for n in segment_files(spool_dir))
    reader = Spool(spool_dir, registry=CollectorRegistry())
    cursor = reader.cursor("sink")
    got = drain(cursor)
    assert payloads(got) == [b"frame-%d" % i for i in range(500)]
    assert reader.stats().corrupt_frames == 0
    # the dead writer's .open segment is collected like a sealed one once acknowledged
    cursor.ack(got)
    assert reader.gc() > 0
    assert segment_files(spool_dir) == []
    cursor.read()  # notices the writer is gone for good
    assert writer not in cursor.positions()


def test_torn_tail_of_a_dead_writer_is_counted_once(
    spool_dir: Path, registry: CollectorRegistry
) -> None:
    run_killed_child(spool_dir, 5, mode="torn")
    reader = Spool(spool_dir, registry=registry)
    got = drain(reader.cursor("a"))
    assert payloads(got) == [b"frame-%d" % i for i in range(5)]
    drain(reader.cursor("b"))  # another cursor meets the same damage
    assert reader.stats().corrupt_frames == 1
    assert registry.get_sample_value("odibi_observe_spool_corrupt_frames_total") == 1


# ------------------------------------------------------------------------------ corruption


def test_damage_in_a_sealed_segment_keeps_the_frames_around_it(
    spool_dir: Path, registry: CollectorRegistry
) -> None:
    writer = Spool(spool_dir, writer_id="w", fsync="never", registry=CollectorRegistry())
    for i in range(10):
        writer.append(b"%02d" % i + b"x" * 48)  # 66-byte frames
    writer.close()
    (name,) = segment_files(spool_dir)
    path = spool_dir / name
    data = bytearray(path.read_bytes())
    assert len(data) == 660
    data[3 * 66 + HEADER_SIZE + 20] ^= 0x01  # a flipped bit in frame 3's payload
    data[6 * 66 + 5] ^= 0x40  # frame 6's length field
    path.write_bytes(bytes(data[:-5]))  # frame 9 torn

    reader = Spool(spool_dir, registry=registry)
    cursor = reader.cursor("sink")
    got = drain(cursor, max_frames=2)
    assert [p[:2] for p in payloads(got)] == [b"00", b"01", b"02", b"04", b"05", b"07", b"08"]
    assert reader.stats().corrupt_frames == 3
    assert registry.get_sample_value("odibi_observe_spool_corrupt_frames_total") == 3
    drain(reader.cursor("other"))
    assert reader.stats().corrupt_frames == 3  # each damaged region counted once
    # acknowledged up to the last good frame: the torn tail does not keep the segment
    cursor.ack(got)
    reader.drop_cursor("other")
    assert reader.gc() == 655
    assert segment_files(spool_dir) == []


def test_partial_tail_of_a_live_writer_is_pending_not_corrupt(spool_dir: Path) -> None:
    for writer_id in (None, "custom"):  # judged by pid and start time / by the flock alone
        directory = spool_dir / str(writer_id)
        writer = Spool(directory, writer_id=writer_id, fsync="never", registry=CollectorRegistry())
        for i in range(3):
            writer.append(b"%d" % i)
        (name,) = segment_files(directory)
        assert name.endswith(".open")
        fd = os.open(directory / name, os.O_WRONLY | os.O_APPEND)
        frame = encode_frame(b"the fourth event")
        reader = Spool(directory, registry=CollectorRegistry())
        cursor = reader.cursor("sink")
        try:
            os.write(fd, frame[:7])  # inside the header
            assert payloads(cursor.read()) == [b"0", b"1", b"2"]
            os.write(fd, frame[7:25])  # header complete, payload not
            assert cursor.read() == []
            assert reader.stats().corrupt_frames == 0
            os.write(fd, frame[25:])
            assert payloads(cursor.read()) == [b"the fourth event"]
            os.write(fd, frame[:10])
            assert cursor.read() == []
        finally:
            os.close(fd)
        assert reader.stats().corrupt_frames == 0
        writer.close()  # sealed with half a frame at its end: now it is damage
        assert cursor.read() == []
        assert reader.stats().corrupt_frames == 1


def _run_events(n: int, payload: int = 300) -> list[tuple[str, bytes]]:
    """``n`` runs as spool payloads, start then end of each: (run id, payload) in order."""
    out = []
    for i in range(n):
        record = make_record(run_id=f"run-{i:03d}", attributes={"blob": "b" * payload})
        out.append((record.run_id, started_event(record).to_json().encode()))
        out.append((record.run_id, finished(record).to_json().encode()))
    return out


def _frames_overlapping(data: bytes, lo: int, hi: int) -> int:
    """How many frames of an intact segment ``data`` have a byte in ``lo..hi-1``."""
    count, p = 0, 0
    while p < len(data):
        end = p + HEADER_SIZE + int.from_bytes(data[p + 4 : p + 8], "little")
        count += p < hi and end > lo
        p = end
    return count


def test_a_zeroed_block_counts_every_frame_it_destroyed(
    spool_dir: Path, registry: CollectorRegistry
) -> None:
    """A zeroed 4 KiB block destroys about 9 frames: counted as frames (within one), not as 1
    region; the run whose start was read but whose end was destroyed is named."""
    writer = Spool(spool_dir, writer_id="w", fsync="never", registry=CollectorRegistry())
    events = _run_events(60, payload=0)
    for _, payload in events:
        writer.append(payload)
    writer.close()
    (name,) = segment_files(spool_dir)
    path = spool_dir / name
    data = bytearray(path.read_bytes())
    truth = _frames_overlapping(bytes(data), 4096, 8192)
    assert truth >= 8
    data[4096:8192] = bytes(4096)
    path.write_bytes(bytes(data))

    reader = Spool(spool_dir, registry=registry)
    got = drain(reader.cursor("sink"))
    assert len(got) == len(events) - truth
    damage = reader.damage()
    assert damage.damaged_regions == 1
    assert abs(damage.frames_lost - truth) <= 1, (damage.frames_lost, truth)
    assert reader.stats().corrupt_frames == damage.frames_lost
    assert (
        registry.get_sample_value("odibi_observe_spool_corrupt_frames_total") == damage.frames_lost
    )
    assert registry.get_sample_value("odibi_observe_spool_damaged_regions_total") == 1
    read = [RunEvent.from_json(e.payload) for e in got]
    read_ends = {e.run_id for e in read if e.kind.value == "finished"}
    lost_ends = {rid for rid, _ in events} - read_ends
    cut = {e.run_id for e in read if e.kind.value == "started"} - read_ends
    # Named: the run whose start was read and whose end was destroyed, and any run id still
    # readable in the damaged bytes; runs whose both frames vanished leave no trace to name.
    assert cut and cut <= set(damage.runs_affected) <= lost_ends
    assert "damaged region" in (damage.last or "")
    reader.close()


def test_a_deleted_sealed_segment_is_reported_missing_with_its_runs(
    spool_dir: Path, registry: CollectorRegistry
) -> None:
    events = _run_events(30)
    frame = len(encode_frame(events[1][1]))  # 5 frames a segment: a run is cut at each end
    writer = Spool(
        spool_dir,
        writer_id="w",
        fsync="never",
        segment_bytes=5 * frame,
        registry=CollectorRegistry(),
    )
    for _, payload in events:
        writer.append(payload)
    writer.close()
    names = segment_files(spool_dir)
    assert len(names) >= 4
    # A sealed segment in the middle that begins with a run's end (its start is before it).
    victim = next(
        n
        for n in names[1:-1]
        if b'"kind":"finished"' in (spool_dir / n).read_bytes()[HEADER_SIZE : HEADER_SIZE + 20]
    )
    (spool_dir / victim).unlink()
    reader = Spool(spool_dir, registry=registry)
    got = drain(reader.cursor("sink"))
    damage = reader.damage()
    assert damage.missing_segments == 1 and damage.damaged_regions == 0
    assert registry.get_sample_value("odibi_observe_spool_missing_segments_total") == 1
    kinds: dict[str, set[str]] = {}
    for entry in got:
        event = RunEvent.from_json(entry.payload)
        kinds.setdefault(event.run_id, set()).add(event.kind.value)
    # A run whose start was read before the gap and whose end was in it is named.
    cut = {rid for rid, k in kinds.items() if k == {"started"}}
    assert cut and set(damage.runs_affected) == cut
    assert "missing" in (damage.last or "")
    reader.close()


def test_a_segment_deleted_while_its_writer_writes_is_left_and_reported(
    spool_dir: Path, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer notices at its next size check, goes on in a new segment and counts the loss;
    a consumer that starts later sees the writer begin after segment 0 and reports it."""
    monkeypatch.setattr(spool_writer, "USAGE_REFRESH", 0.0)
    writer_registry = CollectorRegistry()
    writer = Spool(spool_dir, fsync="never", registry=writer_registry)
    events = _run_events(10)
    for _, payload in events[:10]:
        writer.append(payload)
    (live,) = segment_files(spool_dir)
    assert live.endswith(".open")
    (spool_dir / live).unlink()
    time.sleep(0.01)
    for _, payload in events[10:]:
        writer.append(payload)
    assert writer.stats().missing_segments == 1
    assert writer_registry.get_sample_value("odibi_observe_spool_missing_segments_total") == 1
    assert writer.damage().last is not None
    reader = Spool(spool_dir, registry=registry)
    got = drain(reader.cursor("sink"))
    assert 0 < len(got) <= 10
    assert reader.damage().missing_segments == 1
    writer.close()
    reader.close()


# ------------------------------------------------------------------------------ limits


def test_size_limit_rejects_new_events_and_keeps_old_ones(
    spool_dir: Path, registry: CollectorRegistry
) -> None:
    s = Spool(
        spool_dir,
        writer_id="w",
        fsync="never",
        segment_bytes=500,
        max_bytes=2000,
        registry=registry,
    )
    payload = b"p" * (100 - HEADER_SIZE)
    for _ in range(20):
        s.append(payload)
    with pytest.raises(SpoolFullError) as info:
        s.append(payload)
    assert info.value.reason == "size_limit"
    with pytest.raises(SpoolFullError) as many:
        s.append_many([b"a", b"b", b"c"])
    assert many.value.stored == 0
    assert s.stats().rejected == 4
    assert (
        registry.get_sample_value("odibi_observe_spool_rejected_total", {"reason": "size_limit"})
        == 4
    )
    assert s.stats().bytes == 2000
    cursor = s.cursor("sink")
    got = drain(cursor)
    assert payloads(got) == [payload] * 20
    cursor.ack(got)
    # The rejection sealed the writer's open segment: a long-lived writer does not hold its
    # own space for ever, so everything is collectable once acknowledged.
    assert s.gc() == 2000
    s.append(payload)  # room again
    assert payloads(drain(cursor)) == [payload]
    s.close()


def test_partial_append_many_stores_the_oldest_that_fit(
    spool_dir: Path, registry: CollectorRegistry
) -> None:
    s = Spool(
        spool_dir,
        writer_id="w",
        fsync="never",
        segment_bytes=500,
        max_bytes=1000,
        registry=registry,
    )
    batch = [b"%02d" % i + b"p" * (98 - HEADER_SIZE) for i in range(25)]
    with pytest.raises(SpoolFullError) as info:
        s.append_many(batch, partial=True)
    assert info.value.stored == 10
    assert s.stats().rejected == 15
    cursor = s.cursor("sink")
    got = drain(cursor)
    assert payloads(got) == batch[:10]
    cursor.ack(got)
    s.gc()
    with pytest.raises(SpoolFullError) as info:
        s.append_many(batch[10:], partial=True)
    assert info.value.stored == 10
    cursor.ack(drain(cursor))
    s.gc()
    s.append_many(batch[20:], partial=True)
    assert [p[:2] for p in payloads(drain(cursor))] == [b"%02d" % i for i in range(20, 25)]
    s.close()


def test_spool_sink_resends_a_refused_backlog_in_pieces_without_duplicates(
    spool_dir: Path, registry: CollectorRegistry
) -> None:
    """The bus re-sends a failed batch whole; the sink skips the prefix it stored already."""
    s = Spool(
        spool_dir,
        writer_id="w",
        fsync="never",
        segment_bytes=2000,
        max_bytes=3000,
        registry=registry,
    )
    sink = SpoolSink(s)
    bus = EventBus([sink], mode="inline", retry_initial=0.0, retry_max=0.0)
    events = [finished(make_record(run_id=f"run-{i:03d}")) for i in range(40)]
    for event in events:
        bus.emit(event)
    assert bus.pending()["spool"] > 0
    cursor = s.cursor("sink")
    seen: list[str] = []
    for _ in range(40):
        got = drain(cursor)
        seen += [RunEvent.from_json(p).run_id for p in payloads(got)]
        cursor.ack(got)
        s.gc()
        bus.flush(1.0)
        if not bus.pending()["spool"]:
            break
    seen += [RunEvent.from_json(p).run_id for p in payloads(drain(cursor))]
    assert seen == [e.run_id for e in events]  # all, oldest first, none twice
    bus.shutdown(1.0)


def test_enospc_from_the_filesystem_is_disk_full(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry
) -> None:
    spool.append(b"before")
    real_write = os.write
    calls = {"n": 0}

    def short_then_full(fd: int, data: bytes) -> int:
        if fd != spool._fd:
            return real_write(fd, data)
        calls["n"] += 1
        if calls["n"] == 1:  # a partial write, as a filling disk does
            return real_write(fd, bytes(data[:9]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(SpoolFullError) as info:
        spool.append(b"lost")
    monkeypatch.setattr(os, "write", real_write)
    assert info.value.reason == "disk_full"
    assert (
        registry.get_sample_value("odibi_observe_spool_rejected_total", {"reason": "disk_full"})
        == 1
    )
    spool.append(b"after")
    got = drain(spool.cursor("sink"))
    assert payloads(got) == [b"before", b"after"]  # the partial frame was cut off
    assert spool.stats().corrupt_frames == 0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_really_full_filesystem_is_disk_full(tiny_fs: Path) -> None:
    registry = CollectorRegistry()
    s = Spool(
        tiny_fs,
        writer_id="w",
        fsync="never",
        segment_bytes=16 * 1024,
        max_bytes=2**30,
        registry=registry,
    )
    cursor = s.cursor("sink")  # its state file first: the disk is about to be full
    stored = 0
    with pytest.raises(SpoolFullError) as info:
        for i in range(1000):
            s.append(b"%04d" % i + b"z" * 996)
            stored += 1
    assert info.value.reason == "disk_full"
    assert 10 < stored < 64  # 64 KiB of 1 KiB events, less what the cursor file takes
    assert (
        registry.get_sample_value("odibi_observe_spool_rejected_total", {"reason": "disk_full"})
        == 1
    )
    got = drain(cursor)
    assert [p[:4] for p in payloads(got)] == [b"%04d" % i for i in range(stored)]
    assert s.stats().corrupt_frames == 0
    s.close()


def _fill(directory: Path, **kwargs: object) -> int:
    """Append 1 KiB events until the filesystem is full; the writer then goes away."""
    w = Spool(
        directory,
        writer_id="w",
        fsync="never",
        segment_bytes=8 * 1024,
        max_bytes=2**30,
        registry=CollectorRegistry(),
        **kwargs,  # type: ignore[arg-type]
    )
    stored = 0
    with pytest.raises(SpoolFullError) as info:
        for i in range(1000):
            w.append(b"%04d" % i + b"z" * 1020)
            stored += 1
    assert info.value.reason == "disk_full"
    w.close()
    return stored


def test_a_filesystem_full_before_the_first_consumer_still_drains(tiny_fs: Path) -> None:
    """The reserve made with the directory lets the first consumer write its cursor file."""
    stored = _fill(tiny_fs)
    assert (tiny_fs / "cursors" / ".reserve").exists()
    reader = Spool(tiny_fs, writer_id="r", fsync="never", registry=CollectorRegistry())
    cursor = reader.cursor("sink")
    assert (tiny_fs / "cursors" / "sink.json").exists()  # the reserve was given up for it
    assert not (tiny_fs / "cursors" / ".reserve").exists()
    got = drain(cursor)
    assert len(got) == stored
    cursor.ack(got)
    assert reader.gc() > 0
    assert reader.stats().bytes == 0
    assert (tiny_fs / "cursors" / ".reserve").exists()  # taken back once there was room
    assert json.loads((tiny_fs / "cursors" / "sink.json").read_text())["acked"]
    reader.close()


def test_a_cursor_without_its_file_still_drives_gc(tiny_fs: Path) -> None:
    """Without a reserve the cursor file cannot be written on a full disk: gc must use the
    consumer's position in memory (not ignore it), free the space, and the file follows."""
    stored = _fill(tiny_fs, cursor_reserve=0)
    reader = Spool(
        tiny_fs, writer_id="r", fsync="never", registry=CollectorRegistry(), cursor_reserve=0
    )
    cursor = reader.cursor("sink")
    assert not (tiny_fs / "cursors" / "sink.json").exists()  # ENOSPC: kept in memory
    got = drain(cursor)
    assert len(got) == stored
    cursor.ack(got)
    assert reader.gc() > 0
    assert reader.stats().bytes == 0
    reader.append(b"after")
    cursor.ack(drain(cursor))
    assert (tiny_fs / "cursors" / "sink.json").exists()
    reader.close()


# ------------------------------------------------------------------------------ gc


def test_gc_deletes_only_fully_acked_sealed_segments(spool_dir: Path) -> None:
    w = Spool(
        spool_dir, writer_id="w", fsync="never", segment_bytes=200, registry=CollectorRegistry()
    )
    for i in range(30):
        w.append(b"%02d" % i + b"." * 48)  # 66-byte frames: 3 per segment
    files = segment_files(spool_dir)
    assert len(files) == 10 and files[-1].endswith(".open")
    assert w.gc() == 0  # no cursor yet: nothing may go
    a, b = w.cursor("a"), w.cursor("b")
    a.ack(drain(a))
    got_b = drain(b)
    b.ack(got_b[:7])  # segments 0 and 1 complete, segment 2 partly
    assert w.gc() == 2 * 198
    assert segment_files(spool_dir) == files[2:]
    b.ack(got_b)
    assert w.gc() == 7 * 198  # the live writer's open segment stays
    assert segment_files(spool_dir) == files[-1:]
    w.close()
    assert w.gc() == 198
    assert segment_files(spool_dir) == []
    w.append(b"new")  # a new segment, a sequence number no cursor has seen
    assert payloads(drain(Spool(spool_dir, registry=CollectorRegistry()).cursor("a"))) == [b"new"]
    w.close()


def test_an_unreadable_cursor_holds_segments_back(spool: Spool, spool_dir: Path) -> None:
    spool.append(b"kept")
    spool.close()
    cursor = spool.cursor("ok")
    cursor.ack(cursor.read())
    (spool_dir / "cursors" / "broken.json").write_text("{not json")
    assert spool.gc() == 0  # it may not have delivered the frame yet
    assert spool.drop_cursor("broken")
    assert spool.gc() > 0


def test_readers_tolerate_concurrent_rolls_and_gc(spool_dir: Path) -> None:
    child = FORK.Process(target=_write_in_child, args=(str(spool_dir), "x", 2000))
    reader = Spool(spool_dir, registry=CollectorRegistry())
    cursor = reader.cursor("sink")
    child.start()
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = child.is_alive()
        got = cursor.read(max_frames=97)
        seen += payloads(got)
        cursor.ack(got)
        reader.gc()
        if not got and not alive:
            break
    child.join(5)
    assert seen == [b"x:%d" % i for i in range(2000)]
    assert reader.stats().corrupt_frames == 0
    reader.gc()
    assert segment_files(spool_dir) == []


# ------------------------------------------------------------------------------ fsync


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"file": 0, "dir": 0}
    real = os.fsync
    lock = threading.Lock()

    def counting(fd: int) -> None:
        with lock:
            counts["dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"] += 1
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return counts


def test_fsync_always_syncs_every_append(spool_dir: Path, fsyncs: dict[str, int]) -> None:
    s = Spool(spool_dir, writer_id="w", fsync="always", registry=CollectorRegistry())
    for _ in range(10):
        s.append(b"x")
    s.append_many([b"y"] * 5)  # one write, one fsync
    assert fsyncs["file"] == 11
    assert fsyncs["dir"] >= 1  # the new segment's directory entry
    s.close()


def test_fsync_never_never_syncs(spool_dir: Path, fsyncs: dict[str, int]) -> None:
    s = Spool(
        spool_dir, writer_id="w", fsync="never", segment_bytes=100, registry=CollectorRegistry()
    )
    for _ in range(20):
        s.append(b"x" * 30)
    cursor = s.cursor("sink")
    cursor.ack(cursor.read())
    s.close()
    assert fsyncs == {"file": 0, "dir": 0}
    s.append(b"x")
    s.sync()  # explicit sync works under any policy
    assert fsyncs["file"] == 1
    s.close()


def test_fsync_interval_syncs_at_most_once_per_interval(
    spool_dir: Path, fsyncs: dict[str, int]
) -> None:
    s = Spool(
        spool_dir, writer_id="w", fsync="interval", fsync_interval=0.2, registry=CollectorRegistry()
    )
    start = time.monotonic()
    for _ in range(500):
        s.append(b"x" * 50)
    assert fsyncs["file"] <= 1  # not one per append
    time.sleep(0.5)
    synced = fsyncs["file"]
    assert 1 <= synced <= (time.monotonic() - start) / 0.2 + 1
    time.sleep(0.5)
    assert fsyncs["file"] == synced  # nothing new written: nothing to sync
    s.close()


# ------------------------------------------------------------------------------ liveness


def test_process_alive_own_process() -> None:
    me = os.getpid()
    started = process_start_ns(me)
    assert started is not None
    assert started <= time.time_ns()
    assert process_alive(me, None)
    assert process_alive(me, started)
    assert process_alive(me, time.time_ns())  # a run that started after its process did


def test_process_alive_dead_and_zombie_processes() -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited but not reaped: a zombie
        try:
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.01)
    assert not process_alive(proc.pid, None)
    proc.wait()
    assert not process_alive(proc.pid, None)
    assert not process_alive(0, None)
    assert not process_alive(-1, None)


def test_process_alive_detects_pid_reuse() -> None:
    me = os.getpid()
    started = process_start_ns(me)
    assert started is not None
    # the process we ask about started a minute before the one that has this pid now
    assert not process_alive(me, started - 60 * 10**9)


def test_writer_id_encodes_pid_and_start(spool_dir: Path) -> None:
    s = Spool(spool_dir, registry=CollectorRegistry())
    host, pid, start = s.writer_id.rsplit("-", 2)
    assert host and int(pid) == os.getpid()
    assert process_alive(int(pid), int(start))
    assert liveness.writer_dead(s.writer_id) is False


# ------------------------------------------------------------------------------ metrics


def test_gauges_on_the_registry(spool: Spool, registry: CollectorRegistry) -> None:
    cursor = spool.cursor("catalog")
    for i in range(7):
        spool.append(b"%d" % i)
    assert registry.get_sample_value("odibi_observe_spool_bytes") == spool.stats().bytes > 0
    assert registry.get_sample_value("odibi_observe_spool_backlog_events", {"sink": "catalog"}) == 7
    cursor.ack(cursor.read(max_frames=3))
    assert registry.get_sample_value("odibi_observe_spool_backlog_events", {"sink": "catalog"}) == 4
    # a second Spool on the same registry shares the metrics instead of clashing
    Spool(spool.directory, registry=registry)
