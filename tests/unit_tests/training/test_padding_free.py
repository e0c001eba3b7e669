"""Padding-free batches: why distill refuses them without flash attention."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")

from tests.unit_tests.tiny import tiny_llama  # noqa: E402


def _examples() -> list[dict[str, Any]]:
    torch.manual_seed(0)
    out = []
    for prompt_len, completion_len in ((7, 3), (12, 5), (4, 2)):
        ids = torch.randint(3, 90, (prompt_len + completion_len,)).tolist()
        labels = [-100] * prompt_len + ids[prompt_len:]  # completion-only loss
        out.append({"input_ids": ids, "labels": labels})
    return out


def test_sdpa_lets_concatenated_examples_attend_to_each_other() -> None:
    """The fact behind DistillConfig's padding_free check (transformers 5.24, sdpa)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = tiny_llama(seed=1)
    examples = _examples()
    flat = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert "attention_mask" not in flat and flat["input_ids"].shape[0] == 1
    with torch.no_grad():
        joined = model(**flat).logits[0]
        first = model(input_ids=torch.tensor([examples[0]["input_ids"]])).logits[0]
        second = model(input_ids=torch.tensor([examples[1]["input_ids"]])).logits[0]
    n0, n1 = len(examples[0]["input_ids"]), len(examples[1]["input_ids"])
    assert torch.allclose(joined[:n0], first, atol=1e-4)  # the first example is unaffected
    if torch.allclose(joined[n0 : n0 + n1], second, atol=1e-4):
        pytest.fail("sdpa now separates packed examples: DistillConfig may allow padding_free")


def test_distill_config_refuses_padding_free_without_flash_attention() -> None:
    from langchain_divconq.training import DistillConfig

    with pytest.raises(ValueError, match="padding_free"):
        DistillConfig(padding_free=True)
    ok = DistillConfig(padding_free=True, attn_implementation="flash_attention_2")
    assert ok.padding_free
