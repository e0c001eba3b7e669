"""Building the general decomposer's data: caps, back-references, deduplication, the mix."""

from __future__ import annotations

from collections import Counter

import pytest

from langchain_divconq.prompts import NO_DECOMPOSITION
from langchain_divconq.tracing.trace import Trace
from langchain_divconq.training.dataset import (
    cap_sub_questions,
    decomposer_example,
    dedupe_sub_questions,
    mix_examples,
    resolve_back_references,
    select_examples,
)


def test_dedupe_keeps_the_first_of_each() -> None:
    assert dedupe_sub_questions(["A?", " a? ", "B?", "A?"]) == ["A?", "B?"]


def test_cap_first_and_spread() -> None:
    steps = [f"S{i}?" for i in range(1, 7)]
    assert cap_sub_questions(steps, 3) == ["S1?", "S2?", "S3?"]
    assert cap_sub_questions(steps, 3, keep="spread") == ["S1?", "S3?", "S6?"]  # 2.5 -> 2
    assert cap_sub_questions(steps[:4], 3, keep="spread") == ["S1?", "S3?", "S4?"]
    assert cap_sub_questions(steps[:2], 3, keep="spread") == ["S1?", "S2?"]
    assert cap_sub_questions(steps, 1, keep="spread") == ["S6?"]


def test_cap_with_back_references_keeps_a_closed_renumbered_plan() -> None:
    plan = ["Who wrote X?", "Who wrote Y?", "When was #2 born?", "Is #3 before 1900?"]
    assert cap_sub_questions(plan, 3, keep="spread") == [
        "Who wrote Y?",
        "When was #1 born?",
        "Is #2 before 1900?",
    ]
    # Every step needed: fall back to the first ones (a prefix never refers forward).
    tight = ["A?", "B?", "C?", "Is #1 or #2 or #3 true?"]
    assert cap_sub_questions(tight, 3, keep="spread") == ["A?", "B?", "C?"]


def test_resolve_back_references_in_words() -> None:
    resolved = resolve_back_references(["How tall is X?", "How tall is Y?", "Is #1 above #2?"])
    assert resolved[2] == "Is the answer to question 1 above the answer to question 2?"
    assert resolve_back_references(["Is #4 big?"]) == ["Is #4 big?"]  # no such step
    assert resolve_back_references(["Is #1 big?"], "it") == ["Is it big?"]


def test_select_examples_dedupes_and_spreads() -> None:
    trace = Trace(question="Q?", sub_questions=["A?", "a?", "B?", "C?", "D?", "E?"])
    (row,) = select_examples([trace], keep="spread")
    assert row["completion"][0]["content"] == "A?\nC?\nE?"
    (first,) = select_examples([trace])
    assert first["completion"][0]["content"] == "A?\nB?\nC?"


def test_decomposer_example_for_no_decomposition() -> None:
    row = decomposer_example("What is 2 + 2?", [])
    assert row["completion"] == [{"role": "assistant", "content": NO_DECOMPOSITION}]
    assert row["prompt"][-1]["content"] == "Question: What is 2 + 2?"


def test_mix_keeps_proportions_in_every_prefix_and_repeats_small_strata() -> None:
    strata = {
        "big": [{"i": i} for i in range(100)],
        "small": [{"i": i} for i in range(3)],
    }
    mixed = mix_examples(strata, {"big": 0.75, "small": 0.25}, 40, seed=1)
    assert len(mixed) == 40
    for n in (4, 8, 20, 40):
        counts = Counter(row["stratum"] for row in mixed[:n])
        assert abs(counts["small"] - n / 4) <= 1
    small = [row["i"] for row in mixed if row["stratum"] == "small"]
    assert sorted(set(small)) == [0, 1, 2]  # repeated to reach its share
    big = [row["i"] for row in mixed if row["stratum"] == "big"]
    assert len(set(big)) == len(big)  # no repeats while a stratum lasts
    assert mix_examples(strata, {"big": 0.75, "small": 0.25}, 40, seed=1) == mixed
    with pytest.raises(ValueError, match="total"):
        mix_examples(strata, {"big": 1.0}, 0)
    with pytest.raises(ValueError, match="at least one example"):
        mix_examples({"a": [], "b": [{"i": 1}]}, {"a": 0.5, "b": 0.5}, 4)
