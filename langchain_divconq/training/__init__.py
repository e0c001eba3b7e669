"""Distillation: datasets from traces, and LoRA training of decomposers and solvers.

Needs the ``train`` extra (``pip install 'langchain-divconq[train]'``). Importing
this package is cheap: torch, transformers, TRL and datasets load only when a
function that needs them runs.

Example:
    >>> from langchain_divconq.training import DistillConfig, build_dataset, distill
    >>> ds = build_dataset(traces, variant="SD-R")  # doctest: +SKIP
    >>> folder = distill(DistillConfig(output_dir="runs/sd-r"), ds)  # doctest: +SKIP

"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_divconq.training.config import DistillConfig
    from langchain_divconq.training.dataset import (
        VARIANTS,
        build_dataset,
        select_examples,
        with_gold_answer,
    )
    from langchain_divconq.training.distillation import METADATA_FILE, distill, read_metadata

__all__ = [
    "METADATA_FILE",
    "VARIANTS",
    "DistillConfig",
    "build_dataset",
    "distill",
    "read_metadata",
    "select_examples",
    "with_gold_answer",
]

_WHERE = {
    "DistillConfig": "config",
    "VARIANTS": "dataset",
    "build_dataset": "dataset",
    "select_examples": "dataset",
    "with_gold_answer": "dataset",
    "METADATA_FILE": "distillation",
    "distill": "distillation",
    "read_metadata": "distillation",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
