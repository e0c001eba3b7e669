"""Faster fp32 linear layers on CPU while the decoding engine runs.

``torch.nn.functional.linear`` on CPU calls MKL's GEMM (or GEMV for one row),
which repacks the weight matrix on every call. For the shapes of decoding (one
to a few dozen rows against a fixed weight) that repacking and the GEMV kernel
dominate. Measured on the 2-core EPYC with all of SmolLM2-135M's linear layers
(milliseconds, fp32, 2 threads):

=========  ======  ======  ======  ======  ======
rows       1       2       8       17      140
=========  ======  ======  ======  ======  ======
stock      31.8    63.2    45.5    60.7    213.2
oneDNN     16.1    16.5    18.0    21.7    89.9
=========  ======  ======  ======  ======  ======

The oneDNN row uses weights reordered once into oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, the same path torch.compile's CPU
"freezing" takes) and ``torch.ops.mkldnn._linear_pointwise``. It is plain fp32
arithmetic; results differ from MKL's only in rounding (max abs error against
fp64 3.5e-5 vs 2.0e-5 for MKL on a 576-wide product).

The cost is memory: the reordered copy of every fp32 linear weight is kept per
layer (about 540 MB for SmolLM2-135M, whose tied output layer is copied too),
and rebuilt when the weight changes. Without oneDNN, a fallback computes
``(W @ x.T).T`` for up to 16 rows (one row padded to two), which also beats the
stock kernels at those shapes.

Import this module lazily: it needs torch at import time.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["fast_cpu_linears", "forget_packed", "onednn_available"]

_lock = threading.Lock()
_active: dict[int, int] = {}
_packed: weakref.WeakKeyDictionary[torch.nn.Linear, tuple[tuple[int, int], torch.Tensor | None]] = (
    weakref.WeakKeyDictionary()
)


def onednn_available() -> bool:
    """Whether this torch build has the oneDNN packed-linear operators.

    Example:
        >>> isinstance(onednn_available(), bool)
        True

    """
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def _packed_weight(module: torch.nn.Linear) -> torch.Tensor | None:
    """Return the oneDNN copy of the layer's weight (None where oneDNN refused to reorder it)."""
    weight = module.weight
    stamp = (weight.data_ptr(), weight._version)
    entry = _packed.get(module)
    if entry is not None and entry[0] == stamp:
        return entry[1]
    with _lock:  # first use, or the weights changed since
        entry = _packed.get(module)
        if entry is None or entry[0] != stamp:
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
            except RuntimeError:  # a build or CPU without the kernel: stay on the fallback
                packed = None
            entry = _packed[module] = (stamp, packed)
    return entry[1]


def _onednn_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if module.weight.dtype != torch.float32 or x.dtype != torch.float32:
        return F.linear(x, module.weight, module.bias)
    packed = _packed_weight(module)
    if packed is None:
        return _transposed_linear(module, x)
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(flat, packed, module.bias, "none", [], "")
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _transposed_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    if module.weight.dtype != torch.float32 or flat.shape[0] > 16:
        return F.linear(x, module.weight, module.bias)
    if flat.shape[0] == 1:
        # Two rows stream the weights faster than MKL's one-row kernel; drop the copy.
        out = (module.weight @ flat.expand(2, -1).contiguous().t())[:, :1].t().contiguous()
    else:
        # Row-major output again: later ops (attention, norms) are slower on strided views.
        out = (module.weight @ flat.t()).t().contiguous()
    if module.bias is not None:
        out = out + module.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


def forget_packed(model: torch.nn.Module) -> None:
    """Drop the reordered weight copies of ``model``'s layers (rebuilt on next use).

    Needed after in-place changes that torch does not count, such as
    ``weight.data += delta`` (how peft merges a LoRA adapter).

    Example:
        >>> forget_packed(torch.nn.Linear(2, 2))

    """
    with _lock:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                _packed.pop(module, None)


@contextlib.contextmanager
def fast_cpu_linears(model: torch.nn.Module, onednn: bool | None = None) -> Iterator[None]:
    """Route the model's ``torch.nn.Linear`` layers through the faster kernels for a while.

    Reference-counted per model, so concurrent calls on one model are safe; the
    layers get their own ``forward`` back when the last call ends.

    Args:
        model: A model on CPU; layers that are not fp32 keep the stock kernel.
        onednn: Use oneDNN packed weights (None: when available), else the
            ``(W @ x.T).T`` fallback.

    Example:
        >>> with fast_cpu_linears(model):  # doctest: +SKIP
        ...     logits = model(input_ids=ids).logits

    """
    use_onednn = onednn_available() if onednn is None else onednn
    kernel = _onednn_linear if use_onednn else _transposed_linear
    key = id(model)
    with _lock:
        count = _active.get(key, 0)
        if count == 0:
            for module in model.modules():
                if type(module) is torch.nn.Linear and "forward" not in vars(module):
                    module.forward = functools.partial(kernel, module)  # type: ignore[method-assign]
                    module._divconq_fast = True  # type: ignore[assignment]
        _active[key] = count + 1
    try:
        yield
    finally:
        with _lock:
            _active[key] -= 1
            if _active[key] == 0:
                del _active[key]
                for module in model.modules():
                    if vars(module).pop("_divconq_fast", False):
                        del module.forward
