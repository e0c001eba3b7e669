"""An int8 copy of a model that drafts tokens for self-speculative decoding on CPU.

On a CPU, one decoding step of a small fp32 model is bound by streaming its
weights from memory: SmolLM2-135M reads 540 MB per token. The same weights in
int8 (one scale per output row) are a quarter of that, and torch's weight-only
int8 kernel with bf16 activations runs the whole 135M model's matrix products
in about 5 ms instead of about 30 ms on a 2-core EPYC. The int8 copy predicts
the fp32 model's greedy tokens almost always, so it makes an excellent draft:
it proposes a run of tokens, the fp32 model checks them all in one pass and
keeps the ones it would have chosen itself. The output is therefore the fp32
model's own greedy output; the int8 copy only decides how fast we get there.

The copy shares every tensor with the original except the linear layers' weights
(embeddings, norms and rotary buffers are the same objects), so it costs a
quarter of the linear weights in memory, and it runs on the original's KV cache
(its activations stay in the model's dtype; only the matrix products are int8).

Import this module lazily: it needs torch at import time.
"""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any

import torch

__all__ = ["Int8Linear", "int8_draft", "supports_int8_draft"]


class Int8Linear(torch.nn.Module):
    """A linear layer with int8 weights (per-output-row scales) and bf16 matrix products.

    Inputs and outputs keep their dtype; only the product runs in bf16 x int8.

    Example:
        >>> layer = Int8Linear(torch.nn.Linear(8, 4))
        >>> layer(torch.randn(2, 8)).shape
        torch.Size([2, 4])

    """

    qweight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", quantized.contiguous())
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias: torch.Tensor | None = (
            None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        )
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x @ W.T + b`` with ``W`` dequantized on the fly (bf16 accumulation)."""
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, self.qweight, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def supports_int8_draft(model: Any) -> bool:
    """Whether :func:`int8_draft` can serve ``model``: on CPU, with torch's int8 kernel.

    Example:
        >>> supports_int8_draft(torch.nn.Linear(2, 2))
        True

    """
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        parameter = next(model.parameters())
    except StopIteration:
        return False
    return parameter.device.type == "cpu" and parameter.dtype in (
        torch.float32,
        torch.bfloat16,
        torch.float16,
    )


_drafts: weakref.WeakKeyDictionary[Any, torch.nn.Module] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def int8_draft(model: Any) -> torch.nn.Module:
    """Return the int8 draft of ``model``, building it on first use (then cached per model).

    The draft is built from the weights as they are on the first call. After
    changing the weights in place (training), load a new model object to get a
    fresh draft; a stale one never changes the output of speculative decoding,
    only its speed.

    Args:
        model: A ``transformers`` causal LM on CPU.

    Returns:
        A module with the model's interface whose linear layers are :class:`Int8Linear`.

    Raises:
        ValueError: If the model is not on CPU or torch lacks the int8 kernel.

    Example:
        >>> draft = int8_draft(model)  # doctest: +SKIP
        >>> draft(input_ids=ids).logits.shape == model(input_ids=ids).logits.shape  # doctest: +SKIP
        True

    """
    if not supports_int8_draft(model):
        parameter = next(iter(model.parameters()), None)
        where = "no parameters" if parameter is None else f"{parameter.device} {parameter.dtype}"
        msg = (
            f"The int8 draft needs a model on CPU in float32, bfloat16 or float16 and "
            f"torch._weight_int8pack_mm (torch >= 2.3); got {where}. Use draft='lookup' instead."
        )
        raise ValueError(msg)
    with _lock:
        draft = _drafts.get(model)
        if draft is None:
            draft = _drafts[model] = _build(model)
    return draft


def _build(model: Any) -> torch.nn.Module:
    # Sharing every parameter through the memo makes the copy nearly free: only the
    # module objects are new, and their linear layers are then swapped for int8 ones.
    shared: dict[int, Any] = {id(p): p for p in model.parameters()}
    shared.update({id(b): b for b in model.buffers()})
    draft: torch.nn.Module = copy.deepcopy(model, memo=shared)
    _quantize_children(draft)
    return draft.eval()


def _quantize_children(parent: torch.nn.Module) -> None:
    for name, child in list(parent.named_children()):
        linear = child if type(child) is torch.nn.Linear else _merged_lora(child)
        if linear is not None:
            setattr(parent, name, Int8Linear(linear))
        else:
            _quantize_children(child)


def _merged_lora(module: torch.nn.Module) -> torch.nn.Linear | None:
    """Fold a peft LoRA layer into one plain linear layer (None for anything else).

    The draft of an unmerged adapter is thus the merged model in int8.
    """
    base = getattr(module, "base_layer", None)
    delta = getattr(module, "get_delta_weight", None)
    if type(base) is not torch.nn.Linear or not callable(delta):
        return None
    weight = base.weight.detach().float().clone()
    if not getattr(module, "merged", False) and not getattr(module, "disable_adapters", False):
        for adapter in getattr(module, "active_adapters", []):
            if adapter in getattr(module, "lora_A", {}):
                weight += delta(adapter).float()
    merged = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
    merged.weight = torch.nn.Parameter(weight, requires_grad=False)
    if base.bias is not None:
        merged.bias = base.bias
    return merged
