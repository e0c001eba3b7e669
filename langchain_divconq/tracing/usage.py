"""Count tokens and time per chain node from LangChain callbacks.

:class:`NodeUsageCollector` is a callback handler attached to one chain run (one
question). It groups every model call by the node metadata that
:class:`~langchain_divconq.chain.DivConqChain` sets (``divconq_node``:
``decomposer`` or ``solver``) and sums the ``usage_metadata`` the model reports.
A model that reports no usage is counted with a token counter (the model's own
tokenizer when available, else :func:`estimate_tokens`) and the counts are
flagged ``estimated``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from pydantic import BaseModel, Field

from langchain_divconq.prompts import NODE_METADATA_KEY, message_text
from langchain_divconq.tracing.trace import TokenUsage

__all__ = [
    "NodeStats",
    "NodeUsageCollector",
    "TokenCounter",
    "estimate_tokens",
    "reported_usage",
]

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text."""

DEFAULT_NODE = "solver"
"""Node name for model calls outside a DivConqChain node (e.g. a bare chat model)."""


def estimate_tokens(text: str) -> int:
    """Estimate a token count as words x 4/3, the paper's rule of thumb.

    Example:
        >>> estimate_tokens("one two three")
        4

    """
    return math.ceil(len(text.split()) * 4 / 3)


class NodeStats(BaseModel):
    """Token counts and time of every call one node made (for one question or summed)."""

    calls: int = Field(default=0, description="Model calls made by the node.")
    input_tokens: int = Field(default=0, description="Prompt tokens, summed over calls.")
    output_tokens: int = Field(default=0, description="Generated tokens, summed over calls.")
    estimated: bool = Field(
        default=False, description="True when some counts came from a tokenizer, not the model."
    )
    latency_s: float = Field(default=0.0, description="Wall time of the calls, summed (seconds).")
    errors: int = Field(default=0, description="Calls that raised.")
    models: list[str] = Field(default_factory=list, description="Model names seen.")
    providers: list[str] = Field(default_factory=list, description="Providers seen (ls_provider).")
    cost_usd: float | None = Field(
        default=None, description="Dollar cost of the counts; None if some model was unpriced."
    )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def add(self, other: NodeStats) -> NodeStats:
        """Return the sum of two stats (cost is None when either side is unpriced)."""
        return NodeStats(
            calls=self.calls + other.calls,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            estimated=self.estimated or other.estimated,
            latency_s=self.latency_s + other.latency_s,
            errors=self.errors + other.errors,
            models=sorted({*self.models, *other.models}),
            providers=sorted({*self.providers, *other.providers}),
            cost_usd=None
            if self.cost_usd is None or other.cost_usd is None
            else self.cost_usd + other.cost_usd,
        )


class _Call:
    __slots__ = ("input_text", "model", "node", "provider", "start")

    def __init__(self, node: str, model: str | None, provider: str | None, text: str) -> None:
        self.node, self.model, self.provider, self.input_text = node, model, provider, text
        self.start = time.perf_counter()


def reported_usage(response: LLMResult) -> TokenUsage | None:
    """Token usage a model reported for one call, or None when it reported none.

    Reads ``usage_metadata`` of the returned messages first, then the OpenAI-style
    ``llm_output["token_usage"]`` that older integrations fill in.
    """
    found = False
    input_tokens = output_tokens = total = 0
    for generations in response.generations:
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                usage = getattr(generation.message, "usage_metadata", None)
                if usage:
                    found = True
                    input_tokens += int(usage.get("input_tokens", 0))
                    output_tokens += int(usage.get("output_tokens", 0))
                    total += int(usage.get("total_tokens", 0))
    if found:
        return TokenUsage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=total or input_tokens + output_tokens,
        )
    token_usage = (response.llm_output or {}).get("token_usage") or {}
    if token_usage.get("prompt_tokens") is not None:
        prompt = int(token_usage["prompt_tokens"])
        completion = int(token_usage.get("completion_tokens") or 0)
        return TokenUsage(
            input_tokens=prompt,
            output_tokens=completion,
            total_tokens=int(token_usage.get("total_tokens") or prompt + completion),
        )
    return None


def _model_from(response: LLMResult) -> str | None:
    name = (response.llm_output or {}).get("model_name")
    if name:
        return str(name)
    for generations in response.generations:
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                meta = generation.message.response_metadata or {}
                if meta.get("model_name"):
                    return str(meta["model_name"])
    return None


class NodeUsageCollector(BaseCallbackHandler):
    """Collect tokens, time and model names per node for the runs it sees.

    Attach one collector per question (``config={"callbacks": [collector]}``);
    ``nodes`` then holds a :class:`NodeStats` per node and ``latency_s`` the wall
    time of the root run.

    Example:
        >>> collector = NodeUsageCollector()
        >>> out = chain.invoke("2 + 2?", {"callbacks": [collector]})  # doctest: +SKIP
        >>> collector.nodes["solver"].output_tokens  # doctest: +SKIP
        12

    """

    raise_error = False
    run_inline = True

    def __init__(self, counters: Mapping[str, TokenCounter] | TokenCounter | None = None) -> None:
        self._counters = counters
        self._lock = threading.Lock()
        self._calls: dict[UUID, _Call] = {}
        self._root: UUID | None = None
        self._root_start: float | None = None
        self.nodes: dict[str, NodeStats] = {}
        self.latency_s: float | None = None

    def _counter(self, node: str) -> TokenCounter:
        if callable(self._counters):
            return self._counters
        if self._counters and node in self._counters:
            return self._counters[node]
        return estimate_tokens

    # -------------------------------------------------------------- chain runs
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember when the root run started."""
        if parent_run_id is None:
            with self._lock:
                self._root, self._root_start = run_id, time.perf_counter()

    def _end_root(self, run_id: UUID) -> None:
        with self._lock:
            if run_id == self._root and self._root_start is not None:
                self.latency_s = time.perf_counter() - self._root_start

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Record the root run's wall time."""
        self._end_root(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Record the root run's wall time, even when it failed."""
        self._end_root(run_id)

    # -------------------------------------------------------------- model runs
    def _start(self, run_id: UUID, metadata: dict[str, Any] | None, text: str) -> None:
        metadata = metadata or {}
        node = metadata.get(NODE_METADATA_KEY)
        if node in (None, "chain"):
            node = DEFAULT_NODE
        call = _Call(str(node), metadata.get("ls_model_name"), metadata.get("ls_provider"), text)
        with self._lock:
            self._calls[run_id] = call

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Start timing a chat model call and keep its prompt text for estimates."""
        text = "\n".join(message_text(m) for batch in messages for m in batch)
        self._start(run_id, metadata, text)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Start timing a text-completion model call."""
        self._start(run_id, metadata, "\n".join(prompts))

    def _finish(self, run_id: UUID, stats: NodeStats) -> None:
        with self._lock:
            call = self._calls.pop(run_id, None)
            if call is None:
                return
            stats.calls = 1
            stats.latency_s = time.perf_counter() - call.start
            if call.model and not stats.models:
                stats.models = [call.model]
            if call.provider:
                stats.providers = [call.provider]
            previous = self.nodes.get(call.node, NodeStats())
            self.nodes[call.node] = previous.add(stats)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Add the call's token usage (reported, or estimated) to its node."""
        with self._lock:
            call = self._calls.get(run_id)
        if call is None:
            return
        reported = reported_usage(response)
        estimated = reported is None
        if reported is None:
            counter = self._counter(call.node)
            output = "".join(g.text for gens in response.generations for g in gens)
            usage = (counter(call.input_text), counter(output))
        else:
            usage = (reported.input_tokens, reported.output_tokens)
        model = call.model or _model_from(response)
        self._finish(
            run_id,
            NodeStats(
                input_tokens=usage[0],
                output_tokens=usage[1],
                estimated=estimated,
                models=[model] if model else [],
            ),
        )

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Count the failed call on its node."""
        self._finish(run_id, NodeStats(errors=1))
