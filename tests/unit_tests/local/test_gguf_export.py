"""GGUF export round trips on the tiny Llama: names, shapes, types, values, tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")


@pytest.fixture
def tiny_folder(tiny_model_and_tokenizer: tuple[Any, Any], tmp_path: Path) -> Path:
    model, tok = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def _template() -> Path:
    from langchain_divconq.local.embedded import embedded_gguf_path

    try:
        return embedded_gguf_path()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"embedded GGUF not installed: {exc}")


def _expected(model: Any) -> dict[str, tuple[int, ...]]:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied: llama.cpp reuses token_embd
            continue
        out[names.get_name(name, try_suffixes=(".weight",))] = tuple(tensor.shape)
    return out


@pytest.mark.slow  # transformers' GGUF reader converts the 49k-token vocabulary too
def test_f32_round_trip_names_shapes_and_values(
    tiny_folder: Path, tiny_model_and_tokenizer: tuple[Any, Any], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, GgufConfig

    from langchain_divconq.local.gguf_export import export_gguf

    model, _ = tiny_model_and_tokenizer
    path = export_gguf(tiny_folder, tmp_path / "tiny.f32.gguf", outtype="f32", template=_template())
    reader = gguf.GGUFReader(path)
    got = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    assert got == _expected(model)
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    theta = model.config.rope_parameters["rope_theta"]  # transformers 5 keeps it here
    assert reader.fields["llama.rope.freq_base"].contents() == pytest.approx(theta)
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"  # copied from template
    # transformers reads GGUF back (undoing llama.cpp's rotary row order): same weights.
    back = AutoModelForCausalLM.from_pretrained(
        path.parent,
        gguf_file=path.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    ).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(back[name], tensor), name


def test_q8_0_types_and_values(
    tiny_folder: Path, tiny_model_and_tokenizer: tuple[Any, Any], tmp_path: Path
) -> None:
    from gguf import quants

    from langchain_divconq.local.gguf_export import _rope_rows, export_gguf

    model, _ = tiny_model_and_tokenizer
    path = export_gguf(tiny_folder, tmp_path / "tiny.q8_0.gguf", template=_template())
    reader = gguf.GGUFReader(path)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    assert kinds["blk.1.ffn_down.weight"] == "Q8_0"
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    values = quants.dequantize(tensor.data, tensor.tensor_type)
    original = model.state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy()
    expected = _rope_rows(original, model.config.num_attention_heads)
    assert np.abs(values - expected).max() <= np.abs(expected).max() / 127 + 1e-6


def test_tokenizer_from_tokenizer_json_matches_the_template(
    tiny_folder: Path, tmp_path: Path
) -> None:
    from langchain_divconq.local.gguf_export import export_gguf

    template = gguf.GGUFReader(_template())
    path = export_gguf(tiny_folder, tmp_path / "t.gguf", outtype="f16", pre_tokenizer="smollm")
    reader = gguf.GGUFReader(path)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id"):
        assert reader.fields[key].contents() == template.fields[key].contents(), key
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["token_embd.weight"] == "F16"


def test_rejects_other_architectures_and_types(tiny_folder: Path, tmp_path: Path) -> None:
    import json

    from langchain_divconq.local.gguf_export import export_gguf

    with pytest.raises(ValueError, match="Unknown GGUF tensor type"):
        export_gguf(tiny_folder, tmp_path / "x.gguf", outtype="q2_k")  # type: ignore[arg-type]
    config = json.loads((tiny_folder / "config.json").read_text())
    (tiny_folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="convert_hf_to_gguf"):
        export_gguf(tiny_folder, tmp_path / "x.gguf")
