r"""Collect traces: run a chain over a task split, or import gold decompositions.

``collect`` (``divconq collect``) runs the chain (usually a teacher: a strong decomposer and
solver) over a task split with a :class:`~langchain_divconq.tracing.TraceRecorder`,
scoring every run with the task's own checker, and resumes where it stopped:
questions that already have a successful trace in the store are skipped.
The importers (``divconq import``) read gold decompositions (GSM8K Socratic, StrategyQA) or
OpenAI chat JSONL into a store, skipping records already there.

Example:
    .. code-block:: bash

        divconq collect --task gsm8k --split train --limit 500 --store traces.jsonl \
            --decomposer openai:gpt-4o-mini --solver openai:gpt-4o-mini --concurrency 8
        divconq import gsm8k-socratic ../shared/data/gsm8k/train_socratic.jsonl \
            --store traces.jsonl

"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_divconq.progress import chunks, progress_bar

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable, RunnableConfig

    from langchain_divconq.tasks import Task
    from langchain_divconq.tracing.store import TraceStore

__all__ = ["IMPORT_FORMATS", "CollectSummary", "collect"]

logger = logging.getLogger(__name__)

IMPORT_FORMATS = ("gsm8k-socratic", "langsmith-runs", "openai-chat", "strategyqa")
"""What ``divconq import`` reads (the keys of :data:`~.tracing.importers.IMPORTERS`)."""


class CollectSummary:
    """Counts of one ``collect`` call."""

    def __init__(self, skipped: int, attempted: int, failed: int, correct: int) -> None:
        self.skipped = skipped
        """Questions already in the store, not run again."""
        self.attempted = attempted
        """Questions run now."""
        self.failed = failed
        """Runs that ended in an error (recorded with ``error`` set)."""
        self.correct = correct
        """Runs scored correct by the task's checker."""

    def __repr__(self) -> str:
        return (
            f"CollectSummary(skipped={self.skipped}, attempted={self.attempted}, "
            f"failed={self.failed}, correct={self.correct})"
        )


def _key(question: str, context: str | None) -> tuple[str, str]:
    return " ".join(question.split()), " ".join((context or "").split())


def collect(
    chain: Runnable[Any, Any],
    task: Task,
    store: TraceStore,
    *,
    limit: int | None = None,
    concurrency: int = 8,
    tags: Sequence[str] = (),
    progress: bool = True,
) -> CollectSummary:
    """Run ``chain`` over a task's examples into ``store``, skipping questions already there.

    Each run carries metadata ``reference`` (the gold answer), ``task``, ``split``
    and ``example_id``, and tags ``collect`` and the task name, and is scored
    with ``task.score``. Runs go through ``chain.batch`` ``concurrency`` at a time:
    each chunk is one batch call per stage, so a local decomposer generates for the
    whole chunk at once and an API model gets at most ``concurrency`` calls at once.

    Args:
        chain: A ``DivConqChain`` (or any runnable that uses one).
        task: The task whose examples are run.
        store: Where traces go.
        limit: Only the first ``limit`` examples of the split.
        concurrency: Questions per batch and parallel model calls.
        tags: Extra tags on every run.
        progress: Show a tqdm progress bar (when tqdm is installed).

    Returns:
        A :class:`CollectSummary`.

    Example:
        >>> task = load_task("gsm8k", split="train")  # doctest: +SKIP
        >>> collect(chain, task, open_store("t.jsonl"))  # doctest: +SKIP
        CollectSummary(skipped=0, attempted=7473, failed=2, correct=6120)

    """
    from langchain_divconq.tracing.recorder import TraceRecorder
    from langchain_divconq.tracing.scoring import task_checker

    if concurrency < 1:
        msg = f"concurrency must be at least 1, got {concurrency}."
        raise ValueError(msg)
    if limit is not None and limit < 0:
        msg = f"limit must be >= 0 or None, got {limit}."
        raise ValueError(msg)
    examples = task.examples[:limit] if limit is not None else list(task.examples)
    done = {_key(t.question, t.context) for t in store if t.error is None}
    todo = [e for e in examples if _key(e.question, e.context) not in done]
    skipped = len(examples) - len(todo)
    recorder = TraceRecorder(store, checker=task_checker(task))
    bar = progress_bar(
        len(examples), desc=f"collect {task.name}", enabled=progress, initial=skipped
    )
    failed = correct = 0
    try:
        for chunk in chunks(todo, concurrency):
            configs: list[RunnableConfig] = [
                {
                    "callbacks": [recorder],
                    "tags": ["collect", task.name, *tags],
                    "metadata": {
                        "reference": example.answer,
                        "task": task.name,
                        "split": task.split,
                        "example_id": example.id,
                    },
                }
                for example in chunk
            ]
            inputs = [{"question": e.question, "context": e.context} for e in chunk]
            outputs = chain.batch(inputs, configs, return_exceptions=True)
            for example, output in zip(chunk, outputs, strict=True):
                if isinstance(output, BaseException):
                    failed += 1
                    logger.warning("A run failed (its trace records the error): %s", output)
                elif task.score(str(output.get("solution") or ""), example) >= 1.0:
                    correct += 1
            bar.update(len(chunk))
    finally:
        bar.close()
    if recorder.write_errors:
        msg = (
            f"{recorder.write_errors} trace(s) could not be written to {store!r}; see the log. "
            "Check the disk and permissions, then run the same command again to resume."
        )
        raise OSError(msg)
    return CollectSummary(skipped=skipped, attempted=len(todo), failed=failed, correct=correct)
