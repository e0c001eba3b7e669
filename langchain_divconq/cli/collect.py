"""The ``divconq collect`` and ``divconq import`` commands.

The domain code lives in :mod:`langchain_divconq.tracing.collect` and
:mod:`langchain_divconq.tracing.importers`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from langchain_divconq.cli.args import add_data_dir_argument, add_model_arguments, build_chain

__all__ = ["register_cli"]


def _collect(args: argparse.Namespace) -> int:
    from langchain_divconq.tasks import load_task
    from langchain_divconq.tracing.collect import collect
    from langchain_divconq.tracing.store import open_store

    task = load_task(args.task, split=args.split, data_dir=args.data_dir)
    chain = build_chain(args)
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
    from langchain_divconq.tracing.import_results import SHOWN_ERRORS
    from langchain_divconq.tracing.importers import import_file
    from langchain_divconq.tracing.store import open_store

    with open_store(args.store) as store:
        result = import_file(args.format, args.path, store, limit=args.limit, strict=args.strict)
        total = len(store)
    summary = result.summary(
        what=f" {args.format} trace(s) into {args.store} ({total} in the store)"
    )
    if result.ok:
        print(summary)
        return 0
    if result.skipped > SHOWN_ERRORS:
        summary += "; `divconq -v import ...` logs every bad record"
    print(f"divconq import: {args.path}: {summary}", file=sys.stderr)
    return 1


def register_cli(subparsers: Any) -> None:
    """Add the ``collect`` and ``import`` sub-commands to the ``divconq`` parser."""
    from langchain_divconq.tracing.collect import IMPORT_FORMATS

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
        help="import gold decompositions, chat JSONL or LangSmith runs into a trace store",
        description="Read GSM8K Socratic, StrategyQA or OpenAI chat JSONL, or LangChain/"
        "LangSmith runs (Run objects as JSON or JSONL) into --store as traces; records "
        "already in the store are skipped. Bad records (by 1-based line in JSONL, 'run 3 "
        "(index 2)' in a JSON array) are skipped and listed, and the exit status is 1; "
        "with --strict the file imports whole or not at all.",
    )
    importer.add_argument("format", choices=IMPORT_FORMATS, help="what the file holds")
    importer.add_argument("path", help="the .jsonl (or .json) file to read")
    importer.add_argument(
        "--store", default="traces.jsonl", help="traces.jsonl or sqlite:///traces.db"
    )
    importer.add_argument("--limit", type=int, default=None, help="only the first N records")
    importer.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first bad record and import nothing from the file (without it, "
        "bad records are skipped and listed, and the exit status is 1)",
    )
    importer.set_defaults(handler=_import)
