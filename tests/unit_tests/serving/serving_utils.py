"""Helpers shared by the server tests: run an app on 127.0.0.1 and small chat models."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from langchain_divconq.prompts import message_text

DECOMPOSITION = "How many clips did she sell in May?\nHow many clips did she sell in all?"
SOLUTION = "She sold 24 in May.\nShe sold 48 + 24 = 72 in all.\nThe answer is: 72"


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yield the /v1 URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            msg = "uvicorn did not start"
            raise RuntimeError(msg)
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _words(messages: list[BaseMessage]) -> int:
    return sum(len(message_text(m).split()) for m in messages)


def is_decomposer_prompt(messages: list[BaseMessage]) -> bool:
    """Tell the chain's decomposer prompt (and the tests' stand-in) from a solver prompt."""
    return bool(messages) and "one per line" in message_text(messages[0]).lower()


class ScriptedChatModel(BaseChatModel):
    """Answers decomposer prompts with sub-questions and solver prompts with a solution.

    It records every prompt it receives, and counts ``batch`` calls and their sizes.
    """

    decomposition: str = Field(default=DECOMPOSITION, description="Reply to decomposer prompts.")
    solution: str = Field(default=SOLUTION, description="Reply to every other prompt.")
    batch_delay: float = Field(default=0.0, description="Seconds each batch call takes.")
    max_tokens: int = Field(default=64, description="Budget; replies are cut to this many words.")
    temperature: float = Field(default=0.0, description="Recorded only.")
    received: list[list[BaseMessage]] = Field(default_factory=list, description="Prompts seen.")
    batch_sizes: list[int] = Field(default_factory=list, description="Size of each batch call.")

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _reply(self, messages: list[BaseMessage]) -> str:
        return self.decomposition if is_decomposer_prompt(messages) else self.solution

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.received.append(list(messages))
        words = self._reply(messages).split(" ")
        text = " ".join(words[: self.max_tokens])
        finish = "length" if len(words) > self.max_tokens else "stop"
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": _words(messages),
                "output_tokens": min(len(words), self.max_tokens),
                "total_tokens": _words(messages) + min(len(words), self.max_tokens),
            },
            response_metadata={"finish_reason": finish},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def batch(self, inputs: list[Any], config: Any = None, **kwargs: Any) -> list[Any]:
        # model_copy shares this list with the original, so the test sees every batch.
        self.batch_sizes.append(len(inputs))
        time.sleep(self.batch_delay)
        return super().batch(inputs, config, **kwargs)
