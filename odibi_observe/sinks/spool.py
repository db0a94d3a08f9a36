"""The sink of ``mode="sidecar"``: append each event to the write-ahead spool, nothing else.

In sidecar mode the pipeline process does the least work that still makes the record durable:
one framed ``os.write`` per event on the caller's thread (the bus runs inline), so the
``RUNNING`` marker is in the spool before the node's body starts and the terminal record is
there before the decorator returns. A ``SIGKILL`` a microsecond later loses neither; the
sidecar reads them and does the rest (catalog, spans, metrics, and the sweeper for runs that
never finished).

A full spool (its size limit or the disk) makes :meth:`SpoolSink.export` raise, so the bus
keeps the events in its bounded retry buffer and counts what it finally has to drop — never a
silent loss. Recovery is piecewise: when room returns, a batch stores the oldest events that
fit and raises for the rest; the stored ones are remembered (by identity, for one re-send) and
skipped when the bus delivers the batch again, so a backlog larger than the room drains in
order without writing any event twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from odibi_observe.record import RunEvent
from odibi_observe.sinks.base import Sink, SinkUnavailable

if TYPE_CHECKING:
    from odibi_observe.spool import Spool


class SpoolSink(Sink):
    """Writes run events (``RunEvent.to_json``) to a :class:`~odibi_observe.spool.Spool`."""

    name = "spool"
    #: A retry costs a size check on local disk, so the bus retries at most this long after a
    #: refusal: a long-lived process is back as soon as the sidecar has freed room.
    max_retry_delay: float = 0.05

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        # Events of batches that raised although they were stored (a prefix that fitted), by
        # id(). The bus keeps a failed batch whole and sends it again, oldest first, so these
        # come back at its head until a call succeeds; holding them keeps their ids unique.
        # They are at most the bus's retry buffer, which holds them anyway.
        self._stored: dict[int, RunEvent] = {}

    def export(self, events: Sequence[RunEvent]) -> None:
        from odibi_observe.spool import SpoolFullError

        already = self._stored
        kept = {id(e): e for e in events if already.get(id(e)) is e} if already else {}
        todo = [e for e in events if id(e) not in kept] if kept else events
        self._stored = {}
        if not todo:
            return
        try:
            if len(todo) == 1:
                self.spool.append(todo[0].to_json().encode())
            else:
                self.spool.append_many([e.to_json().encode() for e in todo], partial=True)
        except SpoolFullError as exc:
            kept.update((id(e), e) for e in todo[:exc.stored])
            self._stored = kept
            raise SinkUnavailable(f"spool full ({exc.reason}; {exc.stored} of {len(todo)} "
                                  f"event(s) stored): {self.spool_dir}") from exc

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
