"""Record every :class:`~langchain_divconq.chain.DivConqChain` run as a :class:`Trace`.

:class:`TraceRecorder` is a LangChain callback handler. It finds the chain's
root run by the ``divconq_node`` metadata the chain sets (``chain`` on the root,
``decomposer``/``solver`` on the node runs), so it works when the chain is
nested in an agent or another chain. Every run under a node, however deep (a
model inside a custom solver runnable, a retry), is attributed to the nearest
node ancestor through ``parent_run_id``. When the root run ends (or fails), the
trace is written to the store.

The handler runs inline (``run_inline = True``): in async runs its events are
handled in order on the event loop, so one sync handler serves ``invoke``,
``batch``, ``ainvoke``, ``abatch``, ``stream`` and ``astream`` alike, and a lock
makes it safe under ``batch(max_concurrency=...)`` and several threads.

Secrets never reach a trace: invocation parameters and metadata are scrubbed of
API keys, tokens, passwords and auth headers (by key name and by value shape),
every text of the trace (errors from upstream APIs, prompts, outputs) is scrubbed
of credentials (:func:`scrub_text`), and the serialized model (which can hold
keys in its ``repr``) is not stored. The scrubber lives in
:mod:`langchain_divconq.secrets` (shared with evaluation records, the server's
error bodies and the CLI's logs); its names stay importable from here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, LLMResult
from pydantic import BaseModel

from langchain_divconq.prompts import (
    NODE_METADATA_KEY,
    cap_decomposition,
    extract_answer,
    message_text,
)
from langchain_divconq.secrets import REDACTED, scrub_secrets, scrub_text
from langchain_divconq.tracing.scoring import Checker, score_trace
from langchain_divconq.tracing.store import MemoryTraceStore, TraceStore, open_store
from langchain_divconq.tracing.trace import NodeCall, TokenUsage, Trace
from langchain_divconq.tracing.usage import estimate_tokens, reported_usage

__all__ = ["REDACTED", "TraceRecorder", "scrub_secrets", "scrub_text", "scrub_trace"]

logger = logging.getLogger(__name__)

_NODES = ("decomposer", "solver")
_ROOT = "chain"


def _scrub_data(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {key: _scrub_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub_data(item) for item in value]
    return value


def _call_usage(response: LLMResult, messages: list[dict[str, Any]], text: str) -> TokenUsage:
    """Return the usage a call reported, else an estimate from its messages and text (marked)."""
    usage = reported_usage(response)
    if usage is not None:
        return usage
    # No reported usage: estimate, and say so, so cost reports stay honest.
    prompt = "\n".join(_content_text(m.get("content")) for m in messages)
    inputs, outputs = estimate_tokens(prompt), estimate_tokens(text)
    return TokenUsage(
        input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs, estimated=True
    )


def scrub_trace(trace: Trace) -> Trace:
    """Return a copy of ``trace`` with :func:`scrub_text` applied to every text in it.

    Question, context, prompts, model outputs, sub-questions, solution and
    errors alike: a key pasted into a question or echoed in an upstream error
    never reaches a store.

    Example:
        >>> scrub_trace(Trace(question="Use sk-abcdefghijklmnop?")).question
        'Use [REDACTED]?'

    """
    return Trace.model_validate(_scrub_data(trace.model_dump(mode="json")))


@dataclass
class _Node:
    """What one node run has gathered so far."""

    run_id: UUID
    start: float = field(default_factory=time.perf_counter)
    model_name: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    llm_output: str | None = None
    output: str | None = None
    usage: TokenUsage | None = None
    latency_s: float | None = None
    error: str | None = None

    def add_usage(self, usage: TokenUsage) -> None:
        if self.usage is None:
            self.usage = usage
            return
        self.usage = TokenUsage(
            input_tokens=self.usage.input_tokens + usage.input_tokens,
            output_tokens=self.usage.output_tokens + usage.output_tokens,
            total_tokens=self.usage.total_tokens + usage.total_tokens,
            estimated=self.usage.estimated or usage.estimated,
        )

    def to_call(self) -> NodeCall:
        return NodeCall(
            model_name=self.model_name,
            messages=self.messages,
            output=self.output if self.output is not None else self.llm_output,
            usage=self.usage,
            latency_s=self.latency_s,
            error=self.error,
            run_id=str(self.run_id),
            params=self.params,
        )


@dataclass
class _Root:
    """One chain run being recorded."""

    run_id: UUID
    inputs: Any
    tags: list[str]
    metadata: dict[str, Any]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    nodes: dict[str, _Node] = field(default_factory=dict)
    runs: list[UUID] = field(default_factory=list)


@dataclass
class _Run:
    """Where a run belongs: its chain root, and its node (None for the root itself)."""

    root: UUID
    node: str | None


@dataclass
class _LLMCall:
    """A model call under a node, until it ends."""

    node: _Node
    messages: list[dict[str, Any]]
    model_name: str | None


def _content_text(content: Any) -> str:
    try:
        return message_text(content) if content is not None else ""
    except TypeError:
        return ""


def _error_text(error: BaseException) -> str:
    # Upstream errors quote headers and URLs (``Bearer sk-...``): never store them.
    return scrub_text(f"{type(error).__name__}: {error}")


def _output_text(outputs: Any) -> str | None:
    if isinstance(outputs, Mapping) and set(outputs) == {"output"}:
        outputs = outputs["output"]
    try:
        return message_text(outputs)
    except TypeError:
        return None


def _split_input(inputs: Any) -> tuple[str, str | None]:
    if isinstance(inputs, Mapping):
        if "question" not in inputs and set(inputs) == {"input"}:
            return _split_input(inputs["input"])
        question = inputs.get("question")
        context = inputs.get("context")
        return (
            question if isinstance(question, str) else "",
            context if isinstance(context, str) and context else None,
        )
    if isinstance(inputs, str):
        return inputs, None
    if isinstance(inputs, BaseModel) and hasattr(inputs, "question"):
        return _split_input(inputs.model_dump())
    return "", None


def _model_name(
    metadata: Mapping[str, Any] | None, invocation_params: Mapping[str, Any] | None
) -> str | None:
    for source, key in (
        (metadata, "ls_model_name"),
        (invocation_params, "model"),
        (invocation_params, "model_name"),
        (invocation_params, "model_id"),
    ):
        value = (source or {}).get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _response_model(response: LLMResult) -> str | None:
    name = (response.llm_output or {}).get("model_name")
    if isinstance(name, str) and name:
        return name
    for generations in response.generations:
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                meta = generation.message.response_metadata or {}
                name = meta.get("model_name") or meta.get("model")
                if isinstance(name, str) and name:
                    return name
    return None


def _response_text(response: LLMResult) -> str:
    if not response.generations or not response.generations[0]:
        return ""
    generation = response.generations[0][0]
    if isinstance(generation, ChatGeneration):
        try:
            return message_text(generation.message)
        except TypeError:
            return generation.text
    return generation.text


def chain_trace(
    inputs: Any,
    outputs: Any,
    metadata: Mapping[str, Any],
    tags: Sequence[str],
    *,
    decomposer: NodeCall | None,
    solver: NodeCall | None,
    error: str | None,
    run_id: str,
    **fields: Any,
) -> Trace:
    """Build the (unscored, unscrubbed) trace of one chain run from its root run's data.

    The one reading of a DivConqChain run: :class:`TraceRecorder` calls it with
    callback data, the LangSmith importer with exported run trees. The chain's
    output dict wins over its input for the question and context; the
    ``reference`` metadata becomes the gold answer. A runaway decomposer reply is
    kept as the chain parsed it (:func:`~langchain_divconq.prompts.cap_decomposition`),
    and ``metadata["decomposition_truncated"]`` says it was cut.

    Args:
        inputs: The root run's inputs (a dict or a bare question).
        outputs: The root run's outputs (the chain's dict; anything else counts as none).
        metadata: The root run's metadata.
        tags: The root run's tags (duplicates dropped, order kept).
        decomposer: The decomposer node's call, if it ran.
        solver: The solver node's call, if it ran.
        error: Why the run failed, if it did.
        run_id: The root run's id.
        **fields: Further :class:`Trace` fields (``trace_id``, ``source``, ``created_at``).

    """
    question, context = _split_input(inputs)
    result = outputs if isinstance(outputs, Mapping) else {}
    if isinstance(result.get("question"), str):
        question = result["question"]
        context = result.get("context") or context
    extra = dict(metadata)
    extra.pop(NODE_METADATA_KEY, None)
    reference = extra.pop("reference", None)
    if decomposer is not None and decomposer.output is not None:
        kept, truncated = cap_decomposition(decomposer.output)
        if truncated:
            decomposer = decomposer.model_copy(update={"output": kept})
            extra["decomposition_truncated"] = True
    solution = result.get("solution")
    solution = solution if isinstance(solution, str) else None
    answer = result.get("answer")
    if answer is None and solution is not None:
        answer = extract_answer(solution)
    return Trace(
        question=question,
        context=context,
        reference=None if reference is None else str(reference),
        decomposer=decomposer,
        solver=solver,
        sub_questions=[str(q) for q in result.get("sub_questions") or []],
        solution=solution,
        answer=None if answer is None else str(answer),
        error=error,
        tags=list(dict.fromkeys(tags)),
        metadata=scrub_secrets(extra),
        run_id=run_id,
        **fields,
    )


class TraceRecorder(BaseCallbackHandler):
    """Callback handler that writes one :class:`Trace` per ``DivConqChain`` run to a store.

    Args:
        store: A :class:`~langchain_divconq.store.TraceStore`, a path/URL for
            :func:`~langchain_divconq.store.open_store` (``"traces.jsonl"``,
            ``"sqlite:///t.db"``), or None to keep traces in memory
            (``recorder.store.traces``).
        checker: Scores runs whose config metadata has a ``reference`` (the gold
            answer): ``(solver_text, example) -> float``, e.g. a task's ``score``.
            None uses :func:`~langchain_divconq.scoring.default_checker`.
        score: Set False to leave ``score`` empty even when a reference is given.
        strict: Raise store errors into the caller's run instead of logging them.

    Example:
        .. code-block:: python

            from langchain_divconq import TraceRecorder, create_divconq_chain

            recorder = TraceRecorder("traces.jsonl")
            chain = create_divconq_chain(decomposer, solver)
            chain.invoke(
                "Natalia sold 48 clips in April and half as many in May. Total?",
                config={"callbacks": [recorder], "metadata": {"reference": "72"}},
            )

    """

    run_inline = True

    def __init__(
        self,
        store: TraceStore | str | os.PathLike[str] | None = None,
        *,
        checker: Checker | None = None,
        score: bool = True,
        strict: bool = False,
    ) -> None:
        self.store: TraceStore = MemoryTraceStore() if store is None else open_store(store)
        self.checker = checker
        self.score = score
        self.strict = strict
        self.raise_error = strict
        self.recorded = 0
        """Traces written so far."""
        self.write_errors = 0
        """Traces that could not be written (logged, not raised, unless ``strict``)."""
        self._lock = threading.Lock()
        self._runs: dict[UUID, _Run] = {}
        self._roots: dict[UUID, _Root] = {}
        self._nodes: dict[UUID, _Node] = {}
        self._llm_calls: dict[UUID, _LLMCall] = {}

    def __repr__(self) -> str:
        return f"TraceRecorder(store={self.store!r})"

    # ------------------------------------------------------------------ run tree
    def _track(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any] | None,
        *,
        can_be_root: bool = False,
        inputs: Any = None,
        tags: Sequence[str] | None = None,
    ) -> _Run | None:
        """Place a starting run in the tree; returns where it belongs, or None if outside."""
        label = (metadata or {}).get(NODE_METADATA_KEY)
        with self._lock:
            parent = self._runs.get(parent_run_id) if parent_run_id is not None else None
            # A "chain" label is inherited by everything below a root; only a run
            # outside any chain, or inside a node of another chain, starts a trace.
            if can_be_root and label == _ROOT and (parent is None or parent.node is not None):
                self._roots[run_id] = _Root(
                    run_id=run_id,
                    inputs=inputs,
                    tags=list(tags or []),
                    metadata=dict(metadata or {}),
                )
                run = _Run(root=run_id, node=None)
                self._runs[run_id] = run
                return run
            if parent is None:
                return None
            root = self._roots.get(parent.root)
            if root is None:
                return None
            if parent.node is None and label in _NODES:
                run = _Run(root=parent.root, node=str(label))
                node = _Node(run_id=run_id)
                root.nodes[run.node or ""] = node
                self._nodes[run_id] = node
            else:
                run = _Run(root=parent.root, node=parent.node)
            self._runs[run_id] = run
            root.runs.append(run_id)
            return run

    def _node_of(self, run: _Run) -> _Node | None:
        root = self._roots.get(run.root)
        if root is None or run.node is None:
            return None
        return root.nodes.get(run.node)

    # ---------------------------------------------------------------- chain runs
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Start a trace at a chain root, or place a run under its node."""
        self._track(run_id, parent_run_id, metadata, can_be_root=True, inputs=inputs, tags=tags)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Finish a node run, or write the trace when the root run ends."""
        self._end(run_id, outputs=outputs, error=None, inputs=kwargs.get("inputs"))

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Record a failed node, or write the failed run's trace."""
        self._end(run_id, outputs=None, error=error, inputs=kwargs.get("inputs"))

    def _end(self, run_id: UUID, *, outputs: Any, error: BaseException | None, inputs: Any) -> None:
        with self._lock:
            root = self._roots.get(run_id)
            node = self._nodes.get(run_id)
            if node is not None:
                node.latency_s = time.perf_counter() - node.start
                if error is not None:
                    node.error = _error_text(error)
                elif outputs is not None:
                    node.output = _output_text(outputs)
            if root is None:
                return
            self._forget(root)
        if inputs is not None and not _split_input(root.inputs)[0]:
            root.inputs = inputs
        self._write(self._trace(root, outputs, error))

    def _forget(self, root: _Root) -> None:
        for child in root.runs:
            self._runs.pop(child, None)
            self._nodes.pop(child, None)
            self._llm_calls.pop(child, None)
        self._runs.pop(root.run_id, None)
        self._roots.pop(root.run_id, None)

    # ---------------------------------------------------------------- other runs
    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Track a tool run, so model calls inside it find their node."""
        self._track(run_id, parent_run_id, metadata)

    def on_retriever_start(
        self,
        serialized: dict[str, Any],
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Track a retriever run, so model calls inside it find their node."""
        self._track(run_id, parent_run_id, metadata)

    # ---------------------------------------------------------------- model runs
    def _model_start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: dict[str, Any] | None,
        messages: list[dict[str, Any]],
        kwargs: Mapping[str, Any],
    ) -> None:
        run = self._track(run_id, parent_run_id, metadata)
        if run is None:
            return
        with self._lock:
            node = self._node_of(run)
            if node is None:
                return
            params = kwargs.get("invocation_params") or {}
            name = _model_name(metadata, params)
            # The last call a node makes is the one whose answer it returns
            # (retries, fallbacks), so it names the model and the prompt.
            node.messages = messages
            node.params = scrub_secrets(params)
            node.model_name = name or node.model_name
            self._llm_calls[run_id] = _LLMCall(node=node, messages=messages, model_name=name)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember a chat model call's messages (OpenAI format), model and parameters."""
        prompt = messages[0] if messages else []
        # Prompts are kept verbatim (they are training data) but for credentials,
        # which scrub_trace removes from every text before the trace is written.
        converted = convert_to_openai_messages(list(prompt))
        self._model_start(run_id, parent_run_id, metadata, list(converted), kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember a text-completion call's prompt (as one user message)."""
        messages = [{"role": "user", "content": prompts[0] if prompts else ""}]
        self._model_start(run_id, parent_run_id, metadata, messages, kwargs)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Add the call's output text and token usage to its node."""
        with self._lock:
            call = self._llm_calls.pop(run_id, None)
            node = self._nodes.get(run_id)
        if call is None:
            return
        text = _response_text(response)
        usage = _call_usage(response, call.messages, text)
        with self._lock:
            call.node.llm_output = text
            call.node.add_usage(usage)
            if call.model_name is None:
                call.node.model_name = call.node.model_name or _response_model(response)
            if node is not None:  # the model call is the node run itself
                node.latency_s = time.perf_counter() - node.start
                node.output = text

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Record the error when the failed model call is the node run itself."""
        with self._lock:
            self._llm_calls.pop(run_id, None)
            node = self._nodes.get(run_id)
            if node is not None:
                node.latency_s = time.perf_counter() - node.start
                node.error = _error_text(error)

    # ---------------------------------------------------------------- writing
    def _trace(self, root: _Root, outputs: Any, error: BaseException | None) -> Trace:
        decomposer, solver = root.nodes.get("decomposer"), root.nodes.get("solver")
        trace = chain_trace(
            root.inputs,
            outputs,
            root.metadata,
            root.tags,
            decomposer=decomposer.to_call() if decomposer else None,
            solver=solver.to_call() if solver else None,
            error=None if error is None else _error_text(error),
            run_id=str(root.run_id),
            created_at=root.created_at,
        )
        if self.score and trace.reference is not None:
            try:
                trace.score = score_trace(trace, self.checker)
            except Exception:
                logger.exception("Scoring trace %s failed; it is stored unscored", trace.trace_id)
        return scrub_trace(trace)

    def _write(self, trace: Trace) -> None:
        try:
            self.store.add(trace)
        except Exception:
            with self._lock:
                self.write_errors += 1
            if self.strict:
                raise
            logger.exception(
                "Could not write trace %s to %r; the chain run is unaffected "
                "(pass strict=True to raise instead)",
                trace.trace_id,
                self.store,
            )
            return
        with self._lock:
            self.recorded += 1
