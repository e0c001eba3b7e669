"""DistillConfig errors name the field (or the YAML line), say what was received, and the
CLI exits 2 without a traceback unless -v."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from langchain_divconq.cli import main
from langchain_divconq.training import DistillConfig


@pytest.mark.parametrize(
    ("data", "field", "received"),
    [
        ({"lora_r": "eight"}, "lora_r", "'eight' (str)"),
        ({"learning_rate": "fast"}, "learning_rate", "'fast' (str)"),
        ({"resume": "maybe"}, "resume", "'maybe' (str)"),
        ({"batch_size": 2.5}, "batch_size", "2.5 (float)"),
        ({"target_modules": [1, 2]}, "target_modules", "[1, 2] (list)"),
        ({"num_threads": "two"}, "num_threads", "'two' (str)"),
        ({"max_steps": True}, "max_steps", "True (bool)"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_field(
    data: dict[str, object], field: str, received: str
) -> None:
    pattern = rf"DistillConfig\.{field} must be .*{re.escape(received)}"
    with pytest.raises(ValueError, match=pattern) as info:
        DistillConfig.from_dict(data)
    assert f"--{field.replace('_', '-')}" in str(info.value)


def test_numbers_and_nulls_that_fit_are_accepted() -> None:
    cfg = DistillConfig.from_dict({"num_epochs": 2, "num_threads": None, "lora_r": 4})
    assert cfg.num_epochs == 2.0 and isinstance(cfg.num_epochs, float)
    assert cfg.lora_alpha == 8


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("lora_r: 8\n  max_steps: [1,\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML at line 2, column \d+"):
        DistillConfig.from_yaml(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lora_r: eight\n", "DistillConfig.lora_r must be an integer, got 'eight'"),
        ("lora_r: 8\n  max_steps: [1,\n", "not valid YAML at line 2"),
    ],
)
def test_cli_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["distill", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert main(["-v", "distill", "--config", str(path)]) == 2
    assert "Traceback" in capsys.readouterr().err
