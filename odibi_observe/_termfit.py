"""Summary lines that fit the terminal they are printed on.

The summaries of ``reconcile`` and ``report`` are ``label          text`` lines whose text can
be long (an ISO window, a path, a repair note). On a terminal a long line wrapped by the
terminal itself starts again at column 0 and breaks the label column; wrapped here it keeps
its indent under the text. Piped (a file, grep, a cron log) every line is kept whole, so a
line can be searched for as printed.
"""

from __future__ import annotations

import shutil
import textwrap
from typing import TextIO

#: Width of the label column of the summaries ("discrepancies  ").
LABEL_WIDTH = 15


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def fit(text: str, stream: TextIO) -> str:
    """``text`` wrapped to the width of ``stream`` when it is a terminal, else unchanged."""
    if not _is_terminal(stream):
        return text
    width = shutil.get_terminal_size((80, 24)).columns
    return "\n".join(_wrap(line, width) for line in text.splitlines())


def _wrap(line: str, width: int) -> str:
    if len(line) <= width:
        return line
    lead = len(line) - len(line.lstrip(" "))
    indent = " " * (
        LABEL_WIDTH if lead == 0 and line[LABEL_WIDTH - 2 : LABEL_WIDTH] == "  " else lead + 2
    )
    return "\n".join(
        textwrap.wrap(
            line,
            width=width,
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=True,
        )
    )
