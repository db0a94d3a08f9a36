"""The sink of ``mode="sidecar"``: append each event to the write-ahead spool, nothing else.

In sidecar mode the pipeline process does the least work that still makes the record durable:
one framed ``os.write`` per event on the caller's thread (the bus runs inline), so the
``RUNNING`` marker is in the spool before the node's body starts and the terminal record is
there before the decorator returns. A ``SIGKILL`` a microsecond later loses neither; the
sidecar reads them and does the rest (catalog, spans, metrics, and the sweeper for runs that
never finished).

A full spool (its size limit or the disk) makes :meth:`SpoolSink.export` raise, so the bus
keeps the events in its bounded retry buffer and counts what it finally has to drop — never a
silent loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from odibi_observe.record import RunEvent
from odibi_observe.sinks.base import Sink, SinkExportError

if TYPE_CHECKING:
    from odibi_observe.spool import Spool


class SpoolSink(Sink):
    """Writes run events (``RunEvent.to_json``) to a :class:`~odibi_observe.spool.Spool`."""

    name = "spool"

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def export(self, events: Sequence[RunEvent]) -> None:
        from odibi_observe.spool import SpoolFullError

        try:
            if len(events) == 1:
                self.spool.append(events[0].to_json().encode())
            else:
                self.spool.append_many([e.to_json().encode() for e in events])
        except SpoolFullError as exc:
            raise SinkExportError(f"spool full ({exc.reason}): {self.spool_dir}") from exc

    @property
    def spool_dir(self) -> str:
        return str(self.spool.directory)

    def force_flush(self, timeout: float | None = None) -> bool:
        self.spool.sync()
        return True

    def shutdown(self) -> None:
        self.spool.close()

    def after_fork(self) -> None:
        self.spool.after_fork()
