"""``divconq`` scrubs credentials from every log record and from the errors it prints."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from langchain_divconq.cli import main
from langchain_divconq.cli import router as cli_router
from langchain_divconq.secrets import REDACTED

SECRET = "sk-proj-FAKE0123456789abcdef"


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_commands_run_with_scrubbed_logs_and_errors(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    verbose: list[str],
) -> None:
    def leaky_build(args: Any) -> Any:
        # As an HTTP client library would log a request, and an upstream error read.
        logging.getLogger("httpx.fake").warning("POST https://api.example.com/v1?key=%s", SECRET)
        msg = f"upstream said: Authorization: Bearer {SECRET}"
        raise ValueError(msg)

    monkeypatch.setattr(cli_router, "build_chain", leaky_build)
    before = logging.getLogRecordFactory()
    with caplog.at_level(logging.INFO):
        assert main([*verbose, "ask", "2 + 2?"]) == 2
    assert logging.getLogRecordFactory() is before  # restored when the command ends
    err = capsys.readouterr().err
    assert SECRET not in caplog.text and f"?key={REDACTED}" in caplog.text
    assert SECRET not in err and f"Authorization: {REDACTED}" in err
    assert ("Traceback" in err) == bool(verbose)  # -v prints the traceback, scrubbed too
