"""The int8 draft: close to the model, sharing its tensors, built once per model."""

from __future__ import annotations

from typing import Any, cast

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from langchain_divconq.local.engine.draft_model import (  # noqa: E402
    Int8Linear,
    int8_draft,
    supports_int8_draft,
)
from tests.unit_tests.tiny import TINY_SHAPE, tiny_llama  # noqa: E402


def _tiny(seed: int = 0, **extra: Any) -> Any:
    return tiny_llama(seed=seed, **extra)


def test_int8_linear_is_close_and_keeps_dtype() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    layer = Int8Linear(linear)
    x = torch.randn(3, 5, 64)
    got, expected = layer(x), linear(x)
    assert got.dtype == torch.float32 and got.shape == (3, 5, 32)
    assert (got - expected).norm() / expected.norm() < 0.02
    assert layer.qweight.dtype == torch.int8 and layer.qweight.shape == (32, 64)


def test_draft_shares_tensors_and_is_cached() -> None:
    model: Any = _tiny(tie_word_embeddings=True)
    draft = cast("Any", int8_draft(model))
    assert id(int8_draft(model)) == id(draft)  # cached (an `is` here would narrow the type)
    assert draft.model.embed_tokens.weight is model.model.embed_tokens.weight
    assert draft.model.norm.weight is model.model.norm.weight
    assert isinstance(draft.model.layers[0].self_attn.q_proj, Int8Linear)
    assert isinstance(draft.lm_head, Int8Linear)
    # The model itself is untouched.
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    ids = torch.randint(0, 96, (1, 12))
    with torch.inference_mode():
        want = model(input_ids=ids).logits
        got = draft(input_ids=ids).logits
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8


def test_unsupported_model_is_refused() -> None:
    with torch.device("meta"):
        model = torch.nn.Linear(4, 4)
    assert not supports_int8_draft(model)
    with pytest.raises(ValueError, match="draft='lookup'"):
        int8_draft(model)


def test_unmerged_lora_is_merged_into_the_draft() -> None:
    peft = pytest.importorskip("peft")
    base = _tiny(seed=3)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, lora).eval()
    draft = cast("Any", int8_draft(model))
    ids = torch.randint(0, 96, (1, 10))
    with torch.inference_mode():
        want = model(input_ids=ids).logits
        got = draft(input_ids=ids).logits
        base_only = int8_draft(_tiny(seed=3))(input_ids=ids).logits
    # Closer to the adapted model than the base model's draft is.
    assert (got - want).norm() < (base_only - want).norm()


def _cache_after(model: Any, ids: Any) -> Any:
    cache = transformers.DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=ids, cache=cache, use_cache=True)
    return cache


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_lean_drafter_matches_the_module_draft(kind: str) -> None:
    from langchain_divconq.local.engine.draft_model import LlamaInt8Drafter, ModuleDrafter

    torch.manual_seed(4)
    shape = {"vocab_size": 96, **TINY_SHAPE}
    if kind == "llama":
        model: Any = tiny_llama(seed=4)  # the same weights: seeded the same way
    else:  # biases on the query, key and value products
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape))
    model.eval()
    assert LlamaInt8Drafter.fits(model)
    lean, generic = LlamaInt8Drafter(model), ModuleDrafter(int8_draft(model))
    prompt = torch.randint(0, 96, (1, 9))
    cache_a, cache_b = _cache_after(model, prompt), _cache_after(model, prompt)
    with torch.inference_mode():
        for fed in ([5], [7, 8, 9], [11]):  # one row, several rows (masked), one row again
            assert lean.greedy(fed, cache_a) == generic.greedy(fed, cache_b)
    assert cache_a.get_seq_length() == cache_b.get_seq_length() == 9 + 5
    for a, b in zip(cache_a.layers, cache_b.layers, strict=True):
        assert torch.allclose(a.keys, b.keys, atol=1e-2)
        assert torch.allclose(a.values, b.values, atol=1e-2)


def test_lean_drafter_declines_other_layouts() -> None:
    from langchain_divconq.local.engine.draft_model import (
        LlamaInt8Drafter,
        ModuleDrafter,
        drafter_for,
    )

    mistral = transformers.MistralForCausalLM(
        transformers.MistralConfig(vocab_size=96, **TINY_SHAPE, sliding_window=4)
    ).eval()
    assert not LlamaInt8Drafter.fits(mistral)  # a sliding window is not reproduced
    assert isinstance(drafter_for(mistral), ModuleDrafter)
    assert not LlamaInt8Drafter.fits(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Llama-style"):
        LlamaInt8Drafter(torch.nn.Linear(2, 2))
