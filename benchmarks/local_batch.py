"""Batched vs one-by-one generation with ChatLocalModel, side by side in one run.

Baseline: ``llm.invoke`` on each prompt in turn (one ``generate`` call per
prompt, what a plain loop does). Ours: ``llm.batch(prompts)`` (left-padded,
``ceil(N / batch_size)`` ``generate`` calls). ``--raw`` adds plain
``model.generate`` per prompt without LangChain, to show the wrapper's overhead.
Same model, same greedy settings, same decomposer prompts (GSM8K test questions).

    python benchmarks/local_batch.py                    # embedded SmolLM2, 8 prompts
    python benchmarks/local_batch.py --n 16 --max-tokens 48 --device cuda
    python benchmarks/local_batch.py --tiny             # tiny random model, seconds
    python benchmarks/local_batch.py --raw              # also plain model.generate per prompt

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from langchain_divconq.local import ChatLocalModel, load_local_model
from langchain_divconq.prompts import decomposer_messages

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gsm8k" / "test.jsonl"
FALLBACK = [
    "Tom has 3 boxes of 12 pencils and gives away 7 pencils. How many are left?",
    "A train travels 60 km per hour for 2.5 hours. How far does it go?",
    "Sara buys 4 books at $7 each and pays with a $50 bill. What is her change?",
    "A garden has 5 rows of 9 tulips; 8 tulips wilt. How many tulips remain?",
]


def _questions(n: int) -> list[str]:
    if DATA.is_file():
        with DATA.open(encoding="utf-8") as f:
            found = [json.loads(line)["question"] for _, line in zip(range(n), f, strict=False)]
    else:
        found = []
    while len(found) < n:
        found.append(FALLBACK[len(found) % len(FALLBACK)])
    return found


def _tiny_model(max_tokens: int, batch_size: int) -> ChatLocalModel:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from langchain_divconq.local.embedded import embedded_model_path

    tok = AutoTokenizer.from_pretrained(embedded_model_path())
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    return ChatLocalModel(
        model=model,
        tokenizer=tok,
        model_name="tiny-llama",
        max_tokens=max_tokens,
        batch_size=batch_size,
    )


def _tokens(messages: list[Any]) -> int:
    return sum((m.usage_metadata or {}).get("output_tokens", 0) for m in messages)


def _raw_generate(llm: ChatLocalModel, prompts: list[Any], max_tokens: int) -> tuple[float, int]:
    import torch

    from langchain_divconq.local import _chat_dicts

    encoded = [llm._encode(_chat_dicts(p)) for p in prompts]
    eos = llm.tokenizer.eos_token_id
    tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids in encoded:
            x = torch.tensor([ids], device=llm.model.device)
            out = llm.model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=llm.tokenizer.pad_token_id,
            )
            new = out[0, len(ids) :].tolist()
            tokens += new.index(eos) + 1 if eos in new else len(new)
    return time.perf_counter() - t0, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8, help="number of prompts")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16... (default per device)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model instead of SmolLM2")
    parser.add_argument("--raw", action="store_true", help="also time plain model.generate")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the best is reported")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.tiny:
        llm = _tiny_model(args.max_tokens, args.batch_size)
    else:
        llm = load_local_model(
            device=args.device,
            dtype=args.dtype,
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
        )
    load_s = time.perf_counter() - t0
    prompts = [decomposer_messages(q) for q in _questions(args.n)]
    llm.invoke(prompts[0], max_tokens=2)  # warm-up: first-call allocations

    # Rounds alternate the two sides so that load from other processes hits both;
    # the best round of each side is reported.
    single_s = batch_s = raw_s = float("inf")
    raw_tokens = 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        single = [llm.invoke(p) for p in prompts]
        single_s = min(single_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        batched = llm.batch(prompts)
        batch_s = min(batch_s, time.perf_counter() - t0)
        if args.raw:
            seconds, raw_tokens = _raw_generate(llm, prompts, args.max_tokens)
            raw_s = min(raw_s, seconds)

    same = sum(a.content == b.content for a, b in zip(single, batched, strict=True))
    single_tokens, batch_tokens = _tokens(single), _tokens(batched)
    device = str(getattr(llm.model, "device", "cpu"))
    print(
        f"model {llm.model_name} on {device}, loaded in {load_s:.1f}s; {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"prompts {args.n}, max_tokens {args.max_tokens}, batch_size {args.batch_size}")
    print(
        f"one-by-one: {single_s:7.2f}s  {single_tokens} tokens  "
        f"{single_tokens / single_s:7.1f} tokens/s"
    )
    print(
        f"batched:    {batch_s:7.2f}s  {batch_tokens} tokens  "
        f"{batch_tokens / batch_s:7.1f} tokens/s"
    )
    if args.raw:
        print(
            f"raw generate one-by-one: {raw_s:7.2f}s  {raw_tokens} tokens  "
            f"{raw_tokens / raw_s:7.1f} tokens/s"
        )
    print(f"speed-up {single_s / batch_s:.2f}x; identical greedy outputs {same}/{args.n}")
    print(
        json.dumps(
            {
                "benchmark": "local_batch",
                "model": llm.model_name,
                "device": device,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "repeats": args.repeats,
                "n_prompts": args.n,
                "max_tokens": args.max_tokens,
                "batch_size": args.batch_size,
                "one_by_one_s": round(single_s, 3),
                "batched_s": round(batch_s, 3),
                "baseline_tokens_per_s": round(single_tokens / single_s, 2),
                "tokens_per_s": round(batch_tokens / batch_s, 2),
                "speedup": round(single_s / batch_s, 3),
                "identical_outputs": same,
                "raw_generate_s": round(raw_s, 3) if args.raw else None,
                "load_average_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
