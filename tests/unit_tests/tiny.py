"""The one tiny random Llama of the tests: real transformer layers, no real weights.

- :func:`tiny_llama`: a seeded, randomly initialised ``LlamaForCausalLM`` of any
  vocabulary (the engine tests use a 96-token toy vocabulary).
- :func:`build_tiny_model_and_tokenizer`: that model sized to the real SmolLM2
  tokenizer (loaded from the embedded model's cache folder, so chat templates,
  special tokens and token counts are real), built once per process. The
  ``tiny_model_and_tokenizer`` and ``tiny_chat_model`` fixtures in ``conftest.py``
  hand it out.

Tests that need torch/transformers are skipped when the ``local`` extra is missing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pytest

__all__ = ["TINY_MODEL_NAME", "TINY_SHAPE", "build_tiny_model_and_tokenizer", "tiny_llama"]

TINY_SHAPE: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
"""Two layers, grouped-query attention (4 query heads over 2 key/value heads)."""

TINY_MODEL_NAME = "tiny-llama"
"""The ``model_name`` of the fixtures' ChatLocalModel."""


def tiny_llama(vocab_size: int = 96, seed: int = 0, **config: Any) -> Any:
    """Return a seeded, randomly initialised fp32 ``LlamaForCausalLM`` in eval mode.

    Args:
        vocab_size: The vocabulary size.
        seed: The torch seed the weights are drawn with.
        **config: ``LlamaConfig`` fields over :data:`TINY_SHAPE`.

    Example:
        >>> model = tiny_llama(tie_word_embeddings=True)  # doctest: +SKIP

    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(seed)
    llama = transformers.LlamaConfig(vocab_size=vocab_size, **{**TINY_SHAPE, **config})
    return transformers.LlamaForCausalLM(llama).to(torch.float32).eval()


@lru_cache(maxsize=1)
def build_tiny_model_and_tokenizer() -> tuple[Any, Any]:
    """Build (once per process) the tiny Llama over the real SmolLM2 tokenizer.

    The model has 2 layers, hidden size 32 and ~1.6M parameters, and is built in
    well under a second. Its text is gibberish but deterministic under greedy
    decoding. Callers share the objects: do not train them in place.
    """
    transformers = pytest.importorskip("transformers")
    from langchain_divconq.local.embedded import embedded_model_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(embedded_model_path())
    model = tiny_llama(
        len(tokenizer),
        seed=0,
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # The default 0.02 makes every prompt decode to the same newline run;
        # larger weights give prompt-dependent text, which the tests need.
        initializer_range=0.2,
    )
    return model, tokenizer
