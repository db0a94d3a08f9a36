"""The frame codec: how one event is stored in a segment, and how a reader finds it again.

This is the one place that knows the bytes on disk, so the writer (which encodes) and every
reader (which parses, resynchronises after damage and counts) cannot disagree about them.

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
of a sealed or dead segment) is reported as a damaged byte range; the parser resynchronises on
the next offset that holds a valid magic + header + payload CRC, so the good frames before
*and* after the damage are kept.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Final

#: First bytes of every frame. 0xA7 is not valid as the first byte of a UTF-8 sequence, so the
#: magic does not occur in JSON or other text payloads: resynchronisation finds frame starts only.
MAGIC: Final = b"\xa7OSF"
HEADER_SIZE: Final = 16
#: Largest payload a frame may carry. A larger length field is damage, never a frame in progress.
MAX_PAYLOAD: Final = 64 * 2**20

HEADER: Final = struct.Struct("<4sIII")
_PREFIX: Final = struct.Struct("<4sII")
_U32: Final = struct.Struct("<I")
_READ_CHUNK: Final = 256 * 2**10


def encode_frame(payload: bytes) -> bytes:
    """The frame that stores ``payload`` (format in the module docstring)."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError(f"spool payload of {n} bytes exceeds the {MAX_PAYLOAD}-byte maximum")
    prefix = _PREFIX.pack(MAGIC, n, zlib.crc32(payload))
    return prefix + _U32.pack(zlib.crc32(prefix)) + payload


def header_length(data: bytes, p: int) -> int | None:
    """The payload length in the header at ``p`` if that header is intact; None otherwise.

    Only the magic and the header CRC are checked: damage accounting uses this to count frames
    whose header survived inside a damaged stretch.
    """
    if len(data) - p < HEADER_SIZE:
        return None
    magic, length, _, header_crc = HEADER.unpack_from(data, p)
    if magic != MAGIC or length > MAX_PAYLOAD or zlib.crc32(data[p : p + 12]) != header_crc:
        return None
    return int(length)


_VALID, _INCOMPLETE, _INVALID = 0, 1, 2


def _check(buf: bytes, mv: memoryview, p: int) -> tuple[int, int]:
    """Classify the bytes at ``p``: (_VALID, end), (_INCOMPLETE, 0) or (_INVALID, 0)."""
    n = len(buf)
    if n - p < HEADER_SIZE:
        return (_INCOMPLETE, 0) if MAGIC.startswith(buf[p : p + 4]) else (_INVALID, 0)
    magic, length, payload_crc, header_crc = HEADER.unpack_from(buf, p)
    if magic != MAGIC or length > MAX_PAYLOAD or zlib.crc32(mv[p : p + 12]) != header_crc:
        return _INVALID, 0
    end = p + HEADER_SIZE + length
    if end > n:
        return _INCOMPLETE, 0
    if zlib.crc32(mv[p + HEADER_SIZE : end]) != payload_crc:
        return _INVALID, 0
    return _VALID, end


def _resync(buf: bytes, mv: memoryview, start: int, *, eof: bool, final: bool) -> int | None:
    """The next offset >= ``start`` where reading can continue after damage; None: read more.

    That is a valid frame, or (in a segment still being written) the start of an incomplete
    frame at the end of the data, or the end of the data.
    """
    n = len(buf)
    q = start
    while True:
        q = buf.find(MAGIC, q)
        if q < 0:
            if not eof:
                return None
            if not final:  # the last bytes may be the beginning of a magic being written
                for k in (3, 2, 1):
                    if n - k >= start and buf[n - k :] == MAGIC[:k]:
                        return n - k
            return n
        status, _ = _check(buf, mv, q)
        if status == _VALID:
            return q
        if status == _INCOMPLETE:
            if not eof:
                return None
            if not final:
                return q
        q += 1


@dataclass
class Parsed:
    """What a read of one segment found: frames, damaged ranges, and where to go on."""

    frames: list[tuple[int, int, bytes]] = field(default_factory=list)  # start, end, payload
    corrupt: list[tuple[int, int]] = field(default_factory=list)  # damaged byte ranges
    resume: int = 0  # absolute offset to continue from
    # "eof": all data consumed; "wait": an incomplete frame at the end of a live segment;
    # "limit": enough frames; "more": the buffer ended inside something (read further).
    state: str = "eof"


def _parse(
    buf: bytes, base: int, *, eof: bool, final: bool, limit: int, payloads: bool, out: Parsed
) -> None:
    """Parse frames from ``buf`` (file bytes from offset ``base``) into ``out``.

    ``eof``: ``buf`` reaches the current end of the file. ``final``: the file will not grow
    (sealed, or its writer is dead), so an incomplete frame at its end is torn, not pending.
    """
    mv = memoryview(buf)
    n = len(buf)
    p = 0
    frames, corrupt = out.frames, out.corrupt
    while p < n:
        if len(frames) >= limit:
            out.resume, out.state = base + p, "limit"
            return
        status, end = _check(buf, mv, p)
        if status == _VALID:
            frames.append((base + p, base + end, buf[p + HEADER_SIZE : end] if payloads else b""))
            p = end
            continue
        if status == _INCOMPLETE:
            if not eof:
                out.resume, out.state = base + p, "more"
                return
            if not final:
                out.resume, out.state = base + p, "wait"
                return
            corrupt.append((base + p, base + n))
            p = n
            break
        q = _resync(buf, mv, p + 1, eof=eof, final=final)
        if q is None:
            out.resume, out.state = base + p, "more"
            return
        corrupt.append((base + p, base + q))
        p = q
    out.resume, out.state = base + p, "eof"


def read_segment(fd: int, offset: int, *, final: bool, limit: int, payloads: bool = True) -> Parsed:
    """Frames of an open segment file from ``offset``: at most ``limit``, read in chunks."""
    out = Parsed(resume=offset)
    size = os.fstat(fd).st_size
    pos = offset
    chunk = _READ_CHUNK
    while True:
        if pos >= size:
            out.resume, out.state = pos, "eof"
            return out
        if len(out.frames) >= limit:
            out.resume, out.state = pos, "limit"
            return out
        want = min(chunk, size - pos)
        buf = os.pread(fd, want, pos)
        eof = len(buf) < want or pos + len(buf) >= size
        _parse(buf, pos, eof=eof, final=final, limit=limit, payloads=payloads, out=out)
        if out.state == "more":
            if out.resume == pos:
                chunk *= 2  # one frame (or one damaged stretch) is larger than the buffer
            pos = out.resume
            continue
        pos = out.resume
        if out.state == "eof" and not eof:
            continue
        return out
