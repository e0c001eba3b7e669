"""A failing model's error text reaches neither the HTTP 500 body nor the log with its keys."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from langchain_divconq.secrets import REDACTED, scrubbed_logging
from langchain_divconq.serving.app import create_app
from tests.unit_tests.fakes import running_server, served_model

MODEL_ID = "divconq-test"
BEARER = "sk-proj-FAKE0123456789abcdef"
ANTHROPIC = "sk-ant-FAKE0123456789abcdef"
TOKEN = "abcd1234efgh5678"
UPSTREAM = (
    f"Error code: 401 - Authorization: Bearer {BEARER} rejected; api_key={ANTHROPIC}; "
    f"see https://api.example.com/v1/chat?token={TOKEN}"
)
SECRETS = (BEARER, ANTHROPIC, TOKEN)


def _post(url: str, *, stream: bool) -> httpx.Response:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "explode"}]}
    return httpx.post(f"{url}/chat/completions", json={**body, "stream": stream}, timeout=30)


@pytest.mark.parametrize("divconq_serve", [False, True])
def test_a_500_body_and_its_log_hold_no_credentials(
    caplog: pytest.LogCaptureFixture, divconq_serve: bool
) -> None:
    model = served_model(replies={"explode": f"RAISE: {UPSTREAM}"})
    # divconq serve runs inside scrubbed_logging(): every logger is scrubbed, the
    # batcher's and uvicorn's too; the app's own logger is scrubbed in any case.
    with caplog.at_level(logging.INFO), running_server(create_app(model, model_id=MODEL_ID)) as url:
        if divconq_serve:
            with scrubbed_logging():
                plain, streamed = _post(url, stream=False), _post(url, stream=True)
        else:
            plain, streamed = _post(url, stream=False), _post(url, stream=True)
    assert plain.status_code == 500
    message = plain.json()["error"]["message"]
    assert message.startswith("Generation failed: RuntimeError: Error code: 401")
    assert f"Authorization: {REDACTED}" in message and f"api_key={REDACTED}" in message
    events = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line]
    error = json.loads(events[-2])["error"]
    assert error["code"] == "generation_failed" and REDACTED in error["message"]
    for secret in SECRETS:
        assert secret not in plain.text and secret not in streamed.text
    app_log = "\n".join(
        logging.Formatter().format(r) for r in caplog.records if r.name.endswith("serving.app")
    )
    assert "Generation failed" in app_log and "Traceback" in app_log
    assert not [s for s in SECRETS if s in app_log]
    if divconq_serve:
        assert not [s for s in SECRETS if s in caplog.text]
