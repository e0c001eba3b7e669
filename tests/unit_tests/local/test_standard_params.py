"""ChatLocalModel takes the standard parameters: timeout (enforced), max_retries, api_key."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pydantic import SecretStr

from langchain_divconq.local import ChatLocalModel

PROMPT = "Write a very long story about a cat."
STEP_S = 0.05


@pytest.fixture
def slow_model(tiny_model_and_tokenizer: tuple[Any, Any]) -> Iterator[Any]:
    """The tiny model, made to take STEP_S per forward pass (one decoding step)."""
    model, _ = tiny_model_and_tokenizer

    def sleep(module: Any, args: Any, kwargs: Any) -> None:
        time.sleep(STEP_S)

    handle = model.register_forward_pre_hook(sleep, with_kwargs=True)
    yield model
    handle.remove()


def _model(tiny: tuple[Any, Any], **kwargs: Any) -> ChatLocalModel:
    model, tokenizer = tiny
    return ChatLocalModel(model=model, tokenizer=tokenizer, model_name="tiny", **kwargs)


def test_standard_params_are_accepted(
    tiny_model_and_tokenizer: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        llm = _model(
            tiny_model_and_tokenizer, timeout=60, max_retries=2, api_key="sk-FAKE-local-0123"
        )
        assert llm.timeout == 60 and llm.max_retries == 2
        assert isinstance(llm.api_key, SecretStr)
        assert llm.api_key.get_secret_value() == "sk-FAKE-local-0123"
        llm.invoke("hello", max_tokens=2)
    shown = repr(llm) + str(llm) + str(llm.model_dump()) + str(llm._identifying_params)
    assert "sk-FAKE-local-0123" not in shown + caplog.text
    assert _model(tiny_model_and_tokenizer).timeout is None
    with pytest.raises(ValueError, match="timeout"):
        _model(tiny_model_and_tokenizer, timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        _model(tiny_model_and_tokenizer, max_retries=-1)


@pytest.mark.parametrize("fast", [False, True], ids=["generate", "fast-decoding"])
def test_timeout_stops_generation(
    tiny_model_and_tokenizer: tuple[Any, Any], slow_model: Any, fast: bool
) -> None:
    llm = _model(tiny_model_and_tokenizer, max_tokens=200, timeout=0.6, fast_decoding=fast)
    start = time.monotonic()
    out = llm.invoke(PROMPT)
    elapsed = time.monotonic() - start
    assert out.response_metadata["finish_reason"] == "timeout"
    assert out.usage_metadata is not None
    assert 0 < out.usage_metadata["output_tokens"] < 200
    assert elapsed < 200 * STEP_S / 2  # far sooner than the 10 s the 200 tokens need


def test_timeout_in_streams_and_async(
    tiny_model_and_tokenizer: tuple[Any, Any], slow_model: Any
) -> None:
    llm = _model(tiny_model_and_tokenizer, max_tokens=200, timeout=0.6)
    start = time.monotonic()
    chunks = list(llm.stream(PROMPT))
    assert time.monotonic() - start < 5
    assert chunks[-1].response_metadata["finish_reason"] == "timeout"

    async def run() -> Any:
        return await llm.ainvoke(PROMPT)

    start = time.monotonic()
    out = asyncio.run(run())
    assert time.monotonic() - start < 5
    assert out.response_metadata["finish_reason"] == "timeout"


def test_without_timeout_generation_runs_to_its_end(
    tiny_model_and_tokenizer: tuple[Any, Any],
) -> None:
    out = _model(tiny_model_and_tokenizer, max_tokens=12, timeout=60).invoke(PROMPT)
    assert out.response_metadata["finish_reason"] in ("stop", "length")
