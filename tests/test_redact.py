"""Secrets never leave the process in error messages or attributes."""

from __future__ import annotations

import pytest

from odibi_observe._redact import REDACTED, SECRET_PATTERNS, clamp, redact, safe_text, terminal_safe


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connect failed: postgresql://etl:pa55w0rd@db:5432/x", "pa55w0rd"),
        ("password=hunter2 rejected", "hunter2"),
        ('{"api_key": "AKIA123456"}', "AKIA123456"),
        ("Authorization: Bearer eyJhbGciOi.abc.def", "eyJhbGciOi"),
        ("token: ghp_abcdef123", "ghp_abcdef123"),
        ("sas url ?sig=Zm9vYmFy&se=2020", "Zm9vYmFy"),
        ("client_secret='xyz789'", "xyz789"),
    ],
)
def test_secrets_are_replaced_keys_kept(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "***" in out


def test_ordinary_text_is_untouched() -> None:
    text = "column 'amount' has 12 nulls in s3://bucket/key.csv (row 7)"
    assert redact(text) == text


def test_clamp_says_how_much_was_cut() -> None:
    out = clamp("a" * 100, 40)
    assert len(out) <= 40 and out.endswith("more characters]")
    assert clamp("short", 40) == "short"


def test_redaction_happens_before_the_cut() -> None:
    text = "x" * 30 + " password=supersecretvalue"
    assert "supersec" not in safe_text(text, 45)


def test_userinfo_password_is_hidden_even_without_a_valid_scheme() -> None:
    assert "pw123" not in redact("://etl:pw123@db.internal/x")
    assert "pw123" not in redact("connect to 5432://etl:pw123@db")


# -- the corpus: every named pattern, with text it must redact and text it must leave alone ---

#: pattern name -> (positives: (text, secret that must go), negatives: ordinary text).
CORPUS: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    "pem_private_key": (
        [
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\n"
                "-----END RSA PRIVATE KEY-----",
                "MIIEowIBAAKCAQEA7x",
            ),
            (
                "key=-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY----- tail",
                "MIIEvQIBADANBg",
            ),
            (
                "cut short: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA",
                "b3BlbnNzaC1rZXktdjEAAAA",
            ),
        ],
        [
            "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIE\n-----END CERTIFICATE-----",
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0B\n-----END PUBLIC KEY-----",
        ],
    ),
    "url_password": (
        [
            ("connect failed: postgresql://etl:pa55w0rd@db:5432/x", "pa55w0rd"),
            ("https://x-access-token:ghs_shortlived@github.com/o/r.git", "ghs_shortlived"),
        ],
        ["see https://example.com/a:b/c", "postgresql://etl@db:5432/catalog"],
    ),
    "url_token_user": (
        [
            (
                "git clone https://ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/o/r",
                "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            ),
            ("https://glpat-xxxxxxxxxxxxxxxxxxxx@gitlab.com/g/p", "glpat-xxxxxxxxxxxxxxxxxxxx"),
            ("https://a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6@host/x", "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"),
        ],
        [
            "ssh://git@github.com/o/r.git",
            "https://deploy@example.com/x",
            "https://very_long_service_account_name@example.com/",
        ],
    ),
    "slack_webhook": (
        [
            (
                "POST https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXX failed",
                "T0000/B0000/XXXXXXXXXXXXXXXX",
            )
        ],
        ["see https://api.slack.com/messaging/webhooks", "hooks.slack.com is down"],
    ),
    "github_token": (
        [
            ("using ghp_abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghijklmnopqrstuvwxyz0123"),
            ("gho_16C7e42F292c6912E7710c838347Ae178B4a rejected", "16C7e42F292c6912E7710c838347"),
            (
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
                "11ABCDEFG0123456789_abcdefghij",
            ),
        ],
        ["the ghp_ prefix marks a classic token", "gho_st town", "path ghs_cache/tmp"],
    ),
    "aws_access_key_id": (
        [
            ("AccessDenied for AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE"),
            ("temporary ASIAY34FZKBOKMUTVV7A expired", "Y34FZKBOKMUTVV7A"),
        ],
        [
            "region ASIAPACIFIC is unavailable",
            "AKIA is the prefix of an AWS key id",
            "ASIA_PACIFIC_SALES_2024_Q3",
        ],
    ),
    "authorization_header": (
        [
            ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "eyJhbGciOiJIUzI1NiJ9"),
            ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
            ('headers={"Authorization": "token abc123def456"}', "abc123def456"),
        ],
        ["authorization failed for user etl", "missing authorization"],
    ),
    "bearer_token": (
        [("sent Bearer eyJhbGciOi.abc.def", "eyJhbGciOi"), ("basic dXNlcjpwYXNz", "dXNlcjpwYXNz")],
        ["bearer token expired", "basic validation failed: 3 rows", "Basic Authentication"],
    ),
    "cli_secret_option": (
        [
            ("mysqldump --password hunter2 --user etl", "hunter2"),
            ("tool --db-token 's3cret value' --verbose", "s3cret value"),
            ("run --api-key k3y", "k3y"),
        ],
        [
            "psql -h db -p 5432 -U etl",
            "mkdir -p /tmp/out",
            "--password-file /run/secrets/pw",
            "pass --password-stdin to docker login",
            "flags: --no-password --verbose",
        ],
    ),
    "secret_assignment": (
        [
            ("password=hunter2 rejected", "hunter2"),
            ('{"api_key": "AKIA123456"}', "AKIA123456"),
            ("token: ghp_abcdef123", "ghp_abcdef123"),
            ("sas url ?sig=Zm9vYmFy&se=2020", "Zm9vYmFy"),
            ("client_secret='xyz789'", "xyz789"),
            ("export PGPASSWORD=pgpw123 && psql", "pgpw123"),
            ("PGPASSWORD='two words' psql", "two words"),
            (
                "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "wJalrXUtnFEMI/K7MDENG",
            ),
            ("AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMIK7MDENG", "wJalrXUtnFEMIK7MDENG"),
            ("db_password: letmein", "letmein"),
            ("GITHUB_TOKEN=ghx_notatokenshape", "ghx_notatokenshape"),
        ],
        [
            "max_tokens=100 token_count=5",
            "password_policy=strict",
            "passwords: 3 rotated",
            "author=ada",
            "tokenizer=bpe",
            "designs: 4",
        ],
    ),
}

ORDINARY = [
    "column 'amount' has 12 nulls in s3://bucket/key.csv (row 7)",
    "KeyError: 'customer_id' at pipelines/daily_sales.yaml:42",
    "Processed 1,200 rows in 3.4 s; 0 rejected",
    "ValueError: could not convert string to float: 'n/a'",
    "see https://docs.example.com/guide#section-2 for details",
    "user etl@example.com lacks SELECT on meta_runs",
]


def test_every_pattern_in_the_table_has_examples() -> None:
    assert {p.name for p in SECRET_PATTERNS} == set(CORPUS)
    for p in SECRET_PATTERNS:  # every positive holds one of its pattern's triggers
        for text, _secret in CORPUS[p.name][0]:
            assert any(t in text.lower() for t in p.triggers), (p.name, text)
    assert len({p.name for p in SECRET_PATTERNS}) == len(SECRET_PATTERNS)


@pytest.mark.parametrize(
    ("name", "text", "secret"),
    [(name, text, secret) for name, (positives, _) in CORPUS.items() for text, secret in positives],
)
def test_corpus_positives_lose_their_secret(name: str, text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out, name
    assert REDACTED in out
    assert redact(out) == out  # idempotent


@pytest.mark.parametrize(
    ("name", "text"),
    [(name, text) for name, (_, negatives) in CORPUS.items() for text in negatives]
    + [("ordinary", text) for text in ORDINARY],
)
def test_corpus_negatives_are_untouched(name: str, text: str) -> None:
    assert redact(text) == text, name


def test_the_named_pattern_itself_matches_its_positives() -> None:
    by_name = {p.name: p for p in SECRET_PATTERNS}
    for name, (positives, _) in CORPUS.items():
        pattern = by_name[name]
        for text, _secret in positives:
            assert pattern.regex.search(text), (name, text)


def test_a_private_key_cut_by_the_length_bound_is_still_hidden() -> None:
    text = (
        "boom " * 10
        + "-----BEGIN PRIVATE KEY-----\n"
        + "A" * 20_000
        + "\n-----END PRIVATE KEY-----"
    )
    out = safe_text(text, 200)
    assert "AAAA" not in out and out.endswith("more characters]")


def test_a_secret_straddling_the_cut_never_shows_half() -> None:
    for offset in range(0, 40, 3):
        text = "x" * (100 - offset) + " token=" + "S" * 2000
        assert "SSS" not in safe_text(text, 120)


def test_terminal_controls_are_stripped_newlines_and_tabs_kept() -> None:
    text = (
        "a\x1b[31mred\x1b[0m \x1b]0;title\x07b \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ "
        "over\rwrite\r\nline2\tcol\x07\x08\x00\x7f\x9b2J\u202eevil"
    )
    out = terminal_safe(text)
    assert out == "ared b link overwrite\nline2\tcolevil"
    assert terminal_safe("plain text, ünïcode ok") == "plain text, ünïcode ok"
