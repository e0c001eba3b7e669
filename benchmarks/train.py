"""Training throughput: our ``distill()`` vs a plain TRL ``SFTTrainer`` with default settings.

Both train the same LoRA (r=8, attention + MLP projections) on the same GSM8K
Socratic SD-T examples with the same batch size, in one process, one after the
other, interleaved over ``--repeats`` rounds (best kept). The baseline keeps TRL's
defaults (``bf16=True``, gradient checkpointing on; plus ``use_cpu`` on CPU);
``distill()`` never checkpoints activations and uses bf16 where the hardware has it
(CUDA, or a CPU with AVX512-BF16/AMX) and batches examples of similar length
together (``group_by_length``); ``--fp32`` also times ``distill(bf16=False)`` and
``--ungrouped`` ``distill(group_by_length=False)``. Each trainer sees the same
examples once, so tokens/s compare directly.
Throughput is non-padding tokens per second over the steps after the first
(model loading, dataset preparation and the first step are excluded).

    python benchmarks/train.py --quick        # 3 timed steps each, batch 2
    python benchmarks/train.py --steps 6 --batch-size 4 --fp32 --threads 1
    python benchmarks/train.py --base model-dir --random-init   # config + tokenizer only

The last line printed is a JSON object.
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

from langchain_divconq.local.embedded import resolve_base_model  # noqa: E402
from langchain_divconq.training import DistillConfig, build_dataset, distill  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _rate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens/s between the end of the first step and the end of the last one."""
    steps = sorted(
        (r for r in records if "num_input_tokens_seen" in r and "loss" in r),
        key=lambda r: r["step"],
    )
    if len(steps) < 2:
        return {"tokens_per_s": None, "timed_steps": 0}
    first, last = steps[0], steps[-1]
    tokens = last["num_input_tokens_seen"] - first["num_input_tokens_seen"]
    seconds = last["time"] - first["time"]
    return {
        "tokens_per_s": round(tokens / seconds, 1),
        "s_per_step": round(seconds / (last["step"] - first["step"]), 2),
        "timed_steps": last["step"] - first["step"],
        "timed_tokens": tokens,
    }


def run_ours(
    dataset: Any,
    steps: int,
    batch: int,
    out: Path,
    bf16: bool | None = None,
    group_by_length: bool = True,
    base: str | None = None,
) -> dict[str, Any]:
    config = DistillConfig(
        base_model=base,
        bf16=bf16,
        group_by_length=group_by_length,
        output_dir=str(out),
        lora_r=8,
        target_modules=TARGETS,
        max_steps=steps + 1,
        batch_size=batch,
        logging_steps=1,
        save_steps=10_000,
        resume=False,
    )
    folder = distill(config, dataset)
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    meta = json.loads((folder / "divconq_adapter.json").read_text())
    return {
        **_rate(records),
        "bf16": meta["bf16"],
        "gradient_checkpointing": False,
        "group_by_length": group_by_length,
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
    trainer = SFTTrainer(
        model=resolve_base_model(base),
        args=args,
        train_dataset=dataset["train"].select_columns(["prompt", "completion"]),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM"),
        callbacks=[Clock()],
    )
    trainer.train()
    return {
        **_rate(records),
        "bf16": bool(args.bf16),
        "gradient_checkpointing": bool(
            getattr(args, "activation_checkpointing", args.gradient_checkpointing)
        ),
        "group_by_length": args.train_sampling_strategy == "group_by_length",
    }


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
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; best kept")
    parser.add_argument("--fp32", action="store_true", help="also time distill(bf16=False)")
    parser.add_argument(
        "--ungrouped", action="store_true", help="also time distill(group_by_length=False)"
    )
    parser.add_argument("--data", type=Path, default=DATA, help="GSM8K train_socratic.jsonl")
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
    dataset = build_dataset(
        load_traces(args.data), variant="SD-T", val_fraction=0, max_examples=(steps + 1) * batch
    )
    runs: dict[str, list[dict[str, Any]]] = {
        "distill": [],
        "distill_fp32": [],
        "distill_ungrouped": [],
        "plain_trl": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base
        if args.random_init:
            base = random_model(resolve_base_model(args.base), Path(tmp) / "random-base")
        # Interleaved, so a change in the shared machine's load hits every trainer alike.
        for repeat in range(args.repeats):
            out = Path(tmp) / str(repeat)
            runs["plain_trl"].append(run_plain_trl(dataset, steps, batch, out / "plain", base))
            runs["distill"].append(run_ours(dataset, steps, batch, out / "ours", base=base))
            if args.fp32:
                runs["distill_fp32"].append(
                    run_ours(dataset, steps, batch, out / "fp32", False, base=base)
                )
            if args.ungrouped:
                runs["distill_ungrouped"].append(
                    run_ours(
                        dataset, steps, batch, out / "ungrouped", group_by_length=False, base=base
                    )
                )
    best = {name: max(r, key=lambda x: x["tokens_per_s"] or 0) for name, r in runs.items() if r}
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu x{torch.get_num_threads()}"
    )
    plain_rate = best["plain_trl"]["tokens_per_s"]
    print(
        f"device: {device} ({platform.processor() or platform.machine()}), best of {args.repeats}"
    )
    print(f"{'trainer':<28}{'tokens/s':>10}{'s/step':>9}  {'vs plain':>8}  settings")
    for name, r in best.items():
        ratio = (
            round(r["tokens_per_s"] / plain_rate, 2) if r["tokens_per_s"] and plain_rate else None
        )
        r["vs_plain"] = ratio
        settings = (
            f"bf16={r['bf16']} grad-ckpt={r['gradient_checkpointing']} "
            f"grouped={r['group_by_length']}"
        )
        rate, step = r["tokens_per_s"], r.get("s_per_step")
        print(f"{name:<28}{rate!s:>10}{step!s:>9}  {ratio!s:>8}  {settings}")
    summary = {"device": device, "batch_size": batch, "timed_steps": steps, "repeats": args.repeats}
    print(json.dumps({**summary, **best, "all": runs}))


if __name__ == "__main__":
    main()
