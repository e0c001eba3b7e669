"""``divconq serve``: an OpenAI-compatible HTTP server for the decomposer.

Many app processes (and non-Python clients) can then share one local decomposer,
and the chain reaches it with ``ChatOpenAI(base_url=...)`` exactly as it would
reach vLLM or a llama.cpp server. The app is built on FastAPI and runs under
uvicorn (the ``serve`` extra). It implements ``GET /v1/models`` and
``POST /v1/chat/completions`` (plain and ``stream: true`` server-sent events,
with token usage), answers malformed requests with a 4xx OpenAI-style error
body, refuses work beyond ``max_queue`` with 429, and drains on SIGTERM.

Non-streaming requests go through a :class:`~langchain_divconq.batcher.MicroBatcher`,
so concurrent requests share batched generate calls. Streaming requests run one
at a time through ``model.astream`` (token by token), taking turns with the batches.
"""

import argparse
import json
import logging
import signal
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langchain_divconq.batcher import (
    BatcherClosedError,
    GenerationParams,
    MicroBatcher,
    QueueFullError,
)
from langchain_divconq.prompts import message_text

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ChatCompletionRequest", "ChatMessageIn", "create_app", "register_cli"]

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = "default"
"""A model name the server always accepts besides its ``model_id`` (what specs.py sends)."""


# ------------------------------------------------------------------ request schema
class _TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str = Field(description="The text of this part.")


class ChatMessageIn(BaseModel):
    """One message of a chat completion request."""

    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="Who wrote the message; tool messages are not supported."
    )
    content: str | list[_TextPart] | None = Field(
        default=None, description="The text, or a list of text parts."
    )


class _StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool = Field(default=False, description="Send a last chunk with usage.")


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions`` (the subset of OpenAI's that is honoured)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(description="The served model id (see GET /v1/models) or 'default'.")
    messages: list[ChatMessageIn] = Field(min_length=1, description="The conversation.")
    temperature: float | None = Field(default=None, ge=0, le=2, description="0 is greedy.")
    max_tokens: int | None = Field(default=None, ge=1, description="New-token budget.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="New-token budget (OpenAI's newer name; wins)."
    )
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop strings.")
    stream: bool = Field(default=False, description="Answer with server-sent events.")
    stream_options: _StreamOptions | None = Field(default=None, description="Streaming options.")
    n: int = Field(default=1, ge=1, description="Only 1 is supported.")
    tools: list[Any] | None = Field(default=None, description="Not supported when non-empty.")
    response_format: dict[str, Any] | None = Field(
        default=None, description="Only {'type': 'text'} is supported."
    )


class _APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _parse_request(raw: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"The request body is not valid JSON ({exc}). Send a JSON object."
        raise _APIError(400, msg, code="invalid_json") from exc
    if not isinstance(data, dict):
        msg = f"The request body must be a JSON object, got {type(data).__name__}."
        raise _APIError(400, msg, code="invalid_json")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        msg = f"Invalid value for '{param}': {first['msg']} (got {first.get('input')!r:.80})."
        raise _APIError(400, msg, param=param, code="invalid_value") from exc
    unsupported = {
        "n": request.n > 1,
        "tools": bool(request.tools),
        "response_format": (request.response_format or {"type": "text"}).get("type") != "text",
    }
    for param, bad in unsupported.items():
        if bad:
            msg = f"'{param}' is not supported by this server (got {getattr(request, param)!r})."
            raise _APIError(400, msg, param=param, code="unsupported_parameter")
    if isinstance(request.stop, list) and len(request.stop) > 4:
        msg = f"'stop' takes at most 4 strings, got {len(request.stop)}."
        raise _APIError(400, msg, param="stop", code="invalid_value")
    return request


def _to_messages(request: ChatCompletionRequest) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for message in request.messages:
        content = message.content
        text = "".join(p.text for p in content) if isinstance(content, list) else content or ""
        if message.role in ("system", "developer"):
            out.append(SystemMessage(content=text))
        elif message.role == "user":
            out.append(HumanMessage(content=text))
        else:
            out.append(AIMessage(content=text))
    return out


def _params(request: ChatCompletionRequest) -> GenerationParams:
    stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
    return GenerationParams(
        temperature=request.temperature,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        stop=tuple(s for s in stop if s),
    )


# ----------------------------------------------------------------- response helpers
def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class _StopFilter:
    """Cut a token stream at the first stop string, holding back text that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.buffer += text
        out, hit = _cut_at_stop(self.buffer, self.stops)
        if hit:
            self.buffer = ""
            return out, True
        keep = len(self.buffer) - self.hold if self.hold else len(self.buffer)
        out, self.buffer = self.buffer[: max(keep, 0)], self.buffer[max(keep, 0) :]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


def _usage_body(usage: UsageMetadata | None) -> dict[str, int]:
    prompt = int(usage["input_tokens"]) if usage else 0
    completion = int(usage["output_tokens"]) if usage else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(
    message: BaseMessage, usage: UsageMetadata | None, budget: int | None, stopped: bool
) -> str:
    reported = (message.response_metadata or {}).get("finish_reason")
    if stopped:
        return "stop"
    if reported in ("stop", "length"):
        return str(reported)
    if budget is not None and usage and usage.get("output_tokens", 0) >= budget:
        return "length"
    return "stop"


def _budget(model: BaseChatModel, params: GenerationParams) -> int | None:
    budget = params.max_tokens or getattr(model, "max_tokens", None)
    return budget if isinstance(budget, int) else None


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


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
        the :class:`~langchain_divconq.batcher.MicroBatcher` while the app runs.

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
    batcher = MicroBatcher(
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

    @app.exception_handler(_APIError)
    async def api_error(request: Request, exc: _APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = _APIError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")
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
            raise _APIError(
                404, f"The model {model_name!r} does not exist.", code="model_not_found"
            )
        return model_card()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        body = _parse_request(await request.body())
        if body.model not in (model_id, DEFAULT_ALIAS):
            msg = f"The model {body.model!r} does not exist; this server serves {model_id!r}."
            raise _APIError(404, msg, param="model", code="model_not_found")
        messages, params = _to_messages(body), _params(body)
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
            reply = await batcher.submit(messages, params)
        except QueueFullError as exc:
            raise _APIError(429, str(exc), type="rate_limit_error", code="queue_full") from exc
        except BatcherClosedError as exc:
            raise _APIError(503, str(exc), type="server_error", code="shutting_down") from exc
        except Exception as exc:
            logger.exception("Generation failed")
            msg = f"Generation failed: {type(exc).__name__}: {exc}"
            raise _APIError(500, msg, type="server_error", code="generation_failed") from exc
        text, stopped = _cut_at_stop(message_text(reply), params.stop)
        usage = getattr(reply, "usage_metadata", None)
        finish = _finish_reason(reply, usage, _budget(batcher.variant(params), params), stopped)
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
                "usage": _usage_body(usage),
            }
        )

    return app


async def _first_event(events: AsyncGenerator[str, None]) -> str:
    """Run a stream up to its first event, so a full queue is still a 429, not a broken stream."""
    try:
        return await events.__anext__()
    except QueueFullError as exc:
        raise _APIError(429, str(exc), type="rate_limit_error", code="queue_full") from exc
    except BatcherClosedError as exc:
        raise _APIError(503, str(exc), type="server_error", code="shutting_down") from exc


async def _chain_events(first: str, rest: AsyncGenerator[str, None]) -> AsyncIterator[str]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        # Closing the generator releases the model lock even when the client left early.
        await rest.aclose()


async def _stream_events(
    batcher: MicroBatcher,
    messages: list[BaseMessage],
    params: GenerationParams,
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
        yield _sse(chunk({"role": "assistant", "content": ""}))
        stop_filter = _StopFilter(params.stop)
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
                    yield _sse(chunk({"content": text}))
                if stopped:
                    break
        except Exception as exc:
            logger.exception("Streaming generation failed")
            msg = f"Generation failed: {type(exc).__name__}: {exc}"
            yield _sse(_APIError(500, msg, type="server_error", code="generation_failed").body())
            yield _sse("[DONE]")
            return
        tail = "" if stopped else stop_filter.flush()
        if tail:
            yield _sse(chunk({"content": tail}))
        yield _sse(chunk({}, _finish_reason(last, usage, _budget(model, params), stopped)))
        if include_usage:
            final = chunk({})
            final["choices"], final["usage"] = [], _usage_body(usage)
            yield _sse(final)
        yield _sse("[DONE]")


# ---------------------------------------------------------------------------- CLI
def register_cli(subparsers: Any) -> None:
    """Add the ``divconq serve`` sub-command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve the decomposer over an OpenAI-compatible HTTP API",
        description="Serve the decomposer at /v1/chat/completions (OpenAI-compatible).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument(
        "--decomposer",
        default="default",
        help="'default' (embedded SmolLM2), a model folder or hub id",
    )
    parser.add_argument(
        "--adapter",
        default="default",
        help="'default' (the shipped distilled adapter), 'none', or a LoRA adapter folder",
    )
    parser.add_argument(
        "--model-id",
        default="divconq-decomposer",
        help="the model name clients send (default divconq-decomposer; 'default' also works)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda if available)")
    parser.add_argument(
        "--dtype", default=None, help="float32, bfloat16... (default: fp32 on CPU, bf16 on CUDA)"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="requests per generate call")
    parser.add_argument(
        "--max-queue", type=int, default=256, help="requests admitted at once; more get HTTP 429"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long to gather a batch (ms)"
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to let running requests finish after SIGTERM",
    )
    parser.set_defaults(handler=_serve)


def _load_model(args: argparse.Namespace) -> BaseChatModel:
    if args.decomposer.startswith("openai:"):
        from langchain_divconq.specs import build_decomposer

        return build_decomposer(args.decomposer, args.adapter)
    from langchain_divconq.local import load_decomposer

    base = None if args.decomposer in ("", "default") else args.decomposer
    adapter = None if args.adapter.lower() == "none" else args.adapter
    # One model.batch call from the server should be one generate call.
    return load_decomposer(
        base, adapter, device=args.device, dtype=args.dtype, batch_size=args.max_batch
    )


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        msg = "divconq serve needs the 'serve' extra: pip install 'langchain-divconq[serve]'."
        raise ImportError(msg) from exc
    model = _load_model(args)
    app = create_app(
        model,
        model_id=args.model_id,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
    )
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal with the handler
    # it found installed; a quiet handler here turns that into a normal exit status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0
