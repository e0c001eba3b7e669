"""Training throughput: our ``distill()`` vs a plain TRL ``SFTTrainer`` with default settings.

All trainers train the same LoRA (r=8, alpha 16, attention + MLP projections) on the same
examples with the same batch size, steps and seed, in one process, interleaved over
``--repeats`` rounds (best kept):

* ``distill``: ``distill()`` with its defaults (LoRA dropout 0, bf16 autocast where the
  CPU has it natively, no activation checkpointing, length-grouped batches);
* ``distill_before``: ``distill()`` with the previous default LoRA dropout 0.05 (what
  ``distill`` was before #18: the baseline of its speed-up);
* ``plain_trl``: ``SFTTrainer`` with TRL's defaults (``bf16=True``, activation
  checkpointing on, random batches; ``use_cpu`` on CPU) and the same LoRA config as
  ``distill`` (dropout 0);
* optional rows: ``--fp32`` (``distill(bf16=False)``), ``--ungrouped``
  (``group_by_length=False``), ``--compile`` (``compile_layers=True``: every decoder
  layer through ``torch.compile``; its compilation falls in the untimed first step, and
  any recompilation for a new shape in the timed ones).

Examples come from the GSM8K Socratic SD-T set (``--recipe gsm8k``) or from the general
decomposer's recipe mix (``--recipe general``: GSM8K, StrategyQA, Break, one-step
questions). Throughput is non-padding tokens (and examples) per second over the steps
after the first (model loading, dataset preparation and the first step are excluded).
Each row also reports its mean training loss over the timed steps and its loss on the
same 16 held-out examples after training: rows must agree within noise.

    python benchmarks/train.py --quick --threads 2              # 3 timed steps, batch 2
    python benchmarks/train.py --steps 8 --batch-size 8 --recipe general --threads 2

The last line printed is a JSON object with ``distill.tokens_per_s`` and
``plain_trl.tokens_per_s``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

from shipped_decomposer import DATA, load_traces  # noqa: E402

from langchain_divconq.local.backends import cpu_flags  # noqa: E402
from langchain_divconq.local.embedded import resolve_base_model  # noqa: E402
from langchain_divconq.training import DistillConfig, build_dataset, distill  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EVAL_EXAMPLES = 16
BEFORE = {"lora_dropout": 0.05, "share_prompt_prefix": False}
"""distill()'s defaults before #18, the baseline of its speed-up."""


def _rate(records: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """Tokens/s and examples/s between the end of the first step and the end of the last one."""
    steps = sorted(
        (r for r in records if "num_input_tokens_seen" in r and "loss" in r),
        key=lambda r: r["step"],
    )
    if len(steps) < 2:
        return {"tokens_per_s": None, "timed_steps": 0}
    first, last = steps[0], steps[-1]
    tokens = last["num_input_tokens_seen"] - first["num_input_tokens_seen"]
    seconds = last["time"] - first["time"]
    timed = last["step"] - first["step"]
    return {
        "tokens_per_s": round(tokens / seconds, 1),
        "examples_per_s": round(timed * batch / seconds, 3),
        "s_per_step": round(seconds / timed, 2),
        "timed_steps": timed,
        "timed_tokens": tokens,
        "mean_loss": round(sum(float(r["loss"]) for r in steps) / len(steps), 4),
    }


def run_ours(
    dataset: Any, steps: int, batch: int, out: Path, base: str | None = None, **overrides: Any
) -> dict[str, Any]:
    config = DistillConfig(
        base_model=base,
        output_dir=str(out),
        lora_r=8,
        target_modules=TARGETS,
        max_steps=steps + 1,
        batch_size=batch,
        logging_steps=1,
        save_steps=10_000,
        resume=False,
        **overrides,
    )
    folder = distill(config, dataset)
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    meta = json.loads((folder / "divconq_adapter.json").read_text())
    return {
        **_rate(records, batch),
        "eval_loss": round(meta["eval_loss"], 4),
        "bf16": meta["bf16"],
        "lora_dropout": config.lora_dropout,
        "gradient_checkpointing": config.gradient_checkpointing,
        "group_by_length": config.group_by_length,
        "share_prompt_prefix": config.share_prompt_prefix,
        "compile_layers": config.compile_layers,
    }


def run_plain_trl(
    dataset: Any, steps: int, batch: int, out: Path, base: str | None = None
) -> dict[str, Any]:
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    records: list[dict[str, Any]] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            records.append({"step": state.global_step, "time": time.time(), **(logs or {})})

    import torch

    # TRL's defaults otherwise (bf16=True, gradient checkpointing on); use_cpu is the one
    # setting a CPU run cannot do without (the Trainer refuses bf16 on CPU otherwise).
    args = SFTConfig(
        use_cpu=not torch.cuda.is_available(),
        output_dir=str(out),
        max_steps=steps + 1,
        per_device_train_batch_size=batch,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        include_num_input_tokens_seen="non_padding",
    )
    keep = ["prompt", "completion"]
    trainer = SFTTrainer(
        model=resolve_base_model(base),
        args=args,
        train_dataset=dataset["train"].select_columns(keep),
        eval_dataset=dataset["validation"].select_columns(keep),
        # The same LoRA as distill()'s default (peft's default dropout is 0 too).
        peft_config=LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
        ),
        callbacks=[Clock()],
    )
    trainer.train()
    return {
        **_rate(records, batch),
        "eval_loss": round(trainer.evaluate()["eval_loss"], 4),
        "bf16": bool(args.bf16),
        "lora_dropout": 0.0,
        "gradient_checkpointing": bool(
            getattr(args, "activation_checkpointing", args.gradient_checkpointing)
        ),
        "group_by_length": args.train_sampling_strategy == "group_by_length",
        "share_prompt_prefix": False,
    }


def general_rows(total: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and held-out rows drawn from the general decomposer's recipe mix."""
    from general_decomposer import DEFAULT_WEIGHTS, build_strata, parse_weights

    from langchain_divconq.training.dataset import mix_examples

    train, val = build_strata(DATA.parents[1], 0.05, seed)
    weights = parse_weights(DEFAULT_WEIGHTS)
    keep = ("prompt", "completion")
    pick = [{k: r[k] for k in keep} for r in mix_examples(train, weights, total, seed=seed)]
    held = [{k: r[k] for k in keep} for r in mix_examples(val, weights, EVAL_EXAMPLES, seed=seed)]
    return pick, held


def load_examples(recipe: str, n: int) -> Any:
    """A DatasetDict of ``n`` train rows and EVAL_EXAMPLES validation rows of a recipe."""
    from datasets import Dataset, DatasetDict

    if recipe == "general":
        train, held = general_rows(n)
        return DatasetDict(
            {"train": Dataset.from_list(train), "validation": Dataset.from_list(held)}
        )
    data = build_dataset(
        load_traces(DATA),
        variant="SD-T",
        val_fraction=0,
        max_examples=n + EVAL_EXAMPLES,
    )["train"]
    return DatasetDict(
        {"train": data.select(range(n)), "validation": data.select(range(n, n + EVAL_EXAMPLES))}
    )


def random_model(source: str, folder: Path) -> str:
    """Save a randomly initialised copy of ``source``'s architecture (and its tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 timed steps, batch 2")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per trainer")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--recipe", choices=["gsm8k", "general"], default="gsm8k")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; best kept")
    parser.add_argument("--fp32", action="store_true", help="also time distill(bf16=False)")
    parser.add_argument(
        "--ungrouped", action="store_true", help="also time distill(group_by_length=False)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time distill(compile_layers=True)"
    )
    parser.add_argument("--no-before", action="store_true", help="skip the distill_before row")
    parser.add_argument(
        "--base", default=None, help="base model folder or hub id (default: embedded SmolLM2)"
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="train a randomly initialised model built from --base's config (speed only)",
    )
    args = parser.parse_args()
    steps, batch = (3, 2) if args.quick else (args.steps, args.batch_size)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_examples(args.recipe, (steps + 1) * batch)
    rows: dict[str, dict[str, Any]] = {"distill": {}}
    if not args.no_before:
        rows["distill_before"] = BEFORE
    if args.fp32:
        rows["distill_fp32"] = {"bf16": False}
    if args.ungrouped:
        rows["distill_ungrouped"] = {"group_by_length": False}
    if args.compile:
        rows["distill_compiled"] = {"compile_layers": True}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*rows, "plain_trl"]}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base
        if args.random_init:
            base = random_model(resolve_base_model(args.base), Path(tmp) / "random-base")
        # Interleaved, so a change in the machine's load hits every trainer alike.
        for repeat in range(args.repeats):
            out = Path(tmp) / str(repeat)
            runs["plain_trl"].append(run_plain_trl(dataset, steps, batch, out / "plain", base))
            for name, overrides in rows.items():
                runs[name].append(run_ours(dataset, steps, batch, out / name, base, **overrides))
    best = {name: max(r, key=lambda x: x["tokens_per_s"] or 0) for name, r in runs.items() if r}
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu x{torch.get_num_threads()}"
    )
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2", "avx_vnni")))
    print(
        f"device: {device} ({platform.processor() or platform.machine()}), best of {args.repeats}"
    )
    print(
        f"cpu flags: {' '.join(flags) or '-'}; recipe {args.recipe}, batch {batch}, {steps} steps"
    )
    plain_rate = best["plain_trl"]["tokens_per_s"]
    before_rate = best.get("distill_before", {}).get("tokens_per_s")
    head = f"{'trainer':<20}{'tokens/s':>9}{'ex/s':>7}{'s/step':>8}{'loss':>8}{'eval':>8}"
    print(f"{head}  {'vs plain':>8}  {'vs before':>9}  settings")
    for name, r in best.items():
        rate = r["tokens_per_s"]
        r["vs_plain"] = round(rate / plain_rate, 2) if rate and plain_rate else None
        r["vs_before"] = round(rate / before_rate, 2) if rate and before_rate else None
        settings = (
            f"bf16={r['bf16']} dropout={r['lora_dropout']} ckpt={r['gradient_checkpointing']} "
            f"grouped={r['group_by_length']} prefix={r['share_prompt_prefix']}"
            f"{' compiled' if r.get('compile_layers') else ''}"
        )
        print(
            f"{name:<20}{rate!s:>9}{r.get('examples_per_s')!s:>7}{r.get('s_per_step')!s:>8}"
            f"{r.get('mean_loss')!s:>8}{r.get('eval_loss')!s:>8}  {r['vs_plain']!s:>8}  "
            f"{r['vs_before']!s:>9}  {settings}"
        )
    summary = {
        "device": device,
        "cpu_flags": flags,
        "recipe": args.recipe,
        "batch_size": batch,
        "timed_steps": steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps({**summary, **best, "all": runs}))


if __name__ == "__main__":
    main()
