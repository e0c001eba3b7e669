"""Two-hop plans and paired comparisons, on top of :mod:`~.quality`.

For two-hop questions (Bamboogle), a useful plan first asks for the bridge entity, the
intermediate answer the second hop needs: :func:`asks_bridge_first` is a rule for that.

:func:`paired_delta` compares two decomposers question by question (a paired
bootstrap interval), the comparison every quality table makes against the trivial plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from langchain_divconq.evaluation.quality import (
    FILLER_WORDS,
    bootstrap_ci,
    similarity_tokens,
)
from langchain_divconq.prompts import parse_sub_questions

if TYPE_CHECKING:
    from langchain_divconq.tasks import Example

__all__ = ["asks_bridge_first", "bridge_first_plans", "paired_delta"]


def bridge_first_plans(
    examples: Sequence[Example],
    outputs: Mapping[str, str | BaseException | None],
    max_sub_questions: int,
) -> list[tuple[Example, list[str], bool]]:
    """Each answered example that names its bridge entity, its plan, and the rule's verdict.

    The plan is the decomposer output parsed as the chain parses it (none for a failed
    call); the verdict is :func:`asks_bridge_first`.
    """
    rows = []
    for example in examples:
        if not example.bridge_entity or example.id not in outputs:
            continue
        text = outputs[example.id]
        plan = parse_sub_questions(text, max_sub_questions) if isinstance(text, str) else []
        rows.append(
            (example, plan, asks_bridge_first(example.question, plan, example.bridge_entity))
        )
    return rows


def asks_bridge_first(question: str, plan: Sequence[str], bridge_entity: str | None) -> bool:
    """Whether a two-hop plan's first sub-question asks for the bridge entity (a rule).

    The first sub-question must (a) be about the question (at least half of its content
    words come from it), (b) not already name the bridge entity (it asks for it), (c)
    leave words of the question for a later hop (its content words cover less than 80% of
    the question's, so a restated question fails), (d) ask for a thing,
    not an amount ("How fast/many/tall ..." asks the final hop's kind of question), and
    (e) not ask what the whole question asks (the words between "What"/"Which" and its
    verb, or after it up to the first preposition: "the maximum airspeed" of "What is the
    maximum airspeed of the third fastest bird?"). The rule is coarse; the quality report
    prints the plans beside it for a reader.

    Example:
        >>> q = "Who was president of the United States in the year that Citibank was founded?"
        >>> asks_bridge_first(q, ["In what year was Citibank founded?", "Who was president "
        ...                      "of the United States in that year?"], "1812")
        True
        >>> asks_bridge_first(q, [q], "1812")
        False

    """
    if not plan:
        return False
    first = plan[0]
    asked = _content(first)
    given = _content(question)
    if not asked or len(asked & given) < len(asked) / 2:
        return False
    if bridge_entity and _content(bridge_entity) and _content(bridge_entity) <= asked:
        return False
    if similarity_tokens(first)[:1] == ["how"] or asked & _asked_for(question):
        return False
    return len(asked & given) < 0.8 * len(given)


_LEADING = {"in", "on", "at", "for", "by", "during", "from", "to"}
_VERBS = {"is", "was", "are", "were", "did", "does", "do", "has", "have", "had"}
_BOUNDARIES = {"of", "in", "on", "at", "that", "who", "which", "for", "from", "by", "to", "with"}


def _asked_for(question: str) -> set[str]:
    """Content words naming what a question asks for ('rocket' in 'What rocket was ...')."""
    words = similarity_tokens(question)
    while words and words[0] in _LEADING:
        words = words[1:]
    if not words or words[0] not in ("what", "which", "how"):
        return set()  # who/when/where: the wh-word itself is the ask
    rest = words[1:]
    verb = next((i for i, w in enumerate(rest) if w in _VERBS), len(rest))
    before = {w for w in rest[:verb] if w not in FILLER_WORDS}
    if before:
        return before
    after: set[str] = set()
    for word in rest[verb + 1 :]:
        if word in _BOUNDARIES:
            break
        if word not in FILLER_WORDS:
            after.add(word)
    return after


def _content(text: str) -> set[str]:
    return {w for w in similarity_tokens(text) if w not in FILLER_WORDS}


def paired_delta(
    mine: Mapping[str, float], base: Mapping[str, float]
) -> tuple[float, tuple[float, float]]:
    """Mean per-question difference ``mine - base`` with its 95% paired bootstrap interval.

    Only questions scored by both count.

    Example:
        >>> paired_delta({"a": 0.9, "b": 0.7}, {"a": 0.5, "b": 0.5})[0]
        0.3

    """
    keys = [k for k in base if k in mine]
    if not keys:
        msg = "paired_delta needs scores of the same questions (no shared ids)."
        raise ValueError(msg)
    diffs = [mine[k] - base[k] for k in keys]
    return round(sum(diffs) / len(diffs), 10), bootstrap_ci(diffs)
