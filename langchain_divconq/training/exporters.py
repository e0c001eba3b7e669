"""Export traces as fine-tuning files: TRL JSONL, OpenAI fine-tuning JSONL, a ``datasets.Dataset``.

Each writes the prompt/completion pairs of one distillation variant, built by
:func:`~langchain_divconq.training.dataset.select_examples` with the prompts of
:mod:`langchain_divconq.prompts`. Files are replaced whole (written to a
temporary name, then renamed).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from langchain_divconq.jsonl import write_jsonl
from langchain_divconq.tracing.trace import Trace
from langchain_divconq.training.dataset import select_examples

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["export_openai_jsonl", "export_trl_jsonl", "to_dataset"]


def _examples(traces: Iterable[Trace], variant: str, **options: Any) -> list[dict[str, Any]]:
    return select_examples(traces, variant=variant, **options)


def export_trl_jsonl(
    traces: Iterable[Trace], path: str | os.PathLike[str], *, variant: str = "SD-T", **options: Any
) -> int:
    """Write a variant's pairs as TRL conversational prompt/completion JSONL.

    Each line is ``{"prompt": [messages], "completion": [assistant message],
    "question", "trace_id"}``, loadable with ``datasets.load_dataset("json", ...)``
    for ``trl.SFTTrainer``.

    Args:
        traces: Traces (a store, or a list).
        path: The output file (replaced whole).
        variant: ``SD-T``, ``SD-R`` (decomposer) or ``SE-T``, ``SE-A`` (solver).
        **options: ``max_sub_questions=``, ``dedup=`` as in ``select_examples``.

    Returns:
        The number of lines written.

    Example:
        >>> store = open_store("traces.jsonl")  # doctest: +SKIP
        >>> export_trl_jsonl(store, "sd-r.jsonl", variant="SD-R")  # doctest: +SKIP
        1873

    """
    return write_jsonl(path, _examples(traces, variant, **options))


def export_openai_jsonl(
    traces: Iterable[Trace], path: str | os.PathLike[str], *, variant: str = "SD-T", **options: Any
) -> int:
    """Write a variant's pairs as OpenAI fine-tuning JSONL (``{"messages": [...]}``).

    Example:
        >>> export_openai_jsonl(traces, "ft.jsonl", variant="SD-T")  # doctest: +SKIP
        7473

    """
    rows = (
        {"messages": [*row["prompt"], *row["completion"]]}
        for row in _examples(traces, variant, **options)
    )
    return write_jsonl(path, rows)


def to_dataset(traces: Iterable[Trace], *, variant: str = "SD-T", **options: Any) -> Dataset:
    """Return a variant's pairs as a ``datasets.Dataset`` (needs the ``train`` extra).

    Example:
        >>> to_dataset(traces, variant="SD-R").column_names  # doctest: +SKIP
        ['prompt', 'completion', 'question', 'trace_id']

    """
    try:
        from datasets import Dataset
    except ImportError as exc:
        msg = "to_dataset needs the 'datasets' package: pip install 'langchain-divconq[train]'."
        raise ImportError(msg) from exc
    return Dataset.from_list(_examples(traces, variant, **options))
