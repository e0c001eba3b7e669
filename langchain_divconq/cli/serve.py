"""The ``divconq serve`` command (the app itself: :mod:`langchain_divconq.serving.app`)."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from langchain_core.language_models import BaseChatModel

__all__ = ["register_cli"]


def register_cli(subparsers: Any) -> None:
    """Add the ``divconq serve`` sub-command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve the decomposer over an OpenAI-compatible HTTP API",
        description="Serve the decomposer at /v1/chat/completions (OpenAI-compatible).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument(
        "--decomposer",
        default="default",
        help="'default' (embedded SmolLM2), a model folder or hub id",
    )
    parser.add_argument(
        "--adapter",
        default="default",
        help="'default' (the shipped distilled adapter), 'none', or a LoRA adapter folder",
    )
    parser.add_argument(
        "--model-id",
        default="divconq-decomposer",
        help="the model name clients send (default divconq-decomposer; 'default' also works)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda if available)")
    parser.add_argument(
        "--dtype", default=None, help="float32, bfloat16... (default: fp32 on CPU, bf16 on CUDA)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)",
    )
    parser.add_argument("--max-batch", type=int, default=32, help="requests per generate call")
    parser.add_argument(
        "--max-queue", type=int, default=256, help="requests admitted at once; more get HTTP 429"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long to gather a batch (ms)"
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to let running requests finish after SIGTERM",
    )
    parser.set_defaults(handler=_serve)


def _load_model(args: argparse.Namespace) -> BaseChatModel:
    if args.decomposer.startswith("openai:"):
        from langchain_divconq.model_specs import build_decomposer

        return build_decomposer(args.decomposer, args.adapter)
    from langchain_divconq.local import load_decomposer

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    base = None if args.decomposer in ("", "default") else args.decomposer
    adapter = None if args.adapter.lower() == "none" else args.adapter
    # One model.batch call from the server should be one generate call.
    return load_decomposer(
        base, adapter, device=args.device, dtype=args.dtype, batch_size=args.max_batch
    )


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        msg = "divconq serve needs the 'serve' extra: pip install 'langchain-divconq[serve]'."
        raise ImportError(msg) from exc
    from langchain_divconq.serving.app import create_app

    model = _load_model(args)
    app = create_app(
        model,
        model_id=args.model_id,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
    )
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal with the handler
    # it found installed; a quiet handler here turns that into a normal exit status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0
