"""langchain-divconq: a small local decomposer and any chat model as the solver.

Importing this package is light: it needs only langchain-core and pydantic.
The local model (``langchain_divconq.local``) and the training subpackage import
torch and transformers lazily, when they are used.

The parts live in folders: ``local/`` (the local chat model, its loaders and the
decoding engine), ``tracing/``, ``tasks/``, ``evaluation/``, ``serving/``,
``training/`` and ``cli/``; ``chain.py`` and ``prompts.py`` are the face.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from langchain_divconq import _moved
from langchain_divconq.chain import (
    DivConqChain,
    create_divconq_chain,
    create_single_stage_chain,
)
from langchain_divconq.prompts import extract_answer, parse_sub_questions

_moved.install()

if TYPE_CHECKING:
    from langchain_divconq.tracing.recorder import TraceRecorder

__version__ = "0.1.0"

__all__ = [
    "DivConqChain",
    "TraceRecorder",
    "__version__",
    "create_divconq_chain",
    "create_single_stage_chain",
    "extract_answer",
    "parse_sub_questions",
]

_LAZY = {"TraceRecorder": "langchain_divconq.tracing.recorder"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    msg = f"module 'langchain_divconq' has no attribute {name!r}"
    raise AttributeError(msg)
