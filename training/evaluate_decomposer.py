"""Decomposition quality of decomposer adapters against a trivial plan, per task.

    python training/evaluate_decomposer.py --adapters gsm8k-decomposer general-decomposer \
        --gold-limit 100 --cross-limit 50 --threads 1 --out runs/eval-decomposers.json

Decomposers: each ``--adapters`` entry (a packaged adapter name, ``default``, ``base`` for
no adapter, or a folder), loaded with ``load_decomposer`` and sent the chain's prompt,
plus the trivial baseline plan (the question's last sentence as the only sub-question).

Tasks, each a seeded random sample (``--seed``) of the split, never trained on:

* gold-scored: GSM8K test (Socratic gold sub-questions), StrategyQA dev and HotpotQA
  (Break's held-out rows, plans rewritten as questions); parse / well-formed /
  NO_SUBQUESTIONS (declined) / repeat rates, mean count against the gold count capped at
  N, count match, gold-averaged token F1 with a 95% bootstrap interval, and the paired
  difference to the trivial plan with its interval;
* gold-free: Bamboogle (N=2, the task's plan size), DROP (with its passage), SVAMP (and
  MultiArith on request): the same rates, mean count, and the share of plans that only
  copy the question's last sentence; for Bamboogle, the share of plans whose first
  sub-question asks for the bridge entity (``evaluation.plan_checks.asks_bridge_first``),
  with every plan in the JSON report and ``--show-plans N`` of them printed for a reader.

Every task also reports the share of plans with a sub-question that points at itself or
a later one ("self/fwd ref") and with a sub-question of no words of its own ("empty").
Decomposers run through ``load_decomposer`` on its default backend (the exact torch path),
so the plans scored are the plans users get.

Repeats are measured twice from one generation: the *raw* repeat rate with the
no-repeat rule off, and after the rule (``no_repeat_lines``, on by default in
``load_decomposer``), which under greedy decoding yields exactly the raw text cut
before its first repeated line; ``--check-rule N`` regenerates N prompts with the rule
on and checks that equality. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from langchain_divconq.evaluation.plan_checks import bridge_first_plans, paired_delta
from langchain_divconq.evaluation.quality import (
    decomposer_outputs,
    plan_stats,
    quality_from_outputs,
    trivial_plan,
)
from langchain_divconq.local import load_decomposer
from langchain_divconq.local.decoding import GenerationParams, cut_text
from langchain_divconq.tasks import Task, load_task

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
GOLD_TASKS = {"gsm8k": "test", "strategyqa": "dev", "hotpotqa": "heldout"}
CROSS_TASKS = {"bamboogle": "test", "drop": "dev", "svamp": "test", "multiarith": "test"}
DEFAULT_TASKS = ["gsm8k", "strategyqa", "hotpotqa", "bamboogle", "drop", "svamp"]
TRIVIAL = "trivial plan"


def _sample(task: Task, limit: int, seed: int) -> Task:
    examples = list(task.examples)
    if limit < len(examples):
        picks = sorted(random.Random(seed).sample(range(len(examples)), limit))
        examples = [examples[i] for i in picks]
    return task.model_copy(update={"examples": examples})


def _load_tasks(args: argparse.Namespace) -> list[tuple[Task, bool]]:
    tasks: list[tuple[Task, bool]] = []
    for name in args.tasks:
        gold = name in GOLD_TASKS
        split = GOLD_TASKS.get(name) or CROSS_TASKS[name]
        task = load_task(name, split=split, data_dir=args.data_dir)
        limit = args.gold_limit if gold else args.cross_limit
        tasks.append((_sample(task, limit, args.seed), gold))
    return tasks


def _max_sub_questions(task: Task) -> int:
    return int(getattr(task, "max_sub_questions", None) or 3)


def _after_rule(raw: dict[str, Any], n_max: int, max_tokens: int) -> dict[str, Any]:
    params = GenerationParams(max_tokens, max_lines=n_max + 1, no_repeat_lines=True)
    return {
        k: v if isinstance(v, BaseException) else cut_text(v, params, final=True)[0]
        for k, v in raw.items()
    }


def _summary(task: Task, outputs: dict[str, Any], gold: bool, n_max: int) -> dict[str, Any]:
    stats = plan_stats(task, outputs, max_sub_questions=n_max).model_dump()
    if task.name == "bamboogle":
        bridged = bridge_first_plans(task.examples, outputs, n_max)
        stats["bridge_first_rate"] = sum(first for _, _, first in bridged) / len(bridged)
        stats["plans"] = [
            {"question": e.question, "bridge": e.bridge_entity, "plan": plan, "first": first}
            for e, plan, first in bridged
        ]
    if not gold:
        return stats
    quality = quality_from_outputs(task, outputs, max_sub_questions=n_max)
    stats.update(
        token_f1=quality.token_f1,
        token_f1_ci=quality.token_f1_ci,
        count_match=quality.count_match,
        mean_gold=quality.mean_gold,
        mean_gold_capped=sum(min(len(r.gold), n_max) for r in quality.records) / quality.n,
        per_question_f1={r.id: r.token_f1 for r in quality.records},
    )
    return stats


def _with_deltas(results: dict[str, dict[str, Any]]) -> None:
    """Add each decomposer's paired F1 difference to the trivial plan (with its interval)."""
    base = results[TRIVIAL].get("per_question_f1")
    if not base:
        return
    for summary in results.values():
        mine = summary.get("per_question_f1")
        if mine is None:
            continue
        summary["delta_vs_trivial"], summary["delta_vs_trivial_ci"] = paired_delta(mine, base)


def _cache_file(args: argparse.Namespace, adapter: str, task: Task) -> Path | None:
    """Where one adapter's raw outputs on one task sample are kept (resuming a long run)."""
    if not args.cache_dir:
        return None
    key = adapter.replace("/", "_").strip("_.")
    name = f"{key}-{task.name}-n{len(task.examples)}-seed{args.seed}-t{args.max_new_tokens}.json"
    return Path(args.cache_dir) / name


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    tasks = _load_tasks(args)
    report: dict[str, Any] = {
        "seed": args.seed,
        "tasks": {},
        "decomposers": [TRIVIAL, *args.adapters],
        "seconds": {},
        "sample_ids": {t.name: [e.id for e in t.examples] for t, _ in tasks},
    }
    raw_by: dict[str, dict[str, dict[str, Any]]] = {}
    for adapter in args.adapters:
        started = time.perf_counter()
        model = load_decomposer(
            adapter=None if adapter == "base" else adapter,
            max_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            no_repeat_lines=False,  # raw outputs; the rule is applied below, exactly
        )
        raw_by[adapter] = {}
        for task, _ in tasks:
            n_max = _max_sub_questions(task)
            cache = _cache_file(args, adapter, task)
            if cache is not None and cache.is_file():
                raw_by[adapter][task.name] = json.loads(cache.read_text(encoding="utf-8"))
                continue
            model_n = model.model_copy(update={"max_lines": n_max + 1})
            raw = decomposer_outputs(
                model_n,
                task.examples,
                max_sub_questions=n_max,
                batch_size=args.batch_size,
                progress=args.progress,
            )
            raw_by[adapter][task.name] = raw
            if cache is not None and not any(isinstance(v, BaseException) for v in raw.values()):
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(raw), encoding="utf-8")
        if args.check_rule:
            ruled = model.model_copy(update={"no_repeat_lines": True})
            task = tasks[0][0]
            subset = task.examples[: args.check_rule]
            got = decomposer_outputs(ruled, subset, batch_size=args.batch_size)
            expected = _after_rule(
                {e.id: raw_by[adapter][task.name][e.id] for e in subset}, 3, args.max_new_tokens
            )
            mismatches = [k for k in got if got[k] != expected[k]]
            report.setdefault("rule_check", {})[adapter] = {
                "n": len(subset),
                "mismatches": mismatches,
            }
        report["seconds"][adapter] = round(time.perf_counter() - started, 1)
        del model

    for task, gold in tasks:
        n_max = _max_sub_questions(task)
        results: dict[str, dict[str, Any]] = {}
        trivial = {e.id: trivial_plan(e.question) for e in task.examples}
        results[TRIVIAL] = _summary(task, trivial, gold, n_max)
        for adapter in args.adapters:
            raw = raw_by[adapter][task.name]
            after = _after_rule(raw, n_max, args.max_new_tokens)
            summary = _summary(task, after, gold, n_max)
            summary["raw_repeat_rate"] = plan_stats(task, raw, max_sub_questions=n_max).repeat_rate
            summary["samples"] = [
                {"question": e.question[:160], "output": after[e.id]} for e in task.examples[:3]
            ]
            results[adapter] = summary
        _with_deltas(results)
        for summary in results.values():
            summary.pop("per_question_f1", None)
        report["tasks"][task.name] = {"split": task.split, "n": len(task.examples), **results}
    return report


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge reports of the same samples (seed, sizes) into one, decomposers side by side."""
    merged: dict[str, Any] = {"seed": reports[0]["seed"], "tasks": {}, "decomposers": []}
    for report in reports:
        if report["seed"] != merged["seed"]:
            msg = "Reports with different seeds sample different questions; not merged."
            raise ValueError(msg)
        for dec in report["decomposers"]:
            if dec not in merged["decomposers"]:
                merged["decomposers"].append(dec)
        for name, task in report["tasks"].items():
            into = merged["tasks"].setdefault(name, {"split": task["split"], "n": task["n"]})
            if into["n"] != task["n"]:
                msg = f"{name}: reports scored {into['n']} and {task['n']} questions; not merged."
                raise ValueError(msg)
            into.update({k: v for k, v in task.items() if isinstance(v, dict)})
    return merged


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def markdown(report: dict[str, Any]) -> str:
    """Render the report as one markdown table (a row per task and decomposer)."""
    head = (
        "| task (n) | decomposer | parse (1..N) | declined | raw repeat -> after rule "
        "| mean # (gold, capped) | token F1 [95% CI] | vs trivial [95% CI] | self/fwd ref "
        "| empty | bridge first |"
    )
    lines = [head, "|" + " --- |" * 11]
    for name, task in report["tasks"].items():
        for dec in report["decomposers"]:
            if dec not in task:
                continue
            s = task[dec]
            repeat = _pct(s["repeat_rate"])
            if "raw_repeat_rate" in s:
                repeat = f"{_pct(s['raw_repeat_rate'])} -> {repeat}"
            mean = f"{s['mean_predicted']:.2f}"
            if "mean_gold_capped" in s:
                mean += f" ({s['mean_gold_capped']:.2f})"
            f1 = "-"
            if s.get("token_f1") is not None:
                low, high = s["token_f1_ci"]
                f1 = f"{s['token_f1']:.3f} [{low:.3f}, {high:.3f}]"
            delta = "-"
            if s.get("delta_vs_trivial") is not None and dec != TRIVIAL:
                low, high = s["delta_vs_trivial_ci"]
                delta = f"{s['delta_vs_trivial']:+.3f} [{low:+.3f}, {high:+.3f}]"
            lines.append(
                f"| {name} ({task['n']}) | {dec} | {_pct(s['parse_rate'])} | "
                f"{_pct(s['no_decomposition_rate'])} | {repeat} | {mean} | {f1} | {delta} | "
                f"{_pct(s.get('reference_rate'))} | {_pct(s.get('content_free_rate'))} | "
                f"{_pct(s.get('bridge_first_rate'))} |"
            )
    return "\n".join(lines)


def bamboogle_plans(report: dict[str, Any], limit: int) -> str:
    """The first ``limit`` Bamboogle plans of each decomposer, for a reader to judge the rule."""
    task = report["tasks"].get("bamboogle")
    if not task or limit <= 0:
        return ""
    lines = ["", "Bamboogle plans (bridge entity; * = the rule says the first hop asks for it):"]
    for dec in report["decomposers"]:
        for row in (task.get(dec) or {}).get("plans", [])[:limit]:
            mark = "*" if row["first"] else " "
            plan = " | ".join(row["plan"]) or "(declined)"
            lines.append(f"{mark} [{dec}] {row['question']} ({row['bridge']}) -> {plan}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapters", nargs="+", default=["gsm8k-decomposer", "general-decomposer"])
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, help="task names")
    parser.add_argument(
        "--gold-limit", type=int, default=100, help="GSM8K / StrategyQA / HotpotQA sample"
    )
    parser.add_argument("--show-plans", type=int, default=10, help="Bamboogle plans printed")
    parser.add_argument("--cross-limit", type=int, default=50, help="sample of the other tasks")
    parser.add_argument("--seed", type=int, default=12, help="seed of the samples")
    parser.add_argument("--data-dir", default=str(DATA))
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--check-rule", type=int, default=0, help="verify the rule on N prompts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default=None, help="also write the JSON report here")
    parser.add_argument(
        "--cache-dir", default=None, help="keep raw outputs per adapter and task here (resume)"
    )
    parser.add_argument(
        "--render", nargs="+", default=None, help="only print one table merged from JSON reports"
    )
    args = parser.parse_args()
    if args.render:
        print(markdown(merge_reports([json.loads(Path(p).read_text()) for p in args.render])))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = evaluate(args)
    print(markdown(report))
    print(bamboogle_plans(report, args.show_plans))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
