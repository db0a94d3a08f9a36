"""The one registry behind odibi-observe's three extension points.

Sinks, trace sources and catalog sources follow the same rule:

* a **contract** — :class:`~odibi_observe.sinks.base.Sink`,
  :class:`~odibi_observe.reconcile.sources.TraceSource`,
  :class:`~odibi_observe.reconcile.sources.CatalogSource` — in a module that holds only the
  contract and the function that opens an implementation through this registry;
* a **scheme** per implementation, its class attribute ``scheme``: the prefix of a spec
  (``otlp-json:PATH``, ``tempo:URL``, ``ledger:URL``, ``odibi-delta:PATH``) for sources, the
  key a sink is known by (``prometheus``, ``catalog``, ``otel``, ``spool``,
  ``openlineage``) for sinks;
* **registration** by :func:`register` (in-process), or by a Python entry point in the kind's
  group (:data:`~odibi_observe.conventions.TRACE_SOURCES_ENTRY_POINT_GROUP` and its siblings)
  whose name is the scheme, so an installed package is found without being imported by hand;
* a **conformance suite** in :mod:`odibi_observe.testing.contracts` every implementation passes.

Built-ins are registered here by *import path* and imported on first use, so importing this
module imports no implementation, and implementations may import their contract freely: the
contract modules never import them back (there is no cycle to break at import time).

Which registration wins a scheme: :func:`register` (it also replaces a built-in, deliberately),
then a built-in, then an entry point. An entry point that names a built-in scheme is ignored
with a warning, so installing a package cannot silently change where records go.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Final, Literal

from odibi_observe._selfmetrics import log
from odibi_observe.conventions import (
    CATALOG_SOURCES_ENTRY_POINT_GROUP,
    SINKS_ENTRY_POINT_GROUP,
    TRACE_SOURCES_ENTRY_POINT_GROUP,
)

#: The three kinds of extension.
Kind = Literal["sinks", "trace_sources", "catalog_sources"]
SINKS: Final = "sinks"
TRACE_SOURCES: Final = "trace_sources"
CATALOG_SOURCES: Final = "catalog_sources"

#: The entry point group of each kind.
GROUPS: Final[Mapping[Kind, str]] = {
    SINKS: SINKS_ENTRY_POINT_GROUP,
    TRACE_SOURCES: TRACE_SOURCES_ENTRY_POINT_GROUP,
    CATALOG_SOURCES: CATALOG_SOURCES_ENTRY_POINT_GROUP,
}

#: How each kind is named in messages.
NOUNS: Final[Mapping[Kind, str]] = {
    SINKS: "sink",
    TRACE_SOURCES: "trace source",
    CATALOG_SOURCES: "catalog source",
}

#: The built-in implementations, ``module:attribute``, imported on first use.
BUILTIN: Final[Mapping[Kind, Mapping[str, str]]] = {
    SINKS: {
        "prometheus": "odibi_observe.sinks.builtin:prometheus",
        "catalog": "odibi_observe.sinks.builtin:catalog",
        "otel": "odibi_observe.sinks.builtin:otel",
        "spool": "odibi_observe.sinks.builtin:spool",
        "openlineage": "odibi_observe.sinks.builtin:openlineage",
    },
    TRACE_SOURCES: {
        "otlp-json": "odibi_observe.reconcile.otlp_files:OtlpJsonFileSource",
        "ledger": "odibi_observe.reconcile.ledger:LedgerSource",
        "tempo": "odibi_observe.reconcile.tempo:TempoSource",
        "openlineage-file": "odibi_observe.reconcile.openlineage_file:OpenLineageFileSource",
    },
    CATALOG_SOURCES: {
        "sql": "odibi_observe.reconcile.catalog_sources:SqlCatalog",
        "odibi-delta": "odibi_observe.reconcile.catalog_sources:OdibiDeltaCatalog",
    },
}


class ExtensionError(Exception):
    """An implementation that cannot be loaded (its module fails to import, say)."""


class UnknownScheme(ExtensionError, LookupError):
    """No implementation of ``kind`` is registered for ``scheme``; ``known`` lists those that
    are."""

    def __init__(self, kind: Kind, scheme: str, known: tuple[str, ...]) -> None:
        super().__init__(
            f"no {NOUNS[kind]} for scheme {scheme!r}; known: " + (", ".join(known) or "none")
        )
        self.kind, self.scheme, self.known = kind, scheme, known


_lock = threading.RLock()
_registered: dict[Kind, dict[str, object]] = {kind: {} for kind in GROUPS}
_discovered: dict[Kind, dict[str, EntryPoint]] = {}
_loaded: dict[tuple[Kind, str], object] = {}


def register(kind: Kind, scheme: str, target: object) -> None:
    """Make ``scheme`` name ``target`` for ``kind``: an object, or ``"module:attribute"`` to
    import on first use. Replaces an earlier registration or a built-in of the same scheme."""
    _check_kind(kind)
    if not scheme or ":" in scheme or scheme != scheme.strip():
        raise ValueError(f"a scheme is a non-empty name without ':' or spaces, not {scheme!r}")
    with _lock:
        _registered[kind][scheme] = target
        _loaded.pop((kind, scheme), None)


def unregister(kind: Kind, scheme: str) -> None:
    """Forget a :func:`register` call (built-ins and entry points stay)."""
    with _lock:
        _registered[kind].pop(scheme, None)
        _loaded.pop((kind, scheme), None)


def schemes(kind: Kind) -> tuple[str, ...]:
    """Every scheme ``kind`` knows: built-ins in their order, then registered, then installed."""
    _check_kind(kind)
    with _lock:
        names = [*BUILTIN[kind], *_registered[kind], *_entry_points(kind)]
    return tuple(dict.fromkeys(names))


def load(kind: Kind, scheme: str) -> object:
    """The implementation registered for ``scheme``, imported if need be.

    :class:`UnknownScheme` when there is none; :class:`ExtensionError` when it cannot be
    imported or declares another scheme than the one it is registered under.
    """
    _check_kind(kind)
    with _lock:
        key = (kind, scheme)
        if key in _loaded:
            return _loaded[key]
        if scheme in _registered[kind]:
            target: object = _registered[kind][scheme]
            where = "registered"
        elif scheme in BUILTIN[kind]:
            target, where = BUILTIN[kind][scheme], "built-in"
        elif scheme in _entry_points(kind):
            point = _entry_points(kind)[scheme]
            target, where = point, f"entry point {point.name} = {point.value} ({GROUPS[kind]})"
        else:
            raise UnknownScheme(kind, scheme, schemes(kind))
        obj = _resolve(target, where)
        declared = getattr(obj, "scheme", None)
        if isinstance(declared, str) and declared and declared != scheme:
            raise ExtensionError(
                f"{NOUNS[kind]} {where} declares scheme {declared!r} but is "
                f"registered as {scheme!r}"
            )
        _loaded[key] = obj
        return obj


def split_spec(spec: str) -> tuple[str, str]:
    """``"scheme:location"`` as ``(scheme, location)``; ``("", spec)`` without a colon."""
    scheme, sep, location = spec.partition(":")
    return (scheme, location) if sep else ("", spec)


def refresh() -> None:
    """Look for installed entry points again (after installing a package in this process)."""
    with _lock:
        _discovered.clear()
        for key in [k for k in _loaded if k[1] not in _registered[k[0]]]:
            del _loaded[key]


def _check_kind(kind: str) -> None:
    if kind not in GROUPS:
        raise ValueError(f"unknown extension kind {kind!r}: one of {', '.join(GROUPS)}")


def _entry_points(kind: Kind) -> dict[str, EntryPoint]:
    """The group's entry points by name, read once per process; a built-in name is kept by the
    built-in, and a name two packages claim by the first, each with a warning."""
    if kind not in _discovered:
        found: dict[str, EntryPoint] = {}
        for point in entry_points(group=GROUPS[kind]):
            if point.name in BUILTIN[kind]:
                log.warning(
                    "odibi-observe: entry point %s = %s (%s) ignored: %r is a built-in %s",
                    point.name,
                    point.value,
                    GROUPS[kind],
                    point.name,
                    NOUNS[kind],
                )
            elif point.name in found:
                log.warning(
                    "odibi-observe: entry point %s = %s (%s) ignored: %s already names %s",
                    point.name,
                    point.value,
                    GROUPS[kind],
                    point.name,
                    found[point.name].value,
                )
            else:
                found[point.name] = point
        _discovered[kind] = found
    return _discovered[kind]


def _resolve(target: object, where: str) -> object:
    try:
        if isinstance(target, EntryPoint):
            return target.load()
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            obj: object = importlib.import_module(module)
            for part in attribute.split(".") if attribute else ():
                obj = getattr(obj, part)
            return obj
    except Exception as exc:  # a third party's import error must not escape as itself
        raise ExtensionError(f"cannot load {where}: {type(exc).__name__}: {exc}") from exc
    return target
