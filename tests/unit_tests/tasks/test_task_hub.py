import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from langchain_divconq.tasks import download_task_data, load_task

ROWS = {
    ("main", "test"): [{"question": "2 + 3?", "answer": "2 + 3 = 5\n#### 5"}],
    ("socratic", "test"): [
        {"question": "2 + 3?", "answer": "What is 2 + 3? ** 2 + 3 = <<2+3=5>>5\n#### 5"}
    ],
}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    calls: list[tuple[str, str, str]] = []

    def load_dataset(hub_id: str, config: str, *, split: str) -> list[dict[str, Any]]:
        calls.append((hub_id, config, split))
        return ROWS.get((config, split), [{"question": "q", "answer": "#### 1"}])

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_hub_download_materialises_the_local_layout_once(
    fake_hub: list[tuple[str, str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIVCONQ_CACHE", str(tmp_path))
    task = load_task("gsm8k", split="test", data_dir="hub")
    assert task.examples[0].question == "2 + 3?"
    assert task.examples[0].answer == "5"
    assert task.examples[0].sub_questions == ["What is 2 + 3?"]
    assert len(fake_hub) == 4
    row = json.loads((tmp_path / "data" / "gsm8k" / "test.jsonl").read_text())
    assert row["answer"].endswith("#### 5")
    load_task("gsm8k", split="test", data_dir="hub")
    assert len(fake_hub) == 4  # cached: no second download


def test_unknown_hub_task_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"No hub source is known for task 'drop'.*--data-dir"):
        download_task_data("drop", tmp_path)
