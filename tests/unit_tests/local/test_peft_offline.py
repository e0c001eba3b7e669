"""README's plain-peft recipe: the shipped adapter on the embedded base, offline.

The adapters' ``adapter_config.json`` names the hub id as the base, so
``AutoPeftModelForCausalLM`` would go to the network; README shows how to load the
embedded base folder and ``PeftModel.from_pretrained`` instead. This runs that very
block (pytest-socket blocks the network) and checks it against the library's loader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[3] / "README.md"


def _readme_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"README should hold one python block with {marker!r}"
    return found[0]


def test_readme_recipe_is_needed_the_config_names_the_hub_id() -> None:
    from langchain_divconq.local.embedded import EMBEDDED_HUB_ID
    from langchain_divconq.local.loaders import ADAPTERS_DIR

    block = _readme_block("PeftModel.from_pretrained(base")
    assert "embedded_model_path()" in block
    for config in ADAPTERS_DIR.glob("*/adapter_config.json"):
        assert json.loads(config.read_text())["base_model_name_or_path"] == EMBEDDED_HUB_ID


@pytest.mark.slow
def test_readme_peft_recipe_runs_offline_and_matches_load_decomposer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("peft")
    from langchain_divconq.local import load_decomposer
    from langchain_divconq.prompts import decomposer_messages, message_text, parse_sub_questions

    namespace: dict[str, Any] = {}
    exec(compile(_readme_block("PeftModel.from_pretrained(base"), "README.md", "exec"), namespace)
    plan: str = namespace["plan"]
    assert capsys.readouterr().out.strip() == plan.strip()
    assert hasattr(namespace["model"], "peft_config")  # the adapter is on, not merged

    decomposer = load_decomposer(backend="torch", max_tokens=64)
    reply = message_text(decomposer.invoke(decomposer_messages(namespace["question"])))
    # load_decomposer stops once the plan is complete; the plain loop runs on to EOS or 64
    # tokens: its text continues the decomposer's, and the parsed plans are the same.
    assert parse_sub_questions(reply), f"the decomposer wrote no plan: {reply!r}"
    assert plan.startswith(reply.rstrip()), (plan, reply)
    assert parse_sub_questions(plan)[:3] == parse_sub_questions(reply)
