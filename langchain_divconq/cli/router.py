"""The ``divconq`` command: ask, collect, import, dataset, distill, eval, serve.

Each module of this folder registers its sub-commands with a ``register_cli(subparsers)``
function and calls into its part of the library; this file routes, and heavy
imports happen only when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from importlib import import_module

from langchain_divconq.cli.args import add_model_arguments, build_chain
from langchain_divconq.secrets import scrub_text, scrubbed_logging

__all__ = ["main"]

_COMMAND_MODULES: list[str] = [
    # one entry per module of this folder that defines register_cli(subparsers)
    "langchain_divconq.cli.cache",
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


_NOISY_LIBRARIES = r"(transformers|peft|torch|accelerate|huggingface_hub|safetensors)(\.|$)"
_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence third-party noise while a command runs; everything is restored afterwards.

    Progress bars and info/warning logs of transformers and the hub, and the
    FutureWarning/DeprecationWarning/UserWarning texts that transformers, peft and
    torch print while loading, would bury a one-line answer. The library itself
    never does this (an application decides what it logs); ``divconq -v`` keeps it all.
    """
    saved_env = {name: os.environ.get(name) for name in _QUIET_ENV}
    for name, value in _QUIET_ENV.items():  # read when transformers is first imported
        os.environ.setdefault(name, value)
    loggers = [logging.getLogger(n) for n in ("transformers", "peft", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    bars = sys.modules.get("transformers.utils.logging")  # already imported: switch it off
    bars_were_on = bool(bars and bars.is_progress_bar_enabled())
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category, module=_NOISY_LIBRARIES)
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            if bars_were_on:
                bars.disable_progress_bar()  # type: ignore[union-attr]
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if bars_were_on:
            bars.enable_progress_bar()  # type: ignore[union-attr]
        for name, saved in saved_env.items():
            if saved is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = saved


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``divconq`` command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        # Logs quote upstream errors (Authorization headers, keys in URLs): scrub them all.
        quiet = contextlib.nullcontext() if args.verbose else quiet_libraries()
        with scrubbed_logging(), quiet:
            return int(args.handler(args) or 0)
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        if args.verbose:  # -v: the traceback too, for a bug report (scrubbed like the logs)
            print(scrub_text(traceback.format_exc()), file=sys.stderr, end="")
        print(f"divconq {args.command}: error: {scrub_text(str(exc))}", file=sys.stderr)
        return 2
