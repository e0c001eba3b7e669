"""A decomposer never emits a repeated sub-question: the stop rule, the cut, the adapter names."""

from __future__ import annotations

import pytest

from langchain_divconq.local.decoding import GenerationParams, cut_text
from langchain_divconq.local.engine.stopping import decomposer_stop, repeated_line_start
from langchain_divconq.prompts import parse_sub_questions


def test_repeated_line_start_finds_the_first_complete_repeat() -> None:
    text = "1. How many eggs?\n2. How much money?\n3. how many eggs\n4. How much money?\n"
    start = repeated_line_start(text)
    assert start is not None and text[start:].startswith("3. how many eggs")
    assert repeated_line_start("How many eggs?\nHow many eggs?") is None  # unfinished
    assert repeated_line_start("A?\n\nB?\n") is None


def test_decomposer_stop_fires_on_a_repeat() -> None:
    stop = decomposer_stop(3)
    assert not stop("How many eggs?\nHow much money?\n")
    assert stop("How many eggs?\nHow much money?\nHow many eggs?\n")
    assert not decomposer_stop(3, no_repeat=False)("How many eggs?\nHow many eggs?\n")


@pytest.mark.parametrize("max_lines", [None, 4])
def test_cut_text_drops_the_repeat_and_what_follows(max_lines: int | None) -> None:
    params = GenerationParams(64, max_lines=max_lines, no_repeat_lines=True)
    raw = "How many eggs?\nHow much money?\nHow many eggs?\nHow much money?\n"
    text, cut = cut_text(raw, params)
    assert cut and text == "How many eggs?\nHow much money?"
    assert parse_sub_questions(text) == ["How many eggs?", "How much money?"]
    # Off by default: the text stays as generated (the parser still drops duplicates).
    assert cut_text(raw, GenerationParams(64))[0] == raw


def test_cut_text_keeps_text_without_repeats() -> None:
    params = GenerationParams(64, no_repeat_lines=True)
    assert cut_text("A?\nB?\nA", params) == ("A?\nB?\nA", False)  # last line unfinished


def test_packaged_adapters_resolve_by_name() -> None:
    from langchain_divconq.local.loaders import ADAPTERS_DIR, resolve_adapter

    assert resolve_adapter(None) is None
    assert resolve_adapter("gsm8k-decomposer") == ADAPTERS_DIR / "gsm8k-decomposer"
    default = resolve_adapter("default")
    assert default is not None and (default / "adapter_config.json").is_file()
    assert resolve_adapter("some/folder").as_posix() == "some/folder"  # type: ignore[union-attr]


@pytest.mark.slow
def test_general_decomposer_loads_by_name_and_never_repeats() -> None:
    from langchain_divconq.local import load_decomposer
    from langchain_divconq.local.engine.stopping import repeated_line_start
    from langchain_divconq.prompts import decomposer_messages, message_text

    decomposer = load_decomposer(adapter="general-decomposer", max_tokens=64)
    assert decomposer.model_name.endswith("+general-decomposer") and decomposer.no_repeat_lines
    questions = [
        "Ann buys 3 packs of 12 pencils and gives away 10 pencils. How many pencils are left?",
        "Could a llama ride in the space shuttle?",
    ]
    for reply in decomposer.batch([decomposer_messages(q) for q in questions]):
        text = message_text(reply)
        assert repeated_line_start(text + "\n") is None, text
