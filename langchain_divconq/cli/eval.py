"""The ``divconq eval`` command: evaluate a configuration on tasks and update the report.

Example:
    .. code-block:: bash

        divconq eval --task gsm8k --split test --limit 50 --out results/local --solver local
        divconq eval --task gsm8k --limit 50 --out results/local --solver local --single-stage cot

Both calls write into ``results/local``; its ``table.md``, ``results.json`` and
``plot.png`` then compare the two configurations. Re-running a command resumes:
questions already answered are read back from ``runs/<config>/<task>-<split>.jsonl``.

"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from langchain_divconq.cli.args import add_data_dir_argument, add_model_arguments, build_chain

__all__ = ["register_cli"]


def register_cli(subparsers: Any) -> None:
    """Add the ``eval`` sub-command to the ``divconq`` parser."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a decomposer/solver configuration on tasks (accuracy, tokens, cost)",
        description="Evaluate one configuration on one or more tasks; writes per-question "
        "records, results.json, table.md and plot.png into --out (resumable).",
    )
    parser.add_argument(
        "--task",
        action="append",
        required=True,
        help="gsm8k, drop, bamboogle, svamp, multiarith, strategyqa or hotpotqa (with "
        "--decomposer-only); repeat or comma-separate",
    )
    parser.add_argument("--split", default=None, help="split (default: test, or dev if none)")
    parser.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel model calls")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="questions per batch (default: concurrency)"
    )
    parser.add_argument("--out", default="results/eval", help="output folder (resumable)")
    add_data_dir_argument(parser)
    parser.add_argument("--name", default=None, help="configuration name in the report")
    parser.add_argument(
        "--single-stage",
        choices=("direct", "cot"),
        default=None,
        help="evaluate the solver alone: direct answer or chain of thought (no decomposer)",
    )
    parser.add_argument(
        "--prices", default=None, help='JSON price file: {"model": {"input": 0.5, "output": 1.5}}'
    )
    parser.add_argument(
        "--price-local-per-billion",
        type=float,
        default=None,
        help="price local models at this USD per 1M tokens per 1B parameters (default: free)",
    )
    parser.add_argument(
        "--quality",
        action="store_true",
        help="also score the run's sub-questions against gold ones (gsm8k, strategyqa)",
    )
    parser.add_argument(
        "--decomposer-only",
        action="store_true",
        help="score the decomposer alone (no solver): parse, declined, plan size, F1 and its "
        "paired gain over the trivial plan, self/forward references, Bamboogle's bridge hop; "
        "every task, hotpotqa (Break's plans) included",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=512,
        help="generation budget of the solver (tokens per answer)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_arguments(parser)
    parser.set_defaults(handler=_run)


def _labels(args: argparse.Namespace, chain: Any) -> tuple[str, str]:
    from langchain_divconq.model_specs import default_solver_spec

    solver = args.solver or ("server" if args.solver_base_url else default_solver_spec())
    solver = "SmolLM2-135M (local)" if solver == "local" else solver
    if args.single_stage:
        return f"- (single-stage {args.single_stage})", solver
    decomposer = "SmolLM2-135M" if args.decomposer in (None, "", "default") else args.decomposer
    adapter = str(args.adapter or "none")
    if args.decomposer.startswith("openai:") or args.decomposer_base_url:
        return decomposer, solver
    if adapter.lower() == "none":
        return f"{decomposer} (base)", solver
    if adapter == "default":
        # load_decomposer falls back to the base model while no adapter ships; say which ran.
        name = str(getattr(getattr(chain, "decomposer", None), "model_name", ""))
        if "+" in name:
            return f"{decomposer} + shipped adapter", solver
        return f"{decomposer} (base: no shipped adapter)", solver
    return f"{decomposer} + {Path(adapter).name}", solver


def _run(args: argparse.Namespace) -> int:
    from langchain_divconq.evaluation.evaluator import evaluate
    from langchain_divconq.evaluation.pricing import PriceTable
    from langchain_divconq.evaluation.quality import quality_from_outputs, trivial_plan
    from langchain_divconq.evaluation.report import run_paths, save_summary, write_report
    from langchain_divconq.jsonl import write_text_file
    from langchain_divconq.tasks import load_task

    if args.limit is not None and args.limit < 1:
        msg = f"--limit must be at least 1, got {args.limit}."
        raise ValueError(msg)
    names = [n.strip() for value in args.task for n in value.split(",") if n.strip()]
    tasks = [load_task(n, split=args.split, data_dir=args.data_dir) for n in names]
    prices = PriceTable.from_json(args.prices) if args.prices else PriceTable()
    if args.price_local_per_billion is not None:
        prices = prices.model_copy(
            update={"usd_per_million_per_billion_params": args.price_local_per_billion}
        )
    if args.decomposer_only:
        return _decomposer_only(args, tasks)
    chain = build_chain(args, single_stage=args.single_stage, max_tokens=args.max_tokens)
    decomposer_label, solver_label = _labels(args, chain)
    name = args.name or f"{decomposer_label} / {solver_label}"
    out = Path(args.out)
    for task in tasks:
        records_path, _ = run_paths(out, name, task.name, task.split)
        result = evaluate(
            chain,
            task,
            limit=args.limit,
            max_concurrency=args.concurrency,
            batch_size=args.batch_size,
            name=name,
            decomposer=decomposer_label,
            solver=solver_label,
            prices=prices,
            records_path=records_path,
            progress=not args.no_progress,
        )
        save_summary(result, out)
        cost = result.total_cost_usd
        print(
            f"{name} | {task.name} {task.split}: {result.metric} {100 * result.accuracy:.2f}% "
            f"(n={result.n}, failures={result.failures}, cost "
            f"{'n/a' if cost is None else f'${cost:.4f}'}, p50 {result.latency_p50_s or 0:.2f}s)"
        )
        if args.quality and not args.single_stage and any(e.sub_questions for e in task.examples):
            # Score the decompositions this run already produced: no second model pass.
            texts = {r.id: r.decomposition for r in result.records if r.error is None}
            quality = quality_from_outputs(task, texts, max_sub_questions=args.max_sub_questions)
            # The baseline to beat: each question's last sentence as its only sub-question.
            questions = {e.id: e.question for e in task.examples}
            trivial = quality_from_outputs(
                task,
                {i: trivial_plan(questions[i]) for i in texts if i in questions},
                max_sub_questions=args.max_sub_questions,
            )
            path = out / "quality" / records_path.parent.name / f"{task.name}-{task.split}.json"
            write_text_file(path, quality.model_dump_json(indent=2))  # holds outputs: 0600
            summary = quality.model_dump(exclude={"records"})
            summary["trivial_plan"] = trivial.model_dump(
                include={"token_f1", "token_f1_ci", "count_match", "mean_predicted"}
            )
            print("decomposition quality: " + json.dumps(summary))
    written = write_report(out)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


def _decomposer_only(args: argparse.Namespace, tasks: list[Any]) -> int:
    """Score the decomposer alone on each task, beside the trivial plan (no solver runs)."""
    from langchain_divconq.evaluation.decomposer_report import decomposer_summary, summary_table
    from langchain_divconq.evaluation.quality import decomposer_outputs
    from langchain_divconq.jsonl import write_text_file
    from langchain_divconq.model_specs import build_decomposer

    if args.single_stage:
        msg = "--decomposer-only and --single-stage exclude each other: pick one stage to score."
        raise ValueError(msg)
    decomposer = build_decomposer(
        args.decomposer,
        args.adapter,
        base_url=args.decomposer_base_url,
        request_timeout=args.request_timeout,
        max_retries=args.max_retries,
    )
    label = args.name or str(getattr(decomposer, "model_name", "") or args.decomposer)
    rows = []
    for task in tasks:
        examples = task.examples[: args.limit] if args.limit else task.examples
        n_max = min(args.max_sub_questions, task.max_sub_questions)
        outputs = decomposer_outputs(
            decomposer,
            examples,
            max_sub_questions=n_max,
            max_concurrency=args.concurrency,
            batch_size=args.batch_size or args.concurrency,
            progress=not args.no_progress,
            desc=f"decompose {task.name}",
        )
        sample = task.model_copy(update={"examples": list(examples)})
        row = {"decomposer": label, **decomposer_summary(sample, outputs, max_sub_questions=n_max)}
        rows.append(row)
        record = {**row, "outputs": {k: str(v) for k, v in outputs.items()}}
        path = Path(args.out) / "decomposer" / f"{task.name}-{task.split}.json"
        write_text_file(path, json.dumps(record, indent=2))  # holds model outputs: 0600
        print("decomposer quality: " + json.dumps(row))
    print(summary_table(rows))
    return 0
