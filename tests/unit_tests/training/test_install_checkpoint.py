"""Shipping a chosen checkpoint of a run (``training/general_decomposer.py --install-from``)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("datasets")

SCRIPT = Path(__file__).resolve().parents[3] / "training" / "general_decomposer.py"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("general_decomposer_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    checkpoint = run / "checkpoint-20"
    checkpoint.mkdir(parents=True)
    weights = {"base_model.model.layer.lora_A.weight": torch.randn(4, 8)}
    safetensors_torch.save_file(weights, str(checkpoint / "adapter_model.safetensors"))
    config = {"r": 4, "base_model_name_or_path": str(tmp_path / "cache" / "smollm2")}
    (checkpoint / "adapter_config.json").write_text(json.dumps(config))
    history = [
        {"step": 10, "loss": 1.5, "num_input_tokens_seen": 100},
        {"step": 20, "loss": 1.0, "num_input_tokens_seen": 200},
        {"step": 20, "eval_loss": 0.9},
    ]
    state = {"global_step": 20, "epoch": 0.5, "log_history": history}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    metadata = {
        "base_model": HUB_ID,
        "global_step": 40,
        "eval_loss": 0.8,
        "resumed_from": str(run / "checkpoint-30"),
        "train_runtime_s": 12.0,
        "train_tokens_per_s": 50.0,
        "config": {"save_dtype": "float16"},
    }
    (run / "divconq_adapter.json").write_text(json.dumps(metadata))
    rows = [
        {"adapter": str(checkpoint), "mean_delta": 0.2},
        {"adapter": str(run), "mean_delta": 0.1},
    ]
    selection = {"chosen": str(checkpoint), "rows": rows}
    (run / "selection.json").write_text(json.dumps(selection))
    return run, checkpoint


def test_a_checkpoint_ships_in_fp16_with_its_own_step_and_no_local_path(tmp_path: Path) -> None:
    run, checkpoint = _run(tmp_path)
    dest = tmp_path / "shipped"
    _script().install(checkpoint, run, dest)

    tensors = safetensors_torch.load_file(str(dest / "adapter_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert (
        json.loads((dest / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    )
    meta = json.loads((dest / "divconq_adapter.json").read_text())
    assert (meta["global_step"], meta["eval_loss"], meta["train_tokens"]) == (20, 0.9, 200)
    assert meta["train_loss"] == pytest.approx(1.25) and meta["last_train_loss"] == 1.0
    assert meta["checkpoint_of_run"] == {"steps": 40, "eval_loss": 0.8}
    # The run's last session says nothing about this step.
    assert meta["resumed_from"] is None and meta["train_runtime_s"] is None
    assert meta["selected_by"]["chosen"] == "checkpoint-20"
    assert [r["adapter"] for r in meta["selected_by"]["rows"]] == ["checkpoint-20", "final"]
    assert str(tmp_path) not in (dest / "divconq_adapter.json").read_text()


def test_the_final_folder_ships_with_the_runs_metadata(tmp_path: Path) -> None:
    run, checkpoint = _run(tmp_path)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (run / name).write_bytes((checkpoint / name).read_bytes())
    dest = tmp_path / "shipped"
    _script().install(run, run, dest)
    meta = json.loads((dest / "divconq_adapter.json").read_text())
    assert meta["global_step"] == 40 and meta["selected_by"]["chosen"] == "checkpoint-20"
