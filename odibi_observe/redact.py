"""Redaction and bounding of free text before it leaves the process.

Error messages and attribute values end up in three backends with very different access
controls (a trace backend is often readable by every engineer). Connection strings with
passwords, bearer tokens and API keys routinely appear in exception messages, so every string
that odibi-observe records from user code passes through :func:`redact` and :func:`clamp`.

The patterns are deliberately conservative: they replace the *value* and keep the key, so the
message stays useful (``password=***`` still tells the reader a password was involved).
"""

from __future__ import annotations

import re
from typing import Final

REDACTED: Final = "***"

_PATTERNS: Final = (
    # scheme://user:password@host → scheme://user:***@host (also with a broken or no scheme)
    (re.compile(r"(?P<pre>//[^:/@\s]*:)(?P<secret>[^@\s/]+)(?=@)"),
     r"\g<pre>" + REDACTED),
    # Authorization: Bearer xyz / Basic xyz
    (re.compile(r"(?i)(?P<pre>\b(?:bearer|basic)\s+)(?P<secret>[A-Za-z0-9\-._~+/]+=*)"),
     r"\g<pre>" + REDACTED),
    # key=value / key: value / "key": "value" for secret-looking keys
    (re.compile(
        r"(?i)(?P<pre>[\"']?\b(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|"
        r"access[_-]?key|private[_-]?key|client[_-]?secret|auth|credentials?|sas|sig)"
        r"[\"']?\s*[=:]\s*[\"']?)(?P<secret>[^\s\"',;&}]+)"),
     r"\g<pre>" + REDACTED),
)


def redact(text: str) -> str:
    """Replace secrets (passwords, tokens, URL credentials) in ``text`` with ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def clamp(text: str, limit: int) -> str:
    """Bound ``text`` to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    suffix = f"… [{len(text) - limit} more characters]"
    keep = max(limit - len(suffix), 0)
    return text[:keep] + suffix


def safe_text(text: str, limit: int) -> str:
    """Redact, then bound (redacting first so a cut never exposes half a secret)."""
    return clamp(redact(text), limit)
