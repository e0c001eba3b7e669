"""Tiny deterministic chat models for the trace tests (no network, no weights).

Each reply is computed from the question id (``Q<n>``) in the prompt, so a test
can check that every recorded node call belongs to its own question.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

__all__ = ["EchoModel", "make_chain", "question"]

_QID = re.compile(r"\bQ(\d+)\b")


def question(i: int) -> str:
    """The question text of item ``i``."""
    return f"Q{i}: Tom has {i} bags with 2 apples each. How many apples?"


class EchoModel(BaseChatModel):
    """Decomposes or solves by echoing the question id; optionally fails on some ids."""

    model_name: str = "echo"
    """Reported as ``ls_model_name``."""
    role: str = "solver"
    """``decomposer`` or ``solver``."""
    fail_ids: frozenset[int] = frozenset()
    """Question ids whose calls raise."""
    report_usage: bool = True
    """Attach ``usage_metadata`` to replies."""
    fail_first: int = 0
    """Raise on this many first calls (to test retries)."""
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _reply(self, messages: list[BaseMessage]) -> str:
        self.calls += 1
        if self.calls <= self.fail_first:
            msg = "transient failure"
            raise ConnectionError(msg)
        text = str(messages[-1].content)
        match = _QID.search(text)
        qid = int(match.group(1)) if match else -1
        if qid in self.fail_ids:
            msg = f"model down for Q{qid}"
            raise RuntimeError(msg)
        if self.role == "decomposer":
            return f"1. How many bags in Q{qid}?\n2. How many apples per bag in Q{qid}?"
        subs = text.count("?") - 1
        return f"Q{qid} has {qid} bags of 2 apples ({subs} hints).\nThe answer is: {2 * qid}"

    def _usage(self, messages: list[BaseMessage], text: str) -> UsageMetadata | None:
        if not self.report_usage:
            return None
        prompt = sum(len(str(m.content).split()) for m in messages)
        out = len(text.split())
        return UsageMetadata(input_tokens=prompt, output_tokens=out, total_tokens=prompt + out)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self._reply(messages)
        message = AIMessage(content=text, usage_metadata=self._usage(messages, text))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        text = self._reply(messages)
        words = text.split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            chunk = AIMessageChunk(
                content=word if last else word + " ",
                usage_metadata=self._usage(messages, text) if last else None,
            )
            if run_manager:
                run_manager.on_llm_new_token(str(chunk.content), chunk=None)
            yield ChatGenerationChunk(message=chunk)


def make_chain(**options: Any) -> Any:
    """A DivConqChain over two EchoModels; options go to the solver (``fail_ids=...``)."""
    from langchain_divconq import create_divconq_chain

    decomposer_options = options.pop("decomposer", {})
    return create_divconq_chain(
        EchoModel(model_name="echo-dec", role="decomposer", **decomposer_options),
        EchoModel(model_name="echo-sol", role="solver", **options),
    )
