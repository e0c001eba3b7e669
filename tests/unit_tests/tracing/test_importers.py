"""Importers (GSM8K Socratic, StrategyQA, OpenAI chat) and exporters (TRL, OpenAI, datasets)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, convert_to_openai_messages

from langchain_divconq.cli.router import main
from langchain_divconq.prompts import (
    ANSWER_MARKER,
    decomposer_messages,
    extract_answer,
    solver_messages,
)
from langchain_divconq.tracing.importers import (
    IMPORTERS,
    BadRecord,
    BadRecordError,
    ImportResult,
    import_file,
    import_gsm8k_socratic,
    import_openai_chat,
    import_strategyqa,
)
from langchain_divconq.tracing.scoring import default_checker, rescore, score_trace
from langchain_divconq.tracing.store import JsonlTraceStore, SqliteTraceStore
from langchain_divconq.tracing.trace import NodeCall, Trace
from langchain_divconq.training.exporters import export_openai_jsonl, export_trl_jsonl, to_dataset

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
GSM8K = DATA / "gsm8k" / "train_socratic.jsonl"
STRATEGYQA = DATA / "strategyqa" / "train.jsonl"
needs_data = pytest.mark.skipif(not GSM8K.is_file(), reason="shared data sets are not here")

_ROW = {
    "question": "Betty needs $100 and has half. How much more does she need?",
    "answer": "How much does Betty have? ** Betty has 100 / 2 = $<<100/2=50>>50.\n"
    "How much more does she need? ** She needs 100 - 50 = $<<100-50=50>>50 more.\n"
    "#### 1,050",
}


def _write(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_gsm8k_socratic_record(tmp_path: Path) -> None:
    (trace,) = import_gsm8k_socratic(_write(tmp_path / "g.jsonl", [_ROW]))
    assert trace.source == "gsm8k-socratic"
    assert trace.sub_questions == ["How much does Betty have?", "How much more does she need?"]
    assert trace.solution == (
        "1. Betty has 100 / 2 = $50.\n2. She needs 100 - 50 = $50 more.\nThe answer is: 1050"
    )
    assert trace.reference == trace.answer == "1050"
    assert trace.score == 1.0 and trace.correct


@needs_data
def test_gsm8k_socratic_real_file_keeps_every_sub_question() -> None:
    traces = list(import_gsm8k_socratic(GSM8K, limit=300))
    rows = [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines()[:300]]
    assert len(traces) == 300
    for trace, row in zip(traces, rows, strict=True):
        steps = row["answer"].split("\n")[:-1]
        assert len(trace.sub_questions) == len(steps)  # not capped here
        assert trace.solution is not None and "<<" not in trace.solution
        assert trace.solution.endswith(f"{ANSWER_MARKER} {trace.reference}")
        assert extract_answer(trace.solution) == trace.reference
        assert score_trace(trace) == 1.0  # the default checker agrees with the gold
    assert max(len(t.sub_questions) for t in traces) > 3
    first = traces[0]
    assert first.sub_questions[0] == "How many clips did Natalia sell in May?"
    # Deterministic ids: importing again yields the same records.
    assert [t.trace_id for t in import_gsm8k_socratic(GSM8K, limit=5)] == [
        t.trace_id for t in traces[:5]
    ]


def test_gsm8k_socratic_rejects_other_files(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "no final line"}])
    with pytest.raises(ValueError, match="#### N"):
        list(import_gsm8k_socratic(path))
    with pytest.raises(ValueError, match="needs the keys"):
        list(import_gsm8k_socratic(_write(tmp_path / "h.jsonl", [{"text": "x"}])))
    with pytest.raises(FileNotFoundError, match="No such file"):
        list(import_gsm8k_socratic(tmp_path / "missing.jsonl"))


@needs_data
def test_strategyqa_real_file() -> None:
    traces = list(import_strategyqa(STRATEGYQA, limit=50))
    rows = [json.loads(line) for line in STRATEGYQA.read_text(encoding="utf-8").splitlines()[:50]]
    for trace, row in zip(traces, rows, strict=True):
        assert trace.source == "strategyqa"
        assert trace.sub_questions == [" ".join(q.split()) for q in row["decomposition"]]
        assert trace.reference == ("yes" if row["answer"] else "no") == trace.answer
        assert trace.solution is not None
        assert trace.solution.splitlines()[-1] == f"{ANSWER_MARKER} {trace.reference}"
        assert default_checker(trace.solution, trace.reference) == 1.0
    assert {t.reference for t in traces} == {"yes", "no"}


def _dump(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    return [dict(m) for m in convert_to_openai_messages(messages)]


def test_openai_chat_import_tells_decomposer_from_solver(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {
            "messages": [
                *_dump(decomposer_messages("How many apples?", "A farm.")),
                {"role": "assistant", "content": "1. How many bags?\n2. How many per bag?"},
            ]
        },
        {
            "messages": [
                *_dump(solver_messages("How many apples?", ["How many bags?"])),
                {"role": "assistant", "content": "3 bags of 2.\nThe answer is: 6"},
            ],
            "reference": "6",
            "metadata": {"api_key": "sk-test-FAKE-0123456789", "team": "a"},
        },
        {
            "messages": [
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "NO_SUBQUESTIONS"},
            ]
        },
    ]
    decomposition, solution, plain = import_openai_chat(_write(tmp_path / "c.jsonl", rows))
    assert decomposition.question == "How many apples?" and decomposition.context == "A farm."
    assert decomposition.sub_questions == ["How many bags?", "How many per bag?"]
    assert decomposition.decomposer is not None and decomposition.solver is None
    assert decomposition.decomposer.messages == rows[0]["messages"][:-1]  # type: ignore[index]
    assert solution.solver is not None and solution.solution == "3 bags of 2.\nThe answer is: 6"
    assert solution.sub_questions == ["How many bags?"] and solution.answer == "6"
    assert solution.score == 1.0
    assert solution.metadata["api_key"] == "[REDACTED]" and solution.metadata["team"] == "a"
    assert plain.question == "Hi?" and plain.sub_questions == []
    assert plain.decomposer == NodeCall(
        messages=[{"role": "user", "content": "Hi?"}], output="NO_SUBQUESTIONS"
    )
    with pytest.raises(ValueError, match="assistant reply"):
        list(
            import_openai_chat(
                _write(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
            )
        )


def _gold() -> list[Trace]:
    return [
        Trace(
            question="Tom has 3 bags of 2 apples. How many apples?",
            sub_questions=["How many bags?", "How many apples per bag?", "Total?", "Extra?"],
            solution="3 x 2 = 6.\nThe answer is: 6",
            reference="6",
            score=1.0,
        ),
        Trace(
            question="What is 2 + 2?",
            sub_questions=["What is 2 + 2?"],
            solution="The answer is: 5",
            reference="4",
            score=0.0,
        ),
    ]


def test_export_trl_and_openai_then_import_back(tmp_path: Path) -> None:
    trl = tmp_path / "sd-t.jsonl"
    assert export_trl_jsonl(_gold(), trl, variant="SD-T") == 2
    rows = [json.loads(line) for line in trl.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["completion"] == [
        {"role": "assistant", "content": "How many bags?\nHow many apples per bag?\nTotal?"}
    ]
    assert rows[0]["prompt"][-1]["role"] == "user" and rows[0]["prompt"][0]["role"] == "system"
    assert export_trl_jsonl(_gold(), trl, variant="SD-R") == 1  # only the correct run
    ft = tmp_path / "ft.jsonl"
    assert export_openai_jsonl(_gold(), ft, variant="SD-T") == 2
    back = list(import_openai_chat(ft))
    assert [t.question for t in back] == [t.question for t in _gold()]
    assert back[0].sub_questions == _gold()[0].sub_questions[:3]  # capped at the prompt's N
    solver_ft = tmp_path / "se.jsonl"
    assert export_openai_jsonl(_gold(), solver_ft, variant="SE-A") == 2
    solved = list(import_openai_chat(solver_ft))
    assert [t.answer for t in solved] == ["6", "4"]  # SE-A puts in the gold answer
    assert solved[0].sub_questions == _gold()[0].sub_questions


def test_to_dataset() -> None:
    pytest.importorskip("datasets")
    ds = to_dataset(_gold(), variant="SE-T")
    assert len(ds) == 2 and {"prompt", "completion"} <= set(ds.column_names)
    assert ds[1]["completion"][0]["content"] == "The answer is: 5"


def test_rescore_with_default_and_custom_checkers() -> None:
    assert [t.score for t in rescore(_gold())] == [1.0, 0.0]
    assert [t.score for t in rescore(_gold(), lambda text, ex: 0.25)] == [0.25, 0.25]
    failed = Trace(question="Q?", reference="1", solution="The answer is: 1", error="boom")
    assert score_trace(failed) is None


@pytest.mark.parametrize(
    ("text", "gold", "expected"),
    [
        ("The answer is: $1,050.00", "1050", 1.0),
        ("so 48 + 24 = 72", "72", 1.0),
        ("The answer is: 71", "72", 0.0),
        ("The answer is: Yes.", "yes", 1.0),
        ("The answer is: no", "yes", 0.0),
        ("Paris, of course\nThe answer is: The Eiffel Tower", "eiffel tower", 1.0),
        ("", "4", 0.0),
    ],
)
def test_default_checker(text: str, gold: str, expected: float) -> None:
    assert default_checker(text, gold) == expected


# ------------------------------------------------------------- bad records: skip, count, stop
_GOOD: dict[str, dict[str, Any]] = {
    "gsm8k-socratic": _ROW,
    "strategyqa": {"question": "Is water wet?", "answer": True, "decomposition": ["Wet?"]},
    "openai-chat": {
        "messages": [
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "The answer is: 1"},
        ]
    },
}
_BAD = {
    "gsm8k-socratic": ({"question": "Q?", "answer": "no final line"}, "#### N"),
    "strategyqa": ({"question": "Q?", "answer": "maybe", "decomposition": []}, "boolean"),
    "openai-chat": ({"messages": [{"role": "user", "content": "x"}]}, "assistant reply"),
}


def _mixed(path: Path, fmt: str, size: int, bad_lines: dict[int, str]) -> Path:
    """``size`` good records (distinct), with the given 1-based lines replaced by bad text."""
    lines = []
    for i in range(size):
        row = json.loads(json.dumps(_GOOD[fmt]))
        if fmt == "openai-chat":
            row["messages"][0]["content"] = f"Question {i}?"
        else:
            row["question"] = f"Question {i}?"
        lines.append(json.dumps(row))
    for number, text in bad_lines.items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", sorted(_BAD))
def test_every_importer_keeps_the_good_records_and_locates_the_bad(
    tmp_path: Path, fmt: str
) -> None:
    bad_row, reason = _BAD[fmt]
    path = _mixed(tmp_path / "f.jsonl", fmt, 6, {2: '{"question": "cut', 5: json.dumps(bad_row)})
    read = IMPORTERS[fmt]
    with pytest.raises(BadRecordError, match=r"f\.jsonl:2: not valid JSON") as caught:
        list(read(path))
    assert isinstance(caught.value, ValueError) and caught.value.record.line == 2
    skipped: list[BadRecord] = []
    traces = list(read(path, skipped=skipped))
    assert [t.metadata["line"] for t in traces] == [1, 3, 4, 6]
    assert [(b.where, b.line) for b in skipped] == [("line 2", 2), ("line 5", 5)]
    assert "not valid JSON" in skipped[0].message and reason in skipped[1].message
    assert str(skipped[1]).startswith("line 5: ")


def test_data_of_the_wrong_shape_is_a_bad_record_not_a_crash(tmp_path: Path) -> None:
    rows: list[Mapping[str, object]] = [
        {"question": "Q?", "answer": True, "decomposition": 5},
        {"question": "Q?", "answer": True, "decomposition": ["a"], "facts": 3},
        _GOOD["strategyqa"],
    ]
    skipped: list[BadRecord] = []
    traces = list(import_strategyqa(_write(tmp_path / "s.jsonl", rows), skipped=skipped))
    assert len(traces) == 1 and [b.line for b in skipped] == [1, 2]
    assert "'decomposition' must be a list" in skipped[0].message
    assert skipped[1].message.startswith("TypeError: ")


def test_import_file_counts_and_the_strict_rule(tmp_path: Path) -> None:
    path = _mixed(tmp_path / "g.jsonl", "gsm8k-socratic", 20, {3: "{", 9: "[]", 12: "null"})
    store = tmp_path / "t.jsonl"
    result = import_file("gsm8k-socratic", path, store)
    assert (result.imported, result.duplicates, result.skipped, result.ok) == (17, 0, 3, False)
    assert [b.line for b in result.errors] == [3, 9, 12]
    assert result.summary().startswith("imported 17, skipped 3 (line 3: not valid JSON")
    assert len(JsonlTraceStore(store)) == 17
    again = import_file("gsm8k-socratic", path, store)
    assert (again.imported, again.duplicates, again.skipped) == (0, 17, 3)
    # strict: the first bad record stops it, and nothing of the file is written.
    fresh = tmp_path / "strict.jsonl"
    stopped = import_file("gsm8k-socratic", path, fresh, strict=True)
    assert stopped.stopped and stopped.imported == 0 and [b.line for b in stopped.errors] == [3]
    assert not fresh.exists()
    assert "stopped at line 3" in stopped.summary() and "nothing imported" in stopped.summary()
    clean = _mixed(tmp_path / "ok.jsonl", "gsm8k-socratic", 4, {})
    done = import_file("gsm8k-socratic", clean, fresh, strict=True)
    assert done.ok and done.imported == 4 and len(JsonlTraceStore(fresh)) == 4
    with pytest.raises(ValueError, match="Unknown importer"):
        import_file("csv", clean, fresh)


def test_summary_caps_the_listed_errors() -> None:
    errors = [BadRecord.at_line(n, f"bad {n}." + "x" * 400) for n in range(1, 9)]
    text = ImportResult("f.jsonl", imported=2, errors=errors).summary()
    assert text.startswith("imported 2, skipped 8 (line 1: bad 1")
    assert "line 5: bad 5" in text and "line 6:" not in text and text.endswith("; and 3 more)")
    assert len(text) < 1600  # each listed message is cut
    assert str(BadRecord.at_index(2, "x")) == "run 3 (index 2): x"
    hinted = [BadRecord.at_line(n, "").with_message("lost", "Dump it whole.") for n in (1, 2)]
    assert ImportResult("f", errors=hinted).summary() == (
        "imported 0, skipped 2 (line 1: lost; line 2: lost). Dump it whole."
    )
    assert str(hinted[0]) == "line 1: lost. Dump it whole."


def test_cli_import_skips_bad_lines_exits_1_and_strict_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {7: '{"question": ', 12: json.dumps({"text": "x"}), 2400: "not json"}
    path = _mixed(tmp_path / "g.jsonl", "gsm8k-socratic", 2500, bad)
    with path.open("a") as handle:
        handle.write('{"question": "torn')  # a cut-off last line
    store = tmp_path / "t.jsonl"
    argv = ["import", "gsm8k-socratic", str(path), "--store", str(store)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "imported 2497 gsm8k-socratic trace(s)" in err
    assert "skipped 4 (line 7: not valid" in err
    assert "line 12: a GSM8K Socratic record needs the keys" in err
    assert "line 2501: not valid JSON" in err and "torn last line" in err
    assert len(JsonlTraceStore(store)) == 2497
    strict = tmp_path / "s.db"
    assert main([*argv[:3], "--store", f"sqlite:///{strict}", "--strict"]) == 1
    err = capsys.readouterr().err
    assert "stopped at line 7" in err and "nothing imported" in err
    assert len(SqliteTraceStore(strict)) == 0
    clean = _mixed(tmp_path / "ok.jsonl", "gsm8k-socratic", 3, {})
    other = tmp_path / "other.jsonl"
    assert main(["import", "gsm8k-socratic", str(clean), "--store", str(other), "--strict"]) == 0
    assert "imported 3 gsm8k-socratic" in capsys.readouterr().out
