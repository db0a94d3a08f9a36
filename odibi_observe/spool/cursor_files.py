"""The durable cursor state: ``cursors/<name>.json`` files, written atomically, and their reserve.

A cursor's acknowledged positions decide what gc may delete, so they must survive any crash
whole (temporary file + ``os.replace``) and must still be writable when writers have filled the
disk: ``cursors/.reserve`` holds room for that. Writer (its first sequence number), cursors and
gc all read these files; this module is the one that writes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Final

from odibi_observe._selfmetrics import log, warn_once_per_minute
from odibi_observe.spool.liveness import process_alive
from odibi_observe.spool.segments import FULL_ERRNOS, O_CLOEXEC, FsyncPolicy, fsync_dir

#: Acknowledged (segment, offset end) per writer, as a cursor file stores it.
Acked = dict[str, tuple[int, int]]

_CURSOR_VERSION: Final = 1
#: Bytes held in ``cursors/.reserve`` for cursor files: a spool whose filesystem fills before
#: its first consumer starts must still let that consumer write its cursors (see
#: :meth:`CursorFiles.ensure_reserve`). Tens of cursor files fit, at a page each.
CURSOR_RESERVE: Final = 32 * 2**10
_RESERVE_NAME: Final = ".reserve"


def load_cursor_file(path: str) -> Acked | None:
    """A cursor's acknowledged positions; {} when the file is missing, None when unreadable."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
        acked = data["acked"]
        return {str(w): (int(p[0]), int(p[1])) for w, p in acked.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        warn_once_per_minute(
            f"spool:cursor:{path}",
            "odibi-observe: unreadable spool cursor %s (%s); it holds back "
            "garbage collection until rewritten",
            path,
            exc,
        )
        return None


class CursorFiles:
    """The ``cursors/`` directory of one spool: state files, the reserve, stale temporaries."""

    def __init__(self, directory: str, *, fsync: FsyncPolicy, reserve: int) -> None:
        self.directory = directory
        self.cursor_dir = os.path.join(directory, "cursors")
        os.makedirs(self.cursor_dir, exist_ok=True)
        self.fsync: FsyncPolicy = fsync
        self.reserve = max(0, reserve)
        self._reserve_path = os.path.join(self.cursor_dir, _RESERVE_NAME)
        self.ensure_reserve()

    def path(self, name: str) -> str:
        """The state file of cursor ``name``."""
        return os.path.join(self.cursor_dir, f"{name}.json")

    def load(self, name: str) -> Acked | None:
        """Cursor ``name``'s acknowledged positions ({} if none, None if unreadable)."""
        return load_cursor_file(self.path(name))

    def drop(self, name: str) -> bool:
        """Delete cursor ``name``'s file; False if there was none."""
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            return False
        return True

    def states(self) -> dict[str, Acked]:
        """Acknowledged positions of every cursor file in the directory, by cursor name.

        An unreadable state file counts as "nothing acknowledged" (it holds everything back
        rather than losing events).
        """
        states: dict[str, Acked] = {}
        try:
            names = [
                n
                for n in os.listdir(self.cursor_dir)
                if n.endswith(".json") and not n.startswith(".")
            ]
        except FileNotFoundError:
            names = []
        for filename in names:
            name = filename[: -len(".json")]
            loaded = load_cursor_file(os.path.join(self.cursor_dir, filename))
            states[name] = loaded if loaded is not None else {}
        return states

    def ensure_reserve(self) -> None:
        """Hold :data:`CURSOR_RESERVE` bytes in ``cursors/.reserve`` if it is missing.

        Writers fill the filesystem; a consumer that has never run then could not create the
        cursor files that gc needs before it deletes anything, and the spool would stay full
        for ever. The reserve is made while there is room (a new directory, or after gc freed
        some) and given up by the first cursor write that meets ENOSPC. A reserve that cannot
        be made (the disk is full already) is simply not there; nothing else depends on it.
        """
        if not self.reserve or os.path.exists(self._reserve_path):
            return
        tmp = f"{self._reserve_path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644)
            try:
                data = memoryview(b"\0" * self.reserve)
                while data:  # real blocks, not a sparse file: the room must be taken
                    data = data[os.write(fd, data) :]
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
        log.warning(
            "odibi-observe: spool %s is full; released the %d-byte cursor reserve so "
            "the consumer can record its position and collect segments",
            self.directory,
            self.reserve,
        )
        return True

    def write(self, name: str, acked: Acked) -> None:
        """Replace ``cursors/<name>.json`` atomically; on ENOSPC use the reserve, once."""
        try:
            self._write_once(name, acked)
        except OSError as exc:
            if exc.errno not in FULL_ERRNOS or not self._release_reserve():
                raise
            self._write_once(name, acked)

    def _write_once(self, name: str, acked: Acked) -> None:
        """Replace ``cursors/<name>.json`` atomically (temp file, fsync per policy, rename)."""
        data = json.dumps(
            {"version": _CURSOR_VERSION, "acked": {w: list(p) for w, p in sorted(acked.items())}},
            separators=(",", ":"),
        ).encode()
        final = self.path(name)
        tmp = os.path.join(self.cursor_dir, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
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
            fsync_dir(self.cursor_dir)

    def remove_stale_temp_files(self) -> None:
        """Temporary cursor files left by a process that died between write and rename."""
        try:
            names = os.listdir(self.cursor_dir)
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
                        os.unlink(os.path.join(self.cursor_dir, name))
