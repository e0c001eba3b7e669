"""`divconq dataset` / `divconq distill` on bad input: clear errors, never 0 rows with exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("datasets")

from langchain_divconq.cli.router import main
from langchain_divconq.tracing.store import JsonlTraceStore
from langchain_divconq.tracing.trace import Trace
from langchain_divconq.training.dataset import NoExamplesError, build_dataset
from langchain_divconq.training.stores import iter_traces


def _good(i: int) -> str:
    return Trace(question=f"Q{i}?", sub_questions=["A?"], score=1.0).model_dump_json()


def _corrupt_store(path: Path, good: int = 0) -> Path:
    lines = [
        "{not json",
        '{"question": 5}',
        _good(99)[:-10],  # cut short: no longer valid JSON
        "\x00\x00garbage",
        json.dumps({**json.loads(_good(98)), "schema_version": 999}),
    ]
    lines += [_good(i) for i in range(good)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_dataset_from_only_corrupt_lines_fails_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _corrupt_store(tmp_path / "t.jsonl")
    out = tmp_path / "data"
    code = main(["dataset", "--store", str(store), "--variant", "SD-T", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert not out.exists()
    assert "0 traces read" in err
    assert "5 lines skipped" in err
    assert "3 not valid JSON" in err
    assert "1 not a valid trace" in err
    assert "1 of a newer schema" in err
    assert f"{store}:1" in err  # where to look


def test_dataset_reports_skipped_lines_even_when_it_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _corrupt_store(tmp_path / "t.jsonl", good=3)
    out = tmp_path / "data"
    argv = ["dataset", "--store", str(store), "--variant", "SD-T", "--out", str(out)]
    assert main([*argv, "--val-fraction", "0"]) == 0
    captured = capsys.readouterr()
    assert "3 train" in captured.out
    assert "5 lines skipped" in captured.err
    info = json.loads((out / "divconq_dataset.json").read_text(encoding="utf-8"))
    assert info["traces_read"] == 3 and info["lines_skipped"] == 5


def test_iter_traces_reports_what_it_skipped(tmp_path: Path) -> None:
    store = _corrupt_store(tmp_path / "t.jsonl", good=2)
    skipped: list[tuple[str, str]] = []
    assert [t.question for t in iter_traces(store, skipped=skipped)] == ["Q0?", "Q1?"]
    assert [where for where, _ in skipped] == [f"{store}:{n}" for n in range(1, 6)]
    assert len(JsonlTraceStore(store)) == 2


def test_build_dataset_with_no_examples_raises_no_examples_error() -> None:
    with pytest.raises(NoExamplesError, match=r"0 of 1 traces"):
        build_dataset([Trace(question="Q?", error="boom")], variant="SD-T")
    with pytest.raises(ValueError, match=r"0 traces"):
        build_dataset([], variant="SE-A")


def test_distill_on_an_empty_dataset_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "empty"
    DatasetDict({"train": Dataset.from_dict({"prompt": [], "completion": []})}).save_to_disk(
        str(folder)
    )
    code = main(["distill", "--dataset", str(folder), "--output-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2
    assert "IndexError" not in err
    assert str(folder) in err and "no rows" in err


def test_read_metadata_of_a_damaged_file_names_it(tmp_path: Path) -> None:
    from langchain_divconq.training.distillation import METADATA_FILE, read_metadata

    (tmp_path / METADATA_FILE).write_text("{oops", encoding="utf-8")
    with pytest.raises(ValueError, match=r"divconq_adapter\.json.*not valid JSON"):
        read_metadata(tmp_path)
