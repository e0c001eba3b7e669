"""``divconq collect`` (run a chain over a task into a store, resumable) and ``divconq import``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import langchain_divconq.cli.collect as cli_collect
import langchain_divconq.cli.router as cli
import langchain_divconq.tasks as tasks
from langchain_divconq.tasks import Example, GSM8KTask
from langchain_divconq.tracing.collect import collect
from langchain_divconq.tracing.store import JsonlTraceStore, SqliteTraceStore, open_store
from tests.unit_tests.fakes import make_chain, question

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def _task(n: int = 10) -> GSM8KTask:
    # The fake solver answers 2 * i; item 3's gold answer is wrong on purpose.
    examples = [
        Example(id=str(i), question=question(i), answer=str(2 * i + (i == 3))) for i in range(n)
    ]
    return GSM8KTask(name="gsm8k", split="train", examples=examples)


@pytest.fixture
def fake_world(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Route the CLI to a tiny task and a fake chain; tests may swap the chain."""
    world: dict[str, Any] = {"chain": make_chain(), "loads": []}

    def load_task(name: str, **kwargs: Any) -> GSM8KTask:
        world["loads"].append((name, kwargs))
        return _task()

    monkeypatch.setattr(tasks, "load_task", load_task)
    monkeypatch.setattr(cli_collect, "build_chain", lambda args: world["chain"])
    return world


def _collect(store: str, limit: int, *extra: str) -> int:
    argv = ["collect", "--task", "gsm8k", "--split", "train", "--limit", str(limit)]
    return cli.main([*argv, "--store", store, "--concurrency", "4", "--no-progress", *extra])


def test_collect_records_scored_traces_and_resumes(
    tmp_path: Path, fake_world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "traces.jsonl"
    assert _collect(str(path), 6, "--tag", "teacher") == 0
    assert fake_world["loads"] == [("gsm8k", {"split": "train", "data_dir": None})]
    assert "ran 6 question(s) (5 correct, 0 failed), skipped 0" in capsys.readouterr().out
    traces = list(JsonlTraceStore(path))
    assert [t.question for t in traces] == [question(i) for i in range(6)]
    for i, trace in enumerate(traces):
        assert trace.metadata == {"task": "gsm8k", "split": "train", "example_id": str(i)}
        assert trace.reference == str(2 * i + (i == 3))
        assert trace.score == (0.0 if i == 3 else 1.0)
        assert trace.tags == ["collect", "gsm8k", "teacher"]
        assert trace.decomposer is not None and trace.solver is not None
    # Resume: only the four new questions run.
    assert _collect(str(path), 10) == 0
    assert "ran 4 question(s) (4 correct, 0 failed), skipped 6" in capsys.readouterr().out
    assert [t.question for t in JsonlTraceStore(path)] == [question(i) for i in range(10)]


def test_failed_runs_are_kept_and_retried_on_resume(
    tmp_path: Path, fake_world: dict[str, Any]
) -> None:
    store = f"sqlite:///{tmp_path}/t.db"
    fake_world["chain"] = make_chain(fail_ids=frozenset({1, 2}))
    assert _collect(store, 4) == 0
    fake_world["chain"] = make_chain()
    assert _collect(store, 4) == 0
    traces = list(open_store(store))
    failed = [t for t in traces if t.error]
    assert sorted(t.question for t in failed) == [question(1), question(2)]
    ok = [t.question for t in traces if t.error is None]
    assert sorted(ok) == sorted(question(i) for i in range(4))


def test_all_failed_exits_nonzero(tmp_path: Path, fake_world: dict[str, Any]) -> None:
    fake_world["chain"] = make_chain(fail_ids=frozenset(range(10)))
    assert _collect(str(tmp_path / "t.jsonl"), 3) == 1
    assert len(JsonlTraceStore(tmp_path / "t.jsonl")) == 3


@pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason="shared data sets are not here")
def test_collect_on_the_real_task_loader(tmp_path: Path) -> None:
    task = tasks.load_task("gsm8k", split="test", data_dir=DATA)
    store = SqliteTraceStore(tmp_path / "t.db")
    summary = collect(make_chain(), task, store, limit=3, concurrency=2, progress=False)
    assert (summary.attempted, summary.skipped, summary.failed) == (3, 0, 0)
    traces = list(store)
    assert [t.question for t in traces] == [e.question for e in task.examples[:3]]
    assert [t.reference for t in traces] == [e.answer for e in task.examples[:3]]
    assert all(t.score == 0.0 for t in traces)  # the echo solver cannot do GSM8K
    again = collect(make_chain(), task, store, limit=3, progress=False)
    assert (again.attempted, again.skipped) == (0, 3)


def test_collect_rejects_bad_arguments(tmp_path: Path) -> None:
    store = JsonlTraceStore(tmp_path / "t.jsonl")
    with pytest.raises(ValueError, match="concurrency"):
        collect(make_chain(), _task(), store, concurrency=0)
    with pytest.raises(ValueError, match="limit"):
        collect(make_chain(), _task(), store, limit=-1)


@pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason="shared data sets are not here")
@pytest.mark.parametrize("store_name", ["t.jsonl", "t.db"])
def test_import_is_idempotent(
    tmp_path: Path, store_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / store_name)
    path = str(DATA / "gsm8k" / "test_socratic.jsonl")
    argv = ["import", "gsm8k-socratic", path, "--store", store, "--limit", "20"]
    assert cli.main(argv) == 0
    assert "imported 20 gsm8k-socratic trace(s)" in capsys.readouterr().out
    assert cli.main(argv) == 0
    assert "imported 0 gsm8k-socratic trace(s)" in capsys.readouterr().out
    strategy = str(DATA / "strategyqa" / "dev.jsonl")
    assert cli.main(["import", "strategyqa", strategy, "--store", store, "--limit", "5"]) == 0
    loaded = open_store(store)
    assert len(loaded) == 25
    assert len(list(loaded.filter(source="strategyqa"))) == 5


def test_import_reports_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "import",
        "openai-chat",
        str(tmp_path / "nope.jsonl"),
        "--store",
        str(tmp_path / "x.jsonl"),
    ]
    assert cli.main(argv) == 2
    assert "No such file" in capsys.readouterr().err


def test_import_formats_match_the_importers() -> None:
    from langchain_divconq.tracing.collect import IMPORT_FORMATS
    from langchain_divconq.tracing.importers import IMPORTERS

    assert sorted(IMPORT_FORMATS) == sorted(IMPORTERS)
