"""The task abstraction: examples loaded from a data folder, and a scorer for solver text.

A :class:`Task` owns its answer checker, so a result is always scored the same
way whichever chain produced it. Every checker reads the final answer with
:func:`langchain_divconq.prompts.extract_answer` (the text after the answer
marker); the fallback used when a model forgot the marker is task-specific and
documented on each task class.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from langchain_divconq import jsonl
from langchain_divconq.prompts import extract_answer

__all__ = ["DATA_ENV_VAR", "Example", "Task", "read_jsonl", "resolve_data_dir"]

DATA_ENV_VAR = "DIVCONQ_DATA"
"""Environment variable naming the data root (one folder per task, like ``shared/data``)."""

_DEFAULT_RELATIVE = Path("..") / "shared" / "data"


class Example(BaseModel):
    """One evaluation example."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Stable id: the data set's own id, else the line number.")
    question: str = Field(description="The question, as the chain receives it.")
    answer: str = Field(description="The gold answer as text (numbers as written, yes/no).")
    answers: list[str] = Field(
        default_factory=list,
        description="Every accepted answer, the main one first (DROP, Bamboogle alternatives).",
    )
    context: str | None = Field(
        default=None, description="The passage the question is about (DROP), else None."
    )
    sub_questions: list[str] = Field(
        default_factory=list,
        description="Gold sub-questions where the data has them (GSM8K Socratic, StrategyQA).",
    )
    bridge_entity: str | None = Field(
        default=None,
        description="A two-hop question's intermediate answer, where the data names it "
        "(Bamboogle): what a good plan asks for first.",
    )


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the data root: ``data_dir``, else ``$DIVCONQ_DATA``, else ``../shared/data``.

    Raises:
        FileNotFoundError: When none of the candidates is an existing folder; the
            message lists what was tried and how to point at the data.

    Example:
        >>> resolve_data_dir("/work/shared/data").name  # doctest: +SKIP
        'data'

    """
    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if data_dir is not None:
        candidates.append(("data_dir argument", Path(data_dir)))
    elif os.environ.get(DATA_ENV_VAR):
        candidates.append((f"${DATA_ENV_VAR}", Path(os.environ[DATA_ENV_VAR])))
    else:
        candidates.append(("default", Path.cwd() / _DEFAULT_RELATIVE))
    for label, path in candidates:
        if path.is_dir():
            return path.resolve()
        tried.append(f"{label}: {path}")
    msg = (
        "No evaluation data folder found (tried " + "; ".join(tried) + "). Pass "
        f"--data-dir / data_dir=PATH or set {DATA_ENV_VAR}=PATH to a folder holding one "
        "sub-folder per task (gsm8k/, drop/, bamboogle/, svamp/, multiarith/, strategyqa/)."
    )
    raise FileNotFoundError(msg)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a task data file (see :mod:`langchain_divconq.jsonl`)."""
    if not path.is_file():
        msg = (
            f"Data file not found: {path}. Check that the data root holds the task folder "
            f"(see --data-dir / {DATA_ENV_VAR})."
        )
        raise FileNotFoundError(msg)
    for _, row in jsonl.read_jsonl(path):
        yield row


class Task(BaseModel):
    r"""A named, split data set of :class:`Example` with its own scorer.

    Subclasses implement :meth:`_load_examples` and :meth:`metrics`; ``score``
    returns the headline metric (:attr:`metric`) of :meth:`metrics`.

    Example:
        >>> from langchain_divconq.tasks import load_task
        >>> task = load_task("gsm8k", split="test")  # doctest: +SKIP
        >>> task.score("24 + 48 = 72.\nThe answer is: 72", task.examples[0])  # doctest: +SKIP
        0.0

    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Task name, e.g. 'gsm8k'.")
    split: str = Field(description="Split name, e.g. 'test'.")
    examples: list[Example] = Field(description="The examples, in file order.")
    max_sub_questions: int = Field(
        default=3, description="Recommended plan size N for this task (2 for two-hop questions)."
    )

    splits: ClassVar[tuple[str, ...]] = ()
    """Splits this task can load."""

    metric: ClassVar[str] = "accuracy"
    """Name of the headline metric that :meth:`score` returns."""

    @classmethod
    def load(cls, root: Path, split: str) -> Task:
        """Load ``split`` from the data root ``root`` (see :func:`resolve_data_dir`)."""
        if split not in cls.splits:
            msg = (
                f"Task {cls.task_name()!r} has no split {split!r}; "
                f"choose one of {list(cls.splits)}."
            )
            raise ValueError(msg)
        return cls(
            name=cls.task_name(), split=split, examples=list(cls._load_examples(root, split))
        )

    @classmethod
    def task_name(cls) -> str:
        """Return the registry name of the task."""
        raise NotImplementedError

    @classmethod
    def _load_examples(cls, root: Path, split: str) -> Iterator[Example]:
        raise NotImplementedError

    def extract(self, solver_text: str) -> str | None:
        """Return the prediction read from the solver text (after the marker), or None."""
        return extract_answer(solver_text)

    def metrics(self, solver_text: str, example: Example) -> dict[str, float]:
        """Return every metric of the task for one solver text; includes :attr:`metric`."""
        raise NotImplementedError

    def score(self, solver_text: str, example: Example) -> float:
        """Score a solver's full text against an example: 1.0 right, 0.0 wrong (F1 for DROP)."""
        return self.metrics(solver_text, example)[self.metric]

    def __len__(self) -> int:
        return len(self.examples)
