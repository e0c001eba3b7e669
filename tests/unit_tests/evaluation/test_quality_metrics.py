"""Decomposition metrics of issue #12: bootstrap interval, repeats, trivial plan, plan stats."""

from __future__ import annotations

import pytest

from langchain_divconq.evaluation.quality import (
    bootstrap_ci,
    has_repeated_line,
    plan_stats,
    quality_from_outputs,
    trivial_plan,
)
from langchain_divconq.tasks import Example, GSM8KTask


def _task(gold: bool = True) -> GSM8KTask:
    examples = [
        Example(
            id=str(i),
            question=f"Ann has {i} apples. Bob has 2. How many apples do they have?",
            answer=str(i + 2),
            sub_questions=["How many apples does Ann have?", "How many apples in all?"]
            if gold
            else [],
        )
        for i in range(4)
    ]
    return GSM8KTask(name="gsm8k", split="test", examples=examples)


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    values = [0.0, 0.2, 0.4, 0.9, 1.0, 0.3, 0.5, 0.7]
    low, high = bootstrap_ci(values)
    mean = sum(values) / len(values)
    assert low < mean < high
    assert bootstrap_ci(values) == (low, high)  # same seed, same interval
    assert bootstrap_ci([0.25] * 5) == (0.25, 0.25)
    wide = bootstrap_ci([0.0, 1.0] * 4)
    narrow = bootstrap_ci([0.0, 1.0] * 400)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    low90, high90 = bootstrap_ci(values, level=0.9)
    assert low <= low90 and high90 <= high
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0], level=1.5)


def test_has_repeated_line_ignores_numbering_case_and_blank_lines() -> None:
    assert has_repeated_line("1. How many eggs?\n2. HOW MANY EGGS")
    assert has_repeated_line("- Who wrote it?\n\n* who  wrote it?")
    assert not has_repeated_line("How many eggs?\n\nHow much money?")
    assert not has_repeated_line("")


def test_trivial_plan_is_the_last_sentence() -> None:
    assert trivial_plan("Tom has 3 bags. How many apples?") == "How many apples?"
    assert trivial_plan("A pen costs $1.5 each. What do 3 cost?") == "What do 3 cost?"
    assert trivial_plan("Could a cat   fly") == "Could a cat fly?"
    assert trivial_plan("Find the sum.") == "Find the sum?"


def test_quality_reports_repeats_sentinel_and_interval() -> None:
    task = _task()
    outputs = {
        "0": "How many apples does Ann have?\nHow many apples in all?",
        "1": "How many apples does Ann have?\nHow many apples does Ann have?",
        "2": "NO_SUBQUESTIONS",
        "3": "The answer is 5.",
    }
    quality = quality_from_outputs(task, outputs)
    assert quality.parse_rate == 0.5  # 0 and 1 (the repeat is parsed away)
    assert quality.well_formed_rate == 0.75  # ... and the sentinel
    assert quality.repeat_rate == 0.25
    assert quality.records[1].repeated and not quality.records[0].repeated
    assert quality.records[2].sentinel
    assert quality.token_f1_ci is not None
    low, high = quality.token_f1_ci
    assert low <= quality.token_f1 <= high


def test_trivial_plan_scores_through_the_same_metric() -> None:
    task = _task()
    trivial = {e.id: trivial_plan(e.question) for e in task.examples}
    quality = quality_from_outputs(task, trivial)
    assert quality.parse_rate == 1.0 and quality.mean_predicted == 1.0
    assert 0 < quality.token_f1 < 1


def test_plan_stats_without_gold() -> None:
    task = _task(gold=False)
    outputs: dict[str, str | BaseException | None] = {
        "0": "How many apples does Ann have?\nHow many apples does Bob have?",
        "1": "How many apples do they have?",  # copies the question's last sentence
        "2": "NO_SUBQUESTIONS",
        "3": RuntimeError("boom"),
        "missing": "ignored",
    }
    stats = plan_stats(task, outputs)
    assert stats.n == 4 and stats.failures == 1
    assert stats.parse_rate == 0.5 and stats.well_formed_rate == 0.75
    assert stats.sentinel_rate == 0.25 and stats.repeat_rate == 0.0
    assert stats.copies_question == 0.25
    assert stats.mean_predicted == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match=r"Example\.id"):
        plan_stats(task, {"nope": "x?"})
