"""One real run of ``divconq ask`` on the embedded SmolLM2 (decomposer and solver)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from langchain_divconq.cli import main

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?"
)


@pytest.mark.slow
def test_divconq_ask_json_on_embedded_model(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the default solver is then local
    try:
        from langchain_divconq.local.embedded import embedded_model_path

        embedded_model_path()
    except ImportError as exc:
        pytest.skip(f"embedded model not installed: {exc}")

    status = main(["ask", QUESTION, "--json"])  # exactly the README command
    captured = capsys.readouterr()
    assert status == 0, captured.err
    result = json.loads(captured.out)
    assert {"question", "sub_questions", "solution", "answer"} <= set(result)
    assert result["question"] == QUESTION
    assert isinstance(result["sub_questions"], list)
    assert all(isinstance(q, str) and q for q in result["sub_questions"])
    assert isinstance(result["solution"], str) and result["solution"].strip()
    assert result["answer"] is None or isinstance(result["answer"], str)


def test_divconq_ask_rejects_missing_adapter(
    capsys: pytest.CaptureFixture[str], tmp_path: pytest.TempPathFactory
) -> None:
    status = main(["ask", QUESTION, "--adapter", f"{tmp_path}/missing", "--solver", "local"])
    assert status == 2
    err = capsys.readouterr().err
    assert "missing" in err and "adapter" in err
