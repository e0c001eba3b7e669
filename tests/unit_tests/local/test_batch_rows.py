"""ChatLocalModel under BATCH_ROWS: each prompt of a batch is cancelled and answered on its own.

On both paths (plain ``generate`` and the fast torch engine), a prompt whose event is set
stops at the next decoding step, the others answer with exactly the text they give
alone, and every prompt is answered the moment its row ends.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from langchain_core.messages import AIMessage

from langchain_divconq.local import decoding
from langchain_divconq.local.decoding import BATCH_ROWS, BatchRows
from langchain_divconq.local.engine import rows as engine_rows

QUESTIONS = ["Tell me about the sea.", "Count to ten please.", "Why is the sky blue?"]


@pytest.fixture(params=["generate", "fast"])
def llm(request: pytest.FixtureRequest, tiny_chat_model: Any) -> Any:
    fast = request.param == "fast"
    return tiny_chat_model.model_copy(
        update={"fast_decoding": fast, "backend": "torch", "max_tokens": 24}
    )


def cancel_after_steps(
    monkeypatch: pytest.MonkeyPatch, llm: Any, prompt: str, steps: int, event: threading.Event
) -> None:
    """Set ``event`` once ``prompt``'s row has decoded ``steps`` tokens (either path)."""
    ids = llm._encode([{"role": "user", "content": prompt}])
    push = engine_rows.Row.push

    def counting_push(self: Any, token: int, stop: Any) -> bool:
        done = push(self, token, stop)
        if self.prompt == ids and len(self.new) == steps:
            event.set()
        return done

    monkeypatch.setattr(engine_rows.Row, "push", counting_push)
    call = decoding.StopCriteria.__call__
    width = len(ids)

    def counting_call(self: Any, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        done = call(self, input_ids, scores, **kwargs)
        for row in input_ids.tolist():  # left-padded: the prompt ends at self.width
            if row[self.width - width : self.width] == ids and len(row) - self.width == steps:
                event.set()
        return done

    monkeypatch.setattr(decoding.StopCriteria, "__call__", counting_call)


def test_a_cancelled_prompt_stops_and_the_others_keep_their_text(
    llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = [llm.invoke(q) for q in QUESTIONS]
    assert all(a.usage_metadata["output_tokens"] > 6 for a in alone), "pick longer prompts"
    events = [threading.Event() for _ in QUESTIONS]
    cancel_after_steps(monkeypatch, llm, QUESTIONS[1], 3, events[1])
    answered: dict[int, tuple[Any, float]] = {}

    def on_done(index: int, reply: Any) -> None:
        answered[index] = (reply, time.perf_counter())

    token = BATCH_ROWS.set(BatchRows(events, on_done))
    try:
        replies = llm.batch(QUESTIONS)
    finally:
        BATCH_ROWS.reset(token)
    returned = time.perf_counter()
    assert sorted(answered) == [0, 1, 2]
    stopped = replies[1]
    assert isinstance(stopped, AIMessage)
    assert stopped.usage_metadata is not None
    assert stopped.usage_metadata["output_tokens"] == 4  # the step after the cancel
    assert alone[1].text.startswith(stopped.text)
    assert [replies[0].content, replies[2].content] == [alone[0].content, alone[2].content]
    assert answered[1][1] < min(answered[0][1], answered[2][1]) <= returned


def test_batch_rows_needs_one_event_per_prompt(llm: Any) -> None:
    token = BATCH_ROWS.set(BatchRows([threading.Event()], lambda i, r: None))
    try:
        with pytest.raises(ValueError, match="one per input"):
            llm.batch(QUESTIONS[:2])
    finally:
        BATCH_ROWS.reset(token)
