"""The ``divconq serve`` command (the app itself: :mod:`langchain_divconq.serving.app`)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from langchain_core.language_models import BaseChatModel

from langchain_divconq.serving.access import WILDCARD_BINDS
from langchain_divconq.serving.limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS_LIMIT

__all__ = [
    "API_KEY_ENV",
    "adapter_specs",
    "allowed_hosts_for",
    "register_cli",
    "resolve_api_key",
    "serve_app",
    "startup_line",
]

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
        action="append",
        default=None,
        metavar="[NAME=]ADAPTER",
        help="'default' (the shipped distilled adapter), 'none', a packaged adapter's name or "
        "a LoRA adapter folder. Repeat as NAME=ADAPTER to serve several adapters on one base, "
        "each chosen by model=NAME; an unnamed one is served as --model-id",
    )
    parser.add_argument(
        "--allow-runtime-adapters",
        action="store_true",
        help="allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter without an API key "
        "(with --api-key they are always allowed to key holders)",
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


def adapter_specs(values: list[str] | None, model_id: str) -> list[tuple[str, str]]:
    """Turn the ``--adapter`` values into ``(model id, adapter)`` pairs, the default first.

    ``NAME=ADAPTER`` serves ``ADAPTER`` as ``NAME``; at most one value may be unnamed,
    and it is served as ``model_id``. The unnamed one is the default (the model that
    also answers to ``"default"``), else the first named one.

    Raises:
        ValueError: For two unnamed values, a name used twice or a bad name.

    Example:
        >>> adapter_specs(["sd-r=./runs/sd-r/adapter", "default"], "divconq-decomposer")
        [('divconq-decomposer', 'default'), ('sd-r', './runs/sd-r/adapter')]

    """
    from langchain_divconq.serving.models import check_model_name

    named: list[tuple[str, str]] = []
    unnamed: list[tuple[str, str]] = []
    for value in values or ["default"]:
        name, sep, adapter = value.partition("=")
        if sep and name and "/" not in name and "\\" not in name:
            named.append((check_model_name(name), adapter))
        else:
            unnamed.append((model_id, value))
    if len(unnamed) > 1:
        msg = (
            f"Only one --adapter may be given without a name (it is served as --model-id "
            f"{model_id!r}); got {[v for _, v in unnamed]}. Name the others: --adapter NAME=DIR."
        )
        raise ValueError(msg)
    specs = unnamed + named
    names = [name for name, _ in specs]
    if len(set(names)) < len(names):
        msg = f"Each served adapter needs its own name; got {names}."
        raise ValueError(msg)
    return specs


def _local_loader(args: argparse.Namespace, share_with: BaseChatModel | None) -> Any:
    """Return a function that loads an adapter (or 'none') on the served base model."""
    from langchain_divconq.local import load_decomposer

    base = None if args.decomposer in ("", "default") else args.decomposer

    def load(adapter: str) -> BaseChatModel:
        # One model.batch call from the server should be one generate call; an adapter
        # merged into a copy shares the tensors it leaves alone with share_with.
        return load_decomposer(
            base,
            None if adapter.lower() == "none" else adapter,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.max_batch,
            share_with=share_with,
        )

    return load


def _load_models(args: argparse.Namespace) -> tuple[dict[str, BaseChatModel], Any]:
    """Load every served model, the default first; return them and the run-time loader."""
    specs = adapter_specs(args.adapter, args.model_id)
    if args.decomposer.startswith("openai:"):
        if len(specs) > 1:
            msg = "Several --adapter values need a local base model, not --decomposer openai:..."
            raise ValueError(msg)
        from langchain_divconq.model_specs import build_decomposer

        return {specs[0][0]: build_decomposer(args.decomposer, specs[0][1])}, None
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    (default_id, default_adapter), *others = specs
    default = _local_loader(args, None)(default_adapter)
    load = _local_loader(args, default)
    models = {default_id: default}
    models.update((name, load(adapter)) for name, adapter in others)
    return models, load


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
    models, loader = _load_models(args)
    (model_id, model), *others = models.items()
    app = create_app(
        model,
        model_id=model_id,
        adapters=dict(others),
        adapter_loader=loader,
        allow_runtime_adapters=args.allow_runtime_adapters,
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


def startup_line(app: Any, server: Any) -> str:
    """Return the line printed once the server listens: its URL, models and key (never the key).

    ``server`` is the running ``uvicorn.Server``: its sockets give the real port
    (``--port 0`` picks a free one).
    """
    host, port = server.config.host, server.config.port
    for listener in getattr(server, "servers", []) or []:
        for sock in getattr(listener, "sockets", []) or []:
            port = sock.getsockname()[1]
            break
    shown = f"[{host}]" if ":" in host else host
    summary = getattr(app.state, "summary", None)
    details = f" | {summary()}" if callable(summary) else ""
    return f"divconq serve: listening on http://{shown}:{port}/v1{details} (Ctrl-C to stop)"


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
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                print(startup_line(app, self), file=sys.stderr, flush=True)

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
