"""Reuse the keys and values of a prompt prefix that earlier calls already ran.

Every decomposer prompt starts with the same system prompt and chat-template
header (72 of the 104-188 tokens of a GSM8K decomposer prompt with SmolLM2's
template), and on a CPU the prompt pass is compute-bound: 143 tokens take about
230 ms in fp32 on 2 cores, as long as six decoding steps. Keeping the keys and
values of the last few prompts and starting a new prompt from its longest
common prefix with one of them skips that work.

The reused entries are exactly what the model computed for those tokens in an
earlier prompt pass; a pass over a longer prompt may round a few bits
differently than one over the prefix alone, so this is exact up to
floating-point rounding between matrix-product kernels, like the verify passes
of speculative decoding (the unit tests and the benchmark compare outputs with
``generate`` token for token).

Example:
    >>> store = PromptCache(max_entries=2)
    >>> store.longest_prefix([1, 2, 3])
    (0, None)

"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["PromptCache", "prompt_cache_for"]


class PromptCache:
    """The per-layer keys and values of the last ``max_entries`` prompts of one model."""

    def __init__(self, max_entries: int = 4, min_reuse: int = 8) -> None:
        if max_entries < 1 or min_reuse < 1:
            msg = (
                f"max_entries and min_reuse must be at least 1, got {max_entries} and {min_reuse}."
            )
            raise ValueError(msg)
        self.max_entries = max_entries
        self.min_reuse = min_reuse
        self._entries: list[tuple[tuple[int, ...], list[tuple[Any, Any]]]] = []
        self._lock = threading.Lock()
        self.hits = 0
        self.reused_tokens = 0

    def longest_prefix(self, prompt: Sequence[int]) -> tuple[int, list[tuple[Any, Any]] | None]:
        """Return how many leading tokens of ``prompt`` are cached, and their keys and values.

        The layers come as ``(keys, values)`` pairs; ``(0, None)`` means fewer than
        ``min_reuse`` tokens are cached. The last prompt token is never served from
        the cache, since its logits are needed.
        """
        tokens = tuple(prompt)
        best, found = 0, None
        with self._lock:
            for key, layers in self._entries:
                n = _common_prefix(key, tokens, limit=len(tokens) - 1)
                if n > best:
                    best, found = n, layers
        if best < self.min_reuse or found is None:
            return 0, None
        self.hits += 1
        self.reused_tokens += best
        return best, [(k[..., :best, :], v[..., :best, :]) for k, v in found]

    def store(self, prompt: Sequence[int], layers: list[tuple[Any, Any]]) -> None:
        """Remember the keys and values of a whole prompt (most recent first)."""
        tokens = tuple(prompt)
        with self._lock:
            self._entries = [e for e in self._entries if e[0] != tokens]
            self._entries.insert(0, (tokens, layers))
            del self._entries[self.max_entries :]

    def forget(self, prompt: Sequence[int]) -> None:
        """Drop the entry of exactly this prompt, if any (benchmarks rerun the same prompt)."""
        tokens = tuple(prompt)
        with self._lock:
            self._entries = [e for e in self._entries if e[0] != tokens]

    def clear(self) -> None:
        """Forget every entry (``generate_greedy`` does this when the weights change)."""
        with self._lock:
            self._entries.clear()


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if n >= limit or x != y:
            break
        n += 1
    return n


_caches: weakref.WeakKeyDictionary[Any, PromptCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def prompt_cache_for(model: Any) -> PromptCache:
    """Return the :class:`PromptCache` of ``model`` (one per model object, made on first use).

    Example:
        >>> prompt_cache_for(model).clear()  # doctest: +SKIP

    """
    with _caches_lock:
        cache = _caches.get(model)
        if cache is None:
            cache = _caches[model] = PromptCache()
    return cache
