"""An asyncio micro-batcher: concurrent chat requests share one ``model.batch`` call.

A local model spends most of a decoding step on fixed overhead, so generating for
32 prompts at once costs little more than for one. :class:`RequestBatcher` turns
many concurrent requests (for example from ``divconq serve``) into few batched
calls: it waits a few milliseconds after the first request for others to arrive,
keeps collecting while a batch is running, then runs ``model.batch`` for each
group of requests that share generation parameters, in a worker thread so the
event loop stays responsive.

Each request of a batch stays its own: the call runs under
:data:`~langchain_divconq.local.decoding.BATCH_ROWS`, which gives every prompt its own
cancel event (set when its client leaves, times out or is aborted) and answers each
request the moment its row ends. A model that serves concurrent calls
(``serves_concurrent_calls = True``, as ``ChatLocalModel``) gets each new group at once,
while earlier ones run, so its requests join the running batch between decoding steps
(continuous batching); other models get one call at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig

from langchain_divconq.local.decoding import BATCH_ROWS, CANCEL_EVENT, BatchRows

__all__ = [
    "BatcherClosedError",
    "BatcherStats",
    "QueueFullError",
    "RequestBatcher",
    "RequestParams",
]

logger = logging.getLogger(__name__)

_MAX_VARIANTS = 64
_CALL_THREADS = 32


class QueueFullError(RuntimeError):
    """Raised by :meth:`RequestBatcher.submit` when ``max_queue`` requests are already waiting."""


class BatcherClosedError(RuntimeError):
    """Raised for requests that arrive, or are still waiting, when the batcher shuts down."""


@dataclass(frozen=True)
class RequestParams:
    """Per-request generation settings; requests are batched only with equal settings.

    ``None`` keeps the model's own setting.
    """

    temperature: float | None = None
    """Sampling temperature (0 means greedy)."""

    max_tokens: int | None = None
    """The most new tokens to generate."""

    stop: tuple[str, ...] = ()
    """Strings that end the generation."""


@dataclass
class BatcherStats:
    """Counters that show how well requests were batched."""

    requests: int = 0
    """Requests answered through :meth:`RequestBatcher.submit` (successes and failures)."""

    batches: int = 0
    """``model.batch`` calls made."""

    largest_batch: int = 0
    """The most requests served by one ``model.batch`` call."""

    rejected: int = 0
    """Requests refused because the queue was full."""

    streams: int = 0
    """Streaming requests served through :meth:`RequestBatcher.exclusive`."""

    batch_sizes: dict[int, int] = field(default_factory=dict)
    """How many batches had each size."""


@dataclass
class _Item:
    messages: list[BaseMessage]
    params: RequestParams
    future: asyncio.Future[BaseMessage]
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set once the request is answered or gone, so its row stops generating."""


class _Turns:
    """Batches share the model with each other; streams hold it alone.

    A waiting stream goes first, so a steady flow of batches cannot starve it.
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            self._shared -= 1
            await self._notify()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            finally:
                self._waiting -= 1
                self._cond.notify_all()
            self._exclusive = True
        try:
            yield
        finally:
            self._exclusive = False
            await self._notify()

    async def _notify(self) -> None:
        # shielded: a cancelled holder must still wake the others
        async def wake() -> None:
            async with self._cond:
                self._cond.notify_all()

        await asyncio.shield(wake())


_SHUT_DOWN = "The server shut down before this request was answered."


def _fail_unanswered(items: Sequence[_Item], error: BaseException) -> None:
    """Fail every request of ``items`` that has no answer yet (the rest keep theirs)."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


class RequestBatcher:
    """Collect concurrent chat requests and answer them with shared ``model.batch`` calls.

    Args:
        model: The chat model; its ``batch`` is called with up to ``max_batch`` prompts.
        max_batch: The most requests put into one ``model.batch`` call.
        max_queue: The most requests admitted at once (waiting, running or streaming);
            beyond it :meth:`submit` raises :class:`QueueFullError`.
        max_wait_s: How long to wait after the first request for others to join it.
        config: The ``RunnableConfig`` passed to every ``model.batch`` call.
        isolate_rows: Give each request its own cancel event and answer it as soon as its
            row ends (:data:`~langchain_divconq.local.decoding.BATCH_ROWS`), and let a model
            that serves concurrent calls take new requests while a batch runs. False
            restores the behaviour before: one cancel event per batch (set once all of its
            requests are gone), answers when the whole call returns, one call at a time
            (``benchmarks/serve_load.py --scenario long-short`` compares the two).

    Example:
        .. code-block:: python

            batcher = RequestBatcher(model, max_batch=32)
            await batcher.start()
            reply = await batcher.submit([HumanMessage("Hi")], RequestParams(max_tokens=16))
            await batcher.close()

    """

    def __init__(
        self,
        model: BaseChatModel,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        max_wait_s: float = 0.005,
        config: RunnableConfig | None = None,
        isolate_rows: bool = True,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            msg = (
                "RequestBatcher needs max_batch >= 1, max_queue >= 1 and max_wait_s >= 0; got "
                f"max_batch={max_batch}, max_queue={max_queue}, max_wait_s={max_wait_s}."
            )
            raise ValueError(msg)
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.config = config
        self.stats = BatcherStats()
        self._admitted = 0
        self._closed = False
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._turns = _Turns()
        self._worker: asyncio.Task[None] | None = None
        self._variants: dict[RequestParams, BaseChatModel] = {}
        self._running: set[int] = set()
        self._items: dict[int, _Item] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.isolate_rows = isolate_rows
        self._concurrent = isolate_rows and getattr(model, "serves_concurrent_calls", False) is True
        self._threads: ThreadPoolExecutor | None = None
        self.aborted = asyncio.Event()
        """Set by :meth:`abort`; streams watch it to end with an error."""

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop taking requests and fail the ones still waiting with :class:`BatcherClosedError`.

        A batch already running in the worker thread is not interrupted (a generate call
        cannot be cancelled); its callers get :class:`BatcherClosedError` too.
        """
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_queued()
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None

    def stop_admitting(self) -> None:
        """Refuse new requests with :class:`BatcherClosedError`; admitted ones carry on."""
        self._closed = True

    def abort(self, message: str) -> None:
        """Fail every admitted request now: waiting and running ones, and streams.

        Their callers get :class:`BatcherClosedError` with ``message``, and each of
        their rows is told to stop generating (see
        :data:`~langchain_divconq.local.decoding.BATCH_ROWS`).
        """
        self._closed = True
        self.aborted.set()
        for key in list(self._running):
            item = self._items[key]
            if not item.future.done():
                item.future.set_exception(BatcherClosedError(message))
        self._fail_queued(message)

    @property
    def pending(self) -> int:
        """Requests admitted and not finished yet (waiting, running or streaming)."""
        return self._admitted

    # ------------------------------------------------------------------- requests
    def _admit(self) -> None:
        if self._closed:
            msg = "The server is shutting down and takes no new requests; retry on another replica."
            raise BatcherClosedError(msg)
        if self._admitted >= self.max_queue:
            self.stats.rejected += 1
            msg = (
                f"The server is at capacity: {self._admitted} requests are queued or running "
                f"(max_queue={self.max_queue}). Retry later, or start the server with a larger "
                "--max-queue."
            )
            raise QueueFullError(msg)
        self._admitted += 1

    async def submit(self, messages: Sequence[BaseMessage], params: RequestParams) -> BaseMessage:
        """Queue one request and wait for its reply.

        Raises:
            QueueFullError: When ``max_queue`` requests are already admitted.
            BatcherClosedError: When the batcher is shutting down.
            Exception: Whatever the model raised for this request.

        """
        self._admit()
        try:
            future: asyncio.Future[BaseMessage] = asyncio.get_running_loop().create_future()
            item = _Item(list(messages), params, future)
            # answered, failed, or its caller left: either way its row may stop now
            future.add_done_callback(lambda _: item.cancel.set())
            self._queue.put_nowait(item)
            return await future
        finally:
            self._admitted -= 1

    @contextlib.asynccontextmanager
    async def exclusive(self, params: RequestParams) -> AsyncIterator[BaseChatModel]:
        """Admit one request and hold the model alone while it runs (used for streaming).

        Generate calls never overlap: on a CPU one call already uses every core, and not
        every chat model is safe to call from two threads at once.

        Yields:
            The model configured with ``params``.

        """
        self._admit()
        try:
            async with self._turns.exclusive():
                if self.aborted.is_set():  # shut down while this stream waited for the model
                    msg = "The server is shutting down and takes no new requests."
                    raise BatcherClosedError(msg)
                self.stats.streams += 1
                yield self.variant(params)
        finally:
            self._admitted -= 1

    def variant(self, params: RequestParams) -> BaseChatModel:
        """Return a shallow copy of the model with ``params`` applied to its fields.

        Only fields the model declares (``temperature``, ``max_tokens``, ``stop``) are set;
        the copies share the weights. Callers must still cut the text at ``params.stop``,
        since a model without a ``stop`` field ignores it.
        """
        cached = self._variants.get(params)
        if cached is not None:
            return cached
        fields = type(self.model).model_fields
        update: dict[str, Any] = {}
        if params.temperature is not None and "temperature" in fields:
            update["temperature"] = params.temperature
        if params.max_tokens is not None and "max_tokens" in fields:
            update["max_tokens"] = params.max_tokens
        if params.stop and "stop" in fields:
            update["stop"] = list(params.stop)
        model = self.model.model_copy(update=update) if update else self.model
        if len(self._variants) >= _MAX_VARIANTS:
            self._variants.pop(next(iter(self._variants)))
        self._variants[params] = model
        return model

    # --------------------------------------------------------------------- worker
    async def _collect(self) -> list[_Item]:
        items = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(items) < self.max_batch:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                break
        return items

    async def _run(self) -> None:
        while True:
            items = await self._collect()
            try:
                groups: dict[RequestParams, list[_Item]] = {}
                for item in items:
                    if not item.future.done():  # skip callers that went away
                        groups.setdefault(item.params, []).append(item)
                for params, group in groups.items():
                    if self._concurrent:  # its requests may join a batch already running
                        self._spawn(self._run_group(params, group), group)
                    else:
                        await self._run_group(params, group)
            except asyncio.CancelledError:
                _fail_unanswered(items, BatcherClosedError(_SHUT_DOWN))
                raise
            except Exception as exc:  # a bug must not kill the worker and hang every caller
                logger.exception("The batch worker failed")
                _fail_unanswered(items, exc)

    def _spawn(self, work: Coroutine[Any, Any, None], group: list[_Item]) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                _fail_unanswered(group, BatcherClosedError(_SHUT_DOWN))
                raise
            except Exception as exc:  # a bug must not leave callers waiting forever
                logger.exception("A batch task failed")
                _fail_unanswered(group, exc)

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_group(self, params: RequestParams, group: list[_Item]) -> None:
        model = self.variant(params)
        for item in group:  # what abort() fails, retries included
            self._running.add(id(item))
            self._items[id(item)] = item
        try:
            outputs = await self._call(model, group)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(group))
            self.stats.batch_sizes[len(group)] = self.stats.batch_sizes.get(len(group), 0) + 1
            await self._retry_shared_failures(model, group, outputs)
        finally:
            for item in group:
                self._running.discard(id(item))
                self._items.pop(id(item), None)
        self.stats.requests += len(group)
        for item, output in zip(group, outputs, strict=True):
            if item.future.done():
                continue
            if isinstance(output, BaseException):
                item.future.set_exception(output)
            else:
                item.future.set_result(output)

    async def _retry_shared_failures(
        self, model: BaseChatModel, group: list[_Item], outputs: list[Any]
    ) -> None:
        # One exception object shared by several requests means the whole call failed
        # (a batched engine fails every prompt of a call), so the culprit is unknown:
        # run those requests again one at a time, so that only the culprit fails.
        shared: dict[int, int] = {}
        for output in outputs:
            if isinstance(output, BaseException):
                shared[id(output)] = shared.get(id(output), 0) + 1
        retry = [
            index
            for index, output in enumerate(outputs)
            if isinstance(output, BaseException) and shared[id(output)] > 1
        ]
        if retry:
            logger.warning(
                "A batch call failed as a whole (%s); retrying its %d requests one by one",
                outputs[retry[0]],
                len(retry),
            )
        for index in retry:
            if not group[index].future.done():  # skip callers that left (or an abort)
                outputs[index] = (await self._call(model, [group[index]]))[0]

    async def _call(self, model: BaseChatModel, group: list[_Item]) -> list[Any]:
        """Run ``model.batch`` for ``group`` in a thread.

        Each request is answered, and its row stopped, on its own through :data:`BATCH_ROWS`.
        """
        loop = asyncio.get_running_loop()
        everyone_gone = threading.Event()

        def gone(_: object) -> None:
            if all(item.future.done() for item in group):
                everyone_gone.set()

        for item in group:
            item.future.add_done_callback(gone)
        prompts: list[Any] = [item.messages for item in group]

        def answered(index: int, reply: Any) -> None:
            # Failures wait for the call's end: one exception shared by several
            # requests means the call failed as a whole (see _retry_shared_failures).
            if not isinstance(reply, BaseException):
                loop.call_soon_threadsafe(_answer, group[index].future, reply)

        rows = BatchRows([item.cancel for item in group], answered)

        def run() -> list[Any]:
            # A model that knows BATCH_ROWS stops each row once its own event is set; one
            # that knows only CANCEL_EVENT stops the call once every request is gone.
            cancel_token = CANCEL_EVENT.set(everyone_gone)
            rows_token = BATCH_ROWS.set(rows if self.isolate_rows else None)
            try:
                return model.batch(prompts, self.config, return_exceptions=True)
            finally:
                BATCH_ROWS.reset(rows_token)
                CANCEL_EVENT.reset(cancel_token)

        turn = self._turns.shared() if self._concurrent else self._turns.exclusive()
        try:
            async with turn:
                return list(await loop.run_in_executor(self._pool(), run))
        except asyncio.CancelledError:
            everyone_gone.set()  # shutting down: the thread must not keep generating
            for item in group:
                item.cancel.set()
            raise
        except Exception as exc:
            logger.exception("A batch of %d requests failed", len(group))
            return [exc] * len(group)
        finally:
            for item in group:
                item.future.remove_done_callback(gone)

    def _pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            workers = _CALL_THREADS if self._concurrent else 1
            self._threads = ThreadPoolExecutor(workers, thread_name_prefix="divconq-batch")
        return self._threads

    def _fail_queued(self, message: str = "") -> None:
        message = message or "The server shut down before this request was answered."
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(BatcherClosedError(message))


def _answer(future: asyncio.Future[BaseMessage], reply: BaseMessage) -> None:
    if not future.done():
        future.set_result(reply)
