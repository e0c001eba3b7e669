"""Importing LangChain/LangSmith run trees (Runs as JSON) gives what TraceRecorder records."""

from __future__ import annotations

import json
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
from langchain_divconq.tracing.importers import IMPORTERS, import_langsmith_runs
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
    collector = RunCollectorCallbackHandler(_schema_format=schema)  # type: ignore[call-arg]
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
    outer = RunnableLambda(lambda q, config: chain.invoke(q, config), name="outer")
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
    by_run = {t.run_id: t for t in recorded}
    assert sorted(t.run_id or "" for t in imported) == sorted(by_run)
    for trace in imported:
        want = by_run[trace.run_id]
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
