"""Training datasets from traces: the paper's four distillation variants.

Each trace becomes one prompt/completion pair in TRL's conversational format
(``{"prompt": [messages], "completion": [assistant message]}``). The prompt is
built by :mod:`langchain_divconq.prompts`, the same functions the chain calls at
inference, so a distilled model is trained on exactly what it will be sent.

Variants (Wu et al., 2024):

* ``SD-T``: student decomposer on every teacher decomposition.
* ``SD-R``: student decomposer on decompositions whose run answered correctly.
* ``SE-T``: student solver on every teacher solution.
* ``SE-A``: student solver on teacher solutions whose final answer is replaced
  by the gold one.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import BaseMessage, convert_to_openai_messages

from langchain_divconq.prompts import (
    ANSWER_MARKER,
    DEFAULT_MAX_SUB_QUESTIONS,
    decomposer_messages,
    format_sub_questions,
    solver_messages,
)
from langchain_divconq.tracing.trace import Trace

if TYPE_CHECKING:
    from datasets import DatasetDict

__all__ = [
    "PARTS",
    "VARIANTS",
    "Part",
    "Variant",
    "build_dataset",
    "dataset_hash",
    "select_examples",
    "with_gold_answer",
]

Part = Literal["decomposer", "solver"]
Variant = Literal["SD-T", "SD-R", "SE-T", "SE-A"]

VARIANTS: dict[str, str] = {
    "SD-T": "decomposer",
    "SD-R": "decomposer",
    "SE-T": "solver",
    "SE-A": "solver",
}
"""Each variant and the part (node) it trains."""

PARTS = ("decomposer", "solver")
"""The two nodes a student can replace."""


def _openai(messages: list[BaseMessage]) -> list[dict[str, str]]:
    converted = convert_to_openai_messages(messages)
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in converted]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


_MARKER_LINE = re.compile(re.escape(ANSWER_MARKER) + r".*$", re.IGNORECASE | re.MULTILINE)


def with_gold_answer(solution: str, reference: str) -> str:
    r"""Replace the final answer of a solution by the gold one (the SE-A variant).

    The text after the last answer marker is replaced; a solution without a
    marker gets a final marker line appended.

    Example:
        >>> with_gold_answer("2 + 2 = 5.\\nThe answer is: 5", "4")
        '2 + 2 = 5.\\nThe answer is: 4'

    """
    matches = list(_MARKER_LINE.finditer(solution))
    gold = f"{ANSWER_MARKER} {reference.strip()}"
    if not matches:
        return f"{solution.rstrip()}\n{gold}"
    last = matches[-1]
    return solution[: last.start()] + gold + solution[last.end() :]


def _has_decomposition(trace: Trace) -> bool:
    if trace.error:
        return False
    if trace.sub_questions:
        return True
    # An explicit "no decomposition needed" from the teacher is a decomposition too.
    return trace.decomposer is not None and trace.decomposer.output is not None


def _example(
    trace: Trace, part: str, variant: str, max_sub_questions: int
) -> dict[str, Any] | None:
    """Turn one trace into a prompt/completion pair, or ``None`` when the variant skips it."""
    if part == "decomposer":
        if not _has_decomposition(trace):
            return None
        if variant == "SD-R" and trace.correct is not True:
            return None
        prompt = decomposer_messages(
            trace.question, trace.context, max_sub_questions=max_sub_questions
        )
        completion = format_sub_questions(trace.sub_questions[:max_sub_questions])
    else:
        if trace.error or not trace.solution:
            return None
        solution = trace.solution
        if variant == "SE-A":
            if not trace.reference:
                return None
            solution = with_gold_answer(solution, trace.reference)
        prompt = solver_messages(trace.question, trace.sub_questions, trace.context)
        completion = solution.strip()
    return {
        "prompt": _openai(prompt),
        "completion": _assistant(completion),
        "question": trace.question,
        "trace_id": trace.trace_id,
    }


def select_examples(
    traces: Iterable[Trace],
    *,
    variant: str = "SD-T",
    part: str | None = None,
    max_sub_questions: int = DEFAULT_MAX_SUB_QUESTIONS,
    dedup: bool = True,
) -> list[dict[str, Any]]:
    """Return the prompt/completion pairs a variant trains on, as plain dicts.

    This is :func:`build_dataset` without the ``datasets`` dependency and the split.

    Example:
        >>> t = Trace(question="Q?", sub_questions=["A?"], score=0.0)
        >>> len(select_examples([t], variant="SD-T")), len(select_examples([t], variant="SD-R"))
        (1, 0)

    """
    part = _check_part(variant, part)
    if max_sub_questions < 1:
        msg = f"max_sub_questions must be >= 1, got {max_sub_questions}."
        raise ValueError(msg)
    examples: list[dict[str, Any]] = []
    seen: set[str] = set()
    for trace in traces:
        example = _example(trace, part, variant, max_sub_questions)
        if example is None:
            continue
        if dedup:
            key = json.dumps([example["prompt"], example["completion"]], sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
        examples.append(example)
    return examples


def _check_part(variant: str, part: str | None) -> str:
    if variant not in VARIANTS:
        msg = f"Unknown variant {variant!r}; use one of {sorted(VARIANTS)}."
        raise ValueError(msg)
    expected = VARIANTS[variant]
    if part is not None and part != expected:
        msg = (
            f"Variant {variant!r} trains the {expected}, but part={part!r} was given. "
            f"Use part={expected!r} or leave part unset."
        )
        raise ValueError(msg)
    return expected


def _split(
    examples: list[dict[str, Any]], val_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split by question, so that no question is in both splits."""
    questions = sorted({e["question"] for e in examples})
    random.Random(seed).shuffle(questions)
    n_val = math.ceil(len(questions) * val_fraction) if val_fraction > 0 else 0
    if val_fraction > 0 and len(questions) > 1:
        n_val = min(max(n_val, 1), len(questions) - 1)
    held_out = set(questions[:n_val])
    train = [e for e in examples if e["question"] not in held_out]
    val = [e for e in examples if e["question"] in held_out]
    # A stable, seeded order that does not group an example with its duplicates.
    random.Random(seed + 1).shuffle(train)
    return train, val


def build_dataset(
    traces: Iterable[Trace],
    *,
    part: Part | None = None,
    variant: Variant = "SD-T",
    val_fraction: float = 0.05,
    seed: int = 0,
    dedup: bool = True,
    max_sub_questions: int = DEFAULT_MAX_SUB_QUESTIONS,
    max_examples: int | None = None,
) -> DatasetDict:
    r"""Build a TRL prompt/completion dataset from traces for one distillation variant.

    Args:
        traces: Recorded or imported traces (for example a ``JsonlTraceStore``).
        part: ``"decomposer"`` or ``"solver"``; inferred from ``variant`` when unset.
        variant: ``"SD-T"``, ``"SD-R"``, ``"SE-T"`` or ``"SE-A"``.
        val_fraction: Share of questions held out as the ``validation`` split;
            ``0`` means no validation split.
        seed: Seed of the split and the shuffle.
        dedup: Drop repeated prompt/completion pairs.
        max_sub_questions: Sub-questions kept per decomposition (the prompt says so too).
        max_examples: Keep at most this many training examples (after the split).

    Returns:
        A ``DatasetDict`` with ``train`` (and ``validation``) splits whose rows have
        ``prompt`` and ``completion`` message lists plus ``question`` and ``trace_id``.

    Example:
        >>> t = Trace(question="Tom has 3 bags of 4 apples. How many?",
        ...           sub_questions=["How many bags?", "How many apples per bag?"])
        >>> ds = build_dataset([t], variant="SD-T", val_fraction=0)
        >>> ds["train"][0]["completion"][0]["content"]
        'How many bags?\\nHow many apples per bag?'

    """
    try:
        from datasets import Dataset, DatasetDict
    except ImportError as exc:
        msg = "build_dataset needs the 'train' extra: pip install 'langchain-divconq[train]'."
        raise ImportError(msg) from exc
    if not 0 <= val_fraction < 1:
        msg = f"val_fraction must be in [0, 1), got {val_fraction}."
        raise ValueError(msg)
    if max_examples is not None and max_examples < 1:
        msg = f"max_examples must be >= 1 or None, got {max_examples}."
        raise ValueError(msg)
    examples = select_examples(
        traces,
        variant=variant,
        part=part,
        max_sub_questions=max_sub_questions,
        dedup=dedup,
    )
    if not examples:
        msg = (
            f"No trace qualifies for variant {variant!r}. SD-R needs scored, correct runs; "
            "SE-A needs traces with a reference answer; all need a decomposition or a solution."
        )
        raise ValueError(msg)
    train, val = _split(examples, val_fraction, seed)
    if max_examples is not None:
        train = train[:max_examples]
    splits = {"train": Dataset.from_list(train)}
    if val:
        splits["validation"] = Dataset.from_list(val)
    return DatasetDict(splits)


def dataset_hash(rows: Iterable[dict[str, Any]]) -> str:
    """Return a sha256 over the prompt/completion pairs, in order (for the adapter metadata)."""
    digest = hashlib.sha256()
    for row in rows:
        pair = [row["prompt"], row["completion"]]
        digest.update(json.dumps(pair, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
