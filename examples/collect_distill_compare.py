r"""Collect -> distill -> compare: the loop the library exists for, end to end.

1. **Collect**: run a teacher chain (decomposer + solver) over N training questions with
   ``collect`` (a ``TraceRecorder`` on every run, the gold answer as the run's reference),
   so every trace is scored.
2. **Build** the SD-T (every teacher decomposition) and SD-R (only decompositions whose run
   answered correctly) datasets, saved where ``divconq distill --dataset`` can read them.
3. **Distill** a new LoRA decomposer on one of them (SD-R by default; SD-T when no run was
   correct, which is the usual case with the toy teacher's 135M solver).
4. **Compare** the new adapter with the shipped one and with the trivial plan (the question's
   last sentence) on held-out questions with gold sub-questions: the decomposition-quality
   evaluation behind ``divconq eval --quality``. Prints the table, writes ``table.md``,
   ``compare.json`` and ``plot.png`` into ``--out``.

Toy scale, offline, a few minutes on 2 CPU cores (teacher: the shipped decomposer and the
embedded SmolLM2 as solver, both local)::

    python examples/collect_distill_compare.py --threads 1   # N=16, 4 steps, 16 test questions
    python examples/collect_distill_compare.py --limit 8 --max-steps 2 --eval-limit 4 \
        --solver-max-tokens 64 --threads 1               # the smallest run (the slow test's)

At this scale the numbers mean nothing: a handful of steps on a few traces from a weak
teacher cannot beat the shipped adapter (200 steps on 800 gold plans). What the toy run
shows is that every step runs and what each writes.

Real scale: a strong teacher through an API (or any OpenAI-compatible server: vLLM,
``divconq serve``), thousands of traces, a GPU for training, a larger test sample::

    OPENAI_API_KEY=sk-... python examples/collect_distill_compare.py \
        --decomposer openai:gpt-4o --solver openai:gpt-4o-mini --limit 2000 --concurrency 16 \
        --max-steps 500 --batch-size 32 --eval-limit 500 --device cuda --out runs/loop

or the same loop with the command line, step by step (each step resumes)::

    divconq collect --task gsm8k --split train --limit 2000 --store runs/loop/traces.jsonl \
        --decomposer openai:gpt-4o --solver openai:gpt-4o-mini --concurrency 16
    divconq dataset --store runs/loop/traces.jsonl --variant SD-R --out runs/loop/sd-r
    divconq distill --config training/sd_r.yaml --dataset runs/loop/sd-r \
        --output-dir runs/loop/adapter
    divconq eval --task gsm8k --split test --limit 500 --quality --out results/loop \
        --adapter runs/loop/adapter --solver openai:gpt-4o-mini
    divconq eval --task gsm8k --split test --limit 500 --quality --out results/loop \
        --solver openai:gpt-4o-mini                      # the shipped adapter, same solver

(``divconq eval --quality`` runs the whole chain, so it also reports each decomposer's
end-to-end accuracy with that solver; this script scores the decompositions alone.)

Needs the ``local``, ``train`` and ``eval`` extras (``pip install -e ".[all]"``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
TRIVIAL = "trivial plan"
REAL_SCALE = (
    "OPENAI_API_KEY=sk-... python examples/collect_distill_compare.py "
    "--decomposer openai:gpt-4o --solver openai:gpt-4o-mini --limit 2000 --concurrency 16 "
    "--max-steps 500 --batch-size 32 --eval-limit 500 --device cuda --out runs/loop"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (defaults: the toy scale)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="runs/collect-distill-compare", help="output folder")
    parser.add_argument(
        "--data-dir", default=str(DEFAULT_DATA_DIR), help="data root (one folder per task)"
    )
    parser.add_argument(
        "--task",
        default="gsm8k",
        choices=("gsm8k", "strategyqa"),
        help="collect on its train split, compare on its test/dev split (gold sub-questions)",
    )
    collect = parser.add_argument_group("collect (the teacher)")
    collect.add_argument("--limit", type=int, default=16, help="training questions to run")
    collect.add_argument(
        "--decomposer",
        default="default",
        help="teacher decomposer: default (shipped adapter, local) or openai:MODEL",
    )
    collect.add_argument(
        "--solver", default="local", help="teacher solver: local (embedded SmolLM2) or openai:MODEL"
    )
    collect.add_argument("--decomposer-base-url", default=None, help="OpenAI-compatible server")
    collect.add_argument("--solver-base-url", default=None, help="OpenAI-compatible server")
    collect.add_argument("--solver-max-tokens", type=int, default=128, help="solver budget")
    collect.add_argument("--concurrency", type=int, default=8, help="questions per batch")
    train = parser.add_argument_group("distill (the student)")
    train.add_argument(
        "--variant",
        default="SD-R",
        choices=("SD-R", "SD-T"),
        help="dataset to train on (SD-R falls back to SD-T when no run was correct)",
    )
    train.add_argument("--max-steps", type=int, default=4, help="optimizer steps")
    train.add_argument("--batch-size", type=int, default=4, help="examples per step")
    train.add_argument("--max-length", type=int, default=256, help="tokens per example")
    train.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate")
    train.add_argument(
        "--val-fraction", type=float, default=0.05, help="questions held out for the eval loss"
    )
    train.add_argument(
        "--init-adapter",
        default=None,
        help="start from this adapter (a folder or a packaged name such as gsm8k-decomposer)",
    )
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    compare = parser.add_argument_group("compare")
    compare.add_argument(
        "--eval-limit", type=int, default=16, help="held-out questions with gold sub-questions"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)"
    )
    return parser.parse_args(argv)


def collect_traces(args: argparse.Namespace, store_path: Path) -> None:
    """Step 1: run the teacher chain over the first ``--limit`` training questions."""
    from langchain_divconq import create_divconq_chain
    from langchain_divconq.model_specs import build_decomposer, build_solver
    from langchain_divconq.tasks import load_task
    from langchain_divconq.tracing import open_store
    from langchain_divconq.tracing.collect import collect

    task = load_task(args.task, split="train", data_dir=args.data_dir)
    solver = build_solver(
        args.solver, base_url=args.solver_base_url, max_tokens=args.solver_max_tokens
    )
    decomposer = build_decomposer(
        args.decomposer, base_url=args.decomposer_base_url, share_with=solver
    )
    chain = create_divconq_chain(decomposer, solver)
    started = time.perf_counter()
    with open_store(store_path) as store:
        summary = collect(
            chain, task, store, limit=args.limit, concurrency=args.concurrency, progress=False
        )
        total = len(store)
    print(
        f"[collect] {task.name}/train: ran {summary.attempted} ({summary.correct} correct, "
        f"{summary.failed} failed), {summary.skipped} already in {store_path}; "
        f"{total} trace(s) in the store ({time.perf_counter() - started:.0f} s)"
    )
    del chain, decomposer, solver
    gc.collect()  # free the teacher's weights before training loads a model


def build_datasets(args: argparse.Namespace, store_path: Path, data_dir: Path) -> tuple[str, Any]:
    """Step 2: build SD-T and SD-R, save both, return the variant to train and its dataset."""
    from langchain_divconq.tracing import open_store
    from langchain_divconq.training import build_dataset
    from langchain_divconq.training.dataset import NoExamplesError

    datasets: dict[str, Any] = {}
    with open_store(store_path) as store:
        traces = list(store)
    for variant in ("SD-T", "SD-R"):
        try:
            ds = build_dataset(traces, variant=variant, val_fraction=args.val_fraction)
        except NoExamplesError as exc:
            print(f"[dataset] {variant}: no examples ({exc})")
            continue
        folder = data_dir / variant.lower()
        ds.save_to_disk(str(folder))
        datasets[variant] = ds
        sizes = ", ".join(f"{split} {len(rows)}" for split, rows in ds.items())
        print(f"[dataset] {variant}: {sizes} -> {folder}")
    variant = args.variant
    if variant not in datasets and variant == "SD-R" and "SD-T" in datasets:
        print("[dataset] SD-R is empty (no correct teacher run): distilling SD-T instead")
        variant = "SD-T"
    if variant not in datasets:
        msg = (
            f"No {variant} training examples from {len(traces)} trace(s) in {store_path}; "
            "check the teacher (every run may have failed) or raise --limit."
        )
        raise SystemExit(msg)
    return variant, datasets[variant]


def distill_adapter(args: argparse.Namespace, variant: str, dataset: Any, out: Path) -> Path:
    """Step 3: train a LoRA decomposer on the dataset (resumes from a checkpoint in ``out``)."""
    from langchain_divconq.local.loaders import resolve_adapter
    from langchain_divconq.training import DistillConfig, distill, read_metadata

    init = resolve_adapter(args.init_adapter) if args.init_adapter else None
    config = DistillConfig(
        output_dir=str(out),
        variant=variant,
        lora_r=args.lora_r,
        init_adapter=str(init) if init else None,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_ratio=0.0,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        num_threads=args.threads,
        logging_steps=1,
        # A checkpoint at the last step lets a rerun reuse the adapter instead of retraining.
        save_steps=min(50, args.max_steps),
        save_dtype="float16",
    )
    folder = distill(config, dataset)
    meta = read_metadata(folder)
    eval_loss = meta.get("eval_loss")
    print(
        f"[distill] {variant}: {meta['global_step']} step(s) on {meta['train_examples']} "
        f"example(s), train loss {meta['train_loss']:.3f}"
        + (f", eval loss {eval_loss:.3f}" if eval_loss is not None else "")
        + f" ({meta['train_runtime_s']} s) -> {folder}"
    )
    return folder


def _summary(quality: Any, trivial: Any | None) -> dict[str, Any]:
    from langchain_divconq.evaluation.quality import bootstrap_ci

    row = quality.model_dump(exclude={"records"})
    if trivial is not None:
        # Paired per question: the same questions, so the difference's interval is tighter.
        base = {r.id: r.token_f1 for r in trivial.records}
        diffs = [r.token_f1 - base[r.id] for r in quality.records if r.id in base]
        row["vs_trivial"] = sum(diffs) / len(diffs)
        row["vs_trivial_ci"] = bootstrap_ci(diffs)
    return row


def compare_decomposers(
    args: argparse.Namespace, adapter: Path, label: str
) -> dict[str, dict[str, Any]]:
    """Step 4: decomposition quality of the trivial plan, the shipped and the new adapter."""
    from langchain_divconq.evaluation.quality import (
        decomposition_quality,
        quality_from_outputs,
        trivial_plan,
    )
    from langchain_divconq.local import load_decomposer
    from langchain_divconq.local.loaders import resolve_adapter
    from langchain_divconq.tasks import load_task

    task = load_task(args.task, data_dir=args.data_dir)
    gold = [e for e in task.examples if e.sub_questions][: args.eval_limit]
    trivial = quality_from_outputs(task, {e.id: trivial_plan(e.question) for e in gold})
    rows = {TRIVIAL: _summary(trivial, None)}
    shipped = resolve_adapter("default")
    candidates: list[tuple[str, Any]] = [
        (f"shipped adapter ({shipped.name if shipped else 'none: base model'})", "default"),
        (label, adapter),
    ]
    for label, which in candidates:
        started = time.perf_counter()
        # cache_merged=False: a one-off adapter should not leave a merged copy in the cache.
        decomposer = load_decomposer(adapter=which, cache_merged=False)
        quality = decomposition_quality(decomposer, task, limit=args.eval_limit)
        rows[label] = _summary(quality, trivial)
        print(f"[compare] {label}: {quality.n} question(s) ({time.perf_counter() - started:.0f} s)")
        del decomposer
        gc.collect()
    return rows


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """The comparison as a Markdown table, one row per decomposer."""
    lines = [
        "| decomposer | n | parse (1..N) | mean # (gold) | count match | token F1 [95% CI] "
        "| ROUGE-L | vs trivial [95% CI] |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        low, high = r["token_f1_ci"] or (r["token_f1"], r["token_f1"])
        delta = "-"
        if "vs_trivial" in r:
            d_low, d_high = r["vs_trivial_ci"]
            delta = f"{r['vs_trivial']:+.3f} [{d_low:+.3f}, {d_high:+.3f}]"
        lines.append(
            f"| {name} | {r['n']} | {100 * r['parse_rate']:.0f}% | "
            f"{r['mean_predicted']:.2f} ({r['mean_gold']:.2f}) | {100 * r['count_match']:.0f}% | "
            f"{r['token_f1']:.3f} [{low:.3f}, {high:.3f}] | {r['rouge_l']:.3f} | {delta} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, dict[str, Any]], path: Path, title: str) -> Path | None:
    """Token F1 (with its interval) and plan size per decomposer; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[plot] matplotlib is missing (pip install 'langchain-divconq[eval]'); no plot")
        return None
    names = list(rows)
    f1 = [rows[n]["token_f1"] for n in names]
    cis = [rows[n]["token_f1_ci"] or (rows[n]["token_f1"],) * 2 for n in names]
    errors = [[v - lo for v, (lo, _) in zip(f1, cis, strict=True)],
              [hi - v for v, (_, hi) in zip(f1, cis, strict=True)]]  # fmt: skip
    colors = [f"C{i}" for i in range(len(names))]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.barh(names, f1, xerr=errors, color=colors, capsize=4)
    left.set_xlabel("token F1 vs gold sub-questions (95% CI)")
    left.set_xlim(0, 1)
    left.invert_yaxis()
    right.barh(names, [rows[n]["mean_predicted"] for n in names], color=colors)
    gold = rows[names[0]]["mean_gold"]
    right.axvline(gold, color="k", linestyle="--", label="gold (mean)")
    right.set_xlim(0, 1.15 * max(gold, *(rows[n]["mean_predicted"] for n in names)))
    right.set_xlabel("sub-questions per question")
    right.set_yticks([])
    right.invert_yaxis()
    right.legend(loc="lower right", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the four steps; return 0 on success."""
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import datasets

    datasets.disable_progress_bars()  # TRL's per-step dataset bars drown the step summaries
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    store_path = out / "traces.jsonl"
    collect_traces(args, store_path)
    variant, dataset = build_datasets(args, store_path, out / "data")
    adapter = distill_adapter(args, variant, dataset, out / f"adapter-{variant.lower()}")
    label = f"new adapter ({variant}, {args.max_steps} steps)"
    rows = compare_decomposers(args, adapter, label)
    table = markdown_table(rows)
    (out / "table.md").write_text(table, encoding="utf-8")
    (out / "compare.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    title = (
        f"{args.task}: {variant} from {args.limit} teacher trace(s), {args.max_steps} step(s), "
        f"n={rows[TRIVIAL]['n']}"
    )
    picture = plot(rows, out / "plot.png", title)
    print()
    print(table)
    print(f"table: {out / 'table.md'}; json: {out / 'compare.json'}; plot: {picture}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.limit < 500:
        print("Toy scale: these numbers mean little. At real scale (see the docstring):")
        print(f"  {REAL_SCALE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
