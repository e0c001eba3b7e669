"""Write a Llama-style model folder (e.g. the merged decomposer) as a GGUF file for llama.cpp.

llama.cpp runs GGUF files only. The embedded base model ships as one (Q4_1), but
the decomposer is that base with the distilled LoRA adapter merged in, which has
no GGUF until we write one. This module does so with the ``gguf`` package
(already a dependency of the ``local`` extra): weights from the folder's
safetensors, hyper-parameters from its ``config.json``, and the tokenizer either
copied from a template GGUF of the same base (the embedded file: exactly the
tokenizer llama.cpp already runs) or built from the folder's ``tokenizer.json``
(byte-level BPE tokenizers only).

Only Llama-style decoders (``LlamaForCausalLM``: SmolLM2, Llama) are handled; for
anything else use llama.cpp's own ``convert_hf_to_gguf.py``.

Tensor types: ``f32``, ``f16``, ``q8_0`` (8-bit blocks of 32, near-lossless; the
default) or ``q4_1`` (what the embedded file uses; the token embedding stays
``q8_0`` as there). Norm weights always stay f32.

Example:
    >>> from langchain_divconq.local.gguf_export import export_gguf
    >>> export_gguf("merged-folder", "decomposer.q8_0.gguf", template=embedded_gguf_path())
    ... # doctest: +SKIP

"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "GGUF_TYPES",
    "export_gguf",
    "gguf_for_folder",
    "gguf_name_for",
    "merged_decomposer_gguf",
]

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_1")
"""Tensor types :func:`export_gguf` writes."""

GgufType = Literal["f32", "f16", "q8_0", "q4_1"]

_FILE_TYPES = {"f32": 0, "f16": 1, "q4_1": 3, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_* numbers


def gguf_name_for(model_dir: str | Path, outtype: GgufType = "q8_0") -> str:
    """Return the GGUF file name written for a folder: ``<folder>.<type>.gguf``.

    Example:
        >>> gguf_name_for("/tmp/decomposer", "f16")
        'decomposer.f16.gguf'

    """
    return f"{Path(model_dir).name}.{outtype}.gguf"


def _read_weights(model_dir: Path) -> dict[str, Any]:
    import numpy as np
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        msg = f"{model_dir} holds no .safetensors weights; save the model with save_pretrained."
        raise FileNotFoundError(msg)
    weights: dict[str, Any] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open objects are not mappings
                weights[name] = np.ascontiguousarray(f.get_tensor(name).float().numpy())
    return weights


def _rope_rows(weight: Any, heads: int) -> Any:
    """Reorder a query/key projection's rows from HF's rotary layout to llama.cpp's.

    transformers rotates the two halves of each head (dimension i pairs with
    i + d/2); llama.cpp rotates neighbouring pairs (2i with 2i + 1). Within each
    head, row i of the first half and row i of the second half become rows 2i
    and 2i + 1.
    """
    rows, cols = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _copy_tokenizer(writer: Any, template: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(template)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = field.contents()
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, value)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(key, value)
        else:
            writer.add_key_value(key, value, kind)


def _hf_tokenizer(writer: Any, model_dir: Path, pre: str) -> None:
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        msg = (
            f"Only byte-level BPE tokenizers can be written without a template GGUF; "
            f"{model_dir} has {model.get('type')!r}. Pass template= a GGUF of the same base."
        )
        raise ValueError(msg)
    vocab: dict[str, int] = dict(model["vocab"])
    special: set[int] = set()
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special.add(added["id"])
    tokens = [""] * (max(vocab.values()) + 1)
    for text, index in vocab.items():
        tokens[index] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges(merges)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    for field, add in (
        ("bos_token", writer.add_bos_token_id),
        ("eos_token", writer.add_eos_token_id),
        ("unk_token", writer.add_unk_token_id),
        ("pad_token", writer.add_pad_token_id),
    ):
        token = config.get(field)
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and token in vocab:
            add(vocab[token])
    writer.add_add_bos_token(False)
    template = config.get("chat_template")
    if isinstance(template, str):
        writer.add_chat_template(template)


def _rope_theta(config: dict[str, Any], model_dir: Path) -> float:
    # transformers 5 keeps it in rope_parameters; older configs at the top level.
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", None):
        msg = (
            f"{model_dir} uses {kind!r} rotary scaling, which export_gguf does not write; "
            "use llama.cpp's convert_hf_to_gguf.py."
        )
        raise ValueError(msg)
    return float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0)


def export_gguf(
    model_dir: str | Path,
    out: str | Path,
    *,
    outtype: GgufType = "q8_0",
    template: str | Path | None = None,
    pre_tokenizer: str = "default",
    name: str | None = None,
) -> Path:
    """Write ``model_dir`` (a ``save_pretrained`` folder of a Llama-style model) as GGUF.

    Args:
        model_dir: The model folder (``config.json`` + safetensors + tokenizer files).
        out: The GGUF file to write (its folder is created).
        outtype: ``f32``, ``f16``, ``q8_0`` (default) or ``q4_1``.
        template: A GGUF of the same base model whose ``tokenizer.*`` metadata is
            copied (e.g. :func:`~langchain_divconq.local.embedded.embedded_gguf_path`);
            None builds it from ``tokenizer.json``.
        pre_tokenizer: llama.cpp's pre-tokenizer name when building from
            ``tokenizer.json`` (``"smollm"`` for SmolLM2).
        name: ``general.name``; default the folder name.

    Returns:
        The written path (written next to it first, then renamed into place).

    Raises:
        ValueError: For a model that is not Llama-style, or an unknown ``outtype``.

    """
    import gguf
    import numpy as np
    from gguf import quants

    if outtype not in GGUF_TYPES:
        msg = f"Unknown GGUF tensor type {outtype!r}; use one of {', '.join(GGUF_TYPES)}."
        raise ValueError(msg)
    model_dir, out = Path(model_dir), Path(out)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        msg = (
            f"export_gguf writes Llama-style models only; {model_dir} is "
            f"{config.get('model_type')!r}. Use llama.cpp's convert_hf_to_gguf.py for it."
        )
        raise ValueError(msg)
    weights = _read_weights(model_dir)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch="llama")
    writer.add_name(name or model_dir.name)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(_rope_theta(config, model_dir))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(_FILE_TYPES[outtype])
    if template is not None:
        _copy_tokenizer(writer, Path(template))
    else:
        _hf_tokenizer(writer, model_dir, pre_tokenizer)

    tied = "lm_head.weight" not in weights or bool(config.get("tie_word_embeddings"))
    for hf_name, data in weights.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when there is no output.weight
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            msg = f"No GGUF name for tensor {hf_name!r}; is {model_dir} a plain Llama model?"
            raise ValueError(msg)
        if hf_name.endswith("q_proj.weight"):
            data = _rope_rows(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _rope_rows(data, kv_heads)
        kind = outtype
        if data.ndim < 2 or data.shape[-1] % 32:
            kind = "f32"
        elif outtype == "q4_1" and gguf_name == "token_embd.weight":
            kind = "q8_0"
        if kind == "f32":
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif kind == "f16":
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:
            qtype = getattr(gguf.GGMLQuantizationType, kind.upper())
            writer.add_tensor(gguf_name, quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return out


def gguf_for_folder(folder: str | Path, outtype: GgufType = "q8_0") -> Path:
    """Return a GGUF of a ``save_pretrained`` folder, written once and reused.

    The file name carries a hash of the folder's weight files (names, sizes,
    modification times), so a folder whose weights change gets a new file. It is
    written inside the folder when that is writable, else under the cache folder.
    The tokenizer metadata comes from the embedded GGUF when the folder has the
    embedded model's tokenizer (llama.cpp is fed token ids, so only the vocabulary
    has to load). The embedded base's own folder maps to the embedded Q4_1 file
    itself, whatever ``outtype`` says: the folder's weights are that file's values.

    Example:
        >>> gguf_for_folder(merged_model_path(base, adapter))  # doctest: +SKIP

    """
    import hashlib
    import os

    from langchain_divconq.local.embedded import cache_dir, embedded_gguf_path, embedded_model_path

    folder = Path(folder)
    try:  # the embedded base: its own GGUF holds exactly the weights it was converted from
        if folder.resolve() == embedded_model_path().resolve():
            return embedded_gguf_path()
    except (ImportError, OSError):
        pass
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    name = f"{folder.name}.{digest.hexdigest()[:10]}.{outtype}.gguf"
    target = (folder if os.access(folder, os.W_OK) else cache_dir() / "gguf") / name
    if target.is_file():
        return target
    template = None
    try:
        embedded_tokenizer = embedded_model_path() / "tokenizer.json"
        mine = folder / "tokenizer.json"
        if mine.is_file() and mine.read_bytes() == embedded_tokenizer.read_bytes():
            template = embedded_gguf_path()
    except (ImportError, OSError):
        pass
    return export_gguf(folder, target, outtype=outtype, template=template)


def merged_decomposer_gguf(
    adapter: str | Path | None,
    base: str | Path | None = None,
    outtype: GgufType = "q8_0",
) -> Path:
    """Return a cached GGUF of a base model with ``adapter`` merged in, writing it once.

    It lies in the merged model's cache folder
    (:func:`~langchain_divconq.local.merged_cache.merged_model_path`), so it follows
    that folder's key: a changed adapter gets a new file (:func:`gguf_for_folder`).

    Args:
        adapter: A peft adapter folder (e.g. ``local.DEFAULT_ADAPTER_DIR``); None for
            the base model alone.
        base: As in :func:`~langchain_divconq.local.load_local_model` (None: embedded).
        outtype: The GGUF tensor type.

    Example:
        >>> path = merged_decomposer_gguf(DEFAULT_ADAPTER_DIR)  # doctest: +SKIP

    """
    from langchain_divconq.local.embedded import resolve_base_model
    from langchain_divconq.local.merged_cache import merged_model_path

    base_dir = Path(resolve_base_model(base))
    folder = merged_model_path(base_dir, adapter) if adapter is not None else base_dir
    return gguf_for_folder(folder, outtype)
