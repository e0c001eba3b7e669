"""ChatLocalModel's backend choice: torch or llama.cpp, and which one ran."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from langchain_divconq.local import ChatLocalModel, backends, load_local_model


def _chat(model_and_tokenizer: tuple[Any, Any], **kwargs: Any) -> ChatLocalModel:
    model, tok = model_and_tokenizer
    return ChatLocalModel(model=model, tokenizer=tok, max_tokens=6, fast_decoding=True, **kwargs)


@pytest.fixture
def no_llamacpp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "llamacpp_available", lambda: False)


@pytest.mark.usefixtures("no_llamacpp")
def test_without_llama_cpp_auto_runs_torch_and_says_so(
    tiny_model_and_tokenizer: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="langchain_divconq.local.backends")
    message = _chat(tiny_model_and_tokenizer, backend="auto").invoke("hello")
    assert message.response_metadata["backend"] == "torch"
    assert "pip install 'langchain-divconq[llamacpp]'" in caplog.text


def test_default_backend_is_the_exact_torch_path_even_with_llama_cpp_installed(
    tiny_model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The q8_0 GGUF changed 22% of greedy plans (#18): the default must be what we evaluate.
    monkeypatch.setattr(backends, "llamacpp_available", lambda: True)
    chat = _chat(tiny_model_and_tokenizer)
    assert chat.backend == "torch"
    assert chat.invoke("hello").response_metadata["backend"] == "torch"


@pytest.mark.usefixtures("no_llamacpp")
def test_without_llama_cpp_forcing_it_is_a_clear_import_error(
    tiny_model_and_tokenizer: tuple[Any, Any],
) -> None:
    with pytest.raises(ImportError, match=r"langchain-divconq\[llamacpp\]"):
        _chat(tiny_model_and_tokenizer, backend="llamacpp").invoke("hello")


def test_torch_backend_never_asks_for_llama_cpp(
    tiny_model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> bool:
        raise AssertionError("backend='torch' looked for llama.cpp")

    monkeypatch.setattr(backends, "llamacpp_available", refuse)
    out = _chat(tiny_model_and_tokenizer, backend="torch").invoke("hello")
    assert out.response_metadata["backend"] == "torch"


def test_sampling_and_streaming_report_torch(tiny_model_and_tokenizer: tuple[Any, Any]) -> None:
    llm = _chat(tiny_model_and_tokenizer, backend="torch")
    assert llm.invoke("hello", temperature=0.7).response_metadata["backend"] == "torch"
    last = list(llm.stream("hello"))[-1]
    assert last.response_metadata["backend"] == "torch"


def test_auto_needs_a_model_folder(
    tiny_model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "llamacpp_available", lambda: True)
    model, _ = tiny_model_and_tokenizer
    # The fixture's model was not loaded from a folder: no GGUF to write, so torch.
    assert backends.llamacpp_engine_for(model, "auto") is None
    with pytest.raises(ValueError, match="not loaded from a folder"):
        backends.llamacpp_engine_for(model, "llamacpp")


def test_llama_cpp_backend_matches_torch_in_f32(
    tiny_model_and_tokenizer: tuple[Any, Any], tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is optional")
    pytest.importorskip("gguf")
    model, tok = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    prompts = ["hello there", "What is 2 + 3?", "Name three colours."]
    torch_llm = load_local_model(tmp_path / "tiny", max_tokens=12, backend="torch")
    llama_llm = load_local_model(
        tmp_path / "tiny", max_tokens=12, backend="llamacpp", gguf_type="f32"
    )
    for prompt in prompts:
        ref = torch_llm.invoke(prompt)
        got = llama_llm.invoke(prompt)
        assert got.response_metadata["backend"] == "llamacpp"
        assert ref.response_metadata["backend"] == "torch"
        assert got.content == ref.content
        assert got.usage_metadata == ref.usage_metadata
    # Rows decoded together go through other kernel shapes; on this random model's
    # near-flat logits a rounding difference can flip a token now and then.
    batched = llama_llm.batch(prompts)
    assert all(m.response_metadata["backend"] == "llamacpp" for m in batched)
    same = [m.content == torch_llm.invoke(p).content for m, p in zip(batched, prompts, strict=True)]
    assert sum(same) >= 2, same


def test_auto_stays_on_torch_when_llama_cpp_fails_to_start(
    tiny_model_and_tokenizer: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_divconq.local import gguf_export

    model, tok = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    loaded = load_local_model(tmp_path / "tiny", max_tokens=4, backend="torch").model
    monkeypatch.setattr(backends, "llamacpp_available", lambda: True)
    if importlib.util.find_spec("llama_cpp") is None:
        # Without llama-cpp-python (as in CI) a stand-in lets the engine module import,
        # so the start-up failure below is the one under test.
        monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("libllama.so: cannot open shared object file")

    monkeypatch.setattr(gguf_export, "gguf_for_folder", broken)
    assert backends.llamacpp_engine_for(loaded, "auto") is None
    with pytest.raises(OSError, match="libllama"):
        backends.llamacpp_engine_for(loaded, "llamacpp")
