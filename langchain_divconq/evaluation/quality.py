"""Decomposition quality: a decomposer's sub-questions against gold ones (GSM8K, StrategyQA).

For each question the decomposer gets the very prompt the chain sends
(:func:`~langchain_divconq.prompts.decomposer_messages`) and its text is parsed
with :func:`~langchain_divconq.prompts.parse_sub_questions`. Reported:

* **parse rate**: share of outputs with 1..N well-formed sub-questions;
* **no-decomposition rate**: share that parsed to none (the sentinel, or no question);
* **count match**: share where the count equals ``min(#gold, N)`` (gold lists
  longer than the cap N cannot be matched in full);
* **similarity**: for each gold sub-question, the best token F1 and the best
  ROUGE-L F-measure over the predicted ones, averaged over gold sub-questions and
  then over questions (a question with no prediction scores 0). Tokens are
  lowercased words and numbers; StrategyQA's ``#1``-style back-references are dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, Field

from langchain_divconq.prompts import decomposer_messages, message_text, parse_sub_questions
from langchain_divconq.tasks import Task

__all__ = [
    "DecompositionQuality",
    "DecompositionRecord",
    "decomposition_quality",
    "quality_from_outputs",
    "rouge_l",
    "similarity_tokens",
    "token_f1",
]

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_BACKREF = re.compile(r"#\d+")


def similarity_tokens(text: str) -> list[str]:
    """Lowercased word/number tokens, without ``#k`` back-references.

    Example:
        >>> similarity_tokens("Is #1 larger than Bob's 12?")
        ['is', 'larger', 'than', "bob's", '12']

    """
    return _TOKEN.findall(_BACKREF.sub(" ", text.lower()))


def token_f1(predicted: str, gold: str) -> float:
    """Bag-of-tokens F1 of two texts (SQuAD style; 0 when either is empty).

    Example:
        >>> round(token_f1("How many clips in May?", "How many clips did she sell in May?"), 3)
        0.769

    """
    p, g = Counter(similarity_tokens(predicted)), Counter(similarity_tokens(gold))
    common = sum((p & g).values())
    if not common:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(g.values())
    return 2 * precision * recall / (precision + recall)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(predicted: str, gold: str) -> float:
    """ROUGE-L F-measure (longest common token subsequence, beta = 1).

    Example:
        >>> round(rouge_l("in may how many clips", "how many clips in may"), 3)
        0.6

    """
    p, g = similarity_tokens(predicted), similarity_tokens(gold)
    lcs = _lcs(p, g)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(g)
    return 2 * precision * recall / (precision + recall)


class DecompositionRecord(BaseModel):
    """One question's decomposition next to the gold one."""

    id: str = Field(description="Example id.")
    question: str = Field(description="The question.")
    gold: list[str] = Field(description="Gold sub-questions.")
    output: str | None = Field(default=None, description="The decomposer's raw text.")
    predicted: list[str] = Field(default_factory=list, description="Parsed sub-questions.")
    parsed: bool = Field(default=False, description="1..N sub-questions were parsed.")
    count_match: bool = Field(default=False, description="len(predicted) == min(len(gold), N).")
    token_f1: float = Field(default=0.0, description="Mean best-match token F1 over gold.")
    rouge_l: float = Field(default=0.0, description="Mean best-match ROUGE-L over gold.")
    error: str | None = Field(default=None, description="Why the call failed, if it did.")


class DecompositionQuality(BaseModel):
    """Decomposition quality of one decomposer on one task."""

    task: str = Field(description="Task name.")
    split: str = Field(description="Split name.")
    n: int = Field(description="Questions with gold sub-questions that were evaluated.")
    max_sub_questions: int = Field(description="The cap N given to the decomposer and parser.")
    parse_rate: float = Field(description="Share of outputs with 1..N sub-questions.")
    no_decomposition_rate: float = Field(description="Share of outputs with no sub-question.")
    count_match: float = Field(description="Share with len(predicted) == min(len(gold), N).")
    mean_predicted: float = Field(description="Mean number of parsed sub-questions.")
    mean_gold: float = Field(description="Mean number of gold sub-questions.")
    token_f1: float = Field(description="Mean best-match token F1 (see the module docstring).")
    rouge_l: float = Field(description="Mean best-match ROUGE-L F-measure.")
    failures: int = Field(description="Decomposer calls that raised (scored as unparsed).")
    records: list[DecompositionRecord] = Field(default_factory=list, description="Per question.")


def _score(record: DecompositionRecord, max_sub_questions: int) -> DecompositionRecord:
    gold, predicted = record.gold, record.predicted
    best_f1 = [max((token_f1(p, g) for p in predicted), default=0.0) for g in gold]
    best_rl = [max((rouge_l(p, g) for p in predicted), default=0.0) for g in gold]
    return record.model_copy(
        update={
            "parsed": 1 <= len(predicted) <= max_sub_questions,
            "count_match": len(predicted) == min(len(gold), max_sub_questions),
            "token_f1": sum(best_f1) / len(gold),
            "rouge_l": sum(best_rl) / len(gold),
        }
    )


def decomposition_quality(
    decomposer: Runnable[Any, Any],
    task: Task,
    *,
    limit: int | None = None,
    max_sub_questions: int = 3,
    max_concurrency: int = 16,
    batch_size: int = 16,
    progress: bool = False,
    config: RunnableConfig | None = None,
) -> DecompositionQuality:
    """Compare a decomposer's sub-questions with the task's gold sub-questions.

    Args:
        decomposer: Any chat model (or runnable taking messages), e.g.
            :func:`~langchain_divconq.local.load_decomposer` or a teacher model.
        task: A task whose examples carry gold ``sub_questions`` (GSM8K, StrategyQA);
            examples without them are skipped.
        limit: Use the first ``limit`` examples with gold sub-questions (file order).
        max_sub_questions: The cap N in the prompt and the parser.
        max_concurrency: Most calls in flight (API models); at least ``batch_size``
            keeps a local model's batched generation.
        batch_size: Questions sent to ``decomposer.batch`` at once.
        progress: Show a tqdm progress bar.
        config: Extra runnable config for every call.

    Returns:
        The :class:`DecompositionQuality`, with one record per question.

    Example:
        >>> from langchain_divconq.tasks import load_task
        >>> q = decomposition_quality(load_decomposer(), load_task("gsm8k", split="test"),
        ...                           limit=50)  # doctest: +SKIP
        >>> q.parse_rate, q.token_f1  # doctest: +SKIP
        (0.96, 0.41)

    """
    examples = [e for e in task.examples if e.sub_questions]
    if not examples:
        msg = (
            f"Task {task.name!r} ({task.split}) has no gold sub-questions; use gsm8k "
            "(Socratic) or strategyqa."
        )
        raise ValueError(msg)
    examples = examples[:limit] if limit is not None else examples
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(examples), desc=f"decompose {task.name}", unit="q")
        except ImportError:
            bar = None
    outputs: dict[str, str | BaseException] = {}
    run_config: RunnableConfig = {**(config or {})}
    if batch_size > max_concurrency:
        # Only when needed: the key makes a local model give up batched generation.
        run_config["max_concurrency"] = max_concurrency
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = [
            decomposer_messages(e.question, e.context, max_sub_questions=max_sub_questions)
            for e in chunk
        ]
        replies = decomposer.batch(prompts, run_config, return_exceptions=True)
        for example, reply in zip(chunk, replies, strict=True):
            outputs[example.id] = reply if isinstance(reply, BaseException) else message_text(reply)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return quality_from_outputs(task, outputs, max_sub_questions=max_sub_questions)


def quality_from_outputs(
    task: Task,
    outputs: Mapping[str, str | BaseException | None],
    *,
    max_sub_questions: int = 3,
) -> DecompositionQuality:
    """Score decomposer texts already produced (e.g. an evaluation's records), by example id.

    Examples of ``task`` without gold sub-questions, or missing from ``outputs``,
    are skipped; an exception or None counts as a failed call.

    Example:
        >>> from langchain_divconq.tasks import Example, GSM8KTask
        >>> task = GSM8KTask(name="gsm8k", split="test", examples=[
        ...     Example(id="0", question="q", answer="1", sub_questions=["How many?"])])
        >>> quality_from_outputs(task, {"0": "1. How many?"}).token_f1
        1.0

    """
    records: list[DecompositionRecord] = []
    for example in task.examples:
        if not example.sub_questions or example.id not in outputs:
            continue
        output = outputs[example.id]
        record = DecompositionRecord(
            id=example.id, question=example.question, gold=example.sub_questions
        )
        if isinstance(output, BaseException) or output is None:
            error = "no output" if output is None else f"{type(output).__name__}: {output}"
            record = record.model_copy(update={"error": error})
        else:
            predicted = parse_sub_questions(output, max_sub_questions)
            record = record.model_copy(update={"output": output, "predicted": predicted})
        records.append(_score(record, max_sub_questions))
    if not records:
        msg = (
            f"None of the outputs matches an example of {task.name!r} with gold "
            "sub-questions; pass outputs keyed by Example.id."
        )
        raise ValueError(msg)
    n = len(records)
    return DecompositionQuality(
        task=task.name,
        split=task.split,
        n=n,
        max_sub_questions=max_sub_questions,
        parse_rate=sum(r.parsed for r in records) / n,
        no_decomposition_rate=sum(r.error is None and not r.predicted for r in records) / n,
        count_match=sum(r.count_match for r in records) / n,
        mean_predicted=sum(len(r.predicted) for r in records) / n,
        mean_gold=sum(len(r.gold) for r in records) / n,
        token_f1=sum(r.token_f1 for r in records) / n,
        rouge_l=sum(r.rouge_l for r in records) / n,
        failures=sum(r.error is not None for r in records),
        records=records,
    )
