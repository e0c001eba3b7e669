"""Prompt-prefix reuse: the bookkeeping, and the same tokens as ``generate``."""

from __future__ import annotations

from typing import Any

import pytest

from langchain_divconq.local.engine.prompt_cache import PromptCache


def _layers(n: int) -> list[tuple[Any, Any]]:
    torch = pytest.importorskip("torch")
    return [(torch.arange(n).view(1, 1, n, 1), torch.arange(n).view(1, 1, n, 1))]


def test_longest_prefix_and_eviction() -> None:
    store = PromptCache(max_entries=2, min_reuse=3)
    assert store.longest_prefix([1, 2, 3, 4]) == (0, None)
    store.store([1, 2, 3, 4, 5], _layers(5))
    store.store([1, 2, 9, 9], _layers(4))
    n, layers = store.longest_prefix([1, 2, 3, 4, 7])
    assert n == 4 and layers is not None and layers[0][0].shape[-2] == 4
    assert store.longest_prefix([1, 2, 8]) == (0, None)  # 2 shared tokens < min_reuse
    # The whole prompt is cached, but its last token must still run.
    assert store.longest_prefix([1, 2, 3, 4, 5])[0] == 4
    store.store([7, 7, 7], _layers(3))  # evicts the oldest entry
    assert store.longest_prefix([1, 2, 3, 4, 7])[0] == 0
    assert store.hits == 2
    store.clear()
    assert store.longest_prefix([7, 7, 7, 1])[0] == 0


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        PromptCache(max_entries=0)


def test_shared_system_prompt_is_reused_with_identical_output() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from langchain_divconq.local.engine.generation import generate_greedy
    from langchain_divconq.local.engine.prompt_cache import prompt_cache_for
    from tests.unit_tests.tiny import tiny_llama

    model = tiny_llama(eos_token_id=None)
    system = list(range(10, 40))
    prompts = [[*system, 50 + i, 60 + i, 70 + i] for i in range(3)]
    store = prompt_cache_for(model)
    for i, prompt in enumerate(prompts):
        [got] = generate_greedy(model, [prompt], max_new_tokens=12, draft="lookup")
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
        assert got.token_ids == out[0, len(prompt) :].tolist()
        assert store.hits == i  # every prompt after the first starts from the system prompt
    assert store.reused_tokens == 2 * len(system)
    generate_greedy(model, [prompts[0]], max_new_tokens=4, prompt_cache=False)
    assert store.hits == 2
