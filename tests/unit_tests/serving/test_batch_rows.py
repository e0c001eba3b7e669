"""The server's batcher keeps each request of a batch its own.

- a short request is answered in its own time beside a long one (no head-of-line wait);
- a request whose client leaves stops its own row, not the batch;
- with the local model, a request that arrives while a batch runs joins it (continuous
  batching) and gets exactly the text it gets alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig

from langchain_divconq.local.decoding import BATCH_ROWS, CANCEL_EVENT
from langchain_divconq.serving.batcher import RequestBatcher, RequestParams
from tests.unit_tests.fakes import ScriptedChatModel


class RowTimedModel(ScriptedChatModel):
    """A fake batched model: each prompt's row takes the seconds named in its text.

    Under ``BATCH_ROWS`` it answers each row when the row ends and stops a row once its
    event is set, as ``ChatLocalModel`` does; ``stopped`` records the rows that stopped.
    """

    stopped: list[str] = []

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        rows = BATCH_ROWS.get()
        # Without per-row hooks, the call's one event stops it (once every caller is gone).
        cancels = rows.cancels if rows is not None else [CANCEL_EVENT.get()] * len(inputs)
        self.calls += 1
        out: list[Any] = [None] * len(inputs)

        def row(i: int) -> None:
            text = str(inputs[i][-1].content)
            cancel = cancels[i]
            assert cancel is not None
            if cancel.wait(float(text.split()[-1])):
                self.stopped.append(text)
                out[i] = RuntimeError("stopped")
                return
            out[i] = AIMessage(text)
            if rows is not None:
                rows.on_done(i, out[i])

        threads = [threading.Thread(target=row, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out


@pytest.mark.parametrize("isolate", [True, False])
def test_short_requests_finish_in_their_own_time_beside_a_long_one(isolate: bool) -> None:
    model = RowTimedModel(stopped=[])

    async def run() -> dict[str, float]:
        batcher = RequestBatcher(model, max_batch=8, max_wait_s=0.05, isolate_rows=isolate)
        await batcher.start()
        started = time.perf_counter()
        took: dict[str, float] = {}

        async def ask(text: str) -> None:
            reply = await batcher.submit([HumanMessage(text)], RequestParams())
            took[str(reply.content)] = time.perf_counter() - started

        await asyncio.gather(ask("long 2.0"), *(ask(f"short{i} 0.1") for i in range(3)))
        await batcher.close()
        return took

    took = asyncio.run(run())
    assert model.calls == 1  # they did share one batch
    assert took["long 2.0"] >= 2.0
    if isolate:
        assert all(took[f"short{i} 0.1"] < 1.0 for i in range(3)), took
    else:  # the behaviour before #19: everyone waits for the longest row
        assert all(took[f"short{i} 0.1"] >= 2.0 for i in range(3)), took


def test_a_client_that_leaves_stops_its_row_not_the_batch() -> None:
    model = RowTimedModel(stopped=[])

    async def run() -> tuple[float, str]:
        batcher = RequestBatcher(model, max_batch=8, max_wait_s=0.05)
        await batcher.start()
        leaving = asyncio.ensure_future(batcher.submit([HumanMessage("gone 30")], RequestParams()))
        staying = asyncio.ensure_future(batcher.submit([HumanMessage("stay 0.5")], RequestParams()))
        await asyncio.sleep(0.2)
        leaving.cancel()
        started = time.perf_counter()
        reply = await staying
        await asyncio.sleep(0.1)
        while batcher.pending or model.calls == 0:
            await asyncio.sleep(0.05)
        await batcher.close()
        return time.perf_counter() - started, str(reply.content)

    elapsed, reply = asyncio.run(run())
    assert reply == "stay 0.5"
    assert model.stopped == ["gone 30"]  # its own row stopped...
    assert elapsed < 5  # ...at once, instead of running its 30 s


# --------------------------------------------------------------- the local model
pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.parametrize("fast", [True, False])
def test_a_request_joins_the_running_batch_with_its_own_text(
    tiny_chat_model: Any, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    from langchain_divconq.local import decoding

    llm = tiny_chat_model.model_copy(
        update={"fast_decoding": fast, "backend": "torch", "max_tokens": 40, "batch_size": 4}
    )
    first, second = "Tell me about the sea.", "Why is the sky blue?"
    alone = llm.invoke(second).content
    joined: list[int] = []
    more = decoding.RequestFeed.more

    def spy(self: Any, limit: int) -> Any:
        out = more(self, limit)
        joined.extend(i for i, _, _ in out)
        return out

    monkeypatch.setattr(decoding.RequestFeed, "more", spy)
    running = threading.Event()
    deliver = decoding.RequestFeed.deliver
    results: dict[int, Any] = {}

    def record(self: Any, index: int, result: Any) -> None:
        results.setdefault(index, result)
        deliver(self, index, result)

    monkeypatch.setattr(decoding.RequestFeed, "deliver", record)
    call = decoding.StopCriteria.__call__

    def slow_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        running.set()
        time.sleep(0.005)  # keep the first batch running while the second request comes
        return call(self, *args, **kwargs)

    monkeypatch.setattr(decoding.StopCriteria, "__call__", slow_call)
    from langchain_divconq.local.engine import rows as engine_rows

    push = engine_rows.Row.push

    def slow_push(self: Any, token: int, stop: Any) -> bool:
        running.set()
        time.sleep(0.005)
        return bool(push(self, token, stop))

    monkeypatch.setattr(engine_rows.Row, "push", slow_push)

    async def run() -> Any:
        batcher = RequestBatcher(llm, max_batch=8, max_wait_s=0.0)
        await batcher.start()
        params = RequestParams(max_tokens=40)
        long = asyncio.ensure_future(batcher.submit([HumanMessage(first)], params))
        while not running.is_set():
            await asyncio.sleep(0.01)
        short_task = asyncio.ensure_future(batcher.submit([HumanMessage(second)], params))
        while fast and not joined:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        long.cancel()  # its client leaves: its row stops, the other goes on
        with pytest.raises(asyncio.CancelledError):
            await long
        short = await short_task
        while batcher.pending:
            await asyncio.sleep(0.01)
        await batcher.close()
        return short

    short = asyncio.run(run())
    assert short.content == alone
    if fast:  # the greedy engine takes rows mid-call; generate() takes them at the next chunk
        assert joined == [1]  # the second request became row 1 of the running call
    assert results[0].output_tokens < 40  # the long row stopped once its client left
