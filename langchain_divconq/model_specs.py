"""Turn command-line model specs (``local``, ``openai:MODEL``, a path, a URL) into chat models.

Shared by every ``divconq`` command that takes ``--decomposer`` or ``--solver``,
so they all accept the same spellings and fail with the same clear errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_OPENAI_MODEL",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "build_decomposer",
    "build_solver",
    "default_solver_spec",
]

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
"""The solver used when ``OPENAI_API_KEY`` is set and no ``--solver`` is given."""

DEFAULT_REQUEST_TIMEOUT_S = 120.0
"""Seconds one request to a remote (OpenAI-compatible) model may take before it is retried.

The openai client's own default is 600 s per try; a decomposer writes a few
lines and a solver a few hundred tokens, which even a CPU server answers well
within this. ``--request-timeout`` changes it."""

DEFAULT_MAX_RETRIES = 2
"""Retries of a remote request that timed out or failed transiently (the openai client's own)."""

_SOLVER_FORMS = (
    "'local' (the embedded SmolLM2), 'openai:MODEL' (needs OPENAI_API_KEY or "
    "--solver-base-url), 'llamacpp:PATH.gguf', or a local model folder / hub id"
)


def default_solver_spec() -> str:
    """Return ``openai:gpt-4o-mini`` when an OpenAI key is set, else ``local``."""
    return f"openai:{DEFAULT_OPENAI_MODEL}" if os.environ.get("OPENAI_API_KEY") else "local"


def _check_limits(request_timeout: float, max_retries: int) -> None:
    if not request_timeout > 0:  # also refuses NaN
        msg = (
            f"The request timeout must be a positive number of seconds, got {request_timeout!r}; "
            f"pass e.g. --request-timeout {DEFAULT_REQUEST_TIMEOUT_S:g}."
        )
        raise ValueError(msg)
    if max_retries < 0:
        msg = f"max_retries must be 0 or more, got {max_retries}; pass e.g. --max-retries 2."
        raise ValueError(msg)


def _chat_openai(
    model: str,
    base_url: str | None,
    *,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
    **kwargs: Any,
) -> BaseChatModel:
    _check_limits(request_timeout, max_retries)
    try:
        from langchain_openai import ChatOpenAI
    except ImportError as exc:
        msg = "The OpenAI solver needs the 'openai' extra: pip install 'langchain-divconq[openai]'."
        raise ImportError(msg) from exc
    api_key = os.environ.get("OPENAI_API_KEY") or ("not-needed" if base_url else None)
    if api_key is None:
        msg = (
            f"Solver 'openai:{model}' needs OPENAI_API_KEY in the environment, or "
            "--solver-base-url for an OpenAI-compatible server (vLLM, llama.cpp, divconq serve)."
        )
        raise ValueError(msg)
    return ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=api_key,  # type: ignore[arg-type]
        timeout=request_timeout,
        max_retries=max_retries,
        **kwargs,
    )


def _chat_llamacpp(path: str, max_tokens: int) -> BaseChatModel:
    if not Path(path).is_file():
        msg = (
            f"llama.cpp model file not found: {path!r}. Pass --solver llamacpp:/path/to/model.gguf."
        )
        raise ValueError(msg)
    try:
        from langchain_community.chat_models import ChatLlamaCpp
    except ImportError as exc:
        msg = (
            "The llama.cpp solver needs the 'llamacpp' extra: "
            "pip install 'langchain-divconq[llamacpp]' (llama-cpp-python builds from source)."
        )
        raise ImportError(msg) from exc
    return ChatLlamaCpp(model_path=path, max_tokens=max_tokens, temperature=0.0, verbose=False)  # type: ignore[call-arg,unused-ignore]


def build_solver(
    spec: str | None = None,
    *,
    base_url: str | None = None,
    max_tokens: int = 512,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> BaseChatModel:
    """Build the solver chat model from a spec.

    Args:
        spec: ``local``, ``openai:MODEL``, ``llamacpp:PATH``, a local model folder or hub id;
            None picks :func:`default_solver_spec`, or the server's model when ``base_url`` is set.
        base_url: An OpenAI-compatible endpoint (``http://host:port/v1``).
        max_tokens: Generation budget of the solver.
        request_timeout: Seconds per request to a remote model (each retry gets as long).
        max_retries: Retries of a remote request that timed out or failed transiently.

    Example:
        >>> build_solver("openai:gpt-4o", base_url="http://127.0.0.1:8000/v1").model_name
        'gpt-4o'

    """
    remote: dict[str, Any] = {"request_timeout": request_timeout, "max_retries": max_retries}
    if base_url and (spec is None or not spec.startswith("openai:")):
        return _chat_openai(spec or "default", base_url, max_tokens=max_tokens, **remote)
    spec = spec or default_solver_spec()
    if not isinstance(spec, str) or not spec.strip():
        msg = f"Empty solver spec {spec!r}; use {_SOLVER_FORMS}."
        raise ValueError(msg)
    if spec.startswith("openai:"):
        model = spec.removeprefix("openai:")
        if not model:
            msg = f"Solver spec {spec!r} names no model; write e.g. 'openai:gpt-4o-mini'."
            raise ValueError(msg)
        return _chat_openai(model, base_url, max_tokens=max_tokens, **remote)
    if spec.startswith("llamacpp:"):
        return _chat_llamacpp(spec.removeprefix("llamacpp:"), max_tokens)
    if spec == "local":
        from langchain_divconq.local import load_local_model

        return load_local_model(max_tokens=max_tokens)
    if ":" in spec.split("/")[0]:
        msg = f"Unknown solver spec {spec!r}; use {_SOLVER_FORMS}."
        raise ValueError(msg)
    from langchain_divconq.local import load_local_model

    return load_local_model(spec, max_tokens=max_tokens)


def build_decomposer(
    spec: str | None = "default",
    adapter: str | None = "default",
    *,
    base_url: str | None = None,
    share_with: BaseChatModel | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> BaseChatModel:
    """Build the decomposer from a spec.

    Args:
        spec: ``default`` (the embedded SmolLM2), a local model folder or hub id, or
            ``openai:MODEL`` to use a teacher model as the decomposer.
        adapter: ``default`` (the shipped distilled adapter), None/``none`` (base model only),
            or a path to a LoRA adapter folder.
        base_url: An OpenAI-compatible endpoint serving the decomposer (e.g. ``divconq serve``).
        share_with: An already built local model (the solver): when it runs the same base
            model, the decomposer shares its unchanged tensors instead of loading them again.
        request_timeout: Seconds per request to a remote decomposer (each retry gets as long).
        max_retries: Retries of a remote request that timed out or failed transiently.

    """
    if base_url or (spec or "").startswith("openai:"):
        model = (spec or "default").removeprefix("openai:")
        return _chat_openai(
            model,
            base_url,
            max_tokens=256,
            temperature=0.0,
            request_timeout=request_timeout,
            max_retries=max_retries,
        )
    from langchain_divconq.local import ChatLocalModel, load_decomposer

    base = None if spec in (None, "", "default") else spec
    if isinstance(adapter, str) and adapter.lower() == "none":
        adapter = None
    share = share_with if isinstance(share_with, ChatLocalModel) else None
    return load_decomposer(base, adapter=adapter, share_with=share)
