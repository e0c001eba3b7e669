import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import BaseMessage, HumanMessage

from langchain_divconq.cli import main
from langchain_divconq.serving.app import create_app
from langchain_divconq.serving.batcher import (
    BatcherClosedError,
    QueueFullError,
    RequestBatcher,
    RequestParams,
)
from langchain_divconq.serving.protocol import StopFilter
from tests.unit_tests.fakes import (
    DECOMPOSITION,
    SOLUTION,
    ScriptedChatModel,
    running_server,
    served_model,
)

MODEL_ID = "divconq-test"
DECOMPOSER_SYSTEM = "Write sub-questions, one per line."


def ask(text: str = "Natalia sold 48 clips in April and half as many in May.") -> list[Any]:
    return [{"role": "system", "content": DECOMPOSER_SYSTEM}, {"role": "user", "content": text}]


@pytest.fixture
def scripted() -> ScriptedChatModel:
    return served_model(batch_delay=0.05)


@pytest.fixture
def base_url(scripted: ScriptedChatModel) -> Iterator[str]:
    with running_server(create_app(scripted, model_id=MODEL_ID)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


# --------------------------------------------------------------------- protocol
def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_plain_completion(client: openai.OpenAI, scripted: ScriptedChatModel) -> None:
    reply = client.chat.completions.create(model=MODEL_ID, messages=ask(), temperature=0.0)
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.model == MODEL_ID
    assert reply.created > 0
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == DECOMPOSITION
    assert choice.finish_reason == "stop"
    # Usage comes from the model's usage_metadata (the fake counts words).
    assert reply.usage is not None
    assert reply.usage.completion_tokens == len(DECOMPOSITION.split(" "))
    assert reply.usage.prompt_tokens == sum(len(m["content"].split()) for m in ask())
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # The model got the conversation with the right roles.
    [prompt] = scripted.received
    assert [m.type for m in prompt] == ["system", "human"]


def test_default_alias_and_text_parts(client: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "developer", "content": [{"type": "text", "text": DECOMPOSER_SYSTEM}]},
        {"role": "user", "content": "Q?"},
    ]
    reply = client.chat.completions.create(model="default", messages=messages)
    assert reply.choices[0].message.content == DECOMPOSITION


def test_streaming_completion_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=ask(),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == DECOMPOSITION
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(DECOMPOSITION.split(" "))


def test_stream_ends_with_done_marker(base_url: str) -> None:
    body = {"model": MODEL_ID, "messages": ask(), "stream": True}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert "usage" not in json.loads(lines[0].removeprefix("data: "))


def test_stop_and_max_tokens(client: openai.OpenAI) -> None:
    solver_messages: Any = [{"role": "user", "content": "How many clips?"}]
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=solver_messages, stop=["\nThe answer"]
    )
    assert reply.choices[0].message.content == SOLUTION.split("\nThe answer")[0]
    assert reply.choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(
        model=MODEL_ID, messages=solver_messages, stop="= 72", stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == SOLUTION.split("= 72")[0]

    # max_tokens reaches the model (its max_tokens field) and a cut reply says "length".
    short = client.chat.completions.create(model=MODEL_ID, messages=solver_messages, max_tokens=3)
    assert short.choices[0].message.content == " ".join(SOLUTION.split(" ")[:3])
    assert short.choices[0].finish_reason == "length"
    newer = client.chat.completions.create(
        model=MODEL_ID, messages=solver_messages, max_completion_tokens=2
    )
    assert newer.choices[0].message.content == " ".join(SOLUTION.split(" ")[:2])


def test_stop_filter_holds_back_across_chunks() -> None:
    stop_filter = StopFilter(["STOP"])
    out = []
    for piece in ["abc S", "T", "OP more"]:
        text, hit = stop_filter.feed(piece)
        out.append(text)
        if hit:
            break
    assert "".join(out) == "abc "
    assert hit
    no_stop = StopFilter([])
    assert no_stop.feed("abc") == ("abc", False)


# ----------------------------------------------------------------------- errors
BAD_BODIES = [
    pytest.param(b"{not json", 400, None, id="invalid-json"),
    pytest.param(b"[1, 2]", 400, None, id="not-an-object"),
    pytest.param({"model": MODEL_ID}, 400, "messages", id="missing-messages"),
    pytest.param({"model": MODEL_ID, "messages": []}, 400, "messages", id="empty-messages"),
    pytest.param(
        {"model": MODEL_ID, "messages": [{"role": "robot", "content": "hi"}]},
        400,
        "messages.0.role",
        id="bad-role",
    ),
    pytest.param(
        {"model": MODEL_ID, "messages": [{"role": "user", "content": 42}]},
        400,
        "messages.0.content.str",
        id="content-not-text",
    ),
    pytest.param(
        {"model": MODEL_ID, "messages": ask(), "temperature": "hot"},
        400,
        "temperature",
        id="temperature-type",
    ),
    pytest.param(
        {"model": MODEL_ID, "messages": ask(), "max_tokens": 0},
        400,
        "max_tokens",
        id="max-tokens-range",
    ),
    pytest.param({"model": MODEL_ID, "messages": ask(), "n": 2}, 400, "n", id="n-above-1"),
    pytest.param(
        {"model": MODEL_ID, "messages": ask(), "stop": ["a", "b", "c", "d", "e"]},
        400,
        "stop",
        id="too-many-stops",
    ),
    pytest.param({"model": "gpt-4o", "messages": ask()}, 404, "model", id="unknown-model"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_BODIES)
def test_malformed_requests_get_openai_errors(
    base_url: str, body: Any, status: int, param: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{base_url}/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "robot", "content": "x"}],  # type: ignore[misc,list-item]
        )
    assert "role" in str(info.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=ask())


def test_unknown_route_is_openai_error(base_url: str) -> None:
    response = httpx.get(f"{base_url}/completions")
    assert response.status_code in (404, 405)
    assert "error" in response.json()


def test_a_failing_request_does_not_take_its_batch_or_the_server_down() -> None:
    model = served_model(batch_delay=0.2, replies={"explode": "RAISE: out of memory"})
    with running_server(create_app(model, model_id=MODEL_ID)) as url:
        client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)

        async def one(text: str) -> Any:
            return await client.chat.completions.create(model=MODEL_ID, messages=ask(text))

        async def run() -> list[Any]:
            return await asyncio.gather(
                one("fine"), one("explode"), one("fine too"), return_exceptions=True
            )

        good, bad, also_good = asyncio.run(run())
        assert isinstance(bad, openai.InternalServerError)
        assert "out of memory" in str(bad)
        assert good.choices[0].message.content == DECOMPOSITION
        assert also_good.choices[0].message.content == DECOMPOSITION
        assert model.batch_sizes == [3]  # the failure shared a batch with two successes
        stream = openai.OpenAI(base_url=url, api_key="x").chat.completions.create(
            model=MODEL_ID, messages=ask("explode"), stream=True
        )
        with pytest.raises(openai.APIError, match="out of memory"):
            list(stream)


# ------------------------------------------------------------- load and batching
def test_32_concurrent_requests_are_all_answered_in_shared_batches(
    base_url: str, scripted: ScriptedChatModel
) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)

    async def one(i: int) -> str:
        reply = await client.chat.completions.create(model=MODEL_ID, messages=ask(f"Q{i}?"))
        return reply.choices[0].message.content or ""

    async def run() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(32)))

    answers = asyncio.run(run())
    assert answers == [DECOMPOSITION] * 32
    assert sum(scripted.batch_sizes) == 32
    assert len(scripted.batch_sizes) < 32  # batched: fewer model calls than requests
    assert max(scripted.batch_sizes) > 1
    stats = httpx.get(base_url.removesuffix("/v1") + "/health").json()
    assert stats["requests"] == 32
    assert stats["batches"] == len(scripted.batch_sizes)
    assert stats["pending"] == 0
    # Every prompt reached the model exactly once.
    assert sorted(str(p[-1].content) for p in scripted.received) == sorted(
        f"Q{i}?" for i in range(32)
    )


def test_requests_with_different_params_go_to_different_batches(
    base_url: str, scripted: ScriptedChatModel
) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(
                client.chat.completions.create(model=MODEL_ID, messages=ask(), max_tokens=m)
                for m in (2, 2, 5, 5, 5)
            )
        )

    replies = asyncio.run(run())
    assert [len((r.choices[0].message.content or "").split(" ")) for r in replies] == [
        2,
        2,
        5,
        5,
        5,
    ]
    assert sorted(scripted.batch_sizes) == [2, 3]


def test_overload_gets_429_not_a_crash() -> None:
    model = served_model(batch_delay=0.3)
    with running_server(create_app(model, model_id=MODEL_ID, max_queue=2, max_batch=1)) as url:

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as http:
                body = {"model": MODEL_ID, "messages": ask()}
                return await asyncio.gather(
                    *(http.post(f"{url}/chat/completions", json=body) for _ in range(8))
                )

        responses = asyncio.run(run())
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2
        assert 429 in codes
        assert set(codes) <= {200, 429}
        rejected = next(r for r in responses if r.status_code == 429)
        assert rejected.json()["error"]["code"] == "queue_full"
        assert rejected.headers["retry-after"] == "1"
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
        assert health["rejected"] == codes.count(429)
        assert health["pending"] == 0
        after = httpx.post(f"{url}/chat/completions", json={"model": MODEL_ID, "messages": ask()})
        assert after.status_code == 200

        # A streaming request beyond the queue is refused before its stream starts.
        async def stream_while_busy() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as http:
                body = {"model": MODEL_ID, "messages": ask()}
                busy = [
                    asyncio.ensure_future(http.post(f"{url}/chat/completions", json=body))
                    for _ in range(2)
                ]
                await asyncio.sleep(0.1)
                streamed = await http.post(f"{url}/chat/completions", json={**body, "stream": True})
                return [streamed.status_code] + [(await b).status_code for b in busy]

        assert asyncio.run(stream_while_busy()) == [429, 200, 200]


def test_a_request_whose_client_left_is_not_generated() -> None:
    model = served_model(batch_delay=0.5)
    with running_server(create_app(model, model_id=MODEL_ID, max_batch=1)) as url:

        async def run() -> None:
            async with httpx.AsyncClient(timeout=30) as http:
                body = {"model": MODEL_ID, "messages": ask("first")}
                first = asyncio.ensure_future(http.post(f"{url}/chat/completions", json=body))
                await asyncio.sleep(0.1)  # "first" is now being generated
                with pytest.raises(httpx.ReadTimeout):
                    await http.post(
                        f"{url}/chat/completions",
                        json={**body, "messages": ask("abandoned")},
                        timeout=0.2,
                    )
                assert (await first).status_code == 200
                last = await http.post(
                    f"{url}/chat/completions", json={**body, "messages": ask("last")}
                )
                assert last.status_code == 200

        asyncio.run(run())
        prompts = [str(p[-1].content) for p in model.received]
        assert prompts == ["first", "last"]
        assert httpx.get(url.removesuffix("/v1") + "/health").json()["pending"] == 0


# ---------------------------------------------------------------- the batcher
def test_batcher_skips_cancelled_requests_and_fails_waiting_ones_on_close() -> None:
    model = served_model(batch_delay=0.2)

    async def run() -> None:
        batcher = RequestBatcher(model, max_batch=1, max_queue=3, max_wait_s=0)
        await batcher.start()
        prompt = [HumanMessage("Q?")]
        first = asyncio.ensure_future(batcher.submit(prompt, RequestParams()))
        await asyncio.sleep(0.05)  # the first batch is now running
        gone = asyncio.ensure_future(batcher.submit(prompt, RequestParams()))
        waiting = asyncio.ensure_future(batcher.submit(prompt, RequestParams()))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await batcher.submit(prompt, RequestParams())
        gone.cancel()
        assert (await first).content == SOLUTION
        await asyncio.sleep(0.05)  # the worker now runs `waiting`; `gone` was skipped
        await batcher.close()
        with pytest.raises(BatcherClosedError):
            await waiting
        with pytest.raises(BatcherClosedError):
            await batcher.submit(prompt, RequestParams())
        assert batcher.pending == 0

    asyncio.run(run())
    assert model.batch_sizes == [1, 1]


def test_batcher_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        RequestBatcher(served_model(), max_batch=0)


# ------------------------------------------------------------------------- CLI
def test_serve_is_a_divconq_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--decomposer", "--adapter", "--max-batch", "--max-queue"):
        assert flag in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"divconq serve exited early with {process.returncode}"
            raise AssertionError(msg)
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    msg = "divconq serve did not become ready"
    raise AssertionError(msg)


@pytest.mark.slow  # a subprocess that imports torch: about 20 s on 2 busy cores
def test_divconq_serve_answers_and_exits_0_on_sigterm(tiny_model_dir: Path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "langchain_divconq.cli", "serve", "--port", str(port)]
    command += ["--decomposer", str(tiny_model_dir), "--adapter", "none", "--model-id", "tiny"]
    command += ["--threads", "1", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/health", process)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        reply = client.chat.completions.create(model="tiny", messages=ask(), max_tokens=4)
        assert reply.usage is not None
        assert 1 <= reply.usage.completion_tokens <= 4
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        stderr = process.stderr.read().decode() if process.stderr else ""
        assert code == 0, stderr
        assert time.monotonic() - started < 15
        assert "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ------------------------------------------------------- the real local model
@pytest.fixture(scope="session")
def tiny_model_dir(
    tiny_model_and_tokenizer: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    model, tokenizer = tiny_model_and_tokenizer
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_local_model_concurrent_requests_share_generate_calls(
    tiny_chat_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    generate_texts = type(tiny_chat_model)._generate_texts

    def counting(self: Any, prompts: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        out = generate_texts(self, prompts, params, *args, **kwargs)
        feed = kwargs.get("feed")  # requests that joined the running call count too
        calls.append(len(feed.requests) if feed is not None else len(prompts))
        return out

    monkeypatch.setattr(type(tiny_chat_model), "_generate_texts", counting)
    messages = ask()
    expected = tiny_chat_model.invoke(_lc(messages), max_tokens=4)
    calls.clear()
    with running_server(create_app(tiny_chat_model, model_id="tiny", max_batch=32)) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        single = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
        # The served reply is exactly what the model gives in-process (greedy).
        assert single.choices[0].message.content == expected.content
        assert single.usage is not None
        assert single.usage.completion_tokens == expected.usage_metadata["output_tokens"]
        assert single.usage.prompt_tokens == expected.usage_metadata["input_tokens"]
        streamed = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=4, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected.content
        calls.clear()
        aclient = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)

        async def run() -> list[Any]:
            return await asyncio.gather(
                *(
                    aclient.chat.completions.create(
                        model="tiny", messages=ask(f"Question {i}?"), max_tokens=4
                    )
                    for i in range(32)
                )
            )

        replies = asyncio.run(run())
    assert len(replies) == 32
    assert all(r.usage is not None and 1 <= r.usage.completion_tokens <= 4 for r in replies)
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in replies)
    assert sum(calls) == 32
    assert len(calls) < 32  # shared generate calls, not one per request


def _lc(messages: list[Any]) -> list[BaseMessage]:
    from langchain_core.messages import SystemMessage

    return [
        SystemMessage(m["content"]) if m["role"] == "system" else HumanMessage(m["content"])
        for m in messages
    ]
