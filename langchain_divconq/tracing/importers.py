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
* :func:`import_langsmith_runs`: LangChain/LangSmith run trees (``Run`` objects as
  JSON, e.g. from ``RunCollectorCallbackHandler`` or a LangSmith export), each
  DivConqChain run rebuilt as :class:`TraceRecorder` would have recorded it.

Imported trace ids are derived from the source line, so importing a file twice
adds nothing the second time. The way back out (traces to fine-tuning files) is
:mod:`langchain_divconq.training.exporters`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from langchain_core.messages import (
    BaseMessage,
    convert_to_messages,
    convert_to_openai_messages,
    messages_from_dict,
)
from langchain_core.outputs import ChatGeneration, Generation, LLMResult

from langchain_divconq.jsonl import iter_lines
from langchain_divconq.prompts import (
    ANSWER_MARKER,
    NODE_METADATA_KEY,
    extract_answer,
    parse_sub_questions,
)
from langchain_divconq.tasks.math import parse_number
from langchain_divconq.tracing.recorder import _content_text as _recorder_content_text
from langchain_divconq.tracing.recorder import _model_name as _recorder_model_name
from langchain_divconq.tracing.recorder import _output_text as _recorder_output_text
from langchain_divconq.tracing.recorder import _response_model as _recorder_response_model
from langchain_divconq.tracing.recorder import _response_text as _recorder_response_text
from langchain_divconq.tracing.recorder import chain_trace, scrub_secrets, scrub_trace
from langchain_divconq.tracing.scoring import score_trace
from langchain_divconq.tracing.trace import NodeCall, TokenUsage, Trace
from langchain_divconq.tracing.usage import estimate_tokens, reported_usage

__all__ = [
    "IMPORTERS",
    "import_gsm8k_socratic",
    "import_langsmith_runs",
    "import_openai_chat",
    "import_strategyqa",
]

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


# ------------------------------------------------------------------ LangChain / LangSmith runs
_RUN_TYPES_WITH_MODEL_OUTPUT = ("llm", "chat_model")
_BUFFER_ROLE = re.compile(r"^(System|Human|AI|Tool|Function): ", re.MULTILINE)
_BUFFER_ROLES = {
    "System": "system",
    "Human": "user",
    "AI": "assistant",
    "Tool": "tool",
    "Function": "function",
}
_LC_MESSAGE_TYPES = {
    "SystemMessage": "system",
    "HumanMessage": "human",
    "AIMessage": "ai",
    "AIMessageChunk": "AIMessageChunk",
    "ToolMessage": "tool",
    "ChatMessage": "chat",
    "FunctionMessage": "function",
}


def _load_runs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read Run objects from JSON (a list, or one object) or JSONL (one run per line)."""
    file = Path(path)
    if not file.is_file():
        msg = f"No such file to import: {file}. Pass a JSON or JSONL file of LangChain runs."
        raise FileNotFoundError(msg)
    text = file.read_text(encoding="utf-8")
    data: Any = None
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if text.lstrip().startswith("["):
                msg = f"{file} is not valid JSON ({exc}); is the file truncated?"
                raise ValueError(msg) from exc
    if data is None:
        data = [row for _, _, row in _rows(file, None)]
    runs = data if isinstance(data, list) else [data]
    flat: list[dict[str, Any]] = []

    def add(run: Any, parent: str | None, where: str) -> None:
        if not isinstance(run, dict) or "id" not in run:
            got = sorted(run) if isinstance(run, dict) else type(run).__name__
            msg = (
                f"{where} is not a run (expected a LangChain/LangSmith Run object with an "
                f"'id', as Run.model_dump() writes it; got {got})."
            )
            raise ValueError(msg)
        run = dict(run)
        if parent is not None and not run.get("parent_run_id"):
            run["parent_run_id"] = parent
        flat.append(run)
        for i, child in enumerate(run.pop("child_runs", None) or []):
            add(child, str(run["id"]), f"{where} child {i}")

    for i, run in enumerate(runs):
        add(run, None, f"{file} run {i}")
    return flat


def _extra_metadata(run: dict[str, Any]) -> dict[str, Any]:
    extra = run.get("extra") or {}
    metadata = extra.get("metadata") if isinstance(extra, dict) else None
    if not isinstance(metadata, dict):
        metadata = run.get("metadata")
    return dict(metadata) if isinstance(metadata, dict) else {}


def _node_label(run: dict[str, Any], parent: dict[str, Any] | None) -> str | None:
    label = _extra_metadata(run).get(NODE_METADATA_KEY)
    if isinstance(label, str):
        return label
    name = run.get("name")
    if name in ("decomposer", "solver") and parent is not None and _is_root(parent, []):
        return str(name)
    return None


def _is_root(run: dict[str, Any], children: list[dict[str, Any]]) -> bool:
    label = _extra_metadata(run).get(NODE_METADATA_KEY)
    if label is not None:
        return label == "chain"
    return any(child.get("name") in ("decomposer", "solver") for child in children)


def _error_from_run(text: Any) -> str | None:
    """``Type: message`` from a run's error (``repr(error)`` followed by the traceback)."""
    if not text:
        return None
    text = str(text)
    head = text.split("Traceback (most recent call last):", 1)[0].strip()
    match = re.fullmatch(r"([A-Za-z_][\w.]*)\((.*)\)", head, re.DOTALL)
    if match:
        try:
            value = ast.literal_eval(match.group(2)) if match.group(2) else ""
        except (ValueError, SyntaxError):
            value = None
        if value is not None:
            return f"{match.group(1).rsplit('.', 1)[-1]}: {value}"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def _lc_message(data: Any) -> BaseMessage | None:
    if isinstance(data, BaseMessage):
        return data
    if not isinstance(data, dict):
        return None
    if data.get("lc") == 1 and isinstance(data.get("kwargs"), dict):
        kind = _LC_MESSAGE_TYPES.get(str((data.get("id") or [""])[-1]))
        kwargs = dict(data["kwargs"])
        kind = kind or kwargs.get("type")
        if not kind:
            return None
        kwargs.pop("type", None)
        return messages_from_dict([{"type": kind, "data": kwargs}])[0]
    if "role" in data or "type" in data:
        try:
            return convert_to_messages([data])[0]
        except (ValueError, NotImplementedError, KeyError):
            return None
    return None


def _buffer_messages(prompt: str) -> list[dict[str, Any]]:
    """Split a ``get_buffer_string`` prompt (``System: ...\nHuman: ...``) into messages."""
    starts = list(_BUFFER_ROLE.finditer(prompt))
    if not starts or starts[0].start() != 0:
        return [{"role": "user", "content": prompt}]
    messages = []
    for match, after in zip(starts, [*starts[1:], None], strict=True):
        end = after.start() - 1 if after is not None else len(prompt)
        content = prompt[match.end() : max(end, match.end())]
        messages.append({"role": _BUFFER_ROLES[match.group(1)], "content": content})
    return messages


def _run_messages(run: dict[str, Any]) -> list[dict[str, Any]]:
    inputs = run.get("inputs") or {}
    batches = inputs.get("messages")
    if isinstance(batches, list) and batches:
        prompt = batches[0] if isinstance(batches[0], list) else batches
        messages = [m for m in (_lc_message(item) for item in prompt) if m is not None]
        return [dict(m) for m in convert_to_openai_messages(messages)]
    prompts = inputs.get("prompts")
    if isinstance(prompts, list) and prompts:
        return _buffer_messages(str(prompts[0]))
    return []


def _run_result(run: dict[str, Any]) -> LLMResult | None:
    outputs = run.get("outputs") or {}
    generations = outputs.get("generations")
    if not isinstance(generations, list):
        return None
    rows: list[list[Generation]] = []
    for batch in generations:
        row: list[Generation] = []
        for item in batch if isinstance(batch, list) else [batch]:
            if not isinstance(item, dict):
                continue
            message = _lc_message(item.get("message"))
            info = item.get("generation_info")
            if message is not None:
                row.append(ChatGeneration(message=message, generation_info=info))
            else:
                row.append(Generation(text=str(item.get("text") or ""), generation_info=info))
        rows.append(row)
    llm_output = outputs.get("llm_output")
    return LLMResult(
        generations=rows, llm_output=llm_output if isinstance(llm_output, dict) else None
    )


def _seconds(run: dict[str, Any]) -> float | None:
    try:
        start = datetime.fromisoformat(str(run["start_time"]))
        end = datetime.fromisoformat(str(run["end_time"]))
    except (KeyError, TypeError, ValueError):
        return None
    return max((end - start).total_seconds(), 0.0)


def _node_call(node: dict[str, Any], calls: list[dict[str, Any]]) -> NodeCall:
    """Rebuild a node's call as :class:`TraceRecorder` records it (the last model call wins)."""
    messages: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    model_name: str | None = None
    llm_output: str | None = None
    usage: TokenUsage | None = None
    for call in calls:
        extra = call.get("extra") or {}
        invocation = extra.get("invocation_params") if isinstance(extra, dict) else None
        invocation = invocation if isinstance(invocation, dict) else {}
        messages = _run_messages(call)
        params = scrub_secrets(invocation)
        name = _recorder_model_name(_extra_metadata(call), invocation)
        model_name = name or model_name
        response = _run_result(call)
        if response is None:
            continue
        text = _recorder_response_text(response)
        found = reported_usage(response)
        if found is None:
            prompt = "\n".join(_recorder_content_text(m.get("content")) for m in messages)
            inputs, outputs = estimate_tokens(prompt), estimate_tokens(text)
            found = TokenUsage(
                input_tokens=inputs,
                output_tokens=outputs,
                total_tokens=inputs + outputs,
                estimated=True,
            )
        llm_output = text
        usage = found if usage is None else _added(usage, found)
        if name is None:
            model_name = model_name or _recorder_response_model(response)
    output: str | None = None
    error = _error_from_run(node.get("error"))
    if node.get("run_type") in _RUN_TYPES_WITH_MODEL_OUTPUT:
        output = llm_output if not error else None
    elif not error and node.get("outputs") is not None:
        output = _recorder_output_text(node.get("outputs"))
    return NodeCall(
        model_name=model_name,
        messages=messages,
        output=output if output is not None else llm_output,
        usage=usage,
        latency_s=_seconds(node),
        error=error,
        run_id=str(node["id"]),
        params=params,
    )


def _added(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    return TokenUsage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        total_tokens=a.total_tokens + b.total_tokens,
        estimated=a.estimated or b.estimated,
    )


def import_langsmith_runs(
    path: str | os.PathLike[str], *, limit: int | None = None
) -> Iterator[Trace]:
    """Read LangChain/LangSmith run trees (``Run`` objects as JSON) as traces.

    Users who already trace with LangSmith (or collect runs with
    ``langchain_core.tracers.run_collector.RunCollectorCallbackHandler``) can
    distill from what they have. The file holds runs as ``Run.model_dump()``
    writes them: one per line (JSONL), or a JSON list (or one object). Child runs
    may be nested (``child_runs``) or flat, linked by ``parent_run_id`` (a
    LangSmith export). Every :class:`~langchain_divconq.chain.DivConqChain` run in
    it (the run whose metadata has ``divconq_node="chain"``, or, without that
    metadata, a run with child runs named ``decomposer``/``solver``), wherever it
    is nested, becomes one trace, built as :class:`TraceRecorder` builds it: the
    question, context, sub-questions, solution and answer from the chain run's
    inputs and outputs, and per node the model's messages, output, parameters,
    usage and error. ``reference`` in the run's metadata is the gold answer and
    scores the trace. Prompts recorded as text (``System: ...\nHuman: ...``, by
    tracers without the chat schema) are split back into messages. Trace ids
    derive from the run ids, so importing a file twice adds nothing the second
    time; ``source`` is ``langsmith-runs``; secrets are scrubbed as the recorder does.

    Args:
        path: The JSON or JSONL file.
        limit: Yield at most this many traces.

    Raises:
        ValueError: A line is not valid JSON or not a run, or no chain run is found.

    Example:
        .. code-block:: python

            collector = RunCollectorCallbackHandler()
            chain.invoke("Q?", {"callbacks": [collector]})
            runs, todo = [], list(collector.traced_runs)
            while todo:  # every run, flat, linked by parent_run_id
                run = todo.pop()
                runs.append(run.model_dump(mode="json"))
                todo.extend(run.child_runs)
            Path("runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
            traces = list(import_langsmith_runs("runs.jsonl"))

    """
    if limit is not None and limit < 0:
        msg = f"limit must be >= 0 or None, got {limit}."
        raise ValueError(msg)
    runs = _load_runs(path)
    by_id = {str(run["id"]): run for run in runs}
    children: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        parent = run.get("parent_run_id")
        if parent is not None:
            children.setdefault(str(parent), []).append(run)
    for kids in children.values():
        kids.sort(key=lambda r: (str(r.get("dotted_order") or ""), str(r.get("start_time") or "")))
    roots = [run for run in runs if _is_root(run, children.get(str(run["id"]), []))]
    if not roots:
        names = sorted({str(run.get("name")) for run in runs})[:10]
        noun = "run" if len(runs) == 1 else "runs"
        msg = (
            f"{path}: no DivConqChain run found among {len(runs)} {noun} (names: {names}). "
            f"A chain run has metadata {NODE_METADATA_KEY}='chain' or child runs named "
            "'decomposer' and 'solver'; export the runs of a DivConqChain."
        )
        raise ValueError(msg)
    roots.sort(key=lambda r: str(r.get("start_time") or ""))
    for count, root in enumerate(roots):
        if limit is not None and count >= limit:
            return
        yield _trace_from_root(root, children, by_id)


def _trace_from_root(
    root: dict[str, Any],
    children: dict[str, list[dict[str, Any]]],
    by_id: dict[str, dict[str, Any]],
) -> Trace:
    nodes: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}

    def visit(run: dict[str, Any], parent: dict[str, Any], node: str | None) -> None:
        label = _node_label(run, parent)
        if label == "chain":
            return  # another chain run nested inside: it is a trace of its own
        if label in ("decomposer", "solver"):
            node = label
            nodes[label] = (run, [])
        if node is not None and run.get("run_type") in _RUN_TYPES_WITH_MODEL_OUTPUT:
            nodes[node][1].append(run)
        for child in children.get(str(run["id"]), []):
            visit(child, run, node)

    for child in children.get(str(root["id"]), []):
        visit(child, root, None)
    calls = {name: _node_call(run, llms) for name, (run, llms) in nodes.items()}
    created = root.get("start_time")
    trace = chain_trace(
        root.get("inputs") or {},
        root.get("outputs"),
        _extra_metadata(root),
        root.get("tags") or [],
        decomposer=calls.get("decomposer"),
        solver=calls.get("solver"),
        error=_error_from_run(root.get("error")),
        run_id=str(root["id"]),
        trace_id=_trace_id("langsmith-runs", str(root["id"])),
        source="langsmith-runs",
        **({"created_at": created} if created else {}),
    )
    if trace.reference is not None:
        trace.score = score_trace(trace)
    return scrub_trace(trace)


IMPORTERS: dict[str, Callable[..., Iterator[Trace]]] = {
    "gsm8k-socratic": import_gsm8k_socratic,
    "strategyqa": import_strategyqa,
    "openai-chat": import_openai_chat,
    "langsmith-runs": import_langsmith_runs,
}
"""Importer by name, as ``divconq import NAME PATH`` takes it."""
