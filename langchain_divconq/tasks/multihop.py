"""Multi-hop plans from Break: HotpotQA questions with gold decompositions (no answers).

Break's high-level QDMR file (``break/high_level_dev.jsonl``) holds HotpotQA and
ComplexWebQuestions (CWQ) questions with plans written as phrases. The plans are
rewritten into questions with :func:`~langchain_divconq.tasks.plans.rewrite_plan`
(the raw steps are kept where no template reads them), so they score a decomposer the
way GSM8K's Socratic steps do. The file carries no answers: the task serves
decomposition quality (``divconq eval --decomposer-only``), not answer accuracy.

The HotpotQA rows are split by a stable hash of their id: :data:`HELDOUT_SHARE` of them
are ``heldout`` (never trained on), the rest ``train``; :func:`break_plans` gives the
training rows of both sources.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from langchain_divconq.tasks.base import Example, Task, read_jsonl
from langchain_divconq.tasks.plans import rewrite_plan

__all__ = ["HELDOUT_SHARE", "HotpotQATask", "break_plans", "break_split"]

HELDOUT_SHARE = 0.25
"""Share of Break's HotpotQA rows held out from training for evaluation."""

_FILE = Path("break") / "high_level_dev.jsonl"


def break_split(question_id: str) -> str:
    """Return ``'heldout'`` or ``'train'`` for a Break row, stable across runs and machines.

    Example:
        >>> break_split("HOTPOT_dev_5a7331705542991f9a20c67a") in ("train", "heldout")
        True

    """
    digest = hashlib.sha256(question_id.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") / 2**32 < HELDOUT_SHARE else "train"


def _rows(root: Path) -> Iterator[dict[str, Any]]:
    path = root / _FILE
    if not path.is_file():
        msg = f"Break data not found at {path}; pass data_dir= the folder that holds break/."
        raise FileNotFoundError(msg)
    yield from read_jsonl(path)


def break_plans(
    root: Path, *, sources: tuple[str, ...] = ("hotpot", "cwq")
) -> list[tuple[str, list[str]]]:
    """(question, rewritten plan) pairs for training: CWQ rows and the HotpotQA ``train`` rows.

    Rows whose plan no template can put in words are left out (see
    :func:`~langchain_divconq.tasks.plans.rewrite_plan`); HotpotQA ``heldout`` rows never
    appear.
    """
    pairs: list[tuple[str, list[str]]] = []
    for row in _rows(root):
        source = str(row.get("source", ""))
        if source not in sources:
            continue
        if source == "hotpot" and break_split(str(row["question_id"])) != "train":
            continue
        plan = rewrite_plan([str(step) for step in row.get("decomposition") or []])
        if plan:
            pairs.append((" ".join(str(row["question"]).split()), plan))
    return pairs


class HotpotQATask(Task):
    """HotpotQA questions of Break with gold plans (as questions), for decomposition quality.

    Splits ``heldout`` (about a quarter of the file's 1,282 HotpotQA rows) and ``train``.
    Gold sub-questions are the rewritten plan, or the raw steps where it could not be
    rewritten. :meth:`metrics` raises: Break has no answers.
    """

    splits: ClassVar[tuple[str, ...]] = ("heldout", "train")

    @classmethod
    def task_name(cls) -> str:
        """Return ``'hotpotqa'``."""
        return "hotpotqa"

    @classmethod
    def _load_examples(cls, root: Path, split: str) -> Iterator[Example]:
        for row in _rows(root):
            if row.get("source") != "hotpot" or break_split(str(row["question_id"])) != split:
                continue
            steps = [str(step) for step in row.get("decomposition") or []]
            yield Example(
                id=str(row["question_id"]),
                question=" ".join(str(row["question"]).split()),
                answer="",
                sub_questions=rewrite_plan(steps) or steps,
            )

    def metrics(self, solver_text: str, example: Example) -> dict[str, float]:
        """Not available: Break has plans but no answers."""
        msg = (
            "Task 'hotpotqa' (Break) has gold plans but no answers; use it for decomposition "
            "quality (divconq eval --decomposer-only --task hotpotqa, or "
            "evaluation.decomposition_quality), not answer accuracy."
        )
        raise ValueError(msg)
