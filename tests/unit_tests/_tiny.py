"""A tiny random Llama for tests that need real transformer layers but no real weights."""

from __future__ import annotations

from typing import Any

TINY_SHAPE: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
"""Two layers, grouped-query attention (4 query heads over 2 key/value heads)."""


def tiny_llama(vocab_size: int = 96, seed: int = 0, **config: Any) -> Any:
    """Return a seeded, randomly initialised ``LlamaForCausalLM`` in eval mode.

    Example:
        >>> model = tiny_llama(tie_word_embeddings=True)  # doctest: +SKIP

    """
    import torch
    import transformers

    torch.manual_seed(seed)
    llama = transformers.LlamaConfig(vocab_size=vocab_size, **{**TINY_SHAPE, **config})
    return transformers.LlamaForCausalLM(llama).eval()
