"""The one scripted chat model of the tests, and small factories built on it.

:class:`ScriptedChatModel` needs no network and no weights. Its reply is computed
from the prompt, by a keyed dict (``replies``) or a callable (``script``); every
other behaviour a test needs is an option: usage reporting, failures, streaming,
a ``max_tokens`` cut, and records of the prompts and batch sizes it received.

The factories name the three scripts the suites use:

- :func:`echo_model` / :func:`make_chain` / :func:`question`: replies computed from
  the question id (``Q<n>``) in the prompt, so a trace test can check that every
  recorded node call belongs to its own question.
- :func:`served_model`: answers decomposer prompts with :data:`DECOMPOSITION` and
  every other prompt with :data:`SOLUTION`, as the server tests expect.
- :func:`slow_model`: answers only after a long wait, unless its call is cancelled.
- :func:`running_server`: serve an app with uvicorn on a free 127.0.0.1 port.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from langchain_divconq.local.decoding import CANCEL_EVENT
from langchain_divconq.prompts import message_text

__all__ = [
    "DECOMPOSITION",
    "SOLUTION",
    "ScriptedChatModel",
    "echo_model",
    "is_decomposer_prompt",
    "make_chain",
    "question",
    "running_server",
    "served_model",
    "slow_model",
]

Script = Callable[[list[BaseMessage]], str]
"""Computes a reply from the whole prompt."""

DECOMPOSITION = "How many clips did she sell in May?\nHow many clips did she sell in all?"
"""What :func:`served_model` answers to a decomposer prompt."""
SOLUTION = "She sold 24 in May.\nShe sold 48 + 24 = 72 in all.\nThe answer is: 72"
"""What :func:`served_model` answers to every other prompt."""

_QID = re.compile(r"\bQ(\d+)\b")


def _question_id(text: str) -> int:
    match = _QID.search(text)
    return int(match.group(1)) if match else -1


class ScriptedChatModel(BaseChatModel):
    """A deterministic chat model whose reply is computed from the prompt.

    The reply is ``replies[key]`` for the first key found in the last message;
    else ``script(messages)``; else ``default``. A reply ``"RAISE"`` raises
    ``RuntimeError("scripted failure for ...")`` and ``"RAISE: <text>"`` raises
    ``RuntimeError(<text>)``, so one dict can script answers and failures.

    Streaming is off unless ``disable_streaming=False`` (then ``stream`` yields the
    reply word by word, usage on the last chunk); while off, the model behaves
    exactly like one without streaming support.

    Example:
        >>> model = ScriptedChatModel(replies={"Q1": "The answer is: 2"})
        >>> model.invoke("Q1: 1 + 1?").content
        'The answer is: 2'

    """

    # A misspelt option must fail loudly, not leave the default script in place.
    model_config = ConfigDict(extra="forbid")

    replies: dict[str, str] = Field(default_factory=dict)
    """Reply by the first key found in the last message's text."""
    script: Script | None = None
    """Compute the reply from the prompt when no key of ``replies`` matches."""
    default: str = "I do not know."
    """The reply when neither ``replies`` nor ``script`` answers."""
    model_name: str = "scripted"
    """Reported as ``ls_model_name`` (the pricing tests look it up)."""
    usage: Literal["fixed", "words", "none"] = "fixed"
    """``fixed``: ``input_tokens``/``output_tokens`` per call, whatever the order a
    batch runs in; ``words``: the prompt's words and the reply's space-separated
    pieces; ``none``: no ``usage_metadata`` (the caller must estimate)."""
    input_tokens: int = 10
    """Prompt tokens reported per call under ``usage="fixed"``."""
    output_tokens: int = 5
    """Reply tokens reported per call under ``usage="fixed"``."""
    fail_ids: frozenset[int] = frozenset()
    """Question ids (``Q<n>`` in the last message) whose calls raise ``RuntimeError``."""
    fail_first: int = 0
    """Raise ``ConnectionError`` on this many first calls (to test retries)."""
    max_tokens: int | None = None
    """Cut replies to this many space-separated words (``finish_reason`` ``length``)."""
    temperature: float = 0.0
    """Recorded only (the server sets it per request)."""
    batch_delay: float = 0.0
    """Seconds each ``batch`` call sleeps (to let a server queue requests)."""
    delay: float = 0.0
    """Seconds each call takes to answer (a stream spreads them over its words). The wait
    ends early once the call's ``CANCEL_EVENT`` is set, as a served local model stops when
    its client is gone; a cancelled stream ends there."""
    calls: int = 0
    """Calls made so far, failed ones included."""
    received: list[list[BaseMessage]] = Field(default_factory=list)
    """Every prompt received. ``model_copy`` shares the list, so a test sees the
    prompts of per-request copies too."""
    batch_sizes: list[int] = Field(default_factory=list)
    """The size of each ``batch`` call (shared by copies, like ``received``)."""
    disable_streaming: bool | Literal["tool_calling"] = True
    """Off by default: most tests want one reply per call; see the class doc."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _script_reply(self, messages: list[BaseMessage]) -> str:
        prompt = message_text(messages[-1])
        text = next((r for k, r in self.replies.items() if k in prompt), None)
        if text is None:
            text = self.script(messages) if self.script is not None else self.default
        if text == "RAISE":
            msg = f"scripted failure for {prompt[:40]!r}"
            raise RuntimeError(msg)
        if text.startswith("RAISE: "):
            raise RuntimeError(text.removeprefix("RAISE: "))
        return text

    def _reply(self, messages: list[BaseMessage]) -> tuple[str, str]:
        """Return ``(text, finish_reason)`` for one call, or raise its scripted failure."""
        self.received.append(list(messages))
        self.calls += 1
        if self.calls <= self.fail_first:
            msg = "transient failure"
            raise ConnectionError(msg)
        qid = _question_id(message_text(messages[-1]))
        if qid in self.fail_ids:
            msg = f"model down for Q{qid}"
            raise RuntimeError(msg)
        words = self._script_reply(messages).split(" ")
        if self.max_tokens is not None and len(words) > self.max_tokens:
            return " ".join(words[: self.max_tokens]), "length"
        return " ".join(words), "stop"

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return False if the call was cancelled meanwhile."""
        cancel = CANCEL_EVENT.get()
        if cancel is None:
            time.sleep(seconds)
            return True
        return not cancel.wait(seconds)

    def _usage(self, messages: list[BaseMessage], text: str) -> UsageMetadata | None:
        if self.usage == "none":
            return None
        if self.usage == "fixed":
            prompt, out = self.input_tokens, self.output_tokens
        else:
            prompt = sum(len(message_text(m).split()) for m in messages)
            out = len(text.split(" "))
        return UsageMetadata(input_tokens=prompt, output_tokens=out, total_tokens=prompt + out)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text, finish = self._reply(messages)
        if self.delay:
            self._wait(self.delay)
        message = AIMessage(
            content=text,
            usage_metadata=self._usage(messages, text),
            response_metadata={"finish_reason": finish},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        text, finish = self._reply(messages)
        words = text.split(" ")
        for i, word in enumerate(words):
            if self.delay and not self._wait(self.delay / len(words)):
                return
            last = i == len(words) - 1
            chunk = AIMessageChunk(
                content=word if last else word + " ",
                usage_metadata=self._usage(messages, text) if last else None,
                response_metadata={"finish_reason": finish} if last else {},
            )
            if run_manager:
                run_manager.on_llm_new_token(str(chunk.content), chunk=None)
            yield ChatGenerationChunk(message=chunk)

    def batch(self, inputs: list[Any], config: Any = None, **kwargs: Any) -> list[Any]:
        """Record the batch size and sleep ``batch_delay``, then answer each input."""
        self.batch_sizes.append(len(inputs))
        if self.batch_delay:
            time.sleep(self.batch_delay)
        return super().batch(inputs, config, **kwargs)


# ---------------------------------------------------------------- echo (traces)
def question(i: int) -> str:
    """The question text of item ``i`` (its id ``Q<i>`` drives :func:`echo_model`)."""
    return f"Q{i}: Tom has {i} bags with 2 apples each. How many apples?"


def _echo_decomposition(messages: list[BaseMessage]) -> str:
    qid = _question_id(message_text(messages[-1]))
    return f"1. How many bags in Q{qid}?\n2. How many apples per bag in Q{qid}?"


def _echo_solution(messages: list[BaseMessage]) -> str:
    text = message_text(messages[-1])
    qid = _question_id(text)
    subs = text.count("?") - 1
    return f"Q{qid} has {qid} bags of 2 apples ({subs} hints).\nThe answer is: {2 * qid}"


def echo_model(
    role: str = "solver", *, cls: type[ScriptedChatModel] = ScriptedChatModel, **options: Any
) -> ScriptedChatModel:
    """A streaming model that decomposes or solves by echoing the question id.

    Args:
        role: ``decomposer`` or ``solver``.
        cls: The class to build (a test's subclass that adds a field).
        **options: :class:`ScriptedChatModel` fields (``fail_ids=...``, ``usage="none"``).

    """
    script = _echo_decomposition if role == "decomposer" else _echo_solution
    fields: dict[str, Any] = {
        "model_name": "echo",
        "usage": "words",
        "disable_streaming": False,
        "script": script,
        **options,
    }
    return cls(**fields)


def make_chain(**options: Any) -> Any:
    """A DivConqChain over two echo models; options go to the solver (``fail_ids=...``).

    ``decomposer={...}`` passes options to the decomposer instead.
    """
    from langchain_divconq import create_divconq_chain

    decomposer_options = options.pop("decomposer", {})
    return create_divconq_chain(
        echo_model("decomposer", model_name="echo-dec", **decomposer_options),
        echo_model("solver", model_name="echo-sol", **options),
    )


# ---------------------------------------------------------------- served (server)
def is_decomposer_prompt(messages: list[BaseMessage]) -> bool:
    """Tell the chain's decomposer prompt (and the tests' stand-in) from a solver prompt."""
    return bool(messages) and "one per line" in message_text(messages[0]).lower()


def _decomposition_or_solution(
    decomposition: str, solution: str, messages: list[BaseMessage]
) -> str:
    return decomposition if is_decomposer_prompt(messages) else solution


def served_model(
    decomposition: str = DECOMPOSITION, solution: str = SOLUTION, **options: Any
) -> ScriptedChatModel:
    """A model for the server tests: word-count usage, 64-word budget, prompts recorded.

    Args:
        decomposition: The reply to decomposer prompts.
        solution: The reply to every other prompt.
        **options: :class:`ScriptedChatModel` fields (``batch_delay=...``, ``replies=...``).

    """
    fields: dict[str, Any] = {
        "script": partial(_decomposition_or_solution, decomposition, solution),
        "usage": "words",
        "max_tokens": 64,
        **options,
    }
    return ScriptedChatModel(**fields)


def slow_model(seconds: float = 60.0) -> ScriptedChatModel:
    """A streaming model whose answer takes ``seconds`` (a stream: a word every 50 ms).

    It stops early when its call is cancelled (``CANCEL_EVENT``), as a served local
    model does, so a test can tell a server that cancels from one that waits.
    """
    words = max(1, round(seconds / 0.05))
    return ScriptedChatModel(
        default=" ".join(["word"] * words), delay=seconds, disable_streaming=False
    )


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yield the /v1 URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            msg = "uvicorn did not start"
            raise RuntimeError(msg)
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
