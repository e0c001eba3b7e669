"""Which engine runs ChatLocalModel's greedy calls: our torch engine or llama.cpp.

The rule behind ``backend="auto"`` comes from ``benchmarks/decode.py``, which times
both on the same prompts in one run (BENCHMARKS.md, "Decoding on every CPU"): on a
quiet 2-core Xeon, two threads, llama.cpp through our engine ran the decomposer at
1.46x the torch engine with torch on AVX2 and 1.24x with torch on AVX512-BF16 at
batch 1 (1.6-2.1x at batch 16). So ``auto`` takes llama.cpp wherever it is installed
and can run the model. It is an opt-in: the default is ``backend="torch"``, the exact fp32
path, because the q8_0 GGUF's greedy plans differed from the torch model's on 22% of
held-out decomposer prompts (#18), and the quality we evaluate must be what users get.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["cpu_flags", "llamacpp_available", "llamacpp_engine_for"]

logger = logging.getLogger(__name__)

LLAMACPP_HINT = (
    "llama-cpp-python is not installed, so ChatLocalModel runs on its torch engine; "
    "pip install 'langchain-divconq[llamacpp]' for the llama.cpp backend."
)


def llamacpp_available() -> bool:
    """Whether ``llama_cpp`` can be imported (without importing it twice)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def cpu_flags() -> frozenset[str]:
    """Return the CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _model_folder(model: Any) -> Path | None:
    folder = Path(str(getattr(model, "name_or_path", "") or ""))
    if folder.is_dir() and (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    return None


def llamacpp_engine_for(
    model: Any, backend: str, *, gguf_path: str | None = None, gguf_type: str = "q8_0"
) -> Any:
    """Return a :class:`~langchain_divconq.local.llamacpp_backend.LlamaCppEngine`, or None.

    Args:
        model: The ChatLocalModel's transformers model.
        backend: ``"torch"`` (always None), ``"llamacpp"`` (an engine or an error) or
            ``"auto"`` (an engine where llama.cpp is installed and can run the model).
        gguf_path: A GGUF file to run; None writes one from the model's folder.
        gguf_type: Tensor type of the written GGUF.

    Raises:
        ImportError: ``backend="llamacpp"`` without llama-cpp-python.
        ValueError: ``backend="llamacpp"`` for a model llama.cpp cannot run here.

    """
    if backend == "torch":
        return None
    forced = backend == "llamacpp"
    if not llamacpp_available():
        if forced:
            raise ImportError(LLAMACPP_HINT.replace("so ChatLocalModel runs on", "needed by"))
        logger.info(LLAMACPP_HINT)
        return None
    reason = _not_applicable(model, gguf_path)
    if reason is not None:
        if forced:
            msg = f"backend='llamacpp' cannot run this model: {reason}."
            raise ValueError(msg)
        logger.info("ChatLocalModel runs on torch: %s.", reason)
        return None
    try:
        from langchain_divconq.local.gguf_export import gguf_for_folder
        from langchain_divconq.local.llamacpp_backend import LlamaCppEngine

        if gguf_path is None:
            folder = _model_folder(model)
            assert folder is not None  # checked by _not_applicable
            path = gguf_for_folder(folder, gguf_type)  # type: ignore[arg-type]
        else:
            path = Path(gguf_path)
        engine = LlamaCppEngine(path)
    except (ImportError, OSError, RuntimeError, ValueError) as exc:
        if forced:
            raise
        # e.g. a llama-cpp-python whose shared library does not load: stay on torch
        logger.warning("llama.cpp backend unavailable (%s); ChatLocalModel runs on torch.", exc)
        return None
    logger.info("ChatLocalModel runs greedy calls on llama.cpp (%s).", path.name)
    return engine


def _not_applicable(model: Any, gguf_path: str | None) -> str | None:
    """Why llama.cpp cannot stand in for ``model`` (None when it can)."""
    parameter = next(iter(model.parameters()), None)
    if parameter is None or parameter.device.type != "cpu":
        return "the model is not on CPU"
    if gguf_path is not None:
        return None if Path(gguf_path).is_file() else f"GGUF file {gguf_path!r} not found"
    if hasattr(model, "peft_config"):
        return "an unmerged adapter (merge it, or pass gguf_path)"
    if getattr(getattr(model, "config", None), "model_type", None) != "llama":
        return "only Llama-style models are written as GGUF here (pass gguf_path)"
    if _model_folder(model) is None:
        return "the model was not loaded from a folder (pass gguf_path)"
    return None
