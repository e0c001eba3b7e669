"""``divconq serve``: an OpenAI-compatible HTTP server for the decomposer.

Many app processes (and non-Python clients) can then share one local decomposer,
and the chain reaches it with ``ChatOpenAI(base_url=...)`` exactly as it would
reach vLLM or a llama.cpp server. The app is built on FastAPI and runs under
uvicorn (the ``serve`` extra). It implements ``GET /v1/models`` and
``POST /v1/chat/completions`` (plain and ``stream: true`` server-sent events,
with token usage), answers malformed requests with a 4xx OpenAI-style error
body, refuses work beyond ``max_queue`` with 429, and drains on SIGTERM.

Non-streaming requests go through a :class:`~langchain_divconq.batcher.RequestBatcher`,
so concurrent requests share batched generate calls. Streaming requests run one
at a time through ``model.astream`` (token by token), taking turns with the batches.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage

from langchain_divconq.prompts import message_text
from langchain_divconq.serving.batcher import (
    BatcherClosedError,
    QueueFullError,
    RequestBatcher,
    RequestParams,
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

T = TypeVar("T")

DEFAULT_ALIAS = "default"
"""A model name the server always accepts besides its ``model_id`` (what specs.py sends)."""


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
) -> "FastAPI":
    """Build the OpenAI-compatible FastAPI app serving ``model``.

    Args:
        model: The chat model to serve; its ``batch`` should batch generation
            (as :class:`~langchain_divconq.local.ChatLocalModel` does).
        model_id: The name listed by ``/v1/models``; requests must name it (or 'default').
        max_queue: The most requests admitted at once; more get HTTP 429.
        max_batch: The most requests answered by one ``model.batch`` call.
        max_wait_ms: How long the batcher waits for more requests after the first.

    Returns:
        The FastAPI app; run it with ``uvicorn.run(app)``. ``app.state.batcher`` holds
        the :class:`~langchain_divconq.batcher.RequestBatcher` while the app runs.

    Example:
        >>> from langchain_core.language_models import FakeListChatModel
        >>> app = create_app(FakeListChatModel(responses=["Hi"]), model_id="fake")
        >>> sorted(r.path for r in app.routes if r.path.startswith("/v1"))
        ['/v1/chat/completions', '/v1/models', '/v1/models/{model_name}']

    """
    try:
        from contextlib import asynccontextmanager

        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as exc:
        msg = "divconq serve needs the 'serve' extra: pip install 'langchain-divconq[serve]'."
        raise ImportError(msg) from exc
    created = int(time.time())
    batcher = RequestBatcher(
        model, max_batch=max_batch, max_queue=max_queue, max_wait_s=max_wait_ms / 1000
    )

    @asynccontextmanager
    async def lifespan(app: "FastAPI") -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close()

    app = FastAPI(title="langchain-divconq decomposer server", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")
        return JSONResponse(error.body(), status_code=exc.status_code)

    def model_card() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "divconq"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = batcher.stats
        return {
            "status": "ok",
            "pending": batcher.pending,
            "requests": stats.requests,
            "batches": stats.batches,
            "largest_batch": stats.largest_batch,
            "rejected": stats.rejected,
            "streams": stats.streams,
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_name}")
    async def get_model(model_name: str) -> dict[str, Any]:
        if model_name not in (model_id, DEFAULT_ALIAS):
            raise APIError(404, f"The model {model_name!r} does not exist.", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        body = parse_request(await request.body())
        if body.model not in (model_id, DEFAULT_ALIAS):
            msg = f"The model {body.model!r} does not exist; this server serves {model_id!r}."
            raise APIError(404, msg, param="model", code="model_not_found")
        messages, params = to_messages(body), generation_params(body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream_events(
                batcher, messages, params, completion_id, model_id, include_usage
            )
            first = await _first_event(events)
            return StreamingResponse(
                _chain_events(first, events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            reply = await _unless_disconnected(request, batcher.submit(messages, params))
        except _ClientGone:
            # Nobody reads the answer; the batcher skips the request if it has not started.
            return JSONResponse({}, status_code=499)
        except QueueFullError as exc:
            raise APIError(429, str(exc), type="rate_limit_error", code="queue_full") from exc
        except BatcherClosedError as exc:
            raise APIError(503, str(exc), type="server_error", code="shutting_down") from exc
        except Exception as exc:
            logger.exception("Generation failed")
            msg = f"Generation failed: {type(exc).__name__}: {exc}"
            raise APIError(500, msg, type="server_error", code="generation_failed") from exc
        text, stopped = cut_at_stop(message_text(reply), params.stop)
        usage = getattr(reply, "usage_metadata", None)
        finish = finish_reason(reply, usage, _budget(batcher.variant(params), params), stopped)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_id,
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


class _ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def _unless_disconnected(request: Any, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first."""

    async def disconnected() -> None:
        # After the body has been read, the next ASGI message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task not in done:
        task.cancel()
        raise _ClientGone
    return task.result()


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


async def _stream_events(
    batcher: RequestBatcher,
    messages: list[BaseMessage],
    params: RequestParams,
    completion_id: str,
    model_id: str,
    include_usage: bool,
) -> AsyncGenerator[str, None]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if include_usage:
            body["usage"] = None
        return body

    async with batcher.exclusive(params) as model:
        yield sse(chunk({"role": "assistant", "content": ""}))
        stop_filter = StopFilter(params.stop)
        usage: UsageMetadata | None = None
        last: BaseMessage = AIMessage(content="")
        stopped = False
        try:
            async for piece in model.astream(messages):
                last = piece
                piece_usage = getattr(piece, "usage_metadata", None)
                if piece_usage:
                    usage = piece_usage if usage is None else add_usage(usage, piece_usage)
                text, stopped = stop_filter.feed(message_text(piece))
                if text:
                    yield sse(chunk({"content": text}))
                if stopped:
                    break
        except Exception as exc:
            logger.exception("Streaming generation failed")
            msg = f"Generation failed: {type(exc).__name__}: {exc}"
            yield sse(APIError(500, msg, type="server_error", code="generation_failed").body())
            yield sse("[DONE]")
            return
        tail = "" if stopped else stop_filter.flush()
        if tail:
            yield sse(chunk({"content": tail}))
        yield sse(chunk({}, finish_reason(last, usage, _budget(model, params), stopped)))
        if include_usage:
            final = chunk({})
            final["choices"], final["usage"] = [], usage_body(usage)
            yield sse(final)
        yield sse("[DONE]")
