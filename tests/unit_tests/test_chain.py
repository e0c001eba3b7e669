import asyncio
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import ConfigurableField, RunnableLambda

from langchain_divconq import DivConqChain, create_divconq_chain, create_single_stage_chain
from langchain_divconq.chain import NODE_METADATA_KEY
from langchain_divconq.prompts import NO_DECOMPOSITION

QUESTION = "Natalia sold 48 clips in April and half as many in May. How many in all?"
DECOMPOSITION = "1. How many clips did she sell in May?\n2. How many clips in all?"
SOLUTION = "She sold 24 in May.\nThat makes 72.\nThe answer is: 72"


def make_chain(solution: str = SOLUTION, decomposition: str = DECOMPOSITION) -> DivConqChain:
    return create_divconq_chain(
        FakeListChatModel(responses=[decomposition]), FakeListChatModel(responses=[solution])
    )


EXPECTED = {
    "question": QUESTION,
    "context": None,
    "decomposition": DECOMPOSITION,
    "sub_questions": ["How many clips did she sell in May?", "How many clips in all?"],
    "solution": SOLUTION,
    "answer": "72",
}


def _aggregate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    total: Any = None
    for chunk in chunks:
        total = chunk if total is None else total + chunk
    return dict(total)


def test_all_six_call_styles_agree() -> None:
    chain = make_chain()
    assert chain.invoke(QUESTION) == EXPECTED
    assert chain.invoke({"question": QUESTION}) == EXPECTED
    assert chain.batch([QUESTION, {"question": QUESTION}]) == [EXPECTED, EXPECTED]
    assert _aggregate(list(chain.stream(QUESTION))) == EXPECTED

    async def run_async() -> None:
        assert await chain.ainvoke(QUESTION) == EXPECTED
        assert await chain.abatch([QUESTION, QUESTION]) == [EXPECTED, EXPECTED]
        assert _aggregate([c async for c in chain.astream(QUESTION)]) == EXPECTED

    asyncio.run(run_async())


def test_stream_yields_sub_questions_before_the_solution() -> None:
    chunks = list(make_chain().stream(QUESTION))
    assert chunks[0]["sub_questions"] == EXPECTED["sub_questions"]
    assert "solution" not in chunks[0]
    assert len(chunks) > 3  # FakeListChatModel streams character by character


class RunLog(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: list[tuple[str, str | None, UUID | None, dict[str, Any]]] = []
        self.ids: dict[UUID, str] = {}
        self.prompts: dict[str, list[list[BaseMessage]]] = {}

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, **kw: Any) -> None:
        self.ids[run_id] = kw.get("name") or ""
        self.starts.append((kw.get("name") or "", None, kw.get("parent_run_id"), kw["metadata"]))

    def on_chat_model_start(
        self, serialized: Any, messages: list[list[BaseMessage]], *, run_id: UUID, **kw: Any
    ) -> None:
        name = kw.get("name") or ""
        self.ids[run_id] = name
        self.prompts.setdefault(name, []).extend(messages)
        self.starts.append((name, None, kw.get("parent_run_id"), kw["metadata"]))


@pytest.mark.parametrize("style", ["invoke", "batch", "stream", "ainvoke", "abatch", "astream"])
def test_nodes_run_under_their_names_as_children_of_the_chain(style: str) -> None:
    log = RunLog()
    chain = make_chain()
    config: Any = {"callbacks": [log]}
    if style == "invoke":
        chain.invoke(QUESTION, config)
    elif style == "batch":
        chain.batch([QUESTION], config)
    elif style == "stream":
        list(chain.stream(QUESTION, config))
    else:

        async def go() -> None:
            if style == "ainvoke":
                await chain.ainvoke(QUESTION, config)
            elif style == "abatch":
                await chain.abatch([QUESTION], config)
            else:
                [c async for c in chain.astream(QUESTION, config)]

        asyncio.run(go())
    names = [(name, log.ids.get(parent) if parent else None) for name, _, parent, _ in log.starts]
    assert names == [("divconq", None), ("decomposer", "divconq"), ("solver", "divconq")]
    assert [meta[NODE_METADATA_KEY] for *_, meta in log.starts] == [
        "chain",
        "decomposer",
        "solver",
    ]


def test_solver_can_be_swapped_through_configurable_alternatives() -> None:
    solver = FakeListChatModel(responses=["The answer is: A"]).configurable_alternatives(
        ConfigurableField(id="solver"),
        default_key="first",
        second=FakeListChatModel(responses=["The answer is: B"]),
    )
    chain = create_divconq_chain(FakeListChatModel(responses=["What?"]), solver)
    assert chain.invoke(QUESTION)["answer"] == "A"
    assert chain.with_config(configurable={"solver": "second"}).invoke(QUESTION)["answer"] == "B"


def test_sentinel_means_the_solver_answers_directly() -> None:
    log = RunLog()
    chain = make_chain(decomposition=NO_DECOMPOSITION)
    out = chain.invoke(QUESTION, {"callbacks": [log]})
    assert out["sub_questions"] == []
    solver_prompt = log.prompts["solver"][0]
    assert "Sub-questions" not in str(solver_prompt[-1].content)
    assert QUESTION in str(solver_prompt[-1].content)


def test_sub_questions_and_context_reach_the_solver() -> None:
    log = RunLog()
    make_chain().invoke({"question": QUESTION, "context": "A passage."}, {"callbacks": [log]})
    prompt = str(log.prompts["solver"][0][-1].content)
    assert "1. How many clips did she sell in May?" in prompt
    assert "A passage." in prompt
    assert "A passage." in str(log.prompts["decomposer"][0][-1].content)


def test_missing_answer_marker_gives_none() -> None:
    assert make_chain(solution="I am not sure.").invoke(QUESTION)["answer"] is None


def test_max_sub_questions_caps_the_plan() -> None:
    chain = create_divconq_chain(
        FakeListChatModel(responses=["A?\nB?\nC?\nD?"]),
        FakeListChatModel(responses=["The answer is: 1"]),
        max_sub_questions=2,
    )
    assert chain.invoke(QUESTION)["sub_questions"] == ["A?", "B?"]
    with pytest.raises(ValueError, match="max_sub_questions"):
        create_divconq_chain(chain.decomposer, chain.solver, max_sub_questions=0)  # type: ignore[arg-type]


def test_single_stage_baselines() -> None:
    log = RunLog()
    direct = create_single_stage_chain(FakeListChatModel(responses=["The answer is: 4"]))
    out = direct.invoke("What is 2 + 2?", {"callbacks": [log]})
    assert out == {
        "question": "What is 2 + 2?",
        "context": None,
        "decomposition": None,
        "sub_questions": [],
        "solution": "The answer is: 4",
        "answer": "4",
    }
    assert [name for name, *_ in log.starts] == ["single_stage", "solver"]
    cot = create_single_stage_chain(FakeListChatModel(responses=["x"]), cot=True)
    cot.invoke("Q?", {"callbacks": [log]})
    assert "step by step" in str(log.prompts["solver"][-1][0].content)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("", ValueError, "empty or blank"),
        ("   ", ValueError, "empty or blank"),
        ({"query": "x"}, ValueError, r"no 'question' key; got keys \['query'\]"),
        (42, TypeError, "must be a str or a dict"),
        ({"question": 42}, TypeError, "'question' must be a str, got int"),
        ({"question": "Q?", "context": ["a"]}, TypeError, "'context' must be a str"),
    ],
)
def test_bad_input_gets_a_clear_error(value: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make_chain().invoke(value)


def test_non_runnable_models_rejected() -> None:
    with pytest.raises(TypeError, match="must be a LangChain Runnable"):
        create_divconq_chain("gpt-4", FakeListChatModel(responses=["x"]))  # type: ignore[arg-type]


def test_batch_keeps_going_past_failures_and_reports_them() -> None:
    def solve(messages: list[BaseMessage]) -> str:
        if "boom" in str(messages[-1].content):
            raise RuntimeError("solver down")
        return "The answer is: ok"

    chain = create_divconq_chain(FakeListChatModel(responses=["What?"]), RunnableLambda(solve))
    results = chain.batch(["fine?", "boom?", "", "fine again?"], return_exceptions=True)
    assert results[0]["answer"] == "ok" and results[3]["answer"] == "ok"
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[2], ValueError)
    with pytest.raises(RuntimeError, match="solver down"):
        chain.batch(["fine?", "boom?"])


def test_batch_runs_each_stage_as_one_batch_call() -> None:
    calls: list[int] = []

    class CountingModel(FakeListChatModel):
        def batch(self, inputs: list[Any], config: Any = None, **kw: Any) -> list[Any]:
            calls.append(len(inputs))
            return super().batch(inputs, config, **kw)

    chain = create_divconq_chain(
        CountingModel(responses=["What?"]), CountingModel(responses=["The answer is: 1"])
    )
    assert len(chain.batch([f"Q{i}?" for i in range(10)])) == 10
    assert calls == [10, 10]


def test_as_tool_has_a_question_schema() -> None:
    tool = make_chain().as_tool(name="reasoner", description="Answers math questions.")
    schema = tool.args
    assert set(schema) == {"question", "context"}
    assert tool.invoke({"question": QUESTION})["answer"] == "72"


def test_decomposer_may_return_plain_strings() -> None:
    chain = create_divconq_chain(
        RunnableLambda(lambda _: "How many?"), FakeListChatModel(responses=["The answer is: 2"])
    )
    assert chain.invoke("Q?")["sub_questions"] == ["How many?"]


def test_batch_with_local_decomposer_isolates_a_lone_surrogate(tiny_chat_model: Any) -> None:
    chain = create_divconq_chain(tiny_chat_model, FakeListChatModel(responses=[SOLUTION]))
    questions = ["How many clips?", "Bad \ud800 question?", "How many in May?"]
    results = chain.batch(questions, return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert "surrogate" in str(results[1])
    for i in (0, 2):
        assert results[i]["question"] == questions[i]
        assert results[i]["answer"] == "72"
    with pytest.raises(ValueError, match="surrogate"):
        chain.batch(questions)
