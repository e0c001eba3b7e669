"""Shared fixtures for the unit tests.

Reusable fixtures (session-scoped, built in-process, no network):

- ``tiny_model_and_tokenizer``: ``(model, tokenizer)``. The model is a randomly
  initialised 2-layer ``LlamaForCausalLM`` (hidden size 32, fp32, seeded, eval mode,
  ~1.6M parameters, initializer_range 0.2, built in well under a second) that shares
  the real SmolLM2 tokenizer, loaded from the embedded model's cache folder, so chat templates,
  special tokens (eos ``<|im_end|>`` = pad = id 2) and token counts are real.
  Its text is gibberish but deterministic under greedy decoding. Do not mutate
  the shared objects (no training in place); build your own with
  :func:`tests.unit_tests.tiny.tiny_llama` if you need to.
- ``tiny_chat_model``: a :class:`~langchain_divconq.local.ChatLocalModel` over
  that pair (``max_tokens=12``, greedy, ``model_name="tiny-llama"``), function-scoped.

Tests that need torch/transformers are skipped when the ``local`` extra is missing.

torch runs single-threaded in the tests (``OMP_NUM_THREADS=1`` unless already set):
on a small shared machine two OpenMP threads that get descheduled spin at every
barrier, which made one decoding step 20-50x slower under load (measured here);
one thread is steady and the tiny models do not need more.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.unit_tests.tiny import TINY_MODEL_NAME, build_tiny_model_and_tokenizer

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer() -> tuple[Any, Any]:
    """The tiny random Llama (fp32, CPU) and the real SmolLM2 tokenizer; see module doc."""
    return build_tiny_model_and_tokenizer()


@pytest.fixture
def tiny_chat_model(tiny_model_and_tokenizer: tuple[Any, Any]) -> Any:
    """A greedy ChatLocalModel over the tiny model, 12 new tokens at most."""
    from langchain_divconq.local import ChatLocalModel

    model, tokenizer = tiny_model_and_tokenizer
    return ChatLocalModel(
        model=model, tokenizer=tokenizer, model_name=TINY_MODEL_NAME, max_tokens=12
    )
