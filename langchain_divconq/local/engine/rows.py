"""Per-row decoding state shared by the engine's loops: tokens, stop rules, KV-cache helpers.

The lowest layer of the engine: :mod:`generation`, :mod:`speculation` and
:mod:`draft_model` all import it, and it imports none of them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_divconq.local.engine.stopping import TokenStopChecker

__all__ = ["FinishReason", "GreedyResult", "Row", "RowStop", "cache_kwarg", "new_cache"]

FinishReason = Literal["eos", "stop", "length"]
"""Why a row ended: an end-of-sequence token, the stop checker, or ``max_new_tokens``."""


@dataclass
class GreedyResult:
    """The new tokens of one row and why decoding stopped."""

    token_ids: list[int]
    """New token ids; ends with the end-of-sequence token when ``finish_reason == "eos"``."""

    finish_reason: FinishReason
    """``"eos"``, ``"stop"`` (the stop checker fired) or ``"length"`` (hit ``max_new_tokens``)."""

    forward_passes: int = 0
    """Model calls that produced this row's tokens (the prompt pass included); fewer
    than ``len(token_ids)`` means speculative drafts were accepted."""


@dataclass(frozen=True)
class RowStop:
    """What ends a row: end-of-sequence tokens, a length limit and the stop checker."""

    eos: frozenset[int]
    max_new_tokens: int
    checker: TokenStopChecker | None


class Row:
    """Bookkeeping of one row: its tokens and whether it has finished."""

    def __init__(self, prompt: Sequence[int]) -> None:
        self.prompt = list(prompt)
        self.new: list[int] = []
        self.finish: FinishReason | None = None
        self.passes = 0

    def push(self, token: int, stop: RowStop) -> bool:
        """Append one token; return ``True`` when the row has finished."""
        self.new.append(token)
        if token in stop.eos:
            self.finish = "eos"
        elif stop.checker is not None and stop.checker(self.new):
            self.finish = "stop"
        elif len(self.new) >= stop.max_new_tokens:
            self.finish = "length"
        return self.finish is not None

    def result(self) -> GreedyResult:
        """Return the row's tokens so far and why it ended."""
        return GreedyResult(
            token_ids=self.new, finish_reason=self.finish or "length", forward_passes=self.passes
        )


def cache_kwarg(model: Any) -> str:
    """Name of the forward argument that takes the KV cache (renamed in transformers 5.2x)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_kwarg_of_class(base.__class__)


@functools.lru_cache(maxsize=64)
def _cache_kwarg_of_class(model_class: Any) -> str:
    # Cached per class: verify passes ask on every step, and inspecting a signature is slow.
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model: Any) -> Any:
    """Return a fresh dynamic KV cache for ``model``."""
    from transformers import DynamicCache

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    return DynamicCache(config=config) if config is not None else DynamicCache()
