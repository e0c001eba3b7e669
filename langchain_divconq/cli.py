"""The ``divconq`` command: ask, collect, import, dataset, distill, eval, serve.

Each domain module registers its own sub-command with a ``register_cli(subparsers)``
function, so this file stays a thin router and heavy imports happen only when a
command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib import import_module

__all__ = ["add_data_dir_argument", "add_model_arguments", "main"]

_COMMAND_MODULES: list[str] = [
    # one entry per module that defines register_cli(subparsers)
    "langchain_divconq.server",
    "langchain_divconq.eval_cli",
    "langchain_divconq.collect",
    "langchain_divconq.training.commands",
]


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """Add the ``--data-dir`` flag of the commands that read task data."""
    parser.add_argument(
        "--data-dir",
        default=None,
        help="data root (default: $DIVCONQ_DATA or ../shared/data); "
        "'hub' downloads GSM8K from the HF hub once",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--decomposer/--adapter/--solver/--solver-base-url`` flags shared by commands."""
    parser.add_argument(
        "--decomposer",
        default="default",
        help="'default' (embedded SmolLM2), a model folder or hub id, or openai:MODEL",
    )
    parser.add_argument(
        "--adapter",
        default="default",
        help="'default' (the shipped distilled adapter), 'none', or a LoRA adapter folder",
    )
    parser.add_argument(
        "--decomposer-base-url",
        default=None,
        help="OpenAI-compatible endpoint serving the decomposer (e.g. divconq serve)",
    )
    parser.add_argument(
        "--solver",
        default=None,
        help="'local', 'openai:MODEL', 'llamacpp:PATH' or a model folder; "
        "default openai:gpt-4o-mini when OPENAI_API_KEY is set, else local",
    )
    parser.add_argument(
        "--solver-base-url", default=None, help="OpenAI-compatible endpoint for the solver"
    )
    parser.add_argument(
        "--max-sub-questions", type=int, default=3, help="at most this many sub-questions"
    )


def build_chain_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Build a :class:`~langchain_divconq.chain.DivConqChain` from the shared model flags."""
    from langchain_divconq.chain import create_divconq_chain
    from langchain_divconq.specs import build_decomposer, build_solver

    # The solver first: a bad --solver spec fails before the decomposer's weights load.
    solver = build_solver(args.solver, base_url=args.solver_base_url)
    decomposer = build_decomposer(args.decomposer, args.adapter, base_url=args.decomposer_base_url)
    return create_divconq_chain(decomposer, solver, max_sub_questions=args.max_sub_questions)


def _ask(args: argparse.Namespace) -> int:
    chain = build_chain_from_args(args)
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


if __name__ == "__main__":
    sys.exit(main())
