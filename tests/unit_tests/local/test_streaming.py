"""Streaming with ``no_repeat_lines`` sends tokens, never text that the final answer drops."""

from __future__ import annotations

import random
from typing import Any

import pytest

from langchain_divconq.local.decoding import GenerationParams, cut_text, held_back
from langchain_divconq.local.streaming import repeat_safe_end

PLAN = "1. How many eggs?\n2. How much money?\n3. how many eggs\n4. What is left?"
# What invoke returns for PLAN: the repeat (line 3) and everything after it are dropped.
PLAN_CUT = "1. How many eggs?\n2. How much money?"


def _simulate(pieces: list[str], params: GenerationParams) -> tuple[list[str], str]:
    """Run ChatLocalModel._stream_until's emission rule over ``pieces``; return chunks and final.

    Generation ends at the first cut (as the stopping criterion does); the final text
    is what ``_finish`` returns for what was generated.
    """
    text, emitted, chunks = "", "", []
    for piece in pieces:
        text += piece
        shown, cut = cut_text(text, params)
        safe = len(shown) if cut else len(shown) - held_back(shown, params.stop)
        if params.no_repeat_lines and not cut:
            safe = min(safe, repeat_safe_end(shown))
        if safe > len(emitted):
            chunks.append(shown[len(emitted) : safe])
            emitted = shown[:safe]
        if cut:
            break
    final = cut_text(text, params, final=True)[0]
    assert final.startswith(emitted), (emitted, final)
    if len(final) > len(emitted):
        chunks.append(final[len(emitted) :])
    return chunks, final


def test_repeat_safe_end_holds_only_a_line_that_may_still_repeat() -> None:
    first = "1. How many eggs?\n"
    assert repeat_safe_end("1. How ma") == len("1. How ma")  # nothing earlier to repeat
    for partial in ("", "2", "2.", "2. ", "(2", "Q2", "- ", "**", "2. How", "2. how many eggs?"):
        # The line may still become "2. How many eggs": hold it and the newline before it.
        assert repeat_safe_end(first + partial) == len(first) - 1, partial
    for partial in ("2. How mu", "2. What", "20 eggs", "Q2: Why"):
        assert repeat_safe_end(first + partial) == len(first + partial), partial


def test_the_stream_sends_tokens_and_equals_invoke() -> None:
    params = GenerationParams(64, max_lines=4, no_repeat_lines=True)
    chunks, final = _simulate(list(PLAN), params)
    assert final == PLAN_CUT
    assert "".join(chunks) == PLAN_CUT
    # Token streaming, not line streaming: the first line alone comes in many chunks,
    # and the second line starts before it is complete.
    assert len(chunks) > PLAN_CUT.count("\n") + 10
    assert any(chunk.endswith("How mu") or chunk == "u" for chunk in chunks)


def test_random_plans_never_stream_text_that_is_taken_back() -> None:
    rng = random.Random(0)
    stems = ["How many eggs", "how many Eggs?", "What is left", "Why", "Σ of ΣΑ", "**Total**"]
    prefixes = ["", "1. ", "2) ", "(3) ", "- ", "* ", "Q1: ", "**", "  ", "10 "]
    for _ in range(400):
        lines = [
            rng.choice(prefixes) + rng.choice(stems) + rng.choice(["", "?", ".", " "])
            for _ in range(rng.randint(1, 5))
        ]
        text = "\n".join(
            rng.choice([line, "", " "]) if rng.random() < 0.1 else line for line in lines
        )
        stop = tuple(rng.sample(["\n\n\n", "STOP", "?\nW"], rng.randint(0, 2)))
        params = GenerationParams(
            64, stop=stop, max_lines=rng.choice([None, 3]), no_repeat_lines=True
        )
        cuts = sorted(
            rng.sample(range(1, len(text)), min(max(len(text) - 1, 0), rng.randint(0, 12)))
        )
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        chunks, final = _simulate(pieces, params)  # asserts each step stays a prefix
        assert "".join(chunks) == final


def test_chat_local_model_streams_a_plan_token_by_token(
    tiny_chat_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's own stream loop, fed the plan's real tokens, matches ``invoke``."""
    torch = pytest.importorskip("torch")
    from langchain_divconq.local.decoding import GenerationResult

    llm = tiny_chat_model.model_copy(update={"no_repeat_lines": True, "max_lines": 4})
    plan_ids = list(llm.tokenizer(PLAN, add_special_tokens=False)["input_ids"])

    def scripted(
        self: Any,
        encoded: list[list[int]],
        params: Any,
        streamer: Any = None,
        *args: Any,
        **kw: Any,
    ) -> list[GenerationResult]:
        out: list[int] = []
        if streamer is not None:
            streamer.put(torch.tensor(encoded[0]))
        for token in plan_ids:  # stop as the stopping criterion would: at the first cut
            out.append(token)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if cut_text(self._decode(out), params)[1]:
                return [self._finish(out, len(encoded[0]), params, stopped=True)]
        return [self._finish(out, len(encoded[0]), params, stopped=False)]

    monkeypatch.setattr(type(llm), "_generate_ids", scripted)
    chunks = [chunk.content for chunk in llm.stream("Split it.")]
    assert llm.invoke("Split it.").content == PLAN_CUT
    assert "".join(str(c) for c in chunks) == PLAN_CUT
    assert sum(1 for c in chunks if c) > 2 * PLAN_CUT.count("\n") + 4  # tokens, not lines
