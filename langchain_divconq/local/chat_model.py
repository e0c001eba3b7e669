"""ChatLocalModel: a LangChain chat model over a transformers causal LM (+ optional LoRA).

The decomposer runs on every request, so this model is built for throughput on
one local device: every ``invoke``/``ainvoke`` goes through a small
micro-batcher, so concurrent calls (threads or asyncio tasks) and
``batch``/``abatch`` run as a few left-padded batched ``generate`` calls instead
of one call per prompt, while LangChain still records one run per prompt.
Generation itself lives in one private method, :meth:`ChatLocalModel._generate_texts`,
which a faster engine can replace.

torch, transformers and peft are imported lazily, so importing this module is
cheap; ``import langchain_divconq`` never imports it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import CancelledError
from typing import Any, ClassVar, Literal, Self

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from langchain_divconq.local.decoding import (
    BATCH_ROWS,
    BATCH_TICKET,
    CANCEL_EVENT,
    BatchTicket,
    Deadline,
    GenerationParams,
    GenerationResult,
    MicroBatcher,
    RequestFeed,
    StopCriteria,
    TokenQueue,
    cut_text,
    expired,
    held_back,
)
from langchain_divconq.local.streaming import repeat_safe_end

__all__ = ["ChatLocalModel"]

logger = logging.getLogger(__name__)

LOCAL_EXTRA = "pip install 'langchain-divconq[local]'"
_CALL_KWARGS = frozenset({"max_tokens", "temperature", "top_p", "max_lines", "no_repeat_lines"})
_IGNORED_KWARGS = frozenset({"stream"})  # LangChain's own streaming switch
_BATCHER_INIT = threading.Lock()


def require_local() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        msg = f"ChatLocalModel needs torch and transformers: {LOCAL_EXTRA}."
        raise ImportError(msg) from exc
    return torch


# --------------------------------------------------------------------------- messages
_ROLES: dict[type[BaseMessage], str] = {
    SystemMessage: "system",
    HumanMessage: "user",
    AIMessage: "assistant",
    ToolMessage: "tool",
}


def _content_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            msg = (
                f"ChatLocalModel takes text only; received a {block.get('type')!r} content "
                f"block in a {type(message).__name__}. Send text content."
            )
            raise ValueError(msg)
    return "".join(parts)


def _chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for message in messages:
        if isinstance(message, ChatMessage):
            role = message.role
        else:
            role = next((r for t, r in _ROLES.items() if isinstance(message, t)), "")
        if not role:
            msg = (
                f"ChatLocalModel cannot send a {type(message).__name__} to the model; "
                "use system, human, AI, tool or ChatMessage messages."
            )
            raise TypeError(msg)
        text = _content_text(message)
        _check_unicode(text, len(out), message)
        out.append({"role": role, "content": text})
    return out


def _check_unicode(text: str, index: int, message: BaseMessage) -> None:
    """Reject text the tokenizer cannot encode (a lone UTF-16 surrogate such as ``\\ud800``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = (
            f"ChatLocalModel cannot encode message {index} ({type(message).__name__}): it "
            f"contains a lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}, "
            "which is not valid Unicode text. Remove it or decode the input with "
            "errors='replace' before sending it."
        )
        raise ValueError(msg) from None


# --------------------------------------------------------------------------- the model
class ChatLocalModel(BaseChatModel):
    """A chat model running a transformers causal LM in this process.

    Greedy by default. ``batch``/``abatch`` and concurrent calls from several
    threads or tasks run as batched, left-padded ``generate`` calls; each
    prompt still gets its own LangChain run. Every message carries
    ``usage_metadata`` and ``response_metadata["model_name"/"finish_reason"]``.

    Example:
        >>> from langchain_divconq.local.chat_model import load_local_model
        >>> llm = load_local_model(max_tokens=32)  # the embedded SmolLM2
        >>> llm.invoke("What is 2 + 3?").usage_metadata["output_tokens"] > 0
        True

    """

    model: Any = Field(exclude=True)
    """The loaded causal LM (a transformers ``PreTrainedModel`` or a peft ``PeftModel``)."""
    tokenizer: Any = Field(exclude=True)
    """The model's tokenizer; its chat template formats the messages."""
    model_name: str = "local"
    """Name reported in ``response_metadata["model_name"]`` and in traces."""
    max_tokens: int = Field(default=256, gt=0)
    """Most new tokens generated per prompt."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 means greedy decoding (deterministic)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus-sampling mass; used only when ``temperature > 0``."""
    stop: list[str] | None = None
    """Default stop strings; the output is cut before the first one (not included)."""
    max_lines: int | None = Field(default=None, gt=0)
    """Stop once this many non-empty lines are complete (the decomposer needs only a few)."""
    no_repeat_lines: bool = False
    """Stop when a complete line repeats an earlier one, and drop the repeat (the decomposer
    turns it on: a repeated sub-question is never emitted, streamed or not)."""
    batch_size: int = Field(default=16, gt=0)
    """Most prompts per ``generate`` call."""
    device: str | None = None
    """Device to move the model to (``cpu``, ``cuda``...); None keeps it where it is."""
    streaming: bool = False
    """Whether ``invoke`` streams internally (LangChain's standard switch)."""
    fast_decoding: bool = False
    """Run greedy, non-streaming calls on :func:`~langchain_divconq.generation.generate_greedy`
    (speculative decoding, prompt-prefix reuse and, on CPU, oneDNN kernels; the same tokens
    as ``generate``); the loaders turn it on. On CPU it keeps an int8 and a reordered copy
    of the weights (about +0.8 GB for SmolLM2-135M)."""
    draft: Literal["auto", "int8", "lookup"] = "auto"
    """Where ``fast_decoding`` gets its drafts at batch 1: ``"int8"`` (an int8 copy of
    the model, CPU), ``"lookup"`` (n-grams of the prompt; no extra copy) or ``"auto"``."""
    backend: Literal["auto", "torch", "llamacpp"] = "torch"
    """Engine of greedy ``fast_decoding`` calls. ``"torch"`` (the default): our engine on the
    model's own weights (fp32 on CPU: exactly ``generate``'s tokens, so the plans you evaluate
    are the plans you get). ``"llamacpp"``: llama.cpp on a GGUF of the same weights
    (:mod:`~langchain_divconq.local.llamacpp_backend`; needs ``llama-cpp-python``, the
    ``llamacpp`` extra; q8_0 by default, whose greedy plans differed from the torch model's on
    22% of held-out decomposer prompts). ``"auto"``: llama.cpp when it is installed and the
    model is a Llama-style model on CPU loaded from a folder, else torch; an opt-in for speed
    over exactness. Sampling and streaming always run on torch.
    ``response_metadata["backend"]`` names the engine that ran."""
    gguf_path: str | None = None
    """The GGUF file of the ``llamacpp`` backend; None: written once from the model's folder."""
    gguf_type: Literal["f32", "f16", "q8_0", "q4_1"] = "q8_0"
    """Tensor type of the GGUF written when ``gguf_path`` is None."""
    timeout: float | None = Field(default=None, gt=0)
    """Most seconds one call may take, waiting for its batch included (LangChain's standard
    parameter). When it passes, generation stops at the next step and the text so far
    comes back with ``finish_reason="timeout"``; a call still queued raises ``TimeoutError``.
    In a batch, each row stops on its own deadline while the others go on.
    None: no limit."""
    max_retries: int = Field(default=0, ge=0)
    """Accepted for code that sets it on every chat model; unused: a model in this process
    has no network failures to retry."""
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    """Accepted for code that sets it on every chat model; unused: a local model needs no
    key. Kept as a ``SecretStr``, never sent, serialized or logged."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    _gather_s: ClassVar[float] = 1.0
    serves_concurrent_calls: ClassVar[bool] = True
    """Concurrent ``batch`` calls are safe and share one engine: a request that arrives while
    a greedy batch runs joins it (``divconq serve`` relies on this)."""
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _batcher: MicroBatcher | None = PrivateAttr(default=None)
    _batcher_for: int = PrivateAttr(default=0)
    _eos_list: list[int] = PrivateAttr(default_factory=list)
    _eos_ids: frozenset[int] = PrivateAttr(default=frozenset())
    _pad_id: int = PrivateAttr(default=0)
    _llamacpp: Any = PrivateAttr(default=None)
    _llamacpp_checked: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _check_objects(self) -> Self:
        if not callable(getattr(self.model, "generate", None)):
            msg = (
                f"model must be a loaded transformers causal LM with .generate(); received "
                f"{type(self.model).__name__}. Load one with AutoModelForCausalLM.from_pretrained "
                "or use load_local_model()."
            )
            raise TypeError(msg)
        if not callable(getattr(self.tokenizer, "apply_chat_template", None)):
            msg = (
                f"tokenizer must be a transformers tokenizer; received "
                f"{type(self.tokenizer).__name__}. Load it with AutoTokenizer.from_pretrained."
            )
            raise TypeError(msg)
        if not getattr(self.tokenizer, "chat_template", None):
            msg = (
                "The tokenizer has no chat template; set tokenizer.chat_template or use an "
                "instruct model's tokenizer."
            )
            raise ValueError(msg)
        if self.stop is not None and not all(isinstance(s, str) and s for s in self.stop):
            msg = f"stop must be a list of non-empty strings; received {self.stop!r}."
            raise ValueError(msg)
        if self.device is not None:
            self.model.to(self.device)
        eos: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            eos.update(value if isinstance(value, list) else [] if value is None else [value])
        if not eos:
            msg = "Neither the model's generation config nor the tokenizer names an EOS token."
            raise ValueError(msg)
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else min(eos)
        self._eos_list = sorted(eos)
        # Finished rows are filled with the pad token, so it also ends a completion.
        self._eos_ids = frozenset(eos | {self._pad_id})
        return self

    def _get_batcher(self) -> MicroBatcher:
        # Built per instance on first use: model_copy() shares private attributes,
        # and a copy's batcher must run the copy's model and batch_size.
        with _BATCHER_INIT:
            if self._batcher is None or self._batcher_for != id(self):
                self._batcher = MicroBatcher(
                    self._generate_texts,
                    lambda: self.batch_size,
                    gather_s=self._gather_s,
                    live=True,
                )
                self._batcher_for = id(self)
            return self._batcher

    # ------------------------------------------------------------------ LangChain hooks
    @property
    def _llm_type(self) -> str:
        return "divconq-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "max_lines": self.max_lines,
            "no_repeat_lines": self.no_repeat_lines,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "divconq"
        if stop is None and self.stop:
            params["ls_stop"] = self.stop
        return params

    def _params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> GenerationParams:
        unknown = set(kwargs) - _CALL_KWARGS - _IGNORED_KWARGS
        if unknown:
            msg = (
                f"ChatLocalModel got unsupported call arguments {sorted(unknown)}; "
                f"supported per call: stop, {', '.join(sorted(_CALL_KWARGS))}."
            )
            raise TypeError(msg)
        stops = self.stop if stop is None else stop
        if not all(isinstance(s, str) and s for s in stops or ()):
            msg = f"stop must be a list of non-empty strings; received {stops!r}."
            raise ValueError(msg)
        return GenerationParams(
            max_tokens=kwargs.get("max_tokens", self.max_tokens),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            stop=tuple(stops or ()),
            max_lines=kwargs.get("max_lines", self.max_lines),
            no_repeat_lines=bool(kwargs.get("no_repeat_lines", self.no_repeat_lines)),
        )

    def _message(self, result: GenerationResult) -> AIMessage:
        return AIMessage(
            content=result.text,
            usage_metadata=_usage(result),
            response_metadata={
                "model_name": self.model_name,
                "finish_reason": result.finish_reason,
                "backend": result.backend,
            },
        )

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[dict[str, str]], GenerationParams, BatchTicket | None]:
        """Validate one call; a call that fails here is withdrawn from its ``batch()`` ticket.

        So a bad prompt fails alone, at once, and the batcher does not wait for it.
        """
        ticket = BATCH_TICKET.get()
        try:
            return _chat_dicts(messages), self._params(stop, kwargs), ticket
        except BaseException:
            if ticket is not None:
                self._get_batcher().withdraw(ticket)
            raise

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # A caller that may abandon the call (divconq serve) sets CANCEL_EVENT around it.
        cancel = self._with_deadline(CANCEL_EVENT.get())
        future = self._get_batcher().submit(*self._request(messages, stop, kwargs), cancel=cancel)
        try:
            result = future.result()
        except CancelledError:
            self._raise_if_timed_out(cancel)
            raise
        return ChatResult(generations=[ChatGeneration(message=self._message(result))])

    def _with_deadline(self, cancel: threading.Event | None) -> threading.Event | None:
        """Return the call's cancel event, bounded by :attr:`timeout` when one is set."""
        return cancel if self.timeout is None else Deadline(self.timeout, cancel)

    def _raise_if_timed_out(self, cancel: threading.Event | None) -> None:
        if expired(cancel):
            msg = (
                f"ChatLocalModel call timed out after {self.timeout}s before its generation "
                "started (other calls held the model); raise timeout= or send fewer "
                "concurrent calls."
            )
            raise TimeoutError(msg) from None

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Await the batcher's future instead of parking an executor thread on it,
        # so an abatch of hundreds of prompts does not exhaust the default pool.
        cancel = self._with_deadline(None) or threading.Event()
        future = self._get_batcher().submit(*self._request(messages, stop, kwargs), cancel=cancel)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancelled():  # dropped before it ran: by its deadline, if it passed
                self._raise_if_timed_out(cancel)
            cancel.set()  # the task was cancelled: stop this prompt's row, not only the wait
            raise
        return ChatResult(generations=[ChatGeneration(message=self._message(result))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Generator[ChatGenerationChunk, None, None]:
        cancel = self._with_deadline(None) or threading.Event()
        yield from self._stream_until(messages, stop, kwargs, cancel)

    def _stream_until(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        cancel: threading.Event,
    ) -> Generator[ChatGenerationChunk, None, None]:
        """:meth:`_stream`, whose generation also stops once ``cancel`` is set."""
        params = self._params(stop, kwargs)
        prompt = _chat_dicts(messages)
        tokens = TokenQueue()
        outcome: list[GenerationResult | BaseException] = []

        def work() -> None:
            try:
                with self._lock:
                    ids = self._encode(prompt)
                    outcome.extend(self._generate_ids([ids], params, tokens, cancel))
            except BaseException as exc:
                outcome.append(exc)
            finally:
                tokens.end()

        thread = threading.Thread(target=work, name="divconq-local-stream", daemon=True)
        thread.start()
        emitted = ""
        try:
            ids: list[int] = []
            for token in tokens:
                if token in self._eos_ids:
                    continue
                ids.append(token)
                text = self._decode(ids)
                if text.endswith("\ufffd"):  # an incomplete multi-byte character
                    continue
                text, cut = cut_text(text, params)
                safe = len(text) if cut else len(text) - held_back(text, params.stop)
                if params.no_repeat_lines and not cut:
                    # Only a line that may still repeat an earlier one is held back.
                    safe = min(safe, repeat_safe_end(text))
                if safe > len(emitted):
                    yield ChatGenerationChunk(
                        message=AIMessageChunk(content=text[len(emitted) : safe])
                    )
                    emitted = text[:safe]
            thread.join()
        finally:
            cancel.set()
            thread.join()
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        if result.text.startswith(emitted) and len(result.text) > len(emitted):
            yield ChatGenerationChunk(message=AIMessageChunk(content=result.text[len(emitted) :]))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=_usage(result),
                response_metadata={
                    "model_name": self.model_name,
                    "finish_reason": result.finish_reason,
                    "backend": result.backend,
                },
                chunk_position="last",
            ),
            generation_info={"finish_reason": result.finish_reason},
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        cancel = self._with_deadline(None) or threading.Event()
        iterator = self._stream_until(messages, stop, kwargs, cancel)
        done = object()
        step: asyncio.Future[Any] | None = None
        try:
            while True:
                step = loop.run_in_executor(None, next, iterator, done)
                # shield: if this task is cancelled, the thread still runs next(), and a
                # generator cannot be closed while it runs; wait for it in finally.
                chunk = await asyncio.shield(step)
                if chunk is done:
                    break
                yield chunk
        finally:
            cancel.set()  # stops the generation at its next step, so next() returns soon
            if step is not None and not step.done():
                await asyncio.wait({step})
            await loop.run_in_executor(None, iterator.close)

    # ------------------------------------------------------------------ batching
    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Run many prompts as ``ceil(len(inputs) / batch_size)`` batched ``generate`` calls.

        Each prompt keeps its own config and its own LangChain run (callbacks,
        run names, tags); only the model work is shared. A ``max_concurrency``
        in the config is honoured, at the price of smaller batches.
        """
        configs = get_config_list(config, len(inputs))
        rows = BATCH_ROWS.get()
        if rows is not None and inputs:  # per-prompt cancel events and completion callbacks
            from langchain_divconq.local.batch_decoding import batch_with_rows

            return batch_with_rows(
                self, inputs, configs, rows, return_exceptions=return_exceptions, **kwargs
            )
        if len(inputs) < 2 or any(c.get("max_concurrency") for c in configs):
            return super().batch(inputs, configs, return_exceptions=return_exceptions, **kwargs)
        configs = [{**c, "max_concurrency": len(inputs)} for c in configs]
        ticket = BatchTicket(len(inputs))
        self._get_batcher().expect(ticket)
        token = BATCH_TICKET.set(ticket)
        try:
            return super().batch(inputs, configs, return_exceptions=return_exceptions, **kwargs)
        finally:
            BATCH_TICKET.reset(token)
            self._get_batcher().release(ticket)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Async :meth:`batch`: the same batched generation, awaited without blocking the loop."""
        configs = get_config_list(config, len(inputs))
        if len(inputs) < 2 or any(c.get("max_concurrency") for c in configs):
            return await super().abatch(
                inputs, configs, return_exceptions=return_exceptions, **kwargs
            )
        ticket = BatchTicket(len(inputs))
        self._get_batcher().expect(ticket)
        token = BATCH_TICKET.set(ticket)
        try:
            return await super().abatch(
                inputs, configs, return_exceptions=return_exceptions, **kwargs
            )
        finally:
            BATCH_TICKET.reset(token)
            self._get_batcher().release(ticket)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Count the prompt's tokens as the model sees them (chat template and generation prompt).

        ``tools`` is ignored: this model takes text only.
        """
        return len(self._encode(_chat_dicts(messages)))

    # ------------------------------------------------------------------ generation
    def _encode(self, prompt: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _decode(self, ids: Sequence[int]) -> str:
        # No space clean-up, so that decoding a prefix always yields a prefix of
        # the full text, which streaming relies on.
        return str(
            self.tokenizer.decode(
                list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        )

    def _generate_texts(
        self,
        prompts: Sequence[list[dict[str, str]]],
        params: GenerationParams,
        cancels: Sequence[threading.Event | None] | None = None,
        *,
        feed: RequestFeed | None = None,
    ) -> list[GenerationResult]:
        """Generate one completion per prompt: the single place where the model runs.

        Prompts are chat messages as ``{"role", "content"}`` dicts; results come back in
        input order. ``cancels[i]``, once set, stops prompt ``i`` at its next step (its
        caller left). With ``feed`` (from the micro-batcher), each request is answered the
        moment its row ends and queued requests join the running call; see
        :mod:`~langchain_divconq.local.batch_decoding`. A faster engine can replace this method.
        """
        from langchain_divconq.local.batch_decoding import generate_texts

        return generate_texts(self, prompts, params, cancels, feed)

    def _generate_ids(
        self,
        encoded: list[list[int]],
        params: GenerationParams,
        streamer: Any = None,
        cancel: threading.Event | None = None,
        row_cancels: Sequence[threading.Event | None] | None = None,
        on_row: Callable[[int, GenerationResult], None] | None = None,
    ) -> list[GenerationResult]:
        if self.fast_decoding and streamer is None and params.temperature <= 0:
            from langchain_divconq.local.batch_decoding import generate_fast

            return generate_fast(self, encoded, params, row_cancels, on_row=on_row)
        torch = require_local()
        from transformers import GenerationConfig, StoppingCriteriaList

        device = getattr(self.model, "device", None) or next(self.model.parameters()).device
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        sampling = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=sampling,
            pad_token_id=self._pad_id,
            eos_token_id=self._eos_list,
            **({"temperature": params.temperature, "top_p": params.top_p} if sampling else {}),
        )

        def row_done(i: int, row: list[int]) -> None:  # a row ended while others decode
            if on_row is not None:
                gone = expired(cancel) or expired(row_cancels[i] if row_cancels else None)
                stopped = i in criteria.stopped
                on_row(i, self._finish(row, len(encoded[i]), params, stopped, timed_out=gone))

        criteria = StopCriteria(
            self._decode, self._eos_ids, width, params, cancel, row_cancels or (), row_done
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([criteria]),
                streamer=streamer,
            )
        rows = out[:, width:].tolist()
        return [
            self._finish(
                row,
                len(ids),
                params,
                i in criteria.stopped,
                timed_out=i in criteria.stopped
                and (expired(cancel) or expired(row_cancels[i] if row_cancels else None)),
            )
            for i, (row, ids) in enumerate(zip(rows, encoded, strict=True))
        ]

    def _llamacpp_engine(self) -> Any:
        """Return the llama.cpp engine for greedy fast calls, or None for the torch engine.

        Decided once per instance (see :attr:`backend`); building it writes the
        model's GGUF once (seconds) and loads it into llama.cpp.
        """
        if self._llamacpp_checked:
            return self._llamacpp
        from langchain_divconq.local.backends import llamacpp_engine_for

        self._llamacpp = llamacpp_engine_for(
            self.model, self.backend, gguf_path=self.gguf_path, gguf_type=self.gguf_type
        )
        self._llamacpp_checked = True
        return self._llamacpp

    def _finish(
        self,
        row: list[int],
        n_in: int,
        params: GenerationParams,
        stopped: bool,
        *,
        timed_out: bool = False,
        backend: str = "torch",
    ) -> GenerationResult:
        real: list[int] = []
        eos = False
        for token in row:
            if token in self._eos_ids:
                eos = not stopped  # after a stop string, these are padding
                break
            real.append(token)
        text, cut = cut_text(self._decode(real), params, final=True)
        return GenerationResult(
            text=text,
            input_tokens=n_in,
            output_tokens=len(real) + int(eos),
            backend=backend,
            finish_reason="stop"
            if (eos or cut)
            else "timeout"
            if timed_out
            else "stop"
            if stopped
            else "length",
        )


def _usage(result: GenerationResult) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        total_tokens=result.input_tokens + result.output_tokens,
    )
