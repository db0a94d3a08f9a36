"""Text every backend can encode: the one escaping rule at the sink boundary.

Python strings may hold lone surrogates (``\\udc80``-``\\udcff``): that is how ``os.fsdecode``,
``os.listdir`` and ``sys.argv`` represent the bytes of a file name that is not valid UTF-8, e.g.
a latin-1 ``load_résumé.csv``. No backend accepts them: protobuf (OTLP) and the PostgreSQL
driver refuse to encode them, and ``prometheus_client`` fails the whole ``/metrics`` page. A
record holding one would fail every export attempt, forever.

The rule, applied wherever text leaves the process (span names and attributes, OTel metric
attributes, Prometheus label values, catalog columns): a string that does not encode as UTF-8
is re-written with ``errors="backslashreplace"``, so every unencodable code point becomes its
escape, ``\\udce9``. Nothing is dropped or guessed: ``load_r\\udce9sum\\udce9.csv`` still names
the file (``\\udce9`` is the byte ``0xe9``), and the same run gets the same text in every
backend, so the catalog row, the span and the metric labels still agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from odibi_observe.record import OPTIONAL_TEXT_FIELDS, TEXT_FIELDS, RunRecord


def encodable_text(value: str) -> str:
    """``value`` if it encodes as UTF-8, else its ``backslashreplace`` escape (see above).

    A *valid* surrogate pair written as two code points (``"\ud83d\ude00"``) is joined into
    the character it spells first; only lone surrogates are escaped.
    """
    if value.isascii():  # the common case, decided in C
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        joined = value.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
        return joined.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def is_encodable(value: str) -> bool:
    """True when ``value`` encodes as UTF-8 (no lone surrogates)."""
    return encodable_text(value) is value


def encodable_value(value: Any) -> Any:
    """A string, or a tuple/list/mapping of them, with :func:`encodable_text` applied.

    Returns ``value`` itself when nothing needed escaping, so callers can test with ``is``.
    """
    if isinstance(value, str):
        return encodable_text(value)
    if isinstance(value, (tuple, list)):
        items = [encodable_value(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        pairs = [(encodable_value(k), encodable_value(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(pairs, value.items(), strict=True)):
            return value
        return dict(pairs)
    return value


#: The text fields of a :class:`~odibi_observe.record.RunRecord` escaped here: all but
#: ``error_stack``, which is escaped where it is made (``stack_of`` runs it through
#: ``safe_text``).
_TEXT_FIELDS = tuple(f for f in (*TEXT_FIELDS, *OPTIONAL_TEXT_FIELDS) if f != "error_stack")


def encodable_record(record: RunRecord) -> RunRecord:
    """``record`` itself when all its text encodes, else a copy with the text escaped.

    Sinks whose backend encodes text (OTLP, Prometheus) call this on every record; the check
    is a few ``str.isascii`` calls for the usual record.
    """
    changes: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = getattr(record, name)
        if isinstance(value, str) and not value.isascii():
            fixed = encodable_text(value)
            if fixed is not value:
                changes[name] = fixed
    if record.suggestions:
        suggestions = encodable_value(record.suggestions)
        if suggestions is not record.suggestions:
            changes["suggestions"] = suggestions
    if record.attributes:
        attributes = encodable_value(record.attributes)
        if attributes is not record.attributes:
            changes["attributes"] = attributes
    return record.replace(**changes) if changes else record
