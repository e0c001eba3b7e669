"""Score traces against their gold answers, so SD-R can keep only the correct runs.

A *checker* is any callable ``(solver_text, example) -> float`` (1.0 correct):
a task's :meth:`~langchain_divconq.tasks.Task.score` fits as is. The example it
receives is the task's own :class:`~langchain_divconq.tasks.Example` when one
is known (see :func:`task_checker`), else one built from the trace
(:func:`trace_example`). Without a checker, :func:`default_checker` compares
numbers as values and anything else as normalized text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from langchain_divconq.prompts import extract_answer
from langchain_divconq.tasks.base import Example, Task
from langchain_divconq.tasks.math import numbers_equal, parse_number, predicted_number
from langchain_divconq.tasks.qa import normalize_text
from langchain_divconq.tracing.trace import Trace

__all__ = [
    "Checker",
    "default_checker",
    "rescore",
    "score_trace",
    "task_checker",
    "trace_example",
]

Checker = Callable[[str, Any], float]
"""``(solver_text, example) -> score``; ``example`` has ``answer`` (and ``answers``, ...)."""

_NUMBER_ONLY_EXTRA = set(" $,.%-\u2212")


def _is_number(text: str) -> bool:
    """Tell whether ``text`` is a bare number ("72", "$1,250.00", "-3", "50%")."""
    stripped = text.strip()
    return (
        parse_number(stripped) is not None
        and any(ch.isdigit() for ch in stripped)
        and all(ch.isdigit() or ch in _NUMBER_ONLY_EXTRA for ch in stripped)
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def default_checker(solver_text: str, example: Any) -> float:
    r"""Score a solver text: numeric match for numeric references, else normalized text match.

    Numbers are compared as values (commas, ``$``, units and ``.00`` do not
    matter), reading the prediction as the math tasks do. Other references
    (names, yes/no) must equal the text after the answer marker (else the last
    line) after lowercasing and dropping punctuation and articles. Every entry of
    ``example.answers`` is accepted when present.

    Args:
        solver_text: The solver's full text.
        example: Anything with an ``answer`` attribute (and optionally ``answers``), or a str.

    Returns:
        1.0 when it matches, else 0.0.

    Example:
        >>> default_checker("48 + 24 = 72\nThe answer is: $72.00", "72")
        1.0
        >>> default_checker("The answer is: The Beatles.", "beatles")
        1.0

    """
    golds = _golds(example)
    predicted_text = extract_answer(solver_text)
    if predicted_text is None:
        predicted_text = _last_line(solver_text)
    for gold in golds:
        if _is_number(gold):
            if numbers_equal(predicted_number(solver_text), parse_number(gold)):
                return 1.0
        elif normalize_text(predicted_text) == normalize_text(gold) and normalize_text(gold):
            return 1.0
    return 0.0


def _golds(example: Any) -> list[str]:
    if isinstance(example, str):
        return [example]
    answers = [str(a) for a in (getattr(example, "answers", None) or [])]
    answer = getattr(example, "answer", None)
    if answer is not None and str(answer) not in answers:
        answers.insert(0, str(answer))
    return answers


def trace_example(trace: Trace) -> Example:
    """Build the example a checker sees for a trace (its ``id`` is metadata ``example_id``).

    Example:
        >>> trace_example(Trace(question="Q?", reference="4")).answer
        '4'

    """
    reference = trace.reference or ""
    extra = trace.metadata.get("answers")
    answers = [reference, *(str(a) for a in extra if str(a) != reference)] if extra else []
    return Example(
        id=str(trace.metadata.get("example_id", trace.trace_id)),
        question=trace.question,
        answer=reference,
        answers=answers or [reference],
        context=trace.context,
        sub_questions=trace.sub_questions,
    )


def score_trace(trace: Trace, checker: Checker | None = None) -> float | None:
    """Score a trace's solution against its reference.

    Args:
        trace: The trace.
        checker: A checker; :func:`default_checker` when None.

    Returns:
        The score, or None when the trace has no reference, no solution, or an error.

    Example:
        >>> score_trace(Trace(question="Q?", solution="The answer is: 4", reference="4"))
        1.0

    """
    if trace.reference is None or trace.solution is None or trace.error is not None:
        return None
    return float((checker or default_checker)(trace.solution, trace_example(trace)))


def rescore(traces: Iterable[Trace], checker: Checker | None = None) -> Iterator[Trace]:
    """Yield copies of the traces with ``score`` recomputed (write them to a new store).

    Example:
        >>> [t.score for t in rescore([Trace(question="Q?", solution="The answer is: 5",
        ...                                   reference="4")])]
        [0.0]

    """
    for trace in traces:
        yield trace.model_copy(update={"score": score_trace(trace, checker)})


def task_checker(task: Task) -> Checker:
    """Return a checker that scores with ``task.score`` against the task's own example.

    The example is looked up by ``example_id`` (as ``divconq collect`` records it),
    so task-specific data such as DROP's alternative answers is used; unknown
    ids (or ids of another question) fall back to the example built from the trace.

    Example:
        >>> from langchain_divconq.tasks import load_task
        >>> checker = task_checker(load_task("svamp", data_dir="../shared/data"))  # doctest: +SKIP

    """
    by_id = {example.id: example for example in task.examples}

    def check(solver_text: str, example: Any) -> float:
        own = by_id.get(str(getattr(example, "id", "")))
        # Ids are only line numbers in some data sets: trust them only for the same question.
        if own is None or own.question != getattr(example, "question", None):
            own = example
        return float(task.score(solver_text, own))

    return check
