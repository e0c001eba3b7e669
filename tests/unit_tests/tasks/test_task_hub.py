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
    with pytest.raises(ValueError, match=r"No hub source is known for task 'nope'.*--data-dir"):
        download_task_data("nope", tmp_path)


# ----------------------------------------------------------------- the other five tasks
def _strategyqa_row(i: int) -> dict[str, Any]:
    return {
        "qid": f"{i:020x}",
        "term": "T",
        "description": "D",
        "question": f"Is {i} even?",
        "answer": i % 2 == 0,
        "facts": [f"{i} is a number."],
        "decomposition": [f"What is {i} mod 2?", "Is #1 zero?"],
    }


HUB_ROWS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("ucinlp/drop", "validation"): [
        {
            "section_id": "nfl_1184",
            "query_id": "q-1",
            "passage": "Chaz Schilens caught a pass.",
            "question": "Who scored the first touchdown?",
            "answers_spans": {"spans": ["Chaz Schilens"], "types": ["span"]},
        },
        {
            "section_id": "nfl_1",
            "query_id": "q-2",
            "passage": "Bears and Lions played.",
            "question": "Which teams played?",
            "answers_spans": {"spans": ["Bears", "Lions"], "types": ["span", "span"]},
        },
    ],
    ("chiayewken/bamboogle", "test"): [
        {"Question": "Who was president when Citibank was founded?", "Answer": "James Madison"}
    ],
    ("ChilleD/SVAMP", "train"): [
        {
            "ID": "chal-1",
            "Body": "Ed had 76 DVDs. ",
            "Question": " He sold 25. How many are left?",
            "Equation": "( 76.0 - 25.0 )",
            "Answer": 51.0,
            "Type": "Subtraction",
        }
    ],
    ("ChilleD/SVAMP", "test"): [
        {
            "ID": "chal-2",
            "Body": "A box has 2.5 kg.",
            "Question": "How much do 2 boxes weigh?",
            "Equation": "( 2.5 * 2.0 )",
            "Answer": 5.0,
            "Type": "Multiplication",
        }
    ],
    ("ChilleD/MultiArith", "train"): [
        {
            "question": " Debby had 32 candies and got 42. She ate 35. How many left? ",
            "final_ans": "39",
        }
    ],
    ("ChilleD/MultiArith", "test"): [{"question": "Half of 3?", "final_ans": "1.5"}],
    ("wics/strategy-qa", "test"): [_strategyqa_row(i) for i in range(40)],
}


@pytest.fixture
def fake_hub_all(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    def load_dataset(hub_id: str, config: str | None = None, *, split: str) -> Any:
        calls.append((hub_id, split))
        return [dict(row) for row in HUB_ROWS[hub_id, split]]

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.setenv("DIVCONQ_CACHE", str(tmp_path))
    return calls


def test_hub_drop(fake_hub_all: list[tuple[str, str]]) -> None:
    task = load_task("drop", data_dir="hub")
    first, multi = task.examples
    assert (first.id, first.question, first.answer) == (
        "q-1",
        "Who scored the first touchdown?",
        "Chaz Schilens",
    )
    assert first.context == "Chaz Schilens caught a pass." and first.answers == ["Chaz Schilens"]
    assert multi.answer == "Bears and Lions"  # as in the local file: spans joined by " and "
    assert task.score("The answer is: Bears and Lions", multi) == 1.0
    assert fake_hub_all == [("ucinlp/drop", "validation")]


def test_hub_bamboogle(fake_hub_all: list[tuple[str, str]]) -> None:
    task = load_task("bamboogle", data_dir="hub")
    (example,) = task.examples
    assert example.question == "Who was president when Citibank was founded?"
    assert example.answer == "James Madison" and task.max_sub_questions == 2
    assert fake_hub_all == [("chiayewken/bamboogle", "test")]


def test_hub_svamp_joins_its_splits_into_one_file(fake_hub_all: list[tuple[str, str]]) -> None:
    task = load_task("svamp", data_dir="hub")
    assert [e.id for e in task.examples] == ["chal-1", "chal-2"]
    assert task.examples[0].question == "Ed had 76 DVDs. He sold 25. How many are left?"
    assert [e.answer for e in task.examples] == ["51", "5"]
    assert sorted(fake_hub_all) == [("ChilleD/SVAMP", "test"), ("ChilleD/SVAMP", "train")]


def test_hub_multiarith(fake_hub_all: list[tuple[str, str]]) -> None:
    task = load_task("multiarith", data_dir="hub")
    assert [e.answer for e in task.examples] == ["39", "1.5"]
    assert task.examples[0].question.startswith("Debby had 32 candies")
    assert task.score("The answer is: 39", task.examples[0]) == 1.0


def test_hub_strategyqa_splits_train_and_dev(
    fake_hub_all: list[tuple[str, str]], tmp_path: Path
) -> None:
    dev = load_task("strategyqa", split="dev", data_dir="hub")
    train = load_task("strategyqa", split="train", data_dir="hub")
    assert dev.examples and train.examples
    ids = [e.id for e in dev.examples] + [e.id for e in train.examples]
    assert sorted(ids) == sorted(row["qid"] for row in HUB_ROWS["wics/strategy-qa", "test"])
    example = dev.examples[0]
    number = int(example.question.split()[1])
    assert example.answer == ("yes" if number % 2 == 0 else "no")
    assert example.sub_questions == [f"What is {number} mod 2?", "Is #1 zero?"]
    assert fake_hub_all == [("wics/strategy-qa", "test")]  # one download for both files
    row = json.loads((tmp_path / "data" / "strategyqa" / "dev.jsonl").read_text().splitlines()[0])
    assert isinstance(row["answer"], bool) and row["facts"]
