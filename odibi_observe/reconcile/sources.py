"""The trace side of reconciliation: one small contract, and the registry of its sources.

A :class:`TraceSource` yields the odibi node spans it holds whose start is in a
:class:`~odibi_observe.reconcile.model.ReadRange`, as
:class:`~odibi_observe.reconcile.model.TraceRun` tuples, and reports everything else into the
:class:`~odibi_observe.reconcile.model.ReadLog` it is handed:

* spans that are not odibi node spans (no ``odibi.run_id``): ``log.ignored_spans``;
* content it cannot read (a malformed line, a span with a wrong attribute type, a request that
  timed out): ``log.add_error(source, where, why)`` — never an exception, so one bad line costs
  that line and the rest of the window is still reconciled;
* time ranges it knows it could not read (``log.gap``), so that the catalog's runs there are
  counted as unchecked rather than reported missing.

It raises :class:`SourceError` only when it cannot be read at all (no such file, no such table,
a URL it cannot parse). Order does not matter — the engine sorts by ``run_id`` through a spill
file — unless ``sorted_by_run_id`` is true, which lets a database source hand over its
``ORDER BY run_id`` stream directly. The same span may be yielded twice (two files, a retried
export): the engine recognises it by its ids.

``tests/test_reconcile_sources.py`` holds the one conformance test class every source
subclasses. Sources are opened from a ``scheme:location`` spec by :func:`open_trace_source`:

=================  ==================================================================
``otlp-json:PATH``  OTLP-JSON lines files (the Collector ``file`` exporter), a directory of
                    them, or a glob; gzip and rotated files included
``ledger:URL``      the sidecar's span ledger table ``odibi_span_ledger`` (SQLAlchemy URL)
``tempo:URL``       Grafana Tempo's HTTP API (TraceQL search, then trace by id)
=================  ==================================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from odibi_observe.reconcile.model import ReadLog, ReadRange, TraceRun


class SourceError(Exception):
    """A source that cannot be read at all; the message says which and why (no secrets)."""


@dataclass(frozen=True)
class SourceOptions:
    """Settings some sources take (the CLI's ``--tempo-*`` options); each ignores the rest."""

    tempo_limit: int = 500
    tempo_spss: int = 3
    tempo_timeout: float = 30.0
    tempo_slice_seconds: int = 3600
    tempo_query: str = '{ span.odibi.run_id != "" }'
    tempo_headers: tuple[tuple[str, str], ...] = field(default=())


class TraceSource(ABC):
    """Where spans are read from. See the module docstring for the contract."""

    #: The spec prefix (``otlp-json``, ``ledger``, ``tempo``).
    scheme: ClassVar[str]
    #: True when :meth:`read` yields runs in ascending ``run_id`` order (byte order of UTF-8,
    #: which is Python's ``str`` order).
    sorted_by_run_id: ClassVar[bool] = False

    @abstractmethod
    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[TraceRun]:
        """The odibi node spans whose start is in ``read_range``."""

    @abstractmethod
    def describe(self) -> str:
        """The spec, as safe to print (passwords hidden)."""

    def split(self, parts: int, read_range: ReadRange, *, min_bytes: int = 0
              ) -> list[TraceSource]:
        """Independent sources that together hold what this one holds, to be read in
        ``parts`` processes at once; ``[self]`` when there is nothing worth splitting (the
        default). ``min_bytes`` is the least input worth a second process."""
        return [self]

    def close(self) -> None:  # noqa: B027 - an optional hook, like SpanExporter.shutdown
        """Release connections; the default has nothing to release."""


_REGISTRY: dict[str, Callable[[str, SourceOptions], TraceSource]] = {}


def register_trace_source(
    scheme: str, factory: Callable[[str, SourceOptions], TraceSource]
) -> None:
    """Make ``scheme:location`` specs open with ``factory(location, options)``."""
    _REGISTRY[scheme] = factory


def trace_schemes() -> tuple[str, ...]:
    _load_builtin()
    return tuple(_REGISTRY)


def open_trace_source(spec: str, options: SourceOptions | None = None) -> TraceSource:
    """The source a ``scheme:location`` spec names; :class:`SourceError` if it names none."""
    _load_builtin()
    scheme, sep, location = spec.partition(":")
    factory = _REGISTRY.get(scheme) if sep else None
    if factory is None or not location:
        raise SourceError(
            f"--traces {spec!r}: expected one of "
            + ", ".join(f"{s}:..." for s in _REGISTRY)
            + " (for example otlp-json:/var/log/otel/traces.jsonl)")
    return factory(location, options or SourceOptions())


def _load_builtin() -> None:
    if _REGISTRY:
        return
    from odibi_observe.reconcile import ledger, otlp_files, tempo

    register_trace_source(otlp_files.OtlpJsonFileSource.scheme,
                          lambda location, _options: otlp_files.OtlpJsonFileSource(location))
    register_trace_source(ledger.LedgerSource.scheme,
                          lambda location, _options: ledger.LedgerSource(location))
    register_trace_source(tempo.TempoSource.scheme, tempo.TempoSource)
