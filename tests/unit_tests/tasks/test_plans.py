"""Gold plans as standalone questions (Break phrases, StrategyQA back-references) and the
HotpotQA task built from Break."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from langchain_divconq.tasks import HotpotQATask, break_plans, load_task, rewrite_plan
from langchain_divconq.tasks.multihop import break_split
from langchain_divconq.tasks.plans import as_phrase, as_question

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def test_phrases_become_questions_with_a_fitting_wh_word() -> None:
    assert as_question("the wife of the writer of Standup Shakespeare") == (
        "Who is the wife of the writer of Standup Shakespeare?"
    )
    assert as_question("tv programs with Joey Lawrence") == (
        "What are the tv programs with Joey Lawrence?"
    )
    assert as_question("the city Joey King lives in") == "What is the city Joey King lives in?"
    assert as_question("when was the film Splash released") == (
        "When was the film Splash released?"
    )


def test_back_references_become_the_words_of_the_step_they_point_to() -> None:
    plan = rewrite_plan(
        [
            "When was Bitcoin launched?",
            "When did the Louisiana Purchase take place?",
            "Is #1 prior to #2?",
        ]
    )
    assert plan is not None
    assert plan[2] == (
        "Is the date Bitcoin was launched prior to the date the Louisiana Purchase took place?"
    )
    for question in plan:
        assert "#" not in question
        assert "answer to question" not in question


def test_a_final_step_that_only_combines_yes_no_answers_is_left_to_the_solver() -> None:
    plan = rewrite_plan(
        ["is Andrew Stevens American", "is Charles Burnett American", "if both #1 and #2 are true"]
    )
    assert plan == ["Is Andrew Stevens American?", "Is Charles Burnett American?"]


def test_unreadable_references_make_the_plan_unusable() -> None:
    # A reference to itself, to a later step, or to a yes/no step in the middle of the plan.
    assert rewrite_plan(["the capital of #1"]) is None
    assert rewrite_plan(["the capital of #2", "the country of Paris"]) is None
    assert rewrite_plan(["is Paris big", "the mayor of #1", "the age of #2"]) is None


def test_as_phrase_reads_common_question_shapes() -> None:
    assert as_phrase("How many kids did Julius Caesar have?") == (
        "the number of kids Julius Caesar had"
    )
    assert as_phrase("How tall is Christopher Nolan?") == "how tall Christopher Nolan is"
    assert as_phrase("What gender is a quinceanera usually held for?") == (
        "the gender a quinceanera is usually held for"
    )
    assert as_phrase("Is the sky blue?") is None


def test_break_split_is_stable_and_near_its_share() -> None:
    ids = [f"HOTPOT_dev_{i}" for i in range(4000)]
    held = sum(break_split(i) == "heldout" for i in ids) / len(ids)
    assert 0.22 < held < 0.28
    assert [break_split(i) for i in ids[:50]] == [break_split(i) for i in ids[:50]]


@pytest.mark.skipif(not (DATA / "break").is_dir(), reason="shared data not present")
def test_hotpotqa_heldout_never_reaches_training() -> None:
    heldout = load_task("hotpotqa", data_dir=DATA)
    assert isinstance(heldout, HotpotQATask)
    assert 250 < len(heldout) < 400
    assert all(e.sub_questions for e in heldout.examples)
    trained = {question for question, _ in break_plans(DATA)}
    assert not trained & {e.question for e in heldout.examples}
    # Most plans read as questions without '#k' notation.
    rows = [json.loads(line) for line in (DATA / "break" / "high_level_dev.jsonl").open()]
    rewritten = [rewrite_plan(r["decomposition"]) for r in rows]
    usable = [p for p in rewritten if p]
    assert len(usable) / len(rows) > 0.9
    assert not any(re.search(r"#\d", q) for p in usable for q in p)
    with pytest.raises(ValueError, match="no answers"):
        heldout.metrics("The answer is: x", heldout.examples[0])
