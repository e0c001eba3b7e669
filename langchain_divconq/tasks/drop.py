"""DROP reading comprehension, scored by exact match and F1 as the official DROP evaluation does.

Implemented from the definition in Dua et al. (2019) and its evaluation script:

* **Normalization** of an answer span: split on spaces and hyphens; per token,
  lowercase, strip punctuation unless the token is a number, write numbers in a
  canonical float form (``"1,000"`` stays as is, ``"5"`` -> ``"5.0"``), drop the
  articles a/an/the; join the non-empty tokens with single spaces.
* An answer is a list of spans (one for a number, date or single span). Its
  **bag** per span is the set of normalized tokens.
* **Exact match**: the normalized spans of prediction and gold are the same set
  with the same count.
* **F1**: per pair of spans, bag-of-words F1, forced to 0 when the gold bag holds
  numbers and the prediction bag shares none of them; spans are paired by a
  maximum-weight one-to-one alignment (exhaustive search over assignments for up
  to :data:`MAX_EXACT_SPANS` spans, greedy beyond: both exact in practice since
  DROP answers have few spans); F1 is the mean over
  ``max(#gold spans, #predicted spans)`` slots, rounded to two decimals.
* With several accepted answers, the best EM and the best F1 are taken.

The local data is DROP dev as flattened by OpenAI's simple-evals: every accepted
answer is one string (multi-span answers were joined with " and "), so each is
scored as a single span, exactly as simple-evals scores this file. The span
machinery still applies when lists are passed to :func:`drop_metrics`.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from langchain_divconq.tasks.base import Example, Task, read_jsonl

__all__ = ["MAX_EXACT_SPANS", "DROPTask", "drop_metrics", "normalize_drop_answer"]

MAX_EXACT_SPANS = 6
"""Span count up to which the alignment is searched exhaustively."""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalize_token(token: str) -> str:
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCTUATION)
    if _is_number(token):
        token = str(float(token))
    token = _ARTICLES.sub(" ", token)
    return " ".join(token.split())


def normalize_drop_answer(text: str) -> str:
    """Normalize one answer span as the DROP evaluation does.

    Example:
        >>> normalize_drop_answer("The Pittsburgh-Steelers, 5 times!")
        'pittsburgh steelers 5.0 times'

    """
    parts = [_normalize_token(token) for token in re.split(r" |-", text)]
    return " ".join(part for part in parts if part.strip()).strip()


def _bags(answer: str | Sequence[str]) -> tuple[list[str], list[set[str]]]:
    spans = [answer] if isinstance(answer, str) else list(answer)
    normalized = [normalize_drop_answer(span) for span in spans]
    return normalized, [set(span.split()) for span in normalized]


def _bag_f1(predicted: set[str], gold: set[str]) -> float:
    common = len(predicted & gold)
    precision = common / len(predicted) if predicted else 1.0
    recall = common / len(gold) if gold else 1.0
    if precision == 0.0 and recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], predicted: set[str]) -> bool:
    gold_numbers = {word for word in gold if _is_number(word)}
    predicted_numbers = {word for word in predicted if _is_number(word)}
    return not gold_numbers or bool(gold_numbers & predicted_numbers)


def _best_assignment(scores: list[list[float]]) -> list[tuple[int, int]]:
    """Return the maximum-weight one-to-one pairing of rows (predicted) and columns (gold)."""
    rows, cols = len(scores), len(scores[0]) if scores else 0
    if rows == 0 or cols == 0:
        return []
    if min(rows, cols) <= MAX_EXACT_SPANS and max(rows, cols) <= MAX_EXACT_SPANS + 2:
        best: list[tuple[int, int]] = []
        best_total = -1.0
        if rows <= cols:
            for chosen in itertools.permutations(range(cols), rows):
                pairs = list(zip(range(rows), chosen, strict=True))
                total = sum(scores[r][c] for r, c in pairs)
                if total > best_total:
                    best, best_total = pairs, total
        else:
            for chosen in itertools.permutations(range(rows), cols):
                pairs = list(zip(chosen, range(cols), strict=True))
                total = sum(scores[r][c] for r, c in pairs)
                if total > best_total:
                    best, best_total = pairs, total
        return best
    # Greedy for unusually many spans: take the best remaining pair each time.
    cells = sorted(((scores[r][c], r, c) for r in range(rows) for c in range(cols)), reverse=True)
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for _, r, c in cells:
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r)
            used_c.add(c)
    return pairs


def _align_f1(predicted: list[set[str]], gold: list[set[str]]) -> float:
    scores = [[_bag_f1(p, g) if _numbers_agree(g, p) else 0.0 for g in gold] for p in predicted]
    # Unpaired spans (the count mismatch) count as zero in the mean.
    pairs = _best_assignment(scores)
    slots = max(len(gold), len(predicted))
    return sum(scores[r][c] for r, c in pairs) / slots if slots else 0.0


def _single_metrics(
    predicted: str | Sequence[str], gold: str | Sequence[str]
) -> tuple[float, float]:
    predicted_spans, predicted_bags = _bags(predicted)
    gold_spans, gold_bags = _bags(gold)
    exact = float(
        set(predicted_spans) == set(gold_spans) and len(predicted_spans) == len(gold_spans)
    )
    f1 = round(_align_f1(predicted_bags, gold_bags), 2)
    return exact, f1


def drop_metrics(
    predicted: str | Sequence[str] | None,
    golds: Sequence[str | Sequence[str]],
) -> tuple[float, float]:
    """Return ``(exact_match, f1)`` of a prediction against the accepted answers (best of each).

    Each answer (predicted or gold) is a string (one span) or a list of spans.

    Example:
        >>> drop_metrics("the Steelers", ["Steelers"])
        (1.0, 1.0)
        >>> drop_metrics(["Bears", "Lions"], [["Lions", "Bears"]])
        (1.0, 1.0)
        >>> drop_metrics("5 yards", ["6"])
        (0.0, 0.0)

    """
    if predicted is None or not golds:
        return 0.0, 0.0
    best_em, best_f1 = 0.0, 0.0
    for gold in golds:
        em, f1 = _single_metrics(predicted, gold)
        best_em, best_f1 = max(best_em, em), max(best_f1, f1)
    return best_em, best_f1


class DROPTask(Task):
    """DROP dev (Dua et al., 2019): questions over a passage; ``score`` is F1, ``em`` beside it.

    With no answer marker in the solver text, the last non-empty line is taken as
    the prediction (a reading-comprehension answer has no number to look for).
    """

    splits: ClassVar[tuple[str, ...]] = ("dev",)
    metric: ClassVar[str] = "f1"

    @classmethod
    def task_name(cls) -> str:
        """Return ``'drop'``."""
        return "drop"

    @classmethod
    def _load_examples(cls, root: Path, split: str) -> Iterator[Example]:
        path = root / "drop" / f"{split}.jsonl"
        for index, row in enumerate(read_jsonl(path)):
            answers = [str(a) for a in row.get("answers") or [row["answer"]]]
            yield Example(
                id=str(row.get("id", index)),
                question=str(row["question"]),
                answer=str(row["answer"]),
                answers=answers,
                context=str(row["passage"]),
            )

    def extract(self, solver_text: str) -> str | None:
        """Return the text after the answer marker, else the last non-empty line."""
        answer = super().extract(solver_text)
        if answer is not None:
            return answer
        lines = [line.strip() for line in solver_text.splitlines() if line.strip()]
        return lines[-1] if lines else None

    def metrics(self, solver_text: str, example: Example) -> dict[str, float]:
        """Return ``{'f1': ..., 'em': ...}`` against every accepted answer."""
        em, f1 = drop_metrics(self.extract(solver_text), example.answers or [example.answer])
        return {"f1": f1, "em": em}
