"""The ``divconq`` command: ask, collect, import, dataset, distill, eval, serve.

Each module of this folder registers its sub-commands with a ``register_cli(subparsers)``
function and calls into its part of the library; this file routes, and heavy
imports happen only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib import import_module

from langchain_divconq.cli.args import add_model_arguments, build_chain

__all__ = ["main"]

_COMMAND_MODULES: list[str] = [
    # one entry per module of this folder that defines register_cli(subparsers)
    "langchain_divconq.cli.collect",
    "langchain_divconq.cli.eval",
    "langchain_divconq.cli.serve",
    "langchain_divconq.cli.train",
]


def _ask(args: argparse.Namespace) -> int:
    chain = build_chain(args)
    payload = {"question": args.question, "context": args.context}
    if args.json:
        print(json.dumps(chain.invoke(payload), indent=2, ensure_ascii=False))
        return 0
    result = chain.invoke(payload)
    print("Sub-questions:")
    for i, sub in enumerate(result["sub_questions"], start=1):
        print(f"  {i}. {sub}")
    if not result["sub_questions"]:
        print("  (none: the solver answers directly)")
    print("\nSolution:\n" + result["solution"].strip())
    print(f"\nAnswer: {result['answer']}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="divconq",
        description="Decompose questions with a small local model; solve them with any chat model.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="answer one question through the chain")
    ask.add_argument("question", help="the question to answer")
    ask.add_argument("--context", default=None, help="a passage the question is about")
    ask.add_argument("--json", action="store_true", help="print the output dict as JSON")
    add_model_arguments(ask)
    ask.set_defaults(handler=_ask)
    for name in _COMMAND_MODULES:
        import_module(name).register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``divconq`` command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        print(f"divconq {args.command}: error: {exc}", file=sys.stderr)
        return 2
