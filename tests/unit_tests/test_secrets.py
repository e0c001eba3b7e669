"""The one scrubber (langchain_divconq.secrets): every common shape of credential, and logs."""

from __future__ import annotations

import logging
import time

import pytest

from langchain_divconq.secrets import (
    REDACTED,
    SecretsFilter,
    scrub_log_record,
    scrub_text,
    scrubbed_logging,
)
from langchain_divconq.tracing import recorder

R = REDACTED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Bearer tokens and Authorization headers.
        ("Bearer sk-abcdefghijklmn", R),
        ("Bearer abcDEF123ghiJKL456", R),
        ("Authorization: Bearer sk-proj-Ab12Cd34Ef56Gh78", f"Authorization: {R}"),
        ("authorization=Basic dXNlcjpwYXNzd29yZA==", f"authorization={R}"),
        ("Proxy-Authorization: Digest abc123", f"Proxy-Authorization: {R}"),
        # Named keys, in every spelling and syntax.
        ("api_key=sk-ant-api03-Ab12Cd34Ef56", f"api_key={R}"),
        ("api-key: abc123", f"api-key: {R}"),
        ("apikey=abc123", f"apikey={R}"),
        ("x-api-key: abc123def", f"x-api-key: {R}"),
        ("X-Goog-Api-Key: AIzaFAKE", f"X-Goog-Api-Key: {R}"),
        ("OPENAI_API_KEY=abc123xyz", f"OPENAI_API_KEY={R}"),
        ('{"api_key": "abc123def456"}', f'{{"api_key": "{R}"}}'),
        ("{'api_key': 'abc123def456'}", f"{{'api_key': '{R}'}}"),
        # Tokens, passwords, secrets.
        ("token=abcd1234efgh5678", f"token={R}"),
        ('"token": "abcd1234efgh5678"', f'"token": "{R}"'),
        ("csrf_token=ab12cd34ef56", f"csrf_token={R}"),
        ("access_token=abc", f"access_token={R}"),
        ("password=hunter2", f"password={R}"),
        ("password: hunter2!", f"password: {R}"),
        ("secret=s3cr3tvalue", f"secret={R}"),
        ("client_secret=abcdef", f"client_secret={R}"),
        # Keys by their look alone.
        ("use sk-proj-Ab12Cd34Ef56Gh78 now", f"use {R} now"),
        ("use sk-ant-api03-Ab12Cd34Ef56 now", f"use {R} now"),
        ("use sk-Ab12Cd34Ef56Gh78 now", f"use {R} now"),
        ("hf_abcdefghijklmnopqrst", R),
        ("ghp_abcdefghijklmnopqrst", R),
        ("AKIAABCDEFGHIJKLMNOP", R),
        # Keys in URLs.
        ("https://api.example.com/v1?key=Ab12Cd34", f"https://api.example.com/v1?key={R}"),
        ("https://h/x?model=gpt&api_key=abc&n=1", f"https://h/x?model=gpt&api_key={R}&n=1"),
        ("GET /v1?access_token=abc123 HTTP/1.1", f"GET /v1?access_token={R} HTTP/1.1"),
        ("https://me:pa55word@host/x", f"https://{R}@host/x"),
        ("redis://default:s3cret@cache:6379/0", f"redis://{R}@cache:6379/0"),
        # Ordinary text is left alone.
        ("How many tokens: 5? The key is 42.", "How many tokens: 5? The key is 42."),
        ("sk-8 skis, Basic math, Bearer of news", "sk-8 skis, Basic math, Bearer of news"),
        ("The secret: practice every day.", "The secret: practice every day."),
        ("max_token=12345678", "max_token=12345678"),
        ("token: 512", "token: 512"),
        ("https://example.com/a?b=c&author=ann", "https://example.com/a?b=c&author=ann"),
        ("The answer is: 72", "The answer is: 72"),
    ],
)
def test_scrub_text_shapes(text: str, expected: str) -> None:
    assert scrub_text(text) == expected
    assert scrub_text(expected) == expected  # scrubbing twice changes nothing more


def test_the_tracing_names_are_the_same_objects() -> None:
    # One scrubber: the old import path gives the very same functions.
    from langchain_divconq import secrets

    assert recorder.scrub_text is secrets.scrub_text
    assert recorder.scrub_secrets is secrets.scrub_secrets
    assert recorder.REDACTED == secrets.REDACTED


@pytest.mark.parametrize(
    "text",
    ["sk-" * 20_000, "eyJ-" * 20_000, "token=" * 20_000, "?" + "a" * 60_000, "a-" * 40_000],
)
def test_scrub_text_is_linear_on_hostile_text(text: str) -> None:
    # These took quadratic time (seconds at this size, minutes at 3 MB) before the fix.
    start = time.perf_counter()
    scrub_text(text)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------- logs
SECRET = "sk-proj-FAKE0123456789abcdef"
PASSWORD = "hunter2-FAKE"


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("t", logging.ERROR, __file__, 1, msg, args or None, exc_info)


def test_log_record_arguments_are_scrubbed_and_keep_their_shape() -> None:
    record = scrub_log_record(
        _record('%s - "%s %s" %d', "1.2.3.4", "GET", f"/v1?key={SECRET}", 200)
    )
    assert isinstance(record.args, tuple) and record.args[3] == 200  # uvicorn unpacks these
    assert record.getMessage() == f'1.2.3.4 - "GET /v1?key={R}" 200'


def test_a_secret_split_between_message_and_arguments_is_scrubbed() -> None:
    record = scrub_log_record(_record("login with password=%s", PASSWORD))
    assert record.getMessage() == f"login with password={R}"


def test_exception_arguments_and_tracebacks_are_scrubbed() -> None:
    try:
        raise RuntimeError(f"401: Authorization: Bearer {SECRET}")
    except RuntimeError as exc:
        record = scrub_log_record(_record("solver failed: %s", exc, exc=exc))
    formatted = logging.Formatter().format(record)
    assert SECRET not in formatted
    assert "RuntimeError" in formatted and "Traceback" in formatted and R in formatted


def test_secrets_filter_on_a_handler(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("langchain_divconq.test_secrets_filter")
    caplog.handler.addFilter(SecretsFilter())
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("calling https://h/v1?api_key=%s", SECRET)
    finally:
        caplog.handler.filters.clear()
    assert SECRET not in caplog.text and f"api_key={R}" in caplog.text


def test_scrubbed_logging_covers_every_logger_and_restores(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A served app earlier in the session may have left uvicorn's logger unpropagated or
    # raised its level; setLevel (not monkeypatch) also clears the logger's level cache.
    uvicorn_error = logging.getLogger("uvicorn.error")
    monkeypatch.setattr(uvicorn_error, "propagate", True)
    monkeypatch.setattr(uvicorn_error, "disabled", False)
    level = uvicorn_error.level
    uvicorn_error.setLevel(logging.NOTSET)
    try:
        before = logging.getLogRecordFactory()
        with caplog.at_level(logging.INFO), scrubbed_logging():
            with scrubbed_logging():  # nested: a no-op
                uvicorn_error.info("key %s", SECRET)
            logging.getLogger("a.new.logger").warning("token=abcd1234efgh5678")
        logging.getLogger("a.new.logger").warning("after: %s", SECRET)
    finally:
        uvicorn_error.setLevel(level)
    assert logging.getLogRecordFactory() is before
    assert caplog.messages[:2] == [f"key {R}", f"token={R}"]
    assert caplog.messages[2] == f"after: {SECRET}"  # restored: nothing is scrubbed any more
