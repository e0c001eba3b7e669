"""Decomposition quality: a decomposer's sub-questions against gold ones (GSM8K, StrategyQA).

For each question the decomposer gets the very prompt the chain sends
(:func:`~langchain_divconq.prompts.decomposer_messages`) and its text is parsed
with :func:`~langchain_divconq.prompts.parse_sub_questions`. Reported:

* **parse rate**: share of outputs with 1..N well-formed sub-questions;
* **well-formed rate**: share that is either such a plan or the sentinel
  :data:`~langchain_divconq.prompts.NO_DECOMPOSITION` (an output a chain can use as it is);
* **no-decomposition rate**: share that parsed to none (the sentinel, or no question);
* **repeat rate**: share of *raw* outputs in which a line repeats an earlier one
  (numbering, case, spacing and end punctuation ignored), before the parser drops it;
* **count match**: share where the count equals ``min(#gold, N)`` (gold lists
  longer than the cap N cannot be matched in full);
* **similarity**: for each gold sub-question, the best token F1 and the best
  ROUGE-L F-measure over the predicted ones, averaged over gold sub-questions and
  then over questions (a question with no prediction scores 0). Tokens are
  lowercased words and numbers; StrategyQA's ``#1``-style back-references are dropped.
  The mean comes with a 95% percentile bootstrap interval over questions.

:func:`trivial_plan` is the baseline every decomposer should beat: the question's
last sentence as the only sub-question. :func:`plan_stats` gives the gold-free
numbers (parse, well-formed, repeat and no-decomposition rates, mean count) for
tasks without gold sub-questions (SVAMP, MultiArith, Bamboogle, DROP).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, Field

from langchain_divconq.prompts import (
    NO_DECOMPOSITION,
    decomposer_messages,
    line_key,
    message_text,
    parse_sub_questions,
)
from langchain_divconq.secrets import scrub_text
from langchain_divconq.tasks import Example, Task

__all__ = [
    "FILLER_WORDS",
    "DecompositionQuality",
    "DecompositionRecord",
    "PlanStats",
    "bootstrap_ci",
    "content_free",
    "decomposer_outputs",
    "decomposition_quality",
    "has_repeated_line",
    "plan_stats",
    "quality_from_outputs",
    "refers_to_itself_or_later",
    "rouge_l",
    "similarity_tokens",
    "token_f1",
    "trivial_plan",
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


_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def has_repeated_line(text: str) -> bool:
    """Whether a non-empty line of ``text`` repeats an earlier one (numbering, case ignored).

    Example:
        >>> has_repeated_line("1. How many eggs?\\n2. how many eggs")
        True
        >>> has_repeated_line("How many eggs?\\nHow much money?")
        False

    """
    keys = [key for key in map(line_key, text.splitlines()) if key]
    return len(keys) != len(set(keys))


_POINTER = re.compile(
    r"(?i)(?:#\s*(\d+)|\b(?:sub-?question|question|step|part|answer)\s*(?:no\.?\s*|number\s*)?"
    r"#?(\d+)\b)"
)
FILLER_WORDS = {
    "a", "an", "the", "is", "are", "was", "were", "what", "which", "who", "how", "of", "to",
    "in", "on", "for", "and", "or", "answer", "answers", "question", "questions", "step",
    "steps", "sub", "result", "value", "that", "this", "it", "from", "do", "does", "did", "we",
    "you", "find", "get", "number", "same", "as", "first", "second", "third", "previous",
    "above", "part",
}  # fmt: skip


def refers_to_itself_or_later(sub_questions: Sequence[str]) -> bool:
    """Whether a sub-question points at its own number or a later one ("question 2" in line 1).

    A named pointer ("question 3", "step 3") counts even past the plan's end; a bare ``#k``
    only when the plan has a question k, since questions use it as a label ("horse #12").

    Example:
        >>> refers_to_itself_or_later(["How many apples?", "What is twice question 1?"])
        False
        >>> refers_to_itself_or_later(["What is the answer to question 2?", "Who wrote it?"])
        True
        >>> refers_to_itself_or_later(["Is #1 larger than 3?"])
        True
        >>> refers_to_itself_or_later(["How many people think horse #12 will win?"])
        False

    """
    for position, question in enumerate(sub_questions, start=1):
        for match in _POINTER.finditer(question):
            bare = match.group(1) is not None
            number = int(match.group(1) or match.group(2))
            if number >= position and not (bare and number > len(sub_questions)):
                return True
    return False


def content_free(sub_question: str) -> bool:
    """Whether a sub-question has no words of its own ("What is the answer to question 1?").

    Example:
        >>> content_free("What is the answer to question 1?"), content_free("Who wrote Hamlet?")
        (True, False)

    """
    words = [w for w in similarity_tokens(sub_question) if not w.isdigit()]
    return not [w for w in words if w not in FILLER_WORDS]


def trivial_plan(question: str) -> str:
    """Return the baseline plan: the question's last sentence as its only sub-question.

    Example:
        >>> trivial_plan("Tom has 3 bags. Each holds 4 apples. How many apples does he have?")
        'How many apples does he have?'
        >>> trivial_plan("Is the sky blue")
        'Is the sky blue?'
        >>> trivial_plan("A pen costs $1.5. What do 3 cost?")
        'What do 3 cost?'

    """
    sentences = [s for s in _SENTENCE_END.split(" ".join(question.split())) if s.strip()]
    last = sentences[-1] if sentences else question.strip()
    return last if last.endswith("?") else last.rstrip(" .!") + "?"


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (seeded, so reproducible).

    Example:
        >>> bootstrap_ci([0.5] * 10)
        (0.5, 0.5)
        >>> low, high = bootstrap_ci([0.0, 1.0] * 50)
        >>> 0.39 < low < 0.5 < high < 0.61
        True

    """
    if not values:
        msg = "bootstrap_ci needs at least one value."
        raise ValueError(msg)
    if not 0 < level < 1:
        msg = f"level must be in (0, 1), got {level}."
        raise ValueError(msg)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low = means[int(tail * (resamples - 1))]
    high = means[round((1 - tail) * (resamples - 1))]
    return low, high


class PlanStats(BaseModel):
    """Gold-free numbers about a decomposer's outputs on one task."""

    task: str = Field(description="Task name.")
    split: str = Field(description="Split name.")
    n: int = Field(description="Outputs scored.")
    max_sub_questions: int = Field(description="The cap N given to the decomposer and parser.")
    parse_rate: float = Field(description="Share of outputs with 1..N sub-questions.")
    well_formed_rate: float = Field(description="Share with 1..N sub-questions or the sentinel.")
    no_decomposition_rate: float = Field(description="Share with no sub-question.")
    sentinel_rate: float = Field(description="Share whose first line is the sentinel.")
    repeat_rate: float = Field(description="Share of raw outputs with a repeated line.")
    mean_predicted: float = Field(description="Mean number of parsed sub-questions.")
    copies_question: float = Field(
        description="Share of plans whose only sub-question is the trivial plan (token F1 >= 0.9)."
    )
    failures: int = Field(description="Calls that raised (scored as unparsed).")
    reference_rate: float = Field(
        default=0.0,
        description="Share of plans with a sub-question pointing at itself or a later one.",
    )
    content_free_rate: float = Field(
        default=0.0,
        description="Share of plans with a sub-question of no words of its own "
        "('What is the answer to question 1?').",
    )


def _says_no_decomposition(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    return first.strip().strip(" .`*").upper() == NO_DECOMPOSITION


def plan_stats(
    task: Task,
    outputs: Mapping[str, str | BaseException | None],
    *,
    max_sub_questions: int = 3,
) -> PlanStats:
    """Score decomposer outputs (by example id) without gold: format, repeats, counts.

    Example:
        >>> from langchain_divconq.tasks import Example, GSM8KTask
        >>> task = GSM8KTask(name="svamp", split="test", examples=[
        ...     Example(id="0", question="q", answer="1"),
        ...     Example(id="1", question="r", answer="2")])
        >>> s = plan_stats(task, {"0": "How many?\\nHow many?", "1": "NO_SUBQUESTIONS"})
        >>> s.parse_rate, s.well_formed_rate, s.repeat_rate, s.sentinel_rate
        (0.5, 1.0, 0.5, 0.5)

    """
    by_id: dict[str, Example] = {e.id: e for e in task.examples}
    rows = [(by_id[i], o) for i, o in outputs.items() if i in by_id]
    if not rows:
        msg = f"None of the outputs matches an example of {task.name!r}; key them by Example.id."
        raise ValueError(msg)
    n = len(rows)
    parsed = sum_wf = sentinel = repeats = empty = copies = failures = count = 0
    pointing = hollow = 0
    for example, output in rows:
        if isinstance(output, BaseException) or output is None:
            failures += 1
            empty += 1
            continue
        plan = parse_sub_questions(output, max_sub_questions)
        says_none = _says_no_decomposition(output)
        parsed += 1 <= len(plan) <= max_sub_questions
        sum_wf += (1 <= len(plan) <= max_sub_questions) or (says_none and not plan)
        sentinel += says_none
        repeats += has_repeated_line(output)
        empty += not plan
        count += len(plan)
        copies += len(plan) == 1 and token_f1(plan[0], trivial_plan(example.question)) >= 0.9
        pointing += refers_to_itself_or_later(plan)
        hollow += any(content_free(q) for q in plan)
    return PlanStats(
        task=task.name,
        split=task.split,
        n=n,
        max_sub_questions=max_sub_questions,
        parse_rate=parsed / n,
        well_formed_rate=sum_wf / n,
        no_decomposition_rate=empty / n,
        sentinel_rate=sentinel / n,
        repeat_rate=repeats / n,
        mean_predicted=count / n,
        copies_question=copies / n,
        failures=failures,
        reference_rate=pointing / n,
        content_free_rate=hollow / n,
    )


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
    repeated: bool = Field(default=False, description="The raw output repeats a line.")
    sentinel: bool = Field(default=False, description="The output's first line is the sentinel.")
    count_match: bool = Field(default=False, description="len(predicted) == min(len(gold), N).")
    token_f1: float = Field(default=0.0, description="Mean best-match token F1 over gold.")
    rouge_l: float = Field(default=0.0, description="Mean best-match ROUGE-L over gold.")
    refers_ahead: bool = Field(
        default=False, description="A sub-question points at itself or a later one."
    )
    content_free: bool = Field(default=False, description="A sub-question has no own words.")
    error: str | None = Field(default=None, description="Why the call failed, if it did.")


class DecompositionQuality(BaseModel):
    """Decomposition quality of one decomposer on one task."""

    task: str = Field(description="Task name.")
    split: str = Field(description="Split name.")
    n: int = Field(description="Questions with gold sub-questions that were evaluated.")
    max_sub_questions: int = Field(description="The cap N given to the decomposer and parser.")
    parse_rate: float = Field(description="Share of outputs with 1..N sub-questions.")
    well_formed_rate: float = Field(
        default=0.0, description="Share with 1..N sub-questions or the sentinel."
    )
    no_decomposition_rate: float = Field(description="Share of outputs with no sub-question.")
    repeat_rate: float = Field(
        default=0.0, description="Share of raw outputs with a repeated line."
    )
    count_match: float = Field(description="Share with len(predicted) == min(len(gold), N).")
    mean_predicted: float = Field(description="Mean number of parsed sub-questions.")
    mean_gold: float = Field(description="Mean number of gold sub-questions.")
    token_f1: float = Field(description="Mean best-match token F1 (see the module docstring).")
    token_f1_ci: tuple[float, float] | None = Field(
        default=None, description="95% percentile bootstrap interval of token_f1 (questions)."
    )
    rouge_l: float = Field(description="Mean best-match ROUGE-L F-measure.")
    failures: int = Field(description="Decomposer calls that raised (scored as unparsed).")
    reference_rate: float = Field(
        default=0.0, description="Share of plans pointing at their own or a later sub-question."
    )
    content_free_rate: float = Field(
        default=0.0, description="Share of plans with a sub-question of no words of its own."
    )
    records: list[DecompositionRecord] = Field(default_factory=list, description="Per question.")


def _score(record: DecompositionRecord, max_sub_questions: int) -> DecompositionRecord:
    gold, predicted = record.gold, record.predicted
    best_f1 = [max((token_f1(p, g) for p in predicted), default=0.0) for g in gold]
    best_rl = [max((rouge_l(p, g) for p in predicted), default=0.0) for g in gold]
    return record.model_copy(
        update={
            "parsed": 1 <= len(predicted) <= max_sub_questions,
            "refers_ahead": refers_to_itself_or_later(predicted),
            "content_free": any(content_free(q) for q in predicted),
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
    outputs = decomposer_outputs(
        decomposer,
        examples,
        max_sub_questions=max_sub_questions,
        max_concurrency=max_concurrency,
        batch_size=batch_size,
        progress=progress,
        config=config,
        desc=f"decompose {task.name}",
    )
    return quality_from_outputs(task, outputs, max_sub_questions=max_sub_questions)


def decomposer_outputs(
    decomposer: Runnable[Any, Any],
    examples: Sequence[Example],
    *,
    max_sub_questions: int = 3,
    max_concurrency: int = 16,
    batch_size: int = 16,
    progress: bool = False,
    config: RunnableConfig | None = None,
    desc: str = "decompose",
) -> dict[str, str | BaseException]:
    """Send each example the chain's decomposer prompt; return the raw texts by example id.

    A call that raised is returned as its exception. Arguments are as in
    :func:`decomposition_quality`.
    """
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(examples), desc=desc, unit="q")
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
    return outputs


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
            record = record.model_copy(update={"error": scrub_text(error)})
        else:
            predicted = parse_sub_questions(output, max_sub_questions)
            record = record.model_copy(
                update={
                    "output": output,
                    "predicted": predicted,
                    "repeated": has_repeated_line(output),
                    "sentinel": _says_no_decomposition(output),
                }
            )
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
        well_formed_rate=sum(r.parsed or (r.sentinel and not r.predicted) for r in records) / n,
        no_decomposition_rate=sum(r.error is None and not r.predicted for r in records) / n,
        repeat_rate=sum(r.repeated for r in records) / n,
        count_match=sum(r.count_match for r in records) / n,
        mean_predicted=sum(len(r.predicted) for r in records) / n,
        mean_gold=sum(len(r.gold) for r in records) / n,
        token_f1=sum(r.token_f1 for r in records) / n,
        token_f1_ci=bootstrap_ci([r.token_f1 for r in records]),
        rouge_l=sum(r.rouge_l for r in records) / n,
        failures=sum(r.error is not None for r in records),
        reference_rate=sum(r.refers_ahead for r in records) / n,
        content_free_rate=sum(r.content_free for r in records) / n,
        records=records,
    )
