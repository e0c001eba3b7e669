import time

import pytest

from langchain_divconq.prompts import (
    ANSWER_MARKER,
    MAX_SUB_QUESTION_CHARS,
    NO_DECOMPOSITION,
    decomposer_messages,
    extract_answer,
    format_sub_questions,
    parse_sub_questions,
    single_stage_messages,
    solver_messages,
)


def test_numbered_list_with_prose_around_it() -> None:
    text = (
        "Sure! Let's break it down.\n"
        "1. How many clips did Natalia sell in May?\n"
        "2) How many clips did she sell in April and May together?\n"
        "These two questions lead to the answer."
    )
    assert parse_sub_questions(text) == [
        "How many clips did Natalia sell in May?",
        "How many clips did she sell in April and May together?",
    ]


@pytest.mark.parametrize(
    "line",
    [
        "- How much does one apple cost?",
        "* How much does one apple cost?",
        "\u2022 How much does one apple cost?",
        "Q1: How much does one apple cost?",
        "Sub-question 1: How much does one apple cost?",
        "Step 1. How much does one apple cost?",
        "(1) How much does one apple cost?",
        "**1.** How much does one apple cost?",
        "- Q1: How much does one apple cost?",
    ],
)
def test_prefixes_are_stripped(line: str) -> None:
    assert parse_sub_questions(line) == ["How much does one apple cost?"]


def test_duplicates_dropped_ignoring_case_and_spacing() -> None:
    text = "How many apples?\nhow  many apples?\nHow many pears?"
    assert parse_sub_questions(text) == ["How many apples?", "How many pears?"]


def test_capped_at_n() -> None:
    text = "\n".join(f"What is step {i}?" for i in range(6))
    assert len(parse_sub_questions(text)) == 3
    assert parse_sub_questions(text, max_sub_questions=2) == ["What is step 0?", "What is step 1?"]


def test_non_questions_dropped_and_missing_mark_tolerated() -> None:
    text = "First compute the total.\nHow many eggs does she have left\n48 / 2 = 24"
    assert parse_sub_questions(text) == ["How many eggs does she have left?"]


def test_two_questions_on_one_line() -> None:
    assert parse_sub_questions("How many in May? How many in all?") == [
        "How many in May?",
        "How many in all?",
    ]


@pytest.mark.parametrize(
    "text", [NO_DECOMPOSITION, f"  {NO_DECOMPOSITION}.", NO_DECOMPOSITION.lower(), ""]
)
def test_sentinel_and_empty_give_no_sub_questions(text: str) -> None:
    assert parse_sub_questions(text) == []


def test_format_then_parse_round_trips() -> None:
    subs = ["How many clips in May?", "How many clips in total?"]
    assert parse_sub_questions(format_sub_questions(subs)) == subs
    assert format_sub_questions([]) == NO_DECOMPOSITION


def test_negative_cap_rejected() -> None:
    with pytest.raises(ValueError, match="max_sub_questions"):
        parse_sub_questions("How?", max_sub_questions=-1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So 72 in all.\nThe answer is: 72", "72"),
        ("The answer is: $1,200.", "$1,200"),
        ("**The answer is:** 18", "18"),
        ("the final answer is 5 apples.", "5 apples"),
        ("The answer is: 3.\nWait, recheck.\nThe answer is: 4", "4"),
        ("No marker here, 42.", None),
        ("The answer is:", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_prompts_carry_question_context_and_marker() -> None:
    msgs = decomposer_messages("Q?", "Some passage.", max_sub_questions=2)
    assert "at most 2" in str(msgs[0].content)
    assert NO_DECOMPOSITION in str(msgs[0].content)
    assert "Some passage." in str(msgs[1].content)
    solver = solver_messages("Q?", ["A?", "B?"], "Ctx")
    assert ANSWER_MARKER in str(solver[0].content)
    assert "1. A?\n2. B?" in str(solver[1].content)
    direct = solver_messages("Q?", [])
    assert "Sub-questions" not in str(direct[1].content)
    assert "step by step" in str(single_stage_messages("Q?", cot=True)[0].content)
    assert "step by step" not in str(single_stage_messages("Q?")[0].content)


# ------------------------------------------------------------------- hostile decomposer output
def _cpu_seconds(text: str) -> float:
    start = time.process_time()
    parse_sub_questions(text)
    return time.process_time() - start


@pytest.mark.parametrize(
    "line",
    [
        "word " * 200_000,  # 1 MB, no "?" anywhere
        "How " + "many " * 200_000,  # an interrogative opening, no "?"
        "?" * 1_000_000,
        "- " * 500_000,  # stacked bullets
        "1" * 1_000_000,
        "a?" * 500_000,
    ],
    ids=["words", "interrogative", "marks", "bullets", "digits", "many-questions"],
)
def test_parsing_a_huge_line_is_linear(line: str) -> None:
    # The old parser needed 5.5 s for 64 kB without a "?" (quadratic): 1 MB took minutes.
    assert _cpu_seconds(line) < 1.0


def test_parsing_time_grows_linearly() -> None:
    small, large = "word " * 20_000, "word " * 160_000  # 8x the size
    t_small = min(_cpu_seconds(small) for _ in range(3))
    t_large = min(_cpu_seconds(large) for _ in range(3))
    # Linear: about 8x; quadratic: about 64x. Small times are noisy, so floor them.
    assert t_large < 24 * max(t_small, 0.002)


def test_control_characters_are_stripped() -> None:
    text = "1. How \x00many\x1b[31m clips\x1b[0m in\tMay?\x07\n2. What\x7f about \x90June?\x0c"
    assert parse_sub_questions(text) == ["How many clips in May?", "What about June?"]
    for question in parse_sub_questions("\x1b]0;title\x07Why \x1b[2Jnot?\u200b\u202e"):
        assert question.isprintable(), repr(question)


def test_sub_question_length_is_capped() -> None:
    # Distinct words: a line that repeats one phrase is a loop and dropped (tested below).
    long = "How " + " ".join(f"w{i}" for i in range(50_000)) + " long is it?"
    (question,) = parse_sub_questions(f"{long}\nShort one?")[:1]
    assert len(question) <= MAX_SUB_QUESTION_CHARS
    assert question.startswith("How w0 w1") and question.endswith("?")
    assert parse_sub_questions(f"{long}\nShort one?")[1] == "Short one?"


def test_a_sub_question_that_loops_on_its_own_phrase_is_dropped() -> None:
    from langchain_divconq.prompts import loops

    looping = "Who is the father of X that was the father of X that was the father of X that was"
    assert loops(looping)
    plan = f"Who is the father of X?\n{looping}\nWhen was he born?"
    assert parse_sub_questions(plan) == ["Who is the father of X?", "When was he born?"]
    # A comparison repeats its phrase twice: a real question, kept.
    twice = "Is the main use of A the same as the main use of B?"
    assert not loops(twice) and parse_sub_questions(twice) == [twice]
    # SVAMP writes one phrase three times in a real question.
    birds = (
        "If 47 bird families flew away to africa and 94 bird families flew away to asia How "
        "many more bird families flew away to asia than those that flew away to africa?"
    )
    assert not loops(birds)
    # Linear: a long loop is recognised without quadratic work.
    assert loops("a b c d " * 20_000)
