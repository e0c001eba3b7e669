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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import combinations, pairwise
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
    "NoExamplesError",
    "Part",
    "Variant",
    "build_dataset",
    "cap_sub_questions",
    "dataset_hash",
    "decomposer_example",
    "dedupe_sub_questions",
    "mix_examples",
    "resolve_back_references",
    "select_examples",
    "with_gold_answer",
]

Part = Literal["decomposer", "solver"]
Variant = Literal["SD-T", "SD-R", "SE-T", "SE-A"]
Keep = Literal["first", "spread"]

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


def dedupe_sub_questions(sub_questions: Sequence[str]) -> list[str]:
    """Drop repeated sub-questions (ignoring case and spacing), keeping the first of each.

    Example:
        >>> dedupe_sub_questions(["How many?", "how  many?", "Why?"])
        ['How many?', 'Why?']

    """
    seen: set[str] = set()
    kept: list[str] = []
    for question in sub_questions:
        key = " ".join(question.lower().split())
        if key and key not in seen:
            seen.add(key)
            kept.append(question)
    return kept


_BACK_REFERENCE = re.compile(r"#(\d+)")


def _references(question: str) -> set[int]:
    return {int(k) for k in _BACK_REFERENCE.findall(question)}


def _renumber(kept: list[str], chosen: Sequence[int]) -> list[str]:
    number = {old: new for new, old in enumerate(chosen, start=1)}
    return [_BACK_REFERENCE.sub(lambda m: f"#{number[int(m.group(1))]}", q) for q in kept]


def cap_sub_questions(
    sub_questions: Sequence[str], max_sub_questions: int, keep: Keep = "first"
) -> list[str]:
    """Keep at most ``max_sub_questions`` of a gold plan.

    ``keep="first"`` keeps the first ones. ``keep="spread"`` keeps the first and the
    last step and fills the rest evenly in between, so a long plan still starts
    from the given quantities and ends at the asked one. Plans with StrategyQA-style
    ``#k`` back-references are capped to a subset that keeps the last step and every
    step a kept one refers to, renumbering the references; when no such subset fits,
    the first ``max_sub_questions`` steps (a prefix is always closed, since steps only
    refer back).

    Example:
        >>> cap_sub_questions(["A?", "B?", "C?", "D?", "E?"], 3, keep="spread")
        ['A?', 'C?', 'E?']
        >>> cap_sub_questions(["X?", "Y?", "Z of #2?", "Is #3 big?"], 3, keep="spread")
        ['Y?', 'Z of #1?', 'Is #2 big?']

    """
    subs = list(sub_questions)
    if len(subs) <= max_sub_questions:
        return subs
    refs = [_references(q) for q in subs]
    if not any(refs):
        if keep == "first":
            return subs[:max_sub_questions]
        last = len(subs) - 1
        if max_sub_questions == 1:
            return [subs[last]]
        picks = sorted(
            {round(i * last / (max_sub_questions - 1)) for i in range(max_sub_questions)}
        )
        return [subs[i] for i in picks]
    # References: the kept steps must be closed under "refers to" and include the last step.
    last = len(subs)
    for size in range(max_sub_questions, 0, -1):
        candidates = [(*c, last) for c in combinations(range(1, last), size - 1)]
        if keep == "spread":
            candidates.sort(key=lambda c: -sum(b - a for a, b in pairwise(c)))
        for chosen in candidates:
            if all(refs[i - 1] <= set(chosen) for i in chosen):
                return _renumber([subs[i - 1] for i in chosen], chosen)
    # Steps only refer back, so the first ones are always a closed plan (its last step,
    # often the final comparison, is left to the solver).
    return subs[:max_sub_questions]


def resolve_back_references(
    sub_questions: Sequence[str], template: str = "the answer to question {k}"
) -> list[str]:
    """Replace StrategyQA-style ``#k`` back-references by words.

    The solver receives sub-questions as a numbered list, so "the answer to
    question 2" names a line it can see; a bare ``#2`` is notation the plan's
    reader has to guess. References to steps that do not exist are left as they are.

    Example:
        >>> resolve_back_references(["Who wrote X?", "When was #1 born?"])
        ['Who wrote X?', 'When was the answer to question 1 born?']

    """
    n = len(sub_questions)

    def words(match: re.Match[str]) -> str:
        k = int(match.group(1))
        return template.format(k=k) if 1 <= k <= n else match.group(0)

    return [" ".join(_BACK_REFERENCE.sub(words, q).split()) for q in sub_questions]


def decomposer_example(
    question: str,
    sub_questions: Sequence[str],
    *,
    context: str | None = None,
    max_sub_questions: int = DEFAULT_MAX_SUB_QUESTIONS,
    trace_id: str = "",
) -> dict[str, Any]:
    """One decomposer prompt/completion pair (no sub-questions: the NO_DECOMPOSITION target).

    Example:
        >>> decomposer_example("What is 2 + 2?", [])["completion"][0]["content"]
        'NO_SUBQUESTIONS'

    """
    prompt = decomposer_messages(question, context, max_sub_questions=max_sub_questions)
    return {
        "prompt": _openai(prompt),
        "completion": _assistant(format_sub_questions(list(sub_questions))),
        "question": question,
        "trace_id": trace_id,
    }


def mix_examples(
    strata: Mapping[str, Sequence[dict[str, Any]]],
    weights: Mapping[str, float],
    total: int,
    *,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Draw ``total`` examples from named strata in proportion to ``weights``.

    Each stratum is shuffled once and read in order; a stratum asked for more than
    it holds starts over (a smaller domain is repeated rather than drowned out).
    The strata are interleaved evenly, so every prefix of the result keeps the
    proportions: a run stopped early has still seen the intended mix. Each row
    gets a ``stratum`` field.

    Example:
        >>> mixed = mix_examples({"a": [{"x": 1}], "b": [{"x": 2}, {"x": 3}]},
        ...                      {"a": 0.5, "b": 0.5}, 4)
        >>> [row["stratum"] for row in mixed]
        ['a', 'b', 'a', 'b']

    """
    names = [name for name in strata if weights.get(name, 0) > 0]
    if total < 1 or not names:
        msg = "mix_examples needs total >= 1 and at least one stratum with a positive weight."
        raise ValueError(msg)
    if any(not strata[name] for name in names):
        msg = "Every stratum with a positive weight needs at least one example."
        raise ValueError(msg)
    weight_sum = sum(weights[name] for name in names)
    rng = random.Random(seed)
    orders = {name: rng.sample(range(len(strata[name])), len(strata[name])) for name in names}
    taken = dict.fromkeys(names, 0)
    mixed: list[dict[str, Any]] = []
    for step in range(1, total + 1):
        # The stratum furthest behind its share so far goes next (ties: first named).
        name = max(names, key=lambda s: step * weights[s] / weight_sum - taken[s])
        order = orders[name]
        row = strata[name][order[taken[name] % len(order)]]
        taken[name] += 1
        mixed.append({**row, "stratum": name})
    return mixed


def _example(
    trace: Trace, part: str, variant: str, max_sub_questions: int, keep: Keep = "first"
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
        capped = cap_sub_questions(
            dedupe_sub_questions(trace.sub_questions), max_sub_questions, keep
        )
        completion = format_sub_questions(capped)
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
    keep: Keep = "first",
) -> list[dict[str, Any]]:
    """Return the prompt/completion pairs a variant trains on, as plain dicts.

    This is :func:`build_dataset` without the ``datasets`` dependency and the split.
    Repeated sub-questions are dropped from a decomposition; longer ones are capped
    at ``max_sub_questions`` as :func:`cap_sub_questions` does with ``keep``.

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
        example = _example(trace, part, variant, max_sub_questions, keep)
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


class NoExamplesError(ValueError):
    """No trace gave a training example, so there is no dataset to write."""


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
    keep: Keep = "first",
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
        keep: Which sub-questions of a longer plan to keep (:func:`cap_sub_questions`).

    Returns:
        A ``DatasetDict`` with ``train`` (and ``validation``) splits whose rows have
        ``prompt`` and ``completion`` message lists plus ``question`` and ``trace_id``.

    Raises:
        NoExamplesError: No trace gave an example for the variant (a ``ValueError``).

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
    seen = 0

    def counted() -> Iterator[Trace]:
        nonlocal seen
        for trace in traces:
            seen += 1
            yield trace

    examples = select_examples(
        counted(),
        variant=variant,
        part=part,
        max_sub_questions=max_sub_questions,
        dedup=dedup,
        keep=keep,
    )
    if not examples:
        msg = f"No trace qualifies for variant {variant!r}: 0 of {seen} traces gave an example."
        if seen:
            msg += (
                " SD-R needs scored, correct runs; SE-A needs traces with a reference answer; "
                "all need a decomposition or a solution and no error."
            )
        raise NoExamplesError(msg)
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
