r"""Collect traces: run a chain over a task split, or import gold decompositions.

``divconq collect`` runs the chain (usually a teacher: a strong decomposer and
solver) over a task split with a :class:`~langchain_divconq.tracing.TraceRecorder`,
scoring every run with the task's own checker, and resumes where it stopped:
questions that already have a successful trace in the store are skipped.
``divconq import`` reads gold decompositions (GSM8K Socratic, StrategyQA) or
OpenAI chat JSONL into a store, skipping records already there.

Example:
    .. code-block:: bash

        divconq collect --task gsm8k --split train --limit 500 --store traces.jsonl \
            --decomposer openai:gpt-4o-mini --solver openai:gpt-4o-mini --concurrency 8
        divconq import gsm8k-socratic ../shared/data/gsm8k/train_socratic.jsonl \
            --store traces.jsonl

"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable, RunnableConfig

    from langchain_divconq.store import TraceStore
    from langchain_divconq.tasks import Example, Task

__all__ = ["IMPORT_FORMATS", "CollectSummary", "collect", "register_cli"]

logger = logging.getLogger(__name__)

IMPORT_FORMATS = ("gsm8k-socratic", "openai-chat", "strategyqa")
"""What ``divconq import`` reads (the keys of :data:`langchain_divconq.interop.IMPORTERS`)."""


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


def _chunks(items: Sequence[Example], size: int) -> Iterator[Sequence[Example]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    from langchain_divconq.scoring import task_checker
    from langchain_divconq.tracing import TraceRecorder

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
    bar = _progress(len(examples), skipped, enabled=progress, desc=f"collect {task.name}")
    failed = correct = 0
    try:
        for chunk in _chunks(todo, concurrency):
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
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if recorder.write_errors:
        msg = (
            f"{recorder.write_errors} trace(s) could not be written to {store!r}; see the log. "
            "Check the disk and permissions, then run the same command again to resume."
        )
        raise OSError(msg)
    return CollectSummary(skipped=skipped, attempted=len(todo), failed=failed, correct=correct)


def _progress(total: int, initial: int, *, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="q")


def _collect(args: argparse.Namespace) -> int:
    from langchain_divconq import cli
    from langchain_divconq.store import open_store
    from langchain_divconq.tasks import load_task

    task = load_task(args.task, split=args.split, data_dir=args.data_dir)
    chain = cli.build_chain_from_args(args)
    with open_store(args.store) as store:
        summary = collect(
            chain,
            task,
            store,
            limit=args.limit,
            concurrency=args.concurrency,
            tags=args.tag or (),
            progress=not args.no_progress,
        )
    print(
        f"{task.name}/{task.split}: ran {summary.attempted} question(s) "
        f"({summary.correct} correct, {summary.failed} failed), skipped {summary.skipped} "
        f"already in {args.store}"
    )
    return 1 if summary.attempted and summary.failed == summary.attempted else 0


def _import(args: argparse.Namespace) -> int:
    from langchain_divconq.interop import IMPORTERS
    from langchain_divconq.store import open_store

    importer = IMPORTERS[args.format]
    with open_store(args.store) as store:
        known = store.trace_ids()
        fresh = [t for t in importer(args.path, limit=args.limit) if t.trace_id not in known]
        written = store.add_many(fresh)
        total = len(store)
    print(f"imported {written} {args.format} trace(s) into {args.store} ({total} in the store)")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add the ``collect`` and ``import`` sub-commands to the ``divconq`` parser."""
    from langchain_divconq.cli import add_data_dir_argument, add_model_arguments

    parser = subparsers.add_parser(
        "collect",
        help="run the chain over a task split and record traces (resumable)",
        description="Run the decomposer + solver chain over a task split, recording one "
        "scored trace per question into --store. Re-running skips questions already there.",
    )
    parser.add_argument("--task", required=True, help="gsm8k, drop, bamboogle, svamp, ...")
    parser.add_argument("--split", default=None, help="split (default: the task's test/dev)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N examples")
    parser.add_argument(
        "--store", default="traces.jsonl", help="traces.jsonl or sqlite:///traces.db"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="questions per batch / parallel calls"
    )
    parser.add_argument("--tag", action="append", help="extra tag on every run (repeatable)")
    add_data_dir_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_arguments(parser)
    parser.set_defaults(handler=_collect)

    importer = subparsers.add_parser(
        "import",
        help="import gold decompositions or chat JSONL into a trace store",
        description="Read GSM8K Socratic, StrategyQA or OpenAI chat JSONL into --store as "
        "traces; records already in the store are skipped.",
    )
    importer.add_argument("format", choices=IMPORT_FORMATS, help="what the file holds")
    importer.add_argument("path", help="the .jsonl file to read")
    importer.add_argument(
        "--store", default="traces.jsonl", help="traces.jsonl or sqlite:///traces.db"
    )
    importer.add_argument("--limit", type=int, default=None, help="only the first N records")
    importer.set_defaults(handler=_import)
