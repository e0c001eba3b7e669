"""Scripted chat models for evaluation tests: replies keyed by the question, fixed usage."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class ScriptedChatModel(BaseChatModel):
    """Reply with ``replies[key]`` for the first key found in the last message.

    Reports ``usage_metadata`` with ``input_tokens`` / ``output_tokens`` fixed per
    call (unless ``report_usage`` is False), so token totals are known exactly
    whatever order a batch runs in. A reply of ``"RAISE"`` raises.
    """

    replies: dict[str, str]
    default: str = "I do not know."
    input_tokens: int = 10
    output_tokens: int = 5
    report_usage: bool = True
    model_name: str = "scripted"

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt = str(messages[-1].content)
        text = next((r for k, r in self.replies.items() if k in prompt), self.default)
        if text == "RAISE":
            msg = f"scripted failure for {prompt[:40]!r}"
            raise RuntimeError(msg)
        usage = (
            {
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens,
            }
            if self.report_usage
            else None
        )
        message = AIMessage(content=text, usage_metadata=usage)  # type: ignore[arg-type]
        return ChatResult(generations=[ChatGeneration(message=message)])
