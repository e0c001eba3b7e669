"""Flags shared by several ``divconq`` commands, and the one chain builder from them."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_data_dir_argument", "add_model_arguments", "build_chain"]


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """Add the ``--data-dir`` flag of the commands that read task data."""
    parser.add_argument(
        "--data-dir",
        default=None,
        help="data root (default: $DIVCONQ_DATA or ../shared/data); "
        "'hub' downloads the task from the HF hub once (needs internet and datasets)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--decomposer/--adapter/--solver/--solver-base-url`` flags shared by commands.

    Also ``--request-timeout`` and ``--max-retries`` for remote models (``openai:MODEL``
    or a base URL), so a stuck server costs seconds, not the openai client's 600 s a try.
    """
    from langchain_divconq.model_specs import DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT_S

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
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help="seconds each request to a remote decomposer or solver may take before it is "
        f"retried (default {DEFAULT_REQUEST_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        help="retries of a remote request that timed out or failed transiently "
        f"(default {DEFAULT_MAX_RETRIES})",
    )


def build_chain(
    args: argparse.Namespace, *, single_stage: str | None = None, max_tokens: int | None = None
) -> Any:
    """Build the chain the shared model flags describe.

    Args:
        args: Parsed flags from :func:`add_model_arguments`.
        single_stage: ``"direct"`` or ``"cot"`` for a solver-only baseline chain.
        max_tokens: The solver's generation budget (its own default when None).

    """
    from langchain_divconq.chain import create_divconq_chain, create_single_stage_chain
    from langchain_divconq.model_specs import (
        DEFAULT_MAX_RETRIES,
        DEFAULT_REQUEST_TIMEOUT_S,
        build_decomposer,
        build_solver,
    )

    if max_tokens is not None and max_tokens < 1:
        msg = f"--max-tokens must be at least 1, got {max_tokens}."
        raise ValueError(msg)
    # The solver first: a bad --solver spec fails before the decomposer's weights load.
    remote: dict[str, Any] = {  # a Namespace built by hand may lack these flags
        "request_timeout": getattr(args, "request_timeout", DEFAULT_REQUEST_TIMEOUT_S),
        "max_retries": getattr(args, "max_retries", DEFAULT_MAX_RETRIES),
    }
    solver_options = {} if max_tokens is None else {"max_tokens": max_tokens}
    solver = build_solver(args.solver, base_url=args.solver_base_url, **solver_options, **remote)
    if single_stage:
        return create_single_stage_chain(solver, cot=single_stage == "cot")
    decomposer = build_decomposer(
        args.decomposer,
        args.adapter,
        base_url=args.decomposer_base_url,
        share_with=solver,
        **remote,
    )
    return create_divconq_chain(decomposer, solver, max_sub_questions=args.max_sub_questions)
