"""``divconq serve`` under hostile but fair clients (issue 14, the server half).

Bad input gets a clear 4xx naming what was wrong and never hurts another request;
sizes are capped; a client that leaves, or a request that runs past its timeout,
stops its generation; SIGTERM answers running requests with JSON and exits on
time; the server can be locked with an API key and refuses browser cross-origin
requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import HumanMessage

from langchain_divconq.serving.app import create_app
from langchain_divconq.serving.batcher import RequestBatcher, RequestParams
from tests.unit_tests.fakes import DECOMPOSITION, ScriptedChatModel, running_server, served_model

MODEL_ID = "divconq-test"
JSON = {"content-type": "application/json"}


def ask(text: str = "Natalia sold 48 clips in April and half as many in May.") -> list[Any]:
    return [
        {"role": "system", "content": "Write sub-questions, one per line."},
        {"role": "user", "content": text},
    ]


def body(text: str = "Q?", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "messages": ask(text), **fields}


def post(url: str, payload: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(
        f"{url}/chat/completions", content=content, headers=headers or JSON, timeout=60
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


@pytest.fixture
def url() -> Iterator[str]:
    with running_server(create_app(served_model(), model_id=MODEL_ID)) as base:
        yield base


# ------------------------------------------------------------ one bad request
def test_a_lone_surrogate_is_a_clear_400(url: str) -> None:
    # json.dumps writes the lone surrogate as the escape \ud800, as a hostile client would.
    response = post(url, body("Hi \ud800 there"))
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "messages.1.content"
    assert "surrogate" in error["message"]
    assert "U+D800" in error["message"]
    stops = post(url, body(stop=["\udfff"]))
    assert stops.status_code == 400
    assert error_of(stops)["param"] == "stop"


def test_a_lone_surrogate_does_not_fail_the_requests_batched_with_it(
    tiny_chat_model: Any,
) -> None:
    app = create_app(tiny_chat_model, model_id=MODEL_ID, max_wait_ms=200)
    with running_server(app) as base:

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as http:

                async def one(i: int) -> httpx.Response:
                    text = "Bad \ud800" if i == 5 else f"Question {i}?"
                    content = json.dumps(body(text, max_tokens=2)).encode()
                    return await http.post(
                        f"{base}/chat/completions", content=content, headers=JSON
                    )

                return await asyncio.gather(*(one(i) for i in range(24)))

        responses = asyncio.run(run())
    codes = [r.status_code for r in responses]
    assert codes[5] == 400
    assert codes[:5] + codes[6:] == [200] * 23


class _PoisonedBatchModel(ScriptedChatModel):
    """Fails a whole ``batch`` call when one prompt is bad, as a batched engine does."""

    def batch(self, inputs: list[Any], config: Any = None, **kwargs: Any) -> list[Any]:
        self.batch_sizes.append(len(inputs))
        if len(inputs) > 1 and any("poison" in str(m[-1].content) for m in inputs):
            error = RuntimeError("the batch failed")
            if kwargs.get("return_exceptions"):
                return [error] * len(inputs)
            raise error
        return super(ScriptedChatModel, self).batch(inputs, config, **kwargs)


def test_a_failed_batch_is_retried_one_by_one_so_only_the_culprit_fails() -> None:
    model = _PoisonedBatchModel(default="fine", replies={"poison": "RAISE: poisoned"})

    async def run() -> list[Any]:
        batcher = RequestBatcher(model, max_batch=8, max_wait_s=0.2)
        await batcher.start()
        try:
            texts = ["a", "poison", "b", "c"]
            return await asyncio.gather(
                *(batcher.submit([HumanMessage(t)], RequestParams()) for t in texts),
                return_exceptions=True,
            )
        finally:
            await batcher.close()

    good_a, bad, good_b, good_c = asyncio.run(run())
    assert [m.content for m in (good_a, good_b, good_c)] == ["fine"] * 3
    assert isinstance(bad, RuntimeError)
    assert "poisoned" in str(bad)
    assert model.batch_sizes[0] == 4  # one batched call, then the retries
    assert sorted(model.batch_sizes[1:]) == [1, 1, 1, 1]


# --------------------------------------------------------------------- limits
def test_a_prompt_longer_than_the_context_is_a_400(tiny_chat_model: Any) -> None:
    # The tiny model's context is 1,024 tokens (max_position_embeddings).
    with running_server(create_app(tiny_chat_model, model_id=MODEL_ID)) as base:
        response = post(base, body("word " * 1500, max_tokens=2))
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "context_length_exceeded"
        assert "1024" in error["message"]
        assert "15" in error["message"]  # the received length (about 1,530 tokens)
        assert post(base, body("short", max_tokens=2)).status_code == 200
        # The prompt and the budget together must fit the context too.
        both = post(base, body("word " * 600, max_tokens=600))
        assert both.status_code == 400
        assert error_of(both)["code"] == "context_length_exceeded"


def test_the_prompt_limit_is_configurable(tiny_chat_model: Any) -> None:
    app = create_app(tiny_chat_model, model_id=MODEL_ID, max_prompt_tokens=40)
    with running_server(app) as base:
        response = post(base, body("word " * 60, max_tokens=2))
        assert response.status_code == 400
        assert "40" in error_of(response)["message"]


@pytest.mark.parametrize("max_tokens", [2**70, 5000])
def test_max_tokens_beyond_the_limit_is_a_400(max_tokens: int) -> None:
    app = create_app(served_model(), model_id=MODEL_ID, max_tokens_limit=4096)
    with running_server(app) as base:
        response = post(base, body(max_tokens=max_tokens))
        assert response.status_code == 400
        error = error_of(response)
        assert error["param"] == "max_tokens"
        assert "4096" in error["message"]
        limit = post(base, body(max_completion_tokens=4097))
        assert error_of(limit)["param"] == "max_completion_tokens"
        assert post(base, body(max_tokens=4096)).status_code == 200


def test_max_tokens_is_capped_at_the_context_of_a_local_model(tiny_chat_model: Any) -> None:
    with running_server(create_app(tiny_chat_model, model_id=MODEL_ID)) as base:
        response = post(base, body(max_tokens=2**70))
        assert response.status_code == 400
        assert "1024" in error_of(response)["message"]


def test_a_body_over_the_limit_is_a_413() -> None:
    app = create_app(served_model(), model_id=MODEL_ID, max_body_bytes=10_000)
    with running_server(app) as base:
        big = post(base, body("x" * 20_000))
        assert big.status_code == 413
        assert "10000" in error_of(big)["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count
            yield json.dumps(body("x" * 20_000)).encode()

        chunked = httpx.post(f"{base}/chat/completions", content=chunks(), headers=JSON)
        assert chunked.status_code == 413
        assert post(base, body("x" * 5_000)).status_code == 200


def test_deeply_nested_json_is_a_json_400(url: str) -> None:
    deep = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = post(url, deep)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    assert "deep" in error_of(response)["message"]
    # Python refuses to convert an integer of more than 4,300 digits.
    huge = post(url, b'{"model": "m", "max_tokens": ' + b"9" * 5000 + b"}")
    assert huge.status_code == 400
    assert error_of(huge)["code"] == "invalid_json"


# ---------------------------------------------------------------- the lock
def test_api_key_is_required_when_set() -> None:
    app = create_app(served_model(), model_id=MODEL_ID, api_key="s3cret")
    with running_server(app) as base:
        missing = post(base, body())
        assert missing.status_code == 401
        assert error_of(missing)["code"] == "invalid_api_key"
        wrong = post(base, body(), headers={**JSON, "authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert httpx.get(f"{base}/models").status_code == 401
        good = post(base, body(), headers={**JSON, "authorization": "Bearer s3cret"})
        assert good.status_code == 200
        assert good.json()["choices"][0]["message"]["content"] == DECOMPOSITION
        # The health probe stays open for load balancers; it holds counters only.
        assert httpx.get(base.removesuffix("/v1") + "/health").status_code == 200


def test_api_key_comes_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langchain_divconq.cli.serve import resolve_api_key

    monkeypatch.delenv("DIVCONQ_API_KEY", raising=False)
    assert resolve_api_key(None) is None
    monkeypatch.setenv("DIVCONQ_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env"
    assert resolve_api_key("from-flag") == "from-flag"  # the flag wins


def test_serve_has_the_hardening_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from langchain_divconq.cli import main
    from langchain_divconq.cli.serve import allowed_hosts_for

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--api-key",
        "--allowed-hosts",
        "--allowed-origins",
        "--max-body-bytes",
        "--max-prompt-tokens",
        "--max-tokens-limit",
        "--request-timeout",
        "DIVCONQ_API_KEY",
    ):
        assert flag in out
    assert allowed_hosts_for("127.0.0.1", []) == ["127.0.0.1"]
    assert allowed_hosts_for("0.0.0.0", []) is None  # its names are unknown: no Host check
    assert allowed_hosts_for("0.0.0.0", ["box.lan"]) == ["0.0.0.0", "box.lan"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
def test_a_post_that_is_not_json_is_a_415(url: str, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(
        f"{url}/chat/completions", content=json.dumps(body()).encode(), headers=headers
    )
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"
    charset = post(url, body(), headers={"content-type": "application/json; charset=utf-8"})
    assert charset.status_code == 200


def test_a_foreign_host_header_is_refused(url: str) -> None:
    # DNS rebinding: a page on evil.example resolves its name to 127.0.0.1.
    response = post(url, body(), headers={**JSON, "host": "evil.example:8000"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "invalid_host"
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert post(url, body(), headers={**JSON, "host": host}).status_code == 200


def test_allowed_hosts_extend_the_local_names() -> None:
    app = create_app(served_model(), model_id=MODEL_ID, allowed_hosts=["decomposer.internal"])
    with running_server(app) as base:
        ok = post(base, body(), headers={**JSON, "host": "decomposer.internal:8000"})
        assert ok.status_code == 200
        assert post(base, body(), headers={**JSON, "host": "evil.example"}).status_code == 403


def test_a_cross_origin_browser_request_is_refused() -> None:
    app = create_app(served_model(), model_id=MODEL_ID, allowed_origins=["https://app.example"])
    with running_server(app) as base:
        foreign = post(base, body(), headers={**JSON, "origin": "https://evil.example"})
        assert foreign.status_code == 403
        assert error_of(foreign)["code"] == "invalid_origin"
        assert httpx.get(f"{base}/models", headers={"origin": "null"}).status_code == 403
        allowed = post(base, body(), headers={**JSON, "origin": "https://app.example"})
        assert allowed.status_code == 200


# ---------------------------------------------------------------- cancellation
@pytest.fixture(params=[False, True], ids=["generate", "fast-decoding"])
def slow_tiny(request: pytest.FixtureRequest, tiny_chat_model: Any) -> Iterator[Any]:
    """The tiny model slowed to about 10 ms a step, so 900 new tokens take 10-15 s."""
    model = tiny_chat_model.model_copy(update={"fast_decoding": request.param, "draft": "lookup"})
    handle = model.model.register_forward_pre_hook(lambda module, args: time.sleep(0.01))
    try:
        yield model
    finally:
        handle.remove()


def _then_a_tiny_request(base: str, http: httpx.Client) -> float:
    started = time.monotonic()
    reply = http.post(f"{base}/chat/completions", json=body("tiny", max_tokens=2))
    assert reply.status_code == 200
    return time.monotonic() - started


def test_a_client_that_leaves_stops_its_generation(slow_tiny: Any) -> None:
    with running_server(create_app(slow_tiny, model_id=MODEL_ID)) as base, httpx.Client() as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post(f"{base}/chat/completions", json=body("long", max_tokens=900), timeout=1)
        # Without cancellation this waited for the 900 abandoned tokens (about 12 s).
        assert _then_a_tiny_request(base, http) < 3


def test_a_request_past_its_timeout_gets_504_and_stops(slow_tiny: Any) -> None:
    app = create_app(slow_tiny, model_id=MODEL_ID, request_timeout=1.0)
    with running_server(app) as base, httpx.Client(timeout=60) as http:
        started = time.monotonic()
        late = http.post(f"{base}/chat/completions", json=body("long", max_tokens=900))
        assert time.monotonic() - started < 3
        assert late.status_code == 504
        assert error_of(late)["code"] == "request_timeout"
        assert _then_a_tiny_request(base, http) < 3


def test_cancelling_an_ainvoke_of_the_local_model_stops_its_generation(slow_tiny: Any) -> None:
    async def run() -> float:
        task = asyncio.ensure_future(slow_tiny.ainvoke("long", max_tokens=900))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        await slow_tiny.ainvoke("tiny", max_tokens=2)
        return time.monotonic() - started

    # Without stopping, the tiny call waited for the 900 abandoned tokens (about 12 s).
    assert asyncio.run(run()) < 3


def test_a_stream_whose_client_leaves_stops_its_generation(tiny_chat_model: Any) -> None:
    handle = tiny_chat_model.model.register_forward_pre_hook(lambda module, args: time.sleep(0.01))
    try:
        with (
            running_server(create_app(tiny_chat_model, model_id=MODEL_ID)) as base,
            httpx.Client(timeout=60) as http,
        ):
            payload = body("long", max_tokens=900, stream=True)
            with http.stream("POST", f"{base}/chat/completions", json=payload) as stream:
                for line in stream.iter_lines():
                    if '"content"' in line:
                        break  # the client reads one chunk and goes away
            assert _then_a_tiny_request(base, http) < 3
    finally:
        handle.remove()


def test_a_stream_past_its_timeout_ends_with_a_json_error(tiny_chat_model: Any) -> None:
    handle = tiny_chat_model.model.register_forward_pre_hook(lambda module, args: time.sleep(0.01))
    try:
        app = create_app(tiny_chat_model, model_id=MODEL_ID, request_timeout=1.0)
        with running_server(app) as base, httpx.Client(timeout=60) as http:
            started = time.monotonic()
            payload = body("long", max_tokens=900, stream=True)
            with http.stream("POST", f"{base}/chat/completions", json=payload) as stream:
                events = [line for line in stream.iter_lines() if line.startswith("data: ")]
            assert time.monotonic() - started < 3
            assert events[-1] == "data: [DONE]"
            error = json.loads(events[-2].removeprefix("data: "))["error"]
            assert error["code"] == "request_timeout"
            assert _then_a_tiny_request(base, http) < 3
    finally:
        handle.remove()


# ------------------------------------------------------------------- SIGTERM
_SERVE_SLOW = """
import sys
from langchain_divconq.cli.serve import serve_app
from langchain_divconq.serving.app import create_app
from tests.unit_tests.fakes import slow_model

app = create_app(slow_model(60.0), model_id="slow")
serve_app(app, host="127.0.0.1", port=int(sys.argv[1]), graceful_timeout=float(sys.argv[2]))
"""


def test_sigterm_answers_running_requests_with_json_and_exits_by_the_grace_period() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])}
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE_SLOW, str(port), "3"], env=env, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the server exited early"
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)

        signalled: list[float] = []

        async def read_stream(http: httpx.AsyncClient, payload: dict[str, Any]) -> list[str]:
            url = f"{base}/v1/chat/completions"
            async with http.stream("POST", url, json={**payload, "stream": True}) as stream:
                return [line async for line in stream.aiter_lines() if line.startswith("data")]

        async def run() -> tuple[httpx.Response, list[str], float]:
            async with httpx.AsyncClient(timeout=60) as http:
                payload = {"model": "slow", "messages": ask()}
                streamed = asyncio.ensure_future(read_stream(http, payload))
                await asyncio.sleep(0.3)  # the stream holds the model; the next one queues
                running = asyncio.ensure_future(
                    http.post(f"{base}/v1/chat/completions", json=payload)
                )
                await asyncio.sleep(0.5)
                started = time.monotonic()
                signalled.append(started)
                process.send_signal(signal.SIGTERM)
                response, events = await running, await streamed
                return response, events, time.monotonic() - started

        response, events, answered = asyncio.run(run())
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "shutting_down"
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "shutting_down"
        assert answered < 3.5
        code = process.wait(timeout=30)
        exited = time.monotonic() - signalled[0]
        stderr = process.stderr.read().decode() if process.stderr else ""
        assert code == 0, stderr
        assert "Traceback" not in stderr
        assert exited < 5  # the grace period is 3 s; the model alone would take 60 s
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
