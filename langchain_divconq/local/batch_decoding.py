"""ChatLocalModel's batch path: one engine call per batch, each row answered on its own.

:class:`~langchain_divconq.local.ChatLocalModel` sends every prompt through its
:class:`~langchain_divconq.local.decoding.MicroBatcher`, which hands a group of prompts
with equal settings to :func:`generate_texts`. From there:

- **Each row is its own request.** Every prompt carries its own cancel event; a set
  event ends that row at the next decoding step while the others go on.
- **A finished row answers at once.** The engine reports each row the moment it ends
  and its caller's future resolves then, not when the whole call returns.
- **Requests join a running call** (continuous batching) on the greedy engines (torch
  and llama.cpp): a request with equal settings that arrives while the call runs takes
  the next free slot (of ``batch_size``) between two decoding steps. The plain
  ``generate`` path (sampling) cannot take rows mid-call: there, rows that wait start
  with the next chunk of ``batch_size`` rows.
- :func:`batch_with_rows` serves a ``batch()`` call made under
  :data:`~langchain_divconq.local.decoding.BATCH_ROWS` (``divconq serve``): one cancel
  event and one completion callback per prompt.

Imports torch only inside functions.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from langchain_divconq.local.decoding import (
    BATCH_ROWS,
    BATCH_TICKET,
    CANCEL_EVENT,
    BatchRows,
    BatchTicket,
    GenerationParams,
    GenerationResult,
    RequestFeed,
    cut_text,
    expired,
)

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

    from langchain_divconq.local.engine.rows import NewRow

ChatLocalModel = Any
"""A ``ChatLocalModel`` (not imported: it imports this module); its private helpers
(``_lock``, ``_encode``, ``_finish``...) are the ones used here."""

__all__ = ["batch_with_rows", "generate_fast", "generate_texts"]

Prompt = list[dict[str, str]]
RowResult = Callable[[int, GenerationResult], None]
"""Told ``(index, result)`` as soon as a row ends."""


def generate_texts(
    llm: ChatLocalModel,
    prompts: Sequence[Prompt],
    params: GenerationParams,
    cancels: Sequence[threading.Event | None] | None = None,
    feed: RequestFeed | None = None,
) -> list[GenerationResult]:
    """Generate one completion per prompt (the body of ``ChatLocalModel._generate_texts``).

    Prompts are sorted by length (less padding) and the results come back in input order;
    with ``feed``, each is also delivered through it the moment its row ends, and queued
    requests join the call (see the module doc).
    """
    events: list[threading.Event | None] = list(cancels) if cancels else [None] * len(prompts)
    with llm._lock:
        encoded = [llm._encode(p) for p in prompts]
        if llm.fast_decoding and params.temperature <= 0:
            return _fast_rows(llm, encoded, params, events, feed)
        return _generate_rows(llm, encoded, params, events, feed)


def _generate_rows(
    llm: ChatLocalModel,
    encoded: list[list[int]],
    params: GenerationParams,
    events: list[threading.Event | None],
    feed: RequestFeed | None,
) -> list[GenerationResult]:
    """Run the ``generate`` path: chunks of ``batch_size`` rows; waiting requests join the next."""
    results: list[GenerationResult | None] = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    jobs = [(i, encoded[i], events[i]) for i in order]
    while jobs or (feed is not None and feed.waiting()):
        if feed is not None and len(jobs) < llm.batch_size:
            jobs += [(i, llm._encode(p), c) for i, p, c in feed.more(llm.batch_size - len(jobs))]
        if not jobs:
            break
        chunk, jobs = jobs[: llm.batch_size], jobs[llm.batch_size :]

        def done(j: int, result: GenerationResult, chunk: list[Any] = chunk) -> None:
            if feed is not None:
                feed.deliver(chunk[j][0], result)

        outs = llm._generate_ids(
            [ids for _, ids, _ in chunk],
            params,
            row_cancels=[c for _, _, c in chunk],
            on_row=done if feed is not None else None,
        )
        for j, out in enumerate(outs):
            index = chunk[j][0]
            if index < len(results):
                results[index] = out
            done(j, out)
    return [r for r in results if r is not None]


class _JoinedRows:
    """The engine's :class:`~langchain_divconq.local.engine.rows.RowSource` over a feed.

    Records, per engine row, the feed index, prompt length and cancel event of each
    request that joins, encoding its prompt as it joins.
    """

    def __init__(
        self,
        llm: ChatLocalModel,
        feed: RequestFeed,
        index: list[int],
        n_in: list[int],
        events: list[threading.Event | None],
    ) -> None:
        self.llm, self.feed = llm, feed
        self.index, self.n_in, self.events = index, n_in, events

    def waiting(self) -> bool:
        return self.feed.waiting()

    def take(self, limit: int) -> list[NewRow]:
        from langchain_divconq.local.engine.rows import NewRow

        out = []
        for i, prompt, cancel in self.feed.more(limit):
            ids = self.llm._encode(prompt)
            self.index.append(i)
            self.n_in.append(len(ids))
            self.events.append(cancel)
            out.append(NewRow(ids, cancel))
        return out


def _fast_rows(
    llm: ChatLocalModel,
    encoded: list[list[int]],
    params: GenerationParams,
    events: list[threading.Event | None],
    feed: RequestFeed | None,
) -> list[GenerationResult]:
    """Run the greedy engines: one continuous batch of at most ``batch_size`` rows at a time."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    index = list(order)  # engine row -> request index
    n_in = [len(encoded[i]) for i in order]
    row_events = [events[i] for i in order]
    source = _JoinedRows(llm, feed, index, n_in, row_events) if feed is not None else None

    def done(row: int, result: GenerationResult) -> None:
        if feed is not None:
            feed.deliver(index[row], result)

    # Callers that can leave (a server's, async ones) want each row answered in its own
    # time: a padded batch. A plain batch() keeps the engine's faster row-by-row
    # speculation for 2-4 prompts (rows that arrive meanwhile still join).
    fair = any(e is not None for e in row_events)
    outs = generate_fast(
        llm,
        [encoded[i] for i in order],
        params,
        row_events,
        on_row=done,
        source=source,
        max_rows=llm.batch_size,
        n_in=n_in,
        one_by_one=not fair,
    )
    results: list[GenerationResult | None] = [None] * len(encoded)
    for row, out in enumerate(outs[: len(order)]):
        results[index[row]] = out
    return [r for r in results if r is not None]


def generate_fast(
    llm: ChatLocalModel,
    encoded: list[list[int]],
    params: GenerationParams,
    cancels: Sequence[threading.Event | None] | None = None,
    *,
    on_row: RowResult | None = None,
    source: _JoinedRows | None = None,
    max_rows: int | None = None,
    n_in: list[int] | None = None,
    one_by_one: bool = True,
) -> list[GenerationResult]:
    """Run greedy rows on the torch engine or llama.cpp (``ChatLocalModel.backend``).

    ``cancels[i]`` ends row ``i`` at its next step; ``on_row`` is told each row's result
    the moment it ends; rows from ``source`` join while the call runs (``n_in`` then
    grows with their prompt lengths, ``cancels`` with their events). ``one_by_one=False``
    decodes several rows as one padded batch even where the torch engine would run 2-4
    of them one after another (each speculatively, faster, but each waiting for the last).
    """
    from langchain_divconq.local.engine.generation import generate_greedy

    events = list(cancels) if cancels is not None else [None] * len(encoded)
    lengths = n_in if n_in is not None else [len(ids) for ids in encoded]
    if source is not None:
        events = source.events
    cut = params.stop or params.max_lines or params.no_repeat_lines

    def stop_hit(ids: Sequence[int]) -> bool:
        return cut_text(llm._decode(ids), params)[1]

    engine = llm._llamacpp_engine()
    backend = "llamacpp" if engine is not None else "torch"

    def result(row: int, out: Any) -> GenerationResult:
        stopped = out.finish_reason in ("stop", "cancelled")
        return llm._finish(
            out.token_ids,
            lengths[row],
            params,
            stopped,
            timed_out=stopped and expired(events[row]),
            backend=backend,
        )

    def finished(row: int, out: Any) -> None:
        if on_row is not None:
            on_row(row, result(row, out))

    common: dict[str, Any] = {
        "max_new_tokens": params.max_tokens,
        "eos_token_ids": llm._eos_list,
        "stop_checker": stop_hit if cut else None,
        "cancels": list(events[: len(encoded)]),
        "on_finish": finished,
        "source": source,
        "max_rows": max_rows,
    }
    if engine is not None:
        outs: Sequence[Any] = engine.generate(encoded, **common)
    else:
        if not one_by_one:
            common["rows_one_by_one_up_to"] = 0
        outs = generate_greedy(
            llm.model,
            encoded,
            pad_token_id=llm._pad_id,
            draft=llm.draft,
            **common,
        )
    return [result(row, out) for row, out in enumerate(outs)]


def batch_with_rows(
    llm: ChatLocalModel,
    inputs: list[Any],
    configs: list[RunnableConfig],
    rows: BatchRows,
    *,
    return_exceptions: bool,
    **kwargs: Any,
) -> list[Any]:
    """``llm.batch`` under :data:`BATCH_ROWS`: per-prompt cancel events and completions.

    Each prompt runs as its own ``invoke`` (its own LangChain run) in a thread whose
    :data:`CANCEL_EVENT` is its own event; a shared ticket makes the micro-batcher wait
    for all of them, so they still start as one engine call.
    """
    if len(rows.cancels) != len(inputs):
        msg = (
            f"BATCH_ROWS has {len(rows.cancels)} cancel events for a batch of {len(inputs)} "
            "inputs; give one per input."
        )
        raise ValueError(msg)
    ticket = BatchTicket(len(inputs))
    batcher = llm._get_batcher()
    batcher.expect(ticket)

    def one(i: int) -> Any:
        def call() -> Any:
            CANCEL_EVENT.set(rows.cancels[i])
            BATCH_ROWS.set(None)  # the prompt's own call is not a batch
            BATCH_TICKET.set(ticket)
            try:
                reply: Any = llm.invoke(inputs[i], configs[i], **kwargs)
            except Exception as exc:
                if not return_exceptions:
                    rows.on_done(i, exc)
                    raise
                reply = exc
            rows.on_done(i, reply)
            return reply

        return contextvars.copy_context().run(call)

    try:
        with ThreadPoolExecutor(len(inputs), thread_name_prefix="divconq-row") as pool:
            return list(pool.map(one, range(len(inputs))))
    finally:
        batcher.release(ticket)
