"""`divconq distill` under torchrun: two CPU processes (gloo) train one adapter, and its
metadata records the world size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_distill_under_torchrun_on_two_cpu_processes(tmp_path: Path) -> None:
    from langchain_divconq.tracing.trace import Trace
    from langchain_divconq.training import build_dataset
    from tests.unit_tests.tiny import build_tiny_model_and_tokenizer

    model, tokenizer = build_tiny_model_and_tokenizer()
    base = tmp_path / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    traces = [
        Trace(
            question=f"Ann has {i} pens and {i + 3} pencils. How many in all?",
            sub_questions=["How many pens?", "How many pencils?"],
            score=1.0,
        )
        for i in range(16)
    ]
    data = tmp_path / "data"
    build_dataset(traces, variant="SD-T", val_fraction=0).save_to_disk(str(data))
    out = tmp_path / "adapter"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "langchain_divconq.cli", "distill", "--dataset", str(data),
        "--base-model", str(base), "--output-dir", str(out), "--device", "cpu",
        "--max-steps", "2", "--batch-size", "2", "--lora-r", "4", "--num-threads", "1",
        "--logging-steps", "1", "--save-steps", "2", "--max-length", "256",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "divconq_adapter.json").read_text())
    assert meta["world_size"] == 2
    assert meta["global_step"] == 2
    assert (out / "adapter_model.safetensors").is_file()
