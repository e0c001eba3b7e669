"""A served decomposer streams tokens over SSE, and the stream equals the plain answer."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from langchain_divconq.local.decoding import cut_text
from langchain_divconq.serving.app import create_app
from tests.unit_tests.fakes import running_server

torch = pytest.importorskip("torch")

PLAN = "1. How many eggs?\n2. How much money?\n3. how many eggs\n4. What is left?"
PLAN_CUT = "1. How many eggs?\n2. How much money?"


def test_served_decomposer_streams_tokens_not_lines(
    tiny_chat_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = tiny_chat_model.model_copy(
        update={"no_repeat_lines": True, "max_lines": 4, "max_tokens": 64}
    )
    plan_ids = list(llm.tokenizer(PLAN, add_special_tokens=False)["input_ids"])

    def scripted(
        self: Any, encoded: list[list[int]], params: Any, streamer: Any = None, *a: Any, **k: Any
    ) -> Any:
        """Generate PLAN's tokens whatever the prompt, stopping where the model would."""
        out: list[int] = []
        if streamer is not None:
            streamer.put(torch.tensor(encoded[0]))
        for token in plan_ids:
            out.append(token)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if cut_text(self._decode(out), params)[1]:
                return [self._finish(out, len(encoded[0]), params, stopped=True)] * len(encoded)
        return [self._finish(out, len(encoded[0]), params, stopped=False)] * len(encoded)

    monkeypatch.setattr(type(llm), "_generate_ids", scripted)
    messages: Any = [{"role": "user", "content": "Split it."}]
    with running_server(create_app(llm, model_id="dec")) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        plain = client.chat.completions.create(model="dec", messages=messages)
        stream = client.chat.completions.create(model="dec", messages=messages, stream=True)
        pieces = [c.choices[0].delta.content for c in stream if c.choices]
    texts = [p for p in pieces if p]
    assert plain.choices[0].message.content == PLAN_CUT
    assert "".join(texts) == PLAN_CUT
    # Many more events than lines: the first line alone arrives in several pieces.
    assert len(texts) > 2 * PLAN_CUT.count("\n") + 4
    first_line = PLAN_CUT.split("\n")[0]
    assert sum(1 for t in texts if "\n" not in t and t in first_line) > 3
