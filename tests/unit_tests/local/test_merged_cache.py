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
    folders: tuple[Path, Path],
    tiny_model_and_tokenizer: tuple[Any, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import AutoModelForCausalLM

    from langchain_divconq.local import merged_cache
    from langchain_divconq.local.merged_cache import merged_cache_key, merged_model_path

    monkeypatch.setattr(merged_cache, "_IN_USE", set())

    base, adapter = folders
    old_key = merged_cache_key(base, adapter)
    old = merged_model_path(base, adapter)
    _write_adapter(tiny_model_and_tokenizer[0], adapter, seed=2)  # retrained in place
    assert merged_cache_key(base, adapter) != old_key
    new = merged_model_path(base, adapter)
    assert new != old and old.exists()  # this process loaded the old copy: kept while it runs
    merged_cache._IN_USE.clear()  # as in a later process
    assert merged_model_path(base, adapter) == new
    assert not old.exists()  # the stale copy is removed, never loaded
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
    folders: tuple[Path, Path],
    tiny_model_and_tokenizer: tuple[Any, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    from langchain_divconq.local import merged_cache
    from langchain_divconq.local.merged_cache import merged_model_path

    monkeypatch.setattr(merged_cache, "_IN_USE", set())
    base, adapter = folders
    gone = merged_model_path(base, adapter)
    merged_cache._IN_USE.clear()  # a copy this process uses would be kept
    shutil.rmtree(adapter)  # e.g. a deleted checkpoint or a test's temporary folder
    _write_adapter(tiny_model_and_tokenizer[0], tmp_path / "other", seed=3)
    kept = merged_model_path(base, tmp_path / "other")
    assert kept.is_dir() and not gone.exists()


# --- the bound on the cache (issue #19): newest N copies, a size cap, never one in use ---


def _age(folder: Path, seconds_ago: float) -> None:
    """Pretend ``folder`` was last used ``seconds_ago`` (its info file's mtime)."""
    import os
    import time

    from langchain_divconq.local.merged_cache import MERGED_INFO_FILE

    stamp = time.time() - seconds_ago
    os.utime(folder / MERGED_INFO_FILE, (stamp, stamp))


def test_only_the_newest_copies_are_kept_and_never_one_in_use(
    folders: tuple[Path, Path],
    tiny_model_and_tokenizer: tuple[Any, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langchain_divconq.local import merged_cache

    monkeypatch.setattr(merged_cache, "_IN_USE", set())
    monkeypatch.setenv("DIVCONQ_CACHE_MAX_MERGED", "2")
    base, first = folders
    adapters = [first]
    for seed in (2, 3):
        adapters.append(tmp_path / f"adapter{seed}")
        _write_adapter(tiny_model_and_tokenizer[0], adapters[-1], seed=seed)
    copies = []
    for i, adapter in enumerate(adapters):
        copies.append(merged_cache.merged_model_path(base, adapter))
        _age(copies[-1], 3600 - i)  # an hour ago: no other process can be loading them
    # All three were handed out by this process, so none goes although the bound is 2.
    assert all(c.is_dir() for c in copies)
    assert [c.path for c in merged_cache.list_merged()] == copies  # least recently used first

    merged_cache._IN_USE.clear()  # as a new process would start
    again = merged_cache.merged_model_path(base, adapters[2])  # a hit: prunes too
    assert again == copies[2]
    assert not copies[0].exists()  # the least recently used copy went
    assert copies[1].is_dir() and copies[2].is_dir()

    monkeypatch.setenv("DIVCONQ_CACHE_MAX_MERGED", "1")
    _age(copies[1], 10)  # used 10 s ago: perhaps loading in another process right now
    merged_cache.prune_merged()
    assert copies[1].is_dir()
    assert merged_cache.prune_merged(recent_s=5) == [copies[1]]
    assert [c.path for c in merged_cache.list_merged()] == [copies[2]]


def _fake_copy(root: Path, name: str, size: int, seconds_ago: float) -> Path:
    folder = root / "merged" / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * size)
    info = {"key": name, "base": f"/bases/{name}", "adapter": f"/adapters/{name}"}
    (folder / "divconq_merged.json").write_text(json.dumps(info))
    _age(folder, seconds_ago)
    return folder


def test_size_cap_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_divconq.local import merged_cache

    monkeypatch.setenv("DIVCONQ_CACHE", str(tmp_path))
    monkeypatch.delenv("DIVCONQ_CACHE_MAX_MERGED", raising=False)
    monkeypatch.delenv("DIVCONQ_CACHE_MAX_MERGED_GB", raising=False)
    made = [_fake_copy(tmp_path, f"c{i}", 1000, 1000 - i) for i in range(6)]
    # default: the newest 4
    assert merged_cache.prune_merged() == made[:2]
    # a size cap of 2.5 KB on top keeps the newest two (1000 bytes each)
    monkeypatch.setenv("DIVCONQ_CACHE_MAX_MERGED_GB", str(2.5e-6))
    assert merged_cache.prune_merged() == made[2:4]
    copy = merged_cache.list_merged()[0]
    assert (copy.size_bytes, copy.base, copy.adapter) == (
        1000 + len((made[4] / "divconq_merged.json").read_text()),
        "/bases/c4",
        "/adapters/c4",
    )
    # 0 means no limit
    monkeypatch.setenv("DIVCONQ_CACHE_MAX_MERGED_GB", "0")
    _fake_copy(tmp_path, "c9", 10, 1)
    monkeypatch.setenv("DIVCONQ_CACHE_MAX_MERGED", "0")
    assert merged_cache.prune_merged() == []


def test_a_bad_bound_warns_and_keeps_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from langchain_divconq.local import merged_cache

    monkeypatch.setenv("DIVCONQ_CACHE", str(tmp_path))
    monkeypatch.setenv("DIVCONQ_CACHE_MAX_MERGED", "few")
    made = [_fake_copy(tmp_path, f"c{i}", 10, 1000 - i) for i in range(5)]
    with caplog.at_level("WARNING"):
        assert merged_cache.prune_merged() == made[:1]
    assert "DIVCONQ_CACHE_MAX_MERGED='few' is not a whole number" in caplog.text


def test_cache_list_and_clear_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from langchain_divconq.cli import main
    from langchain_divconq.local import merged_cache

    monkeypatch.setenv("DIVCONQ_CACHE", str(tmp_path))
    monkeypatch.setattr(merged_cache, "_IN_USE", set())
    kept = _fake_copy(tmp_path, "in-use", 10, 5000)
    gone = _fake_copy(tmp_path, "old", 2000, 4000)
    (tmp_path / "SmolLM2-x").mkdir()
    (tmp_path / "SmolLM2-x" / "model.safetensors").write_bytes(b"\0" * 300)
    merged_cache._IN_USE.add(kept.resolve())

    assert main(["cache", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["kind"], Path(r["path"]).name) for r in rows] == [
        ("merged", "in-use"),
        ("merged", "old"),
        ("base model", "SmolLM2-x"),
    ]
    assert rows[1]["adapter"] == "/adapters/old" and rows[1]["size_bytes"] > 2000
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "adapter /adapters/old" in out

    assert main(["cache", "clear"]) == 0  # --merged is the default
    assert "removed 1 entries (merged copies, 2.1 KB)" in capsys.readouterr().out
    assert kept.is_dir() and not gone.exists() and (tmp_path / "SmolLM2-x").is_dir()

    assert main(["cache", "clear", "--all"]) == 0
    assert "removed 1 entries (everything" in capsys.readouterr().out
    assert not (tmp_path / "SmolLM2-x").exists() and kept.is_dir()  # in use: kept
    merged_cache._IN_USE.clear()
    assert main(["cache", "clear", "--all"]) == 0
    assert not kept.exists()
