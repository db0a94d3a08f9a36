"""Redaction and bounding of free text before it leaves the process.

Error messages and attribute values end up in three backends with very different access
controls (a trace backend is often readable by every engineer). Connection strings with
passwords, bearer tokens and API keys routinely appear in exception messages, so every string
that odibi-observe records from user code passes through :func:`redact` and :func:`clamp`.

:data:`SECRET_PATTERNS` is the one table of what is recognised, each entry named so that a
test corpus can hold positive and negative examples for every one of them
(``tests/test_redact.py``). The patterns are deliberately conservative: they replace the
*value* and keep the key or the token's prefix, so the message stays useful
(``password=***`` still tells the reader a password was involved, ``ghp_***`` that it was a
GitHub token). Redaction is idempotent: ``redact(redact(x)) == redact(x)``.

:func:`terminal_safe` is the other half of "text from user code is data, not commands": it
removes terminal control sequences before the command line prints names and messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from odibi_observe._textsafe import encodable_text

REDACTED: Final = "***"

#: How far past its limit a text is read before it is cut: a fixed-length token (an AWS key
#: id, a GitHub token) that starts before the limit is still whole when it is matched, and a
#: 10 MB message costs the regexes no more than a short one. Patterns with an open end (a
#: private key block, ``password=``) also match a value the pre-cut has truncated.
SCAN_MARGIN: Final = 1_024

#: Error messages are read up to this many characters (then redacted and cut to the
#: configured ``max_error_message_length``).
MAX_MESSAGE_SCAN: Final = 262_144

# Keys whose value is a secret: ``password=…``, ``PGPASSWORD=…``, ``aws_secret_access_key=…``.
# A key may have a prefix (``db_password``, ``GITHUB_TOKEN``) but no suffix, so ``token_count``
# and ``max_tokens`` are left alone.
_SENSITIVE_WORDS: Final = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "access-key",
    "accesskey",
    "private_key",
    "private-key",
    "privatekey",
    "auth",
    "credential",
    "credentials",
    "sas",
    "sig",
)


def _ends_with(words: tuple[str, ...]) -> str:
    """A check that the text just matched ends with one of ``words``: one fixed-width
    lookbehind per word, which ``re`` allows where one lookbehind of mixed widths it does not.
    """
    return "(?:" + "|".join(f"(?<={re.escape(w)})" for w in words) + ")"


# The whole identifier, taken possessively (no backtracking into it: a word is looked at once,
# which keeps a long text cheap), then checked to end with a sensitive word.
_SENSITIVE_NAME: Final = r"[\w-]++" + _ends_with(_SENSITIVE_WORDS)
# A value: up to the closing quote when quoted (so 'two words' goes whole), else to a delimiter.
_VALUE: Final = r"(?P<q>[\"'])?(?P<secret>(?(q)[^\"'\n]*|[^\s\"',;&}]+))"
_B64URL_CHARS: Final = r"A-Za-z0-9\-._~+/"


@dataclass(frozen=True)
class SecretPattern:
    """One kind of secret: a name (for tests and docs), the regex and its replacement."""

    name: str
    regex: re.Pattern[str]
    replacement: str
    description: str
    #: Lower-case literals, one of which every match contains: a pattern runs only on text
    #: holding one of them (a substring test), so ordinary text costs a few ``in`` checks.
    triggers: tuple[str, ...]


def _pattern(
    name: str, regex: str, replacement: str, description: str, *, triggers: tuple[str, ...]
) -> SecretPattern:
    return SecretPattern(name, re.compile(regex), replacement, description, triggers)


#: Applied in this order: the multi-line block first, then URLs (whose userinfo may look like
#: a ``key:value``), then fixed-shape tokens, then the key/value forms.
SECRET_PATTERNS: Final = (
    _pattern(
        "pem_private_key",
        r"(?s)(?P<pre>-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----)(?P<secret>.*?)"
        r"(?P<post>-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)",
        r"\g<pre>" + REDACTED + r"\g<post>",
        "PEM private key blocks, to the END line (or the end of the text, if it was cut)",
        triggers=("-----begin",),
    ),
    _pattern(
        "url_password",
        r"(?P<pre>//[^:/@\s]*:)(?P<secret>[^@\s/]+)(?=@)",
        r"\g<pre>" + REDACTED,
        "the password in scheme://user:password@host (also with a broken or no scheme)",
        triggers=("//",),
    ),
    _pattern(
        "url_token_user",
        r"(?P<pre>//)(?P<secret>(?:gh[pousr]_|github_pat_|glpat-|xox[abposr]-)[^:/@\s]+|"
        r"(?=[A-Za-z_\-]*[0-9])(?=[0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,})(?=@)",
        r"\g<pre>" + REDACTED,
        "a token used as the user name, https://ghp_…@host (a known token prefix, or 32+ "
        "letters and digits; ordinary user names are kept)",
        triggers=("//",),
    ),
    _pattern(
        "slack_webhook",
        r"(?P<pre>hooks\.slack\.com/(?:services|workflows|triggers)/)"
        r"(?P<secret>[A-Za-z0-9_/\-]+)",
        r"\g<pre>" + REDACTED,
        "Slack incoming-webhook URLs (the path after hooks.slack.com/services/)",
        triggers=("hooks.slack.com/",),
    ),
    _pattern(
        "github_token",
        r"\b(?P<pre>gh[pousr]_|github_pat_)(?P<secret>[A-Za-z0-9_]{20,})",
        r"\g<pre>" + REDACTED,
        "GitHub tokens: ghp_, gho_, ghu_, ghs_, ghr_ and github_pat_ (20+ characters after "
        "the prefix)",
        triggers=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    _pattern(
        "aws_access_key_id",
        r"\b(?P<pre>AKIA|ASIA|AIDA|AROA|AIPA|ANPA|ANVA|AGPA)(?P<secret>[A-Z2-7]{16})\b",
        r"\g<pre>" + REDACTED,
        "AWS access key ids (AKIA…, ASIA… and the other IAM prefixes; exactly 20 characters)",
        triggers=("akia", "asia", "aida", "aroa", "aipa", "anpa", "anva", "agpa"),
    ),
    _pattern(
        "authorization_header",
        r"(?i)(?P<pre>\bauthorization[\"']?\s*[=:]\s*[\"']?(?:(?:bearer|basic|token|digest)"
        r"\s+)?+)(?P<secret>[" + _B64URL_CHARS + r"]+=*)",
        r"\g<pre>" + REDACTED,
        "the value of an Authorization header, whatever its scheme",
        triggers=("authorization",),
    ),
    _pattern(
        "bearer_token",
        r"(?P<pre>\b(?:[Bb]earer|BEARER|[Bb]asic|BASIC)\s+)"
        r"(?P<secret>(?=[A-Za-z0-9]*[0-9\-._~+/]|[A-Za-z][a-z]*[A-Z])["
        + _B64URL_CHARS
        + r"]{8,}=*)",
        r"\g<pre>" + REDACTED,
        "Bearer/Basic credentials outside a header: 8+ token characters with a digit, a "
        "symbol or mixed case (so 'bearer token expired' and 'basic validation' are kept)",
        triggers=("bearer", "basic"),
    ),
    _pattern(
        "cli_secret_option",
        r"(?i)(?P<pre>(?<![\w-])--[\w-]++"
        + _ends_with(("password", "passwd", "token", "secret", "apikey", "api-key", "api_key"))
        + r"\s+)"
        r"(?!-)" + _VALUE,
        r"\g<pre>\g<q>" + REDACTED,
        "a secret given as a separate command-line argument: --password X, --db-token X "
        "(-p X is not redacted: it is a port or a flag in most tools)",
        triggers=("--",),
    ),
    _pattern(
        "secret_assignment",
        # The whole identifier (not the end of one), and not a URL's user name: url_password
        # has already dealt with //user:password@.
        r"(?i)(?P<pre>[\"']?(?<![\w/-])" + _SENSITIVE_NAME + r"[\"']?\s*[=:]\s*)" + _VALUE,
        r"\g<pre>\g<q>" + REDACTED,
        'key=value, key: value and "key": "value" for secret-looking keys, with a prefix '
        "(PGPASSWORD=, aws_secret_access_key=, db_password:) but no suffix",
        triggers=_SENSITIVE_WORDS,
    ),
)


def redact(text: str) -> str:
    """Replace secrets (see :data:`SECRET_PATTERNS`) in ``text`` with ``***``.

    Each pattern runs only when the text holds one of its triggers: replacing a secret
    inserts ``***`` and never creates another pattern's trigger, so the lower-cased original
    answers for every step.
    """
    lowered = text.lower()
    for pattern in SECRET_PATTERNS:
        if any(trigger in lowered for trigger in pattern.triggers):
            text = pattern.regex.sub(pattern.replacement, text)
    return text


def clamp(text: str, limit: int, *, already_cut: int = 0) -> str:
    """Bound ``text`` to ``limit`` characters, saying how many characters were cut.

    ``already_cut`` counts characters removed before (by :func:`safe_text`'s pre-cut), so the
    suffix gives the true number missing.
    """
    if len(text) <= limit and not already_cut:
        return text
    total = len(text) + already_cut
    keep = min(len(text), limit)
    while True:  # the suffix's length depends on the number in it: settle both
        suffix = f"… [{total - keep} more characters]"
        fit = min(len(text), max(limit - len(suffix), 0))
        if fit >= keep:
            return text[:keep] + suffix
        keep = fit


def valid_unicode(text: str) -> tuple[str, bool]:
    """``text`` with lone surrogates escaped, and whether there were any.

    A lone surrogate (from ``os.fsdecode`` of a bad file name, or ``surrogateescape``) cannot
    be encoded as UTF-8, so a database or an OTLP exporter would refuse the whole record. The
    escaping rule is the one every sink applies (:func:`odibi_observe._textsafe.encodable_text`:
    ``\udce9`` for the byte 0xe9), so the name is kept, and is the same in every backend.
    """
    clean = encodable_text(text)
    return clean, clean is not text


def sanitize(text: str, limit: int) -> tuple[str, bool]:
    """:func:`safe_text`, and whether lone surrogates had to be replaced."""
    cut = 0
    if len(text) > limit + SCAN_MARGIN:
        cut = len(text) - (limit + SCAN_MARGIN)
        text = text[: limit + SCAN_MARGIN]
    text, replaced = valid_unicode(text)
    return clamp(redact(text), limit, already_cut=cut), replaced


def safe_text(text: str, limit: int) -> str:
    """Valid Unicode, redacted, then bounded (redacting first so a cut never exposes half a
    secret; a text far over ``limit`` is cut to ``limit`` + :data:`SCAN_MARGIN` first, so its
    length costs nothing)."""
    return sanitize(text, limit)[0]


def error_text(exc: BaseException, limit: int) -> str:
    """``str(exc)`` as :func:`safe_text`, and never raising: a sink's (or its client
    library's) exception is foreign code, and one whose ``__str__`` raises must not take down
    the thread that reports it. Such an exception reads ``<unprintable Type>``."""
    try:
        text = str(exc)
        if type(text) is not str:
            text = str.__str__(text)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"
    return safe_text(text, limit)


_TERMINAL_CONTROLS: Final = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC … BEL/ST (window titles, hyperlinks)
    r"|\x1b[P^_X][^\x1b]*(?:\x1b\\)?"  # DCS, PM, APC, SOS strings
    r"|\x1b\[[0-?]*[ -/]*[@-~]?"  # CSI (colours, cursor movement, erase)
    r"|\x1b[ -/]*[0-~]?"  # other escape sequences, and a lone ESC
    r"|\x9b[0-?]*[ -/]*[@-~]?"  # 8-bit CSI
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # other C0/C1 controls (BEL, bare CR, ...), DEL
    r"|[\u202a-\u202e\u2066-\u2069]"  # bidirectional overrides (reordered text)
)


def terminal_safe(text: str) -> str:
    """``text`` without terminal control sequences; newlines and tabs are kept.

    Names and messages come from user code and the catalog; printed as they are, an escape
    sequence could recolour or erase the terminal, retitle the window or hide a line (a bare
    carriage return overwrites what came before it). ``\\r\\n`` becomes ``\\n``.
    """
    if text.isprintable():
        return text
    return _TERMINAL_CONTROLS.sub("", text.replace("\r\n", "\n"))
