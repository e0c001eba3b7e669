"""The ``Trace`` record: one chain run (or one imported gold example), as distillation needs it.

A trace is the contract between the recorder and stores (which write it), the
importers (which build it from gold data) and the training subpackage (which
turns it into prompt/completion pairs with :mod:`langchain_divconq.prompts`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SCHEMA_VERSION", "NodeCall", "TokenUsage", "Trace"]

SCHEMA_VERSION = 1
"""Bumped whenever a field changes meaning; readers accept this version and older."""


class TokenUsage(BaseModel):
    """Token counts of one model call."""

    input_tokens: int = Field(default=0, description="Prompt tokens.")
    output_tokens: int = Field(default=0, description="Generated tokens.")
    total_tokens: int = Field(default=0, description="input_tokens + output_tokens.")
    estimated: bool = Field(
        default=False,
        description="True when counted with a tokenizer because the model reported none.",
    )


class NodeCall(BaseModel):
    """One call of the decomposer or the solver inside a chain run."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str | None = Field(default=None, description="The model's name, if known.")
    messages: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The messages sent, in OpenAI chat format ({'role', 'content'}).",
    )
    output: str | None = Field(default=None, description="The raw text the model returned.")
    usage: TokenUsage | None = Field(default=None, description="Token usage of the call.")
    latency_s: float | None = Field(default=None, description="Wall time of the call, seconds.")
    error: str | None = Field(default=None, description="The error, when the call failed.")
    run_id: str | None = Field(default=None, description="LangChain run id of the call.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Invocation parameters of the call (temperature, max_tokens, stop, ...), "
        "with secrets removed.",
    )


class Trace(BaseModel):
    """One decomposer + solver run, or one imported gold decomposition.

    Example:
        >>> t = Trace(question="2+2?", sub_questions=[], solution="The answer is: 4", answer="4")
        >>> Trace.model_validate_json(t.model_dump_json()) == t
        True

    """

    schema_version: int = Field(default=SCHEMA_VERSION, description="Version of this schema.")
    trace_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex, description="Unique id of the record."
    )
    source: str = Field(
        default="recorded",
        description="'recorded' for chain runs, else the importer: 'gsm8k-socratic', "
        "'strategyqa', 'openai-chat'.",
    )
    question: str = Field(description="The question.")
    context: str | None = Field(default=None, description="The passage, if any.")
    reference: str | None = Field(default=None, description="The gold answer, if known.")
    decomposer: NodeCall | None = Field(default=None, description="The decomposer call.")
    solver: NodeCall | None = Field(default=None, description="The solver call.")
    sub_questions: list[str] = Field(
        default_factory=list, description="The parsed (or gold) sub-questions."
    )
    solution: str | None = Field(default=None, description="The solver's text.")
    answer: str | None = Field(default=None, description="The extracted final answer.")
    score: float | None = Field(
        default=None, description="Score against the reference (1.0 correct); None if unscored."
    )
    error: str | None = Field(default=None, description="Why the run failed, if it did.")
    tags: list[str] = Field(default_factory=list, description="Tags of the run.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Metadata of the run.")
    run_id: str | None = Field(default=None, description="LangChain run id of the chain run.")
    created_at: datetime = Field(
        default_factory=lambda: datetime.now(UTC), description="When the run started (UTC)."
    )

    @property
    def correct(self) -> bool | None:
        """True when scored as correct (score >= 1.0), None when unscored."""
        return None if self.score is None else self.score >= 1.0
