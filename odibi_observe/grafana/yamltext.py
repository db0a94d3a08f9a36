"""A small, deterministic YAML writer for the generated configuration files.

The generated files (provisioning, Prometheus configuration and rules) only hold mappings,
sequences, strings, numbers, booleans and null, so a few lines do instead of a YAML library:
the package then needs nothing beyond the foundation SDK to build them, and the output is
byte-for-byte stable (keys in the order given, strings quoted the same way every time).

Strings are written plain when that is unambiguous, as a literal block (``|-``) when they span
lines (PromQL and descriptions stay readable), and double-quoted otherwise; a JSON string is a
valid YAML double-quoted scalar, so :func:`json.dumps` does the escaping. The tests parse every
generated file with PyYAML and compare it with the data it was written from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Final

_PLAIN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
#: Plain scalars YAML 1.1 readers (PyYAML, Go's yaml.v2 used by Prometheus) would not read as
#: strings.
_RESERVED: Final = frozenset(
    {
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "y",
        "n",
        "null",
        "~",
    }
)

Yaml = Mapping[str, "Yaml"] | Sequence["Yaml"] | str | int | float | bool | None


def dump(data: Yaml, header: str = "") -> str:
    """``data`` as YAML text; ``header`` lines become ``#`` comments at the top."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comments + "\n".join(_node(data, 0)) + "\n"


def _scalar(value: str | int | float | bool | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
        return value
    return json.dumps(value, ensure_ascii=False)


def _is_block(value: Yaml) -> bool:
    return isinstance(value, str) and "\n" in value


def _block(value: str, indent: int) -> list[str]:
    """A literal block: ``|-`` drops the final newline, ``|`` keeps exactly one."""
    chomp = "|" if value.endswith("\n") else "|-"
    pad = " " * indent
    return [chomp, *(f"{pad}{line}" if line else "" for line in value.rstrip("\n").split("\n"))]


def _node(data: Yaml, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(data, Mapping):
        if not data:
            return [pad + "{}"]
        lines = []
        for key, value in data.items():
            lines.extend(_entry(f"{pad}{_scalar(key)}:", value, indent))
        return lines
    if isinstance(data, (list, tuple)):
        if not data:
            return [pad + "[]"]
        lines = []
        for item in data:
            inner = _node(item, indent + 2)
            if isinstance(item, (Mapping, list, tuple)) and item:
                # The first line of the item goes after "- ", the rest stays indented.
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines.extend(inner[1:])
            elif _is_block(item):
                assert isinstance(item, str)
                block = _block(item, indent + 2)
                lines.append(f"{pad}- {block[0]}")
                lines.extend(block[1:])
            else:
                lines.append(f"{pad}- {inner[0].lstrip()}")
        return lines
    if isinstance(data, str) and "\n" in data:
        return _block(data, indent)
    assert not isinstance(data, (Mapping, list, tuple))
    return [pad + _scalar(data)]  # type: ignore[arg-type]


def _entry(prefix: str, value: Yaml, indent: int) -> list[str]:
    if isinstance(value, (Mapping, list, tuple)) and value:
        return [prefix, *_node(value, indent + 2)]
    if _is_block(value):
        assert isinstance(value, str)
        block = _block(value, indent + 2)
        return [f"{prefix} {block[0]}", *block[1:]]
    return [f"{prefix} {_node(value, 0)[0]}"]
