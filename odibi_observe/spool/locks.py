"""The writer's flock on its open segment: the kernel's own "this writer lives" flag.

A pid test alone cannot see a writer in another pid namespace (a sidecar in another
container) and is fooled by wall-clock steps; a flock is dropped by the kernel the moment its
process dies, whatever the namespace. Writers take it, readers probe it.
"""

from __future__ import annotations

import sys
import time

if sys.platform != "win32":
    import fcntl


def flock_held(fd: int) -> bool | None:
    """True if another open file description holds a flock on ``fd``'s file; None: unknown."""
    if sys.platform == "win32":  # pragma: no cover
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def lock_segment(fd: int) -> None:
    """Take the writer's flock on a new segment.

    A reader probing the lock holds a shared lock for microseconds, so retry briefly.
    """
    if sys.platform == "win32":  # pragma: no cover
        return
    for _ in range(50):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            return  # filesystem without flock: liveness falls back to the pid test
        else:
            return
