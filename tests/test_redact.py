"""Secrets never leave the process in error messages or attributes."""

from __future__ import annotations

import pytest

from odibi_observe.redact import clamp, redact, safe_text


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
