"""ChatLocalModel on a tiny in-process Llama (see conftest.py): fast, offline."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

pytest.importorskip("torch")
pytest.importorskip("transformers")

from langchain_divconq.local import (
    ChatLocalModel,
    GenerationParams,
    cut_text,
    load_decomposer,
    load_local_model,
)

PROMPTS = [
    "hello",
    "What is 2 + 2? Explain step by step.",
    "x",
    [SystemMessage("Be brief."), HumanMessage("Name a colour.")],
    "A much longer prompt, so that left padding really matters for the shorter ones in a batch.",
]


class _GenerateSpy:
    """Counts model.generate calls and the batch size of each."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.original = model.generate
        self.sizes: list[int] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.sizes.append(int(kwargs["input_ids"].shape[0]))
        return self.original(*args, **kwargs)


@pytest.fixture
def spy(tiny_model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> _GenerateSpy:
    model, _ = tiny_model_and_tokenizer
    spy = _GenerateSpy(model)
    monkeypatch.setattr(model, "generate", spy)
    return spy


class _Runs(BaseCallbackHandler):
    def __init__(self) -> None:
        self.started: list[UUID] = []
        self.ended: list[UUID] = []
        self.names: list[str | None] = []
        self.lock = threading.Lock()

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, **kw: Any
    ) -> None:
        with self.lock:
            self.started.append(run_id)
            self.names.append(kw.get("name"))

    def on_llm_end(self, response: Any, *, run_id: UUID, **kw: Any) -> None:
        with self.lock:
            self.ended.append(run_id)


def _texts(messages: list[AIMessage]) -> list[str]:
    return [str(m.content) for m in messages]


# ----------------------------------------------------------------------------- basics
def test_invoke_usage_and_metadata(tiny_chat_model: ChatLocalModel) -> None:
    tok = tiny_chat_model.tokenizer
    msg = tiny_chat_model.invoke("What is 2 + 2?")
    assert isinstance(msg, AIMessage)
    assert msg.content
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, tokenize=False
    )
    n_in = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert msg.usage_metadata == {
        "input_tokens": n_in,
        "output_tokens": 12,
        "total_tokens": n_in + 12,
    }
    assert msg.response_metadata["model_name"] == "tiny-llama"
    assert msg.response_metadata["finish_reason"] == "length"
    # The output tokens decode back to the text.
    assert len(tok(msg.content, add_special_tokens=False)["input_ids"]) <= 12


def test_all_call_styles_agree(tiny_chat_model: ChatLocalModel) -> None:
    one = tiny_chat_model.invoke(PROMPTS[1])
    chunks = list(tiny_chat_model.stream(PROMPTS[1]))
    streamed = chunks[0]
    for c in chunks[1:]:
        streamed += c
    assert len(chunks) > 2  # really token by token
    assert streamed.content == one.content
    assert streamed.usage_metadata == one.usage_metadata
    assert streamed.response_metadata["model_name"] == "tiny-llama"
    assert streamed.response_metadata["finish_reason"] == "length"
    assert sum(c.usage_metadata is not None for c in chunks) == 1  # only on the last chunk

    async def run_async() -> tuple[AIMessage, str, list[AIMessage]]:
        a = await tiny_chat_model.ainvoke(PROMPTS[1])
        parts = [c.content async for c in tiny_chat_model.astream(PROMPTS[1])]
        b = await tiny_chat_model.abatch(PROMPTS)
        return a, "".join(str(p) for p in parts), b

    a, astreamed, ab = asyncio.run(run_async())
    assert a.content == one.content
    assert a.usage_metadata == one.usage_metadata
    assert astreamed == one.content
    batched = tiny_chat_model.batch(PROMPTS)
    assert _texts(batched) == _texts(ab)
    assert batched[1].content == one.content
    assert batched[1].usage_metadata == one.usage_metadata


def test_batched_greedy_equals_one_by_one(tiny_chat_model: ChatLocalModel) -> None:
    single = [tiny_chat_model.invoke(p) for p in PROMPTS]
    batched = tiny_chat_model.batch(PROMPTS)
    assert _texts(batched) == _texts(single)
    assert [m.usage_metadata for m in batched] == [m.usage_metadata for m in single]
    assert len(set(_texts(single))) == len(PROMPTS)  # the prompts really differ


# ----------------------------------------------------------------------------- batching
def test_batch_is_one_generate_call(tiny_chat_model: ChatLocalModel, spy: _GenerateSpy) -> None:
    tiny_chat_model.batch(PROMPTS)
    assert spy.sizes == [len(PROMPTS)]


def test_batch_chunks_by_batch_size(
    tiny_model_and_tokenizer: tuple[Any, Any], spy: _GenerateSpy
) -> None:
    model, tok = tiny_model_and_tokenizer
    llm = ChatLocalModel(model=model, tokenizer=tok, max_tokens=4, batch_size=2)
    out = llm.batch(PROMPTS)
    assert len(out) == len(PROMPTS)
    assert sorted(spy.sizes) == [1, 2, 2]


def test_abatch_is_one_generate_call(tiny_chat_model: ChatLocalModel, spy: _GenerateSpy) -> None:
    asyncio.run(tiny_chat_model.abatch(PROMPTS))
    assert spy.sizes == [len(PROMPTS)]


def test_batch_reports_one_run_per_prompt(
    tiny_chat_model: ChatLocalModel, spy: _GenerateSpy
) -> None:
    runs = [_Runs() for _ in PROMPTS]
    configs: list[Any] = [{"callbacks": [h], "run_name": f"item{i}"} for i, h in enumerate(runs)]
    out = tiny_chat_model.batch(PROMPTS, configs)
    assert spy.sizes == [len(PROMPTS)]
    for i, (handler, msg) in enumerate(zip(runs, out, strict=True)):
        assert len(handler.started) == 1
        assert handler.ended == handler.started
        assert handler.names == [f"item{i}"]
        assert msg.id == f"lc_run--{handler.started[0]}-0"


def test_abatch_reports_one_run_per_prompt(tiny_chat_model: ChatLocalModel) -> None:
    handler = _Runs()
    asyncio.run(tiny_chat_model.abatch(PROMPTS, {"callbacks": [handler]}))
    assert len(handler.started) == len(PROMPTS)
    assert sorted(map(str, handler.ended)) == sorted(map(str, handler.started))


def test_batch_return_exceptions_keeps_other_items(
    tiny_chat_model: ChatLocalModel, spy: _GenerateSpy
) -> None:
    bad = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    out = tiny_chat_model.batch(
        ["hello", [HumanMessage(content=bad)], "x"],  # type: ignore[list-item]
        return_exceptions=True,
    )
    assert isinstance(out[1], ValueError)
    assert "text only" in str(out[1])
    assert _texts([out[0], out[2]]) == _texts(tiny_chat_model.batch(["hello", "x"]))


def test_batch_lone_surrogate_fails_only_its_item(
    tiny_chat_model: ChatLocalModel, spy: _GenerateSpy
) -> None:
    expected = _texts(tiny_chat_model.batch(["hello", "x"]))
    spy.sizes.clear()
    out = tiny_chat_model.batch(["hello", "bad \ud800 text", "x"], return_exceptions=True)
    assert isinstance(out[1], ValueError)
    assert "surrogate" in str(out[1])
    assert "U+D800" in str(out[1])
    assert _texts([out[0], out[2]]) == expected
    assert spy.sizes == [2]  # the good prompts still share one generate call
    with pytest.raises(ValueError, match="surrogate"):
        tiny_chat_model.invoke([SystemMessage("ok"), HumanMessage("\udfff")])


def test_failed_item_does_not_hold_up_its_batch(
    tiny_chat_model: ChatLocalModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A prompt rejected before it reaches the batcher must not leave the batcher
    # waiting for it (up to gather_s) before the others run.
    monkeypatch.setattr(ChatLocalModel, "_gather_s", 30.0)
    start = time.monotonic()
    out = tiny_chat_model.batch(["hello", "\ud800", "x"], return_exceptions=True)
    assert isinstance(out[1], ValueError)
    assert time.monotonic() - start < 20


def test_concurrent_invokes_are_safe_and_coalesce(
    tiny_chat_model: ChatLocalModel, spy: _GenerateSpy
) -> None:
    expected = _texts([tiny_chat_model.invoke(p) for p in PROMPTS])
    spy.sizes.clear()
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(PROMPTS) * 2)

    def call(i: int) -> None:
        try:
            barrier.wait()
            results[i] = str(tiny_chat_model.invoke(PROMPTS[i % len(PROMPTS)]).content)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS) * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [results[i] for i in range(len(threads))] == expected * 2
    assert sum(spy.sizes) == len(threads)
    # Requests that arrive while one generate runs share the next one.
    assert len(spy.sizes) < len(threads)


def test_stream_and_batch_in_parallel_threads(tiny_chat_model: ChatLocalModel) -> None:
    expected = str(tiny_chat_model.invoke(PROMPTS[0]).content)
    out: list[str] = []

    def stream() -> None:
        out.append("".join(str(c.content) for c in tiny_chat_model.stream(PROMPTS[0])))

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    batched = tiny_chat_model.batch([PROMPTS[0]] * 3)
    for t in threads:
        t.join()
    assert out == [expected] * 3
    assert _texts(batched) == [expected] * 3


# ----------------------------------------------------------------------------- stopping
def test_stop_strings_cut_output(tiny_chat_model: ChatLocalModel) -> None:
    full = str(tiny_chat_model.invoke(PROMPTS[1]).content)
    stop = full[10:14]
    assert stop and full.find(stop) == 10
    msg = tiny_chat_model.invoke(PROMPTS[1], stop=[stop])
    assert msg.content == full[:10]
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["output_tokens"] < 12  # generation really stopped early
    streamed = "".join(str(c.content) for c in tiny_chat_model.stream(PROMPTS[1], stop=[stop]))
    assert streamed == full[:10]
    batched = tiny_chat_model.batch([PROMPTS[0], PROMPTS[1]], stop=[stop])
    assert batched[1].content == full[:10]
    assert batched[1].usage_metadata == msg.usage_metadata
    # Field-level default stop works too.
    assert (
        tiny_chat_model.model_copy(update={"stop": [stop]}).invoke(PROMPTS[1]).content == full[:10]
    )


def test_eos_ends_generation(tiny_model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tok = tiny_model_and_tokenizer
    llm = ChatLocalModel(model=model, tokenizer=tok, max_tokens=12)
    full = llm.invoke(PROMPTS[1])
    first = llm._generate_texts([[{"role": "user", "content": PROMPTS[1]}]], llm._params(None, {}))
    assert first[0].text == full.content
    # Declare the 4th generated token an end-of-sequence token: generation ends there.
    prompt_ids = llm._encode([{"role": "user", "content": str(PROMPTS[1])}])
    out = model.generate(
        input_ids=__import__("torch").tensor([prompt_ids]), max_new_tokens=12, do_sample=False
    )
    fourth = int(out[0, len(prompt_ids) + 3])
    eos_model = copy.copy(model)
    eos_model.generation_config = copy.deepcopy(model.generation_config)
    eos_model.generation_config.eos_token_id = [tok.eos_token_id, fourth]
    llm2 = ChatLocalModel(model=eos_model, tokenizer=tok, max_tokens=12)
    msg = llm2.invoke(PROMPTS[1])
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["output_tokens"] == 4  # three tokens and the end token
    assert msg.content == tok.decode(out[0, len(prompt_ids) : len(prompt_ids) + 3])
    streamed = list(llm2.stream(PROMPTS[1]))
    assert "".join(str(c.content) for c in streamed) == msg.content
    assert streamed[-1].usage_metadata == msg.usage_metadata


def test_cut_text() -> None:
    params = GenerationParams(max_tokens=8, stop=("STOP", "##"), max_lines=2)
    assert cut_text("a\n\nb\nc\n", params) == ("a\n\nb", True)
    assert cut_text("one STOP two", params) == ("one ", True)
    assert cut_text("x ## y STOP", params) == ("x ", True)
    assert cut_text("a\nb", params) == ("a\nb", False)
    assert cut_text("", GenerationParams(max_tokens=1)) == ("", False)


def test_max_lines_stops_generation(tiny_chat_model: ChatLocalModel) -> None:
    # With the seeded tiny model this prompt yields a newline after ~40 tokens.
    prompt = "line 5: list things"
    llm = tiny_chat_model.model_copy(update={"max_tokens": 64})
    full = llm.invoke(prompt)
    if "\n" not in str(full.content).strip("\n"):
        pytest.skip("the tiny model wrote no multi-line output for this prompt")
    expected, cut = cut_text(str(full.content), GenerationParams(max_tokens=64, max_lines=1))
    assert cut
    msg = llm.invoke(prompt, max_lines=1)
    assert msg.content == expected
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.usage_metadata is not None and full.usage_metadata is not None
    assert msg.usage_metadata["output_tokens"] < full.usage_metadata["output_tokens"]
    streamed = "".join(str(c.content) for c in llm.stream(prompt, max_lines=1))
    assert streamed == expected


# ----------------------------------------------------------------------------- bad input
def test_rejects_wrong_objects(tiny_model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tok = tiny_model_and_tokenizer
    with pytest.raises(TypeError, match="transformers causal LM"):
        ChatLocalModel(model="SmolLM2", tokenizer=tok)
    with pytest.raises(TypeError, match="tokenizer must be"):
        ChatLocalModel(model=model, tokenizer="tok")
    with pytest.raises(ValueError, match="max_tokens"):
        ChatLocalModel(model=model, tokenizer=tok, max_tokens=0)
    with pytest.raises(ValueError, match="stop must be"):
        ChatLocalModel(model=model, tokenizer=tok, stop=[""])
    with pytest.raises(ValueError, match="Extra inputs"):
        ChatLocalModel(model=model, tokenizer=tok, max_new_tokens=3)


def test_rejects_bad_calls(tiny_chat_model: ChatLocalModel) -> None:
    with pytest.raises(TypeError, match="unsupported call arguments \\['top_k'\\]"):
        tiny_chat_model.invoke("hi", top_k=3)
    with pytest.raises(ValueError, match="text only"):
        tiny_chat_model.invoke([HumanMessage(content=[{"type": "image", "url": "http://x"}])])
    with pytest.raises(ValueError, match=r"max_tokens must be a positive int \(received 0\)"):
        tiny_chat_model.invoke("hi", max_tokens=0)
    with pytest.raises(ValueError, match="top_p must be"):
        tiny_chat_model.invoke("hi", top_p=2.0)


def test_model_copy_runs_its_own_model(tiny_chat_model: ChatLocalModel) -> None:
    original = str(tiny_chat_model.invoke("hello").content)
    copied = tiny_chat_model.model_copy(update={"max_tokens": 3})
    short = copied.invoke("hello")
    assert short.usage_metadata is not None
    assert short.usage_metadata["output_tokens"] == 3
    assert original.startswith(str(short.content))
    assert copied._get_batcher() is not tiny_chat_model._get_batcher()


def test_missing_adapter_path_is_clear(tmp_path: Any) -> None:
    missing = tmp_path / "no-such-adapter"
    with pytest.raises(ValueError, match=r"no-such-adapter.*adapter=None"):
        load_local_model(adapter=missing)
    with pytest.raises(ValueError, match=r"adapter_config\.json"):
        load_decomposer(adapter=str(missing))
    with pytest.raises(TypeError, match="adapter must be a str"):
        load_local_model(adapter=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="base must be a str"):
        load_local_model(base=["x"])  # type: ignore[arg-type]


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match=r"pip install 'langchain-divconq\[local\]'"):
        load_local_model()


def test_abatch_beyond_batch_size_and_thread_pool(
    tiny_model_and_tokenizer: tuple[Any, Any], spy: _GenerateSpy
) -> None:
    model, tok = tiny_model_and_tokenizer
    llm = ChatLocalModel(model=model, tokenizer=tok, max_tokens=3, batch_size=16)
    prompts = [f"question number {i}" for i in range(20)]
    out = asyncio.run(llm.abatch(prompts))
    assert len(out) == 20
    assert sorted(spy.sizes) == [4, 16]


# ----------------------------------------------------------------------------- loading
def test_load_local_model_with_lora_adapter(
    tiny_model_and_tokenizer: tuple[Any, Any], tmp_path: Any
) -> None:
    peft = pytest.importorskip("peft")
    model, tok = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(copy.deepcopy(model), lora).save_pretrained(tmp_path / "adapter")

    base = load_local_model(tmp_path / "base", device="cpu", max_tokens=8)
    merged = load_local_model(tmp_path / "base", tmp_path / "adapter", device="cpu", max_tokens=8)
    unmerged = load_local_model(
        tmp_path / "base", str(tmp_path / "adapter"), merge_adapter=False, max_tokens=8
    )
    assert base.model_name == "base"
    assert merged.model_name == "base+adapter"
    assert not isinstance(merged.model, peft.PeftModel)  # merged for inference
    assert isinstance(unmerged.model, peft.PeftModel)
    assert merged.invoke("hello").content != base.invoke("hello").content
    assert unmerged.invoke("hello").usage_metadata == merged.invoke("hello").usage_metadata


def test_load_decomposer_defaults(tiny_model_and_tokenizer: tuple[Any, Any], tmp_path: Any) -> None:
    model, tok = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    decomposer = load_decomposer(tmp_path / "base", adapter=None, max_sub_questions=2)
    assert (decomposer.max_tokens, decomposer.temperature, decomposer.max_lines) == (128, 0.0, 3)
    assert load_decomposer(tmp_path / "base", adapter=None, max_tokens=5).max_tokens == 5
