"""The fast greedy engine returns exactly what ``model.generate(do_sample=False)`` returns."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from langchain_divconq import prompts  # noqa: E402
from langchain_divconq.local.engine.generation import (  # noqa: E402
    DraftKind,
    decomposer_stop,
    generate_greedy,
    stop_strings,
    text_stop_checker,
)
from langchain_divconq.local.engine.speculation import DraftTuner, _prompt_lookup  # noqa: E402
from tests.unit_tests.tiny import tiny_llama  # noqa: E402

GSM8K = Path(__file__).resolve().parents[4] / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from langchain_divconq.local.embedded import embedded_model_path

    try:
        path = embedded_model_path()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"embedded model unavailable: {exc}")
    return transformers.AutoTokenizer.from_pretrained(path)


def _tiny_llama(tokenizer: Any, seed: int, **extra: Any) -> Any:
    return tiny_llama(len(tokenizer), seed, eos_token_id=2, **extra)


@pytest.fixture(scope="module")
def tiny(tokenizer: Any) -> Any:
    return _tiny_llama(tokenizer, 0, bos_token_id=1, pad_token_id=2)


def _questions(n: int) -> list[str]:
    if GSM8K.is_file():
        with GSM8K.open() as f:
            return [json.loads(line)["question"] for _, line in zip(range(n), f, strict=False)]
    return [f"Tom has {i + 3} apples and buys {i + 5} more. How many apples now?" for i in range(n)]


def _prompt_ids(tokenizer: Any, question: str) -> list[int]:
    messages = [
        {"role": "system" if m.type == "system" else "user", "content": m.content}
        for m in prompts.decomposer_messages(question)
    ]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    return list(ids)


def _reference(model: Any, prompt: list[int], max_new_tokens: int, **kwargs: Any) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, **kwargs
        )
    return list(out[0, len(prompt) :].tolist())


def _reference_batch(
    model: Any, prompt_ids: list[list[int]], max_new_tokens: int
) -> list[list[int]]:
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[2] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False
        )
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[: row.index(2) + 1] if 2 in row else row)  # generate pads after eos
    return rows


@pytest.mark.parametrize(
    ("draft", "static_cache"), [("lookup", False), ("int8", False), ("lookup", True)]
)
def test_batch_one_matches_generate(
    tokenizer: Any, tiny: Any, draft: DraftKind, static_cache: bool
) -> None:
    for question in _questions(3):
        prompt = _prompt_ids(tokenizer, question)
        expected = _reference(tiny, prompt, 32)
        [got] = generate_greedy(
            tiny, [prompt], max_new_tokens=32, draft=draft, static_cache=static_cache
        )
        assert got.token_ids == expected
        assert got.finish_reason == "length"


def test_int8_draft_is_the_default_on_cpu(tokenizer: Any, tiny: Any) -> None:
    from langchain_divconq.local.engine import draft_model

    prompt = _prompt_ids(tokenizer, _questions(1)[0])
    [auto] = generate_greedy(tiny, [prompt], max_new_tokens=24, adaptive_draft=False)
    [lookup] = generate_greedy(tiny, [prompt], max_new_tokens=24, draft="lookup")
    assert auto.token_ids == lookup.token_ids == _reference(tiny, prompt, 24)
    assert tiny in draft_model._drafters  # "auto" built (and cached) the int8 drafter
    # A random tiny model's int8 copy still agrees with it on most tokens.
    assert auto.forward_passes < lookup.forward_passes


def test_bad_draft_kind(tiny: Any) -> None:
    with pytest.raises(ValueError, match="draft must be"):
        generate_greedy(tiny, [[1, 2]], max_new_tokens=4, draft="int4")  # type: ignore[arg-type]


def test_speculation_accepts_drafts(tokenizer: Any) -> None:
    # With the blocks' outputs zeroed and tied embeddings, the model echoes its last
    # token forever: a continuation prompt lookup drafts perfectly once it repeats.
    echo = _tiny_llama(tokenizer, 1, tie_word_embeddings=True)
    with torch.no_grad():
        for layer in echo.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    prompt = _prompt_ids(tokenizer, _questions(1)[0])
    expected = _reference(echo, prompt, 40)
    [fast] = generate_greedy(
        echo, [prompt], max_new_tokens=40, num_draft_tokens=4, adaptive_draft=False
    )
    [plain] = generate_greedy(echo, [prompt], max_new_tokens=40, num_draft_tokens=0)
    [static] = generate_greedy(echo, [prompt], max_new_tokens=40, static_cache=True)
    [drafted] = generate_greedy(
        echo, [prompt], max_new_tokens=40, draft="int8", num_draft_tokens=16, adaptive_draft=False
    )
    assert fast.token_ids == plain.token_ids == static.token_ids == drafted.token_ids == expected
    assert plain.forward_passes == 40
    assert fast.forward_passes <= 12  # about five tokens per pass once it repeats
    assert static.forward_passes <= 12
    assert drafted.forward_passes <= 4  # the prompt pass, then 17 tokens per verify pass


def test_eos_ends_row_like_generate(tokenizer: Any, tiny: Any) -> None:
    prompt = _prompt_ids(tokenizer, _questions(2)[1])
    free = _reference(tiny, prompt, 40)
    eos = free[7]  # a token the model does produce, used as the end-of-sequence token
    expected = _reference(tiny, prompt, 40, eos_token_id=eos)
    [got] = generate_greedy(tiny, [prompt], max_new_tokens=40, eos_token_ids=[eos])
    assert got.token_ids == expected
    assert got.token_ids[-1] == eos
    assert got.finish_reason == "eos"


@pytest.mark.parametrize("one_by_one_up_to", [0, 4])
def test_batch_matches_generate(tokenizer: Any, tiny: Any, one_by_one_up_to: int) -> None:
    prompt_ids = [_prompt_ids(tokenizer, q) for q in _questions(4)]
    expected = _reference_batch(tiny, prompt_ids, 32)
    got = generate_greedy(
        tiny, prompt_ids, max_new_tokens=32, rows_one_by_one_up_to=one_by_one_up_to
    )
    assert [g.token_ids for g in got] == expected
    padded = one_by_one_up_to == 0  # else each row decodes on its own, speculatively
    assert all((g.forward_passes == len(g.token_ids)) == padded for g in got)


def test_batch_rows_leave_at_their_own_eos(tokenizer: Any, tiny: Any) -> None:
    prompt_ids = [_prompt_ids(tokenizer, q) for q in _questions(3)]
    singles = [_reference(tiny, p, 30) for p in prompt_ids]
    eos = singles[0][4]
    got = generate_greedy(
        tiny, prompt_ids, max_new_tokens=30, eos_token_ids=[eos], rows_one_by_one_up_to=0
    )
    for row, single in zip(got, singles, strict=True):
        cut = single[: single.index(eos) + 1] if eos in single else single
        assert row.token_ids == cut
        assert row.finish_reason == ("eos" if eos in single else "length")
    assert got[0].forward_passes == 5


@pytest.mark.parametrize("draft", ["lookup", "int8"])
def test_stop_checker_cuts_at_first_hit(tokenizer: Any, tiny: Any, draft: DraftKind) -> None:
    prompt = _prompt_ids(tokenizer, _questions(1)[0])
    full = _reference(tiny, prompt, 48)
    seen: list[int] = []

    def stop(ids: Any) -> bool:
        seen.append(len(ids))
        return len(set(ids)) >= 5

    [got] = generate_greedy(tiny, [prompt], max_new_tokens=48, stop_checker=stop, draft=draft)
    cut = next(n for n in range(1, len(full) + 1) if len(set(full[:n])) >= 5)
    assert got.token_ids == full[:cut]
    assert got.finish_reason == "stop"
    if draft == "lookup":
        assert seen == list(range(1, cut + 1))  # checked after every token, even accepted drafts
    else:  # the int8 drafter also asks, to stop drafting past the end
        assert set(range(1, cut + 1)) <= set(seen)


def test_concurrent_calls_share_the_patched_model(tokenizer: Any, tiny: Any) -> None:
    prompt_ids = [_prompt_ids(tokenizer, q) for q in _questions(3)]
    expected = [_reference(tiny, p, 24) for p in prompt_ids]
    results: dict[int, list[int]] = {}

    def work(i: int) -> None:
        results[i] = generate_greedy(tiny, [prompt_ids[i]], max_new_tokens=24)[0].token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(3)] == expected
    linears = [m for m in tiny.modules() if isinstance(m, torch.nn.Linear)]
    assert all("forward" not in vars(m) for m in linears)  # patch removed afterwards


def test_prompt_lookup_prefers_longest_latest_match() -> None:
    assert _prompt_lookup([5, 6, 7, 8, 1, 6, 7, 9, 6, 7], max_ngram=2, num_draft=2) == [9, 6]
    assert _prompt_lookup([1, 2, 3, 1, 2], max_ngram=3, num_draft=4) == [3, 1, 2]
    # The latest match of "7 7" overlaps the tail; an earlier one has a full continuation.
    assert _prompt_lookup([7, 7, 7, 7, 7], max_ngram=2, num_draft=2) == [7, 7]
    assert _prompt_lookup([7, 7, 7], max_ngram=2, num_draft=2) == [7]
    assert _prompt_lookup([1, 2, 3], max_ngram=3, num_draft=4) == []
    assert _prompt_lookup([1, 2, 1], max_ngram=3, num_draft=0) == []


def test_draft_tuner_prefers_the_faster_length() -> None:
    tuner = DraftTuner([0, 4], explore_every=5)
    speed = {0: 10.0, 4: 30.0}  # tokens per second each length gives
    picks = []
    for _ in range(40):
        k = tuner.choose()
        picks.append(k)
        tuner.record(k, int(speed[k]), 1.0)
    assert picks[-20:].count(4) >= 16  # mostly the faster one...
    assert 0 in picks[-20:]  # ...while still re-checking the other
    tuner.record(7, 1, 1.0)  # unknown lengths are ignored
    assert set(tuner.rate) == {0, 4}


def test_decomposer_stop() -> None:
    stop = decomposer_stop(2)
    assert stop(f"{prompts.NO_DECOMPOSITION}\n")
    assert not stop(prompts.NO_DECOMPOSITION)  # the line might still go on
    assert not stop("Sure, here they are:\n1. How many eggs are laid?\n")
    assert not stop("1. How many eggs are laid?\n2. How many are eaten?")
    assert stop("1. How many eggs are laid?\n2. How many are eaten?\n")
    assert stop("1. How many eggs?\n1. How many eggs?\n")  # a repeat ends the plan (#12)
    assert not decomposer_stop(2, no_repeat=False)("1. How many eggs?\n1. How many eggs?\n")
    text = "1. How many eggs?\n2. How many are sold?\n"
    assert prompts.parse_sub_questions(text, 2) == prompts.parse_sub_questions(text + "3. More?", 2)
    with pytest.raises(ValueError, match="max_sub_questions"):
        decomposer_stop(0)


def test_text_stop_checker_decodes(tokenizer: Any) -> None:
    ids = tokenizer("How many eggs?\nDone", add_special_tokens=False)["input_ids"]
    check = text_stop_checker(tokenizer, stop_strings(["\n"]))
    assert not check(ids[:3])
    assert check(ids)


def test_bad_arguments(tiny: Any) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_greedy(tiny, [[1, 2]], max_new_tokens=0)
    with pytest.raises(ValueError, match="empty prompt"):
        generate_greedy(tiny, [[]], max_new_tokens=4)
    assert generate_greedy(tiny, [], max_new_tokens=4) == []
    with pytest.raises(ValueError, match="rows_one_by_one_up_to"):
        generate_greedy(tiny, [[1, 2]], max_new_tokens=4, rows_one_by_one_up_to=-1)


@pytest.mark.slow
def test_embedded_model_matches_generate(tokenizer: Any) -> None:
    from langchain_divconq.local.embedded import embedded_model_path

    model = transformers.AutoModelForCausalLM.from_pretrained(
        embedded_model_path(), dtype=torch.float32
    ).eval()
    prompt_ids = [_prompt_ids(tokenizer, q) for q in _questions(2)]
    for prompt in prompt_ids:
        [got] = generate_greedy(model, [prompt], max_new_tokens=40)
        assert got.token_ids == _reference(model, prompt, 40)
    got_batch = generate_greedy(model, prompt_ids, max_new_tokens=24)
    assert [g.token_ids for g in got_batch] == _reference_batch(model, prompt_ids, 24)


@pytest.mark.parametrize("draft", ["int8", "lookup"])
def test_chat_local_model_fast_decoding_matches_generate(
    tiny_chat_model: Any, draft: DraftKind
) -> None:
    from langchain_divconq.local import ChatLocalModel

    assert isinstance(tiny_chat_model, ChatLocalModel)
    plain = tiny_chat_model.model_copy(update={"max_tokens": 40})
    fast = tiny_chat_model.model_copy(
        update={"max_tokens": 40, "fast_decoding": True, "draft": draft}
    )
    questions = _questions(3)
    expected = plain.batch(questions)
    for got in (fast.batch(questions), [fast.invoke(q) for q in questions]):
        assert [m.content for m in got] == [m.content for m in expected]
        assert [m.usage_metadata for m in got] == [m.usage_metadata for m in expected]
        assert [m.response_metadata for m in got] == [m.response_metadata for m in expected]
    full = str(expected[1].content)
    at = next(k for k in range(12, len(full) - 4) if full.find(full[k : k + 4]) == k)
    cut_plain = plain.invoke(questions[1], stop=[full[at : at + 4]])
    cut_fast = fast.invoke(questions[1], stop=[full[at : at + 4]])
    assert cut_fast.content == cut_plain.content == full[:at]
    assert cut_fast.usage_metadata == cut_plain.usage_metadata
    assert cut_fast.response_metadata["finish_reason"] == "stop"
    lines_plain = plain.model_copy(update={"max_lines": 1}).invoke(questions[1])
    lines_fast = fast.model_copy(update={"max_lines": 1}).invoke(questions[1])
    assert lines_fast.content == lines_plain.content
    assert lines_fast.usage_metadata == lines_plain.usage_metadata


def test_unmerged_peft_adapter_matches_generate(tokenizer: Any) -> None:
    peft = pytest.importorskip("peft")
    base = _tiny_llama(tokenizer, 2)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, lora).eval()
    prompt = _prompt_ids(tokenizer, _questions(1)[0])
    [got] = generate_greedy(model, [prompt], max_new_tokens=24)
    assert got.token_ids == _reference(model, prompt, 24)
    got_batch = generate_greedy(model, [prompt, prompt[5:]], max_new_tokens=16)
    assert [g.token_ids for g in got_batch] == _reference_batch(model, [prompt, prompt[5:]], 16)


def test_weights_changed_in_place_are_noticed(tokenizer: Any) -> None:
    # peft merges an adapter with `weight.data += delta`, which torch's version
    # counters miss; the prompt cache, int8 copy and oneDNN copies must not go stale.
    model = _tiny_llama(tokenizer, 5)
    prompts_ = [_prompt_ids(tokenizer, q) for q in _questions(2)]
    for prompt in prompts_:
        generate_greedy(model, [prompt], max_new_tokens=16)  # fills every cache
    torch.manual_seed(9)
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (layer.self_attn.q_proj, layer.mlp.up_proj):
                linear.weight.data += 0.05 * torch.randn_like(linear.weight)
    for prompt in prompts_:
        [got] = generate_greedy(model, [prompt], max_new_tokens=16)
        assert got.token_ids == _reference(model, prompt, 16)
