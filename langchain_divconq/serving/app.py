"""``divconq serve``: an OpenAI-compatible HTTP server for the decomposer.

Many app processes (and non-Python clients) can then share one local decomposer,
and the chain reaches it with ``ChatOpenAI(base_url=...)`` exactly as it would
reach vLLM or a llama.cpp server. The app is built on FastAPI and runs under
uvicorn (the ``serve`` extra). It implements ``GET /v1/models`` and
``POST /v1/chat/completions`` (plain and ``stream: true`` server-sent events,
with token usage), answers malformed requests with a 4xx OpenAI-style error
body, refuses work beyond ``max_queue`` with 429, and drains on SIGTERM.

Hardening: bodies, prompts and ``max_tokens`` are capped
(:mod:`~langchain_divconq.serving.limits`); an API key, the ``Host`` and
``Origin`` headers and JSON-only POSTs guard the door
(:mod:`~langchain_divconq.serving.access`); a request whose client leaves or whose
``request_timeout`` passes stops its generation, not only its queue slot; and on
SIGTERM (``app.state.drain``) requests still running near the end of the grace
period get a JSON 503 and their generation is stopped.

Non-streaming requests go through a :class:`~langchain_divconq.batcher.RequestBatcher`,
so concurrent requests share batched generate calls. Streaming requests run one
at a time through ``model.astream`` (token by token), taking turns with the batches.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage

from langchain_divconq.prompts import message_text
from langchain_divconq.secrets import SecretsFilter, scrub_text
from langchain_divconq.serving.access import LOCAL_HOSTS, AccessPolicy
from langchain_divconq.serving.adapter_api import add_adapter_routes
from langchain_divconq.serving.batcher import (
    BatcherClosedError,
    QueueFullError,
    RequestBatcher,
    RequestParams,
)
from langchain_divconq.serving.limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_TOKENS_LIMIT,
    Limits,
    can_count_tokens,
    context_length,
    count_prompt_tokens,
)
from langchain_divconq.serving.models import (
    DEFAULT_ALIAS,
    AdapterLoader,
    ServedModels,
    check_model_name,
)
from langchain_divconq.serving.protocol import (
    APIError,
    StopFilter,
    cut_at_stop,
    finish_reason,
    generation_params,
    parse_request,
    sse,
    to_messages,
    usage_body,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["DEFAULT_ALIAS", "create_app"]

logger = logging.getLogger(__name__)
# Tracebacks of failed generations quote upstream errors, credentials included.
logger.addFilter(SecretsFilter())

T = TypeVar("T")

_SHUTDOWN_MESSAGE = (
    "The server is shutting down and stopped this request before it finished; retry it "
    "(on another replica)."
)


def _budget(model: BaseChatModel, params: RequestParams) -> int | None:
    budget = params.max_tokens or getattr(model, "max_tokens", None)
    return budget if isinstance(budget, int) else None


# ------------------------------------------------------------------------- the app
def create_app(
    model: BaseChatModel,
    *,
    model_id: str,
    max_queue: int = 256,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_prompt_tokens: int | None = None,
    max_tokens_limit: int | None = None,
    request_timeout: float | None = None,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = LOCAL_HOSTS,
    allowed_origins: Sequence[str] = (),
    adapters: Mapping[str, BaseChatModel] | None = None,
    adapter_loader: AdapterLoader | None = None,
    allow_runtime_adapters: bool = False,
) -> "FastAPI":
    """Build the OpenAI-compatible FastAPI app serving ``model``.

    Args:
        model: The chat model to serve; its ``batch`` should batch generation
            (as :class:`~langchain_divconq.local.ChatLocalModel` does).
        model_id: The name listed by ``/v1/models``; requests must name it (or 'default').
        max_queue: The most requests admitted at once; more get HTTP 429.
        max_batch: The most requests answered by one ``model.batch`` call.
        max_wait_ms: How long the batcher waits for more requests after the first.
        max_body_bytes: The largest request body; a larger one gets HTTP 413.
        max_prompt_tokens: The longest prompt, in tokens, for a model that can count
            them (a local model); default: the model's context window.
        max_tokens_limit: The largest ``max_tokens`` a request may ask for; default:
            the model's context window, else :data:`DEFAULT_MAX_TOKENS_LIMIT`.
        request_timeout: Seconds a request may take (streams: until their last
            chunk); past it the client gets HTTP 504 and the generation stops. None: no limit.
        api_key: When set, every request but ``GET /health`` must send
            ``Authorization: Bearer <api_key>`` (else HTTP 401).
        allowed_hosts: Host names accepted in the ``Host`` header besides localhost and
            the loopback addresses (DNS rebinding guard); None or ``["*"]``: any.
        allowed_origins: Browser origins allowed to call; a request with any other
            ``Origin`` header gets HTTP 403.
        adapters: More models served beside ``model``, by name (typically the same
            base with other LoRA adapters); each has its own batcher, so requests for
            different models never share a batch.
        adapter_loader: Loads an adapter folder as a chat model, for
            ``POST /v1/load_lora_adapter``; None: adapters cannot be added at run time.
        allow_runtime_adapters: Allow ``POST /v1/load_lora_adapter`` and
            ``/v1/unload_lora_adapter`` without ``api_key``; with a key they are always
            allowed (to key holders).

    Returns:
        The FastAPI app; run it with ``uvicorn.run(app)``. ``app.state.batcher`` holds
        the :class:`~langchain_divconq.batcher.RequestBatcher` while the app runs;
        ``app.state.drain(grace_s)`` (thread-safe) starts a graceful shutdown.

    Example:
        >>> from langchain_core.language_models import FakeListChatModel
        >>> app = create_app(FakeListChatModel(responses=["Hi"]), model_id="fake")
        >>> [r.path for r in app.routes if r.path.startswith("/v1/m")]
        ['/v1/models', '/v1/models/{model_name}']

    """
    try:
        from contextlib import asynccontextmanager

        from fastapi import Depends, FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as exc:
        msg = "divconq serve needs the 'serve' extra: pip install 'langchain-divconq[serve]'."
        raise ImportError(msg) from exc

    def make_batcher(served: BaseChatModel) -> RequestBatcher:
        return RequestBatcher(
            served, max_batch=max_batch, max_queue=max_queue, max_wait_s=max_wait_ms / 1000
        )

    registry = ServedModels(make_batcher, adapter_loader)
    registry.add(model_id, model)
    for name, other in (adapters or {}).items():
        registry.add(check_model_name(name), other)
    runtime_adapters = adapter_loader is not None and (bool(api_key) or allow_runtime_adapters)
    context = context_length(model)
    counts_tokens = can_count_tokens(model)
    limits = Limits(
        max_body_bytes=max_body_bytes,
        max_prompt_tokens=max_prompt_tokens if max_prompt_tokens is not None else context,
        max_tokens_limit=max_tokens_limit
        if max_tokens_limit is not None
        else context or DEFAULT_MAX_TOKENS_LIMIT,
        context=context,
    )
    policy = AccessPolicy(
        api_key=api_key or None, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins
    )
    loops: list[asyncio.AbstractEventLoop] = []

    @asynccontextmanager
    async def lifespan(app: "FastAPI") -> AsyncIterator[None]:
        loops.append(asyncio.get_running_loop())
        await registry.start()
        try:
            yield
        finally:
            await registry.close()

    async def guard(request: Request) -> None:
        policy.check(request.method, request.url.path, request.headers)

    def drain(grace_s: float) -> None:
        """Start a graceful shutdown: no new requests; fail running ones near ``grace_s``."""
        if not loops:
            return

        def begin() -> None:
            registry.stop_admitting()
            # Leave time to send the errors and stop the generation before the server
            # gives up on its connections at grace_s.
            margin = min(1.0, grace_s * 0.2)
            loops[0].call_later(max(grace_s - margin, 0.0), registry.abort, _SHUTDOWN_MESSAGE)

        loops[0].call_soon_threadsafe(begin)

    app = FastAPI(
        title="langchain-divconq decomposer server",
        lifespan=lifespan,
        dependencies=[Depends(guard)],
    )
    app.state.batcher = registry.default.batcher
    app.state.models = registry
    app.state.summary = lambda: _summary(registry, policy, runtime_adapters)
    app.state.limits = limits
    app.state.drain = drain

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **registry.health()}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [registry.card(served) for served in registry]}

    @app.get("/v1/models/{model_name}")
    async def get_model(model_name: str) -> dict[str, Any]:
        return registry.card(registry.get(model_name))

    add_adapter_routes(app, registry, enabled=runtime_adapters, read_body=_read_body)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        deadline = None if request_timeout is None else time.monotonic() + request_timeout
        body = parse_request(await _read_body(request, limits.max_body_bytes))
        served = registry.get(body.model)
        batcher, served_model = served.batcher, served.model
        limits.check_budget(body.max_tokens, "max_tokens")
        limits.check_budget(body.max_completion_tokens, "max_completion_tokens")
        messages, params = to_messages(body), generation_params(body)
        if counts_tokens and (limits.max_prompt_tokens or limits.context):
            await _check_prompt_length(served_model, messages, params, limits)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream_events(
                batcher,
                messages,
                params,
                _StreamInfo(completion_id, served.name, include_usage, deadline, request_timeout),
            )
            first = await _first_event(events)
            return StreamingResponse(
                _chain_events(first, events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            reply = await _unless_disconnected(request, batcher.submit(messages, params), deadline)
        except _ClientGone:
            # Nobody reads the answer; the batcher skips the request if it has not
            # started, and stops its generation if it has.
            return JSONResponse({}, status_code=499)
        except _TimedOut as exc:
            raise _timeout_error(request_timeout) from exc
        except QueueFullError as exc:
            raise APIError(429, str(exc), type="rate_limit_error", code="queue_full") from exc
        except BatcherClosedError as exc:
            raise APIError(503, str(exc), type="server_error", code="shutting_down") from exc
        except Exception as exc:
            logger.exception("Generation failed")
            msg = scrub_text(f"Generation failed: {type(exc).__name__}: {exc}")
            raise APIError(500, msg, type="server_error", code="generation_failed") from exc
        text, stopped = cut_at_stop(message_text(reply), params.stop)
        usage = getattr(reply, "usage_metadata", None)
        finish = finish_reason(reply, usage, _budget(batcher.variant(params), params), stopped)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": served.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
                "usage": usage_body(usage),
            }
        )

    return app


def _summary(registry: ServedModels, policy: AccessPolicy, runtime_adapters: bool) -> str:
    """One line for the start-up message: the model ids, the key, run-time adapters."""
    names = registry.names()
    models = f"{names[0]} (also {DEFAULT_ALIAS!r})" + "".join(f", {n}" for n in names[1:])
    key = "API key required" if policy.api_key else "no API key"
    parts = [f"models: {models}", key]
    if runtime_adapters:
        parts.append("adapters can be added: POST /v1/load_lora_adapter")
    return " | ".join(parts)


class _ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class _TimedOut(Exception):
    """The request ran past its deadline."""


def _timeout_error(request_timeout: float | None) -> APIError:
    msg = (
        f"The request took longer than this server's limit of {request_timeout:g} s "
        "(--request-timeout) and its generation was stopped. Ask for fewer tokens or retry."
    )
    return APIError(504, msg, type="server_error", code="request_timeout")


async def _read_body(request: Any, limit: int) -> bytes:
    """Read the body, refusing with 413 as soon as it is known to exceed ``limit`` bytes."""
    msg = (
        f"The request body is larger than this server's limit of {limit} bytes (--max-body-bytes)."
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, msg, code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # counted as it arrives: chunked bodies too
        size += len(chunk)
        if size > limit:
            raise APIError(413, msg, code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _check_prompt_length(
    model: BaseChatModel, messages: list[BaseMessage], params: RequestParams, limits: Limits
) -> None:
    try:
        # Tokenizing up to a megabyte takes a while; keep the event loop free.
        tokens = await asyncio.to_thread(count_prompt_tokens, model, messages)
    except Exception as exc:
        logger.warning("Could not count the prompt's tokens", exc_info=True)
        msg = f"The messages could not be tokenized: {type(exc).__name__}: {exc}"
        raise APIError(400, msg, param="messages", code="invalid_value") from exc
    if tokens is not None:
        limits.check_prompt(tokens, params.max_tokens)


async def _unless_disconnected(
    request: Any, work: Awaitable[T], deadline: float | None = None
) -> T:
    """Await ``work``; cancel it if the client disconnects first or ``deadline`` passes.

    Raises:
        _ClientGone: The client disconnected.
        _TimedOut: The deadline (``time.monotonic()``) passed.

    """

    async def disconnected() -> None:
        # After the body has been read, the next ASGI message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    # Cancelling the submit cancels its future; the batcher then stops the generation.
    watcher_won = await _race(task, disconnected(), deadline)
    if watcher_won is None:
        return task.result()
    raise _ClientGone if watcher_won else _TimedOut


async def _race(
    work: asyncio.Future[Any], watch: Awaitable[Any], deadline: float | None
) -> bool | None:
    """Wait for ``work``, ``watch`` or ``deadline`` (``time.monotonic()``), whichever comes first.

    ``watch`` is always cancelled afterwards; ``work`` is cancelled unless it won.

    Returns:
        None when ``work`` finished first, True when ``watch`` did, False when the
        deadline passed.

    """
    watcher = asyncio.ensure_future(watch)
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    try:
        done, _ = await asyncio.wait(
            {work, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    except BaseException:
        work.cancel()
        raise
    finally:
        watcher.cancel()
    if work in done:
        return None
    work.cancel()
    return watcher in done


async def _first_event(events: AsyncGenerator[str, None]) -> str:
    """Run a stream up to its first event, so a full queue is still a 429, not a broken stream."""
    try:
        return await events.__anext__()
    except QueueFullError as exc:
        raise APIError(429, str(exc), type="rate_limit_error", code="queue_full") from exc
    except BatcherClosedError as exc:
        raise APIError(503, str(exc), type="server_error", code="shutting_down") from exc


async def _chain_events(first: str, rest: AsyncGenerator[str, None]) -> AsyncIterator[str]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        # Closing the generator releases the model lock even when the client left early.
        await rest.aclose()


@dataclass(frozen=True)
class _StreamInfo:
    """What a stream's chunks carry, and when the stream must end."""

    completion_id: str
    """The ``id`` of every chunk."""
    model_id: str
    """The ``model`` of every chunk."""
    include_usage: bool
    """Whether a last chunk carries the usage."""
    deadline: float | None
    """``time.monotonic()`` past which the stream ends with a timeout error."""
    request_timeout: float | None
    """The configured timeout, for the error message."""


class _Interrupted(Exception):
    """A stream was stopped by its timeout or by the server shutting down."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


async def _next_piece(
    stream: AsyncIterator[BaseMessage], info: _StreamInfo, aborted: asyncio.Event
) -> BaseMessage:
    """Return the stream's next chunk, unless the deadline passes or the server aborts first.

    Raises:
        StopAsyncIteration: The stream ended.
        _Interrupted: The deadline passed or the server is shutting down; the pending
            step was cancelled, which stops a local model's generation.

    """
    if aborted.is_set():
        raise _Interrupted(
            APIError(503, _SHUTDOWN_MESSAGE, type="server_error", code="shutting_down")
        )
    # A stream is pulled: once its step is cancelled and it is closed, a model that
    # streams from a worker thread runs at most the step in flight.
    step = asyncio.ensure_future(anext(stream))
    aborted_first = await _race(step, aborted.wait(), info.deadline)
    if aborted_first is None:
        return step.result()
    with contextlib.suppress(BaseException):
        await step
    if aborted_first:
        raise _Interrupted(
            APIError(503, _SHUTDOWN_MESSAGE, type="server_error", code="shutting_down")
        )
    raise _Interrupted(_timeout_error(info.request_timeout))


async def _stream_events(
    batcher: RequestBatcher,
    messages: list[BaseMessage],
    params: RequestParams,
    info: _StreamInfo,
) -> AsyncGenerator[str, None]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": info.completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": info.model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if info.include_usage:
            body["usage"] = None
        return body

    async with batcher.exclusive(params) as model:
        yield sse(chunk({"role": "assistant", "content": ""}))
        stop_filter = StopFilter(params.stop)
        usage: UsageMetadata | None = None
        last: BaseMessage = AIMessage(content="")
        stopped = False
        stream = model.astream(messages)
        try:
            while True:
                try:
                    piece = await _next_piece(stream, info, batcher.aborted)
                except StopAsyncIteration:
                    break
                last = piece
                piece_usage = getattr(piece, "usage_metadata", None)
                if piece_usage:
                    usage = piece_usage if usage is None else add_usage(usage, piece_usage)
                text, stopped = stop_filter.feed(message_text(piece))
                if text:
                    yield sse(chunk({"content": text}))
                if stopped:
                    break
        except _Interrupted as interrupted:
            yield sse(interrupted.error.body())
            yield sse("[DONE]")
            return
        except Exception as exc:
            logger.exception("Streaming generation failed")
            msg = scrub_text(f"Generation failed: {type(exc).__name__}: {exc}")
            yield sse(APIError(500, msg, type="server_error", code="generation_failed").body())
            yield sse("[DONE]")
            return
        finally:
            # Close the model's stream here, while holding the model, so that a local
            # model stops generating now (a client that left, a stop string, an error).
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        tail = "" if stopped else stop_filter.flush()
        if tail:
            yield sse(chunk({"content": tail}))
        yield sse(chunk({}, finish_reason(last, usage, _budget(model, params), stopped)))
        if info.include_usage:
            final = chunk({})
            final["choices"], final["usage"] = [], usage_body(usage)
            yield sse(final)
        yield sse("[DONE]")
