"""`divconq eval --decomposer-only`: the decomposer alone, every task (hotpotqa included),
beside the trivial plan, with no solver call."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import FakeListChatModel

from langchain_divconq.cli import main

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "break").is_dir(), reason="shared data not present")
def test_decomposer_only_scores_plans_against_gold_and_the_trivial_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built: dict[str, Any] = {}

    def fake_decomposer(spec: str, adapter: str, **kwargs: Any) -> Any:
        built["spec"] = (spec, adapter)
        return FakeListChatModel(
            responses=["Who directed the film?\nWhen was the director born?"] * 50
        )

    def no_solver(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("--decomposer-only must not build a solver")

    monkeypatch.setattr("langchain_divconq.model_specs.build_decomposer", fake_decomposer)
    monkeypatch.setattr("langchain_divconq.model_specs.build_solver", no_solver)
    code = main(
        [
            "eval", "--decomposer-only", "--task", "hotpotqa,bamboogle", "--limit", "6",
            "--data-dir", str(DATA), "--out", str(tmp_path), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    rows = [json.loads(line.split(": ", 1)[1]) for line in out.splitlines()
            if line.startswith("decomposer quality: ")]  # fmt: skip
    hotpot, bamboogle = rows
    assert hotpot["task"] == "hotpotqa" and hotpot["n"] == 6
    assert "delta_vs_trivial" in hotpot and len(hotpot["delta_vs_trivial_ci"]) == 2
    assert hotpot["parse_rate"] == 1.0 and hotpot["declined_rate"] == 0.0
    assert "token_f1" not in bamboogle and 0.0 <= bamboogle["bridge_first_rate"] <= 1.0
    assert "| hotpotqa (6) |" in out and "| bamboogle (6) |" in out
    saved = tmp_path / "decomposer" / "hotpotqa-heldout.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert len(json.loads(saved.read_text())["outputs"]) == 6
