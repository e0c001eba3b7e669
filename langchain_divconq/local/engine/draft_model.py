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
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from langchain_divconq.local.engine.rows import cache_kwarg

__all__ = [
    "Drafter",
    "Int8Linear",
    "LlamaInt8Drafter",
    "ModuleDrafter",
    "drafter_for",
    "forget_drafts",
    "int8_draft",
    "supports_int8_draft",
]


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

    The draft is built from the weights as they are on the first call.
    :func:`~langchain_divconq.generation.generate_greedy` notices when the
    weights change afterwards (training, merging an adapter) and rebuilds it; a
    stale draft would never change the output anyway, only the speed.

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
    _check_supported(model)
    with _lock:
        draft = _drafts.get(model)
        if draft is None:
            draft = _drafts[model] = _build(model)
    return draft


def _check_supported(model: Any) -> None:
    if not supports_int8_draft(model):
        parameter = next(iter(model.parameters()), None)
        where = "no parameters" if parameter is None else f"{parameter.device} {parameter.dtype}"
        msg = (
            f"The int8 draft needs a model on CPU in float32, bfloat16 or float16 and "
            f"torch._weight_int8pack_mm (torch >= 2.3); got {where}. Use draft='lookup' instead."
        )
        raise ValueError(msg)


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


# ---------------------------------------------------------------------------- drafters


class Drafter(Protocol):
    """Greedy next-token guesses that append their keys and values to a shared cache."""

    def greedy(self, tokens: Sequence[int], cache: Any) -> list[int]:
        """Feed ``tokens`` after what ``cache`` holds; return the argmax after each of them."""
        ...


class ModuleDrafter:
    """Any model's int8 draft (:func:`int8_draft`), called through its ``forward``."""

    def __init__(self, module: torch.nn.Module) -> None:

        self.module = module
        self._cache_kwarg = cache_kwarg(module)

    def greedy(self, tokens: Sequence[int], cache: Any) -> list[int]:
        """Feed ``tokens`` after what ``cache`` holds; return the argmax after each of them."""
        ids = torch.tensor([list(tokens)])
        out = self.module(
            input_ids=ids, **{self._cache_kwarg: cache}, use_cache=True, logits_to_keep=len(ids[0])
        )
        best: list[int] = out.logits[0].argmax(dim=-1).tolist()
        return best


class LlamaInt8Drafter:
    """A lean int8 forward pass for Llama-style decoders (Llama, Qwen2, Mistral).

    The same arithmetic as :func:`int8_draft`'s copy, written out with the query,
    key and value products fused into one int8 product and the gate and up
    products into another, and without the per-module call overhead: a one-token
    step of SmolLM2-135M takes about 8.5 ms here against 11.3 ms for the copy
    (2-core EPYC), most of it the int8 products themselves.

    Example:
        >>> LlamaInt8Drafter(model).greedy([42], cache)  # doctest: +SKIP
        [17]

    """

    MODEL_TYPES = frozenset({"llama", "qwen2", "mistral"})
    """Architectures whose decoder layers this forward pass reproduces."""

    def __init__(self, model: Any) -> None:
        if not self.fits(model):
            msg = (
                f"LlamaInt8Drafter needs a Llama-style model ({sorted(self.MODEL_TYPES)}); got "
                f"{type(model).__name__}. Use ModuleDrafter(int8_draft(model)) instead."
            )
            raise ValueError(msg)
        base, config = model.model, model.config
        self.embed = base.embed_tokens.weight
        self.rotary = base.rotary_emb
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = [_LlamaLayer(layer) for layer in base.layers]
        self.norm = (base.norm.weight, float(base.norm.variance_epsilon))
        self.head = Int8Linear(model.lm_head)

    @classmethod
    def fits(cls, model: Any) -> bool:
        """Whether ``model`` has exactly the layout this forward pass assumes."""
        config = getattr(model, "config", None)
        base = getattr(model, "model", None)
        if getattr(config, "model_type", None) not in cls.MODEL_TYPES or base is None:
            return False
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            return False
        if type(getattr(model, "lm_head", None)) is not torch.nn.Linear:
            return False
        needed = ("embed_tokens", "rotary_emb", "norm", "layers")
        return all(hasattr(base, n) for n in needed) and all(
            _LlamaLayer.fits(layer) for layer in base.layers
        )

    def greedy(self, tokens: Sequence[int], cache: Any) -> list[int]:
        """Feed ``tokens`` after what ``cache`` holds; return the argmax after each of them."""
        n = len(tokens)
        past = cache.get_seq_length()
        x = self.embed[torch.tensor(list(tokens))]
        cos, sin = self.rotary(x[None], torch.arange(past, past + n)[None])
        rope = (cos[:, None], sin[:, None])  # broadcast over heads: [1, 1, n, head_dim]
        # Row i sees the cache and new rows 0..i.
        mask = torch.ones(n, past + n, dtype=torch.bool).tril(past) if n > 1 else None
        for index, layer in enumerate(self.layers):
            x = layer(x, index, cache, rope, mask, self.heads, self.kv_heads, self.head_dim)
        weight, eps = self.norm
        best: list[int] = self.head(_rms(x, weight, eps)).argmax(dim=-1).tolist()
        return best


class _LlamaLayer:
    """One decoder layer's int8 products and shared norm weights."""

    def __init__(self, layer: Any) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1 = (layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon))
        self.norm2 = (
            layer.post_attention_layernorm.weight,
            float(layer.post_attention_layernorm.variance_epsilon),
        )
        self.qkv = _fused(attn.q_proj, attn.k_proj, attn.v_proj)
        self.out = Int8Linear(attn.o_proj)
        self.gate_up = _fused(mlp.gate_proj, mlp.up_proj)
        self.down = Int8Linear(mlp.down_proj)
        self.inner = mlp.gate_proj.out_features
        self.scaling = float(attn.scaling)

    @staticmethod
    def fits(layer: Any) -> bool:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        linears = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        norms = [getattr(layer, n, None) for n in ("input_layernorm", "post_attention_layernorm")]
        return (
            all(type(m) is torch.nn.Linear for m in linears)
            and all(hasattr(m, "variance_epsilon") for m in norms)
            and not hasattr(attn, "q_norm")  # Qwen3-style per-head norms are not handled
            and hasattr(attn, "scaling")
            and type(getattr(mlp, "act_fn", None)).__name__ in ("SiLU", "SiLUActivation")
        )

    def __call__(
        self,
        x: torch.Tensor,
        index: int,
        cache: Any,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        heads: int,
        kv_heads: int,
        head_dim: int,
    ) -> torch.Tensor:
        n = x.shape[0]
        fused = self.qkv(_rms(x, *self.norm1))
        q_width, kv_width = heads * head_dim, kv_heads * head_dim
        # Queries and keys get the rotary embedding together: one set of ops, not two.
        qk = fused[:, : q_width + kv_width].view(n, heads + kv_heads, head_dim).transpose(0, 1)
        qk = _rotate(qk[None], *rope)
        values = fused[:, q_width + kv_width :].view(n, kv_heads, head_dim).transpose(0, 1)[None]
        keys, values = cache.update(qk[:, heads:], values, index)
        attended = F.scaled_dot_product_attention(
            qk[:, :heads],
            keys,
            values,
            attn_mask=mask,
            scale=self.scaling,
            enable_gqa=heads != kv_heads,
        )
        x = x + self.out(attended[0].transpose(0, 1).reshape(n, q_width))
        gate_up = self.gate_up(_rms(x, *self.norm2))
        return x + self.down(F.silu(gate_up[:, : self.inner]) * gate_up[:, self.inner :])


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _fused(*linears: torch.nn.Linear) -> Int8Linear:
    """One int8 layer computing several linear layers that read the same input."""
    has_bias = linears[0].bias is not None
    fused = torch.nn.Linear(
        linears[0].in_features, sum(m.out_features for m in linears), bias=has_bias
    )
    with torch.no_grad():
        fused.weight = torch.nn.Parameter(torch.cat([m.weight.detach() for m in linears]))
        if has_bias:
            biases = [m.bias.detach() if m.bias is not None else None for m in linears]
            fused.bias = torch.nn.Parameter(
                torch.cat([b if b is not None else torch.zeros(m.out_features)
                           for b, m in zip(biases, linears, strict=True)])
            )  # fmt: skip
    return Int8Linear(fused)


_drafters: weakref.WeakKeyDictionary[Any, Drafter] = weakref.WeakKeyDictionary()


def drafter_for(model: Any) -> Drafter:
    """Return the int8 drafter of ``model`` (lean for Llama-style models), built once.

    Example:
        >>> drafter_for(model).greedy([42], cache)  # doctest: +SKIP
        [17]

    """
    _check_supported(model)
    with _lock:
        drafter = _drafters.get(model)
    if drafter is None:
        built: Drafter = (
            LlamaInt8Drafter(model)
            if LlamaInt8Drafter.fits(model)
            else ModuleDrafter(int8_draft(model))
        )
        with _lock:
            drafter = _drafters.setdefault(model, built)
    return drafter


def forget_drafts(model: Any) -> None:
    """Drop the cached int8 copy and drafter of ``model`` (after its weights changed).

    Example:
        >>> forget_drafts(model)  # doctest: +SKIP

    """
    with _lock:
        _drafts.pop(model, None)
        _drafters.pop(model, None)
