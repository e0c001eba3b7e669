"""Importing LangChain/LangSmith run trees (Runs as JSON) gives what TraceRecorder records."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler

from langchain_divconq import create_divconq_chain
from langchain_divconq.cli.router import main
from langchain_divconq.tracing.importers import (
    DUMP_HINT,
    IMPORTERS,
    BadRecord,
    BadRecordError,
    import_langsmith_runs,
)
from langchain_divconq.tracing.recorder import TraceRecorder
from langchain_divconq.tracing.store import JsonlTraceStore
from langchain_divconq.tracing.trace import Trace

DECOMPOSITION = "1. How many clips in May?\n2. How many clips in all?"
SOLUTION = "She sold 24 in May.\nThe answer is: 72"


def _failing_solver(messages: list[BaseMessage]) -> str:
    msg = "upstream said no (Authorization: Bearer sk-FAKE0123456789abcdef)"
    raise RuntimeError(msg)


def _runs(schema: str) -> tuple[RunCollectorCallbackHandler, TraceRecorder]:
    """Run the chain several ways under a run collector and a recorder at once."""
    collector = RunCollectorCallbackHandler(_schema_format=schema)
    recorder = TraceRecorder()
    config: Any = {"callbacks": [collector, recorder]}
    chain = create_divconq_chain(
        FakeListChatModel(responses=[DECOMPOSITION, "NO_SUBQUESTIONS"]),
        FakeListChatModel(responses=[SOLUTION]),
    )
    chain.invoke(
        "Natalia sold 48 clips in April and half as many in May. How many in all?",
        {**config, "metadata": {"reference": "72", "team": "a"}, "tags": ["teacher"]},
    )
    chain.invoke({"question": "Who won?", "context": "The Bears beat the Lions."}, config)
    chain.batch(["Q1?", "Q2?"], config)
    failing = create_divconq_chain(
        FakeListChatModel(responses=[DECOMPOSITION]), RunnableLambda(_failing_solver)
    )
    with pytest.raises(RuntimeError):
        failing.invoke("Will it fail?", config)
    # The chain nested inside another runnable (an agent, a bigger chain).
    outer: RunnableLambda[str, Any] = RunnableLambda(
        lambda q, config: chain.invoke(q, config), name="outer"
    )
    outer.invoke("Nested question?", config)
    return collector, recorder


def _walk(run: Any) -> Iterator[Any]:
    yield run
    for child in run.child_runs:
        yield from _walk(child)


def _flat(collector: RunCollectorCallbackHandler) -> list[dict[str, Any]]:
    """One dict per run, linked by parent_run_id (a LangSmith export's shape)."""
    return [r.model_dump(mode="json") for root in collector.traced_runs for r in _walk(root)]


def _nested(run: Any) -> dict[str, Any]:
    """The run with its child runs nested (``child_runs``), as langsmith's Run allows."""
    data = run.model_dump(mode="json")
    data["child_runs"] = [_nested(child) for child in run.child_runs]
    return data


def _compare(imported: list[Trace], recorded: list[Trace], *, messages: bool) -> None:
    by_run = {t.run_id or "": t for t in recorded}
    assert sorted(t.run_id or "" for t in imported) == sorted(by_run)
    for trace in imported:
        want = by_run[trace.run_id or ""]
        assert trace.source == "langsmith-runs"
        for field in (
            "question",
            "context",
            "reference",
            "sub_questions",
            "solution",
            "answer",
            "score",
            "error",
            "tags",
            "metadata",
        ):
            assert getattr(trace, field) == getattr(want, field), (field, trace.question)
        # The run's start time; the recorder stamps its own clock when the run starts.
        assert abs((trace.created_at - want.created_at).total_seconds()) < 1
        for node in ("decomposer", "solver"):
            got, expected = getattr(trace, node), getattr(want, node)
            assert (got is None) == (expected is None), (node, trace.question)
            if got is None or expected is None:
                continue
            assert got.output == expected.output
            assert got.error == expected.error
            assert got.model_name == expected.model_name
            assert got.run_id == expected.run_id
            assert got.latency_s is not None and got.latency_s >= 0
            if messages:
                assert got.messages == expected.messages
                assert got.usage == expected.usage
                assert got.params == expected.params


@pytest.mark.parametrize("schema", ["original", "original+chat"])
@pytest.mark.parametrize("shape", ["jsonl-flat", "json-list-nested"])
def test_import_matches_the_recorder(tmp_path: Path, schema: str, shape: str) -> None:
    collector, recorder = _runs(schema)
    path = tmp_path / "runs.json"
    if shape == "jsonl-flat":
        path.write_text("".join(json.dumps(r) + "\n" for r in _flat(collector)))
    else:
        path.write_text(json.dumps([_nested(root) for root in collector.traced_runs]))
    imported = list(import_langsmith_runs(path))
    recorded = list(recorder.store)
    assert len(imported) == len(recorded) == 6
    _compare(imported, recorded, messages=schema == "original+chat")
    failed = next(t for t in imported if t.error)
    assert failed.error.startswith("RuntimeError: upstream said no")  # type: ignore[union-attr]
    assert "sk-FAKE" not in path.with_name("x").as_posix() + json.dumps(
        [t.model_dump(mode="json") for t in imported]
    )


def test_text_prompts_are_read_back_as_messages(tmp_path: Path) -> None:
    collector, recorder = _runs("original")
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _flat(collector)))
    first = next(t for t in import_langsmith_runs(path) if t.reference == "72")
    want = next(t for t in recorder.store if t.reference == "72")
    assert first.decomposer is not None and want.decomposer is not None
    assert [m["role"] for m in first.decomposer.messages] == ["system", "user"]
    assert first.decomposer.messages == want.decomposer.messages


def test_cli_import_is_registered_and_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "langsmith-runs" in IMPORTERS
    collector, _ = _runs("original+chat")
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _flat(collector)))
    store = tmp_path / "t.jsonl"
    argv = ["import", "langsmith-runs", str(path), "--store", str(store)]
    assert main(argv) == 0
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "imported 6 langsmith-runs" in out and "imported 0 langsmith-runs" in out
    assert len(JsonlTraceStore(store)) == 6


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"id": "x"', r"runs\.jsonl:1.*not valid JSON"),
        ('{"name": "other", "id": "1"}\n', r"no DivConqChain run.*1 run"),
        ("[1, 2]", r"not a run"),
        ("", r"no DivConqChain run.*0 runs"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=expected):
        list(import_langsmith_runs(path))


# ------------------------------------------------ bad records and dumps without child runs
def _chain() -> Any:
    return create_divconq_chain(
        FakeListChatModel(responses=[DECOMPOSITION]), FakeListChatModel(responses=[SOLUTION])
    )


def _collected(*questions: str) -> RunCollectorCallbackHandler:
    collector = RunCollectorCallbackHandler()
    chain = _chain()
    for question in questions:
        chain.invoke(question, {"callbacks": [collector]})
    return collector


def test_json_array_bad_run_is_numbered_from_one_with_its_index(tmp_path: Path) -> None:
    collector = _collected("Q1?", "Q2?")
    first, second = (_nested(root) for root in collector.traced_runs)
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([first, {"name": "no id"}, second]))
    with pytest.raises(BadRecordError, match=r"runs\.json run 2 \(index 1\): it is not a run"):
        list(import_langsmith_runs(path))
    skipped: list[BadRecord] = []
    traces = list(import_langsmith_runs(path, skipped=skipped))
    assert sorted(t.question for t in traces) == ["Q1?", "Q2?"]
    assert [(b.where, b.index, b.line) for b in skipped] == [("run 2 (index 1)", 1, None)]
    # A bad run deep inside a tree rejects that tree only, saying where in it.
    first["child_runs"][0]["child_runs"] = [7]
    path.write_text(json.dumps([first, second]))
    skipped = []
    assert [t.question for t in import_langsmith_runs(path, skipped=skipped)] == ["Q2?"]
    assert skipped[0].where == "run 1 (index 0)"
    assert "child run child_runs[0]child_runs[0] is not a run" in skipped[0].message


def test_cut_json_array_keeps_the_whole_runs_before_the_cut(tmp_path: Path) -> None:
    collector = _collected("Q1?", "Q2?", "Q3?")
    text = json.dumps([_nested(root) for root in collector.traced_runs])
    path = tmp_path / "runs.json"
    path.write_text(text[: len(text) - 40])  # a download cut in the third run
    skipped: list[BadRecord] = []
    traces = list(import_langsmith_runs(path, skipped=skipped))
    assert [t.question for t in traces] == ["Q1?", "Q2?"]
    assert len(skipped) == 1 and skipped[0].where == "run 3 (index 2)"
    assert "not valid JSON" in skipped[0].message and "cut" in skipped[0].message


def test_jsonl_bad_lines_are_skipped_by_line_number(tmp_path: Path) -> None:
    collector = _collected("Q1?", "Q2?")
    lines = [json.dumps(r) for r in _flat(collector)]
    lines.insert(2, '{"id": "torn')  # becomes line 3
    lines.insert(5, "[1, 2]")  # line 6
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    skipped: list[BadRecord] = []
    traces = list(import_langsmith_runs(path, skipped=skipped))
    assert sorted(t.question for t in traces) == ["Q1?", "Q2?"]
    assert all(t.decomposer and t.decomposer.output == DECOMPOSITION for t in traces)
    assert [(b.line, b.where) for b in skipped] == [(3, "line 3"), (6, "line 6")]
    assert "not valid JSON" in skipped[0].message and "not a run" in skipped[1].message


def _walk_dump(run: Any) -> list[Any]:
    # The one-liner of DUMP_HINT, run as written there.
    code = DUMP_HINT.split("`")[1]
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the hint's own code, checked to work
    dumped: list[Any] = namespace["dump"](run)
    return dumped


@pytest.mark.parametrize("dump", ["model_dump_json", "dict", "model_dump(exclude=None)"])
def test_chain_runs_dumped_without_child_runs_are_bad_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dump: str
) -> None:
    collector = _collected("Q1?", "Q2?", "Q3?")
    path = tmp_path / "runs.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic deprecates .dict()
        rows = {
            "model_dump_json": lambda r: r.model_dump_json(),
            "dict": lambda r: json.dumps(r.dict(), default=str),
            "model_dump(exclude=None)": lambda r: json.dumps(
                r.model_dump(mode="json", exclude=None)
            ),
        }[dump]
        path.write_text("".join(rows(run) + "\n" for run in collector.traced_runs))
    # The schema drops child_runs whichever way a root run is dumped.
    assert "child_runs" not in path.read_text()
    skipped: list[BadRecord] = []
    assert list(import_langsmith_runs(path, skipped=skipped)) == []
    assert [b.where for b in skipped] == ["line 1", "line 2", "line 3"]
    for bad in skipped:
        assert "has no decomposer or solver run" in bad.message
        assert "lost its child runs" in bad.message and bad.hint == DUMP_HINT
        assert "child_runs" in str(bad) and "def dump(run)" in str(bad)
    with pytest.raises(BadRecordError, match=r"runs\.jsonl:1: .*lost its child runs"):
        list(import_langsmith_runs(path))
    store = tmp_path / "t.jsonl"
    assert main(["import", "langsmith-runs", str(path), "--store", str(store)]) == 1
    err = capsys.readouterr().err
    assert "imported 0 langsmith-runs" in err and "skipped 3 (line 1: the DivConqChain" in err
    assert "lost its child runs" in err and err.count("def dump(run)") == 1  # the hint, once
    # The hint's own code dumps them properly: every node survives.
    path.write_text(
        "".join(json.dumps(r) + "\n" for root in collector.traced_runs for r in _walk_dump(root))
    )
    traces = list(import_langsmith_runs(path))
    assert len(traces) == 3 and all(t.decomposer and t.solver for t in traces)


def test_agent_dumped_without_child_runs_gets_the_hint(tmp_path: Path) -> None:
    collector = RunCollectorCallbackHandler()
    chain = _chain()
    agent: RunnableLambda[str, Any] = RunnableLambda(
        lambda q, config: chain.invoke(q, config), name="LangGraph"
    )
    agent.invoke("Q?", {"callbacks": [collector]})
    (root,) = collector.traced_runs
    path = tmp_path / "runs.jsonl"
    path.write_text(root.model_dump_json() + "\n")
    with pytest.raises(ValueError, match=r"among 1 run \(names: \['LangGraph'\]\)") as caught:
        list(import_langsmith_runs(path))
    assert "dump probably lost them" in str(caught.value)
    assert "child_runs" in str(caught.value)
    # Dumped with its child runs, the chain run inside the agent is found.
    path.write_text("".join(json.dumps(r) + "\n" for r in _walk_dump(root)))
    (trace,) = import_langsmith_runs(path)
    assert trace.sub_questions == ["How many clips in May?", "How many clips in all?"]


def test_a_chain_run_that_failed_before_its_nodes_is_kept(tmp_path: Path) -> None:
    run = {
        "id": "5f0c6f3e-0000-4000-8000-000000000001",
        "name": "DivConqChain",
        "run_type": "chain",
        "start_time": "2026-01-01T00:00:00+00:00",
        "inputs": {"question": "Q?"},
        "outputs": None,
        "error": "ValueError('bad input')",
        "extra": {"metadata": {"divconq_node": "chain"}},
    }
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(run) + "\n")
    (trace,) = import_langsmith_runs(path)
    assert trace.error == "ValueError: bad input" and trace.decomposer is None


def _readme_snippet() -> str:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    after = readme.split("**Importing LangSmith runs.**", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_dump_snippet_keeps_the_node_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    snippet = _readme_snippet()
    assert "RunCollectorCallbackHandler" in snippet and "runs.jsonl" in snippet
    namespace: dict[str, Any] = {"chain": _chain(), "question": "Natalia sold 48 clips?"}
    exec(snippet, namespace)  # the README's code, exactly as printed
    (trace,) = import_langsmith_runs(tmp_path / "runs.jsonl")
    assert trace.question == "Natalia sold 48 clips?"
    assert trace.sub_questions == ["How many clips in May?", "How many clips in all?"]
    assert trace.decomposer is not None and trace.solver is not None
    assert trace.decomposer.output == DECOMPOSITION and trace.solver.output == SOLUTION
    assert trace.decomposer.messages and trace.solver.messages
    assert trace.answer == "72"
