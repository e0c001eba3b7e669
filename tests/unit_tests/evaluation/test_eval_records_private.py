"""Evaluation records are owner-only files and never keep a credential an upstream error quoted."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from langchain_divconq import create_divconq_chain
from langchain_divconq.cli import main
from langchain_divconq.evaluation.evaluator import evaluate, load_records
from langchain_divconq.secrets import REDACTED
from tests.unit_tests.evaluation.test_evaluation import _decomposer, _task, _write_gsm8k
from tests.unit_tests.fakes import ScriptedChatModel

BEARER = "sk-proj-FAKE0123456789abcdef"
ANTHROPIC = "sk-ant-FAKE0123456789abcdef"
TOKEN = "abcd1234efgh5678"
UPSTREAM = (
    f"Error code: 401 - request had Authorization: Bearer {BEARER} and api_key={ANTHROPIC} "
    f"at https://api.example.com/v1?token={TOKEN}"
)


def _leaky_solver() -> ScriptedChatModel:
    return ScriptedChatModel(
        replies={
            "Q0": f"RAISE: {UPSTREAM}",
            "Q1": f"I used token={TOKEN} here.\nThe answer is: 10",
        }
    )


@pytest.fixture
def wide_umask() -> Any:
    old = os.umask(0o022)  # what most users have: files would be world-readable
    yield
    os.umask(old)


def test_eval_records_are_private_and_scrubbed(tmp_path: Path, wide_umask: None) -> None:
    records = tmp_path / "runs" / "records.jsonl"
    chain = create_divconq_chain(_decomposer(), _leaky_solver())
    result = evaluate(chain, _task(2), records_path=records, progress=False)
    assert stat.S_IMODE(records.stat().st_mode) == 0o600
    raw = records.read_text()
    for secret in (BEARER, ANTHROPIC, TOKEN):
        assert secret not in raw
        assert secret not in result.model_dump_json()
    failed, ok = load_records(records)
    assert failed.error is not None and failed.error.startswith("RuntimeError: Error code: 401")
    assert f"Authorization: {REDACTED}" in failed.error and f"api_key={REDACTED}" in failed.error
    assert "api.example.com" in failed.error  # the rest of the message still helps
    # Scored on the model's text, stored scrubbed.
    assert ok.score == 1.0 and ok.solution == f"I used token={REDACTED} here.\nThe answer is: 10"


def test_cli_eval_out_files_holding_model_io_are_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wide_umask: None
) -> None:
    from langchain_divconq.cli import eval as eval_cli

    _write_gsm8k(tmp_path / "data")
    monkeypatch.setattr(
        eval_cli,
        "build_chain",
        lambda args, **_: create_divconq_chain(_decomposer(), _leaky_solver()),
    )
    out = tmp_path / "out"
    argv = ["eval", "--task", "gsm8k", "--limit", "2", "--out", str(out), "--no-progress"]
    argv += ["--data-dir", str(tmp_path / "data"), "--solver", "local", "--quality"]
    assert main(argv) == 0
    held = [*out.glob("runs/*/*.jsonl"), *out.glob("quality/*/*.json")]
    assert len(held) == 2
    for path in held:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        text = path.read_text()
        assert BEARER not in text and TOKEN not in text, path
