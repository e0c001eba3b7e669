"""Decoding helpers for local models: settings, results, stop handling, micro-batching.

Engine-agnostic pieces shared by :class:`~langchain_divconq.local.ChatLocalModel`
and any faster engine that replaces its ``_generate_texts``: the per-call
:class:`GenerationParams`, the :class:`GenerationResult`, the one place that cuts
text at stop strings / line limits (:func:`cut_text`), a transformers stopping
criterion and streamer, and :class:`MicroBatcher`, which turns concurrent
single-prompt calls into batched ones. Imports torch only inside functions.
"""

from __future__ import annotations

import atexit
import contextvars
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

__all__ = [
    "BATCH_ROWS",
    "BATCH_TICKET",
    "CANCEL_EVENT",
    "BatchRows",
    "BatchTicket",
    "Deadline",
    "GenerationParams",
    "GenerationResult",
    "MicroBatcher",
    "RequestFeed",
    "StopCriteria",
    "TokenQueue",
    "cut_text",
    "expired",
    "held_back",
]

Prompt = list[dict[str, str]]
"""Chat messages as ``{"role": ..., "content": ...}`` dicts."""


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings shared by every prompt of one batched ``generate`` call."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    max_lines: int | None = None
    no_repeat_lines: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens must be a positive int (received {self.max_tokens!r})")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (received {self.temperature!r})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (received {self.top_p!r})")
        if self.max_lines is not None and (
            not isinstance(self.max_lines, int) or self.max_lines < 1
        ):
            problems.append(
                f"max_lines must be None or a positive int (received {self.max_lines!r})"
            )
        if problems:
            msg = "Invalid generation settings: " + "; ".join(problems) + "."
            raise ValueError(msg)


@dataclass(frozen=True)
class GenerationResult:
    """One prompt's completion: the text (already cut at stops) and its token counts."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: Literal["stop", "length", "timeout"]
    """``stop`` (an end token, a stop string or a line limit), ``length`` (``max_tokens``)
    or ``timeout`` (the call's :class:`Deadline` passed; the text is what was generated)."""
    backend: str = "torch"
    """The engine that generated it: ``torch`` or ``llamacpp``."""


def cut_text(text: str, params: GenerationParams, *, final: bool = False) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string and after ``max_lines`` complete lines.

    With ``no_repeat_lines`` it is also cut before the first complete line that
    repeats an earlier one (:func:`~langchain_divconq.local.engine.stopping.repeated_line_start`),
    so a repeated sub-question is never returned; ``final`` says generation has
    ended, so the last line is complete too. Returns the cut text and whether
    anything stopped it.

    Example:
        >>> cut_text("Why? How? STOP more", GenerationParams(8, stop=("STOP",)))
        ('Why? How? ', True)

    """
    cut = False
    hits = [i for i in (text.find(s) for s in params.stop) if i >= 0]
    if hits:
        text, cut = text[: min(hits)], True
    if params.no_repeat_lines:
        from langchain_divconq.local.engine.stopping import repeated_line_start

        start = repeated_line_start(text + "\n" if final else text)
        if start is not None:
            text, cut = text[:start].rstrip("\n"), True
    if params.max_lines is not None:
        done, pos = 0, 0
        while (nl := text.find("\n", pos)) >= 0:
            if text[pos:nl].strip():
                done += 1
                if done >= params.max_lines:
                    return text[:nl], True
            pos = nl + 1
    return text, cut


def held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many trailing characters could still grow into a stop string."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


# --------------------------------------------------------------------------- batching
@dataclass
class BatchTicket:
    """How many requests of one ``batch()`` call have not reached the batcher yet."""

    remaining: int


BATCH_TICKET: contextvars.ContextVar[BatchTicket | None] = contextvars.ContextVar(
    "divconq_batch_ticket", default=None
)
"""Set by ``batch()`` around its per-prompt calls, so the batcher waits for all of them."""

CANCEL_EVENT: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "divconq_cancel_event", default=None
)
"""Set by a caller that may abandon its calls (``divconq serve``: a client left, a timeout,
a shutdown); a local model stops generating for calls made under it once the event is set.
Around a ``batch()`` call it stands for the whole call; see :data:`BATCH_ROWS` for one event
per prompt."""


@dataclass(frozen=True)
class BatchRows:
    """Per-prompt hooks of one ``batch()`` call: a cancel event and a completion callback each.

    A model that honours :data:`BATCH_ROWS` (``ChatLocalModel``) ends prompt ``i``'s row at
    its next decoding step once ``cancels[i]`` is set, while the other rows go on, and calls
    ``on_done(i, reply)`` (``reply``: the message, or the exception under
    ``return_exceptions=True``) as soon as that prompt is answered, before the call
    returns. ``on_done`` runs in a worker thread, once per prompt, and must not block.

    Example:
        .. code-block:: python

            rows = BatchRows([threading.Event(), threading.Event()], on_done=print)
            token = BATCH_ROWS.set(rows)
            try:
                model.batch([prompt_a, prompt_b])
            finally:
                BATCH_ROWS.reset(token)

    """

    cancels: Sequence[threading.Event | None]
    """One event (or None) per prompt of the call, in order."""
    on_done: Callable[[int, Any], None]
    """Told ``(index, reply_or_exception)`` the moment each prompt is answered."""


BATCH_ROWS: contextvars.ContextVar[BatchRows | None] = contextvars.ContextVar(
    "divconq_batch_rows", default=None
)
"""Set around a ``batch()`` call whose prompts each have their own caller (``divconq serve``):
see :class:`BatchRows`. Models that do not know it answer the call as a whole."""


@dataclass
class _Request:
    prompt: Prompt
    params: GenerationParams
    future: Future[GenerationResult]
    cancel: threading.Event | None = None


_BATCHERS: weakref.WeakSet[MicroBatcher] = weakref.WeakSet()


@atexit.register
def _close_batchers() -> None:
    for batcher in list(_BATCHERS):
        batcher.close()


class MicroBatcher:
    """Coalesces concurrent requests into batched calls on one worker thread.

    Requests with equal :class:`GenerationParams` share a call. While a
    ``batch()`` call still has requests on their way (its ticket), the worker
    waits for them (up to ``gather_s`` after the last arrival) so that a batch
    of at most ``batch_size`` prompts becomes exactly one call. Otherwise it
    takes whatever is queued: requests that arrive while a call runs form the
    next one. The worker thread exits after ``idle_s`` without work.

    With ``live=True``, ``run`` also gets a :class:`RequestFeed` (keyword ``feed``): it
    answers each request the moment its row ends, and lets requests with equal
    parameters that arrive while the call runs join it (continuous batching).
    """

    def __init__(
        self,
        run: Callable[..., list[GenerationResult]],
        batch_size: Callable[[], int],
        *,
        gather_s: float = 1.0,
        idle_s: float = 2.0,
        live: bool = False,
    ) -> None:
        self._live = live
        self._run_batch = run
        self._batch_size = batch_size
        self._gather_s = gather_s
        self._idle_s = idle_s
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._expected = 0
        self._last_arrival = 0.0
        self._worker: threading.Thread | None = None
        self._closing = False
        _BATCHERS.add(self)

    def close(self, timeout: float = 5.0) -> None:
        """Let an idle worker thread end now and wait for it (also run at interpreter exit).

        A worker that has run torch and is still parked at exit made the process abort
        ("terminate called without an active exception") after ``divconq ask`` answered.
        """
        with self._cond:
            self._closing = True
            worker = self._worker
            self._cond.notify_all()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    def expect(self, ticket: BatchTicket) -> None:
        """Announce ``ticket.remaining`` requests that are on their way."""
        with self._cond:
            self._expected += ticket.remaining

    def release(self, ticket: BatchTicket) -> None:
        """Stop waiting for the requests of ``ticket`` that never arrived."""
        with self._cond:
            self._expected -= ticket.remaining
            ticket.remaining = 0
            self._cond.notify_all()

    def withdraw(self, ticket: BatchTicket) -> None:
        """Stop waiting for one request of ``ticket`` that failed before it was submitted."""
        with self._cond:
            if ticket.remaining > 0:
                ticket.remaining -= 1
                self._expected -= 1
                self._cond.notify_all()

    def submit(
        self,
        prompt: Prompt,
        params: GenerationParams,
        ticket: BatchTicket | None = None,
        cancel: threading.Event | None = None,
    ) -> Future[GenerationResult]:
        """Queue one prompt; the future resolves when its batched call has run.

        Once ``cancel`` is set the prompt is dropped if it has not started (its future
        is cancelled), or its row stops generating at the next step.
        """
        future: Future[GenerationResult] = Future()
        with self._cond:
            self._queue.append(_Request(prompt, params, future, cancel))
            if ticket is not None and ticket.remaining > 0:
                ticket.remaining -= 1
                self._expected -= 1
            self._last_arrival = time.monotonic()
            if self._worker is None:
                self._start_worker()
            self._cond.notify_all()
        return future

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._run, name="divconq-local-batcher", daemon=True)
        self._worker.start()

    def _take(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue:
                if self._closing or (not self._cond.wait(self._idle_s) and not self._queue):
                    self._worker = None
                    return None
            limit = self._batch_size()
            while self._expected > 0 and len(self._queue) < limit:
                left = self._gather_s - (time.monotonic() - self._last_arrival)
                if left <= 0:
                    break
                self._cond.wait(left)
            params = self._queue[0].params
            group = [r for r in self._queue if r.params == params][:limit]
            self._queue = [r for r in self._queue if all(r is not g for g in group)]
        for r in group:
            if r.cancel is not None and r.cancel.is_set():
                r.future.cancel()  # abandoned while it waited: never generated
        return [r for r in group if r.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        try:
            while (group := self._take()) is not None:
                if group:
                    self._serve(group)
        finally:
            with self._cond:
                if self._worker is threading.current_thread():
                    self._worker = None
                    if self._queue:  # never leave callers waiting on a dead worker
                        self._start_worker()

    def _join(self, params: GenerationParams, limit: int) -> list[_Request]:
        """Take up to ``limit`` queued requests with ``params`` for a running call."""
        with self._cond:
            taken = [r for r in self._queue if r.params == params][:limit]
            self._queue = [r for r in self._queue if all(r is not t for t in taken)]
        for r in taken:
            if r.cancel is not None and r.cancel.is_set():
                r.future.cancel()
        return [r for r in taken if r.future.set_running_or_notify_cancel()]

    def _has_waiting(self, params: GenerationParams) -> bool:
        with self._cond:
            return any(r.params == params for r in self._queue)

    def _serve(self, group: list[_Request]) -> None:
        feed = RequestFeed(self, group) if self._live else None
        requests = feed.requests if feed is not None else group
        try:
            prompts, params = [r.prompt for r in group], group[0].params
            cancels = [r.cancel for r in group]
            if feed is not None:
                results = self._run_batch(prompts, params, cancels, feed=feed)
            elif any(c is not None for c in cancels):
                results = self._run_batch(prompts, params, cancels)
            else:  # an engine that replaced the run method may not take the events
                results = self._run_batch(prompts, params)
            if len(results) != len(group):
                msg = f"the engine returned {len(results)} results for {len(group)} prompts"
                raise RuntimeError(msg)
        except BaseException as exc:  # reported to every waiting caller
            for r in requests:
                if not r.future.done():
                    r.future.set_exception(exc)
        else:
            for r, res in zip(group, results, strict=True):
                if not r.future.done():
                    r.future.set_result(res)
            for r in requests:  # a joined request the engine never answered: a bug
                if not r.future.done():
                    msg = "the engine returned without answering a request that joined its call"
                    r.future.set_exception(RuntimeError(msg))


class RequestFeed:
    """The requests one running engine call serves (see ``MicroBatcher(live=True)``).

    Indices ``0..n-1`` are the call's own prompts; requests that join get the next ones,
    in the order :meth:`more` returns them.
    """

    def __init__(self, batcher: MicroBatcher, group: list[_Request]) -> None:
        self._batcher = batcher
        self.params = group[0].params
        self.requests = list(group)

    def deliver(self, index: int, result: GenerationResult) -> None:
        """Answer request ``index`` now (its row has ended); later answers are ignored."""
        future = self.requests[index].future
        if not future.done():
            future.set_result(result)

    def waiting(self) -> bool:
        """Whether queued requests with this call's parameters could join it."""
        return self._batcher._has_waiting(self.params)

    def more(self, limit: int) -> list[tuple[int, Prompt, threading.Event | None]]:
        """Take up to ``limit`` such requests: ``(index, prompt, cancel event)`` each."""
        joined = self._batcher._join(self.params, limit)
        start = len(self.requests)
        self.requests.extend(joined)
        return [(start + k, r.prompt, r.cancel) for k, r in enumerate(joined)]


class StopCriteria:
    """A transformers stopping criterion: ends rows at a stop string or ``max_lines`` lines.

    Rows already ended by an end token are left alone; ``cancel`` ends them all, and
    ``row_cancels[i]`` (one event or None per row) ends row ``i``.
    ``stopped`` holds the rows it ended, so their trailing padding is not
    mistaken for an end token. ``on_row_done(i, new_ids)`` is told about each row the
    step it ends (an end token, a stop, a cancel), while ``generate`` still runs the
    others; rows that reach ``max_tokens`` end with the call.
    """

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        end_ids: frozenset[int],
        width: int,
        params: GenerationParams,
        cancel: threading.Event | None = None,
        row_cancels: Sequence[threading.Event | None] = (),
        on_row_done: Callable[[int, list[int]], None] | None = None,
    ) -> None:
        self.on_row_done = on_row_done
        self.decode = decode
        self.row_cancels = row_cancels
        self.end_ids = end_ids
        self.width = width
        self.params = params
        self.cancel = cancel
        self.stopped: set[int] = set()
        self.ended: set[int] = set()
        # Every ordinary token decodes to at least one character, so this many
        # trailing tokens always cover a stop string that just completed.
        self.window = max((len(s) for s in params.stop), default=0) + 8

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        """Return a bool tensor: which rows are done after this step."""
        import torch

        rows = input_ids.tolist()
        done = [False] * len(rows)
        cancelled = self.cancel is not None and self.cancel.is_set()
        for i, row in enumerate(rows):
            if i in self.stopped or i in self.ended:
                done[i] = True
                continue
            if row[-1] in self.end_ids:
                self.ended.add(i)
                done[i] = True
            else:
                gone = i < len(self.row_cancels) and _is_set(self.row_cancels[i])
                if cancelled or gone or self._hit(row[self.width :]):
                    self.stopped.add(i)
                    done[i] = True
            if done[i] and self.on_row_done is not None:
                self.on_row_done(i, row[self.width :])
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _hit(self, generated: list[int]) -> bool:
        decode = self.decode
        if self.params.stop:
            tail = decode(generated[-self.window :])
            if any(s in tail for s in self.params.stop):
                return True
        lines = self.params.max_lines is not None or self.params.no_repeat_lines
        if lines and "\n" in decode(generated[-1:]):
            return cut_text(decode(generated), self.params)[1]
        return False


def _is_set(event: threading.Event | None) -> bool:
    return event is not None and event.is_set()


class Deadline(threading.Event):
    """A cancel event that also counts as set once ``seconds`` have passed.

    Generation polls ``is_set()`` at every step (:class:`StopCriteria`, the fast
    engine's stop check, :class:`MicroBatcher` before a call starts), so a
    deadline stops a row without any timer thread. ``parent`` (e.g. a server's
    cancel event) sets it too.

    Example:
        >>> Deadline(0).is_set(), Deadline(60).is_set()
        (True, False)

    """

    def __init__(self, seconds: float, parent: threading.Event | None = None) -> None:
        super().__init__()
        self.seconds = seconds
        self.parent = parent
        self._at = time.monotonic() + seconds

    @property
    def expired(self) -> bool:
        """Whether the time is up (as opposed to a caller having set the event)."""
        return time.monotonic() >= self._at

    def is_set(self) -> bool:
        """Return True once set, once the time is up, or once ``parent`` is set."""
        return super().is_set() or self.expired or _is_set(self.parent)


def expired(event: threading.Event | None) -> bool:
    """Whether ``event`` is a :class:`Deadline` whose time is up."""
    return isinstance(event, Deadline) and event.expired


class TokenQueue:
    """A transformers streamer that hands generated token ids to another thread."""

    _END: ClassVar[object] = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        """Receive the prompt (ignored) and then each step's new token ids."""
        if not self._prompt_seen:  # generate() first sends the prompt
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self._queue.put(int(token))

    def end(self) -> None:
        """Mark the end of generation."""
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[int]:
        while (item := self._queue.get()) is not self._END:
            yield item  # type: ignore[misc]
