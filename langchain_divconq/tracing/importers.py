"""Import gold decompositions, chat logs and LangSmith runs as traces.

Importers turn public data into :class:`~langchain_divconq.trace.Trace` records,
so gold and recorded traces feed the same training code:

* :func:`import_gsm8k_socratic`: GSM8K Socratic files, where each solution step
  is ``sub-question ** step``; the sub-questions are the gold decomposition
  and the steps (calculator annotations removed) become the solver text.
* :func:`import_strategyqa`: StrategyQA's ``decomposition`` field; the facts
  become the solver text and the boolean answer ``yes``/``no``.
* :func:`import_openai_chat`: OpenAI chat-format JSONL (``{"messages": [...]}``),
  including what :func:`export_openai_jsonl` writes.
* :func:`import_langsmith_runs` (from :mod:`~.tracing.langsmith_import`):
  LangChain/LangSmith run trees (``Run`` objects as JSON, e.g. from
  ``RunCollectorCallbackHandler`` or a LangSmith export), each DivConqChain run
  rebuilt as :class:`TraceRecorder` would have recorded it.

One bad record never costs the good ones: every importer takes ``skipped=[]``
to import the good records and note each bad one there as a
:class:`~.tracing.import_results.BadRecord` (``line 7``, 1-based, in JSONL;
``run 3 (index 2)`` in a JSON array); without it, the first bad record raises
:class:`~.tracing.import_results.BadRecordError` (a ``ValueError``), as before.
:func:`import_file` (what ``divconq import`` runs) imports a file into a store
and returns an :class:`~.tracing.import_results.ImportResult`.

Imported trace ids are derived from the source line, so importing a file twice
adds nothing the second time. The way back out (traces to fine-tuning files) is
:mod:`langchain_divconq.training.exporters`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from langchain_divconq.prompts import ANSWER_MARKER, extract_answer, parse_sub_questions
from langchain_divconq.tasks.math import parse_number
from langchain_divconq.tracing.import_results import (
    BadRecord,
    BadRecordError,
    ImportResult,
    check_limit,
    in_file_order,
    jsonl_records,
    reject,
    trace_id,
)
from langchain_divconq.tracing.langsmith_import import DUMP_HINT, import_langsmith_runs
from langchain_divconq.tracing.recorder import scrub_secrets
from langchain_divconq.tracing.scoring import score_trace
from langchain_divconq.tracing.store import TraceStore, open_store
from langchain_divconq.tracing.trace import NodeCall, Trace

__all__ = [
    "DUMP_HINT",
    "IMPORTERS",
    "BadRecord",
    "BadRecordError",
    "ImportResult",
    "import_file",
    "import_gsm8k_socratic",
    "import_langsmith_runs",
    "import_openai_chat",
    "import_strategyqa",
]

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_UNLIMITED = 10_000
_WRITE_BATCH = 1000


class _RecordError(ValueError):
    """What is wrong with one record (its place is added by :func:`_records`)."""


def _records(
    path: str | os.PathLike[str],
    limit: int | None,
    skipped: list[BadRecord] | None,
    convert: Callable[[int, str, Any], Trace],
) -> Iterator[Trace]:
    """Convert each JSONL record to a trace; reject (stop at or skip) the bad ones."""
    for number, raw, row in jsonl_records(path, limit, skipped):
        try:
            trace = convert(number, raw, row)
        except _RecordError as exc:
            reject(path, BadRecord.at_line(number, str(exc)), skipped)
            continue
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Data of an unexpected shape (a number where a list belongs...).
            message = f"{type(exc).__name__}: {exc}"
            reject(path, BadRecord.at_line(number, message), skipped)
            continue
        yield trace


def _require(row: Any, keys: tuple[str, ...], kind: str) -> None:
    if not isinstance(row, dict) or any(key not in row for key in keys):
        got = sorted(row)[:12] if isinstance(row, dict) else type(row).__name__
        msg = f"a {kind} record needs the keys {list(keys)}, got {got}."
        raise _RecordError(msg)


def _number_text(text: str) -> str:
    value = parse_number(text)
    if value is None:
        return text.strip()
    return str(int(value)) if value == int(value) else repr(value)


def _clean_step(step: str) -> str:
    return " ".join(_CALCULATOR.sub("", step).split())


def import_gsm8k_socratic(
    path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    skipped: list[BadRecord] | None = None,
) -> Iterator[Trace]:
    """Read a GSM8K Socratic file as gold traces.

    Every ``sub-question ** step`` line gives one sub-question (all are kept;
    the training side caps them) and one numbered step of the solver text, which
    ends with ``The answer is: N``. Calculator annotations such as
    ``<<48/2=24>>`` are removed. ``reference`` and ``answer`` are ``N`` (commas
    dropped), ``score`` is 1.0 and ``source`` is ``gsm8k-socratic``.

    Args:
        path: A ``*_socratic.jsonl`` file (``question``, ``answer`` fields).
        limit: Read at most this many records (bad ones included).
        skipped: Without it, the first bad record raises
            :class:`~.tracing.import_results.BadRecordError` (a ``ValueError``). With a
            list, bad records are skipped, each appended to it as a ``BadRecord``
            (``line 7: ...``), and every good one is imported.

    Yields:
        One trace per question, in file order.

    Raises:
        BadRecordError: A bad record, when ``skipped`` is None.
        FileNotFoundError: No such file.

    Example:
        >>> traces = import_gsm8k_socratic("../shared/data/gsm8k/train_socratic.jsonl", limit=1)
        >>> next(traces).sub_questions[0]  # doctest: +SKIP
        'How many clips did Natalia sell in May?'

    """

    def convert(number: int, raw: str, row: Any) -> Trace:
        _require(row, ("question", "answer"), "GSM8K Socratic")
        text = str(row["answer"])
        if "####" not in text:
            msg = "the answer has no final '#### N' line; is this a GSM8K file?"
            raise _RecordError(msg)
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
        return Trace(
            trace_id=trace_id("gsm8k-socratic", raw),
            source="gsm8k-socratic",
            question=str(row["question"]).strip(),
            reference=reference,
            sub_questions=sub_questions,
            solution=solution,
            answer=reference,
            score=1.0,
            metadata={"file": Path(path).name, "line": number},
        )

    return _records(path, limit, skipped, convert)


def import_strategyqa(
    path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    skipped: list[BadRecord] | None = None,
) -> Iterator[Trace]:
    """Read a StrategyQA file as gold traces.

    ``decomposition`` gives the sub-questions; the ``facts`` (when present) and
    ``The answer is: yes|no`` make the solver text; the boolean ``answer`` becomes
    ``reference`` and ``answer`` (``yes``/``no``). ``source`` is ``strategyqa``.

    Args:
        path: A StrategyQA JSONL file (``question``, ``answer``, ``decomposition``).
        limit: Read at most this many records (bad ones included).
        skipped: Without it, the first bad record raises
            :class:`~.tracing.import_results.BadRecordError` (a ``ValueError``). With a
            list, bad records are skipped, each appended to it as a ``BadRecord``
            (``line 7: ...``), and every good one is imported.

    Example:
        >>> next(import_strategyqa("../shared/data/strategyqa/dev.jsonl")).answer  # doctest: +SKIP
        'no'

    """

    def convert(number: int, raw: str, row: Any) -> Trace:
        _require(row, ("question", "answer", "decomposition"), "StrategyQA")
        answer = row["answer"]
        if isinstance(answer, str) and answer.strip().lower() in {"yes", "no", "true", "false"}:
            answer = answer.strip().lower() in {"yes", "true"}
        if not isinstance(answer, bool):
            msg = f"'answer' must be a boolean (or yes/no), got {answer!r}."
            raise _RecordError(msg)
        reference = "yes" if answer else "no"
        facts = [" ".join(str(f).split()) for f in row.get("facts") or [] if str(f).strip()]
        solution = "\n".join([*facts, f"{ANSWER_MARKER} {reference}"])
        metadata: dict[str, Any] = {"file": Path(path).name, "line": number}
        if row.get("id"):
            metadata["id"] = str(row["id"])
        if not isinstance(row["decomposition"], list):
            msg = f"'decomposition' must be a list of sub-questions, got {row['decomposition']!r}."
            raise _RecordError(msg)
        return Trace(
            trace_id=trace_id("strategyqa", raw),
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

    return _records(path, limit, skipped, convert)


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
    skipped: list[BadRecord] | None = None,
) -> Iterator[Trace]:
    """Read OpenAI chat-format JSONL (``{"messages": [...]}`` per line) as traces.

    The last assistant message is the model's output and the messages before it
    its prompt; the last user message gives the question (and passage and
    sub-questions when it is in this library's prompt format). With
    ``node="auto"``, an output that has the answer marker is a solver call, any
    other a decomposer call. Optional ``reference`` and ``metadata`` keys on a
    line are kept. ``source`` is ``openai-chat``.

    Args:
        path: The JSONL file.
        node: Which node's call each line is, or ``auto`` (by the answer marker).
        limit: Read at most this many records (bad ones included).
        skipped: Without it, the first bad record raises
            :class:`~.tracing.import_results.BadRecordError` (a ``ValueError``). With a
            list, bad records are skipped, each appended to it as a ``BadRecord``
            (``line 7: ...``), and every good one is imported.

    Example:
        >>> traces = list(import_openai_chat("decomposer_ft.jsonl"))  # doctest: +SKIP

    """
    if node not in ("auto", "decomposer", "solver"):
        msg = f"node must be 'auto', 'decomposer' or 'solver', got {node!r}."
        raise ValueError(msg)

    def convert(number: int, raw: str, row: Any) -> Trace:
        _require(row, ("messages",), "chat")
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m for m in messages
        ):
            msg = "'messages' must be a list of {'role', 'content'} objects."
            raise _RecordError(msg)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        users = [m for m in messages[: last or 0] if m["role"] == "user"]
        if last is None or not users:
            msg = "a chat record needs a user message followed by an assistant reply."
            raise _RecordError(msg)
        output = _content_text(messages[last].get("content"))
        question, context, listed = _read_user_block(_content_text(users[-1].get("content")))
        kind = node
        if kind == "auto":
            kind = "solver" if extract_answer(output) is not None else "decomposer"
        call = NodeCall(messages=messages[:last], output=output)
        reference = row.get("reference")
        metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        trace = Trace(
            trace_id=trace_id("openai-chat", raw),
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
        return trace

    return _records(path, limit, skipped, convert)


def import_file(
    importer: str,
    path: str | os.PathLike[str],
    store: TraceStore | str | os.PathLike[str],
    *,
    limit: int | None = None,
    strict: bool = False,
) -> ImportResult:
    """Import a file into a trace store: what ``divconq import IMPORTER PATH`` runs.

    Good records are written (traces already in the store, or earlier in the
    file, are counted as duplicates and not written again); bad ones are skipped
    and listed in the result, located by 1-based line (JSONL) or ``run 3 (index 2)``
    (JSON array).

    The rule for ``strict=True``: a file imports whole or not at all. The first
    bad record stops the import and *nothing* is written, not even the good
    records before it, so a fixed file can simply be imported again. (Without
    ``strict``, the good records are written in batches as they are read.)

    Args:
        importer: A key of :data:`IMPORTERS` (``gsm8k-socratic``, ``langsmith-runs``, ...).
        path: The file to import.
        store: A trace store, or its spec (``traces.jsonl``, ``sqlite:///traces.db``),
            which is opened (created if missing) and closed again.
        limit: Passed to the importer (records to read; traces for ``langsmith-runs``).
        strict: Stop at the first bad record and write nothing.

    Returns:
        The counts and the bad records; ``result.ok`` is False when any record was bad.

    Raises:
        ValueError: An unknown importer, or a file with nothing to import at all (e.g.
            no chain run in ``langsmith-runs``).
        FileNotFoundError: No such file.

    Example:
        >>> result = import_file("gsm8k-socratic", "socratic.jsonl", "t.jsonl")  # doctest: +SKIP
        >>> result.summary()  # doctest: +SKIP
        'imported 7472, skipped 1 (line 12: not valid JSON (...))'

    """
    if importer not in IMPORTERS:
        msg = f"Unknown importer {importer!r}; pick one of {sorted(IMPORTERS)}."
        raise ValueError(msg)
    check_limit(limit)
    target = store if isinstance(store, TraceStore) else open_store(store)
    try:
        return _import_into(IMPORTERS[importer], path, target, limit=limit, strict=strict)
    finally:
        if target is not store:
            target.close()


def _import_into(
    read: Callable[..., Iterator[Trace]],
    path: str | os.PathLike[str],
    store: TraceStore,
    *,
    limit: int | None,
    strict: bool,
) -> ImportResult:
    result = ImportResult(path=os.fspath(path))
    errors: list[BadRecord] | None = None if strict else []
    known = store.trace_ids()
    batch: list[Trace] = []
    try:
        for trace in read(path, limit=limit, skipped=errors):
            if trace.trace_id in known:
                result.duplicates += 1
                continue
            known.add(trace.trace_id)
            batch.append(trace)
            if not strict and len(batch) >= _WRITE_BATCH:
                result.imported += store.add_many(batch)
                batch = []
    except BadRecordError as exc:  # strict: nothing of this file is written
        return ImportResult(path=result.path, errors=[exc.record], stopped=True)
    result.imported += store.add_many(batch)
    result.errors = in_file_order(errors or [])
    return result


IMPORTERS: dict[str, Callable[..., Iterator[Trace]]] = {
    "gsm8k-socratic": import_gsm8k_socratic,
    "strategyqa": import_strategyqa,
    "openai-chat": import_openai_chat,
    "langsmith-runs": import_langsmith_runs,
}
"""Importer by name, as ``divconq import NAME PATH`` takes it (each takes limit, skipped)."""
