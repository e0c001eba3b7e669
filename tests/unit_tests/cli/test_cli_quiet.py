"""``divconq ask`` prints the answer only: no library warnings or progress bars unless ``-v``."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from langchain_divconq.cli.router import quiet_libraries


def test_quiet_libraries_silences_third_party_noise_and_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    level = logging.getLogger("transformers").level
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_libraries():
            assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
            assert logging.getLogger("transformers").level == logging.ERROR
            warnings.warn_explicit("old", FutureWarning, "modeling_utils.py", 1, "transformers.x")
            warnings.warn_explicit("peft", UserWarning, "peft_model.py", 1, "peft.peft_model")
            warnings.warn_explicit("ours", UserWarning, "chain.py", 1, "langchain_divconq.chain")
        warnings.warn_explicit("later", FutureWarning, "modeling_utils.py", 1, "transformers.x")
    assert [str(w.message) for w in seen] == ["ours", "later"]  # our own warnings stay
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    assert logging.getLogger("transformers").level == level


@pytest.mark.slow  # two fresh processes: about 20 s on a quiet 2-core machine
def test_divconq_ask_prints_no_library_noise(
    tiny_model_and_tokenizer: tuple[Any, Any], tmp_path: Path
) -> None:
    """A whole ``divconq ask`` in a fresh process: merge (peft), two loads, two models."""
    peft = pytest.importorskip("peft")
    model, tok = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(copy.deepcopy(model), lora).save_pretrained(tmp_path / "adapter")
    base = str(tmp_path / "base")
    command = [sys.executable, "-m", "langchain_divconq.cli"]
    ask = ["ask", "What is 2 + 3?", "--decomposer", base, "--adapter", str(tmp_path / "adapter")]
    env = {**os.environ, "DIVCONQ_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("OPENAI_API_KEY", None)
    env.pop("PYTHONWARNINGS", None)
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        env.pop(name, None)
    run = subprocess.run(
        [*command, *ask, "--solver", base], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr
    assert "Answer:" in run.stdout
    assert run.stderr == ""  # no FutureWarning, no "Loading weights" bar, no log lines
    loud = subprocess.run(
        [*command, "-v", *ask, "--solver", base], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert loud.returncode == 0, loud.stderr
    assert loud.stderr  # -v keeps the libraries' own output (and ours at INFO)
