"""Continuous batching in the torch engine: rows are cancelled, finish and join independently.

Every row must get exactly the tokens it gets alone (greedy ``generate`` at batch 1), however
the batch around it changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from langchain_divconq.local.engine.generation import (  # noqa: E402
    GreedyResult,
    NewRow,
    generate_greedy,
)
from tests.unit_tests.tiny import tiny_llama  # noqa: E402

PROMPTS = [[5, 17, 33, 8, 41], [9, 2, 77, 61, 12, 40, 3, 18], [70, 71, 15], [44, 23, 6, 91, 30, 11]]


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_llama(96, 3, eos_token_id=95)


def alone(model: Any, prompt: Sequence[int], n: int) -> list[int]:
    """Greedy ``generate`` on this prompt alone: the reference every row must match."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([list(prompt)]), max_new_tokens=n, do_sample=False, eos_token_id=95
        )
    return list(out[0, len(prompt) :].tolist())


class RowWatch:
    """A stop checker that sets ``event`` once row ``row`` has ``after`` tokens.

    The checker sees each row's token list (the same list object every step); rows are
    told their first token in batch order, which identifies them.
    """

    def __init__(self, row: int, after: int, event: threading.Event) -> None:
        self.row, self.after, self.event = row, after, event
        self.seen: list[int] = []

    def __call__(self, ids: Sequence[int]) -> bool:
        if id(ids) not in self.seen:
            self.seen.append(id(ids))
        if self.seen.index(id(ids)) == self.row and len(ids) == self.after:
            self.event.set()
        return False


class SetAfter(threading.Event):
    """An event that reads as set from its ``polls``-th look on (the engine looks once when
    a row starts and once per token)."""

    def __init__(self, polls: int) -> None:
        super().__init__()
        self.polls = polls

    def is_set(self) -> bool:
        self.polls -= 1
        return self.polls <= 0


class Source:
    """Hands out its rows once the engine has asked ``after`` times (one ask per step)."""

    def __init__(self, rows: list[NewRow], after: int) -> None:
        self.rows = rows
        self.after = after
        self.asked = 0

    def waiting(self) -> bool:
        self.asked += 1
        return self.asked > self.after and bool(self.rows)

    def take(self, limit: int) -> list[NewRow]:
        self.asked += 1
        if self.asked <= self.after:
            return []
        out, self.rows = self.rows[:limit], self.rows[limit:]
        return out


def test_cancelled_row_stops_at_next_step_and_others_keep_their_tokens(model: Any) -> None:
    refs = [alone(model, p, 20) for p in PROMPTS[:3]]
    gone = threading.Event()
    checker = RowWatch(1, 3, gone)  # row 1's client leaves after its third token
    got = generate_greedy(
        model,
        PROMPTS[:3],
        max_new_tokens=20,
        stop_checker=checker,
        cancels=[None, gone, None],
        fast_cpu_matmuls=False,
        rows_one_by_one_up_to=0,  # the padded batch loop, not one speculative row after another
    )
    assert got[1].token_ids == refs[1][:4]  # one more step, then it left
    assert got[1].finish_reason == "cancelled"
    assert got[0].token_ids == refs[0]
    assert got[2].token_ids == refs[2]


def test_a_row_cancelled_before_it_starts_never_runs(model: Any) -> None:
    gone = threading.Event()
    gone.set()
    got = generate_greedy(
        model, PROMPTS[:2], max_new_tokens=6, cancels=[gone, None], rows_one_by_one_up_to=0
    )
    assert got[0].token_ids == []
    assert got[0].finish_reason == "cancelled"
    assert got[1].token_ids == alone(model, PROMPTS[1], 6)


def test_finished_rows_are_reported_at_once(model: Any) -> None:
    refs = [alone(model, p, 24) for p in PROMPTS[:3]]
    short = threading.Event()
    checker = RowWatch(0, 2, short)
    seen: list[tuple[int, int, float]] = []

    def on_finish(index: int, result: GreedyResult) -> None:
        seen.append((index, len(result.token_ids), time.perf_counter()))

    started = time.perf_counter()
    got = generate_greedy(
        model,
        PROMPTS[:3],
        max_new_tokens=24,
        stop_checker=checker,
        cancels=[short, None, None],
        on_finish=on_finish,
        fast_cpu_matmuls=False,
        rows_one_by_one_up_to=0,  # the padded batch loop, not one speculative row after another
    )
    ended = time.perf_counter()
    assert seen[0][0] == 0  # the short row is reported first...
    assert sorted(s[0] for s in seen) == [0, 1, 2]  # ...and every row exactly once
    assert seen[0][1] == 3
    assert seen[0][2] - started < ended - started  # before the call returned
    assert [g.token_ids for g in got[1:]] == refs[1:]


@pytest.mark.parametrize("after", [0, 3])
def test_rows_join_a_running_batch_with_their_own_tokens(model: Any, after: int) -> None:
    refs = [alone(model, p, 16) for p in PROMPTS]
    source = Source([NewRow(PROMPTS[2]), NewRow(PROMPTS[3])], after=after)
    got = generate_greedy(
        model, PROMPTS[:2], max_new_tokens=16, source=source, fast_cpu_matmuls=False
    )
    assert [g.token_ids for g in got] == refs
    assert not source.rows


def test_max_rows_lets_waiting_inputs_take_free_slots(model: Any) -> None:
    refs = [alone(model, p, 10) for p in PROMPTS]
    first = threading.Event()
    order: list[int] = []
    checker = RowWatch(0, 1, first)
    got = generate_greedy(
        model,
        PROMPTS,
        max_new_tokens=10,
        stop_checker=checker,
        cancels=[first, None, None, None],
        max_rows=2,
        on_finish=lambda i, _: order.append(i),
        fast_cpu_matmuls=False,
        rows_one_by_one_up_to=0,  # the padded batch loop, not one speculative row after another
    )
    assert [g.token_ids for g in got[1:]] == refs[1:]
    assert got[0].token_ids == refs[0][:2]
    assert order[0] == 0  # row 0 left early, so row 2 took its slot while row 1 ran


@pytest.mark.parametrize("draft", ["lookup", "int8"])
def test_a_speculative_row_hands_over_when_others_join(model: Any, draft: Any) -> None:
    if draft == "int8":
        from langchain_divconq.local.engine.draft_model import supports_int8_draft

        if not supports_int8_draft(model):
            pytest.skip("no int8 kernels here")
    refs = [alone(model, p, 24) for p in PROMPTS[:3]]
    source = Source([NewRow(PROMPTS[1]), NewRow(PROMPTS[2])], after=2)
    got = generate_greedy(
        model, PROMPTS[:1], max_new_tokens=24, source=source, draft=draft, prompt_cache=False
    )
    assert [g.token_ids for g in got] == refs
    assert got[0].forward_passes < len(got[0].token_ids) or draft == "lookup"


def test_a_row_left_alone_goes_back_to_speculation(model: Any) -> None:
    from langchain_divconq.local.engine.draft_model import supports_int8_draft

    if not supports_int8_draft(model):
        pytest.skip("no int8 kernels here")
    ref = alone(model, PROMPTS[0], 40)
    source = Source([NewRow(PROMPTS[1], SetAfter(4))], after=2)
    got = generate_greedy(model, PROMPTS[:1], max_new_tokens=40, source=source, prompt_cache=False)
    assert got[0].token_ids == ref
    assert got[1].finish_reason == "cancelled"
    assert len(got[1].token_ids) == 3  # it shared a few steps with row 0, then left
    # Back at batch 1, int8 drafts are checked several at a time again.
    assert got[0].forward_passes < len(ref) - 5


def test_a_batch_that_never_empties_keeps_a_short_cache(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_divconq.local.engine import live

    refs = [alone(model, p, 6) for p in PROMPTS]
    lengths: list[int] = []
    step = live._step

    def watch(model: Any, batch: Any, feed: Any, stop: Any) -> Any:
        lengths.append(batch.mask.shape[1])
        return step(model, batch, feed, stop)

    rows = [NewRow(PROMPTS[i % 4]) for i in range(12)]  # steady traffic: 12 more rows

    class Steady(Source):
        def take(self, limit: int) -> list[NewRow]:
            self.asked += 1
            out, self.rows = self.rows[:1], self.rows[1:]  # one more at every step
            return out

    monkeypatch.setattr(live, "_step", watch)
    got = generate_greedy(
        model, PROMPTS[:1], max_new_tokens=6, source=Steady(rows, 0), draft="lookup",
        num_draft_tokens=0,
    )  # fmt: skip
    assert [g.token_ids for g in got] == [refs[0]] + [refs[i % 4] for i in range(12)]
    # The batch ran for 18 steps, but the cache never outgrew its longest live row.
    assert max(lengths) <= max(len(p) for p in PROMPTS) + 6


def test_rows_decoded_one_by_one_hand_over_when_outside_rows_join(model: Any) -> None:
    from langchain_divconq.local.engine.draft_model import supports_int8_draft

    if not supports_int8_draft(model):
        pytest.skip("no int8 kernels here")
    refs = [alone(model, p, 20) for p in PROMPTS]
    source = Source([NewRow(PROMPTS[2]), NewRow(PROMPTS[3])], after=3)
    got = generate_greedy(model, PROMPTS[:2], max_new_tokens=20, source=source, prompt_cache=False)
    assert [g.token_ids for g in got] == refs
    assert not source.rows
