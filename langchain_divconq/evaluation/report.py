"""Compare configurations across tasks and write the report: JSON, a markdown table, a plot.

The table follows the layout of the paper's Table 1: one row per configuration
(decomposer / solver), one column per task, then the cost split into
decomposition and solving. A second table gives tokens, latency and failures per
configuration and task. The plot shows score against cost per task.

An output folder is laid out as::

    OUT/runs/<config>/<task>-<split>.jsonl   per-question records (resume reads these)
    OUT/runs/<config>/<task>-<split>.json    the run's summary (an EvalResult without records)
    OUT/results.json  OUT/table.md  OUT/plot.png   rebuilt from every summary in OUT/runs

so separate ``divconq eval`` calls with different models into one folder add up
to one comparison.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable
from pydantic import BaseModel, ConfigDict, Field

from langchain_divconq.evaluation.evaluator import EvalResult, evaluate
from langchain_divconq.evaluation.pricing import PriceTable
from langchain_divconq.tasks import Task

__all__ = [
    "EvalConfig",
    "compare",
    "load_results",
    "markdown_table",
    "plot_results",
    "run_paths",
    "save_summary",
    "write_report",
]


class EvalConfig(BaseModel):
    """A named configuration to compare: a chain plus the labels of its two nodes."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    chain: Runnable[Any, Any] = Field(description="The chain to evaluate.")
    decomposer: str | None = Field(
        default=None, description="Row label of the decomposer ('-' for single-stage)."
    )
    solver: str | None = Field(default=None, description="Row label of the solver.")
    note: str | None = Field(
        default=None, description="Free text, e.g. 'cross-domain: decomposer trained on GSM8K'."
    )


def _slug(text: str) -> str:
    # No leading "-" or ".": the folder must not read as a shell option or a hidden file.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_-.") or "config"


def run_paths(out_dir: str | Path, name: str, task: str, split: str) -> tuple[Path, Path]:
    """Return ``(records_jsonl, summary_json)`` of one configuration on one task split."""
    folder = Path(out_dir) / "runs" / _slug(name)
    return folder / f"{task}-{split}.jsonl", folder / f"{task}-{split}.json"


def save_summary(result: EvalResult, out_dir: str | Path) -> Path:
    """Write a result's summary (without records) where :func:`load_results` finds it."""
    _, path = run_paths(out_dir, result.name, result.task, result.split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.model_dump_json(indent=2, exclude={"records"}), encoding="utf-8")
    return path


def load_results(out_dir: str | Path) -> list[EvalResult]:
    """Read every run summary under ``OUT/runs`` (sorted by configuration, then task)."""
    results = [
        EvalResult.model_validate_json(path.read_text(encoding="utf-8"))
        for path in sorted((Path(out_dir) / "runs").glob("*/*.json"))
    ]
    return sorted(results, key=lambda r: (r.name, r.task, r.split))


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _usd(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "0" if value == 0 else f"{value:.4g}"


def _columns(results: Sequence[EvalResult]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for result in results:
        seen[(result.task, result.split)] = None
    return list(seen)


def markdown_table(results: Sequence[EvalResult]) -> str:
    """Render results as the paper-style table plus a per-run detail table.

    Example:
        >>> print(markdown_table([]))
        _No results yet._

    """
    if not results:
        return "_No results yet._"
    columns = _columns(results)
    rows: dict[str, dict[tuple[str, str], EvalResult]] = {}
    for result in results:
        rows.setdefault(result.name, {})[(result.task, result.split)] = result
    header = ["Configuration", "Decomposer", "Solver"]
    for task, split in columns:
        metric = next(r.metric for r in results if (r.task, r.split) == (task, split))
        header.append(f"{task} {split} {metric} (%)")
    header += ["Decomposition $/1k q", "Solving $/1k q"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for by_task in rows.values():
        first = next(iter(by_task.values()))
        cells = [first.name, first.decomposer, first.solver]
        for column in columns:
            found = by_task.get(column)
            cells.append(f"{_pct(found.accuracy)} (n={found.n})" if found else "")
        cells += [
            _usd(_per_1k(by_task.values(), "decomposer")),
            _usd(_per_1k(by_task.values(), "solver")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _detail_table(results)]
    return "\n".join(lines)


def _per_1k(results: Any, node: str) -> float | None:
    total_n, total_cost = 0, 0.0
    for result in results:
        cost = result.decomposition_cost_usd if node == "decomposer" else result.solving_cost_usd
        if cost is None:
            return None
        total_n, total_cost = total_n + result.n, total_cost + cost
    return total_cost * 1000 / total_n if total_n else None


def _detail_table(results: Sequence[EvalResult]) -> str:
    header = [
        "Configuration", "Task", "n", "Score (%)", "Other metrics",
        "Decomp. in/out tok/q", "Solver in/out tok/q", "Sub-q/q", "Marker (%)",
        "Latency p50/p95 (s)", "Failures",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:

        def per_q(node: str, r: EvalResult = r) -> str:
            stats = r.nodes.get(node)
            if stats is None or not r.n:
                return "-"
            mark = "~" if stats.estimated else ""
            return f"{mark}{stats.input_tokens / r.n:.0f}/{mark}{stats.output_tokens / r.n:.0f}"

        others = ", ".join(f"{k} {_pct(v)}" for k, v in sorted(r.metrics.items()) if k != r.metric)
        latency = (
            f"{r.latency_p50_s:.2f}/{r.latency_p95_s:.2f}"
            if r.latency_p50_s is not None and r.latency_p95_s is not None
            else "-"
        )
        lines.append(
            "| " + " | ".join([
                r.name, f"{r.task} {r.split}", str(r.n), _pct(r.accuracy), others or "-",
                per_q("decomposer"), per_q("solver"), f"{r.mean_sub_questions:.2f}",
                _pct(r.marker_rate), latency, str(r.failures),
            ]) + " |"
        )  # fmt: skip
    lines.append("")
    lines.append("`~` marks token counts estimated with a tokenizer (the model reported none).")
    return "\n".join(lines)


def plot_results(results: Sequence[EvalResult], path: str | Path) -> Path | None:
    """Plot score against cost per 1,000 questions, one panel per task (PNG).

    When every configuration of a task costs $0 (all local), that panel's x axis
    shows tokens per question instead, so the plot still separates the
    configurations. Returns None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    columns = _columns(results)
    if not columns:
        return None
    names = list(dict.fromkeys(r.name for r in results))
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    markers = {name: "osD^v<>ph*"[i % 10] for i, name in enumerate(names)}
    figure, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 4), squeeze=False)
    for axis, (task, split) in zip(axes[0], columns, strict=True):
        points = [r for r in results if (r.task, r.split) == (task, split)]
        costs = [r.cost_per_1k_usd for r in points]
        use_cost = all(c is not None for c in costs) and any(c for c in costs)
        for r in points:
            if use_cost:
                x = float(r.cost_per_1k_usd or 0.0)
            else:
                x = sum(s.total_tokens for s in r.nodes.values()) / r.n if r.n else 0.0
            axis.scatter(
                [x], [100 * r.accuracy], color=colors[r.name], marker=markers[r.name], s=60,
                label=r.name,
            )  # fmt: skip
        axis.set_xlabel("$ per 1,000 questions" if use_cost else "tokens per question (all $0)")
        axis.set_ylabel(f"{points[0].metric} (%)")
        axis.set_ylim(-2, 102)
        axis.set_title(f"{task} {split} (n={max(r.n for r in points)})")
        if use_cost:
            axis.set_xscale("symlog", linthresh=0.01)
        else:
            axis.set_xlim(left=0, right=1.15 * max(axis.get_xlim()[1], 1.0))
        axis.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], color=colors[n], marker=markers[n], linestyle="", label=n) for n in names
    ]
    figure.legend(handles=handles, loc="lower center", ncol=1, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06 * len(names) + 0.02, 1, 1))
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(out_dir: str | Path) -> dict[str, Path]:
    """Rebuild ``results.json``, ``table.md`` and ``plot.png`` from every run in ``out_dir``."""
    out = Path(out_dir)
    results = load_results(out)
    written = {}
    payload = [r.model_dump(mode="json", exclude={"records"}) for r in results]
    written["json"] = out / "results.json"
    written["json"].write_text(json.dumps(payload, indent=2), encoding="utf-8")
    written["table"] = out / "table.md"
    written["table"].write_text(markdown_table(results) + "\n", encoding="utf-8")
    plot = plot_results(results, out / "plot.png")
    if plot is not None:
        written["plot"] = plot
    return written


def compare(
    configs: Mapping[str, Runnable[Any, Any] | EvalConfig],
    tasks: Sequence[Task],
    *,
    out_dir: str | Path,
    limit: int | None = None,
    max_concurrency: int = 8,
    prices: PriceTable | None = None,
    progress: bool = True,
) -> list[EvalResult]:
    """Evaluate every configuration on every task and write the report into ``out_dir``.

    Runs resume: questions already answered in ``out_dir`` are not asked again.

    Args:
        configs: Configuration name -> chain, or -> :class:`EvalConfig` with row labels.
        tasks: The tasks (each evaluated on its first ``limit`` examples).
        out_dir: Output folder (see the module docstring for its layout).
        limit: Examples per task, in file order (None: all).
        max_concurrency: Parallel model calls per batch.
        prices: The price table (default :class:`~langchain_divconq.pricing.PriceTable`).
        progress: Show progress bars.

    Returns:
        The results, one per configuration and task, in the order given.

    Example:
        >>> results = compare(  # doctest: +SKIP
        ...     {
        ...         "direct": create_single_stage_chain(gpt),
        ...         "two-stage": create_divconq_chain(gpt, gpt),
        ...     },
        ...     [load_task("gsm8k", split="test")], out_dir="results/gpt", limit=100,
        ... )

    """
    results = []
    for name, value in configs.items():
        config = value if isinstance(value, EvalConfig) else EvalConfig(chain=value)
        for task in tasks:
            records_path, _ = run_paths(out_dir, name, task.name, task.split)
            result = evaluate(
                config.chain,
                task,
                limit=limit,
                max_concurrency=max_concurrency,
                name=name,
                decomposer=config.decomposer,
                solver=config.solver,
                prices=prices,
                records_path=records_path,
                progress=progress,
            )
            save_summary(result, out_dir)
            results.append(result)
    write_report(out_dir)
    return results
