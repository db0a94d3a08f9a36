"""The furniture the three self-contained HTML reports share: the page, its cards, its tables.

The reconciliation report, the data-health report and the status page keep one set of rules
(no script, no external resource, every value through :func:`html.escape`) and one look. One
page skeleton, one number card, one badge and one table keep them alike, so that a fix to the
furniture of one is a fix to all three; each report keeps its own style sheet and content.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any


@dataclass(frozen=True)
class Col:
    """A table column: its header and the class of its cells (``num`` right-aligns the
    header too, as every numeric column is)."""

    label: str
    css: str = ""


def num(label: str) -> Col:
    """A numeric column."""
    return Col(label, "num")


def document(*, title: str, css: str, heading: str, verdict: str, body: Iterable[str]) -> str:
    """The whole document: the head with ``css`` inline, the title row with its ``verdict``
    (HTML, see :func:`verdict`), then ``body``'s parts, one a line."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{css}</style></head><body><main>",
        f'<div class="top"><h1>{escape(heading)}</h1>{verdict}</div>',
        *body,
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def verdict(css: str, text: str) -> str:
    """The coloured verdict pill of the title row (``css``: ``ok``, ``bad``, ``warn`` …)."""
    return f'<span class="verdict {css}">{escape(text)}</span>'


def cards(items: Iterable[tuple[str, str, str]]) -> str:
    """The row of number cards, from ``(label, value, class attribute)`` triples."""
    html = "".join(
        f'<div class="{css}"><div class="n">{escape(value)}</div>'
        f'<div class="l">{escape(label)}</div></div>'
        for label, value, css in items
    )
    return f'<div class="cards">{html}</div>'


def alert_cards(items: Iterable[tuple[str, str, bool]]) -> str:
    """:func:`cards` from ``(label, value, alert)``: an alert card's number is red."""
    return cards((label, value, "card alert" if alert else "card") for label, value, alert in items)


def badge(text: str, colour: str) -> str:
    """A coloured label (a status, a kind)."""
    return f'<span class="badge" style="background:{colour}">{escape(text)}</span>'


def table(columns: Sequence[str | Col], rows: Iterable[Sequence[str]], *, last: str = "") -> str:
    """A table under ``columns`` (plain text headers) of ``rows``, one HTML cell per column;
    ``last`` is a closing row of HTML (what the table left out)."""
    cols = [c if isinstance(c, Col) else Col(c) for c in columns]
    head = "".join(
        f'<th class="num">{escape(c.label)}</th>'
        if c.css == "num"
        else f"<th>{escape(c.label)}</th>"
        for c in cols
    )
    opens = [f'<td class="{c.css}">' if c.css else "<td>" for c in cols]
    body = "".join(
        "<tr>" + "".join(f"{td}{cell}</td>" for td, cell in zip(opens, row, strict=True)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}{last}</tbody></table>"


def todo_section(
    counts: Mapping[str, int], infos: Mapping[str, Any], colours: Mapping[str, str]
) -> str:
    """A report's "What to do": one card per kind found (a count above 0 in ``counts``, in
    its order) — its title and name, how it is found (``meaning``) and what to do
    (``todo``), from ``infos[kind]``; empty if none."""
    cards = "".join(
        f'<div class="kind" style="border-left-color:{colours[k]}"><b>'
        f'{escape(infos[k].title)}</b> <code>{escape(k)}</code><div class="sub">'
        f"{escape(infos[k].meaning)}</div><div>{escape(infos[k].todo)}</div></div>"
        for k, n in counts.items()
        if n
    )
    return f'<h2>What to do</h2><div class="kinds">{cards}</div>' if cards else ""
