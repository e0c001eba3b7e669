"""The runnable examples: ``examples/collect_distill_compare.py`` at its smallest scale."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def _load_example(name: str) -> ModuleType:
    path = REPO_ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_collect_distill_compare_smallest_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Collect 8 scored traces, distill 2 steps, compare on 4 questions: all outputs written."""
    for extra in ("peft", "trl", "datasets", "matplotlib"):
        pytest.importorskip(extra)
    if not (DATA_DIR / "gsm8k" / "train.jsonl").is_file():
        pytest.skip(f"no GSM8K data under {DATA_DIR}")
    example = _load_example("collect_distill_compare")
    out = tmp_path / "loop"
    argv = [
        "--out", str(out), "--data-dir", str(DATA_DIR), "--limit", "8", "--max-steps", "2",
        "--eval-limit", "4", "--solver-max-tokens", "64", "--threads", "1",
    ]  # fmt: skip
    assert example.main(argv) == 0

    # Collect: one trace per question, each with its gold reference and a score.
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 8
    assert all(t["reference"] and t["score"] is not None for t in traces)

    # Distill: a loadable adapter trained for the asked steps, on the variant it reports.
    compare = json.loads((out / "compare.json").read_text())
    new = [name for name in compare if name.startswith("new adapter (")]
    assert len(new) == 1
    variant = new[0].removeprefix("new adapter (").split(",")[0]
    assert variant in ("SD-R", "SD-T")
    adapter = out / f"adapter-{variant.lower()}"
    assert (adapter / "adapter_model.safetensors").is_file()
    meta = json.loads((adapter / "divconq_adapter.json").read_text())
    assert meta["global_step"] == 2
    assert meta["variant"] == variant
    assert (out / "data" / "sd-t" / "dataset_dict.json").is_file()

    # Compare: the three rows, on the same 4 held-out questions, in the table and on stdout.
    names = list(compare)
    assert names[0] == "trivial plan" and names[2] == new[0]
    assert names[1].startswith("shipped adapter (")
    assert all(row["n"] == 4 for row in compare.values())
    assert "vs_trivial" in compare[new[0]] and "vs_trivial" not in compare["trivial plan"]
    table = (out / "table.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == list(compare)
    assert table in capsys.readouterr().out
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
