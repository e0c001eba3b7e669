"""Math word problems scored by numeric exact match: GSM8K, SVAMP, MultiArith.

Reading the prediction: the first number in the text after the answer marker
(``The answer is: $1,250.00 in total`` -> 1250); when that text holds an
equation, the number after its last ``=`` (``5 + 3 = 8`` -> 8). When the
marker is missing, the checker falls back to the last number of the whole text
(the "flexible" extraction of common GSM8K harnesses), because small models
often end with a bare number; set ``strict=True`` on the task to score a
missing marker as wrong instead. Numbers are compared as values, so commas,
``$``, units, ``%``, trailing ``.00`` and unicode minus signs do not matter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from langchain_divconq.prompts import extract_answer
from langchain_divconq.tasks.base import Example, Task, read_jsonl

__all__ = [
    "GSM8KTask",
    "MathTask",
    "MultiArithTask",
    "SVAMPTask",
    "gsm8k_sub_questions",
    "numbers_equal",
    "parse_number",
    "predicted_number",
]

# A thousands-grouped number ("1,250.5") or a plain one ("1250", ".5"), optionally
# signed; the sign must not follow a digit or a letter, so "5-3" is not "-3".
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-\u2212])?\s?\$?\s?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+)(?![\d.,]))?"
)
_TOLERANCE = 1e-6


def _to_value(match: re.Match[str]) -> float:
    value = Fraction(match.group("num").replace(",", ""))
    if match.group("den") and int(match.group("den")) != 0:
        value /= int(match.group("den"))
    if match.group("sign"):
        value = -value
    return float(value)


def parse_number(text: str | float | int | None) -> float | None:
    """Return the first number in ``text`` as a float, or None when there is none.

    Example:
        >>> parse_number("$1,250.00 in total")
        1250.0
        >>> parse_number("-3 degrees"), parse_number("1/2 cup"), parse_number("none")
        (-3.0, 0.5, None)

    """
    if text is None:
        return None
    if isinstance(text, int | float):
        return float(text)
    match = _NUMBER.search(text)
    return _to_value(match) if match else None


def _last_number(text: str) -> float | None:
    matches = list(_NUMBER.finditer(text))
    return _to_value(matches[-1]) if matches else None


def predicted_number(solver_text: str, *, strict: bool = False) -> float | None:
    r"""Read the predicted number from a solver's text (see the module docstring).

    Example:
        >>> predicted_number("Natalia sold 72 clips.\nThe answer is: 72 clips")
        72.0
        >>> predicted_number("The answer is: 48 + 24 = 72")
        72.0
        >>> predicted_number("She has 3 apples and buys 4, so 7")
        7.0
        >>> predicted_number("7", strict=True) is None
        True

    """
    answer = extract_answer(solver_text)
    if answer is None:
        return None if strict else _last_number(solver_text)
    if "=" in answer:
        after = answer.rsplit("=", 1)[1]
        value = parse_number(after)
        if value is not None:
            return value
    return parse_number(answer)


def numbers_equal(predicted: float | None, gold: float | None) -> bool:
    """Compare two numbers with a small relative tolerance (None never matches)."""
    if predicted is None or gold is None:
        return False
    return abs(predicted - gold) <= _TOLERANCE * max(1.0, abs(gold))


def _format_number(value: float | int | str) -> str:
    number = parse_number(value) if isinstance(value, str) else float(value)
    if number is None:
        return str(value)
    return str(int(number)) if number == int(number) else repr(number)


def gsm8k_sub_questions(solution: str) -> list[str]:
    r"""Return the gold sub-questions of a GSM8K Socratic solution (text before `` ** ``).

    Example:
        >>> gsm8k_sub_questions("How many in May? ** 48/2 = 24\nHow many in all? ** 72\n#### 72")
        ['How many in May?', 'How many in all?']

    """
    found = []
    for line in solution.splitlines():
        if " ** " in line:
            question = line.split(" ** ", 1)[0].strip()
            if question:
                found.append(question)
    return found


class MathTask(Task):
    """A numeric exact-match task; see the module docstring for how answers are read."""

    strict: bool = Field(
        default=False,
        description="Score a solver text without the answer marker as wrong "
        "(default: fall back to its last number).",
    )

    metric: ClassVar[str] = "accuracy"

    def extract(self, solver_text: str) -> str | None:
        """Return the predicted number as text (``'72'``, ``'0.5'``), or None."""
        value = predicted_number(solver_text, strict=self.strict)
        return None if value is None else _format_number(value)

    def metrics(self, solver_text: str, example: Example) -> dict[str, float]:
        """Return ``{'accuracy': 1.0 or 0.0}``: numeric exact match with the gold number."""
        predicted = predicted_number(solver_text, strict=self.strict)
        gold = parse_number(example.answer)
        return {"accuracy": float(numbers_equal(predicted, gold))}


class GSM8KTask(MathTask):
    """GSM8K grade-school math (Cobbe et al., 2021), with Socratic gold sub-questions.

    The Socratic files hold the same questions and final answers as the main
    files in the same order; they are read so every example carries its gold
    sub-questions. Ids are line numbers.
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    @classmethod
    def task_name(cls) -> str:
        """Return ``'gsm8k'``."""
        return "gsm8k"

    @classmethod
    def _load_examples(cls, root: Path, split: str) -> Iterator[Example]:
        folder = root / "gsm8k"
        socratic = folder / f"{split}_socratic.jsonl"
        path = socratic if socratic.is_file() else folder / f"{split}.jsonl"
        for index, row in enumerate(read_jsonl(path)):
            solution = str(row["answer"])
            if "####" not in solution:
                msg = f"{path} line {index + 1}: answer has no '#### N' final line."
                raise ValueError(msg)
            final = solution.rsplit("####", 1)[1].strip()
            gold = _format_number(final)
            yield Example(
                id=str(index),
                question=str(row["question"]),
                answer=gold,
                answers=[gold],
                sub_questions=gsm8k_sub_questions(solution),
            )


class _FlatMathTask(MathTask):
    """A math task stored as one ``<folder>/<folder>.jsonl`` file with id/question/answer."""

    splits: ClassVar[tuple[str, ...]] = ("test",)

    @classmethod
    def _load_examples(cls, root: Path, split: str) -> Iterator[Example]:
        name = cls.task_name()
        path = root / name / f"{name}.jsonl"
        for index, row in enumerate(read_jsonl(path)):
            gold = _format_number(row["answer"])
            yield Example(
                id=str(row.get("id", index)),
                question=str(row["question"]).strip(),
                answer=gold,
                answers=[gold],
            )


class SVAMPTask(_FlatMathTask):
    """SVAMP (Patel et al., 2021): 1,000 one-step arithmetic problems, one split (``test``)."""

    @classmethod
    def task_name(cls) -> str:
        """Return ``'svamp'``."""
        return "svamp"


class MultiArithTask(_FlatMathTask):
    """MultiArith (Roy & Roth, 2015): 600 multi-step arithmetic problems (``test``)."""

    @classmethod
    def task_name(cls) -> str:
        """Return ``'multiarith'``."""
        return "multiarith"
