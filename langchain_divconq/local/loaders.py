"""Loaders: a base model (embedded, a folder or a hub id) plus an optional LoRA adapter.

torch, transformers and peft are imported inside the functions, so importing this
module stays cheap.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from langchain_divconq.local.chat_model import LOCAL_EXTRA, ChatLocalModel, require_local
from langchain_divconq.prompts import DEFAULT_MAX_SUB_QUESTIONS

__all__ = [
    "ADAPTERS_DIR",
    "ADAPTER_WEIGHTS",
    "DEFAULT_ADAPTER_DIR",
    "check_adapter_dir",
    "load_decomposer",
    "load_local_model",
    "resolve_adapter",
]

logger = logging.getLogger(__name__)

ADAPTERS_DIR = Path(__file__).parent / "adapters"
"""Where the packaged adapters live; each sub-folder is loadable by its name."""

DEFAULT_ADAPTER_DIR = ADAPTERS_DIR / "general-decomposer"
"""The packaged decomposer adapter that ``adapter="default"`` loads: the general decomposer
(GSM8K, StrategyQA and Break plans; ``training/general_decomposer.py``). The math-only
``gsm8k-decomposer`` still loads by name."""


def resolve_adapter(adapter: str | Path | None) -> Path | None:
    """Turn an ``adapter`` argument into a folder: ``"default"``, a packaged name, or a path.

    ``"default"`` is :data:`DEFAULT_ADAPTER_DIR` (None when it is missing); a bare name
    such as ``"gsm8k-decomposer"`` or ``"general-decomposer"`` is a folder under
    :data:`ADAPTERS_DIR` when one has that name; anything else is a path.

    Example:
        >>> resolve_adapter("gsm8k-decomposer").name
        'gsm8k-decomposer'

    """
    if adapter is None:
        return None
    if isinstance(adapter, str) and adapter == "default":
        if (DEFAULT_ADAPTER_DIR / "adapter_config.json").is_file():
            return DEFAULT_ADAPTER_DIR
        logger.info(
            "No packaged decomposer adapter in %s yet; using the base model alone.",
            DEFAULT_ADAPTER_DIR,
        )
        return None
    if isinstance(adapter, str) and "/" not in adapter and "\\" not in adapter:
        packaged = ADAPTERS_DIR / adapter
        if (packaged / "adapter_config.json").is_file():
            return packaged
    return Path(adapter).expanduser()


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
"""The file names peft saves adapter weights under; one must be in an adapter folder."""


def check_adapter_dir(adapter: str | Path) -> Path:
    """Check that ``adapter`` is a loadable peft adapter folder and return it as a Path.

    The folder must hold an ``adapter_config.json`` that is a JSON object naming its
    ``peft_type``, and the weights (:data:`ADAPTER_WEIGHTS`). A local folder is never
    looked up on the hub (peft does that when the weights are missing).

    Raises:
        ValueError: Naming the folder or file and what is wrong with it.

    """
    folder = Path(adapter).expanduser()
    config = folder / "adapter_config.json"
    how = (
        "Pass a folder written by a peft model's save_pretrained (e.g. the output of "
        "`divconq distill`), or adapter=None to use the base model alone."
    )
    if not config.is_file():
        msg = f"Adapter folder {str(adapter)!r} not found or has no adapter_config.json. {how}"
        raise ValueError(msg)
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{config} is not valid JSON ({exc}); the adapter folder is damaged. {how}"
        raise ValueError(msg) from exc
    if not isinstance(data, dict):
        msg = f"{config} must hold a JSON object; it holds a {type(data).__name__}. {how}"
        raise ValueError(msg)
    if not isinstance(data.get("peft_type"), str):
        msg = (
            f"{config} has no 'peft_type' (keys: {sorted(data)}); it is not a peft adapter "
            f"config. {how}"
        )
        raise ValueError(msg)
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        msg = (
            f"Adapter folder {str(folder)!r} has an adapter_config.json but no adapter weights "
            f"({' or '.join(ADAPTER_WEIGHTS)}); was the save interrupted? {how}"
        )
        raise ValueError(msg)
    return folder


def _check_path_arg(value: object, name: str) -> None:
    if value is not None and not isinstance(value, str | Path):
        msg = f"{name} must be a str, a Path or None; received {type(value).__name__}."
        raise TypeError(msg)


def load_local_model(
    base: str | Path | None = None,
    adapter: str | Path | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
    merge_adapter: bool = True,
    cache_merged: bool = True,
    share_with: ChatLocalModel | None = None,
    **chat_kwargs: Any,
) -> ChatLocalModel:
    """Load a causal LM (and optionally a LoRA adapter) as a :class:`ChatLocalModel`.

    Args:
        base: None or ``"default"`` for the embedded SmolLM2-135M-Instruct, a folder
            written by ``save_pretrained``, or a hub id (needs internet).
        adapter: None for the base model alone, or a peft adapter folder.
        device: ``cpu``, ``cuda``...; default cuda when available, else cpu.
        dtype: A torch dtype or its name; default float32 on CPU, bfloat16 on CUDA.
        merge_adapter: Merge the adapter into the weights (faster inference).
        cache_merged: With ``merge_adapter`` and a local base folder, merge once and
            load the merged copy from the cache afterwards
            (:mod:`~langchain_divconq.local.merged_cache`; no peft needed then).
        share_with: A loaded :class:`ChatLocalModel` of the same base folder, dtype
            and device (e.g. the solver): tensors this model would hold with the same
            values (embeddings, norms, layers the adapter leaves alone) are shared with
            it instead of loaded again. Training either model in place then changes
            both; ignored when the bases differ.
        **chat_kwargs: Fields of :class:`ChatLocalModel` (``max_tokens``, ``stop``...).

    Example:
        >>> llm = load_local_model(max_tokens=16)
        >>> llm.model_name
        'SmolLM2-135M-Instruct.Q4_1-98362432'

    """
    _check_path_arg(base, "base")
    _check_path_arg(adapter, "adapter")
    torch = require_local()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from langchain_divconq.local.embedded import resolve_base_model

    adapter_dir = None if adapter is None else check_adapter_dir(adapter)
    path = resolve_base_model(base)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            msg = f"Unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'."
            raise ValueError(msg)
    name = Path(path).name if Path(path).exists() else path
    merged_path = None
    if adapter_dir is not None and merge_adapter and cache_merged and Path(path).is_dir():
        from langchain_divconq.local.merged_cache import merged_model_path

        try:
            merged_path = merged_model_path(path, adapter_dir)
        except OSError as exc:  # e.g. a read-only cache folder: merge in memory instead
            logger.warning("Could not cache the merged model (%s); merging in memory.", exc)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = None
        if share_with is not None and (adapter_dir is None or merged_path is not None):
            model = _shared_model(share_with, path, merged_path, dtype, device)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(merged_path or path, dtype=dtype)
    except OSError as exc:
        msg = (
            f"Could not load base model {base!r} (resolved to {path!r}): {exc}. Pass None for "
            "the embedded SmolLM2, a folder written by save_pretrained, or a hub id (needs "
            "internet)."
        )
        raise ValueError(msg) from exc
    if merged_path is not None and adapter_dir is not None:
        name = f"{name}+{adapter_dir.name}"
    elif adapter_dir is not None:
        try:
            from peft import PeftModel
        except ImportError as exc:
            msg = f"Loading a LoRA adapter needs peft: {LOCAL_EXTRA}."
            raise ImportError(msg) from exc
        model = PeftModel.from_pretrained(model, str(adapter_dir))
        if merge_adapter:
            model = model.merge_and_unload()
        name = f"{name}+{adapter_dir.name}"
    model.to(device)
    model.eval()
    chat_kwargs.setdefault("model_name", name)
    chat_kwargs.setdefault("fast_decoding", True)
    return ChatLocalModel(model=model, tokenizer=tokenizer, **chat_kwargs)


def _same_folder(a: Any, b: Any) -> bool:
    try:
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    except (OSError, ValueError):
        return False


def _shared_model(
    other: ChatLocalModel, base_path: str, merged_path: Path | None, dtype: Any, device: str
) -> Any:
    """Build a model of ``merged_path`` (or ``base_path``) sharing ``other``'s unchanged tensors.

    None when ``other`` runs a different base, dtype or device, or has another layout.
    """
    import copy

    import torch

    from langchain_divconq.local.merged_cache import MERGED_INFO_FILE

    source = other.model
    first = next(iter(source.parameters()), None)
    # A source that is itself a merged copy shares what neither adapter changed.
    origin, source_changed = str(getattr(source, "name_or_path", "")), set[str]()
    source_info = Path(origin) / MERGED_INFO_FILE
    if origin and source_info.is_file():
        try:
            info = json.loads(source_info.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not isinstance(info.get("changed"), list):
            return None
        origin, source_changed = str(info.get("base", "")), set(info["changed"])
    if (
        first is None
        or not _same_folder(origin, base_path)
        or first.dtype != dtype
        or torch.device(device) != first.device
        or hasattr(source, "peft_config")
    ):
        return None
    if merged_path is None:
        # The very same weights: one model serves both (unless the source is merged).
        return None if source_changed else source
    from safetensors import safe_open

    files = sorted(merged_path.glob("*.safetensors"))
    params = dict(source.named_parameters(remove_duplicate=False))
    shared: dict[int, Any] = {id(p): p for p in source.parameters()}
    shared.update({id(b): b for b in source.buffers()})
    listed = json.loads((merged_path / MERGED_INFO_FILE).read_text()).get("changed")
    wanted = None if listed is None else set(listed) | source_changed
    state: dict[str, Any] = {}
    changed = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            names = list(f.keys())
            if any(name not in params for name in names):
                return None
            for name in names:
                if wanted is None or name in wanted:  # only what either adapter changed
                    state[name] = f.get_tensor(name)
    if not files:
        return None
    for name, tensor in state.items():
        if wanted is not None or not torch.equal(params[name].detach(), tensor.to(dtype)):
            changed[name] = tensor.to(dtype=dtype, device=first.device)
            shared.pop(id(params[name]), None)
    model = copy.deepcopy(source, memo=shared)
    for name, tensor in changed.items():
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner), leaf, torch.nn.Parameter(tensor, requires_grad=False))
    model.name_or_path = str(merged_path)
    logger.info(
        "Sharing all but %d of %d tensors with the already loaded %s",
        len(changed),
        len(params),
        other.model_name,
    )
    return model


def load_decomposer(
    base: str | Path | None = None,
    adapter: str | Path | None = "default",
    *,
    device: str | None = None,
    dtype: Any = None,
    max_sub_questions: int = DEFAULT_MAX_SUB_QUESTIONS,
    **chat_kwargs: Any,
) -> ChatLocalModel:
    """Load the local decomposer: a base model plus (by default) the packaged distilled adapter.

    Args:
        base: As in :func:`load_local_model` (None = the embedded SmolLM2).
        adapter: ``"default"`` for the packaged default adapter, the name of a packaged
            adapter (``"gsm8k-decomposer"``, ``"general-decomposer"``), None for the
            base model alone, or a peft adapter folder.
        device: As in :func:`load_local_model`.
        dtype: As in :func:`load_local_model`.
        max_sub_questions: Generation stops once this many lines plus one (room for a
            preamble line) are complete, since the parser keeps at most this many.
        **chat_kwargs: Fields of :class:`ChatLocalModel`; defaults: greedy,
            ``max_tokens=128``, ``no_repeat_lines=True`` (decoding stops at a line that
            repeats an earlier one, and the repeat is dropped).

    Example:
        >>> decomposer = load_decomposer(adapter=None)
        >>> decomposer.max_lines
        4

    """
    _check_path_arg(adapter, "adapter")
    adapter = resolve_adapter(adapter)
    chat_kwargs.setdefault("max_tokens", 128)
    chat_kwargs.setdefault("temperature", 0.0)
    chat_kwargs.setdefault("max_lines", max_sub_questions + 1)
    chat_kwargs.setdefault("no_repeat_lines", True)
    return load_local_model(base, adapter, device=device, dtype=dtype, **chat_kwargs)
