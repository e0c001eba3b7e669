"""Import LangChain/LangSmith run trees (``Run`` objects as JSON) as traces.

:func:`import_langsmith_runs` rebuilds every
:class:`~langchain_divconq.chain.DivConqChain` run of a dump the way
:class:`~langchain_divconq.tracing.TraceRecorder` records it. Re-exported by
:mod:`langchain_divconq.tracing.importers`, where the other importers live.

A dump must hold the node runs, not only the chain run: ``Run.model_dump()``,
``.dict()`` and ``.model_dump_json()`` leave ``child_runs`` out (the schema
excludes that field), so a chain run written that way arrives without its
decomposer and solver. Such a run is a bad record whose message says how to
dump every run (:data:`DUMP_HINT`).
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from langchain_core.messages import (
    BaseMessage,
    convert_to_messages,
    convert_to_openai_messages,
    messages_from_dict,
)
from langchain_core.outputs import ChatGeneration, Generation, LLMResult

from langchain_divconq.prompts import NODE_METADATA_KEY
from langchain_divconq.tracing.import_results import (
    BadRecord,
    check_limit,
    in_file_order,
    jsonl_records,
    reject,
    trace_id,
)
from langchain_divconq.tracing.recorder import _call_usage as _recorder_call_usage
from langchain_divconq.tracing.recorder import _model_name as _recorder_model_name
from langchain_divconq.tracing.recorder import _output_text as _recorder_output_text
from langchain_divconq.tracing.recorder import _response_model as _recorder_response_model
from langchain_divconq.tracing.recorder import _response_text as _recorder_response_text
from langchain_divconq.tracing.recorder import chain_trace, scrub_secrets, scrub_trace
from langchain_divconq.tracing.scoring import score_trace
from langchain_divconq.tracing.trace import NodeCall, TokenUsage, Trace

__all__ = ["DUMP_HINT", "import_langsmith_runs"]

DUMP_HINT = (
    "Run.model_dump(), .dict() and .model_dump_json() leave out child_runs (the Run schema "
    "excludes that field), so write every run of the tree, one per line, e.g. "
    "`def dump(run): return [run.model_dump(mode='json'), *(r for c in run.child_runs "
    "for r in dump(c))]` and `json.dumps(r)` for each r in dump(root) (see 'Importing "
    "LangSmith runs' in the README); from LangSmith, export every run of each trace, not "
    "only the root runs."
)
"""How to dump runs with their child runs: the hint of a chain run that arrives without them."""

_NODES = ("decomposer", "solver")
_Place = BadRecord  # a record's location; its message is filled in when it is rejected


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


class _Runs:
    """The runs of a dump, flat, with the record (line or array element) each came from."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.place: dict[str, _Place] = {}
        self.nested = False  # some record held its child runs inline

    def add_record(self, value: Any, place: _Place) -> str | None:
        """Flatten one record (a run, maybe with ``child_runs``); return why it is bad."""
        flat: list[dict[str, Any]] = []

        def add(run: Any, parent: str | None, trail: str) -> str | None:
            if not isinstance(run, dict) or "id" not in run:
                got = sorted(run)[:12] if isinstance(run, dict) else type(run).__name__
                what = "it is" if not trail else f"its child run {trail} is"
                return (
                    f"{what} not a run (expected a LangChain/LangSmith Run object with an "
                    f"'id', as Run.model_dump() writes it; got {got})"
                )
            run = dict(run)
            if parent is not None and not run.get("parent_run_id"):
                run["parent_run_id"] = parent
            kids = run.pop("child_runs", None) or []
            if not isinstance(kids, list):
                return f"'child_runs' must be a list of runs, got {type(kids).__name__}"
            flat.append(run)
            for i, child in enumerate(kids):
                why = add(child, str(run["id"]), f"{trail}child_runs[{i}]")
                if why is not None:
                    return why
            return None

        why = add(value, None, "")
        if why is None:
            self.nested = self.nested or len(flat) > 1
            self.runs.extend(flat)
            for run in flat:
                self.place[str(run["id"])] = place
        return why


def _json_array(
    path: Path, text: str, skipped: list[BadRecord] | None
) -> Iterator[tuple[Any, _Place]]:
    """Yield the elements of a JSON array; a broken one ends it (the file is cut there)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        for index, value in enumerate(data):
            yield value, BadRecord.at_index(index, "")
        return
    # Not valid JSON: keep the whole elements before the break (a cut-off download).
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    index = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text) and text[pos] == "]" and index == 0:
            return
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            message = (
                f"not valid JSON ({exc}); the file is cut or broken here, so nothing after "
                "it could be read"
            )
            reject(path, BadRecord.at_index(index, message), skipped)
            return
        yield value, BadRecord.at_index(index, "")
        index += 1
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            return
        found = repr(text[pos : pos + 20]) if pos < len(text) else "the end of the file"
        message = f"expected ',' or ']' before it, found {found}; is the file cut off?"
        reject(path, BadRecord.at_index(index, message), skipped)
        return


def _load_runs(path: str | os.PathLike[str], skipped: list[BadRecord] | None) -> _Runs:
    """Read Run objects from JSON (an array, or one object) or JSONL (one run per line)."""
    file = Path(path)
    if not file.is_file():
        msg = f"No such file to import: {file}. Pass a JSON or JSONL file of LangChain runs."
        raise FileNotFoundError(msg)
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = ""  # read line by line below, where each bad line is a bad record
        if data.lstrip().startswith(b"["):
            msg = f"{file} is not UTF-8 text ({exc}); export the runs as UTF-8 JSON."
            raise ValueError(msg) from exc
    body = text.lstrip()
    loaded = _Runs()
    records: Iterator[tuple[Any, _Place]]
    if body.startswith("["):
        records = _json_array(file, text, skipped)
    else:
        records = iter(())
        single: Any = None
        if body.startswith("{"):
            try:
                single = json.loads(text)
            except json.JSONDecodeError:
                single = None  # JSONL: one run per line
        if single is not None:
            line = text[: len(text) - len(body)].count("\n") + 1
            records = iter([(single, BadRecord.at_line(line, ""))])
        else:
            records = _jsonl_runs(file, skipped)
    for value, place in records:
        why = loaded.add_record(value, place)
        if why is not None:
            reject(file, place.with_message(why), skipped)
    return loaded


def _jsonl_runs(file: Path, skipped: list[BadRecord] | None) -> Iterator[tuple[Any, _Place]]:
    for number, _, row in jsonl_records(file, None, skipped):
        yield row, BadRecord.at_line(number, "")


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
    if name in _NODES and parent is not None and _is_root(parent, []):
        return str(name)
    return None


def _is_root(run: dict[str, Any], children: list[dict[str, Any]]) -> bool:
    label = _extra_metadata(run).get(NODE_METADATA_KEY)
    if label is not None:
        return label == "chain"
    return any(child.get("name") in _NODES for child in children)


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
        found = _recorder_call_usage(response, messages, text)
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
    path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    skipped: list[BadRecord] | None = None,
) -> Iterator[Trace]:
    """Read LangChain/LangSmith run trees (``Run`` objects as JSON) as traces.

    Users who already trace with LangSmith (or collect runs with
    ``langchain_core.tracers.run_collector.RunCollectorCallbackHandler``) can
    distill from what they have. The file holds runs as ``Run.model_dump()``
    writes them: one per line (JSONL), or a JSON array (or one object). Child runs
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

    A record is a line of a JSONL file (``line 7``, 1-based) or an element of a
    JSON array (``run 3 (index 2)``). Bad records: a line that is not JSON, a
    record that is not a run, and a chain run with no decomposer or solver run
    under it (its dump lost its child runs: ``Run.model_dump()`` leaves them out,
    see :data:`DUMP_HINT`; a chain run that failed before its nodes ran is kept).

    Args:
        path: The JSON or JSONL file.
        limit: Yield at most this many traces.
        skipped: Without it, the first bad record raises :class:`BadRecordError`.
            With a list, bad records are skipped and each is appended to it as a
            :class:`BadRecord`, and every good chain run is imported.

    Raises:
        BadRecordError: A bad record, when ``skipped`` is None (a ``ValueError``).
        ValueError: The file holds no chain run at all.
        FileNotFoundError: No such file.

    Example:
        .. code-block:: python

            collector = RunCollectorCallbackHandler()
            chain.invoke("Q?", {"callbacks": [collector]})


            def dump(run):  # child_runs is left out of model_dump(): walk the tree
                return [run.model_dump(mode="json"), *(r for c in run.child_runs for r in dump(c))]


            with open("runs.jsonl", "w") as f:
                for root in collector.traced_runs:
                    f.writelines(json.dumps(r) + "\n" for r in dump(root))
            traces = list(import_langsmith_runs("runs.jsonl"))

    """
    check_limit(limit)
    errors: list[BadRecord] | None = None if skipped is None else []
    loaded = _load_runs(path, errors)
    runs = loaded.runs
    children: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        parent = run.get("parent_run_id")
        if parent is not None:
            children.setdefault(str(parent), []).append(run)
    for kids in children.values():
        kids.sort(key=lambda r: (str(r.get("dotted_order") or ""), str(r.get("start_time") or "")))
    roots = [run for run in runs if _is_root(run, children.get(str(run["id"]), []))]
    if not roots:
        if skipped is not None and errors:
            skipped.extend(in_file_order(errors))
        raise ValueError(_no_chain_message(path, runs, bool(children), errors or []))
    roots.sort(key=lambda r: str(r.get("start_time") or ""))
    try:
        yield from _root_traces(path, roots, children, loaded.place, limit, errors)
    finally:  # also when the caller stops early: it still learns what was bad so far
        if skipped is not None and errors:
            skipped.extend(in_file_order(errors))


def _root_traces(
    path: str | os.PathLike[str],
    roots: list[dict[str, Any]],
    children: dict[str, list[dict[str, Any]]],
    places: dict[str, _Place],
    limit: int | None,
    errors: list[BadRecord] | None,
) -> Iterator[Trace]:
    count = 0
    for root in roots:
        if limit is not None and count >= limit:
            return
        place = places[str(root["id"])]
        nodes = _node_runs(root, children)
        if not nodes and not (root.get("error") and not root.get("outputs")):
            name, run_id = root.get("name"), root["id"]
            message = (
                f"the DivConqChain run {name!r} ({run_id}) has no decomposer or solver run "
                "under it: the dump lost its child runs"
            )
            reject(path, place.with_message(message, DUMP_HINT), errors)
            continue
        try:
            trace = _trace_from_root(root, nodes)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            message = f"the chain run {root['id']} could not be read ({type(exc).__name__}: {exc})"
            reject(path, place.with_message(message), errors)
            continue
        count += 1
        yield trace


def _no_chain_message(
    path: str | os.PathLike[str], runs: list[dict[str, Any]], linked: bool, bad: list[BadRecord]
) -> str:
    names = sorted({str(run.get("name")) for run in runs})[:10]
    noun = "run" if len(runs) == 1 else "runs"
    msg = (
        f"{os.fspath(path)}: no DivConqChain run found among {len(runs)} {noun} (names: "
        f"{names}). A chain run has metadata {NODE_METADATA_KEY}='chain' or child runs named "
        "'decomposer' and 'solver'; export the runs of a DivConqChain."
    )
    if runs and not linked:
        msg += f" None of these runs has child runs, so the dump probably lost them: {DUMP_HINT}"
    if bad:
        msg += f" Besides, {len(bad)} record(s) could not be read (first: {bad[0]})."
    return msg


def _node_runs(
    root: dict[str, Any], children: dict[str, list[dict[str, Any]]]
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Find the chain run's node runs by name, each with the model runs under it."""
    nodes: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}

    def visit(run: dict[str, Any], parent: dict[str, Any], node: str | None) -> None:
        label = _node_label(run, parent)
        if label == "chain":
            return  # another chain run nested inside: it is a trace of its own
        if label in _NODES:
            node = label
            nodes[label] = (run, [])
        if node is not None and run.get("run_type") in _RUN_TYPES_WITH_MODEL_OUTPUT:
            nodes[node][1].append(run)
        for child in children.get(str(run["id"]), []):
            visit(child, run, node)

    for child in children.get(str(root["id"]), []):
        visit(child, root, None)
    return nodes


def _trace_from_root(
    root: dict[str, Any], nodes: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]
) -> Trace:
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
        trace_id=trace_id("langsmith-runs", str(root["id"])),
        source="langsmith-runs",
        **({"created_at": created} if created else {}),
    )
    if trace.reference is not None:
        trace.score = score_trace(trace)
    return scrub_trace(trace)
