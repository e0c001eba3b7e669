"""Task loading and every answer checker on tricky cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from langchain_divconq.tasks import (
    DATA_ENV_VAR,
    TASKS,
    BamboogleTask,
    DROPTask,
    Example,
    GSM8KTask,
    StrategyQATask,
    default_split,
    drop_metrics,
    gsm8k_sub_questions,
    load_task,
    normalize_drop_answer,
    parse_number,
    predicted_number,
    resolve_data_dir,
    yes_no,
)

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared data folder not present")


def _example(answer: str, answers: list[str] | None = None) -> Example:
    return Example(id="x", question="q?", answer=answer, answers=answers or [answer])


# ---------------------------------------------------------------- numeric checker
@pytest.mark.parametrize(
    ("text", "gold", "expected"),
    [
        ("The answer is: 72", "72", 1.0),
        ("The answer is: 72 clips", "72", 1.0),
        ("The answer is: $18.00", "18", 1.0),
        ("The answer is: $1,250", "1250", 1.0),
        ("The answer is: 1,250.00 dollars.", "1,250", 1.0),
        ("The answer is: -3", "-3", 1.0),
        ("The answer is: \u22123 degrees", "-3", 1.0),
        ("The answer is: 3", "-3", 0.0),
        ("The answer is: 50%", "50", 1.0),
        ("The answer is: 0.5", ".5", 1.0),
        ("The answer is: 1/2", "0.5", 1.0),
        ("The answer is: 48 + 24 = 72", "72", 1.0),
        ("The answer is: **72**", "72", 1.0),
        ("So the final answer is 72.", "72", 1.0),
        # The number after the marker wins over the last number in the text.
        ("The answer is: 72\nCheck: 24 + 48 = 72, and 5 boxes", "72", 1.0),
        ("The answer is: 5 boxes of 72 clips", "72", 0.0),
        # Several markers: the last one counts.
        ("The answer is: 10\nWait, recount.\nThe answer is: 12", "12", 1.0),
        # No marker: fall back to the last number of the text.
        ("48 / 2 = 24 in May, so 48 + 24 = 72", "72", 1.0),
        ("She has 72 clips and 3 friends", "72", 0.0),
        ("The answer is: seventy-two", "72", 0.0),
        ("", "72", 0.0),
        ("The answer is: 5-3", "5", 1.0),
    ],
)
def test_math_checker(text: str, gold: str, expected: float) -> None:
    task = GSM8KTask(name="gsm8k", split="test", examples=[])
    assert task.score(text, _example(gold)) == expected


def test_math_strict_mode_needs_marker() -> None:
    task = GSM8KTask(name="gsm8k", split="test", examples=[], strict=True)
    assert task.score("48 + 24 = 72", _example("72")) == 0.0
    assert task.score("The answer is: 72", _example("72")) == 1.0


def test_number_parsing_edges() -> None:
    assert parse_number("1,000,000 people") == 1_000_000
    assert parse_number("3, 4 and 5") == 3  # a list is not a thousands group
    assert parse_number("costs $-") is None
    assert predicted_number("The answer is: x = 7") == 7
    assert predicted_number("no digits here") is None
    assert GSM8KTask(name="g", split="test", examples=[]).extract("The answer is: 18.00") == "18"


def test_gsm8k_socratic_sub_questions() -> None:
    solution = (
        "How many clips in May? ** Natalia sold 48/2 = <<48/2=24>>24 clips.\n"
        "How many in all? ** 48+24 = <<48+24=72>>72\n#### 72"
    )
    assert gsm8k_sub_questions(solution) == ["How many clips in May?", "How many in all?"]
    assert gsm8k_sub_questions("No steps\n#### 3") == []


# ---------------------------------------------------------------- DROP
def test_drop_normalization() -> None:
    assert normalize_drop_answer("The Steelers.") == "steelers"
    assert normalize_drop_answer("5") == normalize_drop_answer("5.0") == "5.0"
    assert normalize_drop_answer("twenty-one yards") == "twenty one yards"
    assert normalize_drop_answer("an apple, a pear") == "apple pear"


@pytest.mark.parametrize(
    ("predicted", "golds", "em", "f1"),
    [
        ("Chaz Schilens", ["Chaz Schilens"], 1.0, 1.0),
        ("the Chaz Schilens.", ["Chaz Schilens"], 1.0, 1.0),
        ("Schilens", ["Chaz Schilens"], 0.0, 0.67),
        ("Chaz Schilens scored", ["Chaz Schilens"], 0.0, 0.8),
        # Numbers must agree: sharing words is not enough.
        ("5 yards", ["6 yards"], 0.0, 0.0),
        ("12", ["12.0"], 1.0, 1.0),
        ("12 yards", ["12"], 0.0, 0.67),
        # Several accepted answers: the best one.
        (
            "Pakistani and Filipino",
            ["Pakistanis and Filipinos", "Pakistani and Filipino"],
            1.0,
            1.0,
        ),
        ("2.3", ["2.3", ".01"], 1.0, 1.0),
        (None, ["3"], 0.0, 0.0),
    ],
)
def test_drop_metrics_strings(
    predicted: str | None, golds: list[str], em: float, f1: float
) -> None:
    assert drop_metrics(predicted, golds) == (em, f1)


def test_drop_multi_span_alignment() -> None:
    # Order of spans does not matter; each gold span is paired with one predicted span.
    assert drop_metrics(["Bears", "Lions"], [["Lions", "Bears"]]) == (1.0, 1.0)
    # One of two gold spans found: mean over max(#gold, #pred) slots.
    assert drop_metrics(["Lions"], [["Lions", "Bears"]]) == (0.0, 0.5)
    # An extra predicted span is penalised the same way.
    assert drop_metrics(["Lions", "Bears", "Rams"], [["Lions", "Bears"]]) == (0.0, 0.67)
    # The alignment is one-to-one: two predictions of the same span get one slot.
    assert drop_metrics(["Lions", "Lions"], [["Lions", "Bears"]]) == (0.0, 0.5)
    # Greedy pairing would take the perfect pair first (1.0 + 0.0); the best
    # one-to-one alignment is 0.4 + 0.8.
    predicted = ["green bay packers", "bay packers"]
    gold = ["green bay packers", "green lions"]
    assert drop_metrics(predicted, [gold]) == (0.0, 0.6)


def test_drop_task_score_returns_f1_and_em_beside() -> None:
    task = DROPTask(name="drop", split="dev", examples=[])
    example = _example("Chaz Schilens")
    assert task.metrics("The answer is: Schilens", example) == {"f1": 0.67, "em": 0.0}
    assert task.score("The answer is: Schilens", example) == 0.67
    # No marker: the last non-empty line is the prediction.
    assert task.score("Reading the passage...\nChaz Schilens\n", example) == 1.0


# ---------------------------------------------------------------- Bamboogle
@pytest.mark.parametrize(
    ("text", "expected", "cover"),
    [
        ("The answer is: James Madison", 1.0, 1.0),
        ("The answer is: james madison.", 1.0, 1.0),
        ("The answer is: President James Madison", 0.0, 1.0),
        ("The answer is: Madison", 0.0, 0.0),
        ("The answer is: Mildred Gale", 1.0, 1.0),  # the alternative answer
        ("I think it was\nJames Madison", 1.0, 1.0),  # no marker: last line
        ("", 0.0, 0.0),
    ],
)
def test_bamboogle_checker(text: str, expected: float, cover: float) -> None:
    task = BamboogleTask(name="bamboogle", split="test", examples=[])
    example = _example("james madison", ["james madison", "Mildred Gale"])
    assert task.metrics(text, example) == {"accuracy": expected, "cover": cover}


# ---------------------------------------------------------------- StrategyQA
@pytest.mark.parametrize(
    ("text", "gold", "expected"),
    [
        ("The answer is: yes", "yes", 1.0),
        ("The answer is: Yes.", "yes", 1.0),
        ("The answer is: True", "yes", 1.0),
        ("The answer is: No, a solo pianist keeps their own pace.", "no", 1.0),
        ("The answer is: false", "no", 1.0),
        ("The answer is: It is not true", "no", 0.0),  # the first yes/no word is "true"
        ("The answer is: maybe", "no", 0.0),
        ("Conductors lead groups. So no.", "no", 1.0),  # no marker: last yes/no word
        ("Yes they do, wait, no.", "no", 1.0),
        ("nothing decisive", "yes", 0.0),
    ],
)
def test_strategyqa_checker(text: str, gold: str, expected: float) -> None:
    task = StrategyQATask(name="strategyqa", split="dev", examples=[])
    assert task.score(text, _example(gold)) == expected


def test_yes_no() -> None:
    assert yes_no("Yes") == "yes"
    assert yes_no("no.") == "no"
    assert yes_no("Nobody knows") is None  # "nobody" is not "no"
    assert yes_no(None) is None


# ---------------------------------------------------------------- loading
def test_missing_data_dir_error_names_fixes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        resolve_data_dir()
    message = str(info.value)
    assert "--data-dir" in message
    assert DATA_ENV_VAR in message
    assert "shared" in message
    with pytest.raises(FileNotFoundError, match="data_dir argument"):
        resolve_data_dir(tmp_path / "nope")


def test_env_var_and_unknown_names(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "svamp"
    folder.mkdir()
    rows = [
        {"id": "a", "question": " 2 + 2? ", "answer": 4},
        {"id": "b", "question": "x", "answer": 1.5},
    ]
    (folder / "svamp.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    task = load_task("SVAMP", split="test")
    assert [e.answer for e in task.examples] == ["4", "1.5"]
    assert task.examples[0].question == "2 + 2?"
    assert load_task("svamp", strict=True).strict is True
    with pytest.raises(ValueError, match="Unknown task"):
        load_task("mmlu", split="test")
    with pytest.raises(ValueError, match="no split 'train'"):
        load_task("svamp", split="train")
    with pytest.raises(ValueError, match="no option"):
        load_task("svamp", temperature=1)


def test_truncated_data_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "multiarith").mkdir()
    (tmp_path / "multiarith" / "multiarith.jsonl").write_text('{"id": 0, "question": "q", "ans')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_task("multiarith", data_dir=tmp_path)


@needs_data
@pytest.mark.parametrize(
    ("name", "split", "count"),
    [
        ("gsm8k", "test", 1319),
        ("gsm8k", "train", 7473),
        ("bamboogle", "test", 125),
        ("svamp", "test", 1000),
        ("multiarith", "test", 600),
        ("strategyqa", "train", 1290),
        ("strategyqa", "dev", 500),
    ],
)
def test_real_data_loads(name: str, split: str, count: int) -> None:
    task = load_task(name, split=split, data_dir=DATA)
    assert len(task) == count
    assert len({e.id for e in task.examples}) == count
    assert all(e.question and e.answer for e in task.examples)


@needs_data
def test_real_data_fields() -> None:
    gsm = load_task("gsm8k", split="test", data_dir=DATA)
    first = gsm.examples[0]
    assert first.answer == "18"
    assert first.sub_questions == [
        "How many eggs does Janet sell?",
        "How much does Janet make at the farmers' market?",
    ]
    assert all(e.sub_questions for e in gsm.examples)
    assert gsm.score("The answer is: $18", first) == 1.0
    drop = load_task("drop", data_dir=DATA)
    assert default_split("drop") == "dev" and len(drop) == 9536
    assert drop.examples[0].context and drop.examples[1].answers == [
        "Pakistanis and Filipinos",
        "Pakistani and Filipino",
    ]
    bamboogle = load_task("bamboogle", data_dir=DATA)
    assert bamboogle.max_sub_questions == 2
    assert bamboogle.examples[47].answers[-1] == "Mildred Gale"
    sqa = load_task("strategyqa", split="dev", data_dir=DATA)
    assert sqa.examples[0].answer == "no" and len(sqa.examples[0].sub_questions) == 2
    assert set(TASKS) == {
        "gsm8k",
        "drop",
        "bamboogle",
        "svamp",
        "multiarith",
        "strategyqa",
        "hotpotqa",
    }
