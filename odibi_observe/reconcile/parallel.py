"""Reading unsorted trace sources in several processes at once.

Decoding spans is most of a reconciliation's work, and it is CPU-bound Python: threads would
take turns on the GIL. So when the input is big enough, the engine asks each unsorted source to
:meth:`~odibi_observe.reconcile.sources.TraceSource.split` itself (trace files: groups of files
of about equal size), reads one group in its own process, and each other group in a child
process. Each process sorts what it reads into run files of the external sort
(:mod:`~odibi_observe.reconcile.spill`); the engine then merges all of them as if it had spilled
them itself. Memory stays bounded per process (one sort chunk each).

A child reports back over a pipe: the paths of its run files, its count, and what it would have
written into the :class:`~odibi_observe.reconcile.model.ReadLog` (errors, ignored spans, gaps,
unreadable sources). A child that dies or fails does not lose its share: the parent reads that
group itself. Children are forked when this process runs no other thread (nothing can be
holding a lock at the fork), and spawned otherwise.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from odibi_observe.reconcile.model import ReadError, ReadLog, ReadRange
from odibi_observe.reconcile.sources import SourceError, TraceSource
from odibi_observe.reconcile.spill import ExternalSorter


@dataclass
class PartResult:
    """What reading one group of sources produced (sent from a child as it is)."""

    paths: list[str] = field(default_factory=list)
    count: int = 0
    errors: list[ReadError] = field(default_factory=list)
    errors_total: int = 0
    ignored_spans: int = 0
    outside_range: int = 0
    gaps: list[tuple[int, int, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def merge_into(self, log: ReadLog, unreadable: list[str]) -> None:
        for error in self.errors:
            log.add_error(error.source, error.where, error.message)
        log.errors_total += self.errors_total - len(self.errors)
        log.ignored_spans += self.ignored_spans
        log.outside_range += self.outside_range
        log.gaps.extend(self.gaps)
        unreadable.extend(self.unreadable)


def sort_sources(
    sorter: ExternalSorter,
    sources: Iterable[TraceSource],
    read_range: ReadRange,
    log: ReadLog,
    unreadable: list[str],
) -> None:
    """Read ``sources`` into ``sorter`` in this process; a source that cannot be read at all
    goes into ``unreadable`` and the log, and the others are still read."""
    for source in sources:
        try:
            sorter.extend(source.read(read_range, log))
        except SourceError as exc:
            unreadable.append(str(exc))
            log.add_error(source.describe(), "source", str(exc))


def read_group(
    sources: Sequence[TraceSource],
    read_range: ReadRange,
    *,
    chunk_size: int,
    directory: str,
    prefix: str,
    log: ReadLog | None = None,
) -> PartResult:
    """Read ``sources`` into named, sorted run files in ``directory``."""
    own_log = log or ReadLog()
    sorter = ExternalSorter(chunk_size=chunk_size, directory=directory, name_prefix=prefix)
    result = PartResult()
    sort_sources(sorter, sources, read_range, own_log, result.unreadable)
    result.paths = sorter.finish()
    result.count = sorter.count
    if log is None:  # a child: everything goes back to the parent
        result.errors = own_log.errors
        result.errors_total = own_log.errors_total
        result.ignored_spans = own_log.ignored_spans
        result.outside_range = own_log.outside_range
        result.gaps = own_log.gaps
    return result


def _child(
    conn: Connection,
    sources: Sequence[TraceSource],
    read_range: ReadRange,
    *,
    chunk_size: int,
    directory: str,
    prefix: str,
) -> None:
    try:
        conn.send(
            (
                "ok",
                read_group(
                    sources, read_range, chunk_size=chunk_size, directory=directory, prefix=prefix
                ),
            )
        )
    except BaseException as exc:  # the parent re-reads this group; say why
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    fork = "fork" in methods and threading.active_count() == 1
    return multiprocessing.get_context("fork" if fork else "spawn")


def read_in_parallel(
    groups: Sequence[Sequence[TraceSource]],
    read_range: ReadRange,
    *,
    chunk_size: int,
    directory: str,
    log: ReadLog,
    unreadable: list[str],
) -> list[PartResult]:
    """Read ``groups[0]`` here and every other group in a child process; the results of all.

    What the children read (errors, counts, gaps) is merged into ``log`` and ``unreadable``.
    """
    context = _context()
    children: list[tuple[Any, Connection, Sequence[TraceSource], str]] = []
    try:
        for number, group in enumerate(groups[1:], start=1):
            receive, send = context.Pipe(duplex=False)
            prefix = f"group{number}"
            process = context.Process(
                target=_child,
                args=(send, list(group), read_range),
                daemon=True,
                kwargs={"chunk_size": chunk_size, "directory": directory, "prefix": prefix},
            )
            process.start()
            send.close()
            children.append((process, receive, group, prefix))
        results = [
            read_group(
                groups[0],
                read_range,
                chunk_size=chunk_size,
                directory=directory,
                prefix="group0",
                log=log,
            )
        ]
        unreadable.extend(results[0].unreadable)
        for process, receive, group, prefix in children:
            try:
                status, payload = receive.recv()
            except (EOFError, OSError):
                status, payload = "failed", f"the process ended with status {process.exitcode}"
            process.join()
            if status == "ok":
                assert isinstance(payload, PartResult)
                payload.merge_into(log, unreadable)
                results.append(payload)
                continue
            log.add_error(
                "reconcile",
                "worker process",
                f"a reading process failed ({payload}); its files were read again here",
            )
            again = read_group(
                group,
                read_range,
                chunk_size=chunk_size,
                directory=directory,
                prefix=f"{prefix}-again",
                log=log,
            )
            unreadable.extend(again.unreadable)
            results.append(again)
        return results
    finally:
        for process, receive, _, _ in children:
            receive.close()
            if process.is_alive():
                process.terminate()
                process.join(5)
