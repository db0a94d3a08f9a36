"""The two source contracts of reconciliation: :class:`TraceSource` and :class:`CatalogSource`.

This module holds the contracts and the functions that open an implementation from a spec
through :mod:`odibi_observe.extensions`; it imports no implementation. Implementations are
registered there by scheme (built-ins by import path, third parties by entry point), and
:mod:`odibi_observe.testing.contracts` holds the conformance suite of each contract.

The trace side
--------------

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

:class:`odibi_observe.testing.contracts.TraceSourceContract` is the conformance suite every
source passes. Sources are opened from a ``scheme:location`` spec by :func:`open_trace_source`;
the built-in schemes:

=================  ==================================================================
``otlp-json:PATH``  OTLP-JSON lines files (the Collector ``file`` exporter), a directory of
                    them, or a glob; gzip and rotated files included
``ledger:URL``      the sidecar's span ledger table ``odibi_span_ledger`` (SQLAlchemy URL)
``tempo:URL``       Grafana Tempo's HTTP API (TraceQL search, then trace by id)
``openlineage-file:PATH``  the OpenLineage client's file transport output (``START`` and
                    terminal events, paired per run); ``holds = "lineage"``
=================  ==================================================================

Another package adds a scheme with an entry point in the ``odibi_observe.trace_sources`` group
(see ``docs/extending.md``).

The catalog side
----------------
A :class:`CatalogSource` yields :class:`~odibi_observe.reconcile.model.CatalogRun` tuples in
ascending ``run_id`` order (byte order), reports bad rows into the ``ReadLog``, and raises
:class:`SourceError` only when the catalog cannot be read at all. :func:`open_catalog_source`
opens ``scheme:location`` for a registered catalog scheme (``odibi-delta:PATH``, ``sql:URL``)
and reads any other spec as a SQLAlchemy URL (the ``sql`` scheme), so ``sqlite:///catalog.db``
and ``postgresql://user@host/db`` need no prefix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, Self

from odibi_observe import extensions
from odibi_observe.conventions import TEMPO_DEFAULT_QUERY
from odibi_observe.reconcile.model import CatalogRun, PipelineRunSide, ReadLog, ReadRange, TraceRun
from odibi_observe.record import RunRecord

if TYPE_CHECKING:
    from odibi_observe.catalog.store import CatalogStore


class SourceError(Exception):
    """A source that cannot be read at all; the message says which and why (no secrets)."""


@dataclass(frozen=True)
class SourceOptions:
    """Settings some sources take (the CLI's ``--tempo-*`` options); each ignores the rest."""

    tempo_limit: int = 500
    tempo_spss: int = 3
    tempo_timeout: float = 30.0
    tempo_slice_seconds: int = 3600
    tempo_query: str = TEMPO_DEFAULT_QUERY
    tempo_headers: tuple[tuple[str, str], ...] = field(default=())
    #: Where a catalog source that sorts externally (Odibi's Delta table) puts its run files.
    spill_dir: str | None = None


class _SpecSource(ABC):
    """What both contracts share: a source is opened from a ``scheme:location`` spec, says
    what it reads without its secrets, and releases what it holds."""

    #: The spec prefix (``otlp-json``, ``ledger``, ``tempo``; ``sql``, ``odibi-delta``), the
    #: name it is registered under.
    scheme: ClassVar[str]

    @classmethod
    def from_spec(cls, location: str, options: SourceOptions) -> Self:
        """The source ``scheme:location`` names; override to take ``options``."""
        return cls(location)  # type: ignore[call-arg]

    @abstractmethod
    def describe(self) -> str:
        """The spec, as safe to print (passwords hidden)."""

    def close(self) -> None:  # noqa: B027 - an optional hook, like SpanExporter.shutdown
        """Release connections; the default has nothing to release."""


class TraceSource(_SpecSource):
    """Where spans are read from. See the module docstring for the contract."""

    #: True when :meth:`read` yields runs in ascending ``run_id`` order (byte order of UTF-8,
    #: which is Python's ``str`` order).
    sorted_by_run_id: ClassVar[bool] = False
    #: What the runs are read from: ``spans`` (node spans), or ``lineage`` (OpenLineage run
    #: events, ``openlineage-file:``). The engine never merges the two kinds into one side.
    holds: ClassVar[str] = "spans"

    @abstractmethod
    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[TraceRun]:
        """The odibi node spans whose start is in ``read_range``."""

    def pipeline_runs(
        self, read_range: ReadRange, log: ReadLog
    ) -> Iterator[PipelineRunSide] | None:
        """The pipeline runs (``RUN {pipeline}`` spans with node counts) that started in
        ``read_range``; None (the default) when this source cannot read them, and the
        pipeline runs are then not reconciled against it."""
        return None

    def split(self, parts: int, read_range: ReadRange, *, min_bytes: int = 0) -> list[TraceSource]:
        """Independent sources that together hold what this one holds, to be read in
        ``parts`` processes at once; ``[self]`` when there is nothing worth splitting (the
        default). ``min_bytes`` is the least input worth a second process."""
        return [self]


class CatalogSource(_SpecSource):
    """Where catalog rows are read from; see the module docstring."""

    @abstractmethod
    def read(self, read_range: ReadRange, log: ReadLog) -> Iterator[CatalogRun]:
        """The rows whose time is in ``read_range``, in ascending ``run_id`` order."""

    @abstractmethod
    def margin(self) -> timedelta:
        """How far this catalog's time of a run may be from the span's start.

        Asked first, before any trace is read, so it also checks that the catalog can be read
        at all (raising :class:`SourceError` if not).
        """

    def pipeline_runs(
        self, read_range: ReadRange, log: ReadLog
    ) -> Iterator[PipelineRunSide] | None:
        """The ``meta_pipeline_runs`` rows that started in ``read_range``; None (the
        default) when this catalog has no such table."""
        return None

    def holds_plans(self) -> bool:
        """Whether this catalog holds what a pipeline run's plan records: ``SKIPPED`` runs
        and ``meta_pipeline_runs``. False for Odibi's own (it writes no row for a node it
        did not run): a skipped run's span alone is then no discrepancy, and pipeline runs
        are not compared."""
        return True

    def store(self) -> CatalogStore | None:
        """A store to write repairs to, or None when this catalog cannot be written."""
        return None

    def phase_runs(self, read_range: ReadRange, log: ReadLog) -> Iterator[RunRecord]:
        """The runs whose start is in ``read_range`` that recorded a write or a checkpoint,
        oldest first (``writes_json``, ``checkpoint_json``: migration 0006); none for a
        catalog without them (Odibi's own table). What the findings of
        :mod:`odibi_observe.reconcile.phases` are judged on."""
        return iter(())

    def checkpointed_before(self, pipeline: str, node: str, before_ns: int) -> bool:
        """Whether a run of ``pipeline``/``node`` that started before ``before_ns`` committed
        a checkpoint: the node is a checkpointing one although its writes did not say so."""
        return False

    def node_runs(
        self, pipeline: str, node: str, read_range: ReadRange, log: ReadLog
    ) -> Iterator[RunRecord]:
        """Every run of ``pipeline``/``node`` whose start is in ``read_range``, with or without
        phases (SKIPPED ones, which never ran, left out), oldest first: what
        ``overlapping_runs`` is judged on, so that a run that ended before it wrote anything is
        still seen running beside another. None (the default) for a catalog without phases."""
        return iter(())

    def checkpoints_before(
        self, pipeline: str, node: str, before_ns: int, log: ReadLog
    ) -> Iterator[RunRecord]:
        """The latest runs of ``pipeline``/``node`` that started before ``before_ns`` and
        committed a checkpoint (a few, newest first): what the first checkpoints of a window
        are compared with. None (the default) for a catalog without phases."""
        return iter(())

    def sql_url(self) -> str | None:
        """The SQLAlchemy URL, for recording reports in ``meta_reconciliation``; or None."""
        return None


# --- opening a spec ---------------------------------------------------------------------------

#: The catalog scheme that reads any spec without a registered scheme (a SQLAlchemy URL).
SQL_CATALOG_SCHEME = "sql"


def register_trace_source(
    scheme: str, factory: Callable[[str, SourceOptions], TraceSource]
) -> None:
    """Make ``scheme:location`` specs open with ``factory(location, options)``.

    Kept for existing callers: it is ``extensions.register("trace_sources", scheme,
    factory)``. A package registers with an entry point instead (``docs/extending.md``).
    """
    extensions.register(extensions.TRACE_SOURCES, scheme, factory)


def trace_schemes() -> tuple[str, ...]:
    """The schemes ``--traces`` accepts (built-in, registered, installed)."""
    return extensions.schemes(extensions.TRACE_SOURCES)


def catalog_schemes() -> tuple[str, ...]:
    """The schemes ``--catalog`` accepts besides a plain SQLAlchemy URL."""
    return extensions.schemes(extensions.CATALOG_SOURCES)


def open_trace_source(spec: str, options: SourceOptions | None = None) -> TraceSource:
    """The source a ``scheme:location`` spec names; :class:`SourceError` if it names none."""
    scheme, location = extensions.split_spec(spec)
    known = trace_schemes()
    if scheme not in known or not location:
        raise SourceError(
            f"--traces {spec!r}: expected one of "
            + ", ".join(f"{s}:..." for s in known)
            + " (for example otlp-json:/var/log/otel/traces.jsonl)"
        )
    where = f"--traces {spec!r}"
    made = _make(
        _load(extensions.TRACE_SOURCES, scheme, where),
        location,
        options or SourceOptions(),
        where=where,
        contract=TraceSource,
    )
    if not isinstance(made, TraceSource):
        raise SourceError(
            f"{where}: the {scheme!r} factory returned {type(made).__name__}, not a TraceSource"
        )
    return made


def open_catalog_source(
    spec: str, *, spill_dir: str | None = None, options: SourceOptions | None = None
) -> CatalogSource:
    """The catalog a ``--catalog`` spec names: a registered ``scheme:location``, otherwise a
    SQLAlchemy URL (see the module docstring)."""
    options = options or SourceOptions()
    if spill_dir is not None:
        options = replace(options, spill_dir=spill_dir)
    scheme, location = extensions.split_spec(spec)
    plain_url = scheme not in catalog_schemes()
    if plain_url:
        scheme, location = SQL_CATALOG_SCHEME, spec
    where = f"--catalog {spec!r}"
    try:
        made = _make(
            _load(extensions.CATALOG_SOURCES, scheme, where),
            location,
            options,
            where=where,
            contract=CatalogSource,
        )
    except SourceError as exc:
        if not plain_url:
            raise
        others = [s for s in catalog_schemes() if s != SQL_CATALOG_SCHEME]
        raise SourceError(
            f"{exc} (--catalog takes a SQLAlchemy URL or one of "
            + ", ".join(f"{s}:..." for s in others)
            + ")"
        ) from None
    if not isinstance(made, CatalogSource):
        raise SourceError(
            f"{where}: the {scheme!r} factory returned {type(made).__name__}, not a CatalogSource"
        )
    return made


def _load(kind: extensions.Kind, scheme: str, where: str) -> object:
    try:
        return extensions.load(kind, scheme)
    except extensions.ExtensionError as exc:
        raise SourceError(f"{where}: {exc}") from None


def _make(
    factory: object, location: str, options: SourceOptions, *, where: str, contract: type
) -> object:
    """Call what a scheme names: a contract subclass through ``from_spec``, any other callable
    as ``factory(location, options)`` (what :func:`register_trace_source` takes)."""
    if isinstance(factory, type) and issubclass(factory, contract):
        return factory.from_spec(location, options)  # type: ignore[attr-defined]
    if callable(factory):
        return factory(location, options)
    raise SourceError(f"{where}: what is registered is not callable ({factory!r})")
