"""Open-domain QA tasks: Bamboogle (normalized match) and StrategyQA (yes/no)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from langchain_divconq.tasks.base import Example, Task, read_jsonl

__all__ = ["BamboogleTask", "StrategyQATask", "normalize_text", "yes_no"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d", "\u2013"}


def normalize_text(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, squeeze spaces (SQuAD style).

    Example:
        >>> normalize_text("The  Titan IIIE.")
        'titan iiie'

    """
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _contains(haystack: str, needle: str) -> bool:
    if not needle:
        return False
    return f" {needle} " in f" {haystack} "


class BamboogleTask(Task):
    """Bamboogle (Press et al., 2022): 125 two-hop questions, split ``test``.

    ``accuracy`` is exact match after :func:`normalize_text` against the answer or
    any alternative; ``cover`` (reported beside it, not the score) is 1 when a
    normalized gold answer appears as whole words inside the prediction. With no
    answer marker, the last non-empty line is the prediction. The plan size is 2
    (two-hop questions), as in the paper.
    """

    splits: ClassVar[tuple[str, ...]] = ("test",)

    @classmethod
    def task_name(cls) -> str:
        """Return ``'bamboogle'``."""
        return "bamboogle"

    @classmethod
    def load(cls, root: Path, split: str) -> Task:
        """Load the task with the two-hop plan size ``max_sub_questions=2``."""
        return super().load(root, split).model_copy(update={"max_sub_questions": 2})

    @classmethod
    def _load_examples(cls, root: Path, split: str) -> Iterator[Example]:
        path = root / "bamboogle" / "bamboogle.jsonl"
        for index, row in enumerate(read_jsonl(path)):
            answer = str(row["answer"])
            alternatives: Sequence[str] = row.get("answer_alternatives") or []
            answers = [answer, *[str(a) for a in alternatives if str(a) != answer]]
            yield Example(
                id=str(row.get("id", index)),
                question=str(row["question"]),
                answer=answer,
                answers=answers,
                bridge_entity=str(row["bridge_entity"]) if row.get("bridge_entity") else None,
            )

    def extract(self, solver_text: str) -> str | None:
        """Return the text after the answer marker, else the last non-empty line."""
        answer = super().extract(solver_text)
        return answer if answer is not None else _last_line(solver_text)

    def metrics(self, solver_text: str, example: Example) -> dict[str, float]:
        """Return ``{'accuracy': normalized exact match, 'cover': gold inside prediction}``."""
        predicted = self.extract(solver_text)
        if predicted is None:
            return {"accuracy": 0.0, "cover": 0.0}
        pred = normalize_text(predicted)
        golds = [normalize_text(a) for a in example.answers or [example.answer]]
        return {
            "accuracy": float(any(pred == gold for gold in golds)),
            "cover": float(any(_contains(pred, gold) for gold in golds)),
        }


_YES = {"yes", "true", "correct", "y"}
_NO = {"no", "false", "incorrect", "n"}
_YES_NO_WORD = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)


def yes_no(text: str | None) -> str | None:
    """Map an answer to ``'yes'``/``'no'``: by its first word, else its first yes/no word.

    Example:
        >>> yes_no("No, they cannot."), yes_no("True"), yes_no("It is false"), yes_no("maybe")
        ('no', 'yes', 'no', None)

    """
    if not text:
        return None
    words = normalize_text(text).split()
    if words and words[0] in _YES:
        return "yes"
    if words and words[0] in _NO:
        return "no"
    match = _YES_NO_WORD.search(text)
    if match is None:
        return None
    return "yes" if match.group(1).lower() in _YES else "no"


class StrategyQATask(Task):
    """StrategyQA (Geva et al., 2021): yes/no questions with gold decompositions.

    Splits ``train`` (1,290) and ``dev`` (500) are the Faithful-CoT split of the
    labelled set. The prediction is the yes/no after the answer marker (see
    :func:`yes_no`); with no marker, the last yes/no/true/false word of the text.
    Gold sub-questions are the data's ``decomposition`` (with its ``#k`` back-references).
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "dev")

    @classmethod
    def task_name(cls) -> str:
        """Return ``'strategyqa'``."""
        return "strategyqa"

    @classmethod
    def _load_examples(cls, root: Path, split: str) -> Iterator[Example]:
        path = root / "strategyqa" / f"{split}.jsonl"
        for index, row in enumerate(read_jsonl(path)):
            answer = "yes" if row["answer"] in (True, "true", "True", "yes") else "no"
            yield Example(
                id=str(row.get("id", index)),
                question=str(row["question"]),
                answer=answer,
                answers=[answer],
                sub_questions=[str(q) for q in row.get("decomposition") or []],
            )

    def extract(self, solver_text: str) -> str | None:
        """Return ``'yes'``, ``'no'`` or None."""
        answer = super().extract(solver_text)
        if answer is not None:
            return yes_no(answer)
        words = _YES_NO_WORD.findall(solver_text)
        return yes_no(words[-1]) if words else None

    def metrics(self, solver_text: str, example: Example) -> dict[str, float]:
        """Return ``{'accuracy': 1.0 when the yes/no matches}``."""
        return {"accuracy": float(self.extract(solver_text) == example.answer)}
