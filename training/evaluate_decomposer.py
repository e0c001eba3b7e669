"""Decomposition quality of the base model vs a distilled decomposer adapter.

    python training/evaluate_decomposer.py --gsm8k-limit 100 --cross svamp --cross-limit 100

On GSM8K test (held out from training) it reports, per decomposer, the share of
outputs that parse into 1..3 sub-questions and their best-match token F1 and
ROUGE-L against the gold Socratic sub-questions
(:func:`langchain_divconq.quality.decomposition_quality`). On the cross-domain
task (SVAMP or MultiArith, never trained on; no gold sub-questions) it reports
the parse rate and the mean number of sub-questions. Both decomposers go through
``load_decomposer`` and the chain's prompt. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from langchain_divconq.quality import decomposition_quality

from langchain_divconq.local import DEFAULT_ADAPTER_DIR, load_decomposer
from langchain_divconq.prompts import decomposer_messages, message_text, parse_sub_questions
from langchain_divconq.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]


def _cross_domain(model: Any, name: str, limit: int, n_max: int) -> dict[str, Any]:
    task = load_task(name, data_dir=ROOT.parent / "shared" / "data")
    examples = task.examples[:limit]
    prompts = [
        decomposer_messages(e.question, e.context, max_sub_questions=n_max) for e in examples
    ]
    replies = model.batch(prompts)
    parsed = [parse_sub_questions(message_text(r), n_max) for r in replies]
    return {
        "task": name,
        "n": len(examples),
        "parse_rate": sum(1 <= len(p) <= n_max for p in parsed) / len(examples),
        "mean_predicted": sum(len(p) for p in parsed) / len(examples),
        "samples": [message_text(r) for r in replies[:3]],
    }


def evaluate(adapter: str | None, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    model = load_decomposer(
        adapter=adapter, max_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    gsm8k = load_task("gsm8k", split="test", data_dir=ROOT.parent / "shared" / "data")
    quality = decomposition_quality(
        model, gsm8k, limit=args.gsm8k_limit, batch_size=args.batch_size, max_concurrency=1
    )
    result: dict[str, Any] = {
        "decomposer": "base (no adapter)" if adapter is None else f"adapter {adapter}",
        "gsm8k_test": {
            "n": quality.n,
            "parse_rate": quality.parse_rate,
            "token_f1": quality.token_f1,
            "rouge_l": quality.rouge_l,
            "count_match": quality.count_match,
            "mean_predicted": quality.mean_predicted,
            "samples": [r.output for r in quality.records[:3]],
        },
    }
    if args.cross_limit > 0:
        result["cross"] = _cross_domain(model, args.cross, args.cross_limit, 3)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", default=str(DEFAULT_ADAPTER_DIR), help="adapter folder")
    parser.add_argument("--gsm8k-limit", type=int, default=100, help="first N test questions")
    parser.add_argument("--cross", default="svamp", choices=["svamp", "multiarith"])
    parser.add_argument("--cross-limit", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--only", choices=["base", "adapter"], default=None, help="one side only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    args = parser.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    runs = []
    if args.only != "adapter":
        runs.append(evaluate(None, args))
    if args.only != "base":
        runs.append(evaluate(args.adapter, args))
    for run in runs:
        g = run["gsm8k_test"]
        line = (
            f"{run['decomposer']}: GSM8K test n={g['n']} parse {g['parse_rate']:.0%} "
            f"token-F1 {g['token_f1']:.3f} ROUGE-L {g['rouge_l']:.3f}"
        )
        if "cross" in run:
            c = run["cross"]
            line += f" | {c['task']} n={c['n']} parse {c['parse_rate']:.0%}"
        print(line + f" ({run['seconds']} s)")
        for sample in g["samples"]:
            print("   ", repr(sample)[:200])
    summary = {"runs": runs}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
