"""The package imports light: no torch/transformers, and a pinned public API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import langchain_divconq

ROOT = Path(__file__).resolve().parents[2]

EXPECTED_ALL = [
    "DivConqChain",
    "TraceRecorder",
    "__version__",
    "create_divconq_chain",
    "create_single_stage_chain",
    "extract_answer",
    "parse_sub_questions",
]

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    return set(out.stdout.split())


def test_import_package_does_not_import_heavy_libraries() -> None:
    loaded = _modules_after("import langchain_divconq")
    assert not [m for m in HEAVY if m in loaded]
    assert "langchain_divconq.local.chat_model" not in loaded


def test_import_cli_and_local_module_stay_light() -> None:
    # local.py imports torch lazily, inside the functions that need it.
    loaded = _modules_after(
        "import langchain_divconq.cli.router, langchain_divconq.local.chat_model"
    )
    assert not [m for m in HEAVY if m in loaded]


def test_public_api_is_pinned() -> None:
    assert sorted(langchain_divconq.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        if name == "TraceRecorder" and not (ROOT / "langchain_divconq" / "tracing.py").is_file():
            continue  # provided lazily by tracing.py once that module lands
        assert getattr(langchain_divconq, name) is not None


def test_unknown_attribute_is_a_clear_error() -> None:
    try:
        langchain_divconq.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_decoding_modules_pin_their_api() -> None:
    from langchain_divconq import generation, prompt_cache, speculation, stopping

    assert sorted(prompt_cache.__all__) == ["PromptCache", "prompt_cache_for"]
    assert speculation.__all__ == ["DraftTuner"]
    assert set(stopping.__all__) <= set(generation.__all__)  # re-exported for callers
    assert "generate_greedy" in generation.__all__ and "DraftKind" in generation.__all__
    loaded = _modules_after(
        "import langchain_divconq.local.engine.generation, "
        "langchain_divconq.local.engine.prompt_cache, langchain_divconq.local.engine.speculation"
    )
    assert not [m for m in HEAVY if m in loaded]  # torch only once decoding starts
