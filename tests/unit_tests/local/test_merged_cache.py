"""The merged-model cache: base + adapter merged once, keyed by the adapter and the base."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")


@pytest.fixture
def folders(
    tiny_model_and_tokenizer: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """A tiny base folder and a LoRA adapter over it; the cache goes under tmp_path."""
    model, tok = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    _write_adapter(model, tmp_path / "adapter", seed=1)
    monkeypatch.setenv("DIVCONQ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "base", tmp_path / "adapter"


def _write_adapter(model: Any, folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(copy.deepcopy(model), lora).save_pretrained(folder)


def _merged_in_memory(base: Path, adapter: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return dict(peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().state_dict())


def test_merged_copy_equals_peft_merge_and_is_reused(folders: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM

    from langchain_divconq.local.merged_cache import MERGED_INFO_FILE, merged_model_path

    base, adapter = folders
    folder = merged_model_path(base, adapter)
    assert folder.is_dir() and (folder / "tokenizer.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    for name, tensor in _merged_in_memory(base, adapter).items():
        assert torch.equal(loaded[name], tensor), name
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert merged_model_path(base, adapter) == folder  # second call: no merge
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((folder / MERGED_INFO_FILE).read_text())["key"]


def test_key_changes_with_the_adapter_and_the_stale_copy_goes(
    folders: tuple[Path, Path], tiny_model_and_tokenizer: tuple[Any, Any]
) -> None:
    from transformers import AutoModelForCausalLM

    from langchain_divconq.local.merged_cache import merged_cache_key, merged_model_path

    base, adapter = folders
    old_key = merged_cache_key(base, adapter)
    old = merged_model_path(base, adapter)
    _write_adapter(tiny_model_and_tokenizer[0], adapter, seed=2)  # retrained in place
    assert merged_cache_key(base, adapter) != old_key
    new = merged_model_path(base, adapter)
    assert new != old and not old.exists()  # the stale copy is removed, never loaded
    loaded = AutoModelForCausalLM.from_pretrained(new).state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(loaded[name], _merged_in_memory(base, adapter)[name])


def test_key_changes_with_the_base(folders: tuple[Path, Path]) -> None:
    from langchain_divconq.local.merged_cache import merged_cache_key

    base, adapter = folders
    before = merged_cache_key(base, adapter)
    config = json.loads((base / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (base / "config.json").write_text(json.dumps(config))
    assert merged_cache_key(base, adapter) != before


def test_a_copy_with_a_wrong_key_is_not_used(folders: tuple[Path, Path]) -> None:
    from langchain_divconq.local.merged_cache import MERGED_INFO_FILE, merged_model_path

    base, adapter = folders
    folder = merged_model_path(base, adapter)
    info = folder / MERGED_INFO_FILE
    info.write_text(json.dumps({"key": "something else"}))
    assert merged_model_path(base, adapter) == folder
    assert json.loads(info.read_text())["key"] != "something else"  # merged again


def test_loader_uses_the_cache_without_peft(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_divconq.local import load_local_model

    base, adapter = folders
    first = load_local_model(base, adapter, device="cpu", max_tokens=6)
    assert first.model_name == "base+adapter"
    assert not hasattr(first.model, "peft_config")

    def no_merge(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("peft was asked to merge although the merged copy is cached")

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", no_merge)
    again = load_local_model(base, adapter, device="cpu", max_tokens=6)
    assert again.invoke("hello").content == first.invoke("hello").content
    with pytest.raises(AssertionError, match="peft was asked"):  # cache_merged=False merges
        load_local_model(base, adapter, device="cpu", max_tokens=6, cache_merged=False)


def test_shared_tensors_between_solver_and_decomposer(folders: tuple[Path, Path]) -> None:
    from langchain_divconq.local import load_local_model

    base, adapter = folders
    solver = load_local_model(base, device="cpu", max_tokens=6)
    alone = load_local_model(base, adapter, device="cpu", max_tokens=6)
    shared = load_local_model(base, adapter, device="cpu", max_tokens=6, share_with=solver)
    embed = shared.model.get_input_embeddings().weight
    assert embed.data_ptr() == solver.model.get_input_embeddings().weight.data_ptr()
    q_name = "model.layers.0.self_attn.q_proj.weight"
    q = dict(shared.model.named_parameters())[q_name]
    assert q.data_ptr() != dict(solver.model.named_parameters())[q_name].data_ptr()
    for (name, a), b in zip(
        shared.model.state_dict().items(), alone.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert shared.invoke("hello").content == alone.invoke("hello").content
    # the solver is untouched
    assert (
        solver.invoke("hello").content
        == load_local_model(base, device="cpu", max_tokens=6).invoke("hello").content
    )
    # a same-base, no-adapter model is the very same weights
    twin = load_local_model(base, device="cpu", max_tokens=6, share_with=solver)
    assert twin.model is solver.model


def test_copies_of_deleted_adapters_are_removed(
    folders: tuple[Path, Path], tiny_model_and_tokenizer: tuple[Any, Any], tmp_path: Path
) -> None:
    import shutil

    from langchain_divconq.local.merged_cache import merged_model_path

    base, adapter = folders
    gone = merged_model_path(base, adapter)
    shutil.rmtree(adapter)  # e.g. a deleted checkpoint or a test's temporary folder
    _write_adapter(tiny_model_and_tokenizer[0], tmp_path / "other", seed=3)
    kept = merged_model_path(base, tmp_path / "other")
    assert kept.is_dir() and not gone.exists()
