"""The two-stage chain: a decomposer writes sub-questions, a solver answers with them.

:func:`create_divconq_chain` builds the paper's static-planning pipeline;
:func:`create_single_stage_chain` builds the baselines it is compared with
(direct answer, chain of thought). Both return a :class:`DivConqChain`, a
``RunnableSerializable`` with the same input and output, so evaluation code and
apps treat them alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, NamedTuple, cast

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    CallbackManager,
    CallbackManagerForChainRun,
)
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import ensure_config, get_config_list, patch_config
from langchain_core.runnables.utils import AddableDict
from pydantic import BaseModel, ConfigDict, Field, field_validator

from langchain_divconq.prompts import (
    DEFAULT_MAX_SUB_QUESTIONS,
    NODE_METADATA_KEY,
    cap_decomposition,
    decomposer_messages,
    extract_answer,
    message_text,
    parse_sub_questions,
    single_stage_messages,
    solver_messages,
)

__all__ = [
    "NODE_METADATA_KEY",
    "DivConqChain",
    "DivConqInput",
    "DivConqOutput",
    "create_divconq_chain",
    "create_single_stage_chain",
]


class DivConqInput(BaseModel):
    """Input of a :class:`DivConqChain` (a bare string is accepted too)."""

    question: str = Field(description="The question to answer.")
    context: str | None = Field(
        default=None,
        description="An optional passage the question is about (reading comprehension).",
    )


class DivConqOutput(BaseModel):
    """Output of a :class:`DivConqChain` (returned as a plain dict)."""

    question: str = Field(description="The question that was asked.")
    context: str | None = Field(default=None, description="The passage, if one was given.")
    decomposition: str | None = Field(
        default=None,
        description="The decomposer's raw text (at most MAX_DECOMPOSITION_CHARS, whole lines); "
        "None for single-stage chains.",
    )
    decomposition_truncated: bool = Field(
        default=False,
        description="Present (True) only when a runaway decomposer reply was cut to "
        "MAX_DECOMPOSITION_CHARS before parsing; the trace's metadata says so too.",
    )
    sub_questions: list[str] = Field(description="The parsed sub-questions, possibly empty.")
    solution: str = Field(description="The solver's full text.")
    answer: str | None = Field(description="The final answer after the marker, or None.")


class _Plan(NamedTuple):
    """What the decomposer node gives the solver."""

    text: str | None  # the kept decomposer text; None for single-stage chains
    sub_questions: list[str]
    truncated: bool  # a runaway reply was cut to MAX_DECOMPOSITION_CHARS


_NO_PLAN = _Plan(None, [], False)


def _normalize_input(value: Any) -> tuple[str, str | None]:
    """Validate a chain input and return ``(question, context)``."""
    if isinstance(value, DivConqInput):
        value = value.model_dump()
    if isinstance(value, str):
        question, context = value, None
    elif isinstance(value, dict):
        if "question" not in value:
            msg = (
                "The chain input dict has no 'question' key; got keys "
                f"{sorted(map(str, value))}. Pass {{'question': '...', 'context': None}} "
                "or a bare string."
            )
            raise ValueError(msg)
        question, context = value["question"], value.get("context")
    else:
        msg = (
            f"The chain input must be a str or a dict with a 'question' key, got "
            f"{type(value).__name__}: {value!r:.80}. Pass chain.invoke('your question') "
            "or chain.invoke({'question': ..., 'context': ...})."
        )
        raise TypeError(msg)
    if not isinstance(question, str):
        msg = (
            f"'question' must be a str, got {type(question).__name__}: {question!r:.80}. "
            "Convert it to text before calling the chain."
        )
        raise TypeError(msg)
    if not question.strip():
        msg = f"'question' is empty or blank (got {question!r}); pass a non-empty question."
        raise ValueError(msg)
    if context is not None and not isinstance(context, str):
        msg = (
            f"'context' must be a str or None, got {type(context).__name__}. "
            "Join a list of passages into one string first."
        )
        raise TypeError(msg)
    return question, context or None


class DivConqChain(RunnableSerializable[Any, dict[str, Any]]):
    """Decompose a question with one model and solve it with another.

    The decomposer and the solver run as child runs named ``decomposer`` and
    ``solver``. ``batch``/``abatch`` run each stage as one batch call, so a local
    decomposer generates for all questions at once.

    Example:
        .. code-block:: python

            from langchain_divconq import create_divconq_chain

            chain = create_divconq_chain(decomposer=small_model, solver=ChatOpenAI())
            chain.invoke("Natalia sold 48 clips in April and half as many in May. Total?")

    """

    decomposer: Runnable[Any, Any] | None = None
    """Model or runnable that writes sub-questions; None for a single-stage chain."""

    solver: Runnable[Any, Any]
    """Model or runnable that answers; may be a ``configurable_alternatives`` runnable."""

    max_sub_questions: int = DEFAULT_MAX_SUB_QUESTIONS
    """Cap on the sub-questions kept from the decomposer (the paper's N)."""

    cot: bool = False
    """Single-stage only: ask the solver to think step by step (chain-of-thought baseline)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @field_validator("max_sub_questions")
    @classmethod
    def _check_max(cls, value: int) -> int:
        if value < 1:
            msg = f"max_sub_questions must be at least 1, got {value}."
            raise ValueError(msg)
        return value

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Return False: the wrapped models may hold local weights."""
        return False

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        """Return the run name of the chain's root run (``divconq`` by default)."""
        base = name or self.name or ("divconq" if self.decomposer is not None else "single_stage")
        return f"{base}{suffix}" if suffix else base

    @property
    def InputType(self) -> type[DivConqInput]:
        """The input type, used by ``as_tool`` and LangServe-style schemas."""
        return DivConqInput

    @property
    def OutputType(self) -> type[dict[str, Any]]:
        """The output type: a plain dict shaped like :class:`DivConqOutput`."""
        return dict

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        """Return :class:`DivConqInput` so tools get a ``question``/``context`` schema."""
        return DivConqInput

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        """Return :class:`DivConqOutput`."""
        return DivConqOutput

    # ----------------------------------------------------------------- building blocks
    def _solver_prompt(
        self, question: str, sub_questions: Sequence[str], context: str | None
    ) -> list[BaseMessage]:
        if self.decomposer is None:
            return single_stage_messages(question, context, cot=self.cot)
        return solver_messages(question, sub_questions, context)

    @staticmethod
    def _node_config(config: RunnableConfig, callbacks: Any, node: str) -> RunnableConfig:
        metadata = {**(config.get("metadata") or {}), NODE_METADATA_KEY: node}
        return patch_config({**config, "metadata": metadata}, callbacks=callbacks, run_name=node)

    @staticmethod
    def _root_config(config: RunnableConfig | None) -> RunnableConfig:
        config = ensure_config(config)
        metadata = {**(config.get("metadata") or {}), NODE_METADATA_KEY: "chain"}
        return cast(RunnableConfig, {**config, "metadata": metadata})

    def _output(
        self, question: str, context: str | None, plan: _Plan, solution: str
    ) -> dict[str, Any]:
        return {
            **self._plan_output(question, context, plan),
            "solution": solution,
            "answer": extract_answer(solution),
        }

    @staticmethod
    def _plan_output(question: str, context: str | None, plan: _Plan) -> dict[str, Any]:
        out: dict[str, Any] = {"question": question, "context": context, "decomposition": plan.text}
        if plan.truncated:  # only then, so ordinary outputs keep their keys
            out["decomposition_truncated"] = True
        return {**out, "sub_questions": plan.sub_questions}

    def _read(self, raw: Any) -> _Plan:
        """Parse a decomposer reply; a runaway one is cut first (kept and parsed alike)."""
        text, truncated = cap_decomposition(message_text(raw))
        return _Plan(text, parse_sub_questions(text, self.max_sub_questions), truncated)

    def _decompose(
        self,
        question: str,
        context: str | None,
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> _Plan:
        if self.decomposer is None:
            return _NO_PLAN
        raw = self.decomposer.invoke(
            decomposer_messages(question, context, max_sub_questions=self.max_sub_questions),
            self._node_config(config, run_manager.get_child(), "decomposer"),
        )
        return self._read(raw)

    async def _adecompose(
        self,
        question: str,
        context: str | None,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> _Plan:
        if self.decomposer is None:
            return _NO_PLAN
        raw = await self.decomposer.ainvoke(
            decomposer_messages(question, context, max_sub_questions=self.max_sub_questions),
            self._node_config(config, run_manager.get_child(), "decomposer"),
        )
        return self._read(raw)

    # ---------------------------------------------------------------------- invoke
    def _run(
        self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> dict[str, Any]:
        question, context = _normalize_input(value)
        plan = self._decompose(question, context, run_manager, config)
        solved = self.solver.invoke(
            self._solver_prompt(question, plan.sub_questions, context),
            self._node_config(config, run_manager.get_child(), "solver"),
        )
        return self._output(question, context, plan, message_text(solved))

    async def _arun(
        self,
        value: Any,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> dict[str, Any]:
        question, context = _normalize_input(value)
        plan = await self._adecompose(question, context, run_manager, config)
        solved = await self.solver.ainvoke(
            self._solver_prompt(question, plan.sub_questions, context),
            self._node_config(config, run_manager.get_child(), "solver"),
        )
        return self._output(question, context, plan, message_text(solved))

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Answer one question; see the class docstring."""
        return self._call_with_config(self._run, input, self._root_config(config), **kwargs)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Answer one question asynchronously."""
        return await self._acall_with_config(self._arun, input, self._root_config(config), **kwargs)

    # ---------------------------------------------------------------------- stream
    def _transform(
        self,
        inputs: Iterator[Any],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> Iterator[AddableDict]:
        value = None
        for value in inputs:  # noqa: B007 - the last chunk is the whole input
            pass
        question, context = _normalize_input(value)
        plan = self._decompose(question, context, run_manager, config)
        yield AddableDict(self._plan_output(question, context, plan))
        parts: list[str] = []
        for chunk in self.solver.stream(
            self._solver_prompt(question, plan.sub_questions, context),
            self._node_config(config, run_manager.get_child(), "solver"),
        ):
            text = message_text(chunk)
            parts.append(text)
            yield AddableDict(solution=text)
        if not parts:
            yield AddableDict(solution="")
        yield AddableDict(answer=extract_answer("".join(parts)))

    async def _atransform(
        self,
        inputs: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> AsyncIterator[AddableDict]:
        value = None
        async for value in inputs:  # noqa: B007
            pass
        question, context = _normalize_input(value)
        plan = await self._adecompose(question, context, run_manager, config)
        yield AddableDict(self._plan_output(question, context, plan))
        parts: list[str] = []
        async for chunk in self.solver.astream(
            self._solver_prompt(question, plan.sub_questions, context),
            self._node_config(config, run_manager.get_child(), "solver"),
        ):
            text = message_text(chunk)
            parts.append(text)
            yield AddableDict(solution=text)
        if not parts:
            yield AddableDict(solution="")
        yield AddableDict(answer=extract_answer("".join(parts)))

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Stream the output as dict chunks that add up to the ``invoke`` result."""
        yield from self._transform_stream_with_config(
            input, self._transform, self._root_config(config), **kwargs
        )

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Stream: first the sub-questions, then the solver's text, then the answer."""
        yield from self.transform(iter([input]), config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Async version of :meth:`transform`."""
        async for chunk in self._atransform_stream_with_config(
            input, self._atransform, self._root_config(config), **kwargs
        ):
            yield chunk

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Async version of :meth:`stream`."""

        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk

    # ----------------------------------------------------------------------- batch
    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Answer many questions, running each stage as a single batch call.

        Every input still gets its own root run, so callbacks see one chain run
        per question. Failed items never stop the others from being finished
        and reported; with ``return_exceptions=False`` the first error is raised
        after all runs have ended.
        """
        if not inputs:
            return []
        configs = [self._root_config(c) for c in get_config_list(config, len(inputs))]
        managers = [
            CallbackManager.configure(
                inheritable_callbacks=c.get("callbacks"),
                inheritable_tags=c.get("tags"),
                inheritable_metadata=c.get("metadata"),
            ).on_chain_start(
                None, value, name=c.get("run_name") or self.get_name(), run_id=c.pop("run_id", None)
            )
            for c, value in zip(configs, inputs, strict=True)
        ]
        state = _BatchState.start(inputs)
        if self.decomposer is not None:
            idx = state.pending()
            outs = self.decomposer.batch(
                [state.decomposer_prompt(i, self.max_sub_questions) for i in idx],
                [self._node_config(configs[i], managers[i].get_child(), "decomposer") for i in idx],
                return_exceptions=True,
            )
            state.take_decompositions(idx, outs, self._read)
        idx = state.pending()
        outs = self.solver.batch(
            [state.solver_prompt(i, self._solver_prompt) for i in idx],
            [self._node_config(configs[i], managers[i].get_child(), "solver") for i in idx],
            return_exceptions=True,
        )
        results = state.finish(idx, outs, self._output)
        for manager, result in zip(managers, results, strict=True):
            if isinstance(result, BaseException):
                manager.on_chain_error(result)
            else:
                manager.on_chain_end(result)
        return _raise_or_return(results, return_exceptions)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async version of :meth:`batch`."""
        if not inputs:
            return []
        configs = [self._root_config(c) for c in get_config_list(config, len(inputs))]
        managers = [
            await AsyncCallbackManager.configure(
                inheritable_callbacks=c.get("callbacks"),
                inheritable_tags=c.get("tags"),
                inheritable_metadata=c.get("metadata"),
            ).on_chain_start(
                None, value, name=c.get("run_name") or self.get_name(), run_id=c.pop("run_id", None)
            )
            for c, value in zip(configs, inputs, strict=True)
        ]
        state = _BatchState.start(inputs)
        if self.decomposer is not None:
            idx = state.pending()
            outs = await self.decomposer.abatch(
                [state.decomposer_prompt(i, self.max_sub_questions) for i in idx],
                [self._node_config(configs[i], managers[i].get_child(), "decomposer") for i in idx],
                return_exceptions=True,
            )
            state.take_decompositions(idx, outs, self._read)
        idx = state.pending()
        outs = await self.solver.abatch(
            [state.solver_prompt(i, self._solver_prompt) for i in idx],
            [self._node_config(configs[i], managers[i].get_child(), "solver") for i in idx],
            return_exceptions=True,
        )
        results = state.finish(idx, outs, self._output)
        for manager, result in zip(managers, results, strict=True):
            if isinstance(result, BaseException):
                await manager.on_chain_error(result)
            else:
                await manager.on_chain_end(result)
        return _raise_or_return(results, return_exceptions)


class _BatchState:
    """Per-item progress of a batch: parsed input, decomposition, or the error that ended it."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str | None] | BaseException] = []
        self.plans: dict[int, _Plan] = {}

    @classmethod
    def start(cls, inputs: Sequence[Any]) -> _BatchState:
        state = cls()
        for value in inputs:
            try:
                state.items.append(_normalize_input(value))
            except (TypeError, ValueError) as exc:
                state.items.append(exc)
        return state

    def pending(self) -> list[int]:
        return [i for i, item in enumerate(self.items) if not isinstance(item, BaseException)]

    def _item(self, i: int) -> tuple[str, str | None]:
        return cast(tuple[str, str | None], self.items[i])

    def decomposer_prompt(self, i: int, max_sub_questions: int) -> list[BaseMessage]:
        question, context = self._item(i)
        return decomposer_messages(question, context, max_sub_questions=max_sub_questions)

    def take_decompositions(self, idx: list[int], outs: list[Any], read: Any) -> None:
        for i, out in zip(idx, outs, strict=True):
            try:
                if isinstance(out, BaseException):
                    raise out
                self.plans[i] = read(out)
            except Exception as exc:
                self.items[i] = exc

    def solver_prompt(self, i: int, build: Any) -> list[BaseMessage]:
        question, context = self._item(i)
        subs = self.plans.get(i, _NO_PLAN).sub_questions
        return cast(list[BaseMessage], build(question, subs, context))

    def finish(self, idx: list[int], outs: list[Any], output: Any) -> list[Any]:
        results: list[Any] = list(self.items)
        for i, out in zip(idx, outs, strict=True):
            if isinstance(out, BaseException):
                results[i] = out
                continue
            question, context = self._item(i)
            try:
                results[i] = output(
                    question, context, self.plans.get(i, _NO_PLAN), message_text(out)
                )
            except Exception as exc:
                results[i] = exc
        return results


def _raise_or_return(results: list[Any], return_exceptions: bool) -> list[Any]:
    if not return_exceptions:
        for result in results:
            if isinstance(result, BaseException):
                raise result
    return results


def create_divconq_chain(
    decomposer: Runnable[Any, Any],
    solver: Runnable[Any, Any],
    *,
    max_sub_questions: int = DEFAULT_MAX_SUB_QUESTIONS,
) -> DivConqChain:
    """Build the decomposer + solver chain.

    Args:
        decomposer: Any chat model (or runnable taking messages) that writes sub-questions;
            typically :func:`~langchain_divconq.local.load_decomposer`.
        solver: Any chat model that answers; may be built with ``configurable_alternatives``.
        max_sub_questions: At most this many sub-questions reach the solver (the paper's N).

    Returns:
        A :class:`DivConqChain`.

    Example:
        >>> from langchain_core.language_models import FakeListChatModel
        >>> chain = create_divconq_chain(
        ...     FakeListChatModel(responses=["How many in May?"]),
        ...     FakeListChatModel(responses=["24 in May.\\nThe answer is: 72"]),
        ... )
        >>> chain.invoke("How many clips in total?")["answer"]
        '72'

    """
    _check_runnable(decomposer, "decomposer")
    _check_runnable(solver, "solver")
    return DivConqChain(decomposer=decomposer, solver=solver, max_sub_questions=max_sub_questions)


def create_single_stage_chain(solver: Runnable[Any, Any], *, cot: bool = False) -> DivConqChain:
    """Build a single-stage baseline: the solver alone, answering directly or with chain of thought.

    The output has the same keys as the two-stage chain, with ``sub_questions`` empty.

    Example:
        >>> from langchain_core.language_models import FakeListChatModel
        >>> chain = create_single_stage_chain(FakeListChatModel(responses=["The answer is: 4"]))
        >>> chain.invoke("What is 2 + 2?")["answer"]
        '4'

    """
    _check_runnable(solver, "solver")
    return DivConqChain(decomposer=None, solver=solver, cot=cot)


def _check_runnable(value: object, role: str) -> None:
    if not isinstance(value, Runnable):
        msg = (
            f"The {role} must be a LangChain Runnable (a chat model such as ChatOpenAI, or "
            f"langchain_divconq.local.load_decomposer()), got {type(value).__name__}."
        )
        raise TypeError(msg)
