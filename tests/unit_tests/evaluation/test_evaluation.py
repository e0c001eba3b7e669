"""evaluate / compare / report / decomposition_quality / divconq eval with scripted models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from langchain_divconq import create_divconq_chain, create_single_stage_chain
from langchain_divconq.cli import main
from langchain_divconq.evaluation.evaluator import EvalRecord, evaluate, load_records, percentile
from langchain_divconq.evaluation.pricing import ModelPrice, PriceTable
from langchain_divconq.evaluation.quality import decomposition_quality, rouge_l, token_f1
from langchain_divconq.evaluation.report import EvalConfig, compare, load_results, markdown_table
from langchain_divconq.tasks import DROPTask, Example, GSM8KTask, StrategyQATask
from langchain_divconq.tracing.usage import estimate_tokens
from tests.unit_tests.fakes import ScriptedChatModel

QUESTIONS = {f"Q{i}": str(i * 10) for i in range(6)}  # gold answers 0, 10, ..., 50


def _task(n: int = 6) -> GSM8KTask:
    examples = [
        Example(
            id=f"ex{i}",
            question=f"Q{i}: how many apples?",
            answer=str(i * 10),
            sub_questions=[f"How many apples does person {i} have?", "How many in total?"],
        )
        for i in range(n)
    ]
    return GSM8KTask(name="gsm8k", split="test", examples=examples)


def _decomposer(**kwargs: Any) -> ScriptedChatModel:
    fields = {
        "replies": {"Q": "1. How many apples does each have?\n2. How many in total?"},
        "model_name": "gpt-4o-mini",
        "input_tokens": 100,
        "output_tokens": 20,
        **kwargs,
    }
    return ScriptedChatModel(**fields)


def _solver(**kwargs: Any) -> ScriptedChatModel:
    # Right on Q0-Q2 (one with units, one with $), wrong on Q3, no marker on Q4, raises on Q5.
    replies = {
        "Q0": "Nobody has apples.\nThe answer is: 0",
        "Q1": "Ten apples.\nThe answer is: 10 apples",
        "Q2": "The answer is: $20.00",
        "Q3": "The answer is: 31",
        "Q4": "I think 40",
        "Q5": "RAISE",
    }
    fields = {
        "replies": replies,
        "model_name": "gpt-3.5-turbo",
        "input_tokens": 50,
        "output_tokens": 10,
        **kwargs,
    }
    return ScriptedChatModel(**fields)


def test_evaluate_known_accuracy_tokens_and_cost() -> None:
    chain = create_divconq_chain(_decomposer(), _solver())
    result = evaluate(chain, _task(), max_concurrency=4, progress=False)
    assert result.n == 6
    # Q0, Q1, Q2 right; Q4 has no marker but its last number (40) is right.
    assert [r.score for r in result.records] == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.failures == 1
    failed = result.records[5]
    assert failed.error is not None and "scripted failure" in failed.error
    assert result.marker_rate == pytest.approx(4 / 6)
    assert result.records[1].prediction == "10"
    assert result.records[0].sub_questions == [
        "How many apples does each have?",
        "How many in total?",
    ]
    decomposer, solver = result.nodes["decomposer"], result.nodes["solver"]
    assert (decomposer.calls, decomposer.input_tokens, decomposer.output_tokens) == (6, 600, 120)
    # Five successful solver calls report usage; the failed one counts as a call with an error.
    assert (solver.calls, solver.input_tokens, solver.output_tokens, solver.errors) == (
        6,
        250,
        50,
        1,
    )
    assert not result.tokens_estimated
    assert result.decomposer == "gpt-4o-mini" and result.solver == "gpt-3.5-turbo"
    # gpt-4o-mini: 0.15 / 0.60 per 1M; gpt-3.5-turbo: 0.50 / 1.50 per 1M.
    assert result.decomposition_cost_usd == pytest.approx((600 * 0.15 + 120 * 0.60) / 1e6)
    assert result.solving_cost_usd == pytest.approx((250 * 0.50 + 50 * 1.50) / 1e6)
    total = result.decomposition_cost_usd + result.solving_cost_usd  # type: ignore[operator]
    assert result.cost_per_1k_usd == pytest.approx(total * 1000 / 6)
    assert result.latency_p50_s is not None and result.latency_p95_s is not None
    assert result.latency_p50_s <= result.latency_p95_s


def test_evaluate_limit_takes_first_examples_in_order() -> None:
    chain = create_divconq_chain(_decomposer(), _solver())
    result = evaluate(chain, _task(), limit=3, batch_size=2, progress=False)
    assert [r.id for r in result.records] == ["ex0", "ex1", "ex2"]
    assert result.accuracy == 1.0
    assert result.nodes["decomposer"].calls == 3


def test_evaluate_estimates_tokens_when_model_reports_none() -> None:
    solver = _solver(usage="none")
    chain = create_single_stage_chain(solver)
    result = evaluate(chain, _task(2), progress=False)
    stats = result.nodes["solver"]
    assert stats.estimated and result.tokens_estimated
    assert "decomposer" not in result.nodes
    expected_out = estimate_tokens("Nobody has apples.\nThe answer is: 0") + estimate_tokens(
        "Ten apples.\nThe answer is: 10 apples"
    )
    assert stats.output_tokens == expected_out
    assert stats.input_tokens > 0
    assert result.decomposer == "-"


def test_evaluate_uses_custom_token_counter() -> None:
    chain = create_single_stage_chain(_solver(usage="none"))
    result = evaluate(chain, _task(2), token_counter=len, progress=False)
    assert result.nodes["solver"].output_tokens == len(
        "Nobody has apples.\nThe answer is: 0"
    ) + len("Ten apples.\nThe answer is: 10 apples")


def test_unpriced_model_gives_no_cost_and_local_is_free() -> None:
    chain = create_divconq_chain(_decomposer(model_name="mystery"), _solver())
    result = evaluate(chain, _task(2), progress=False)
    assert result.decomposition_cost_usd is None and result.cost_per_1k_usd is None
    table = PriceTable(prices={"mystery": ModelPrice(input=1.0, output=2.0)})
    priced = evaluate(chain, _task(2), prices=table, progress=False)
    assert priced.decomposition_cost_usd == pytest.approx((200 * 1.0 + 40 * 2.0) / 1e6)
    assert PriceTable().cost("SmolLM2-135M-Instruct", 10**6, 10**6, provider="divconq") == 0
    per_param = PriceTable(usd_per_million_per_billion_params=1.0)
    assert per_param.cost("SmolLM2-135M-Instruct", 10**6, 0, provider="divconq") == (
        pytest.approx(0.135)
    )
    with pytest.raises(ValueError, match="parameters_billion"):
        per_param.cost("my-model", 1, 1, provider="divconq")


def test_price_table_from_json(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"my-teacher": {"input": 3, "output": 15}}))
    table = PriceTable.from_json(path)
    assert table.cost("my-teacher", 10**6, 10**6) == 18
    assert table.cost("gpt-4o-mini", 10**6, 0) == pytest.approx(0.15)


def test_resume_skips_answered_questions(tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    solver = _solver()
    chain = create_divconq_chain(_decomposer(), solver)
    first = evaluate(chain, _task(), limit=3, records_path=records, progress=False)
    saved = load_records(records)
    assert len(saved) == 3
    assert saved[0].nodes["decomposer"].cost_usd == pytest.approx((100 * 0.15 + 20 * 0.6) / 1e6)
    # A torn last line (crash mid-write) is ignored.
    with records.open("a") as handle:
        handle.write('{"id": "ex3", "quest')
    counting = _CountingSolver(replies=solver.replies, model_name="gpt-3.5-turbo")
    second = evaluate(
        create_divconq_chain(_decomposer(), counting),
        _task(),
        records_path=records,
        progress=False,
    )
    assert counting.seen == {"Q3", "Q4", "Q5"}  # the first three were not asked again
    assert [r.id for r in second.records] == [f"ex{i}" for i in range(6)]
    assert second.records[:3] == first.records[:3]
    assert second.accuracy == pytest.approx(4 / 6)
    # The failed question is asked again on the next resume.
    counting.seen.clear()
    evaluate(
        create_divconq_chain(_decomposer(), counting), _task(), records_path=records, progress=False
    )
    assert counting.seen == {"Q5"}


class _CountingSolver(ScriptedChatModel):
    seen: set[str] = set()

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        prompt = str(messages[-1].content)
        self.seen.add(next(k for k in self.replies if k in prompt))
        return super()._generate(messages, stop, run_manager, **kwargs)


def test_drop_task_reports_f1_and_em() -> None:
    task = DROPTask(
        name="drop",
        split="dev",
        examples=[
            Example(id="0", question="Q0 who?", answer="Chaz Schilens", context="Passage."),
            Example(id="1", question="Q1 who?", answer="Chaz Schilens", context="Passage."),
        ],
    )
    solver = ScriptedChatModel(
        replies={"Q0": "The answer is: Chaz Schilens", "Q1": "The answer is: Schilens"}
    )
    result = evaluate(create_single_stage_chain(solver), task, progress=False)
    assert result.metric == "f1"
    assert result.accuracy == pytest.approx((1.0 + 0.67) / 2)
    assert result.metrics == {"em": 0.5, "f1": pytest.approx((1.0 + 0.67) / 2)}


def test_compare_writes_json_table_and_plot(tmp_path: Path) -> None:
    configs = {
        "direct": EvalConfig(
            chain=create_single_stage_chain(_solver()), decomposer="-", solver="GPT-3.5"
        ),
        "gpt/gpt": create_divconq_chain(_decomposer(), _solver()),
    }
    results = compare(configs, [_task(4)], out_dir=tmp_path, limit=4, progress=False)
    assert [r.name for r in results] == ["direct", "gpt/gpt"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert {d["name"] for d in data} == {"direct", "gpt/gpt"}
    assert all("records" not in d for d in data)
    table = (tmp_path / "table.md").read_text()
    assert "| direct | - | GPT-3.5 | 75.00 (n=4) |" in table
    assert "| gpt/gpt | gpt-4o-mini | gpt-3.5-turbo | 75.00 (n=4) |" in table
    assert "Decomposition $/1k q" in table and "Solving $/1k q" in table
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert len(load_results(tmp_path)) == 2
    assert (tmp_path / "runs" / "gpt_gpt" / "gsm8k-test.jsonl").is_file()


def test_markdown_table_layout() -> None:
    chain = create_divconq_chain(_decomposer(), _solver())
    result = evaluate(chain, _task(2), name="T/T", progress=False)
    table = markdown_table([result])
    header = table.splitlines()[0]
    assert header.startswith("| Configuration | Decomposer | Solver | gsm8k test accuracy (%)")
    row = table.splitlines()[2]
    # Cost per 1k questions: 1000 * (2 * (100 * .15 + 20 * .6)) / 1e6 / 2.
    assert row.endswith("| 0.027 | 0.04 |")


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)


def test_record_roundtrip() -> None:
    record = EvalRecord(id="1", question="q", gold="2", score=1.0, metrics={"accuracy": 1.0})
    assert EvalRecord.model_validate_json(record.model_dump_json()) == record


# ---------------------------------------------------------------- decomposition quality
def test_similarity_measures() -> None:
    assert token_f1("How many apples?", "how many APPLES") == 1.0
    assert token_f1("", "how many") == 0.0
    assert rouge_l("apples many how", "how many apples") == pytest.approx(1 / 3)
    # "#1"/"#2" back-references are dropped: 2 shared of 3 tokens each side.
    assert token_f1("Is #1 bigger than #2?", "Is it bigger?") == pytest.approx(2 / 3)


def test_decomposition_quality_against_gold() -> None:
    replies = {
        "Q0": "How many apples does person 0 have?\nHow many in total?",  # perfect
        "Q1": "How many apples does person 1 have?",  # one of two
        "Q2": "NO_SUBQUESTIONS",
        "Q3": "The answer is 30.",  # no question: not parsed
        "Q4": "RAISE",
    }
    decomposer = ScriptedChatModel(replies=replies)
    quality = decomposition_quality(decomposer, _task(5), batch_size=2)
    assert quality.n == 5 and quality.failures == 1
    assert quality.parse_rate == pytest.approx(2 / 5)
    assert quality.no_decomposition_rate == pytest.approx(2 / 5)
    assert quality.count_match == pytest.approx(1 / 5)
    assert quality.records[0].token_f1 == 1.0 and quality.records[0].rouge_l == 1.0
    # Gold 1 matched exactly; gold 2 ("how many in total") best matches with 2 of 7/4 tokens.
    partial = (1.0 + 2 * (2 / 7) * (2 / 4) / (2 / 7 + 2 / 4)) / 2
    assert quality.records[1].token_f1 == pytest.approx(partial)
    assert quality.token_f1 == pytest.approx((1.0 + partial) / 5)
    assert quality.mean_gold == 2.0 and quality.mean_predicted == pytest.approx(3 / 5)


def test_decomposition_quality_needs_gold() -> None:
    task = StrategyQATask(
        name="strategyqa", split="dev", examples=[Example(id="1", question="q?", answer="yes")]
    )
    with pytest.raises(ValueError, match="no gold sub-questions"):
        decomposition_quality(ScriptedChatModel(replies={}), task)


# ---------------------------------------------------------------- divconq eval
def _write_gsm8k(root: Path) -> None:
    folder = root / "gsm8k"
    folder.mkdir(parents=True)
    rows = [
        {"question": f"Q{i}: how many apples?", "answer": f"How many? ** step\n#### {i * 10}"}
        for i in range(4)
    ]
    (folder / "test_socratic.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_cli_eval_writes_report_and_resumes(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from langchain_divconq.cli import eval as eval_cli

    _write_gsm8k(tmp_path / "data")
    built: list[Any] = []

    def fake_build(args: Any, **_: Any) -> Any:
        chain = (
            create_single_stage_chain(_solver(), cot=args.single_stage == "cot")
            if args.single_stage
            else create_divconq_chain(_decomposer(), _solver())
        )
        built.append(chain)
        return chain

    monkeypatch.setattr(eval_cli, "build_chain", fake_build)
    out = tmp_path / "out"
    argv = ["eval", "--task", "gsm8k", "--limit", "3", "--out", str(out), "--no-progress"]
    argv += ["--data-dir", str(tmp_path / "data"), "--solver", "local"]
    assert main([*argv, "--quality"]) == 0
    assert main([*argv, "--single-stage", "cot"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy 100.00% (n=3" in printed
    assert "decomposition quality" in printed
    data = json.loads((out / "results.json").read_text())
    assert {d["name"] for d in data} == {
        "SmolLM2-135M (base: no shipped adapter) / SmolLM2-135M (local)",
        "- (single-stage cot) / SmolLM2-135M (local)",
    }
    assert (out / "plot.png").is_file() and (out / "table.md").is_file()
    assert list((out / "quality").glob("*/gsm8k-test.json"))
    # Resume: a second run asks nothing again.
    assert main([*argv, "--single-stage", "cot"]) == 0
    records = next(iter((out / "runs").glob("*cot*/gsm8k-test.jsonl")))
    assert len(records.read_text().splitlines()) == 3


def test_cli_eval_reports_missing_data(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIVCONQ_DATA", raising=False)
    assert main(["eval", "--task", "gsm8k", "--out", str(tmp_path / "o")]) == 2
    assert "--data-dir" in capsys.readouterr().err


# ---------------------------------------------------------------- with the real local model class
def test_evaluate_with_chat_local_model_counts_real_tokens(tiny_chat_model: Any) -> None:
    chain = create_divconq_chain(tiny_chat_model, tiny_chat_model)
    result = evaluate(chain, _task(3), max_concurrency=3, progress=False)
    assert result.failures == 0 and result.n == 3
    for node in ("decomposer", "solver"):
        stats = result.nodes[node]
        assert stats.calls == 3 and not stats.estimated
        assert 0 < stats.output_tokens <= 3 * 12  # max_tokens=12 per call
        assert stats.input_tokens > 3 * 20  # the chat template's prompt, counted by the model
        assert stats.models == ["tiny-llama"]
        assert stats.cost_usd == 0.0  # a local model is free by default
    assert result.cost_per_1k_usd == 0.0


def test_quality_from_outputs_skips_and_reports() -> None:
    from langchain_divconq.evaluation.quality import quality_from_outputs

    task = _task(3)
    quality = quality_from_outputs(
        task, {"ex0": "How many apples does person 0 have?\nHow many in total?", "ex1": None}
    )
    assert quality.n == 2 and quality.failures == 1  # ex2 absent: skipped
    assert quality.records[0].count_match and quality.parse_rate == 0.5
    with pytest.raises(ValueError, match=r"Example\.id"):
        quality_from_outputs(task, {"nope": "x?"})
