"""What the process still holds at exit goes to a spool directory instead of being dropped.

In ``inline`` and ``background`` mode the events a sink has not confirmed live in memory (the
bus's queues and retry buffers). When the process ends during an outage — the catalog is
restarting, the collector is gone — they used to be dropped at exit, every one of them, so
not even the sweeper could close those runs: their ``RUNNING`` rows may not exist either.

At exit (``atexit``, SIGTERM, the end of a ``multiprocessing`` child) the bus now hands them
to a :class:`SpoolKeeper`, which appends them to a spool directory in the spool's own format
(:mod:`odibi_observe.spool`, through :class:`~odibi_observe.sinks.spool.SpoolSink`, exactly as
``mode="sidecar"`` writes them). Whoever reads that directory delivers them to every sink:

* an ``odibi-observe sidecar --spool-dir DIR`` serving that directory, continuously;
* ``odibi-observe sweep --catalog URL --spool-dir DIR``, once (cron, or by hand after the
  outage): it delivers the spool first and only then closes crashed runs.

The directory is ``spool_dir`` when it is set (the one a sidecar on this host already
serves), else :func:`default_spill_dir`. Nothing in the pipeline process itself reads a
spill: two processes delivering one directory would need the sidecar's cursor discipline,
and a pipeline that starts during the same outage could not deliver it anyway.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

from odibi_observe.record import RunEvent

__all__ = ["SpoolKeeper", "default_spill_dir"]

#: Below ``$XDG_STATE_HOME`` (default ``~/.local/state``): state that outlives the process
#: but is not a cache, which is what an undelivered record is.
SPILL_SUBDIR: Final = os.path.join("odibi-observe", "spool")


def default_spill_dir() -> str:
    """``$XDG_STATE_HOME/odibi-observe/spool``, or ``~/.local/state/odibi-observe/spool``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, SPILL_SUBDIR)


class SpoolKeeper:
    """Appends events to the spool in ``directory`` (created if missing) and says who delivers.

    Satisfies :class:`odibi_observe._bus.Keeper`. Raises (``OSError``, a full spool) when the
    events cannot be stored; the bus then drops and counts them, and says why.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = 512 * 2**20,
        fsync: str = "interval",
    ) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_bytes = max_bytes
        self.fsync = fsync

    def keep(self, events: Sequence[RunEvent]) -> str:
        from odibi_observe.sinks.spool import SpoolSink
        from odibi_observe.spool import Spool

        spool = Spool(
            self.directory,
            fsync=self.fsync,  # type: ignore[arg-type]
            max_bytes=self.max_bytes,
        )
        try:
            SpoolSink(spool).export(events)
            spool.sync()  # on disk before the process is gone, whatever the fsync policy
        finally:
            spool.close()
        return (
            f"{self.directory} for delivery by 'odibi-observe sweep --spool-dir "
            f"{self.directory}' or a sidecar on that directory"
        )
