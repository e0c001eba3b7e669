"""The OpenAI chat-completions wire format, as served by ``divconq serve``.

Request validation (strict: a wrong type is a 400 naming the field, never a
silent coercion), the conversion to LangChain messages and generation settings,
OpenAI-style error bodies, and the pieces of a response: usage, finish reason,
stop-string cutting (also across streamed chunks) and server-sent events.
"""

import json
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langchain_divconq.serving.batcher import RequestParams

__all__ = [
    "APIError",
    "ChatCompletionRequest",
    "ChatMessageIn",
    "StopFilter",
    "cut_at_stop",
    "finish_reason",
    "generation_params",
    "parse_request",
    "sse",
    "to_messages",
    "usage_body",
]


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


class APIError(Exception):
    """An error answered with an HTTP status and OpenAI's ``{"error": {...}}`` body.

    Example:
        >>> APIError(404, "No such model.", code="model_not_found").body()["error"]["code"]
        'model_not_found'

    """

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
        """Return the JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def parse_request(raw: bytes) -> ChatCompletionRequest:
    """Parse and validate a request body.

    Raises:
        APIError: 400 naming the offending field (``param``) for invalid JSON, a wrong
            type or value, or a feature this server does not support.

    Example:
        >>> parse_request(b'{"model": "m", "messages": [{"role": "user", "content": "Hi"}]}').n
        1

    """
    try:
        data = json.loads(raw)
    except ValueError as exc:  # also a number of more than 4,300 digits, bad UTF-8
        msg = f"The request body is not valid JSON ({exc}). Send a JSON object."
        raise APIError(400, msg, code="invalid_json") from exc
    except RecursionError as exc:  # the decoder recurses once per nesting level
        msg = "The request body is nested too deep to parse. Send a flat chat request."
        raise APIError(400, msg, code="invalid_json") from exc
    if not isinstance(data, dict):
        msg = f"The request body must be a JSON object, got {type(data).__name__}."
        raise APIError(400, msg, code="invalid_json")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        msg = f"Invalid value for '{param}': {first['msg']} (got {first.get('input')!r:.80})."
        raise APIError(400, msg, param=param, code="invalid_value") from exc
    unsupported = {
        "n": request.n > 1,
        "tools": bool(request.tools),
        "response_format": (request.response_format or {"type": "text"}).get("type") != "text",
    }
    for param, bad in unsupported.items():
        if bad:
            msg = f"'{param}' is not supported by this server (got {getattr(request, param)!r})."
            raise APIError(400, msg, param=param, code="unsupported_parameter")
    if isinstance(request.stop, list) and len(request.stop) > 4:
        msg = f"'stop' takes at most 4 strings, got {len(request.stop)}."
        raise APIError(400, msg, param="stop", code="invalid_value")
    for index, message in enumerate(request.messages):
        content = message.content
        parts = [p.text for p in content] if isinstance(content, list) else [content or ""]
        for part in parts:
            _check_unicode(part, f"messages.{index}.content")
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    for stop in stops:
        _check_unicode(stop, "stop")
    return request


def _check_unicode(text: str, param: str) -> None:
    """Refuse a lone UTF-16 surrogate, which JSON can escape but no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = (
            f"'{param}' contains a lone surrogate U+{ord(text[exc.start]):04X} at character "
            f"{exc.start}, which is not valid Unicode text. Escape or remove it."
        )
        raise APIError(400, msg, param=param, code="invalid_value") from None


def to_messages(request: ChatCompletionRequest) -> list[BaseMessage]:
    """Convert the request's messages to LangChain messages (``developer`` is a system message)."""
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


def generation_params(request: ChatCompletionRequest) -> RequestParams:
    """Collect the request's generation settings (``max_completion_tokens`` wins)."""
    stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
    return RequestParams(
        temperature=request.temperature,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        stop=tuple(s for s in stop if s),
    )


# ----------------------------------------------------------------- response helpers
def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string; return the text and whether one was found.

    Example:
        >>> cut_at_stop("one. two. three", [". t"])
        ('one', True)

    """
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopFilter:
    """Cut a token stream at the first stop string, holding back text that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add a chunk; return the text that is safe to send and whether a stop string ended it."""
        self.buffer += text
        out, hit = cut_at_stop(self.buffer, self.stops)
        if hit:
            self.buffer = ""
            return out, True
        keep = len(self.buffer) - self.hold if self.hold else len(self.buffer)
        out, self.buffer = self.buffer[: max(keep, 0)], self.buffer[max(keep, 0) :]
        return out, False

    def flush(self) -> str:
        """Return the held-back text at the end of the stream."""
        out, self.buffer = self.buffer, ""
        return out


def usage_body(usage: UsageMetadata | None) -> dict[str, int]:
    """Turn LangChain ``usage_metadata`` into OpenAI's ``usage`` (zeros when there is none)."""
    prompt = int(usage["input_tokens"]) if usage else 0
    completion = int(usage["output_tokens"]) if usage else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_reason(
    message: BaseMessage, usage: UsageMetadata | None, budget: int | None, stopped: bool
) -> str:
    """Return ``stop`` or ``length``: the model's own report, else inferred from the budget."""
    reported = (message.response_metadata or {}).get("finish_reason")
    if stopped:
        return "stop"
    if reported in ("stop", "length"):
        return str(reported)
    if budget is not None and usage and usage.get("output_tokens", 0) >= budget:
        return "length"
    return "stop"


def sse(payload: dict[str, Any] | str) -> str:
    """Format one server-sent event (``data: ...`` and a blank line)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"
