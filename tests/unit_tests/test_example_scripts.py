"""examples/openai_solver.py and examples/collect_traces.py, offline against fakes.

The solver example is run against a real ``divconq serve`` app in-process (the
server tests' ``running_server``): with only a base URL it must take the served
model ids from ``/v1/models`` instead of asking for gpt-4o-mini (a 404 there).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.unit_tests.fakes import running_server, served_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def solver_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    pytest.importorskip("langchain_openai")
    pytest.importorskip("fastapi")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DIVCONQ_SOLVER_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DIVCONQ_STRONG_MODEL", raising=False)
    module = _load("openai_solver")
    # The local decomposer stand-in: answers the decomposer prompt with two sub-questions.
    monkeypatch.setattr(module, "load_decomposer", served_model)
    return module


def test_openai_solver_takes_the_served_model_from_v1_models(
    solver_example: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    from langchain_divconq.serving.app import create_app

    served = served_model()
    with running_server(create_app(served, model_id="my-local-solver")) as url:
        solver_example.main(["--base-url", url])
    out = capsys.readouterr().out
    assert f"solver: my-local-solver (alternative: my-local-solver) at {url}" in out
    assert "answer: 72" in out and "answer with my-local-solver: 72" in out
    assert served.batch_sizes == [1, 1]  # the default and the alternative solver, no 404


def test_openai_solver_model_names_from_flags_and_environment(
    solver_example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_listing(base_url: str, api_key: str) -> list[str]:
        raise AssertionError("named models need no /v1/models")

    monkeypatch.setattr(solver_example, "served_models", no_listing)
    pick = solver_example.pick_models
    assert pick("http://x/v1", "k", "a", "b") == ("a", "b")
    assert pick(None, "k", None, None) == ("gpt-4o-mini", "gpt-4o")  # api.openai.com
    monkeypatch.setattr(solver_example, "served_models", lambda url, key: ["m1", "m2"])
    assert pick("http://x/v1", "k", None, None) == ("m1", "m2")
    assert pick("http://x/v1", "k", "mine", None) == ("mine", "m2")
    monkeypatch.setattr(solver_example, "served_models", lambda url, key: [])
    with pytest.raises(SystemExit, match="lists no model"):
        pick("http://x/v1", "k", None, None)

    from langchain_divconq.serving.app import create_app

    monkeypatch.setenv("DIVCONQ_SOLVER_MODEL", "named")
    monkeypatch.setenv("DIVCONQ_STRONG_MODEL", "named")
    monkeypatch.setattr(solver_example, "served_models", no_listing)
    with running_server(create_app(served_model(), model_id="named")) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        solver_example.main([])  # both models from the environment
    with pytest.raises(SystemExit, match="Set OPENAI_API_KEY"):
        monkeypatch.delenv("OPENAI_BASE_URL")
        solver_example.main([])


def test_collect_traces_records_scored_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import langchain_divconq.local as local
    from langchain_divconq.tracing.store import open_store

    module = _load("collect_traces")
    # The embedded models' stand-ins (the slow path is the same code with real models).
    monkeypatch.setattr(local, "load_decomposer", served_model)
    monkeypatch.setattr(local, "load_local_model", lambda **kwargs: served_model())
    store = tmp_path / "traces.jsonl"
    module.main(["--store", str(store)])
    assert "3 traces -> " in capsys.readouterr().out
    traces = sorted(open_store(str(store)).read(), key=lambda t: t.question)
    assert len(traces) == 3
    # served_model's solution ends "The answer is: 72": right for Natalia's question only
    assert [t.score for t in traces] == [0.0, 1.0, 0.0]
    assert all(t.reference and len(t.sub_questions) == 2 for t in traces)
    assert all(t.decomposer is not None and t.solver is not None for t in traces)


def test_collect_traces_reads_a_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import langchain_divconq.local as local
    from langchain_divconq.tracing.store import open_store

    data = Path(__file__).resolve().parents[3] / "shared" / "data"
    if not (data / "gsm8k").is_dir():
        pytest.skip("../shared/data/gsm8k is not here")
    monkeypatch.setattr(local, "load_decomposer", served_model)
    monkeypatch.setattr(local, "load_local_model", lambda **kwargs: served_model())
    store = tmp_path / "t.jsonl"
    module = _load("collect_traces")
    module.main(["--store", str(store), "--task", "gsm8k", "--limit", "2", "--data-dir", str(data)])
    traces = list(open_store(str(store)).read())
    assert len(traces) == 2 and all(t.reference for t in traces)
