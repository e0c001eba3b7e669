"""Clear errors for broken adapter and base-model folders, and no hub look-up for local folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from langchain_divconq.local import load_local_model
from langchain_divconq.local.embedded import resolve_base_model

GOOD_CONFIG = {"peft_type": "LORA", "base_model_name_or_path": "x", "r": 4}


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything asks the hub."""
    import huggingface_hub

    def refuse(*args: Any, **kwargs: Any) -> Any:
        msg = f"the hub was asked: {args} {kwargs}"
        raise AssertionError(msg)

    for name in ("hf_hub_download", "snapshot_download", "model_info", "file_exists"):
        monkeypatch.setattr(huggingface_hub, name, refuse, raising=False)


def _adapter(tmp_path: Path, config: str | None, weights: bool = True) -> Path:
    folder = tmp_path / "my-adapter"
    folder.mkdir()
    if config is not None:
        (folder / "adapter_config.json").write_text(config, encoding="utf-8")
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("{not json", r"adapter_config\.json.*not valid JSON"),
        ("", r"adapter_config\.json.*not valid JSON"),
        ("[1, 2]", r"adapter_config\.json.*JSON object"),
        (json.dumps({"r": 4}), r"adapter_config\.json.*peft_type"),
    ],
    ids=["bad-json", "empty", "not-an-object", "no-peft-type"],
)
def test_broken_adapter_config_is_a_clear_value_error(
    tmp_path: Path, config: str, expected: str
) -> None:
    folder = _adapter(tmp_path, config)
    with pytest.raises(ValueError, match=expected) as info:
        load_local_model(adapter=folder)
    assert str(folder / "adapter_config.json") in str(info.value)


def test_adapter_folder_without_weights_is_not_looked_up_on_the_hub(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, json.dumps(GOOD_CONFIG), weights=False)
    with pytest.raises(ValueError, match=r"no adapter weights") as info:
        load_local_model(adapter=folder)
    assert str(folder) in str(info.value)
    assert "adapter_model.safetensors" in str(info.value)


def test_base_folder_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "my-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"no model weights") as info:
        resolve_base_model(folder)
    assert str(folder) in str(info.value)
    with pytest.raises(ValueError, match=r"no model weights"):
        load_local_model(folder)


@pytest.mark.parametrize("spec", ["./no-such-model", "~/no/such/model", "/no/such/model-dir"])
def test_missing_local_base_folder_is_not_taken_for_a_hub_id(spec: str) -> None:
    with pytest.raises(ValueError, match=r"does not exist"):
        resolve_base_model(spec)


def test_hub_ids_still_pass_through() -> None:
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct") in (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        str(resolve_base_model(None)),
    )
    assert resolve_base_model("gpt2") == "gpt2"
