"""Prefix sharing: the loss and gradients of a batch whose rows share a prompt prefix equal
the plain forward pass's, and distill() trains with it."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model  # noqa: E402

from langchain_divconq.training.prefix_sharing import (  # noqa: E402
    prefix_shared_loss,
    shared_prefix_length,
)
from tests.unit_tests.tiny import tiny_llama  # noqa: E402


def _batch() -> dict[str, Any]:
    shared = [3, 9, 14, 2, 7, 7, 30, 41, 5, 11, 12]
    rows = [[*shared, 20, 21, 22, 60, 61], [*shared, 23, 24, 62, 63, 64], [*shared, 25, 65]]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    completion = [2, 3, 1]
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, len(row) - completion[i] : len(row)] = torch.tensor(row[-completion[i] :])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lora_model(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = get_peft_model(
        tiny_llama(),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:  # nonzero, so the LoRA path shapes the loss and gradients
            torch.nn.init.normal_(param, std=0.05)
    model.train()
    return model


def test_the_shared_prefix_stops_before_rows_differ_and_before_any_scored_token() -> None:
    batch = _batch()
    prefix = shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert prefix == 10  # 11 shared tokens, one left to the suffix
    batch["labels"][:, 5] = batch["input_ids"][:, 5]
    assert shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["labels"]) == 4


def test_loss_and_gradients_equal_the_plain_forward_pass() -> None:
    batch = _batch()
    prefix = shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["labels"])
    plain_model, shared_model = _lora_model(), _lora_model()
    plain = plain_model(**batch).loss
    plain.backward()
    shared = prefix_shared_loss(shared_model, batch, prefix)
    shared.backward()
    assert torch.allclose(plain, shared, atol=1e-5), (float(plain), float(shared))
    grads = {
        n: p.grad
        for n, p in plain_model.named_parameters()
        if p.requires_grad and p.grad is not None
    }
    assert grads
    for name, param in shared_model.named_parameters():
        if name in grads:
            assert torch.allclose(grads[name], param.grad, atol=1e-5, rtol=1e-4), name


def test_normalises_by_the_trainers_token_count() -> None:
    batch = _batch()
    model = _lora_model()
    mean = prefix_shared_loss(model, batch, 10)
    summed = prefix_shared_loss(model, batch, 10, num_items_in_batch=1)
    scored = int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(summed / scored, mean, atol=1e-6)
