"""Plan checks: self/forward references, content-free lines, the Bamboogle bridge rule,
and the paired difference to a baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from langchain_divconq.evaluation.plan_checks import asks_bridge_first, paired_delta
from langchain_divconq.evaluation.quality import (
    content_free,
    plan_stats,
    quality_from_outputs,
    refers_to_itself_or_later,
    trivial_plan,
)
from langchain_divconq.tasks import Example, GSM8KTask, load_task

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def test_references_to_self_or_later_lines_are_caught_and_backward_ones_allowed() -> None:
    assert not refers_to_itself_or_later(
        ["Who wrote X?", "When was the answer to question 1 born?"]
    )
    assert refers_to_itself_or_later(["What is the answer to question 1?"])
    assert refers_to_itself_or_later(["Who wrote X?", "Is step 3 true?", "Is it old?"])
    assert refers_to_itself_or_later(["Is #1 big?"])
    # A bare "#k" past the plan's end is a label in the question, not a pointer.
    assert not refers_to_itself_or_later(["How many people think horse #12 will win?"])
    assert refers_to_itself_or_later(["Who won?", "Is #2 older than horse #12?"])


def test_content_free_lines_have_no_words_of_their_own() -> None:
    assert content_free("What is the answer to question 1?")
    assert content_free("What is the result of step 2?")
    assert not content_free("How many eggs does the duck lay?")


def test_rates_reach_plan_stats_and_quality() -> None:
    task = GSM8KTask(
        name="gsm8k",
        split="test",
        examples=[
            Example(id="0", question="q", answer="1", sub_questions=["How many?"]),
            Example(id="1", question="r", answer="2", sub_questions=["How much?"]),
        ],
    )
    outputs = {"0": "What is the answer to question 1?", "1": "How much money?"}
    stats = plan_stats(task, outputs)
    assert stats.reference_rate == 0.5 and stats.content_free_rate == 0.5
    quality = quality_from_outputs(task, outputs)
    assert quality.reference_rate == 0.5 and quality.content_free_rate == 0.5
    assert quality.records[0].refers_ahead and not quality.records[1].refers_ahead


def test_bridge_rule_accepts_a_first_hop_and_rejects_restatements_and_amounts() -> None:
    q = "What is the maximum airspeed (in km/h) of the third fastest bird?"
    assert asks_bridge_first(q, ["Which bird is the third fastest?", "How fast is it?"], None)
    assert not asks_bridge_first(q, [q], None)
    assert not asks_bridge_first(q, ["How fast is the fastest bird?"], None)
    assert not asks_bridge_first(q, ["What is the maximum airspeed of a bird?"], None)
    assert not asks_bridge_first(q, ["Is the Saker falcon the third fastest bird?"], "Saker falcon")
    assert not asks_bridge_first(q, [], None)


@pytest.mark.skipif(not (DATA / "bamboogle").is_dir(), reason="shared data not present")
def test_the_trivial_plan_rarely_passes_the_bridge_rule() -> None:
    task = load_task("bamboogle", data_dir=DATA)
    assert task.examples[0].bridge_entity == "1812"
    passed = sum(
        asks_bridge_first(e.question, [trivial_plan(e.question)], e.bridge_entity)
        for e in task.examples
    )
    assert passed / len(task) < 0.1


def test_paired_delta_uses_shared_ids_only() -> None:
    mean, (low, high) = paired_delta({"a": 1.0, "b": 0.5, "c": 0.0}, {"a": 0.5, "b": 0.5})
    assert mean == 0.25 and low <= mean <= high
    with pytest.raises(ValueError, match="same questions"):
        paired_delta({"a": 1.0}, {"b": 1.0})
