"""Decomposer decoding speed: our greedy engine against plain ``model.generate``.

Same model, same GSM8K decomposer prompts (``prompts.decomposer_messages`` + the
chat template), measured interleaved in one run so that machine load hits both
sides alike. Every output of ours is checked token for token against generate.

    python benchmarks/decode.py --quick                 # CPU, embedded SmolLM2, < 2 min
    python benchmarks/decode.py --device cuda           # GPU: bf16, plus the compiled path
    python benchmarks/decode.py --weights random        # no real weights needed for speed
    python benchmarks/decode.py --check 50              # + exactness on 50 more prompts

The last line printed is a JSON object (``tokens_per_s`` = ours at batch 1).

With ``llama-cpp-python`` installed, the same run also times llama.cpp on a GGUF of
the same model (the embedded Q4_1 file for ``--weights embedded``; for the
decomposer, the merged model written once by ``local.gguf_export``): plain
``llama_cpp.Llama.create_completion`` per prompt (``llamacpp_tokens_per_s``, what a
llama.cpp user gets) and our llama.cpp engine (``LlamaCppEngine``: rows decoded
together, shared prefix, prompt-lookup drafts), interleaved prompt by prompt with
the torch runs, same threads. The JSON line also names the CPU's ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from langchain_divconq import prompts
from langchain_divconq.local.embedded import embedded_model_path
from langchain_divconq.local.engine.draft_model import drafter_for, supports_int8_draft
from langchain_divconq.local.engine.generation import (
    decomposer_stop,
    generate_greedy,
    text_stop_checker,
)
from langchain_divconq.local.engine.prompt_cache import prompt_cache_for
from langchain_divconq.local.engine.speculation import _prompt_lookup

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def load(
    weights: str, device: str, dtype: torch.dtype, model_dir: Path | None = None
) -> tuple[Any, Any]:
    path = model_dir or embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if weights in ("embedded", "decomposer"):
        if weights == "decomposer":
            # What load_decomposer() runs: the shipped LoRA adapter merged into the base
            # (merged once and cached, local.merged_cache).
            from langchain_divconq.local import DEFAULT_ADAPTER_DIR
            from langchain_divconq.local.merged_cache import merged_model_path

            path = merged_model_path(path, DEFAULT_ADAPTER_DIR)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    return model.to(device).eval(), tokenizer


def prompt_ids(tokenizer: Any, n: int, data: Path) -> list[list[int]]:
    with data.open() as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(n), f, strict=False)]
    return [prompt_ids_for(tokenizer, q) for q in questions]


def prompt_ids_for(tokenizer: Any, question: str) -> list[int]:
    messages = [
        {"role": "system" if m.type == "system" else "user", "content": str(m.content)}
        for m in prompts.decomposer_messages(question)
    ]
    enc = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(enc["input_ids"])


def gold_tokens_per_pass(tokenizer: Any, data: Path, n: int, draft: int) -> float:
    """Tokens per verify pass if the model wrote the human (Socratic) decompositions.

    Acceptance depends only on the output text, so no model is needed: this is the
    prompt-lookup acceptance a decomposer distilled on such data would see.
    """
    path = data.with_name("test_socratic.jsonl")
    if not path.is_file():
        return float("nan")
    tokens = passes = 0
    with path.open() as f:
        for _, line in zip(range(n), f, strict=False):
            ex = json.loads(line)
            subs = [s.split(" ** ")[0] for s in ex["answer"].splitlines() if " ** " in s]
            prompt = prompt_ids_for(tokenizer, ex["question"])
            new = tokenizer(prompts.format_sub_questions(subs[:3]), add_special_tokens=False)
            out = [*new["input_ids"], int(tokenizer.eos_token_id)]
            done, passes = 1, passes + 1  # the prompt pass yields the first token
            while done < len(out):
                guess = _prompt_lookup(prompt + out[:done], 3, min(draft, len(out) - done - 1))
                ok = 0
                while ok < len(guess) and guess[ok] == out[done + ok]:
                    ok += 1
                done, passes = done + ok + 1, passes + 1
            tokens += len(out)
    return tokens / passes


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (the model, its int8 and packed copies)."""
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if platform.system() != "Darwin" else kib / 2**20


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_generate(
    model: Any, batch: list[list[int]], max_new: int, pad: int, eos: int, **kwargs: Any
) -> list[list[int]]:
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=pad,
            **kwargs,
        )
    rows = out[:, width:].tolist()
    return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


def timed(device: str, fn: Any) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def cpu_isa() -> dict[str, Any]:
    """The CPU's vector extensions as the kernels see them (flags, torch, llama.cpp)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni"]
    wanted += ["amx_tile", "amx_bf16", "amx_int8"]
    isa: dict[str, Any] = {
        "cpu_flags": [f for f in wanted if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode()
        isa["llamacpp_build"] = " ".join(
            part.split("=")[0].strip() for part in info.split("|") if part.strip().endswith("= 1")
        )
    except ImportError:
        pass
    return isa


class LlamaCppSide:
    """llama.cpp on a GGUF of the benchmarked model: plain ``Llama`` and our engine."""

    def __init__(self, weights: str, gguf_type: str, threads: int, gguf: Path | None) -> None:
        import llama_cpp

        from langchain_divconq.local.embedded import embedded_gguf_path
        from langchain_divconq.local.gguf_export import merged_decomposer_gguf
        from langchain_divconq.local.llamacpp_backend import LlamaCppEngine

        if gguf is None:
            if weights == "embedded" and gguf_type == "q4_1":
                gguf = embedded_gguf_path()  # the file the embedded model comes from
            else:
                from langchain_divconq.local import DEFAULT_ADAPTER_DIR

                adapter = None if weights == "embedded" else DEFAULT_ADAPTER_DIR
                gguf = merged_decomposer_gguf(adapter, outtype=gguf_type)  # type: ignore[arg-type]
        self.path = gguf
        self.plain = llama_cpp.Llama(
            str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        self.engine = LlamaCppEngine(gguf, n_threads=threads)
        self.threads = threads

    def plain_one(self, prompt: list[int], max_new: int, eos: int) -> list[int]:
        """One greedy completion through llama-cpp-python's own API (new token ids)."""
        out: list[int] = []
        for token in self.plain.generate(prompt, temp=0.0, top_k=1, reset=True):
            out.append(int(token))
            if token == eos or len(out) >= max_new:
                break
        return out

    def ours(self, batch: list[list[int]], max_new: int, eos: int) -> list[list[int]]:
        outs = self.engine.generate(batch, max_new_tokens=max_new, eos_token_ids=[eos])
        return [o.token_ids for o in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--weights",
        default="decomposer",
        choices=["decomposer", "embedded", "random"],
        help="decomposer: embedded SmolLM2 + shipped adapter (default); embedded: base only",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (< 2 min on CPU)")
    parser.add_argument("--prompts", type=int, default=None, help="batch-1 prompts")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="prompts in the batched run")
    parser.add_argument(
        "--draft-kind",
        default="auto",
        choices=["auto", "int8", "lookup"],
        help="where our batch-1 drafts come from (auto: int8 on CPU)",
    )
    parser.add_argument(
        "--draft",
        type=int,
        default=None,
        help="most draft tokens per verify pass (default: the engine's, 32 int8 / 4 lookup)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--no-static", action="store_true", help="skip the static-cache baseline")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="CUDA: also time ours with a static cache + torch.compile (CUDA graphs)",
    )
    parser.add_argument(
        "--check",
        type=int,
        default=0,
        help="also compare ours with generate on this many further prompts (untimed)",
    )
    parser.add_argument(
        "--llamacpp",
        default="auto",
        choices=["auto", "off"],
        help="also time llama.cpp on a GGUF of the same model (auto: when installed)",
    )
    parser.add_argument(
        "--gguf-type",
        default="q8_0",
        choices=["f32", "f16", "q8_0", "q4_1"],
        help="tensor type of the GGUF written for llama.cpp (q4_1 + --weights embedded: "
        "the embedded file itself)",
    )
    parser.add_argument("--gguf", type=Path, default=None, help="a GGUF file to use instead")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model folder instead of the embedded SmolLM2 (config + tokenizer suffice "
        "with --weights random)",
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    n_prompts = args.prompts or (3 if args.quick else 8)
    max_new = args.max_new_tokens or (48 if args.quick else 96)
    batch_n = args.batch or (4 if args.quick else (64 if cuda else 16))
    dtype = torch.bfloat16 if cuda else torch.float32
    model, tokenizer = load(args.weights, args.device, dtype, args.model_dir)
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    # Measured prompts, then one for the warm-up, then the --check ones: read once.
    used = max(n_prompts, batch_n)
    ids = prompt_ids(tokenizer, used + 1 + args.check, args.data)
    ids, warm, extra = ids[:used], ids[used : used + 1], ids[used + 1 :]
    print(
        f"device={args.device} weights={args.weights} dtype={dtype} threads="
        f"{torch.get_num_threads()} prompts={n_prompts} max_new_tokens={max_new} batch={batch_n}"
    )

    # Warm-up (first calls allocate and, on CUDA, pick kernels) on a prompt that is
    # not measured. It leaves the shared system prompt in our prompt cache, as any
    # earlier request would; each measured prompt is dropped from that cache before
    # each of our runs, so no run finds its own prompt there.
    plain_generate(model, warm, 4, pad, eos)
    rss_before = peak_rss_mb()
    draft_build_s = None
    if args.draft_kind != "lookup" and supports_int8_draft(model):
        _, draft_build_s = timed(args.device, lambda: drafter_for(model))
    _, first_call_s = timed(  # reorders the weights for oneDNN on CPU
        args.device, lambda: generate_greedy(model, warm, max_new_tokens=4, eos_token_ids=[eos])
    )
    store = prompt_cache_for(model)
    llama: LlamaCppSide | None = None
    llama_note = "off"
    if args.llamacpp == "auto" and not cuda:
        try:
            llama = LlamaCppSide(args.weights, args.gguf_type, torch.get_num_threads(), args.gguf)
            llama_note = str(llama.path.name)
            llama.plain_one(warm[0], 4, eos)  # warm-up, as for the torch side
            llama.ours(warm, 4, eos)
        except ImportError:
            llama_note = "llama-cpp-python not installed: pip install 'langchain-divconq[llamacpp]'"
            print(f"llama.cpp not timed: {llama_note}")
    lc_t = lce_t = 0.0
    lc_n = lce_n = lc_same = lce_same = lce_plain_same = 0

    # ---- batch 1, interleaved: plain generate, ours, (static-cache generate)
    lookup_n = args.draft if args.draft_kind == "lookup" and args.draft else 4
    base_t = ours_t = stat_t = look_t = ours_l_t = 0.0
    base_n = ours_n = stat_n = look_n = look_same = passes = ours_l_n = ours_l_same = 0
    mismatches = 0
    latencies: list[float] = []
    for i, p in enumerate(ids[:n_prompts]):
        ref, dt = timed(args.device, lambda p=p: plain_generate(model, [p], max_new, pad, eos))
        base_t, base_n = base_t + dt, base_n + len(ref[0])
        store.forget(p)
        got, dt = timed(
            args.device,
            lambda p=p: generate_greedy(
                model,
                [p],
                max_new_tokens=max_new,
                eos_token_ids=[eos],
                draft=args.draft_kind,
                num_draft_tokens=args.draft,
            ),
        )
        ours_t, ours_n = ours_t + dt, ours_n + len(got[0].token_ids)
        passes += got[0].forward_passes
        latencies.append(dt)
        mismatches += got[0].token_ids != ref[0]
        if llama is not None:
            plain_out, dt = timed(args.device, lambda p=p: llama.plain_one(p, max_new, eos))
            lc_t, lc_n, lc_same = lc_t + dt, lc_n + len(plain_out), lc_same + (plain_out == ref[0])
            mine, dt = timed(args.device, lambda p=p: llama.ours([p], max_new, eos)[0])
            lce_t, lce_n = lce_t + dt, lce_n + len(mine)
            lce_same += mine == ref[0]
            lce_plain_same += mine == plain_out
        if not args.no_static and (i == 0 or not args.quick):
            out, dt = timed(
                args.device,
                lambda p=p: plain_generate(
                    model, [p], max_new, pad, eos, cache_implementation="static"
                ),
            )
            stat_t, stat_n = stat_t + dt, stat_n + len(out[0])
        if i == 0 or not args.quick:
            # transformers' own prompt-lookup decoding, as a comparison point
            out, dt = timed(
                args.device,
                lambda p=p: plain_generate(
                    model, [p], max_new, pad, eos, prompt_lookup_num_tokens=lookup_n
                ),
            )
            look_t, look_n, look_same = look_t + dt, look_n + len(out[0]), look_same + (out == ref)
            # ours with prompt-lookup drafts only (what CUDA and draft="lookup" run)
            store.forget(p)
            got_l, dt = timed(
                args.device,
                lambda p=p: generate_greedy(
                    model, [p], max_new_tokens=max_new, eos_token_ids=[eos], draft="lookup"
                ),
            )
            ours_l_t, ours_l_n = ours_l_t + dt, ours_l_n + len(got_l[0].token_ids)
            ours_l_same += got_l[0].token_ids == ref[0]
        print(
            f"  prompt {i}: {len(ref[0])} tokens, plain {base_n / base_t:.1f} tok/s, "
            f"ours {ours_n / ours_t:.1f} tok/s (running totals), "
            f"same={got[0].token_ids == ref[0]}"
        )

    # ---- CUDA only: ours with a static cache and a compiled, CUDA-graphed verify step
    comp_t, comp_n, comp_same = 0.0, 0, 0
    if cuda and args.compile:
        for p in ids[:2]:  # compile and capture the graphs first
            generate_greedy(model, [p], max_new_tokens=8, eos_token_ids=[eos], compile=True)
        for p in ids[:n_prompts]:
            got, dt = timed(
                args.device,
                lambda p=p: generate_greedy(
                    model, [p], max_new_tokens=max_new, eos_token_ids=[eos], compile=True
                ),
            )
            ref = plain_generate(model, [p], max_new, pad, eos)
            comp_t, comp_n = comp_t + dt, comp_n + len(got[0].token_ids)
            comp_same += got[0].token_ids == ref[0]

    # ---- decomposer with early stop (what the chain actually runs)
    stop = text_stop_checker(tokenizer, decomposer_stop(prompts.DEFAULT_MAX_SUB_QUESTIONS))
    stop_lat = []
    for p in ids[:n_prompts]:
        store.forget(p)
        _, dt = timed(
            args.device,
            lambda p=p: generate_greedy(
                model, [p], max_new_tokens=max_new, eos_token_ids=[eos], stop_checker=stop
            ),
        )
        stop_lat.append(dt)

    # ---- batched, interleaved
    batch = ids[:batch_n]
    for p in batch:  # as at batch 1: no prompt finds itself in our prompt cache
        store.forget(p)
    ref_b, base_bt = timed(args.device, lambda: plain_generate(model, batch, max_new, pad, eos))
    got_b, ours_bt = timed(
        args.device,
        lambda: generate_greedy(model, batch, max_new_tokens=max_new, eos_token_ids=[eos]),
    )
    batch_tokens = sum(len(r) for r in ref_b)
    batch_same = sum(g.token_ids == r for g, r in zip(got_b, ref_b, strict=True))
    # ours as one padded batch (what batches larger than rows_one_by_one_up_to run)
    got_p, padded_bt = timed(
        args.device,
        lambda: generate_greedy(
            model, batch, max_new_tokens=max_new, eos_token_ids=[eos], rows_one_by_one_up_to=0
        ),
    )
    padded_same = sum(g.token_ids == r for g, r in zip(got_p, ref_b, strict=True))

    # ---- llama.cpp batched: plain Llama one prompt after another (it has no batch
    # call), ours as one batch of sequences
    lc_bt = lce_bt = 0.0
    lc_bn = lce_bn = lce_b_same = 0
    if llama is not None:
        outs, lc_bt = timed(args.device, lambda: [llama.plain_one(p, max_new, eos) for p in batch])
        lc_bn = sum(len(o) for o in outs)
        mine_b, lce_bt = timed(args.device, lambda: llama.ours(batch, max_new, eos))
        lce_bn = sum(len(o) for o in mine_b)
        lce_b_same = sum(m == r for m, r in zip(mine_b, ref_b, strict=True))

    # ---- exactness on further prompts (not timed)
    extra_same = 0
    for p in extra:
        ref = plain_generate(model, [p], max_new, pad, eos)[0]
        got = generate_greedy(
            model, [p], max_new_tokens=max_new, eos_token_ids=[eos], draft=args.draft_kind
        )
        extra_same += got[0].token_ids == ref

    result: dict[str, Any] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "weights": args.weights,
        "draft": args.draft_kind,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "max_new_tokens": max_new,
        "tokens_per_s": round(ours_n / ours_t, 2),
        "baseline_tokens_per_s": round(base_n / base_t, 2),
        "speedup": round((ours_n / ours_t) / (base_n / base_t), 2),
        "tokens_per_forward_pass": round(ours_n / passes, 2),
        "identical_batch1": f"{n_prompts - mismatches}/{n_prompts}",
        "latency_s_median": round(statistics.median(latencies), 3),
        "decomposer_stop_latency_s_median": round(statistics.median(stop_lat), 3),
        "batch": batch_n,
        "batch_tokens_per_s": round(batch_tokens / ours_bt, 2),
        "baseline_batch_tokens_per_s": round(batch_tokens / base_bt, 2),
        "batch_speedup": round(base_bt / ours_bt, 2),
        "identical_batched": f"{batch_same}/{batch_n}",
        "batch_padded_tokens_per_s": round(batch_tokens / padded_bt, 2),
        "identical_batch_padded": f"{padded_same}/{batch_n}",
        "peak_rss_mb_before_ours": round(rss_before),
        "peak_rss_mb": round(peak_rss_mb()),
        "first_call_s": round(first_call_s, 2),
        "gold_decomposition_tokens_per_pass": round(
            gold_tokens_per_pass(tokenizer, args.data, 200, lookup_n), 2
        ),
    }
    result.update(cpu_isa())
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    result["llamacpp"] = llama_note
    if llama is not None:
        lc_rate, lc_brate = lc_n / lc_t, lc_bn / lc_bt
        result.update(
            {
                "llamacpp_tokens_per_s": round(lc_rate, 2),
                "llamacpp_batch_tokens_per_s": round(lc_brate, 2),
                "identical_llamacpp_vs_torch": f"{lc_same}/{n_prompts}",
                "llamacpp_engine_tokens_per_s": round(lce_n / lce_t, 2),
                "llamacpp_engine_batch_tokens_per_s": round(lce_bn / lce_bt, 2),
                "identical_llamacpp_engine_vs_torch": f"{lce_same}/{n_prompts}",
                "identical_llamacpp_engine_vs_llamacpp": f"{lce_plain_same}/{n_prompts}",
                "identical_llamacpp_engine_batched_vs_torch": f"{lce_b_same}/{batch_n}",
                "torch_vs_llamacpp": round((ours_n / ours_t) / lc_rate, 2),
                "torch_vs_llamacpp_batched": round((batch_tokens / ours_bt) / lc_brate, 2),
                "llamacpp_engine_vs_llamacpp": round((lce_n / lce_t) / lc_rate, 2),
                "llamacpp_engine_vs_llamacpp_batched": round((lce_bn / lce_bt) / lc_brate, 2),
            }
        )
    if extra:
        result["identical_further_prompts"] = f"{extra_same}/{len(extra)}"
    if draft_build_s is not None:
        result["int8_draft_build_s"] = round(draft_build_s, 2)
    result["prompt_cache_reused_tokens"] = store.reused_tokens
    if stat_n:
        result["static_cache_tokens_per_s"] = round(stat_n / stat_t, 2)
    if look_n:
        result["ours_lookup_only_tokens_per_s"] = round(ours_l_n / ours_l_t, 2)
        result["identical_ours_lookup_only"] = f"{ours_l_same}/{1 if args.quick else n_prompts}"
        result["hf_prompt_lookup_tokens_per_s"] = round(look_n / look_t, 2)
        result["identical_hf_prompt_lookup"] = f"{look_same}/{1 if args.quick else n_prompts}"
    if comp_n:
        result["compiled_tokens_per_s"] = round(comp_n / comp_t, 2)
        result["identical_compiled"] = f"{comp_same}/{n_prompts}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
