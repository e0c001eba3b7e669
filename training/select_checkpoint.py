"""Choose the general decomposer's step by held-out evaluation, not by the last checkpoint.

    python training/select_checkpoint.py --run-dir training/checkpoints/general-decomposer

Every ``checkpoint-*`` folder of the run (and the final adapter, when the run finished) is
loaded with ``load_decomposer`` (default backend: the exact torch path) and sent the
chain's prompt for the recipe's own validation questions: the 5% of each source's *train*
questions that ``general_decomposer.py`` held out (never a test or dev split, so the final
quality table stays untouched by the choice). Per source it reports gold-averaged token F1
and its paired difference to the trivial plan, the declined share on multi-step questions
and the sentinel share on one-step ones. The chosen step maximises the mean difference to
the trivial plan over GSM8K, StrategyQA and Break, among steps that decline at most 10% of
multi-step questions. The last line printed is a JSON object; ``selection.json`` is
written into the run folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from general_decomposer import DATA, ROOT, build_strata, relative_selection

from langchain_divconq.evaluation.plan_checks import paired_delta
from langchain_divconq.evaluation.quality import (
    decomposer_outputs,
    quality_from_outputs,
    trivial_plan,
)
from langchain_divconq.local import load_decomposer
from langchain_divconq.prompts import parse_sub_questions
from langchain_divconq.tasks import Example, Task

SOURCES = ("gsm8k", "strategyqa", "break")
MAX_DECLINED = 0.10


class ValidationPlans(Task):
    """The recipe's held-out train questions of one source, with their gold plans."""

    splits: ClassVar[tuple[str, ...]] = ("validation",)

    @classmethod
    def task_name(cls) -> str:
        """Return ``'validation'``."""
        return "validation"

    @classmethod
    def _load_examples(cls, root: Path, split: str) -> Iterator[Example]:
        return iter(())

    def metrics(self, solver_text: str, example: Example) -> dict[str, float]:
        """Not used: plans only."""
        raise NotImplementedError


def validation_tasks(data: Path, limit: int, seed: int) -> dict[str, ValidationPlans]:
    """One task per source (and ``none``), from the recipe's held-out train questions."""
    _, val = build_strata(data, 0.05, seed)
    tasks = {}
    for name in (*SOURCES, "none"):
        examples = []
        for index, row in enumerate(val[name][:limit]):
            plan = row["completion"][0]["content"]
            subs = parse_sub_questions(plan, 3)
            examples.append(
                Example(
                    id=f"{name}-{index}", question=row["question"], answer="", sub_questions=subs
                )
            )
        tasks[name] = ValidationPlans(name=name, split="validation", examples=examples)
    return tasks


def score(adapter: str, tasks: dict[str, ValidationPlans], batch_size: int) -> dict[str, Any]:
    model = load_decomposer(adapter=adapter, batch_size=batch_size)
    result: dict[str, Any] = {"adapter": adapter}
    deltas = []
    for name, task in tasks.items():
        outputs = decomposer_outputs(model, task.examples, batch_size=batch_size)
        plans = {
            k: parse_sub_questions(v, 3) if isinstance(v, str) else [] for k, v in outputs.items()
        }
        if name == "none":
            result["none_sentinel_rate"] = sum(not p for p in plans.values()) / len(plans)
            continue
        quality = quality_from_outputs(task, outputs)
        trivial = quality_from_outputs(
            task, {e.id: trivial_plan(e.question) for e in task.examples}
        )
        delta, ci = paired_delta(
            {r.id: r.token_f1 for r in quality.records}, {r.id: r.token_f1 for r in trivial.records}
        )
        deltas.append(delta)
        result[name] = {
            "token_f1": round(quality.token_f1, 4),
            "delta_vs_trivial": round(delta, 4),
            "delta_ci": [round(x, 4) for x in ci],
            "declined": round(quality.no_decomposition_rate, 4),
            "reference_rate": round(quality.reference_rate, 4),
        }
    result["mean_delta"] = round(sum(deltas) / len(deltas), 4)
    result["max_declined"] = max(result[s]["declined"] for s in SOURCES)
    return result


def candidates(run_dir: Path) -> list[Path]:
    steps = sorted(
        (p for p in run_dir.glob("checkpoint-*") if (p / "adapter_model.safetensors").is_file()),
        key=lambda p: int(p.name.removeprefix("checkpoint-")),
    )
    if (run_dir / "adapter_model.safetensors").is_file():
        steps.append(run_dir)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=str(ROOT / "training/checkpoints/general-decomposer"))
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument(
        "--adapters",
        nargs="+",
        default=None,
        help="candidate adapter folders (default: the run's checkpoints and its final adapter)",
    )
    parser.add_argument("--limit", type=int, default=60, help="validation questions per source")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed (its split)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    folders = [Path(a) for a in args.adapters] if args.adapters else candidates(run_dir)
    if not folders:
        sys.exit(f"No checkpoint with adapter weights under {run_dir}; train first.")
    tasks = validation_tasks(Path(args.data_dir), args.limit, args.seed)
    rows = [score(str(folder), tasks, args.batch_size) for folder in folders]
    print(f"{'adapter':<60}{'mean delta':>11}{'max declined':>13}{'one-step sentinel':>18}")
    for row in rows:
        print(
            f"{row['adapter']:<60}{row['mean_delta']:>11}{row['max_declined']:>13}"
            f"{row['none_sentinel_rate']:>18.2f}"
        )
    allowed = [r for r in rows if r["max_declined"] <= MAX_DECLINED] or rows
    best = max(allowed, key=lambda r: r["mean_delta"])
    print(f"chosen: {best['adapter']}")
    # Candidates by checkpoint name, not by path: the file is committed and shipped.
    report = relative_selection({"chosen": best["adapter"], "rows": rows}, run_dir)
    report["limit"] = args.limit
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "selection.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
