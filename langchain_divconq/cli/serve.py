"""The ``divconq serve`` command (the app itself: :mod:`langchain_divconq.serving.app`)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from typing import Any

from langchain_core.language_models import BaseChatModel

from langchain_divconq.serving.access import WILDCARD_BINDS
from langchain_divconq.serving.limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS_LIMIT

__all__ = ["API_KEY_ENV", "allowed_hosts_for", "register_cli", "resolve_api_key", "serve_app"]

logger = logging.getLogger(__name__)

API_KEY_ENV = "DIVCONQ_API_KEY"
"""The environment variable that holds the server's API key when --api-key is not given."""


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
        help="seconds to let running requests finish after SIGTERM; the ones still running "
        "then get a JSON 503 and their generation stops",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds a request may take before it gets HTTP 504 and its generation stops "
        "(default 600; 0: no limit)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body; larger gets HTTP 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="longest prompt in tokens (default: the model's context, read from its config)",
    )
    parser.add_argument(
        "--max-tokens-limit",
        type=int,
        default=None,
        help="largest max_tokens a request may ask for (default: the model's context, "
        f"else {DEFAULT_MAX_TOKENS_LIMIT})",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every request but /health (default: "
        f"${API_KEY_ENV}, else no key)",
    )
    parser.add_argument(
        "--allowed-hosts",
        nargs="+",
        default=[],
        metavar="HOST",
        help="more names clients may reach the server by (Host header; localhost and the "
        "bound address always work; '*' turns the check off). Guards against DNS rebinding",
    )
    parser.add_argument(
        "--allowed-origins",
        nargs="+",
        default=[],
        metavar="ORIGIN",
        help="browser origins (https://app.example) allowed to call; requests from other "
        "origins get 403 ('*' allows any)",
    )
    parser.set_defaults(handler=_serve)


def resolve_api_key(flag: str | None) -> str | None:
    """Return the API key: the ``--api-key`` flag, else ``$DIVCONQ_API_KEY``, else None.

    Example:
        >>> resolve_api_key("k")
        'k'

    """
    return flag or os.environ.get(API_KEY_ENV) or None


def allowed_hosts_for(bind_host: str, extra: list[str]) -> list[str] | None:
    """Return the Host names to accept for a server bound to ``bind_host``.

    A server bound to every interface (``0.0.0.0``) cannot know the names it is
    reached by, so it accepts any unless ``extra`` names them.

    Example:
        >>> allowed_hosts_for("127.0.0.1", ["box.lan"])
        ['127.0.0.1', 'box.lan']
        >>> allowed_hosts_for("0.0.0.0", []) is None
        True

    """
    if bind_host in WILDCARD_BINDS and not extra:
        return None
    return [bind_host, *extra]


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
    import importlib.util

    if importlib.util.find_spec("uvicorn") is None:  # before the minutes of model loading
        msg = "divconq serve needs the 'serve' extra: pip install 'langchain-divconq[serve]'."
        raise ImportError(msg)
    from langchain_divconq.serving.app import create_app

    api_key = resolve_api_key(args.api_key)
    if args.host in WILDCARD_BINDS and api_key is None:
        logger.warning(
            "Serving on every interface (%s) without an API key: anyone who can reach this "
            "machine can use the model. Set --api-key or %s.",
            args.host or "0.0.0.0",
            API_KEY_ENV,
        )
    model = _load_model(args)
    app = create_app(
        model,
        model_id=args.model_id,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_limit=args.max_tokens_limit,
        request_timeout=args.request_timeout or None,
        api_key=api_key,
        allowed_hosts=allowed_hosts_for(args.host, args.allowed_hosts),
        allowed_origins=args.allowed_origins,
    )
    serve_app(
        app,
        host=args.host,
        port=args.port,
        graceful_timeout=args.graceful_timeout,
        log_level="info" if args.verbose else "warning",
    )
    return 0


def serve_app(
    app: Any, *, host: str, port: int, graceful_timeout: float, log_level: str = "warning"
) -> None:
    """Run ``app`` (from :func:`~langchain_divconq.serving.app.create_app`) until SIGTERM/SIGINT.

    On the signal the server stops accepting connections and lets running requests
    finish; shortly before ``graceful_timeout`` seconds the ones still running get a
    JSON 503 and their generation is stopped, so the process exits on time.
    """
    try:
        import uvicorn
    except ImportError as exc:
        msg = "divconq serve needs the 'serve' extra: pip install 'langchain-divconq[serve]'."
        raise ImportError(msg) from exc

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:  # the first signal starts the drain
                drain = getattr(app.state, "drain", None)
                if drain is not None:
                    drain(graceful_timeout)
            super().handle_exit(sig, frame)

    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal with the handler
    # it found installed; a quiet handler here turns that into a normal exit status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # A float works (uvicorn passes it to asyncio.timeout); the stub says int.
        timeout_graceful_shutdown=graceful_timeout,  # type: ignore[arg-type]
    )
    _Server(config).run()
