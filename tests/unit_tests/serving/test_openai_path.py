"""The real OpenAI client path: ChatOpenAI against a local OpenAI-compatible server.

ChatOpenAI (langchain-openai) talks HTTP to ``divconq serve``'s app on 127.0.0.1,
as decomposer and as solver, in the chain and through ``divconq ask``. Also the
in-process llama.cpp solver (``--solver llamacpp:PATH``), which is tested only
when llama-cpp-python is installed.
"""

import asyncio
import importlib.util
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_openai import ChatOpenAI

from langchain_divconq import create_divconq_chain
from langchain_divconq.cli import main
from langchain_divconq.model_specs import build_solver
from langchain_divconq.serving.app import create_app
from tests.unit_tests.fakes import (
    DECOMPOSITION,
    SOLUTION,
    ScriptedChatModel,
    is_decomposer_prompt,
    running_server,
    served_model,
)

QUESTION = "Natalia sold 48 clips in April and half as many in May. How many in all?"
SUB_QUESTIONS = DECOMPOSITION.splitlines()


@pytest.fixture
def served() -> ScriptedChatModel:
    return served_model()


@pytest.fixture
def base_url(served: ScriptedChatModel) -> Iterator[str]:
    with running_server(create_app(served, model_id="divconq-decomposer")) as url:
        yield url


def chat_openai(base_url: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="divconq-decomposer", base_url=base_url, api_key="unused", max_retries=0, **kwargs
    )


def _solver_prompt_text(served: ScriptedChatModel) -> str:
    solver_prompts = [p for p in served.received if not is_decomposer_prompt(p)]
    return str(solver_prompts[-1][-1].content)


def test_chat_openai_as_decomposer(base_url: str, served: ScriptedChatModel) -> None:
    solver = FakeListChatModel(responses=[SOLUTION])
    chain = create_divconq_chain(chat_openai(base_url, temperature=0), solver)
    result = chain.invoke(QUESTION)
    assert result["decomposition"] == DECOMPOSITION
    assert result["sub_questions"] == SUB_QUESTIONS
    assert result["answer"] == "72"
    # The server got the chain's own decomposer prompt.
    [prompt] = served.received
    assert QUESTION in str(prompt[-1].content)


def test_chat_openai_as_decomposer_and_solver(base_url: str, served: ScriptedChatModel) -> None:
    chain = create_divconq_chain(chat_openai(base_url), chat_openai(base_url))
    result = chain.invoke({"question": QUESTION, "context": None})
    assert result["sub_questions"] == SUB_QUESTIONS
    assert result["solution"] == SOLUTION
    assert result["answer"] == "72"
    # The solver's prompt carried the decomposer's sub-questions over HTTP.
    solver_prompt = _solver_prompt_text(served)
    assert f"1. {SUB_QUESTIONS[0]}" in solver_prompt
    assert f"2. {SUB_QUESTIONS[1]}" in solver_prompt


def test_token_usage_reaches_langchain(base_url: str) -> None:
    reply = chat_openai(base_url).invoke("How many clips?")
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["output_tokens"] == len(SOLUTION.split(" "))
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.response_metadata["model_name"] == "divconq-decomposer"


def test_chain_stream_and_abatch_over_http(base_url: str, served: ScriptedChatModel) -> None:
    chain = create_divconq_chain(
        chat_openai(base_url), chat_openai(base_url, streaming=True, stream_usage=True)
    )
    chunks = list(chain.stream(QUESTION))
    assert chunks[0]["sub_questions"] == SUB_QUESTIONS
    assert "".join(c.get("solution", "") for c in chunks) == SOLUTION
    assert chunks[-1]["answer"] == "72"

    served.batch_sizes.clear()
    results = asyncio.run(chain.abatch([QUESTION] * 6))
    assert [r["answer"] for r in results] == ["72"] * 6
    # Six concurrent HTTP decomposer calls were served by fewer model.batch calls;
    # the streaming solver calls went through the server's streaming path instead.
    assert sum(served.batch_sizes) == 6
    assert len(served.batch_sizes) < 6
    health = httpx.get(base_url.removesuffix("/v1") + "/health").json()
    assert health["streams"] == 7


def test_divconq_ask_with_base_urls(
    base_url: str, served: ScriptedChatModel, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "ask",
            QUESTION,
            "--decomposer-base-url",
            base_url,
            "--solver-base-url",
            base_url,
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sub_questions"] == SUB_QUESTIONS
    assert result["answer"] == "72"
    assert len(served.received) == 2  # one decomposer call, one solver call


def test_divconq_ask_with_a_local_decomposer_url_and_a_fake_solver_url(
    base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The solver server is a second app: only --solver-base-url reaches it.
    solver_model = served_model(solution="Sure.\nThe answer is: 73")
    with running_server(create_app(solver_model, model_id="teacher")) as solver_url:
        code = main(
            [
                "ask",
                QUESTION,
                "--decomposer-base-url",
                base_url,
                "--solver",
                "openai:teacher",
                "--solver-base-url",
                solver_url,
            ]
        )
    out = capsys.readouterr().out
    assert code == 0
    assert "1. How many clips did she sell in May?" in out
    assert "Answer: 73" in out
    assert len(solver_model.received) == 1


def test_unknown_model_name_is_a_clear_error(base_url: str) -> None:
    import openai

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        ChatOpenAI(model="gpt-4o", base_url=base_url, api_key="x", max_retries=0).invoke("hi")


# --------------------------------------------------------------------- llama.cpp
def test_llamacpp_solver_without_the_extra_names_the_extra(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    # A None entry makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "langchain_community", None)
    monkeypatch.setitem(sys.modules, "langchain_community.chat_models", None)
    with pytest.raises(ImportError, match=r"langchain-divconq\[llamacpp\]"):
        build_solver(f"llamacpp:{gguf}")


def test_llamacpp_solver_needs_an_existing_file(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="not found"):
        build_solver(f"llamacpp:{tmp_path / 'missing.gguf'}")


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("langchain_community") is None,
    reason="needs the 'llamacpp' extra (llama-cpp-python builds from source in ~12 min)",
)
def test_llamacpp_solver_on_the_embedded_gguf() -> None:
    from langchain_divconq.local.embedded import embedded_gguf_path

    solver = build_solver(f"llamacpp:{embedded_gguf_path()}", max_tokens=48)
    chain = create_divconq_chain(FakeListChatModel(responses=[DECOMPOSITION]), solver)
    result = chain.invoke(QUESTION)
    assert result["sub_questions"] == SUB_QUESTIONS
    assert result["solution"].strip()
    reply = solver.invoke("Reply with one word: hello")
    assert isinstance(reply.content, str)
    assert reply.content.strip()
