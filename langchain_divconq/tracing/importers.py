"""Import gold decompositions and chat logs as traces.

Importers turn public data into :class:`~langchain_divconq.trace.Trace` records,
so gold and recorded traces feed the same training code:

* :func:`import_gsm8k_socratic`: GSM8K Socratic files, where each solution step
  is ``sub-question ** step``; the sub-questions are the gold decomposition
  and the steps (calculator annotations removed) become the solver text.
* :func:`import_strategyqa`: StrategyQA's ``decomposition`` field; the facts
  become the solver text and the boolean answer ``yes``/``no``.
* :func:`import_openai_chat`: OpenAI chat-format JSONL (``{"messages": [...]}``),
  including what :func:`export_openai_jsonl` writes.

Imported trace ids are derived from the source line, so importing a file twice
adds nothing the second time. The way back out (traces to fine-tuning files) is
:mod:`langchain_divconq.training.exporters`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from langchain_divconq.jsonl import iter_lines
from langchain_divconq.prompts import ANSWER_MARKER, extract_answer, parse_sub_questions
from langchain_divconq.tasks.math import parse_number
from langchain_divconq.tracing.recorder import scrub_secrets
from langchain_divconq.tracing.scoring import score_trace
from langchain_divconq.tracing.trace import NodeCall, Trace

__all__ = ["IMPORTERS", "import_gsm8k_socratic", "import_openai_chat", "import_strategyqa"]

logger = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("6f1d3c1e-5b8a-4c59-9f0e-3d1f7a2b9c44")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_UNLIMITED = 10_000


def _trace_id(source: str, raw: str) -> str:
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()
    return uuid.uuid5(_NAMESPACE, f"{source}:{digest}").hex


def _rows(path: str | os.PathLike[str], limit: int | None) -> Iterator[tuple[int, str, Any]]:
    """Yield ``(line number, raw line, parsed object)`` of a JSONL file."""
    if limit is not None and limit < 0:
        msg = f"limit must be >= 0 or None, got {limit}."
        raise ValueError(msg)
    file = Path(path)
    if not file.is_file():
        msg = f"No such file to import: {file}. Pass the path of a .jsonl file."
        raise FileNotFoundError(msg)
    for count, (number, line, where) in enumerate(iter_lines(file)):
        if limit is not None and count >= limit:
            return
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            msg = f"{where} is not valid JSON ({exc}); is the file truncated?"
            raise ValueError(msg) from exc
        yield number, line.decode("utf-8").strip(), row


def _require(row: Any, keys: tuple[str, ...], where: str, kind: str) -> None:
    if not isinstance(row, dict) or any(key not in row for key in keys):
        got = sorted(row) if isinstance(row, dict) else type(row).__name__
        msg = f"{where}: a {kind} record needs the keys {list(keys)}, got {got}."
        raise ValueError(msg)


def _number_text(text: str) -> str:
    value = parse_number(text)
    if value is None:
        return text.strip()
    return str(int(value)) if value == int(value) else repr(value)


def _clean_step(step: str) -> str:
    return " ".join(_CALCULATOR.sub("", step).split())


def import_gsm8k_socratic(
    path: str | os.PathLike[str], *, limit: int | None = None
) -> Iterator[Trace]:
    """Read a GSM8K Socratic file as gold traces.

    Every ``sub-question ** step`` line gives one sub-question (all are kept;
    the training side caps them) and one numbered step of the solver text, which
    ends with ``The answer is: N``. Calculator annotations such as
    ``<<48/2=24>>`` are removed. ``reference`` and ``answer`` are ``N`` (commas
    dropped), ``score`` is 1.0 and ``source`` is ``gsm8k-socratic``.

    Args:
        path: A ``*_socratic.jsonl`` file (``question``, ``answer`` fields).
        limit: Read at most this many records.

    Yields:
        One trace per question, in file order.

    Example:
        >>> traces = import_gsm8k_socratic("../shared/data/gsm8k/train_socratic.jsonl", limit=1)
        >>> next(traces).sub_questions[0]  # doctest: +SKIP
        'How many clips did Natalia sell in May?'

    """
    for number, raw, row in _rows(path, limit):
        where = f"{path}:{number}"
        _require(row, ("question", "answer"), where, "GSM8K Socratic")
        text = str(row["answer"])
        if "####" not in text:
            msg = f"{where}: the answer has no final '#### N' line; is this a GSM8K file?"
            raise ValueError(msg)
        body, final = text.rsplit("####", 1)
        reference = _number_text(final)
        sub_questions: list[str] = []
        steps: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            question, sep, step = line.partition(" ** ")
            if sep and question.strip():
                sub_questions.append(" ".join(question.split()))
            steps.append(_clean_step(step if sep else line))
        numbered = [f"{i}. {step}" for i, step in enumerate(filter(None, steps), start=1)]
        solution = "\n".join([*numbered, f"{ANSWER_MARKER} {reference}"])
        yield Trace(
            trace_id=_trace_id("gsm8k-socratic", raw),
            source="gsm8k-socratic",
            question=str(row["question"]).strip(),
            reference=reference,
            sub_questions=sub_questions,
            solution=solution,
            answer=reference,
            score=1.0,
            metadata={"file": Path(path).name, "line": number},
        )


def import_strategyqa(path: str | os.PathLike[str], *, limit: int | None = None) -> Iterator[Trace]:
    """Read a StrategyQA file as gold traces.

    ``decomposition`` gives the sub-questions; the ``facts`` (when present) and
    ``The answer is: yes|no`` make the solver text; the boolean ``answer`` becomes
    ``reference`` and ``answer`` (``yes``/``no``). ``source`` is ``strategyqa``.

    Example:
        >>> next(import_strategyqa("../shared/data/strategyqa/dev.jsonl")).answer  # doctest: +SKIP
        'no'

    """
    for number, raw, row in _rows(path, limit):
        where = f"{path}:{number}"
        _require(row, ("question", "answer", "decomposition"), where, "StrategyQA")
        answer = row["answer"]
        if isinstance(answer, str) and answer.strip().lower() in {"yes", "no", "true", "false"}:
            answer = answer.strip().lower() in {"yes", "true"}
        if not isinstance(answer, bool):
            msg = f"{where}: 'answer' must be a boolean (or yes/no), got {answer!r}."
            raise ValueError(msg)
        reference = "yes" if answer else "no"
        facts = [" ".join(str(f).split()) for f in row.get("facts") or [] if str(f).strip()]
        solution = "\n".join([*facts, f"{ANSWER_MARKER} {reference}"])
        metadata: dict[str, Any] = {"file": Path(path).name, "line": number}
        if row.get("id"):
            metadata["id"] = str(row["id"])
        yield Trace(
            trace_id=_trace_id("strategyqa", raw),
            source="strategyqa",
            question=str(row["question"]).strip(),
            reference=reference,
            sub_questions=[
                " ".join(str(q).split()) for q in row["decomposition"] if str(q).strip()
            ],
            solution=solution,
            answer=reference,
            score=1.0,
            metadata=metadata,
        )


_SUB_QUESTIONS = "\n\nSub-questions:\n"
_NUMBERED = re.compile(r"^\s*\d+[.)]\s*")


def _read_user_block(text: str) -> tuple[str, str | None, list[str]]:
    """Invert :mod:`langchain_divconq.prompts`' question block: (question, context, subs)."""
    subs: list[str] = []
    if _SUB_QUESTIONS in text:
        text, listed = text.split(_SUB_QUESTIONS, 1)
        subs = [_NUMBERED.sub("", line).strip() for line in listed.splitlines() if line.strip()]
    context = None
    if text.startswith("Passage:\n") and "\n\nQuestion: " in text:
        passage, question = text[len("Passage:\n") :].rsplit("\n\nQuestion: ", 1)
        return question.strip(), passage.strip() or None, subs
    if text.startswith("Question: "):
        text = text[len("Question: ") :]
    return text.strip(), context, subs


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part if isinstance(part, str) else str(part.get("text", ""))
            for part in content
            if isinstance(part, str | dict)
        )
    return ""


Node = Literal["auto", "decomposer", "solver"]


def import_openai_chat(
    path: str | os.PathLike[str],
    *,
    node: Node = "auto",
    limit: int | None = None,
) -> Iterator[Trace]:
    """Read OpenAI chat-format JSONL (``{"messages": [...]}`` per line) as traces.

    The last assistant message is the model's output and the messages before it
    its prompt; the last user message gives the question (and passage and
    sub-questions when it is in this library's prompt format). With
    ``node="auto"``, an output that has the answer marker is a solver call, any
    other a decomposer call. Optional ``reference`` and ``metadata`` keys on a
    line are kept. ``source`` is ``openai-chat``.

    Example:
        >>> traces = list(import_openai_chat("decomposer_ft.jsonl"))  # doctest: +SKIP

    """
    if node not in ("auto", "decomposer", "solver"):
        msg = f"node must be 'auto', 'decomposer' or 'solver', got {node!r}."
        raise ValueError(msg)
    for number, raw, row in _rows(path, limit):
        where = f"{path}:{number}"
        _require(row, ("messages",), where, "chat")
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m for m in messages
        ):
            msg = f"{where}: 'messages' must be a list of {{'role', 'content'}} objects."
            raise ValueError(msg)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        users = [m for m in messages[: last or 0] if m["role"] == "user"]
        if last is None or not users:
            msg = f"{where}: a chat record needs a user message followed by an assistant reply."
            raise ValueError(msg)
        output = _content_text(messages[last].get("content"))
        question, context, listed = _read_user_block(_content_text(users[-1].get("content")))
        kind = node
        if kind == "auto":
            kind = "solver" if extract_answer(output) is not None else "decomposer"
        call = NodeCall(messages=messages[:last], output=output)
        reference = row.get("reference")
        metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        trace = Trace(
            trace_id=_trace_id("openai-chat", raw),
            source="openai-chat",
            question=question,
            context=context,
            reference=None if reference is None else str(reference),
            decomposer=call if kind == "decomposer" else None,
            solver=call if kind == "solver" else None,
            sub_questions=parse_sub_questions(output, _UNLIMITED)
            if kind == "decomposer"
            else listed,
            solution=output if kind == "solver" else None,
            answer=extract_answer(output) if kind == "solver" else None,
            metadata={**scrub_secrets(metadata), "file": Path(path).name, "line": number},
        )
        trace.score = score_trace(trace)
        yield trace


IMPORTERS: dict[str, Callable[..., Iterator[Trace]]] = {
    "gsm8k-socratic": import_gsm8k_socratic,
    "strategyqa": import_strategyqa,
    "openai-chat": import_openai_chat,
}
"""Importer by name, as ``divconq import NAME PATH`` takes it."""
