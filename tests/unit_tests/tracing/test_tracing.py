"""TraceRecorder: complete, correctly grouped traces under every call style."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import convert_to_openai_messages
from langchain_core.runnables import RunnableLambda

from langchain_divconq import TraceRecorder, create_single_stage_chain
from langchain_divconq.prompts import decomposer_messages, solver_messages
from langchain_divconq.tracing.recorder import REDACTED, scrub_secrets
from langchain_divconq.tracing.store import JsonlTraceStore, MemoryTraceStore
from langchain_divconq.tracing.trace import Trace
from tests.unit_tests.fakes import ScriptedChatModel, echo_model, make_chain, question


def _check_trace(trace: Trace, i: int) -> None:
    """Every field of item i's trace belongs to item i."""
    q = question(i)
    assert trace.question == q
    assert trace.source == "recorded"
    assert trace.error is None
    assert trace.decomposer is not None and trace.solver is not None
    subs = [f"How many bags in Q{i}?", f"How many apples per bag in Q{i}?"]
    assert trace.sub_questions == subs
    assert trace.decomposer.messages == convert_to_openai_messages(decomposer_messages(q))
    assert trace.decomposer.output == f"1. {subs[0]}\n2. {subs[1]}"
    assert trace.solver.messages == convert_to_openai_messages(solver_messages(q, subs))
    assert trace.solution == f"Q{i} has {i} bags of 2 apples (2 hints).\nThe answer is: {2 * i}"
    assert trace.solver.output == trace.solution
    assert trace.answer == str(2 * i)
    assert trace.decomposer.model_name == "echo-dec"
    assert trace.solver.model_name == "echo-sol"
    for node in (trace.decomposer, trace.solver):
        assert node.usage is not None and not node.usage.estimated
        assert node.usage.output_tokens > 0
        assert node.latency_s is not None and node.latency_s >= 0
        assert node.run_id and node.error is None


def _configs(recorder: TraceRecorder, n: int) -> list[dict[str, Any]]:
    return [
        {"callbacks": [recorder], "metadata": {"reference": str(2 * i), "item": i}}
        for i in range(n)
    ]


def test_invoke_fills_every_field() -> None:
    recorder = TraceRecorder()
    run_id = uuid.uuid4()
    before = datetime.now(UTC)
    out = make_chain().invoke(
        {"question": question(7), "context": "A farm."},
        {
            "callbacks": [recorder],
            "run_id": run_id,
            "tags": ["teacher"],
            "metadata": {"reference": 14, "task": "toy"},
        },
    )
    (trace,) = recorder.store
    assert trace.run_id == str(run_id)
    assert trace.context == "A farm."
    assert trace.reference == "14"
    assert trace.score == 1.0 and trace.correct
    assert trace.tags == ["teacher"]
    assert trace.metadata == {"task": "toy"}  # reference and the node label are not metadata
    assert before - timedelta(seconds=1) <= trace.created_at <= datetime.now(UTC)
    assert trace.solution == out["solution"] and trace.answer == out["answer"] == "14"
    assert trace.decomposer is not None and trace.solver is not None
    assert trace.decomposer.messages[1] == {
        "role": "user",
        "content": f"Passage:\nA farm.\n\nQuestion: {question(7)}",
    }
    usage = trace.solver.usage
    assert usage is not None
    assert usage.input_tokens == sum(len(m["content"].split()) for m in trace.solver.messages)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert Trace.model_validate_json(trace.model_dump_json()) == trace


def test_wrong_answer_scores_zero_and_no_reference_stays_unscored() -> None:
    recorder = TraceRecorder()
    chain = make_chain()
    chain.invoke(question(3), {"callbacks": [recorder], "metadata": {"reference": "7"}})
    chain.invoke(question(4), {"callbacks": [recorder]})
    wrong, unscored = recorder.store
    assert wrong.score == 0.0 and wrong.correct is False
    assert unscored.reference is None and unscored.score is None


def test_custom_checker_is_used() -> None:
    seen: list[tuple[str, Any]] = []

    def checker(text: str, example: Any) -> float:
        seen.append((text, example))
        return 0.5

    recorder = TraceRecorder(checker=checker)
    make_chain().invoke(question(2), {"callbacks": [recorder], "metadata": {"reference": "4"}})
    assert next(iter(recorder.store)).score == 0.5
    assert seen[0][1].answer == "4" and seen[0][1].question == question(2)


def test_batch_1000_runs_max_concurrency_16(tmp_path: Path) -> None:
    store = JsonlTraceStore(tmp_path / "t.jsonl")
    recorder = TraceRecorder(store)
    configs = _configs(recorder, 1000)
    for config in configs:
        config["max_concurrency"] = 16
    outputs = make_chain().batch([question(i) for i in range(1000)], configs)
    assert len(outputs) == 1000
    traces = list(JsonlTraceStore(tmp_path / "t.jsonl"))
    assert len(traces) == 1000 == recorder.recorded
    by_item = {t.metadata["item"]: t for t in traces}
    assert sorted(by_item) == list(range(1000))
    for i, trace in by_item.items():
        _check_trace(trace, i)
        assert trace.score == 1.0
    assert len({t.run_id for t in traces}) == 1000
    assert not recorder._runs and not recorder._roots  # nothing left behind


async def test_abatch_1000_runs() -> None:
    recorder = TraceRecorder()
    configs = _configs(recorder, 1000)
    for config in configs:
        config["max_concurrency"] = 16
    await make_chain().abatch([question(i) for i in range(1000)], configs)
    traces = list(recorder.store)
    assert len(traces) == 1000
    for trace in traces:
        _check_trace(trace, trace.metadata["item"])
    assert not recorder._runs


async def test_concurrent_ainvoke_and_astream() -> None:
    recorder = TraceRecorder()
    chain = make_chain()

    async def stream(i: int) -> None:
        async for _ in chain.astream(question(i), _configs(recorder, i + 1)[i]):
            await asyncio.sleep(0)

    await asyncio.gather(
        *(chain.ainvoke(question(i), _configs(recorder, i + 1)[i]) for i in range(20)),
        *(stream(i) for i in range(20, 40)),
    )
    traces = {t.metadata["item"]: t for t in recorder.store}
    assert sorted(traces) == list(range(40))
    for i, trace in traces.items():
        _check_trace(trace, i)


def test_stream_records_the_whole_solution() -> None:
    recorder = TraceRecorder()
    chunks = list(make_chain().stream(question(5), {"callbacks": [recorder]}))
    assert len(chunks) > 3  # really streamed
    (trace,) = recorder.store
    _check_trace(trace, 5)


def test_several_threads_share_one_recorder(tmp_path: Path) -> None:
    recorder = TraceRecorder(JsonlTraceStore(tmp_path / "t.jsonl"))
    chain = make_chain()

    def work(start: int) -> None:
        for i in range(start, start + 25):
            chain.invoke(question(i), _configs(recorder, i + 1)[i])

    threads = [threading.Thread(target=work, args=(k * 25,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    traces = {t.metadata["item"]: t for t in JsonlTraceStore(tmp_path / "t.jsonl")}
    assert sorted(traces) == list(range(200))
    for i, trace in traces.items():
        _check_trace(trace, i)


def test_nested_chain_and_custom_solver_runnable() -> None:
    """The chain inside an outer chain; the solver's model call nested in a lambda."""
    solver_model = echo_model("solver", model_name="echo-sol")
    inner = make_chain().model_copy(
        update={"solver": RunnableLambda(lambda msgs: solver_model.invoke(msgs))}
    )
    outer = (
        RunnableLambda(lambda x: {"question": x}) | inner | RunnableLambda(lambda d: d["answer"])
    )
    recorder = TraceRecorder()
    outer_id = uuid.uuid4()
    assert (
        outer.invoke(
            question(9), {"callbacks": [recorder], "run_id": outer_id, "metadata": {"app": "x"}}
        )
        == "18"
    )
    (trace,) = recorder.store
    _check_trace(trace, 9)
    assert trace.run_id != str(outer_id)
    assert trace.metadata == {"app": "x"}


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_chain_as_agent_tool() -> None:
    tool = make_chain().as_tool(name="divconq", description="answer with sub-questions")
    recorder = TraceRecorder()
    tool.invoke({"question": question(11)}, {"callbacks": [recorder]})
    (trace,) = recorder.store
    _check_trace(trace, 11)


def test_retried_node_keeps_the_successful_attempt() -> None:
    solver = echo_model(model_name="echo-sol", fail_first=1).with_retry(
        retry_if_exception_type=(ConnectionError,), wait_exponential_jitter=False
    )
    chain = make_chain().model_copy(update={"solver": solver})
    recorder = TraceRecorder()
    chain.invoke(question(3), {"callbacks": [recorder]})
    (trace,) = recorder.store
    _check_trace(trace, 3)


def test_failed_runs_are_recorded_with_the_error() -> None:
    recorder = TraceRecorder()
    chain = make_chain(fail_ids=frozenset({2}), decomposer={"fail_ids": frozenset({4})})
    outs = chain.batch(
        [question(i) for i in range(6)], _configs(recorder, 6), return_exceptions=True
    )
    assert isinstance(outs[2], RuntimeError) and isinstance(outs[4], RuntimeError)
    with pytest.raises(RuntimeError):
        chain.invoke(question(2), {"callbacks": [recorder]})
    traces = list(recorder.store)
    assert len(traces) == 7
    by_item = {t.metadata.get("item", "invoke"): t for t in traces}
    solver_failed, decomposer_failed = by_item[2], by_item[4]
    assert solver_failed.error == "RuntimeError: model down for Q2"
    assert solver_failed.solver is not None and solver_failed.solver.error is not None
    assert solver_failed.decomposer is not None and solver_failed.decomposer.error is None
    assert solver_failed.question == question(2) and solver_failed.score is None
    assert decomposer_failed.decomposer is not None
    assert decomposer_failed.decomposer.error == "RuntimeError: model down for Q4"
    assert decomposer_failed.solver is None
    assert by_item["invoke"].error is not None and by_item["invoke"].question == question(2)
    for i in (0, 1, 3, 5):
        _check_trace(by_item[i], i)


class _BrokenStore(MemoryTraceStore):
    def add(self, trace: Trace) -> None:
        msg = "disk full"
        raise OSError(msg)


def test_store_errors_never_break_the_chain(caplog: pytest.LogCaptureFixture) -> None:
    recorder = TraceRecorder(_BrokenStore())
    with caplog.at_level(logging.ERROR):
        out = make_chain().invoke(question(1), {"callbacks": [recorder]})
    assert out["answer"] == "2"
    assert recorder.write_errors == 1 and recorder.recorded == 0
    assert "disk full" in caplog.text


def test_strict_mode_raises_store_errors() -> None:
    recorder = TraceRecorder(_BrokenStore(), strict=True)
    with pytest.raises(OSError, match="disk full"):
        make_chain().invoke(question(1), {"callbacks": [recorder]})


def test_single_stage_chain_and_unreported_usage() -> None:
    recorder = TraceRecorder()
    chain = create_single_stage_chain(echo_model(usage="none"), cot=True)
    chain.invoke(question(6), {"callbacks": [recorder]})
    (trace,) = recorder.store
    assert trace.decomposer is None and trace.sub_questions == []
    assert trace.solver is not None and trace.solver.usage is not None
    assert trace.solver.usage.estimated and trace.solver.usage.input_tokens > 0
    assert trace.answer == "12"


def test_runs_outside_a_chain_are_ignored() -> None:
    recorder = TraceRecorder()
    echo_model().invoke(question(1), {"callbacks": [recorder]})
    (RunnableLambda(lambda x: x) | echo_model()).invoke(question(1), {"callbacks": [recorder]})
    assert len(recorder.store) == 0 and not recorder._runs


class _KeyedModel(ScriptedChatModel):
    """A model that keeps a key as a plain field and shows it in its parameters."""

    api_key: str = "sk-test-FAKE-FIELD-0123456789"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"api_key": self.api_key, "headers": {"Authorization": "Token abc"}}


def test_secrets_never_reach_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    httpx = pytest.importorskip("httpx")
    openai_chat = pytest.importorskip("langchain_openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-FAKE-ENV-0123456789")
    sent: list[str] = []

    def reply(request: Any) -> Any:
        sent.append(request.headers.get("authorization", ""))
        body = json.loads(request.content)
        content = body["messages"][-1]["content"]
        text = "How many?" if "Sub-questions" not in content else "The answer is: 4"
        return httpx.Response(
            200,
            json={
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24},
            },
        )

    client = httpx.Client(transport=httpx.MockTransport(reply))
    decomposer = openai_chat.ChatOpenAI(
        model="gpt-fake",
        http_client=client,
        default_headers={"X-Api-Key": "sk-test-FAKE-HEADER-0123456789"},
        model_kwargs={"user": "Bearer sk-test-FAKE-USER-0123456789"},
    )
    solver = openai_chat.ChatOpenAI(
        model="gpt-fake", api_key="sk-test-FAKE-KWARG-0123456789", http_client=client
    )
    path = tmp_path / "t.jsonl"
    recorder = TraceRecorder(path)
    chain = make_chain().model_copy(update={"decomposer": decomposer, "solver": solver})
    chain.invoke(
        question(2),
        {
            "callbacks": [recorder],
            "metadata": {"reference": "4", "openai_api_key": "sk-test-FAKE-META-0123456789"},
        },
    )
    keyed = make_chain().model_copy(update={"solver": echo_model(cls=_KeyedModel)})
    keyed.invoke(question(2), {"callbacks": [recorder]})
    # The keys were really used, and the runs were really recorded...
    assert sent == ["Bearer sk-test-FAKE-ENV-0123456789", "Bearer sk-test-FAKE-KWARG-0123456789"]
    first, second = JsonlTraceStore(path)
    assert first.score == 1.0 and first.solver is not None
    assert first.solver.model_name == "gpt-fake" and first.solver.usage is not None
    assert first.solver.usage.input_tokens == 20
    assert second.solver is not None and second.solver.params["api_key"] == REDACTED
    # ...yet no key, in any form, is in the file.
    text = path.read_text(encoding="utf-8")
    assert "sk-test-FAKE" not in text and "Token abc" not in text


def test_scrub_secrets_keeps_ordinary_fields() -> None:
    params = {
        "max_tokens": 10,
        "token_usage": {"total_tokens": 3},
        "model": "gpt",
        "hf_token": "hf_abcdefghijklmnopqrstuvwxyz",
        "nested": [{"password": "p"}, "plain text", "key sk-abcdefghijklmnop end"],
        "client": object(),
    }
    assert scrub_secrets(params) == {
        "max_tokens": 10,
        "token_usage": {"total_tokens": 3},
        "model": "gpt",
        "hf_token": REDACTED,
        "nested": [{"password": REDACTED}, "plain text", f"key {REDACTED} end"],
        "client": "<object>",
    }


def test_real_local_model_class_in_batch(tiny_chat_model: Any) -> None:
    """ChatLocalModel batches generation across questions; each run still gets its trace."""
    from langchain_divconq import create_divconq_chain

    recorder = TraceRecorder()
    chain = create_divconq_chain(tiny_chat_model, tiny_chat_model)
    questions = [question(i) for i in range(4)]
    outs = chain.batch(questions, _configs(recorder, 4))
    traces = {t.metadata["item"]: t for t in recorder.store}
    assert sorted(traces) == [0, 1, 2, 3]
    for i, trace in traces.items():
        assert trace.question == questions[i]
        assert trace.decomposer is not None and trace.solver is not None
        assert trace.decomposer.messages == convert_to_openai_messages(
            decomposer_messages(questions[i])
        )
        assert trace.solution == outs[i]["solution"]
        assert trace.solver.output == outs[i]["solution"]
        for node in (trace.decomposer, trace.solver):
            assert node.model_name == "tiny-llama"
            assert node.usage is not None and not node.usage.estimated
            assert 0 < node.usage.output_tokens <= 12


def test_solver_swapped_at_run_time_is_named_in_the_trace() -> None:
    from langchain_core.runnables import ConfigurableField

    solver = echo_model(model_name="echo-sol").configurable_alternatives(
        ConfigurableField(id="solver"), default_key="default", other=echo_model(model_name="echo-b")
    )
    chain = make_chain().model_copy(update={"solver": solver})
    recorder = TraceRecorder()
    chain.invoke(question(1), {"callbacks": [recorder]})
    chain.invoke(question(2), {"callbacks": [recorder], "configurable": {"solver": "other"}})
    first, second = recorder.store
    _check_trace(first, 1)
    assert second.solver is not None and second.solver.model_name == "echo-b"
    assert second.answer == "4"
