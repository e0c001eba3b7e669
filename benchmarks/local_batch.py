"""Batched vs one-by-one generation with ChatLocalModel, side by side in one run.

Baseline: ``llm.invoke`` on each prompt in turn (one ``generate`` call per
prompt, what a plain loop does). Ours: ``llm.batch(prompts)`` (left-padded,
``ceil(N / batch_size)`` ``generate`` calls). Same model, same greedy settings,
same decomposer prompts built from GSM8K test questions.

    python benchmarks/local_batch.py                    # embedded SmolLM2, 8 prompts
    python benchmarks/local_batch.py --n 16 --max-tokens 48 --device cuda
    python benchmarks/local_batch.py --tiny             # tiny random model, seconds

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

    from langchain_divconq.embedded import embedded_model_path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8, help="number of prompts")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16... (default per device)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model instead of SmolLM2")
    args = parser.parse_args()

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

    t0 = time.perf_counter()
    single = [llm.invoke(p) for p in prompts]
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = llm.batch(prompts)
    batch_s = time.perf_counter() - t0

    same = sum(a.content == b.content for a, b in zip(single, batched, strict=True))
    single_tokens, batch_tokens = _tokens(single), _tokens(batched)
    device = str(getattr(llm.model, "device", "cpu"))
    print(f"model {llm.model_name} on {device}, loaded in {load_s:.1f}s; {os.cpu_count()} CPUs")
    print(f"prompts {args.n}, max_tokens {args.max_tokens}, batch_size {args.batch_size}")
    print(
        f"one-by-one: {single_s:7.2f}s  {single_tokens} tokens  "
        f"{single_tokens / single_s:7.1f} tokens/s"
    )
    print(
        f"batched:    {batch_s:7.2f}s  {batch_tokens} tokens  "
        f"{batch_tokens / batch_s:7.1f} tokens/s"
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
                "n_prompts": args.n,
                "max_tokens": args.max_tokens,
                "batch_size": args.batch_size,
                "one_by_one_s": round(single_s, 3),
                "batched_s": round(batch_s, 3),
                "baseline_tokens_per_s": round(single_tokens / single_s, 2),
                "tokens_per_s": round(batch_tokens / batch_s, 2),
                "speedup": round(single_s / batch_s, 3),
                "identical_outputs": same,
            }
        )
    )


if __name__ == "__main__":
    main()
