"""Per-row decoding state shared by the engine's loops: tokens, stop rules, KV-cache helpers.

The lowest layer of the engine: :mod:`generation`, :mod:`speculation` and
:mod:`draft_model` all import it, and it imports none of them.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from langchain_divconq.local.engine.stopping import TokenStopChecker

__all__ = [
    "FinishReason",
    "GreedyResult",
    "NewRow",
    "Row",
    "RowDone",
    "RowSource",
    "RowStop",
    "cache_kwarg",
    "new_cache",
]

FinishReason = Literal["eos", "stop", "length", "cancelled"]
"""Why a row ended: an end-of-sequence token, the stop checker, ``max_new_tokens``, or its
cancel event (its caller left; the row stopped at the next step)."""


@dataclass
class GreedyResult:
    """The new tokens of one row and why decoding stopped."""

    token_ids: list[int]
    """New token ids; ends with the end-of-sequence token when ``finish_reason == "eos"``."""

    finish_reason: FinishReason
    """``"eos"``, ``"stop"`` (the stop checker fired), ``"length"`` (hit ``max_new_tokens``)
    or ``"cancelled"`` (its cancel event was set)."""

    forward_passes: int = 0
    """Model calls that produced this row's tokens (the prompt pass included); fewer
    than ``len(token_ids)`` means speculative drafts were accepted."""


@dataclass(frozen=True)
class RowStop:
    """What ends a row: end-of-sequence tokens, a length limit and the stop checker."""

    eos: frozenset[int]
    max_new_tokens: int
    checker: TokenStopChecker | None


@dataclass(frozen=True)
class NewRow:
    """A prompt that joins a running batch (see :class:`RowSource`)."""

    prompt: Sequence[int]
    """Its token ids (chat template applied)."""

    cancel: threading.Event | None = None
    """Once set, the row ends at its next step with ``finish_reason="cancelled"``."""


class RowSource(Protocol):
    """Where a running batch gets more rows between decoding steps (continuous batching).

    The engine asks :meth:`take` whenever a slot is free; rows it returns are decoded
    alongside the running ones and numbered after them (the first joined row gets the
    index ``len(input_ids_batch)``, and so on, in the order taken).
    """

    def waiting(self) -> bool:
        """Whether rows are waiting to join (cheap; asked between speculative passes)."""
        ...

    def take(self, limit: int) -> list[NewRow]:
        """Return up to ``limit`` waiting rows, removing them from the wait (may be empty)."""
        ...


RowDone = Callable[[int, GreedyResult], None]
"""Called with a row's index and result the moment the row ends (before the call returns),
so its caller can be answered at once; called once per row, from the decoding thread."""


class Row:
    """Bookkeeping of one row: its tokens and whether it has finished."""

    def __init__(self, prompt: Sequence[int], cancel: threading.Event | None = None) -> None:
        self.prompt = list(prompt)
        self.cancel = cancel
        self.new: list[int] = []
        self.finish: FinishReason | None = None
        self.passes = 0

    def push(self, token: int, stop: RowStop) -> bool:
        """Append one token; return ``True`` when the row has finished."""
        self.new.append(token)
        if token in stop.eos:
            self.finish = "eos"
        elif self.cancel is not None and self.cancel.is_set():
            self.finish = "cancelled"
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
