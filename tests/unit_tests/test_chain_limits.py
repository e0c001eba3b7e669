"""A runaway decomposer reply is cut before it is parsed and kept, and says so."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from langchain_divconq import TraceRecorder, create_divconq_chain
from langchain_divconq.prompts import (
    MAX_DECOMPOSITION_CHARS,
    cap_decomposition,
    parse_sub_questions,
)
from langchain_divconq.tracing.store import open_store
from tests.unit_tests.fakes import ScriptedChatModel

PLAN = "1. How many clips in May?\n2. How many clips in all?\n"
# 3.4 MB of a model that never stops: more questions, then endless words.
RUNAWAY = PLAN + "3. And then?\n" + "and so on and so forth\n" * 150_000
SOLUTION = "24 in May.\nThe answer is: 72"


def _chain(decomposition: str) -> Any:
    return create_divconq_chain(
        ScriptedChatModel(default=decomposition), ScriptedChatModel(default=SOLUTION)
    )


def _check(out: dict[str, Any]) -> None:
    assert out["decomposition_truncated"] is True
    assert len(out["decomposition"]) <= MAX_DECOMPOSITION_CHARS
    assert RUNAWAY.startswith(out["decomposition"] + "\n")  # whole lines only
    assert out["sub_questions"] == parse_sub_questions(RUNAWAY)
    assert out["answer"] == "72"


def test_a_runaway_reply_is_cut_on_every_path() -> None:
    assert len(RUNAWAY) > 3_000_000
    chain = _chain(RUNAWAY)
    _check(chain.invoke("How many clips?"))
    for out in chain.batch(["How many clips?", "And now?"]):
        _check(out)
    streamed: Any = None
    for chunk in chain.stream("How many clips?"):
        streamed = chunk if streamed is None else streamed + chunk
    _check(dict(streamed))
    _check(asyncio.run(chain.ainvoke("How many clips?")))
    for out in asyncio.run(chain.abatch(["How many clips?"])):
        _check(out)


def test_a_normal_reply_is_kept_whole_and_unmarked() -> None:
    out = _chain(PLAN).invoke("How many clips?")
    assert out["decomposition"] == PLAN and "decomposition_truncated" not in out
    assert out["sub_questions"] == parse_sub_questions(PLAN)


@pytest.mark.parametrize("store", ["t.jsonl", "t.db"])
def test_the_trace_keeps_the_cut_text_and_says_so(tmp_path: Path, store: str) -> None:
    path = tmp_path / store
    recorder = TraceRecorder(str(path) if store.endswith("jsonl") else f"sqlite:///{path}")
    _chain(RUNAWAY).invoke("How many clips?", {"callbacks": [recorder]})
    _chain(PLAN).invoke("How many clips?", {"callbacks": [recorder]})
    cut, whole = open_store(str(path) if store.endswith("jsonl") else f"sqlite:///{path}")
    assert cut.decomposer is not None and cut.decomposer.output is not None
    assert len(cut.decomposer.output) <= MAX_DECOMPOSITION_CHARS
    assert cut.metadata["decomposition_truncated"] is True
    assert cut.sub_questions == parse_sub_questions(RUNAWAY)
    assert whole.decomposer is not None and whole.decomposer.output == PLAN
    assert "decomposition_truncated" not in whole.metadata
    assert path.stat().st_size < 200_000  # not megabytes


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("abc", 3, ("abc", False)),
        ("abcd", 3, ("abc", True)),  # one long line: cut at the limit
        ("ab\ncd\nef", 6, ("ab\ncd", True)),  # whole lines only
        ("ab\ncd\nef", 5, ("ab", True)),
    ],
)
def test_cap_decomposition(text: str, limit: int, expected: tuple[str, bool]) -> None:
    assert cap_decomposition(text, limit) == expected
