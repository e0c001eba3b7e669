"""Size limits of ``divconq serve``: the served model's context, prompt and budget caps.

A prompt beyond the model's context cannot be answered well and costs memory
that is not given back; a ``max_tokens`` of 2**70 is a mistake or an attack. The
server finds the context of a local model from its config and tokenizer, counts
a prompt's tokens with the model's own chat template when the model can, and
refuses requests past the limits with a 400 that names both numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel, BaseLanguageModel
from langchain_core.messages import BaseMessage

from langchain_divconq.serving.protocol import APIError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_TOKENS_LIMIT",
    "Limits",
    "can_count_tokens",
    "context_length",
    "count_prompt_tokens",
]

DEFAULT_MAX_BODY_BYTES = 1 << 20
"""1 MiB: far beyond any decomposer prompt (an 8k-token context is about 32 kB of text)."""

DEFAULT_MAX_TOKENS_LIMIT = 32_768
"""The ``max_tokens`` cap for a model whose context is unknown (a remote model)."""

_CONFIG_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# Tokenizers without a known limit report int(1e30) as model_max_length.
_UNSET_LIMIT = 10**9


def context_length(model: BaseChatModel) -> int | None:
    """Return the context window of a model that runs in this process, or None if unknown.

    It reads the transformers config of ``model.model`` (``max_position_embeddings``
    and its older names) and ``model.tokenizer.model_max_length``, and keeps the
    smaller. Remote models (``ChatOpenAI``...) have neither, so their server is
    the judge of length.

    Example:
        >>> from langchain_core.language_models import FakeListChatModel
        >>> context_length(FakeListChatModel(responses=["Hi"])) is None
        True

    """
    found: list[int] = []
    config = getattr(getattr(model, "model", None), "config", None)
    for name in _CONFIG_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and 0 < value < _UNSET_LIMIT:
            found.append(value)
            break
    value = getattr(getattr(model, "tokenizer", None), "model_max_length", None)
    if isinstance(value, int) and 0 < value < _UNSET_LIMIT:
        found.append(value)
    return min(found) if found else None


def can_count_tokens(model: BaseChatModel) -> bool:
    """Whether the model counts prompt tokens itself (overrides ``get_num_tokens_from_messages``).

    :class:`~langchain_divconq.local.ChatLocalModel` does, with its chat template;
    LangChain's default downloads a GPT-2 tokenizer and would only guess.
    """
    counter = type(model).get_num_tokens_from_messages
    return counter not in (
        BaseChatModel.get_num_tokens_from_messages,
        BaseLanguageModel.get_num_tokens_from_messages,
    )


def count_prompt_tokens(model: BaseChatModel, messages: Sequence[BaseMessage]) -> int | None:
    """Count the prompt's tokens with the model's own counter; None if it has none."""
    if not can_count_tokens(model):
        return None
    return int(model.get_num_tokens_from_messages(list(messages)))


@dataclass(frozen=True)
class Limits:
    """The caps one server applies to every request."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """The largest request body read; a larger one gets HTTP 413."""

    max_prompt_tokens: int | None = None
    """The longest prompt in tokens (counted when the model can count); None: no cap."""

    max_tokens_limit: int | None = None
    """The largest ``max_tokens`` a request may ask for; None: no cap."""

    context: int | None = None
    """The model's context window; the prompt and ``max_tokens`` together must fit it."""

    def check_budget(self, max_tokens: int | None, param: str) -> None:
        """Refuse a ``max_tokens`` beyond :attr:`max_tokens_limit` with a 400 naming it."""
        if max_tokens is None or self.max_tokens_limit is None:
            return
        if max_tokens > self.max_tokens_limit:
            # A huge number is shown short: the message must not grow with the input.
            shown = f"{max_tokens}" if max_tokens < 10**12 else f"{max_tokens:.3e}"
            msg = (
                f"'{param}' is {shown}, but this server generates at most "
                f"{self.max_tokens_limit} tokens per request. Ask for fewer."
            )
            raise APIError(400, msg, param=param, code="invalid_value")

    def check_prompt(self, prompt_tokens: int, max_tokens: int | None) -> None:
        """Refuse a prompt longer than :attr:`max_prompt_tokens`, or one whose budget overflows."""
        if self.max_prompt_tokens is not None and prompt_tokens > self.max_prompt_tokens:
            msg = (
                f"The prompt is {prompt_tokens} tokens long, but this server takes at most "
                f"{self.max_prompt_tokens} prompt tokens"
                + (f" (the model's context is {self.context})" if self.context else "")
                + ". Shorten the messages."
            )
            raise APIError(400, msg, param="messages", code="context_length_exceeded")
        needed = prompt_tokens + (max_tokens or 0)
        if self.context is not None and max_tokens is not None and needed > self.context:
            msg = (
                f"The model's context is {self.context} tokens, but the request needs "
                f"{needed} ({prompt_tokens} in the messages, {max_tokens} for the "
                "completion). Shorten the messages or lower max_tokens."
            )
            raise APIError(400, msg, param="messages", code="context_length_exceeded")
