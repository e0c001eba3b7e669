"""Evaluation tasks: data loading and answer checking, one class per data set.

Example:
    >>> from langchain_divconq.tasks import load_task
    >>> task = load_task("svamp", split="test", data_dir="../shared/data")  # doctest: +SKIP
    >>> task.score("The answer is: 51 dollars", task.examples[0])  # doctest: +SKIP
    1.0

"""

from __future__ import annotations

import os
from typing import Any

from langchain_divconq.tasks.base import (
    DATA_ENV_VAR,
    Example,
    Task,
    read_jsonl,
    resolve_data_dir,
)
from langchain_divconq.tasks.drop import DROPTask, drop_metrics, normalize_drop_answer
from langchain_divconq.tasks.hub import HUB_SOURCES, download_task_data
from langchain_divconq.tasks.math import (
    GSM8KTask,
    MathTask,
    MultiArithTask,
    SVAMPTask,
    gsm8k_sub_questions,
    numbers_equal,
    parse_number,
    predicted_number,
)
from langchain_divconq.tasks.multihop import HotpotQATask, break_plans
from langchain_divconq.tasks.plans import rewrite_plan
from langchain_divconq.tasks.qa import BamboogleTask, StrategyQATask, normalize_text, yes_no

__all__ = [
    "DATA_ENV_VAR",
    "HUB_SOURCES",
    "TASKS",
    "BamboogleTask",
    "DROPTask",
    "Example",
    "GSM8KTask",
    "HotpotQATask",
    "MathTask",
    "MultiArithTask",
    "SVAMPTask",
    "StrategyQATask",
    "Task",
    "break_plans",
    "default_split",
    "download_task_data",
    "drop_metrics",
    "gsm8k_sub_questions",
    "load_task",
    "normalize_drop_answer",
    "normalize_text",
    "numbers_equal",
    "parse_number",
    "predicted_number",
    "read_jsonl",
    "resolve_data_dir",
    "rewrite_plan",
    "yes_no",
]

TASKS: dict[str, type[Task]] = {
    cls.task_name(): cls
    for cls in (
        GSM8KTask,
        DROPTask,
        BamboogleTask,
        SVAMPTask,
        MultiArithTask,
        StrategyQATask,
        HotpotQATask,
    )
}
"""Registry of task names to task classes."""

_DEFAULT_SPLIT = {
    "gsm8k": "test",
    "drop": "dev",
    "bamboogle": "test",
    "svamp": "test",
    "multiarith": "test",
    "strategyqa": "dev",
    "hotpotqa": "heldout",
}


def default_split(name: str) -> str:
    """Return the evaluation split of a task (``test``, or ``dev`` where there is no test set)."""
    return _DEFAULT_SPLIT[_check_name(name)]


def _check_name(name: str) -> str:
    key = name.strip().lower()
    if key not in TASKS:
        msg = f"Unknown task {name!r}; choose one of {sorted(TASKS)}."
        raise ValueError(msg)
    return key


def load_task(
    name: str,
    *,
    split: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Task:
    """Load a task's split from the data root.

    Args:
        name: One of ``gsm8k``, ``drop``, ``bamboogle``, ``svamp``, ``multiarith``,
            ``strategyqa``, ``hotpotqa`` (Break's plans; decomposition quality only).
        split: The split (see each task's ``splits``); None picks :func:`default_split`.
        data_dir: The data root holding one folder per task; else ``$DIVCONQ_DATA``,
            else ``../shared/data`` relative to the working directory. ``"hub"`` downloads
            the task from the Hugging Face hub once (needs internet and ``datasets``; see
            :data:`HUB_SOURCES`) and reads the cached copy.
        **options: Task fields to set, e.g. ``strict=True`` for the math tasks.

    Returns:
        The :class:`Task`, its examples in file order.

    Example:
        >>> task = load_task("gsm8k", split="test")  # doctest: +SKIP
        >>> len(task), task.examples[0].answer  # doctest: +SKIP
        (1319, '18')

    """
    cls = TASKS[_check_name(name)]
    root = download_task_data(name) if data_dir == "hub" else resolve_data_dir(data_dir)
    task = cls.load(root, split or default_split(name))
    if options:
        unknown = sorted(set(options) - set(type(task).model_fields))
        if unknown:
            known = sorted(type(task).model_fields)
            msg = f"Task {task.name!r} has no option(s) {unknown}; known: {known}."
            raise ValueError(msg)
        task = task.model_copy(update=options)
    return task
